"""A platform engineer's overlay on top of prod, all the way to a running Envoy.

The overlay changes the license principals, the peer CIDRs, the CORS origins and a limit with
kustomize alone (a ``configMapGenerator`` merge on ``playback-envoy``). The test renders it with
kustomize, checks it with ``playback-drm check-config``, renders the Envoy configuration from the
resulting ConfigMap with the init container's own entry point (``python -m envoyconf render``),
validates it with ``envoy --mode validate`` and runs that Envoy in front of the local stack's
services: the new principal gets a license, the old one is refused, an address outside the CIDRs
is refused, a listed origin gets its CORS answer.

What the test changes besides the overlay is what a pod provides and a loopback test cannot:
listen address and ports, the certificate files, the addresses of the services (the pod's own
containers and Services). Those are added to the rendering environment as the pod's would be,
and never touch the keys under test.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from devstack.devpki import GATEWAY_SPIFFE_ID
from devstack.stack import Stack
from tests.k8s.overlay import check_config, envoy_configmap, kustomize, write_overlay
from tests.mesh.pki import MeshCa, Workload
from tests.support.procs import free_port
from tests.support.servers import EnvoyServer, envoy_validate, start_envoy

pytestmark = pytest.mark.integration

NEW_PRINCIPAL_ACCOUNT = ("gateway-system", "api-gateway")
NEW_PRINCIPAL = "spiffe://playback-drm.local/ns/gateway-system/sa/api-gateway"
OLD_PRINCIPAL = GATEWAY_SPIFFE_ID  # the base's (spiffe://playback-drm.local/ns/edge/sa/gateway)
INSIDE, OUTSIDE = "127.0.0.1", "127.0.0.2"  # both loopback; only the first is in the new CIDRs
NEW_CIDRS = f"10.20.0.0/16,{INSIDE}/32"
PLAYER_ORIGIN = "https://player.example.tv"
OVERLAY_LITERALS = (
    f"ENVOY_LICENSE_PRINCIPALS={NEW_PRINCIPAL}",
    f"ENVOY_LICENSE_PEER_CIDRS={NEW_CIDRS}",
    "CORS_ALLOWED_ORIGINS=https://www.example.tv,https://*.example.tv",
    "ENVOY_PER_IP_RPS=500",
)
TESTED_KEYS = {literal.split("=", 1)[0] for literal in OVERLAY_LITERALS}


@dataclass
class Edge:
    envoy: EnvoyServer
    port: int
    ca: MeshCa
    new_gateway: Workload
    old_gateway: Workload
    config: Path


@pytest.fixture(scope="module")
def edge(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    work = tmp_path_factory.mktemp("envoy-overlay")
    rendered = kustomize(write_overlay(work / "overlay", OVERLAY_LITERALS))
    checked = check_config(rendered)
    assert checked.returncode == 0, checked.stderr
    assert NEW_PRINCIPAL in checked.stdout

    ca = MeshCa(work / "pki", trust_domain="playback-drm.local")
    server = ca.workload("playback", "playback-edge")
    new_gateway = ca.workload(*NEW_PRINCIPAL_ACCOUNT)
    old_gateway = ca.workload("edge", "gateway")
    assert (new_gateway.spiffe_id, old_gateway.spiffe_id) == (NEW_PRINCIPAL, OLD_PRINCIPAL)

    port, probe, stats, admin = (free_port() for _ in range(4))
    p = stack.ports
    what_the_pod_provides = {
        "ENVOY_LISTEN_ADDRESS": "127.0.0.1",
        "ENVOY_SIDECAR_PORT": str(port),
        "ENVOY_PROBE_PORT": str(probe),
        "ENVOY_STATS_PORT": str(stats),
        "ENVOY_ADMIN_PORT": str(admin),
        "ENVOY_TLS_CERT_PATH": str(server.cert),
        "ENVOY_TLS_KEY_PATH": str(server.key),
        "ENVOY_CLIENT_CA_PATH": str(ca.ca_cert),
        "ENVOY_AUTHZ_GRPC_ADDR": f"127.0.0.1:{p.authz_grpc}",
        "ENVOY_AUTHZ_HTTP_ADDR": f"127.0.0.1:{p.authz_http}",
        "ENVOY_EXTPROC_GRPC_ADDR": f"127.0.0.1:{p.extproc_grpc}",
        "ENVOY_LICENSE_BROKER_ADDR": f"127.0.0.1:{p.broker}",
        "ENVOY_ORIGIN_ADDR": f"127.0.0.1:{p.origin}",
    }
    assert not TESTED_KEYS & set(what_the_pod_provides)
    data = envoy_configmap(rendered)
    config = work / "rendered" / "envoy.yaml"
    config.parent.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "envoyconf", "render", "--out", str(config)],
        env={**data, **what_the_pod_provides, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    validated = envoy_validate(config)
    assert validated.returncode == 0, validated.stdout[-2000:] + validated.stderr[-2000:]
    envoy = start_envoy(config, admin, work / "logs", name="overlay-envoy")
    try:
        yield Edge(envoy, port, ca, new_gateway, old_gateway, config)
    finally:
        envoy.process.stop()


def _license(edge: Edge, stack: Stack, client: Workload, source: str = INSIDE) -> tuple[int, bytes]:
    """POST /drm/license over mTLS as ``client``, connecting from ``source``."""
    ctx = ssl.create_default_context(cafile=str(edge.ca.ca_cert))
    ctx.check_hostname = False  # the server certificate carries a SPIFFE ID, no DNS name
    ctx.load_cert_chain(str(client.cert), str(client.key))
    keys = json.loads((stack.media_dir / "keys.json").read_text())["videos"]["demo"]["keys"]
    kid = base64.urlsafe_b64encode(bytes.fromhex(keys[0]["kid"])).rstrip(b"=").decode()
    challenge = json.dumps({"kids": [kid], "type": "temporary"}).encode()
    body = json.dumps(
        {"videoId": "demo", "licenseRequest": base64.b64encode(challenge).decode()}
    ).encode()
    conn = http.client.HTTPSConnection(
        "127.0.0.1", edge.port, context=ctx, timeout=10, source_address=(source, 0)
    )
    try:
        conn.request(
            "POST",
            "/drm/license",
            body=body,
            headers={
                "Authorization": f"Bearer {stack.token('alice')}",
                "Content-Type": "application/json",
                "X-Forwarded-For": "203.0.113.7",  # the viewer, as the gateway forwards it
            },
        )
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def test_the_new_principal_gets_a_license(edge: Edge, stack: Stack) -> None:
    before = edge.envoy.stats().get("http.sidecar.rbac.allowed", 0)
    status, body = _license(edge, stack, edge.new_gateway)
    assert status == 200, body
    assert json.loads(body)["licenseId"]
    assert edge.envoy.stats()["http.sidecar.rbac.allowed"] > before


def _refused_by_rbac(edge: Edge, status: int, body: bytes, denied_before: int) -> None:
    assert status == 403, body
    assert json.loads(body)["code"] == "client_not_allowed"
    assert edge.envoy.stats()["http.sidecar.rbac.denied"] > denied_before


def test_the_old_principal_is_refused(edge: Edge, stack: Stack) -> None:
    before = edge.envoy.stats().get("http.sidecar.rbac.denied", 0)
    status, body = _license(edge, stack, edge.old_gateway)
    _refused_by_rbac(edge, status, body, before)


def test_an_address_outside_the_new_cidrs_is_refused(edge: Edge, stack: Stack) -> None:
    before = edge.envoy.stats().get("http.sidecar.rbac.denied", 0)
    status, body = _license(edge, stack, edge.new_gateway, source=OUTSIDE)
    _refused_by_rbac(edge, status, body, before)


def test_the_rendered_configuration_carries_the_overlays_values(edge: Edge) -> None:
    text = edge.config.read_text()
    assert f"exact: {NEW_PRINCIPAL}" in text
    assert OLD_PRINCIPAL not in text
    assert "address_prefix: 10.20.0.0" in text
    assert "exact: https://www.example.tv" in text
    doc = yaml.safe_load(text)
    assert "tokens_per_fill: 500" in yaml.safe_dump(doc["static_resources"]["listeners"][0])


def test_a_listed_origin_gets_its_cors_answer(edge: Edge) -> None:
    ctx = ssl.create_default_context(cafile=str(edge.ca.ca_cert))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(edge.new_gateway.cert), str(edge.new_gateway.key))
    conn = http.client.HTTPSConnection("127.0.0.1", edge.port, context=ctx, timeout=10)
    try:
        conn.request(
            "OPTIONS",
            "/drm/license",
            headers={
                "Origin": PLAYER_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        reply = conn.getresponse()
        reply.read()
    finally:
        conn.close()
    assert reply.status == 200
    assert reply.getheader("access-control-allow-origin") == PLAYER_ORIGIN
