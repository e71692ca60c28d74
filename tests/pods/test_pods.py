"""Run what we ship: the images built by ``make images``, pushed to a loopback registry and pulled
back by digest, the dev overlay's pods started from them with ``podman kube play``, and the
public behaviour shown through those pods (``make pods-test``; tests/pods/cluster.py).
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from license_broker.demo_keys import DEMO_KEY, DEMO_KID
from tests.pods.cluster import Cluster, Reply, shipped_cluster
from tests.pods.convert import ADAPTATIONS
from tests.pods.restart import restart_under_load
from tests.test_layout import DEV_ONLY

VIEWER = "pods-viewer"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with shipped_cluster(tmp_path_factory.mktemp("pods")) as started:
        print(f"\nkube play to all pods ready: {started.ready_seconds:.1f} s")
        # a viewer of the test's own, without a concurrent-stream limit (Billing emulator)
        req = urllib.request.Request(
            f"http://127.0.0.1:{started.deps['billing']}/admin/users/{VIEWER}",
            data=json.dumps({"plan": "premium", "maxStreams": 0}).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        yield started


def _bearer(cluster: Cluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.token(VIEWER)}"}


def _uris_hls(text: str) -> list[str]:
    uris = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return uris + re.findall(r'URI="([^"]+)"', text)


def _path(base: str, uri: str) -> str:
    parts = urllib.parse.urlsplit(urllib.parse.urljoin(f"https://edge{base}", uri))
    return parts.path + (f"?{parts.query}" if parts.query else "")


def test_pods_run_the_pushed_images_by_digest(cluster: Cluster) -> None:
    rendered = {
        c["image"]
        for o in cluster.rendered
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
        + (o["spec"]["template"]["spec"].get("initContainers") or [])
    }
    assert rendered == set(cluster.images.values())
    for plan in cluster.plans:
        for c in plan.document["spec"]["containers"]:
            info = cluster.podman.inspect(f"{plan.name}-{c['name']}")
            assert info["ImageName"] == c["image"]
            assert "@sha256:" in str(info["ImageName"])
    # two replicas of each Deployment, as the HorizontalPodAutoscalers' minimum
    assert len(cluster.pods("playback-edge")) == 2
    assert len(cluster.pods("license-broker")) == 2


def test_containers_run_as_non_root_on_a_read_only_root(cluster: Cluster) -> None:
    for plan in cluster.plans:
        for c in plan.document["spec"]["containers"]:
            name = f"{plan.name}-{c['name']}"
            info: dict[str, Any] = cluster.podman.inspect(name)
            assert info["HostConfig"]["ReadonlyRootfs"] is True, name
            assert info["Config"]["User"].split(":")[0] == "10001", name
            assert info["EffectiveCaps"] in (None, []), name
            assert cluster.podman.out("exec", name, "id", "-u") == "10001"
            write = cluster.podman.run("exec", name, "touch", "/opt/x", check=False)
            assert write.returncode != 0, name
            assert "Read-only file system" in write.stderr, name
            assert cluster.podman.run("exec", name, "touch", "/tmp/x", check=False).returncode == 0


def test_the_app_image_installs_no_dev_only_package(cluster: Cluster) -> None:
    """The services' image carries the runtime set alone (issue 17; the wheel's own metadata is
    checked in tests/test_layout.py): the distributions installed in a running container."""
    [name, *_] = [
        f"{plan.name}-{c['name']}"
        for plan in cluster.plans
        for c in plan.document["spec"]["containers"]
        if c["name"] == "authz"
    ]
    code = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'])"
    listed = cluster.podman.out("exec", name, "python", "-c", code).splitlines()
    installed = {re.sub(r"[-_.]+", "-", n.strip()).lower() for n in listed if n.strip()}
    assert {"playback-drm", "grpcio", "redis", "nats-py"} <= installed, sorted(installed)
    assert installed & DEV_ONLY == set(), sorted(installed & DEV_ONLY)


def test_every_readiness_and_liveness_endpoint_answers(cluster: Cluster) -> None:
    checked = 0
    for plan in cluster.plans:
        for probe in plan.probes:
            status = cluster.podman.exec_http(
                f"{plan.name}-{probe.container}", probe.port, probe.path
            )
            assert status == 200, (plan.name, probe)
            checked += 1
    # envoy, authz, extproc: readiness + liveness each (x2 replicas); the broker's two (x2)
    assert checked == 2 * 6 + 2 * 2


def _manifest(cluster: Cluster, replica: int) -> Reply:
    return cluster.request("/playback/demo/manifest", headers=_bearer(cluster), replica=replica)


@pytest.mark.parametrize("replica", [0, 1])
def test_signed_manifest_through_mtls(cluster: Cluster, replica: int) -> None:
    master = _manifest(cluster, replica)
    assert master.status == 200, master.body
    assert master.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    variants = _uris_hls(master.body.decode())
    assert variants
    assert all("pdt=" in uri for uri in variants)
    variant_path = _path("/playback/demo/manifest", variants[0])
    media = cluster.request(variant_path, replica=replica)
    assert media.status == 200, media.body
    uris = _uris_hls(media.body.decode())
    assert uris
    assert all("pdt=" in uri for uri in uris), uris
    segment = _path(variant_path, next(u for u in uris if ".ts" in u))
    assert cluster.request(segment, replica=1 - replica).status == 200  # any replica verifies


def test_no_token_is_401_and_a_tampered_url_403(cluster: Cluster) -> None:
    bare = cluster.request("/playback/demo/manifest")
    assert bare.status == 401
    assert json.loads(bare.body)["code"]
    master = _manifest(cluster, 0)
    variant = _path("/playback/demo/manifest", _uris_hls(master.body.decode())[0])
    tampered = variant[:-1] + ("A" if variant[-1] != "A" else "B")
    reply = cluster.request(tampered)
    assert reply.status == 403
    assert json.loads(reply.body)["code"] == "url_token_bad_signature"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _license(cluster: Cluster, replica: int = 0) -> Reply:
    body = json.dumps({"kids": [_b64url(bytes.fromhex(DEMO_KID))], "type": "temporary"})
    return cluster.request(
        "/drm/license/org.w3.clearkey?videoId=demo",
        method="POST",
        body=body.encode(),
        headers={**_bearer(cluster), "Content-Type": "application/json"},
        replica=replica,
    )


def test_clearkey_license(cluster: Cluster) -> None:
    reply = _license(cluster)
    assert reply.status == 200, reply.body
    keys = json.loads(reply.body)["keys"]
    assert keys[0]["kid"] == _b64url(bytes.fromhex(DEMO_KID))
    assert keys[0]["k"] == _b64url(bytes.fromhex(DEMO_KEY))


def test_events_arrive_in_nats(cluster: Cluster) -> None:
    assert _manifest(cluster, 1).status == 200
    assert _license(cluster, 1).status == 200
    deadline = time.monotonic() + 20
    while True:
        events = cluster.events()
        kinds = {
            (e["type"], e["source"]) for e in events if e.get("data", {}).get("userId") == VIEWER
        }
        if {
            ("dev.playback-drm.playback.started.v1", "/playback-drm/extproc"),
            ("dev.playback-drm.license.issued.v1", "/playback-drm/license-broker"),
        } <= kinds:
            return
        assert time.monotonic() < deadline, f"events in NATS: {sorted(kinds)}"
        time.sleep(1)


def test_a_renewed_certificate_reaches_the_running_pod(cluster: Cluster, tmp_path: Path) -> None:
    """cert-manager renews the Secret, the kubelet swaps the volume's files: the pod's Envoy
    serves the new certificate on the next handshake, without a restart."""
    import socket
    import ssl

    from cryptography import x509

    from devstack.devpki import ensure_dev_pki
    from tests.pods.cluster import SNI, _write_kubelet_volume, tls_secret, volume_files

    plan = cluster.pods("playback-edge")[0]
    volume = next(v for v in plan.document["spec"]["volumes"] if v["name"] == "envoy-tls")
    template_volume = next(
        v
        for o in cluster.rendered
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "playback-edge"
        for v in o["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "envoy-tls"
    )
    renewed = ensure_dev_pki(tmp_path / "renewed", "renewed CA")
    bundle = tls_secret(renewed)
    bundle["ca.crt"] = cluster.pki.ca_cert.read_bytes() + renewed.ca_cert.read_bytes()
    state: Any = cluster.podman.inspect(f"{plan.name}-envoy")["State"]
    started_at = (state["Pid"], state["StartedAt"])
    files = volume_files(cluster.rendered, template_volume, {"playback-edge-tls": bundle})
    _write_kubelet_volume(Path(volume["hostPath"]["path"]), files)

    def served_serial() -> int:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(cluster.pki.gateway_cert, cluster.pki.gateway_key)
        with (
            socket.create_connection(("127.0.0.1", plan.published[8443]), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=SNI) as sock,
        ):
            der = sock.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    def wait_for(cert: Path) -> float:
        want = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
        started = time.monotonic()
        while served_serial() != want:
            assert time.monotonic() < started + 10, "the pod's Envoy serves the old certificate"
            time.sleep(0.1)
        return time.monotonic() - started

    took = wait_for(renewed.server_cert)
    print(f"\nrenewed certificate served by the pod {took:.2f} s after the volume swap")
    # and back (the other tests trust the first CA only): a second renewal, same pod
    original = volume_files(
        cluster.rendered, template_volume, {"playback-edge-tls": tls_secret(cluster.pki)}
    )
    _write_kubelet_volume(Path(volume["hostPath"]["path"]), original)
    wait_for(cluster.pki.server_cert)
    state = cluster.podman.inspect(f"{plan.name}-envoy")["State"]
    assert (state["Pid"], state["StartedAt"]) == started_at  # the same process: no restart
    assert cluster.request("/health", replica=0).status == 200


def test_a_broker_that_dies_loses_no_license(cluster: Cluster) -> None:
    """A broker whose process dies (a crash, an OOM kill) stays in the headless Service's DNS
    answers until its readiness probe fails twice and Envoy re-resolves (up to 15 s): Envoy
    retries a connection it could not open on the other broker (the request was never sent)."""
    plan = cluster.pods("license-broker")[1]
    name = f"{plan.name}-license-broker"
    cluster.podman.run("kill", name)
    try:
        time.sleep(1)
        statuses = [_license(cluster, replica=n % 2).status for n in range(20)]
    finally:
        if cluster.podman.inspect(name)["State"]["Status"] != "running":  # type: ignore[index]
            cluster.podman.run("start", name)
        deadline = time.monotonic() + 60
        while cluster.podman.exec_http(name, 9003, "/health") != 200:
            assert time.monotonic() < deadline, f"{name} not ready again"
            time.sleep(1)
    assert statuses == [200] * 20, statuses


def test_zero_downtime_rollout_restart_under_load(cluster: Cluster) -> None:
    """``kubectl rollout restart`` of one replica of each Deployment, as the RollingUpdate
    strategy (maxSurge 25 %, maxUnavailable 0) runs it, under 100 req/s of manifests and
    licenses: not one request fails, every license issued is a LicenseIssued event in NATS
    (tests/pods/restart.py; ``make pods-restart`` also measures the eviction way). Runs last:
    the restarted pods replace the first replicas in ``cluster.plans``."""
    run = restart_under_load(cluster, "rollout")
    print("\n" + run.summary())
    assert not run.failed, run.summary()
    assert run.issued > 1000, run.summary()
    assert run.events == run.issued, run.summary()
    assert not run.missing_ids, run.summary()


def test_adaptations_are_documented() -> None:
    deployment = (Path(__file__).resolve().parents[2] / "docs" / "DEPLOYMENT.md").read_text()
    for name in ADAPTATIONS:
        assert f"**{name}**" in deployment, (
            f"docs/DEPLOYMENT.md does not list the {name} adaptation"
        )
