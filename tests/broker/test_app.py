"""The broker's HTTP API end to end: real aiohttp server on loopback, in-memory key store and
caches, DRM providers on the emulator."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from license_broker.app import serve
from license_broker.config import BrokerConfig
from license_broker.demo_keys import DEMO_KEY, DEMO_KID, DEMO_UHD_KID
from license_broker.encoding import b64url
from license_broker.errors import KeyStoreUnavailable
from license_broker.model import VideoKeys
from playback_drm.events import LICENSE_ISSUED, PLAYBACK_ERROR, MemorySink
from tests.broker.conftest import (
    IV_HD,
    KEY_HD,
    KEY_SD,
    KEY_UHD,
    KEY_UHD_ONLY,
    KID_AUDIO,
    KID_HD,
    KID_SD,
    KID_UHD,
    KID_UHD_ONLY,
    BrokerFactory,
    Client,
    problem,
    viewer,
)
from tests.support.procs import free_port


def ck_request(*kids_hex: str, **extra: Any) -> bytes:
    return json.dumps(
        {"kids": [b64url(bytes.fromhex(k)) for k in kids_hex], "type": "temporary", **extra}
    ).encode()


def json_api(video: str, challenge: bytes, key_system: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"videoId": video, "licenseRequest": base64.b64encode(challenge).decode()}
    if key_system:
        doc["keySystem"] = key_system
    return doc


def jwk_keys(doc: dict[str, Any]) -> dict[str, str]:
    """kid hex -> key hex of a ClearKey JWK set."""
    out = {}
    for jwk in doc["keys"]:
        assert jwk["kty"] == "oct"
        assert "=" not in jwk["kid"] + jwk["k"]
        out[base64.urlsafe_b64decode(jwk["kid"] + "==").hex()] = base64.urlsafe_b64decode(
            jwk["k"] + "=="
        ).hex()
    return out


# ---------------------------------------------------------------------------------- ClearKey


async def test_clearkey_json_api_returns_the_stored_key(broker: Client, events: MemorySink) -> None:
    resp = await broker.post(
        "/drm/license", json=json_api("movie", ck_request(KID_HD)), headers=viewer()
    )
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    assert len(doc["licenseId"]) == 32
    assert doc["expiresAt"].endswith("Z")
    assert doc["keySystem"] == "org.w3.clearkey"
    jwks = json.loads(base64.b64decode(doc["license"]))
    assert jwk_keys(jwks) == {KID_HD: KEY_HD}
    assert jwks["type"] == "temporary"
    issued = [e for e in events.events if e.type == LICENSE_ISSUED]
    assert len(issued) == 1
    assert issued[0].data["licenseId"] == doc["licenseId"]
    assert issued[0].data["userId"] == "alice"
    assert issued[0].data["cached"] is False
    assert issued[0].data["plan"] == "premium"


@pytest.mark.parametrize(
    "kid_spelling",
    [
        pytest.param(lambda b: base64.urlsafe_b64encode(b).decode(), id="padded-base64url"),
        pytest.param(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="), id="base64url"),
        pytest.param(lambda b: base64.b64encode(b).decode(), id="standard-base64"),
    ],
)
async def test_native_clearkey_is_lenient_on_input(broker: Client, kid_spelling: Any) -> None:
    body = json.dumps({"kids": [kid_spelling(bytes.fromhex(KID_SD))]})  # no "type": old clients
    resp = await broker.post(
        "/drm/license/org.w3.clearkey?videoId=movie", data=body, headers=viewer()
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    assert len(resp.headers["X-Playback-License-Id"]) == 32
    doc = await resp.json()
    assert jwk_keys(doc) == {KID_SD: KEY_SD}
    assert doc["type"] == "temporary"


async def test_key_system_is_inferred_from_a_clearkey_challenge(broker: Client) -> None:
    resp = await broker.post(
        "/drm/license", json=json_api("movie", ck_request(KID_AUDIO)), headers=viewer()
    )
    assert resp.status == 200
    assert (await resp.json())["keySystem"] == "org.w3.clearkey"


async def test_unknown_key_id_is_a_404_problem(broker: Client, events: MemorySink) -> None:
    resp = await broker.post(
        "/drm/license",
        json=json_api("movie", ck_request(KID_UHD_ONLY)),
        headers=viewer(),
    )
    assert resp.status == 404
    doc = await problem(resp)
    assert doc["code"] == "unknown_key_id"
    assert doc["kid"] == KID_UHD_ONLY
    errors = [e for e in events.events if e.type == PLAYBACK_ERROR]
    assert [e.data["code"] for e in errors] == ["unknown_key_id"]
    assert errors[0].data["videoId"] == "movie"


async def test_unknown_video_is_a_404_problem(broker: Client) -> None:
    resp = await broker.post(
        "/drm/license", json=json_api("nope", ck_request(KID_HD)), headers=viewer()
    )
    assert resp.status == 404
    assert (await problem(resp))["code"] == "unknown_video"


async def test_uhd_key_is_refused_to_a_basic_plan(broker: Client) -> None:
    resp = await broker.post(
        "/drm/license",
        json=json_api("uhd-movie", ck_request(KID_UHD_ONLY)),
        headers=viewer("bob", "basic"),
    )
    assert resp.status == 403
    doc = await problem(resp)
    assert doc["code"] == "not_entitled_to_track"
    assert doc["maxTrack"] == "HD"


async def test_premium_gets_the_uhd_key(broker: Client) -> None:
    resp = await broker.post(
        "/drm/license/clearkey?videoId=uhd-movie", data=ck_request(KID_UHD_ONLY), headers=viewer()
    )
    assert resp.status == 200
    assert jwk_keys(await resp.json()) == {KID_UHD_ONLY: KEY_UHD_ONLY}


async def test_mixed_request_on_basic_carries_only_the_entitled_keys(broker: Client) -> None:
    resp = await broker.post(
        "/drm/license/org.w3.clearkey?videoId=movie",
        data=ck_request(KID_SD, KID_HD, KID_UHD, KID_AUDIO),
        headers=viewer("bob", "basic"),
    )
    assert resp.status == 200
    assert set(jwk_keys(await resp.json())) == {KID_SD, KID_HD, KID_AUDIO}


async def test_entitlement_tier_overrides_the_plan(broker: Client) -> None:
    facts = json.dumps({"plan": "basic", "tier": "UHD", "maxStreams": 2})
    resp = await broker.post(
        "/drm/license/org.w3.clearkey?videoId=movie",
        data=ck_request(KID_UHD),
        headers=viewer("bob", None, entitlement=facts),
    )
    assert resp.status == 200
    assert jwk_keys(await resp.json()) == {KID_UHD: KEY_UHD}


async def test_persistent_session_needs_a_plan_that_allows_it(broker: Client) -> None:
    body = ck_request(KID_HD, type="persistent-license")
    refused = await broker.post(
        "/drm/license/org.w3.clearkey?videoId=movie", data=body, headers=viewer("bob", "basic")
    )
    assert (await problem(refused))["code"] == "persistence_not_allowed"
    allowed = await broker.post(
        "/drm/license/org.w3.clearkey?videoId=movie", data=body, headers=viewer("alice", "premium")
    )
    assert (await allowed.json())["type"] == "persistent-license"


# ---------------------------------------------------------------------------------- identity


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "missing_identity"),
        ({"x-playback-plan": "premium"}, 401, "missing_identity"),
        ({"x-playback-user": "alice"}, 401, "missing_identity"),
        (
            {"x-playback-user": "alice", "x-playback-entitlement": "{not json"},
            401,
            "missing_identity",
        ),
        (viewer(video="other-video"), 403, "video_mismatch"),
    ],
)
async def test_identity_headers_fail_closed(
    broker: Client, headers: dict[str, str], status: int, code: str
) -> None:
    resp = await broker.post(
        "/drm/license", json=json_api("movie", ck_request(KID_HD)), headers=headers
    )
    assert resp.status == status
    assert (await problem(resp))["code"] == code


async def test_native_route_takes_the_video_from_authz(broker: Client) -> None:
    resp = await broker.post(
        "/drm/license/org.w3.clearkey", data=ck_request(KID_HD), headers=viewer(video="movie")
    )
    assert resp.status == 200
    assert jwk_keys(await resp.json()) == {KID_HD: KEY_HD}


# ---------------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "bad_request"),
        (b"{not json", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (json.dumps({"licenseRequest": "e30="}).encode(), "bad_request"),
        (json.dumps({"videoId": "movie"}).encode(), "bad_request"),
        (
            json.dumps({"videoId": "movie", "licenseRequest": "%%%not-base64"}).encode(),
            "malformed_challenge",
        ),
        (json.dumps({"videoId": "../etc", "licenseRequest": "e30="}).encode(), "bad_request"),
        (
            json.dumps({"videoId": "movie", "licenseRequest": "e30="}).encode(),
            "malformed_challenge",
        ),
        (
            json.dumps(
                {"videoId": "movie", "licenseRequest": "e30=", "keySystem": "com.nope"}
            ).encode(),
            "unsupported_key_system",
        ),
        (json.dumps(json_api("movie", b'{"kids": ["abc"]}')).encode(), "malformed_challenge"),
        (
            json.dumps(json_api("movie", b'{"kids": []}', "org.w3.clearkey")).encode(),
            "malformed_challenge",
        ),
        (json.dumps(json_api("movie", b"\x99binary?")).encode(), "malformed_challenge"),
        # nested deeper than json follows: a RecursionError was a 500 internal_error
        (b"[" * 5_000 + b"]" * 5_000, "bad_request"),
        (
            json.dumps(
                json_api("movie", b'{"kids": ' + b"[" * 5_000 + b"]" * 5_000 + b"}")
            ).encode(),
            "malformed_challenge",
        ),
        (
            json.dumps(
                json_api(
                    "movie",
                    b'{"kids": [], "x": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
                    "org.w3.clearkey",
                )
            ).encode(),
            "malformed_challenge",
        ),
    ],
    ids=[
        "empty",
        "bad-json",
        "not-object",
        "no-video",
        "no-request",
        "bad-base64",
        "bad-video-id",
        "uninferable",
        "unknown-key-system",
        "bad-kid",
        "no-kids",
        "unknown-binary",
        "deep-json",
        "deep-challenge-inferred",
        "deep-clearkey-challenge",
    ],
)
async def test_malformed_input_is_a_400_problem(broker: Client, body: bytes, code: str) -> None:
    resp = await broker.post(
        "/drm/license", data=body, headers={**viewer(), "Content-Type": "application/json"}
    )
    assert resp.status == 400, await resp.text()
    assert (await problem(resp))["code"] == code


async def test_huge_body_is_a_413_problem(broker: Client) -> None:
    resp = await broker.post(
        "/drm/license/org.w3.clearkey?videoId=movie", data=b"x" * 70_000, headers=viewer()
    )
    assert resp.status == 413
    assert (await problem(resp))["code"] == "request_too_large"


async def test_unknown_route_is_a_problem(broker: Client) -> None:
    resp = await broker.get("/drm/nothing-here")
    assert resp.status == 404
    assert (await problem(resp))["code"] == "not_found"


async def test_unexpected_exception_is_a_500_problem_without_details(
    make_broker: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    class Exploding:
        async def fetch(self, video_id: str) -> VideoKeys:
            raise RuntimeError("secret-ish internals")

        async def ping(self) -> bool:
            return True

        async def close(self) -> None:
            return None

    broker = await make_broker(key_store=Exploding())
    resp = await broker.post(
        "/drm/license", json=json_api("movie", ck_request(KID_HD)), headers=viewer()
    )
    assert resp.status == 500
    doc = await problem(resp)
    assert doc["code"] == "internal_error"
    assert "secret-ish" not in json.dumps(doc)
    assert any("secret-ish internals" in (r.exc_text or "") for r in caplog.records)


async def test_key_store_outage_is_a_503(make_broker: BrokerFactory) -> None:
    class Down:
        async def fetch(self, video_id: str) -> VideoKeys:
            raise KeyStoreUnavailable("Vault unavailable (ConnectionError)")

        async def ping(self) -> bool:
            return False

        async def close(self) -> None:
            return None

    broker = await make_broker(key_store=Down())
    resp = await broker.post(
        "/drm/license", json=json_api("movie", ck_request(KID_HD)), headers=viewer()
    )
    assert resp.status == 503
    assert (await problem(resp))["code"] == "key_store_unavailable"
    health = await (await broker.get("/health")).json()
    assert health["status"] == "degraded"
    assert health["keyStore"]["reachable"] is False


# ---------------------------------------------------------------------------------- cache


async def test_retried_identical_request_gets_the_same_license(
    broker: Client, events: MemorySink
) -> None:
    request = json_api("movie", ck_request(KID_HD, KID_SD))
    first = await (await broker.post("/drm/license", json=request, headers=viewer())).json()
    again = await (await broker.post("/drm/license", json=request, headers=viewer())).json()
    assert again["licenseId"] == first["licenseId"]
    assert again["license"] == first["license"]
    other = await (
        await broker.post("/drm/license", json=request, headers=viewer("carol", "premium"))
    ).json()
    assert other["licenseId"] != first["licenseId"]
    cached = [e.data["cached"] for e in events.events if e.type == LICENSE_ISSUED]
    assert cached == [False, True, False]


async def test_the_broker_keeps_no_second_stream_count(broker: Client) -> None:
    """Concurrent streams are authz's (per playback session, on every key path): whatever
    maxStreams the facts carry, the broker licenses every session authz admitted."""
    facts = json.dumps({"plan": "basic", "maxStreams": 1})
    for session in ("tv", "phone", "tablet"):
        resp = await broker.post(
            "/drm/license/org.w3.clearkey?videoId=movie",
            data=ck_request(KID_HD),
            headers=viewer("dave", "basic", session=session, entitlement=facts),
        )
        assert resp.status == 200


# ---------------------------------------------------------------------------------- HLS AES-128


async def test_hls_key_is_16_raw_bytes_not_cached(broker: Client, events: MemorySink) -> None:
    resp = await broker.get(f"/drm/key/movie/{KID_HD}", headers={"x-playback-video": "movie"})
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.content_type == "application/octet-stream"
    assert await resp.read() == bytes.fromhex(KEY_HD)
    assert events.events[-1].data["keySystem"] == "hls-aes-128"
    assert IV_HD  # the IV is announced by the playlist, not served here


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        (f"/drm/key/movie/{KID_HD}", {}, 401, "missing_identity"),
        (f"/drm/key/movie/{KID_HD}", {"x-playback-video": "other"}, 403, "video_mismatch"),
        (f"/drm/key/movie/{KID_UHD}", {"x-playback-video": "movie"}, 403, "not_entitled_to_track"),
        (f"/drm/key/movie/{KID_UHD_ONLY}", {"x-playback-video": "movie"}, 404, "unknown_key_id"),
        ("/drm/key/movie/not-a-kid", {"x-playback-video": "movie"}, 400, "bad_request"),
        (f"/drm/key/gone/{KID_HD}", {"x-playback-video": "gone"}, 404, "unknown_video"),
    ],
)
async def test_hls_key_refusals(
    broker: Client, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    resp = await broker.get(path, headers=headers)
    assert resp.status == status
    assert (await problem(resp))["code"] == code


async def test_hls_uhd_key_with_premium_facts(broker: Client) -> None:
    resp = await broker.get(f"/drm/key/movie/{KID_UHD}", headers=viewer(video="movie"))
    assert await resp.read() == bytes.fromhex(KEY_UHD)


# ---------------------------------------------------------------------------------- CORS, health


async def test_the_broker_writes_no_cors_headers(broker: Client) -> None:
    """CORS is Envoy's alone (envoyconf.cors): the broker never answers a preflight or names an
    origin, so it cannot contradict the edge's policy."""
    origin = {"Origin": "https://player.example"}
    err = await broker.post("/drm/license", data=b"", headers=origin)
    assert err.status == 400
    ok = await broker.post(
        "/drm/license", json=json_api("movie", ck_request(KID_HD)), headers=viewer() | origin
    )
    assert ok.status == 200
    pre = await broker.options(
        "/drm/license", headers=origin | {"Access-Control-Request-Method": "POST"}
    )
    assert pre.status == 405
    for resp in (err, ok, pre):
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


