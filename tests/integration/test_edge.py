"""The protected edge as a new user meets it: the real Envoy, authz, emulators, through the gateway.

Covers issue 2's must-show list: 401s for every bad token, 403 for the unentitled, 200 for the
entitled, 503 (not 403) when Billing is down, mTLS on the license route, rate limits, health, and
that tokens and forged identity headers never reach the origin.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import shutil
import signal
import ssl
import time
import urllib.error
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.emulators.auth import load_or_create_key, sign_token
from devstack.stack import Stack
from playback_drm.problem import PROBLEM_CONTENT_TYPE
from tests.integration.test_stream_limits import (
    CLEARKEY,
    clearkey_challenge,
    license,
    new_viewer,
    refused,
    start,
)
from tests.support.stack import http, start_stack, stop_and_audit

pytestmark = pytest.mark.integration


def manifest(stack: Stack, video: str = "demo", **headers: str) -> tuple[int, dict[str, object]]:
    reply = http(f"{stack.gateway}/playback/{video}/manifest", headers=headers)
    try:
        doc = json.loads(reply.body)
    except ValueError:
        doc = {}
    return reply.status, doc if isinstance(doc, dict) else {}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_no_token_is_401_with_challenge(stack: Stack) -> None:
    reply = http(f"{stack.gateway}/playback/demo/manifest")
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == 'Bearer realm="playback"'
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["code"] == "token_missing"


def test_bad_tokens_are_401(stack: Stack) -> None:
    key = load_or_create_key(stack.jwt_key_path)
    good = stack.token("alice")
    header, payload, _ = good.split(".")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "token_expired": sign_token(key, "alice", ttl=-120),
        "token_algorithm_rejected": f"{b64(json.dumps({'alg': 'none'}).encode())}.{payload}.",
        "token_claims_invalid": sign_token(key, "alice", audience="someone-else"),
        "token_unknown_key": sign_token(stranger, "alice"),
        "token_bad_signature": f"{header}.{payload}.{b64(b'x' * 256)}",
        "token_malformed": "garbage",
    }
    for code, token in cases.items():
        status, doc = manifest(stack, **bearer(token))
        assert (status, doc.get("code")) == (401, code), code
        # the same through the query parameter
        reply = http(f"{stack.gateway}/playback/demo/manifest?token={token}")
        assert reply.status == 401, code


def test_entitlements(stack: Stack) -> None:
    assert manifest(stack, **bearer(stack.token("alice")))[0] == 200
    assert manifest(stack, "demo-uhd", **bearer(stack.token("alice")))[0] == 200
    assert manifest(stack, **bearer(stack.token("bob")))[0] == 200
    status, doc = manifest(stack, "demo-uhd", **bearer(stack.token("bob")))
    assert (status, doc["code"]) == (403, "not_entitled")
    status, doc = manifest(stack, **bearer(stack.token("carol")))
    assert (status, doc["code"]) == (403, "not_entitled")


def test_premium_means_every_video_the_origin_has(stack: Stack) -> None:
    """A title outside Billing's catalog that the origin serves is premium content: alice
    (premium) plays it, bob (basic) is refused for his plan; a title the origin lacks is
    unknown to everyone."""
    video = f"offcat-{uuid.uuid4().hex[:8]}"
    origin_dir = stack.media_dir / "origin"
    shutil.copytree(origin_dir / "demo", origin_dir / video)
    try:
        assert manifest(stack, video, **bearer(stack.token("alice")))[0] == 200
        status, doc = manifest(stack, video, **bearer(stack.token("bob")))
        assert (status, doc["code"]) == (403, "not_entitled")
        assert "plan_too_low" in str(doc["detail"])
    finally:
        shutil.rmtree(origin_dir / video, ignore_errors=True)
    status, doc = manifest(stack, f"absent-{uuid.uuid4().hex[:8]}", **bearer(stack.token("alice")))
    assert (status, doc["code"]) == (403, "not_entitled")
    assert "unknown_video" in str(doc["detail"])


def _errors_of(stack: Stack, user: str, codes: set[str]) -> dict[str, dict[str, Any]]:
    """``user``'s PlaybackError events by code, once one of each of ``codes`` is recorded."""
    deadline = time.monotonic() + 10
    while True:
        found: dict[str, dict[str, Any]] = {}
        for event in stack.events():
            data = event.get("data")
            if (
                str(event.get("type", "")).endswith(("PlaybackError", ".playback.error.v1"))
                and isinstance(data, dict)
                and data.get("userId") == user
            ):
                found.setdefault(str(data.get("code")), data)
        if codes <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_denials_of_an_identified_viewer_name_the_viewer_and_the_video(stack: Stack) -> None:
    """Issue 14: a PlaybackError for a viewer whose JWT was valid carries their userId (and the
    videoId), whichever check refused them: entitlement on a manifest or a JWT license, or a
    stream slot on a session's license URL."""
    user = new_viewer(stack, max_streams=1)  # basic: demo-uhd is not theirs
    assert manifest(stack, "demo-uhd", **bearer(stack.token(user)))[0] == 403
    jwt_license = http(
        f"{stack.gateway}/drm/license",
        method="POST",
        body=json.dumps({"videoId": "demo-uhd", "licenseRequest": "e30"}).encode(),
        headers={**bearer(stack.token(user)), "Content-Type": "application/json"},
    )
    assert jwt_license.status == 403
    challenge = clearkey_challenge(stack)
    assert license(start(stack, user), CLEARKEY, challenge).status == 200
    refused(license(start(stack, user), CLEARKEY, challenge))
    found = _errors_of(stack, user, {"not_entitled", "stream_limit_reached"})
    assert found.get("not_entitled", {}).get("videoId") == "demo-uhd", found
    assert found.get("stream_limit_reached", {}).get("videoId") == "demo", found
    entitled = [
        data
        for event in stack.events()
        if isinstance(data := event.get("data"), dict)
        and data.get("userId") == user
        and data.get("code") == "not_entitled"
    ]
    paths = {data.get("path") for data in entitled}
    assert {"/playback/demo-uhd/manifest", "/drm/license"} <= paths, entitled


