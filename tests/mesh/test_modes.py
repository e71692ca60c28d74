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
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest

from devstack.stack import Stack
from playback_drm.problem import PROBLEM_CONTENT_TYPE
from tests.mesh.harness import PLAYER_CORS, Mode, Modes, start_modes
from tests.support.servers import RedisServer
from tests.support.stack import Reply, add_subscriber, http, stop_and_audit

pytestmark = pytest.mark.integration

PER_USER_LIMIT = 20  # per second, every mode: one rate limit service (authz's, on Redis)
MODES = ("sidecar", "istio", "envoy-gateway")


@pytest.fixture(scope="module")
def modes(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Modes]:
    started = start_modes(tmp_path_factory.mktemp("modes"), redis_server.url, PER_USER_LIMIT)
    try:
        yield started
    finally:
        started.stop()
        stop_and_audit(started.stack)


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
    # a viewer of the case's own: the earlier cases spend alice's per-user budget
    viewer = add_subscriber(stack, f"licensee-{mode.name}")
    headers = {**bearer(stack.token(viewer)), "Content-Type": "application/json"}
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
    """One policy in every mode (envoyconf.cors): the listed origin, with credentials."""
    (origin,) = PLAYER_CORS.origins
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
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    denied = mode.get("/playback/demo/manifest", Origin=origin)
    assert denied.status == 401
    assert denied.headers["access-control-allow-origin"] == origin
    assert denied.headers["access-control-allow-credentials"] == "true"
    assert "www-authenticate" in denied.headers["access-control-expose-headers"].lower()
    # an origin not on the list: never allowed, never '*'
    other = mode.get("/playback/demo/manifest", Origin="https://evil.example")
    assert other.status == 401
    assert "access-control-allow-origin" not in other.headers


def test_cors_is_the_proxys_alone(mode: Mode, stack: Stack) -> None:
    """The origin server answers media with its own "Access-Control-Allow-Origin: *" (as a public
    bucket may): every mode drops it, answers the listed origin itself, and varies by Origin."""
    (origin,) = PLAYER_CORS.origins
    # a viewer of the case's own: the earlier cases spend alice's per-user budget (20/s)
    viewer = add_subscriber(stack, f"cors-{mode.name}")
    reply = mode.get(
        "/playback/demo/manifest", Accept="application/json", **bearer(stack.token(viewer))
    )
    url = reply.json()["url"]  # the signed master playlist, from the origin through the proxy
    listed = mode.get(url, Origin=origin)
    other = mode.get(url, Origin="https://evil.example")

    assert listed.status == other.status == 200
    assert listed.headers["access-control-allow-origin"] == origin
    assert "access-control-allow-origin" not in other.headers, other.headers
    assert "origin" in listed.headers.get("vary", "").lower(), listed.headers


async def _burst(mode: Mode, token: str, count: int) -> list[tuple[int, str, bytes]]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    # a few at a time: the rate limit service answers within its 0.25 s or the limit fails open
    connector = aiohttp.TCPConnector(limit=8, ssl=mode.context or False)
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