async def test_health_and_metrics(broker: Client) -> None:
    await broker.post("/drm/license", json=json_api("movie", ck_request(KID_HD)), headers=viewer())
    health = await broker.get("/health")
    assert health.status == 200
    doc = await health.json()
    assert doc["status"] == "ok"
    assert doc["licenseCache"]["backend"] == "memory"
    assert doc["providers"]["com.widevine.alpha"] == "closed"
    assert (await broker.get("/health/live")).status == 200
    text = await (await broker.get("/metrics")).text()
    assert 'playback_broker_licenses_total{cached="false",key_system="org.w3.clearkey"}' in text
    assert 'playback_broker_requests_total{code="ok",outcome="ok",route="/drm/license"}' in text
    assert 'playback_cache_requests_total{cache="keys",result="hit"}' in text


# ---------------------------------------------------------------------------------- resilience


async def test_slow_provider_times_out_while_clearkey_keeps_answering(
    make_broker: BrokerFactory, drm_emulator: Client
) -> None:
    broker = await make_broker({"PROVIDER_TIMEOUT": "0.3"})
    # far slower than any bound below, so that a pass is the timeout and never the answer
    await drm_emulator.post("/control/widevine", json={"delay": 5.0})
    loop = asyncio.get_running_loop()
    started = loop.time()
    widevine = asyncio.ensure_future(
        broker.post(
            "/drm/license/com.widevine.alpha?videoId=movie",
            data=b"\x08\x01\x12\x02wv",
            headers=viewer(),
        )
    )
    await asyncio.sleep(0.05)
    clearkey = await broker.post(
        "/drm/license/org.w3.clearkey?videoId=movie", data=ck_request(KID_HD), headers=viewer()
    )
    assert clearkey.status == 200
    assert not widevine.done()  # ClearKey answered while Widevine was still waiting
    resp = await widevine
    elapsed = loop.time() - started
    assert resp.status == 504
    assert (await problem(resp))["code"] == "provider_timeout"
    assert elapsed < 3.0  # the configured 0.3 s (room for a busy box), not the provider's 5 s


