"""Zero-downtime restarts of the pods we ship, under load (issue 12): the test in test_pods.py
and ``make pods-restart`` (bench/pods_restart.py) both run :func:`restart_under_load`.

100 req/s of manifests and licenses go through the edge replicas (a new mTLS connection per
request, as :meth:`Cluster.request` sends them) while one replica of each Deployment is restarted
the way Kubernetes does it. Two ways, both from the manifests:

``rollout``  what ``kubectl rollout restart`` does with the Deployments' strategy (RollingUpdate,
             maxSurge 25 %, maxUnavailable 0): a new pod starts first (init containers, then the
             containers), joins the endpoints once every readiness probe answers, and only then
             is an old pod terminated and removed.
``evict``    what a node drain or an eviction does: the old pod is terminated first and the
             ReplicaSet's new pod started afterwards; the Deployment's other replica carries
             all the traffic meanwhile.

A new pod joins the endpoints (the headless Service's DNS answers, the gateway's rotation) only
when every readiness probe answers, as in Kubernetes; podman alone would publish its Service
aliases at once, and the edge's Envoy connected to a broker that was not listening yet.

Terminating a pod is the kubelet's sequence: the pod leaves the endpoints (the test's gateway
stops picking an edge replica; a broker pod leaves the headless Service's DNS answers), every
preStop hook starts at once (``podman exec``), each container gets SIGTERM when its own hook
returns (``podman stop`` with what is left of the grace period), and the pod's sandbox goes.

Every issued license must show up in NATS: the broker emits one LicenseIssued event per license
it answers, cache hits included, each with the request's ``x-request-id`` (Envoy's, one per
request), so the load's licenses and the events' distinct request ids must be as many. A cache
hit answers with the license id of the first issue, which is why ids alone would prove little.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from license_broker.demo_keys import DEMO_KID
from tests.pods.cluster import Cluster
from tests.pods.convert import PodPlan
from tests.pods.podman import host_port, kube_play

LOAD_VIEWER = "pods-load"
LOAD_RPS = 100
ISSUED = "dev.playback-drm.license.issued.v1"


class Rotation:
    """The edge replicas the client (the API gateway) sends to, round robin: a terminating
    replica leaves at once (Kubernetes takes a terminating pod out of the endpoints), a new one
    joins when it is ready."""

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


@dataclass
class Outcome:
    kind: str  # manifest, license, error
    status: int
    detail: str  # the license id of a 200 license, else the start of the body
    at_s: float
    port: int


@dataclass
class RestartRun:
    mode: str
    outcomes: list[Outcome] = field(default_factory=list)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)  # 1-min load average, sampled every 5 s
    issued: int = 0  # 200 licenses
    license_ids: set[str] = field(default_factory=set)
    events: int = 0  # distinct request ids of the load's LicenseIssued events
    missing_ids: set[str] = field(default_factory=set)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    @property
    def ok(self) -> bool:
        return not self.failed and self.events == self.issued and not self.missing_ids

    def summary(self) -> str:
        lines = [
            f"{self.mode}: {len(self.outcomes)} requests at {LOAD_RPS}/s, "
            f"{len(self.failed)} failed; {self.issued} licenses issued, {self.events} "
            f"LicenseIssued events in NATS ({len(self.license_ids)} license ids, "
            f"{len(self.missing_ids)} of them missing); load average "
            f"{min(self.load, default=0):.1f}-{max(self.load, default=0):.1f}"
        ]
        for pod, t in self.timings.items():
            lines.append(
                "  "
                + pod
                + ": "
                + ", ".join(f"{k} {v:.1f} s" for k, v in t.items() if k != "at_s")
                + f" (from t={t['at_s']:.1f} s)"
            )
        for o in self.failed[:40]:
            lines.append(f"  failed: {o.kind} {o.status} t={o.at_s:.1f}s :{o.port} {o.detail[:70]}")
        return "\n".join(lines)


def _aardvark_table(cluster: Cluster) -> Path:
    return Path("/run/containers/networks/aardvark-dns") / f"{cluster.prefix}net"


def _aardvark_reload(cluster: Cluster) -> None:
    pid = int((_aardvark_table(cluster).parent / "aardvark.pid").read_text().strip())
    os.kill(pid, signal.SIGHUP)


def _aardvark_hide(cluster: Cluster, pod: str) -> None:
    """The pod leaves the Services' DNS answers (the endpoints controller's part when a pod
    terminates): its entry goes from the network's aardvark-dns table, reloaded with SIGHUP."""
    table = _aardvark_table(cluster)
    infra = cluster.podman.out("pod", "inspect", pod, "--format", "{{.InfraContainerID}}")
    lines = table.read_text().splitlines()
    table.write_text("\n".join(line for line in lines if not line.startswith(infra)) + "\n")
    _aardvark_reload(cluster)