def test_token_query_parameter_never_reaches_the_origin(stack: Stack) -> None:
    token = stack.token("alice")
    assert http(f"{stack.gateway}/playback/demo/manifest?token={token}").status == 200
    seen = http(f"http://127.0.0.1:{stack.ports.origin}/_origin/requests").json()
    assert seen, "the origin saw no request"
    assert all("token" not in entry["query"] for entry in seen)
    assert all(token not in json.dumps(entry) for entry in seen)


def test_forged_identity_headers_are_stripped(stack: Stack) -> None:
    # carol forges alice's identity: authz overwrites it, and the decision is carol's.
    status, _ = manifest(
        stack,
        **bearer(stack.token("carol")),
        **{"X-Playback-User": "alice", "X-Playback-Plan": "premium"},
    )
    assert status == 403
    # on signed media URLs authz sets no user: a forged one must not survive to the origin
    reply = http(
        f"{stack.gateway}/playback/demo/manifest",
        headers={**bearer(stack.token("alice")), "Accept": "application/json"},
    )
    url = reply.json()["url"]
    forged = http(url, headers={"X-Playback-User": "mallory"})
    assert forged.status == 200
    seen = http(f"http://127.0.0.1:{stack.ports.origin}/_origin/requests").json()
    assert all(entry["headers"].get("x-playback-user") != "mallory" for entry in seen)


