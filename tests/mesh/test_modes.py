"""The same request/denial matrix through the three ways to run playback-drm's Envoy, each a real
Envoy in front of the same real authz, extproc, license broker and origin:

- ``sidecar``: our own configuration (envoyconf), the local stack's gateway + mTLS sidecar.
- ``istio``: what istiod pushes for k8s/components/istio (tests.mesh.istio): the platform's front
  (plain HTTP here, then mesh mTLS with its workload certificate), the gateway with the CUSTOM
  ext_authz, the EnvoyFilters and the license rule, and the inbound sidecars (STRICT mTLS +
  AuthorizationPolicies) of authz, extproc and the broker.
- ``envoy-gateway``: what Envoy Gateway pushes for k8s/components/envoy-gateway
  (tests.mesh.gateway): the viewers' HTTPS listener and the license listener that validates the
  front's client certificate. Its rate limit service (envoyproxy/ratelimit in a cluster) is
  authz's here: both speak the rate limit service API.

Each case asserts the behaviour, and where the modes differ the difference is the one
docs/DEPLOYMENT.md ("Choose your Envoy") documents.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest
import yaml

from devstack.stack import Stack
from playback_drm.problem import PROBLEM_CONTENT_TYPE
from tests.k8s.render import K8S_DIR, render
from tests.mesh import gateway, istio
from tests.mesh.envoy import Certificate, Endpoint, Site
from tests.mesh.pki import MeshCa
from tests.support.procs import free_port
from tests.support.servers import EnvoyServer, RedisServer, start_envoy
from tests.support.stack import Reply, http, start_stack, stop_and_audit

pytestmark = pytest.mark.integration

PER_USER_LIMIT = 20  # per second, every mode: one rate limit service (authz's, on Redis)
NAMESPACE = "playback"  # the prod overlays' namespace, as the mesh configuration names it
MODES = ("sidecar", "istio", "envoy-gateway")


@dataclass
class Mode:
    name: str
    base: str  # where viewers' requests go
    license_base: str  # where the trusted front sends license requests
    context: ssl.SSLContext | None = None
    license_context: ssl.SSLContext | None = None
    # a license request from a client the license rule refuses: a reply, or the TLS error
    intruder: Callable[[bytes, dict[str, str]], Reply] = field(default=lambda b, h: _never())

    def get(self, path: str, **headers: str) -> Reply:
        url = path if path.startswith(("http://", "https://")) else self.base + path
        return http(url, headers=headers, context=self.context)

    def license(
        self, path: str, body: bytes, headers: dict[str, str], method: str = "POST"
    ) -> Reply:
        return http(
            self.license_base + path,
            method=method,
            body=body if method == "POST" else None,
            headers=headers,
            context=self.license_context,
        )


def _never() -> Reply:
    raise AssertionError("no intruder configured")


def _client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # the test certificates name localhost and 127.0.0.1
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


# --------------------------------------------------------------------------------- the modes


def _services(stack: Stack) -> dict[tuple[str, int], Endpoint]:
    p = stack.ports
    return {
        ("origin", 80): Endpoint("127.0.0.1", p.origin),
        ("license-broker", 9003): Endpoint("127.0.0.1", p.broker),
        ("playback-authz", 9001): Endpoint("127.0.0.1", p.authz_grpc),
        ("playback-extproc", 9002): Endpoint("127.0.0.1", p.extproc_grpc),
        # Envoy Gateway's rate limit service: authz's speaks the same API
        ("envoy-gateway-ratelimit", 8081): Endpoint("127.0.0.1", p.authz_grpc),
    }


def _istio_config(
    objs: list[dict[str, Any]], stack: Stack, pki_dir: Path
) -> tuple[dict[str, Any], MeshCa]:
    mesh = yaml.safe_load((K8S_DIR / "components" / "istio" / "mesh-config.yaml").read_text())
    ca = MeshCa(pki_dir)
    workloads = {a: ca.workload(NAMESPACE, a) for a in _accounts(objs)}
    # the platform's front, with the identity the license rule admits, and one it does not
    [rule] = [o for o in objs if o["metadata"]["name"] == "playback-license-clients"]
    front = rule["spec"]["rules"][0]["from"][0]["source"]["notPrincipals"][0]
    front_ns, front_sa = front.split("/")[2], front.split("/")[4]
    workloads["front"] = ca.workload(front_ns, front_sa)
    workloads["intruder"] = ca.workload("tenant-b", "curious-app")
    ids = istio.MeshIdentities(
        str(ca.ca_cert), {k: Certificate(str(w.cert), str(w.key)) for k, w in workloads.items()}
    )
    listeners = {
        "gateway": free_port(),
        "inbound|9003|license-broker": free_port(),
        "inbound|9001|playback-authz": free_port(),
        "inbound|9002|playback-extproc": free_port(),
        "front|trusted": free_port(),
        "front|intruder": free_port(),
    }
    site = Site(
        NAMESPACE,
        _services(stack),
        listeners,
        free_port(),
        {"fronts": {"trusted": "front", "intruder": "intruder"}},
    )
    return istio.translate(objs, mesh, site, ids), ca


def _accounts(objs: list[dict[str, Any]]) -> set[str]:
    return {
        o["spec"]["template"]["spec"]["serviceAccountName"]
        for o in objs
        if o["kind"] == "Deployment"
    }


def _start(config: dict[str, Any], directory: Path, name: str) -> EnvoyServer:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return start_envoy(
        path, config["admin"]["address"]["socket_address"]["port_value"], directory, name
    )


def _front_port(config: dict[str, Any], name: str) -> int:
    for lst in config["static_resources"]["listeners"]:
        if lst["name"] == name:
            return int(lst["address"]["socket_address"]["port_value"])
    raise KeyError(name)


@dataclass
class Modes:
    stack: Stack
    by_name: dict[str, Mode]


@pytest.fixture(scope="module")
def modes(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Modes]:
    root = tmp_path_factory.mktemp("modes")
    stack = start_stack(
        root, redis_url=redis_server.url, per_user_rps=PER_USER_LIMIT, per_user_burst=PER_USER_LIMIT
    )
    envoys: list[EnvoyServer] = []
    try:
        assert stack.pki is not None
        pki = stack.pki
        out = {
            "sidecar": Mode(
                "sidecar",
                stack.gateway,
                stack.gateway,
                intruder=lambda body, headers: http(
                    f"{stack.sidecar}/drm/license",
                    method="POST",
                    body=body,
                    headers=headers,
                    context=_client_context(pki.ca_cert, pki.other_cert, pki.other_key),
                ),
            )
        }

        objs = render(K8S_DIR / "overlays" / "istio-prod")
        config, _ = _istio_config(objs, stack, root / "mesh-pki")
        envoys.append(_start(config, root, "envoy-istio"))
        front = f"http://127.0.0.1:{_front_port(config, 'front|trusted')}"
        intruder = f"http://127.0.0.1:{_front_port(config, 'front|intruder')}"
        out["istio"] = Mode(
            "istio",
            front,
            front,
            intruder=lambda body, headers: http(
                f"{intruder}/drm/license", method="POST", body=body, headers=headers
            ),
        )
        # the same without the header-stripping EnvoyFilter: authz alone keeps forgeries out
        bare = [o for o in objs if o["metadata"]["name"] != "playback-gateway-headers"]
        config, _ = _istio_config(bare, stack, root / "mesh-pki-bare")
        envoys.append(_start(config, root, "envoy-istio-bare"))
        bare_front = f"http://127.0.0.1:{_front_port(config, 'front|trusted')}"
        out["istio-without-header-filter"] = Mode(
            "istio-without-header-filter", bare_front, bare_front
        )

        objs = render(K8S_DIR / "overlays" / "envoy-gateway-prod")
        eg_config = yaml.safe_load(
            (K8S_DIR / "components" / "envoy-gateway" / "envoy-gateway-config.yaml").read_text()
        )
        tls = gateway.SecretFiles(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert))
        ports = {"https": free_port(), "license": free_port()}
        site = Site(NAMESPACE, _services(stack), ports, free_port())
        config = gateway.translate(
            objs, eg_config, site, {"playback-public-tls": tls, "playback-edge-tls": tls}
        )
        envoys.append(_start(config, root, "envoy-gateway"))
        viewer = _client_context(pki.ca_cert)
        front_ctx = _client_context(pki.ca_cert, pki.gateway_cert, pki.gateway_key)
        other_ctx = _client_context(pki.ca_cert, pki.other_cert, pki.other_key)
        license_base = f"https://127.0.0.1:{ports['license']}"
        out["envoy-gateway"] = Mode(
            "envoy-gateway",
            f"https://127.0.0.1:{ports['https']}",
            license_base,
            context=viewer,
            license_context=front_ctx,
            intruder=lambda body, headers: http(
                f"{license_base}/drm/license",
                method="POST",
                body=body,
                headers=headers,
                context=other_ctx,
            ),
        )
        yield Modes(stack, out)
    finally:
        for envoy in envoys:
            envoy.process.stop()
        stop_and_audit(stack)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, modes: Modes) -> Mode:
    return modes.by_name[request.param]


@pytest.fixture
def stack(modes: Modes) -> Stack:
    return modes.stack


# ---------------------------------------------------------------------------------- helpers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def problem(reply: Reply) -> str:
    assert reply.headers.get("content-type") == PROBLEM_CONTENT_TYPE, (reply.status, reply.body)
    code: str = reply.json()["code"]
    return code


def origin_requests(stack: Stack) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = http(
        f"http://127.0.0.1:{stack.ports.origin}/_origin/requests"
    ).json()
    return found


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def license_body(stack: Stack) -> bytes:
    keys = json.loads((stack.media_dir / "keys.json").read_text())["videos"]["demo"]["keys"]
    kid = next(k for k in keys if k["track"] != "AUDIO")["kid"]
    request = json.dumps({"kids": [_b64url(bytes.fromhex(kid))], "type": "temporary"}).encode()
    return json.dumps(
        {"videoId": "demo", "licenseRequest": base64.b64encode(request).decode()}
    ).encode()


# ------------------------------------------------------------------------------ the matrix


def test_no_token_is_401_with_a_challenge(mode: Mode) -> None:
    reply = mode.get("/playback/demo/manifest")
    assert reply.status == 401
    assert problem(reply) == "token_missing"
    assert reply.headers["www-authenticate"] == 'Bearer realm="playback"'


def test_a_malformed_token_is_401(mode: Mode) -> None:
    reply = mode.get("/playback/demo/manifest?token=garbage")
    assert (reply.status, problem(reply)) == (401, "token_malformed")


def test_an_unentitled_viewer_is_403(mode: Mode, stack: Stack) -> None:
    reply = mode.get("/playback/demo-uhd/manifest", **bearer(stack.token("bob")))
    assert (reply.status, problem(reply)) == (403, "not_entitled")


def test_an_entitled_viewer_gets_signed_manifests(mode: Mode, stack: Stack) -> None:
    token = stack.token("alice")
    hls = mode.get(f"/playback/demo/manifest?token={token}")
    assert hls.status == 200, hls.body[:300]
    assert hls.body.startswith(b"#EXTM3U")
    assert b"pdt=" in hls.body
    assert hls.headers["cache-control"] == "private, no-store"
    dash = mode.get("/playback/demo/manifest?format=dash", **bearer(token))
    assert dash.status == 200
    assert b"<MPD" in dash.body
    assert b"pdt=" in dash.body
    # the viewer's token never reaches the origin, nor their Authorization header
    assert all(token not in json.dumps(entry) for entry in origin_requests(stack))


def test_the_json_form_and_the_signed_media_chain(mode: Mode, stack: Stack) -> None:
    """Accept: application/json -> a signed manifest URL; the child playlist it leads to is
    signed again, its key URI and segments load; the same paths without a signature are 403."""
    reply = mode.get(
        "/playback/demo/manifest", Accept="application/json", **bearer(stack.token("alice"))
    )
    assert reply.status == 200, reply.body
    doc = reply.json()
    assert doc["url"].startswith(mode.base + "/media/demo/"), doc
    master = mode.get(doc["url"])
    assert master.status == 200
    variant = next(
        line
        for line in master.body.decode().splitlines()
        if "pdt=" in line and not line.startswith("#")
    )
    playlist_url = urljoin(doc["url"], variant)
    playlist = mode.get(playlist_url)
    assert playlist.status == 200
    text = playlist.body.decode()
    [key_uri] = set(re.findall(r'#EXT-X-KEY:[^\n]*URI="([^"]+)"', text))
    key = mode.get(urljoin(playlist_url, key_uri))
    assert (key.status, len(key.body)) == (200, 16)
    segment = next(line for line in text.splitlines() if line and not line.startswith("#"))
    assert mode.get(urljoin(playlist_url, segment)).status == 200
    unsigned = mode.get(urlsplit(urljoin(playlist_url, segment)).path)
    assert (unsigned.status, problem(unsigned)) == (403, "url_token_missing")


def test_forged_identity_headers_never_decide_nor_reach_the_origin(
    mode: Mode, stack: Stack
) -> None:
    forged_user = f"mallory-{mode.name}"
    denied = mode.get(
        "/playback/demo/manifest",
        **bearer(stack.token("carol")),
        **{"X-Playback-User": "alice", "X-Playback-Plan": "premium"},
    )
    assert (denied.status, problem(denied)) == (403, "not_entitled")
    url = mode.get(
        "/playback/demo/manifest", Accept="application/json", **bearer(stack.token("alice"))
    ).json()["url"]
    media = mode.get(url, **{"X-Playback-User": forged_user, "X-Playback-Plan": "forged-plan"})
    assert media.status == 200
    seen = json.dumps(origin_requests(stack))
    assert forged_user not in seen
    assert "forged-plan" not in seen


def test_authz_removes_forgeries_where_the_proxy_strips_nothing(modes: Modes, stack: Stack) -> None:
    """Istio without the header-stripping EnvoyFilter: authz's headers_to_remove is what keeps a
    forged user or plan from the origin on a signed URL (authz writes only the video there)."""
    mode = modes.by_name["istio-without-header-filter"]
    url = mode.get(
        "/playback/demo/manifest", Accept="application/json", **bearer(stack.token("alice"))
    ).json()["url"]
    media = mode.get(url, **{"X-Playback-User": "mallory-bare", "X-Playback-Plan": "forged-bare"})
    assert media.status == 200
    seen = json.dumps(origin_requests(stack))
    assert "mallory-bare" not in seen
    assert "forged-bare" not in seen
    # and a forged video is overwritten with the one the signature covers
    media = mode.get(url, **{"X-Playback-Video": "demo-uhd"})
    last = [e for e in origin_requests(stack) if e["headers"].get("x-playback-video")][-1]
    assert last["headers"]["x-playback-video"] == "demo"


def test_licenses_for_the_entitled_through_the_trusted_front(mode: Mode, stack: Stack) -> None:
    headers = {**bearer(stack.token("alice")), "Content-Type": "application/json"}
    reply = mode.license("/drm/license", license_body(stack), headers)
    assert reply.status == 200, reply.body
    assert reply.json()["license"]
    missing = mode.license(
        "/drm/license", license_body(stack), {"Content-Type": "application/json"}
    )
    assert (missing.status, problem(missing)) == (401, "token_missing")
    carol = mode.license(
        "/drm/license",
        license_body(stack),
        {**bearer(stack.token("carol")), "Content-Type": "application/json"},
    )
    assert (carol.status, problem(carol)) == (403, "not_entitled")


def test_licenses_only_from_the_trusted_front(mode: Mode, stack: Stack) -> None:
    """The client-principal rule: our RBAC (403 client_not_allowed), Istio's DENY policy on the
    front's SPIFFE identity (403 from Envoy's RBAC), Envoy Gateway's client-certificate
    validation on the license listener (the TLS handshake fails)."""
    headers = {**bearer(stack.token("alice")), "Content-Type": "application/json"}
    if mode.name == "envoy-gateway":
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            mode.intruder(license_body(stack), headers)
        return
    reply = mode.intruder(license_body(stack), headers)
    assert reply.status == 403
    if mode.name == "sidecar":
        assert problem(reply) == "client_not_allowed"
    else:
        assert reply.body.startswith(b"RBAC: access denied")


def test_drm_certificates_need_no_token(mode: Mode, modes: Modes) -> None:
    reply = mode.get("/drm/certificate/widevine")
    expected = modes.by_name["sidecar"].get("/drm/certificate/widevine")
    assert reply.status not in (401, 403)
    assert (reply.status, reply.body) == (expected.status, expected.body)


def test_unknown_routes_are_404(mode: Mode) -> None:
    reply = mode.get("/nope")
    assert reply.status == 404
    if mode.name != "envoy-gateway":  # Envoy Gateway answers its own plain 404
        assert problem(reply) == "not_found"


def test_cors_preflights_and_denials_carry_cors_headers(mode: Mode) -> None:
    origin = "https://player.example"
    preflight = http(
        mode.license_base + "/drm/license",
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        context=mode.license_context,
    )
    assert preflight.status == 200, preflight.body
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "POST" in preflight.headers["access-control-allow-methods"]
    denied = mode.get("/playback/demo/manifest", Origin=origin)
    assert denied.status == 401
    assert denied.headers["access-control-allow-origin"] == origin


async def _burst(mode: Mode, token: str, count: int) -> list[tuple[int, str, bytes]]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    connector = aiohttp.TCPConnector(limit=32, ssl=mode.context or False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> tuple[int, str, bytes]:
            async with session.get(mode.base + "/playback/demo/manifest", headers=headers) as resp:
                return resp.status, resp.headers.get("retry-after", ""), await resp.read()

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_the_per_user_limit(mode: Mode, stack: Stack) -> None:
    """One budget per viewer across replicas (the rate limit service): a burst of five times the
    limit sees 429 problem answers with Retry-After; another viewer is not affected."""
    await asyncio.sleep(1.1)  # earlier cases spent some of bob's budget
    bob, alice = stack.token("bob"), stack.token("alice")
    burst, other = await asyncio.gather(
        _burst(mode, bob, 5 * PER_USER_LIMIT), _burst(mode, alice, PER_USER_LIMIT // 2)
    )
    statuses = [status for status, _, _ in burst]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= PER_USER_LIMIT, statuses
    refused = [(retry, body) for status, retry, body in burst if status == 429]
    assert all(retry for retry, _ in refused)
    assert {json.loads(body)["code"] for _, body in refused} == {"rate_limited"}
    assert [status for status, _, _ in other] == [200] * (PER_USER_LIMIT // 2)
    await asyncio.sleep(1.1)  # leave the budgets refilled