async def test_a_slow_or_failing_provider_fails_fast_with_the_default_timeouts(
    make_broker: BrokerFactory, drm_emulator: Client
) -> None:
    """With the defaults (PROVIDER_TIMEOUT 0.75 s): a provider answering in 2 s is a
    ``provider_timeout`` in under a second; once the circuit opens, ``provider_unavailable``
    (503) at once; a provider answering 500 is a 503 too."""
    broker = await make_broker({"PROVIDER_TIMEOUT": "", "PROVIDER_CONNECT_TIMEOUT": ""})
    loop = asyncio.get_running_loop()

    async def ask(n: int) -> tuple[int, str, float]:
        started = loop.time()
        resp = await broker.post(
            "/drm/license/com.widevine.alpha?videoId=movie",
            data=b"\x08\x01\x12\x02" + f"w{n}".encode(),
            headers=viewer(),
        )
        return resp.status, (await problem(resp))["code"], loop.time() - started

    await drm_emulator.post("/control/widevine", json={"delay": 5.0})
    status, code, elapsed = await ask(0)
    assert (status, code) == (504, "provider_timeout")
    assert elapsed < 3.0, f"{elapsed:.2f}s"  # 0.75 s (room for a busy box), not the 5 s answer
    for n in range(1, 5):  # BREAKER_FAILURE_THRESHOLD (5) timeouts in a row open the circuit
        await ask(n)
    status, code, elapsed = await ask(5)
    assert (status, code) == (503, "provider_unavailable")
    assert elapsed < 0.7, f"{elapsed:.2f}s"  # at once: under the 0.75 s a timeout takes
    await drm_emulator.delete("/control")
    await drm_emulator.post("/control/widevine", json={"failStatus": 500})
    fresh = await make_broker({"PROVIDER_TIMEOUT": "", "PROVIDER_CONNECT_TIMEOUT": ""})
    started = loop.time()
    resp = await fresh.post(
        "/drm/license/com.widevine.alpha?videoId=movie",
        data=b"\x08\x01\x12\x02wv",
        headers=viewer(),
    )
    assert resp.status == 503
    assert (await problem(resp))["code"] == "provider_unavailable"
    assert loop.time() - started < 3.0  # an answer, never a hang