def test_billing_outage_is_503_not_403(stack: Stack) -> None:
    stack.stop_component("billing-emulator")
    try:
        # a (user, video) pair nobody asked about yet: no cached answer to fall back on
        status, doc = manifest(stack, "outage-probe", **bearer(stack.token("alice")))
        assert (status, doc["code"]) == (503, "billing_unavailable")
        health = http(f"{stack.gateway}/health")
        assert health.status == 503
        assert health.json()["checks"]["billing"] == "unreachable"
    finally:
        stack.start_component("billing-emulator")
    # a restarted Billing keeps its subscribers (BILLING_STATE_FILE): the shared stack's override
    # of alice's stream limit is still there
    kept = http(
        f"http://127.0.0.1:{stack.ports.billing}/v1/entitlements?userId=alice&videoId=demo"
    ).json()
    assert kept["maxStreams"] == 0, kept
    # recovery: readiness turns green again within a few seconds, and decisions resume
    deadline = time.monotonic() + 5
    while http(f"{stack.gateway}/health").status != 200:
        assert time.monotonic() < deadline, "readiness did not recover after Billing came back"
        time.sleep(0.2)
    status, doc = manifest(stack, "outage-probe", **bearer(stack.token("alice")))
    assert (status, doc["code"]) == (403, "not_entitled")  # Billing answers: unknown video


def test_a_hung_billing_is_a_fast_503_that_names_billing(stack: Stack) -> None:
    """Billing stopped mid-flight (SIGSTOP: it accepts, never answers): a viewer and video not
    in the entitlement cache get 503 ``billing_unavailable`` within BILLING_TIMEOUT_SECONDS
    (0.3 s, under Envoy's 0.5 s for authz, which would say ``authz_unavailable`` instead)."""
    proc = stack.processes["billing-emulator"].proc
    assert proc is not None
    token = stack.token("alice")
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        for n in range(3):
            started = time.monotonic()
            status, doc = manifest(stack, f"hung-probe-{uuid.uuid4().hex[:6]}", **bearer(token))
            elapsed = time.monotonic() - started
            assert (status, doc.get("code")) == (503, "billing_unavailable"), (n, doc)
            # 0.3 s; a stopped Billing never answers, so anything bounded is the timeout (room
            # for a busy box)
            assert elapsed < 3.0, f"{elapsed:.2f}s"
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert manifest(stack, **bearer(token))[0] == 200


def test_health_through_envoy(stack: Stack) -> None:
    reply = http(f"{stack.gateway}/health")
    assert reply.status == 200
    assert reply.json()["checks"] == {"jwks": "ok", "billing": "ok"}
    assert http(f"{stack.gateway}/health/live").status == 200


def _tls_context(stack: Stack, cert: str | None = None) -> ssl.SSLContext:
    assert stack.pki is not None
    ctx = ssl.create_default_context(cafile=str(stack.pki.ca_cert))
    ctx.check_hostname = False  # the dev cert names localhost and 127.0.0.1; SNI not needed here
    if cert == "gateway":
        ctx.load_cert_chain(str(stack.pki.gateway_cert), str(stack.pki.gateway_key))
    elif cert == "other":
        ctx.load_cert_chain(str(stack.pki.other_cert), str(stack.pki.other_key))
    return ctx


def test_sidecar_refuses_clients_without_certificate(stack: Stack) -> None:
    url = f"{stack.sidecar}/drm/license"
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        http(url, method="POST", body=b"{}", context=_tls_context(stack))


def test_license_route_admits_only_allowed_client_identities(stack: Stack) -> None:
    url = f"{stack.sidecar}/drm/license"
    other = http(url, method="POST", body=b"{}", context=_tls_context(stack, "other"))
    assert other.status == 403
    assert other.json()["code"] == "client_not_allowed"
    gateway = http(url, method="POST", body=b"{}", context=_tls_context(stack, "gateway"))
    assert gateway.status == 401  # past RBAC: authz asks for a token
    assert gateway.json()["code"] == "token_missing"
    # other routes only need a certificate from our CA
    assert http(f"{stack.sidecar}/health/live", context=_tls_context(stack, "other")).status == 200


