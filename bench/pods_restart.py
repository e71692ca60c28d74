"""Zero-downtime restarts of the pods we ship (issue 12), measured: ``make pods-restart``.

The images ``make images`` built, pushed to a loopback registry and pulled back by digest, the
dev overlay's pods started with ``podman kube play`` (tests/pods/cluster.py, as ``make
pods-test``); then 100 req/s of manifests and licenses through the edge replicas while one
replica of each Deployment is restarted the way the kubelet does it (out of the endpoints, every
preStop hook at once, SIGTERM to each container when its own hook returns, within the grace
period). Prints the requests, the failed ones with their time and replica, how long each restart
took, and the licenses issued against the LicenseIssued events in NATS; exits 1 on any failed
request or lost event.

Not part of ``make test``: on the shared 2-core machine it does not pass yet (a few
``authz_unavailable`` 503s while the edge pod restarts; see the issue's note).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from license_broker.demo_keys import DEMO_KID
from tests.pods.cluster import Cluster, shipped_cluster
from tests.pods.convert import PodPlan

KID_B64URL = base64.urlsafe_b64encode(bytes.fromhex(DEMO_KID)).rstrip(b"=").decode()


LOAD_VIEWER = "pods-load"
LOAD_RPS = 100


class Rotation:
    """The edge replicas the client (the API gateway) sends to: a replica being deleted leaves
    the Service's endpoints at once, as Kubernetes takes it out when the pod starts terminating."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = list(ports)
        self.lock = threading.Lock()
        self.turn = 0

    def next(self) -> int:
        with self.lock:
            self.turn += 1
            return self.ports[self.turn % len(self.ports)]

    def remove(self, port: int) -> None:
        with self.lock:
            self.ports.remove(port)

    def add(self, port: int) -> None:
        with self.lock:
            self.ports.append(port)


def _aardvark_hide(cluster: Cluster, pod: str) -> None:
    """The pod leaves the headless Service's DNS answers (the endpoints controller's part when a
    pod terminates): its entry goes from the network's aardvark-dns table, reloaded with
    SIGHUP; podman writes it back when the pod starts again."""
    table = Path("/run/containers/networks/aardvark-dns") / f"{cluster.prefix}net"
    infra = cluster.podman.out("pod", "inspect", pod, "--format", "{{.InfraContainerID}}")
    lines = table.read_text().splitlines()
    table.write_text("\n".join(line for line in lines if not line.startswith(infra)) + "\n")
    pid = int((table.parent / "aardvark.pid").read_text().strip())
    os.kill(pid, signal.SIGHUP)


def _restart(cluster: Cluster, plan: PodPlan, rotation: Rotation) -> dict[str, float]:
    """Delete-and-recreate as the kubelet does it: out of the endpoints, every preStop hook at
    once, SIGTERM to each container when its own hook returns (the grace period bounds it all),
    then the pod again, back in the endpoints once ready."""
    started = time.monotonic()
    if plan.deployment == "playback-edge":
        rotation.remove(plan.published[8443])
    else:
        _aardvark_hide(cluster, plan.name)
    deadline = started + plan.grace_seconds

    def terminate(container: str) -> None:
        hook = plan.pre_stop.get(container)
        if hook:
            cluster.podman.run(
                "exec", f"{plan.name}-{container}", *hook, check=False, timeout=plan.grace_seconds
            )
        left = max(1, int(deadline - time.monotonic()))
        cluster.podman.run("stop", "--time", str(left), f"{plan.name}-{container}", timeout=120)

    names = [c["name"] for c in plan.document["spec"]["containers"]]
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(terminate, names))
    stopped = time.monotonic()
    # the pod's sandbox (infra container) goes too; then the replacement starts
    cluster.podman.run("pod", "stop", "--time", "1", plan.name, timeout=120)
    cluster.podman.run("pod", "start", plan.name, timeout=300)
    while not all(
        cluster.podman.exec_http(f"{plan.name}-{p.container}", p.port, p.path) == 200
        for p in plan.probes
        if p.kind == "readinessProbe"
    ):
        assert time.monotonic() < stopped + 180, f"{plan.name} not ready again"
        time.sleep(1)
    if plan.deployment == "playback-edge":
        rotation.add(plan.published[8443])
    return {"terminating_s": stopped - started, "back_s": time.monotonic() - stopped}