async def test_breaker_opens_after_repeated_failures_and_recovers(
    make_broker: BrokerFactory, drm_emulator: Client
) -> None:
    broker = await make_broker(
        {"BREAKER_FAILURE_THRESHOLD": "3", "BREAKER_COOLDOWN": "0.3", "PROVIDER_RETRIES": "0"}
    )
    await drm_emulator.delete("/control")
    await drm_emulator.post("/control/widevine", json={"failStatus": 500})

    async def ask() -> dict[str, Any]:
        resp = await broker.post(
            "/drm/license/com.widevine.alpha?videoId=movie",
            data=b"\x08\x01\x12\x02wv",
            headers=viewer(),
        )
        assert resp.status == 503
        return await problem(resp)

    for _ in range(3):
        assert (await ask())["code"] == "provider_unavailable"
    opened = await ask()
    assert "circuit is open" in opened["detail"]
    received = await (await drm_emulator.get("/control/widevine/received")).json()
    assert len(received) == 3  # the open circuit spared the provider
    health = await (await broker.get("/health")).json()
    assert health["providers"]["com.widevine.alpha"] == "open"

    await drm_emulator.post("/control/widevine", json={"failStatus": None})
    await asyncio.sleep(0.35)
    resp = await broker.post(
        "/drm/license/com.widevine.alpha?videoId=movie",
        data=b"\x08\x01\x12\x02wv",
        headers=viewer(),
    )
    assert resp.status == 200  # the half-open trial went through and closed the circuit
    health = await (await broker.get("/health")).json()
    assert health["providers"]["com.widevine.alpha"] == "closed"