def _aardvark_publish(cluster: Cluster, pod: str, names: list[str]) -> None:
    """The pod joins the Services' DNS answers (the endpoints controller's part when a pod
    becomes ready): ``names`` are added to its entry (``<id> <ipv4> <ipv6> <names>``)."""
    table = _aardvark_table(cluster)
    infra = cluster.podman.out("pod", "inspect", pod, "--format", "{{.InfraContainerID}}")
    lines = table.read_text().splitlines()
    for i, line in enumerate(lines):
        parts = line.split(" ")
        if line.startswith(infra) and len(parts) == 4:
            known = parts[3].split(",")
            parts[3] = ",".join([*known, *(n for n in names if n not in known)])
            lines[i] = " ".join(parts)
            break
    else:
        raise AssertionError(f"{pod} has no entry in {table}")
    table.write_text("\n".join(lines) + "\n")
    _aardvark_reload(cluster)


def _ready(cluster: Cluster, plan: PodPlan, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not all(
        cluster.podman.exec_http(f"{plan.name}-{p.container}", p.port, p.path) == 200
        for p in plan.probes
        if p.kind == "readinessProbe"
    ):
        assert time.monotonic() < deadline, f"{plan.name} not ready after {timeout:.0f} s"
        time.sleep(1)


def _terminate(cluster: Cluster, plan: PodPlan, rotation: Rotation) -> None:
    """Out of the endpoints, every preStop hook at once, SIGTERM to each container when its
    own hook returns (the grace period bounds it all), then the pod's sandbox."""
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
    cluster.podman.run("pod", "stop", "--time", "1", plan.name, timeout=120)


def surge_plan(plan: PodPlan, name: str) -> PodPlan:
    """A new pod of the same Deployment (the ReplicaSet's next pod): its own name, emptyDirs
    and published ports, the same template otherwise."""
    doc = copy.deepcopy(plan.document)
    doc["metadata"]["name"] = name
    spec = doc["spec"]
    for volume in spec.get("volumes") or []:
        if "emptyDir" in volume:
            volume["name"] = volume["name"].replace(plan.name, name, 1)
    published: dict[int, int] = {}
    for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
        for mount in c.get("volumeMounts") or []:
            mount["name"] = mount["name"].replace(plan.name, name, 1)
        for p in c.get("ports") or []:
            p["hostPort"] = host_port()
            published[int(p["containerPort"])] = p["hostPort"]
    return PodPlan(
        name=name,
        deployment=plan.deployment,
        labels=dict(plan.labels),
        document=doc,
        config_maps=plan.config_maps,
        aliases=list(plan.aliases),
        probes=list(plan.probes),
        published=published,
        pre_stop=dict(plan.pre_stop),
        grace_seconds=plan.grace_seconds,
    )


def _start_new(cluster: Cluster, new: PodPlan, rotation: Rotation) -> None:
    """The ReplicaSet's new pod: started (init containers, then the containers) outside the
    Services, and in their endpoints (DNS names; the gateway's rotation for the edge) only once
    every readiness probe answers, as Kubernetes publishes only ready pods. podman would
    publish the Services' aliases at once, before anything listens."""
    kube_play(
        cluster.podman,
        new.yaml(),
        cluster.root / f"{new.name}.yaml",
        f"{cluster.prefix}net",
        [],
    )
    _ready(cluster, new)
    _aardvark_publish(cluster, new.name, new.aliases)
    if new.deployment == "playback-edge":
        rotation.add(new.published[8443])


def _rollout(cluster: Cluster, plan: PodPlan, rotation: Rotation) -> dict[str, float]:
    """maxSurge 1, maxUnavailable 0: the new pod first, ready and in the endpoints, then the old
    one terminated and removed. ``cluster.plans`` has the new pod in the old one's place."""
    started = time.monotonic()
    new = surge_plan(plan, f"{plan.name}-r{int(time.time()) % 100000}")
    _start_new(cluster, new, rotation)
    ready = time.monotonic()
    _terminate(cluster, plan, rotation)
    stopped = time.monotonic()
    cluster.podman.run("pod", "rm", "--force", plan.name, timeout=120)
    cluster.plans[cluster.plans.index(plan)] = new
    return {"new_pod_ready_s": ready - started, "old_pod_terminating_s": stopped - ready}


def _evict(cluster: Cluster, plan: PodPlan, rotation: Rotation) -> dict[str, float]:
    """The old pod terminated and removed first, then the ReplicaSet's new pod started, in the
    endpoints once ready. ``cluster.plans`` has the new pod in the old one's place."""
    started = time.monotonic()
    _terminate(cluster, plan, rotation)
    cluster.podman.run("pod", "rm", "--force", plan.name, timeout=120)
    stopped = time.monotonic()
    new = surge_plan(plan, f"{plan.name}-e{int(time.time()) % 100000}")
    _start_new(cluster, new, rotation)
    cluster.plans[cluster.plans.index(plan)] = new
    return {"terminating_s": stopped - started, "new_pod_ready_s": time.monotonic() - stopped}


def _license_body() -> bytes:
    kid = base64.urlsafe_b64encode(bytes.fromhex(DEMO_KID)).rstrip(b"=").decode()
    challenge = json.dumps({"kids": [kid], "type": "temporary"}).encode()
    return json.dumps(
        {"videoId": "demo", "licenseRequest": base64.b64encode(challenge).decode()}
    ).encode()


def restart_under_load(cluster: Cluster, mode: str) -> RestartRun:
    """One replica of each Deployment restarted (``mode``: rollout or evict) under 100 req/s;
    the outcomes, the restarts' timings and the events' count."""
    restart = {"rollout": _rollout, "evict": _evict}[mode]
    req = urllib.request.Request(
        f"http://127.0.0.1:{cluster.deps['billing']}/admin/users/{LOAD_VIEWER}",
        data=json.dumps({"plan": "premium", "maxStreams": 0}).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).close()
    token = cluster.token(LOAD_VIEWER)
    before = {
        e["data"].get("requestId")
        for e in cluster.events()
        if e["type"] == ISSUED and e["data"].get("userId") == LOAD_VIEWER
    }
    run = RestartRun(mode)
    rotation = Rotation([p.published[8443] for p in cluster.pods("playback-edge")])
    begin = time.monotonic()
    lock = threading.Lock()
    stop = threading.Event()
    auth = {"Authorization": f"Bearer {token}"}
    license_body = _license_body()

    def one(n: int) -> None:
        port = rotation.next()
        try:
            if n % 2:
                reply = cluster.request(
                    "/drm/license",
                    method="POST",
                    body=license_body,
                    headers={**auth, "Content-Type": "application/json"},
                    port=port,
                )
                kind = "license"
                detail = json.loads(reply.body).get("licenseId", "") if reply.status == 200 else ""
            else:
                reply = cluster.request("/playback/demo/manifest", headers=auth, port=port)
                kind, detail = "manifest", ""
            outcome = Outcome(
                kind,
                reply.status,
                detail or reply.body[:120].decode(errors="replace"),
                time.monotonic() - begin,
                port,
            )
        except OSError as exc:
            outcome = Outcome("error", 0, repr(exc), time.monotonic() - begin, port)
        with lock:
            run.outcomes.append(outcome)

    def load() -> None:
        with ThreadPoolExecutor(32) as pool:
            n = 0
            while not stop.is_set():
                pool.submit(one, n)
                n += 1
                time.sleep(max(0.0, begin + n / LOAD_RPS - time.monotonic()))

    def sample() -> None:
        while not stop.wait(5):
            run.load.append(os.getloadavg()[0])

    threads = [threading.Thread(target=load), threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        for deployment in ("playback-edge", "license-broker"):
            plan = cluster.pods(deployment)[0]
            timing = {"at_s": time.monotonic() - begin}
            timing.update(restart(cluster, plan, rotation))
            run.timings[plan.name] = timing
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    licenses = [o for o in run.outcomes if o.kind == "license" and o.status == 200]
    run.issued = len(licenses)
    run.license_ids = {o.detail for o in licenses}
    deadline = time.monotonic() + 30
    while True:
        events = [
            e["data"]
            for e in cluster.events()
            if e["type"] == ISSUED and e["data"].get("userId") == LOAD_VIEWER
        ]
        request_ids = {e.get("requestId") for e in events} - before
        run.events = len(request_ids)
        run.missing_ids = run.license_ids - {e.get("licenseId") for e in events}
        if (run.events >= run.issued and not run.missing_ids) or time.monotonic() > deadline:
            return run
        time.sleep(2)