def restart_under_load(cluster: Cluster) -> bool:
    """100 req/s of manifests and licenses while one replica of each Deployment is restarted;
    prints the figures. True when no request failed and every license issued is an event in
    NATS."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{cluster.deps['billing']}/admin/users/{LOAD_VIEWER}",
        data=json.dumps({"plan": "premium", "maxStreams": 0}).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).close()
    token = cluster.token(LOAD_VIEWER)
    rotation = Rotation([p.published[8443] for p in cluster.pods("playback-edge")])
    results: list[tuple[str, int, str, float, int]] = []
    begin_all = time.monotonic()
    lock = threading.Lock()
    stop = threading.Event()
    license_body = json.dumps(
        {
            "videoId": "demo",
            "licenseRequest": base64.b64encode(
                json.dumps(
                    {
                        "kids": [
                            base64.urlsafe_b64encode(bytes.fromhex(DEMO_KID)).rstrip(b"=").decode()
                        ],
                        "type": "temporary",
                    }
                ).encode()
            ).decode(),
        }
    ).encode()

    def one(n: int) -> None:
        port = rotation.next()
        auth = {"Authorization": f"Bearer {token}"}
        try:
            if n % 2:
                reply = cluster.request(
                    "/drm/license",
                    method="POST",
                    body=license_body,
                    headers={**auth, "Content-Type": "application/json"},
                    port=port,
                )
                detail = json.loads(reply.body).get("licenseId", "") if reply.status == 200 else ""
                kind = "license"
            else:
                reply = cluster.request("/playback/demo/manifest", headers=auth, port=port)
                kind, detail = "manifest", ""
            text = detail or reply.body[:120].decode(errors="replace")
            outcome = (kind, reply.status, text, time.monotonic() - begin_all, port)
        except OSError as exc:
            outcome = ("error", 0, repr(exc), time.monotonic() - begin_all, port)
        with lock:
            results.append(outcome)

    def load() -> None:
        with ThreadPoolExecutor(32) as pool:
            n = 0
            begin = time.monotonic()
            while not stop.is_set():
                pool.submit(one, n)
                n += 1
                time.sleep(max(0.0, begin + n / LOAD_RPS - time.monotonic()))

    loader = threading.Thread(target=load)
    loader.start()
    timings: dict[str, dict[str, float]] = {}
    try:
        time.sleep(3)
        for deployment in ("playback-edge", "license-broker"):
            plan = cluster.pods(deployment)[0]
            timings[plan.name] = {"at_s": time.monotonic() - begin_all}
            timings[plan.name].update(_restart(cluster, plan, rotation))
        time.sleep(3)
    finally:
        stop.set()
        loader.join()
    failed = [r for r in results if r[1] != 200]
    issued = {r[2] for r in results if r[0] == "license" and r[1] == 200}
    print(f"{len(results)} requests at {LOAD_RPS}/s, {len(failed)} failed; restarts: {timings}")
    for kind, status, detail, at, port in failed:
        print(f"  failed: {kind} {status} t={at:.1f}s port {port} {detail[:60]}")
    deadline = time.monotonic() + 30
    while True:
        events = cluster.events()
        recorded = {
            e["data"].get("licenseId")
            for e in events
            if e["type"] == "dev.playback-drm.license.issued.v1"
            and e["data"].get("userId") == LOAD_VIEWER
        }
        if issued <= recorded or time.monotonic() > deadline:
            break
        time.sleep(2)
    print(f"{len(issued)} licenses issued, {len(issued & recorded)} of them in NATS")
    return not failed and issued <= recorded


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, shipped_cluster(Path(tmp)) as cluster:
        print(f"kube play to all pods ready: {cluster.ready_seconds:.1f} s", flush=True)
        return 0 if restart_under_load(cluster) else 1


if __name__ == "__main__":
    raise SystemExit(main())