async def test_retry_after_a_503_is_bounded(
    make_broker: BrokerFactory, drm_emulator: Client
) -> None:
    broker = await make_broker({"PROVIDER_RETRIES": "2"})
    await drm_emulator.post("/control/widevine", json={"failStatus": 503})
    resp = await broker.post(
        "/drm/license/com.widevine.alpha?videoId=movie",
        data=b"\x08\x01\x12\x02wv",
        headers=viewer(),
    )
    assert resp.status == 503
    received = await (await drm_emulator.get("/control/widevine/received")).json()
    assert len(received) == 3  # one try plus two retries, not more


async def test_garbage_from_the_provider_is_a_502(
    make_broker: BrokerFactory, drm_emulator: Client
) -> None:
    broker = await make_broker()
    await drm_emulator.post("/control/widevine", json={"garbage": True})
    resp = await broker.post(
        "/drm/license", json=json_api("movie", b"\x08\x01\x12\x02wv", "widevine"), headers=viewer()
    )
    assert resp.status == 502
    assert (await problem(resp))["code"] == "provider_bad_response"


async def test_unconfigured_key_system_is_a_400(make_broker: BrokerFactory) -> None:
    broker = await make_broker({"WIDEVINE_PROVIDER": "none"})
    resp = await broker.post(
        "/drm/license/com.widevine.alpha?videoId=movie",
        data=b"\x08\x01\x12\x02wv",
        headers=viewer(),
    )
    assert resp.status == 400
    assert (await problem(resp))["code"] == "unsupported_key_system"


