"""Zero-downtime restarts of the pods we ship (issue 12), measured: ``make pods-restart``.

The images ``make images`` built, pushed to a loopback registry and pulled back by digest, the
dev overlay's pods started with ``podman kube play`` (tests/pods/cluster.py, as ``make
pods-test``); then 100 req/s of manifests and licenses through the edge replicas while one
replica of each Deployment is restarted, twice: as ``kubectl rollout restart`` does it with the
Deployments' RollingUpdate strategy (maxSurge 25 %, maxUnavailable 0: the new pod first, ready
and in the endpoints, then the old one terminated), and as an eviction does it (the old pod
terminated first, its replacement started afterwards). Terminating is the kubelet's sequence:
out of the endpoints, every preStop hook at once, SIGTERM to each container when its own hook
returns, within the grace period (tests/pods/restart.py has the details).

Prints, per way: the requests and the failed ones with their time and replica, how long each
restart took, the load average, and the licenses issued against the LicenseIssued events in
NATS; exits 1 on any failed request or lost event. ``make pods-test`` runs the rollout way
(test_pods.py::test_zero_downtime_rollout_restart_under_load).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pods.cluster import shipped_cluster
from tests.pods.restart import restart_under_load


def main() -> int:
    modes = sys.argv[1:] or ["rollout", "evict"]
    ok = True
    with tempfile.TemporaryDirectory() as tmp, shipped_cluster(Path(tmp)) as cluster:
        print(f"kube play to all pods ready: {cluster.ready_seconds:.1f} s", flush=True)
        for mode in modes:
            run = restart_under_load(cluster, mode)
            print(run.summary(), flush=True)
            ok = ok and run.ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