def test_license_route_through_gateway_reaches_authz(stack: Stack) -> None:
    reply = http(f"{stack.gateway}/drm/license", method="POST", body=b"{}")
    assert reply.status == 401
    assert reply.json()["code"] == "token_missing"
    carol = http(
        f"{stack.gateway}/drm/license",
        method="POST",
        body=json.dumps({"videoId": "demo", "licenseRequest": "e30"}).encode(),
        headers={**bearer(stack.token("carol")), "Content-Type": "application/json"},
    )
    assert carol.status == 403


def test_unknown_route_is_problem_json_404(stack: Stack) -> None:
    reply = http(f"{stack.gateway}/nope")
    assert reply.status == 404
    assert reply.json()["code"] == "not_found"


async def _burst(
    url: str, token: str, count: int, refusals: list[tuple[str, bytes]] | None = None
) -> list[int]:
    """Status codes of ``count`` concurrent requests; 429 answers' (content type, body) go to
    ``refusals``."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    # a few at a time: the rate limit service answers within its 0.25 s on a busy machine, or
    # the limit fails open (by design)
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.get(url, headers=headers) as resp:
                body = await resp.read()
                if resp.status == 429 and refusals is not None:
                    refusals.append((resp.headers.get("content-type", ""), body))
                return resp.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


PER_USER = 20  # the limited stack's per-user rate (and burst): a burst of a few times that


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of the module's own with a low per-user limit, so that what the limit admits can
    be bounded however slowly a busy machine sends the burst."""
    started = start_stack(
        tmp_path_factory.mktemp("limited"), per_user_rps=PER_USER, per_user_burst=PER_USER
    )
    try:
        yield started
    finally:
        stop_and_audit(started)


def admitted_at_most(elapsed: float) -> int:
    """What a per-user limit of PER_USER/s (a sliding window, or a token bucket of PER_USER)
    admits in ``elapsed`` seconds at most."""
    return PER_USER + PER_USER * math.ceil(elapsed)


async def test_per_user_rate_limit(limited: Stack) -> None:
    url = f"{limited.gateway}/playback/demo/manifest"
    alice, bob = limited.token("alice"), limited.token("bob")
    await _burst(url, alice, 1)  # warm caches and connections
    await asyncio.sleep(1.1)
    started = time.monotonic()
    refusals: list[tuple[str, bytes]] = []
    alice_codes, bob_codes = await asyncio.gather(
        _burst(url, alice, 8 * PER_USER, refusals), _burst(url, bob, PER_USER // 2)
    )
    elapsed = time.monotonic() - started
    assert set(alice_codes) <= {200, 429}
    assert alice_codes.count(200) <= admitted_at_most(elapsed), (elapsed, alice_codes)
    assert alice_codes.count(429) > 0, alice_codes
    assert bob_codes == [200] * (PER_USER // 2)
    # every refusal is the problem+json of the API, whichever limiter made it
    assert {content_type for content_type, _ in refusals} == {PROBLEM_CONTENT_TYPE}, refusals[:3]
    assert {json.loads(body)["code"] for _, body in refusals} == {"rate_limited"}
    reply = http(url, headers=bearer(alice) | {"Accept": "application/json"})
    if reply.status == 429:
        assert reply.headers["retry-after"]
        assert reply.json()["code"] == "rate_limited"


def test_signed_urls_only_through_envoy(stack: Stack) -> None:
    # The JSON form works through the gateway ...
    reply = http(
        f"{stack.gateway}/playback/demo/manifest",
        headers={**bearer(stack.token("alice")), "Accept": "application/json"},
    )
    assert reply.status == 200
    doc = reply.json()
    assert "/media/demo/" in doc["url"]
    assert "pdt=" in doc["url"]
    assert doc["expiresAt"].endswith("Z")
    assert http(doc["url"]).status == 200
    # ... and extproc's own HTTP port (health, metrics) cannot be talked into signing anything.
    forged = http(
        f"http://127.0.0.1:{stack.ports.extproc_http}/playback/demo/manifest",
        headers={"X-Playback-User": "mallory", "Accept": "application/json"},
    )
    assert forged.status == 404