# ---------------------------------------------------------------------------------- serve()


async def test_serve_with_demo_keys_until_cancelled() -> None:
    port = free_port()
    task = asyncio.ensure_future(serve(BrokerConfig.from_env({"BROKER_PORT": str(port)})))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(base + "/health/live") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        async with session.post(
            base + "/drm/license/org.w3.clearkey?videoId=demo",
            data=ck_request(DEMO_KID),
            headers=viewer("alice", "premium"),
        ) as resp:
            assert jwk_keys(await resp.json()) == {DEMO_KID: DEMO_KEY}
        async with session.post(
            base + "/drm/license/org.w3.clearkey?videoId=demo-uhd",
            data=ck_request(DEMO_UHD_KID),
            headers=viewer("bob", "basic"),
        ) as resp:
            assert resp.status == 403
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_keys_file(tmp_path: Path, make_broker: BrokerFactory) -> None:
    path = tmp_path / "keys.json"
    doc = {"videos": {"film": {"tier": "basic", "keys": [{"kid": KID_HD, "key": KEY_HD}]}}}
    path.write_text(json.dumps(doc))
    broker = await make_broker({"KEYS_FILE": str(path)}, memory_keys=False)
    resp = await broker.post(
        "/drm/license/org.w3.clearkey?videoId=film", data=ck_request(KID_HD), headers=viewer()
    )
    assert jwk_keys(await resp.json()) == {KID_HD: KEY_HD}


async def test_provider_pools_are_warmed_at_start(
    make_broker: BrokerFactory, drm_emulator: Client
) -> None:
    await make_broker({"PROVIDER_WARM_CONNECTIONS": "3"})
    for system in ("widevine", "playready", "fairplay"):
        state = await (await drm_emulator.post(f"/control/{system}", json={})).json()
        assert state["warmups"] == 3, system
