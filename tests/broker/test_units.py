"""Unit tests of the broker's pure modules: table-driven, plus property tests for parsers."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from license_broker import clearkey
from license_broker.breaker import BreakerState, CircuitBreaker, backoff_delay
from license_broker.cache import (
    CachedLicense,
    MemoryLicenseCache,
    RedisGuard,
    RedisLicenseCache,
    cache_key,
)
from license_broker.config import BrokerConfig
from license_broker.encoding import b64decode_lenient, b64url, parse_key_id, uuid_str
from license_broker.errors import (
    KeyStoreUnavailable,
    MalformedChallenge,
    MissingIdentity,
    NotEntitledToTrack,
    ProviderBadResponse,
    UnknownKeyId,
    UnknownVideo,
    UnsupportedKeySystem,
)
from license_broker.keys import CachedKeyStore, MemoryKeyStore
from license_broker.keysystems import KeySystem, infer_key_system, parse_key_system
from license_broker.model import ContentKey, Track, VideoKeys, parse_video_keys
from license_broker.policy import (
    DEFAULT_PLAN_PROFILES,
    Entitlement,
    decide,
    normalize_hdcp,
    parse_entitlement,
    parse_plan_profiles,
    select_keys,
)
from license_broker.providers.axinom import entitlement_message, sign_message
from license_broker.providers.base import LicenseContext
from license_broker.providers.fairplay import SpcEncoding, encode_ckc, parse_ckc, parse_spc
from playback_drm.settings import ConfigError
from tests.broker.conftest import KEYS_DOC

KID = bytes.fromhex("00112233445566778899aabbccddeeff")
SPC = b"\x00\x00\x00\x02" + bytes(28)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------- encoding


@pytest.mark.parametrize(
    "text",
    [
        "ABEiM0RVZneImaq7zN3u_w",
        "ABEiM0RVZneImaq7zN3u_w==",
        "ABEiM0RVZneImaq7zN3u/w==",
        "ABEiM0RVZneImaq7zN3u/w",
        " ABEiM0RVZneImaq7zN3u_w\n",
        "00112233445566778899aabbccddeeff",
        "0x00112233445566778899AABBCCDDEEFF",
        "00112233-4455-6677-8899-aabbccddeeff",
    ],
)
def test_key_id_spellings(text: str) -> None:
    assert parse_key_id(text) == KID


@pytest.mark.parametrize("text", ["", "AAAA", "ABEiM0RVZneImaq7zN3u_w_x", "not base64!", "A"])
def test_bad_key_ids(text: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        parse_key_id(text)


@given(st.binary(max_size=64))
def test_base64_flavours_round_trip(data: bytes) -> None:
    for encoded in (
        base64.b64encode(data).decode(),
        base64.urlsafe_b64encode(data).decode(),
        b64url(data),
    ):
        assert b64decode_lenient(encoded) == data


def test_uuid_spelling() -> None:
    assert uuid_str(KID) == "00112233-4455-6677-8899-aabbccddeeff"


# ---------------------------------------------------------------------------------- ClearKey


@pytest.mark.parametrize(
    ("body", "kids", "session_type"),
    [
        (b'{"kids":["ABEiM0RVZneImaq7zN3u_w"],"type":"temporary"}', (KID,), "temporary"),
        (b'{"kids":["ABEiM0RVZneImaq7zN3u_w"]}', (KID,), "temporary"),
        (b'{"kids":["ABEiM0RVZneImaq7zN3u/w=="],"type":null}', (KID,), "temporary"),
        (
            b'{"kids":["ABEiM0RVZneImaq7zN3u_w","ABEiM0RVZneImaq7zN3u_w"],'
            b'"type":"persistent-license"}',
            (KID,),
            "persistent-license",
        ),
    ],
    ids=["standard", "no-type", "padded-standard-null-type", "duplicates-persistent"],
)
def test_clearkey_requests(body: bytes, kids: tuple[bytes, ...], session_type: str) -> None:
    req = clearkey.parse_request(body)
    assert req.kids == kids
    assert req.session_type == session_type


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"kids":[]}',
        b'{"kids":"ABEiM0RVZneImaq7zN3u_w"}',
        b'{"kids":[1]}',
        b'{"kids":["short"]}',
        b'{"kids":["ABEiM0RVZneImaq7zN3u_w"],"type":"forever"}',
        json.dumps({"kids": [b64url(bytes([i]) * 16) for i in range(65)]}).encode(),
        b"\xff\xfe",
    ],
)
def test_malformed_clearkey_requests(body: bytes) -> None:
    with pytest.raises(MalformedChallenge):
        clearkey.parse_request(body)


@given(st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=8, unique=True))
def test_clearkey_request_round_trip(kids: list[bytes]) -> None:
    body = json.dumps({"kids": [b64url(k) for k in kids]}).encode()
    assert clearkey.parse_request(body).kids == tuple(kids)


def test_clearkey_response_is_a_jwk_set() -> None:
    doc = json.loads(clearkey.build_response([(KID, b"\x01" * 16)], "temporary"))
    assert doc == {
        "keys": [{"kty": "oct", "kid": "ABEiM0RVZneImaq7zN3u_w", "k": "AQEBAQEBAQEBAQEBAQEBAQ"}],
        "type": "temporary",
    }


# ---------------------------------------------------------------------------------- key systems


@pytest.mark.parametrize(
    ("challenge", "expected"),
    [
        (b'{"kids":["x"]}', KeySystem.CLEARKEY),
        (b'  {"spc":"AAAA"}', KeySystem.FAIRPLAY),
        (b"<soap:Envelope/>", KeySystem.PLAYREADY),
        (b"\xef\xbb\xbf<?xml version='1.0'?>", KeySystem.PLAYREADY),
        ("<soap/>".encode("utf-16"), KeySystem.PLAYREADY),
        (b"\x08\x04", KeySystem.WIDEVINE),
        (b"\x08\x01\x12\x00", KeySystem.WIDEVINE),
        (SPC, KeySystem.FAIRPLAY),
        (b"spc=AAAA&assetId=x", KeySystem.FAIRPLAY),
    ],
)
def test_key_system_inference(challenge: bytes, expected: KeySystem) -> None:
    assert infer_key_system(challenge) == expected


@pytest.mark.parametrize("challenge", [b"", b'{"foo":1}', b"{bad", b"\x99\x00", b"hello"])
def test_key_system_inference_refuses_to_guess(challenge: bytes) -> None:
    with pytest.raises(MalformedChallenge):
        infer_key_system(challenge)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("org.w3.clearkey", KeySystem.CLEARKEY),
        ("ClearKey", KeySystem.CLEARKEY),
        ("com.widevine.alpha", KeySystem.WIDEVINE),
        ("com.microsoft.playready.recommendation", KeySystem.PLAYREADY),
        ("com.apple.fps.1_0", KeySystem.FAIRPLAY),
    ],
)
def test_key_system_names(name: str, expected: KeySystem) -> None:
    assert parse_key_system(name) == expected


def test_unknown_key_system() -> None:
    with pytest.raises(UnsupportedKeySystem):
        parse_key_system("com.example.drm")


# ---------------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("facts", "plan", "max_track", "persist", "duration", "hdcp"),
    [
        (None, "premium", Track.UHD, True, 6 * 3600, "HDCP_V1"),
        (None, "basic", Track.HD, False, 6 * 3600, "HDCP_NONE"),
        (None, "mystery", Track.SD, False, 3600, "HDCP_NONE"),
        (None, None, Track.SD, False, 3600, "HDCP_NONE"),
        ('{"tier":"UHD"}', "basic", Track.UHD, False, 6 * 3600, "HDCP_NONE"),
        ('{"tier":"premium"}', "basic", Track.UHD, False, 6 * 3600, "HDCP_NONE"),
        ('{"tier":"SD","maxStreams":1}', "premium", Track.SD, True, 6 * 3600, "HDCP_V1"),
        ('{"rentalWindowSeconds":600}', "premium", Track.UHD, True, 600, "HDCP_V1"),
        ('{"hdcp":"2.2","persistent":false}', "premium", Track.UHD, False, 6 * 3600, "HDCP_V2_2"),
        ('{"plan":"premium","maxStreams":0}', None, Track.UHD, True, 6 * 3600, "HDCP_V1"),
        ('{"plan":"premium"}', "basic", Track.HD, False, 6 * 3600, "HDCP_NONE"),
    ],
)
def test_policy_decisions(
    facts: str | None,
    plan: str | None,
    max_track: Track,
    persist: bool,
    duration: int,
    hdcp: str,
) -> None:
    policy = decide(parse_entitlement(facts, plan), DEFAULT_PLAN_PROFILES)
    assert policy.max_track == max_track
    assert policy.can_persist is persist
    assert policy.license_duration_s == duration
    assert policy.hdcp == hdcp


@pytest.mark.parametrize(
    "facts", ["[]", "{", '{"rentalWindowSeconds":"two"}', '{"securityLevel":-1}', '{"hdcp":"9.9"}']
)
def test_malformed_entitlement_fails_closed(facts: str) -> None:
    with pytest.raises(MissingIdentity):
        parse_entitlement(facts, "premium")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2.2", "HDCP_V2_2"),
        ("HDCP_V1", "HDCP_V1"),
        ("hdcp v2.3", "HDCP_V2_3"),
        (False, "HDCP_NONE"),
        ("none", "HDCP_NONE"),
        ("1.4", "HDCP_V1"),
    ],
)
def test_hdcp_spellings(value: Any, expected: str) -> None:
    assert normalize_hdcp(value) == expected


def test_uhd_requirements_are_raised() -> None:
    policy = decide(Entitlement(plan="premium"), DEFAULT_PLAN_PROFILES)
    assert policy.requirements(Track.SD) == (1, "HDCP_NONE")
    assert policy.requirements(Track.HD) == (1, "HDCP_V1")
    assert policy.requirements(Track.UHD) == (3, "HDCP_V2_2")


VIDEO = VideoKeys.of(
    "v",
    (
        ContentKey(b"\x01" * 16, b"k" * 16, Track.AUDIO),
        ContentKey(b"\x02" * 16, b"k" * 16, Track.HD),
        ContentKey(b"\x03" * 16, b"k" * 16, Track.UHD),
    ),
)


@pytest.mark.parametrize(
    ("plan", "requested", "granted"),
    [
        ("premium", None, {1, 2, 3}),
        ("basic", None, {1, 2}),
        ("basic", [b"\x02" * 16, b"\x03" * 16], {2}),
        ("premium", [b"\x03" * 16], {3}),
        ("mystery", None, {1}),
    ],
)
def test_key_selection(plan: str, requested: list[bytes] | None, granted: set[int]) -> None:
    policy = decide(Entitlement(plan=plan), DEFAULT_PLAN_PROFILES)
    keys = select_keys(policy, VIDEO, requested)
    assert {k.kid[0] for k in keys} == granted


@pytest.mark.parametrize(
    ("plan", "requested", "error"),
    [
        ("basic", [b"\x03" * 16], NotEntitledToTrack),
        ("premium", [b"\x09" * 16], UnknownKeyId),
        ("premium", [b"\x02" * 16, b"\x09" * 16], UnknownKeyId),
    ],
)
def test_key_selection_refusals(plan: str, requested: list[bytes], error: type[Exception]) -> None:
    policy = decide(Entitlement(plan=plan), DEFAULT_PLAN_PROFILES)
    with pytest.raises(error):
        select_keys(policy, VIDEO, requested)


def test_plan_profiles_overlay() -> None:
    profiles = parse_plan_profiles(
        '{"basic": {"maxTrack": "SD"}, "family": {"maxTrack": "UHD"}}',
        DEFAULT_PLAN_PROFILES,
    )
    assert profiles["basic"].max_track == Track.SD
    assert profiles["family"].max_track == Track.UHD
    assert profiles["premium"] == DEFAULT_PLAN_PROFILES["premium"]
    # concurrent streams moved to authz: an old setting says where, instead of doing nothing
    with pytest.raises(ValueError, match="STREAM_LIMITS"):
        parse_plan_profiles('{"basic": {"maxStreams": 2}}', DEFAULT_PLAN_PROFILES)


# ---------------------------------------------------------------------------------- key model


def test_key_documents_parse_all_spellings() -> None:
    keys = parse_video_keys(
        "v",
        {
            "keys": json.dumps(
                [
                    {
                        "keyId": "00112233-4455-6677-8899-aabbccddeeff",
                        "k": "AQEBAQEBAQEBAQEBAQEBAQ",
                    },
                    {"kid": "ABEiM0RVZneImaq7zN3u_g", "key": "02" * 16, "track": "4k"},
                ]
            )
        },
    )
    assert keys.keys[0].kid == KID
    assert keys.keys[0].key == b"\x01" * 16
    assert keys.keys[0].track == Track.HD  # unlabelled keys are HD
    assert keys.keys[1].track == Track.UHD


@pytest.mark.parametrize(
    "doc",
    [
        {"keys": []},
        {"keys": [{"kid": "00" * 16}]},
        {"keys": [{"kid": "00" * 15, "key": "00" * 16}]},
        {"keys": [{"kid": "00" * 16, "key": "00" * 16, "track": "8K"}]},
        {"keys": [{"kid": "00" * 16, "key": "00" * 16, "iv": "00"}]},
        {"keys": ["nope"]},
    ],
)
def test_bad_key_documents(doc: Any) -> None:
    with pytest.raises(ValueError, match="video 'v'"):
        parse_video_keys("v", doc)


# ---------------------------------------------------------------------------------- key cache


class CountingStore:
    def __init__(self) -> None:
        self.inner = MemoryKeyStore.from_document(KEYS_DOC)
        self.calls = 0
        self.down = False
        self.gate: asyncio.Event | None = None

    async def fetch(self, video_id: str) -> VideoKeys:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise KeyStoreUnavailable("down")
        return await self.inner.fetch(video_id)

    async def ping(self) -> bool:
        return not self.down

    async def close(self) -> None:
        return None


def cached_store(source: CountingStore, clock: FakeClock) -> CachedKeyStore:
    return CachedKeyStore(source, ttl=60, max_stale=600, negative_ttl=5, max_videos=10, clock=clock)


async def test_key_cache_fresh_stale_and_expired() -> None:
    source, clock = CountingStore(), FakeClock()
    store = cached_store(source, clock)
    await store.fetch("movie")
    await store.fetch("movie")
    assert source.calls == 1  # fresh hit
    source.down = True
    clock.now += 120
    assert (await store.fetch("movie")).video_id == "movie"  # stale, served
    await asyncio.sleep(0)  # let the background refresh fail
    assert source.calls == 2
    assert store.last_refresh_error == "down"
    clock.now += 600
    with pytest.raises(KeyStoreUnavailable):
        await store.fetch("movie")  # beyond the maximum stale age
    await store.close()


async def test_key_cache_negative_entries_and_single_flight() -> None:
    source, clock = CountingStore(), FakeClock()
    store = cached_store(source, clock)
    for _ in range(3):
        with pytest.raises(UnknownVideo):
            await store.fetch("nope")
    assert source.calls == 1
    clock.now += 6
    with pytest.raises(UnknownVideo):
        await store.fetch("nope")
    assert source.calls == 2
    source.gate = asyncio.Event()
    waiters = [asyncio.ensure_future(store.fetch("movie")) for _ in range(5)]
    await asyncio.sleep(0)
    source.gate.set()
    results = await asyncio.gather(*waiters)
    assert source.calls == 3
    assert all(r is results[0] for r in results)


# ---------------------------------------------------------------------------------- caches


async def test_memory_license_cache_ttl_and_first_writer_wins() -> None:
    clock = FakeClock()
    cache = MemoryLicenseCache(2, clock=clock)
    one = CachedLicense("id-1", 1.0, "org.w3.clearkey", "application/json", kids=(KID,))
    two = CachedLicense("id-2", 1.0, "org.w3.clearkey", "application/json", kids=(KID,))
    assert await cache.add("k", one, 300) is one
    assert await cache.add("k", two, 300) is one
    assert await cache.get("k") == one
    clock.now += 301
    assert await cache.get("k") is None


def test_cached_license_round_trip_and_cache_keys() -> None:
    value = CachedLicense("id", 2.5, "com.widevine.alpha", "application/octet-stream", b"\x00lic")
    assert CachedLicense.from_bytes(value.to_bytes()) == value
    base = cache_key("ks", "v", "alice", "p", b"req")
    assert base != cache_key("ks", "v", "bob", "p", b"req")
    assert base != cache_key("ks", "v", "alice", "p2", b"req")
    assert base != cache_key("ks", "v", "alice", "p", b"req2")


# ---------------------------------------------------------------------------------- breaker


def test_breaker_state_machine() -> None:
    clock = FakeClock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(
        failure_threshold=2, cooldown=10, clock=clock, on_change=changes.append
    )

    def state() -> BreakerState:
        return breaker.state

    assert breaker.allow()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert state() == BreakerState.CLOSED  # failures must be consecutive
    breaker.record_failure()
    assert state() == BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_after == 10
    clock.now += 10
    assert state() == BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # one trial at a time
    breaker.record_failure()
    assert state() == BreakerState.OPEN
    clock.now += 10
    assert breaker.allow()
    breaker.record_success()
    assert state() == BreakerState.CLOSED
    assert changes == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


@pytest.mark.parametrize(("attempt", "expected"), [(0, 0.05), (1, 0.1), (3, 0.4), (10, 0.5)])
def test_backoff_is_capped_exponential(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, 0.05, 0.5, rand=lambda: 1.0) == pytest.approx(expected)
    assert backoff_delay(attempt, 0.05, 0.5, rand=lambda: 0.0) == 0.0


# ---------------------------------------------------------------------------------- FairPlay


SPC_B64 = base64.b64encode(SPC).decode()


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "asset"),
    [
        (SPC, "", SpcEncoding.RAW, None),
        (SPC_B64.encode(), "", SpcEncoding.BASE64, None),
        (f"spc={SPC_B64}&assetId=a1".encode(), "", SpcEncoding.FORM, "a1"),
        (f"spc={SPC_B64.replace('+', ' ')}".encode(), "", SpcEncoding.FORM, None),
        (json.dumps({"spc": SPC_B64, "contentId": "c"}).encode(), "", SpcEncoding.JSON, "c"),
    ],
)
def test_spc_encodings(
    body: bytes, content_type: str, encoding: SpcEncoding, asset: str | None
) -> None:
    spc = parse_spc(body, content_type)
    assert spc.spc == SPC
    assert spc.encoding == encoding
    assert spc.asset_id == asset


@pytest.mark.parametrize("body", [b"", b"{}", b'{"spc": 5}', b"spc=", b"spc=AAAA", b"tiny"])
def test_bad_spcs(body: bytes) -> None:
    with pytest.raises(MalformedChallenge):
        parse_spc(body)


@pytest.mark.parametrize("encoding", list(SpcEncoding))
def test_ckc_round_trips_through_each_encoding(encoding: SpcEncoding) -> None:
    ckc = b"\x01ckc-bytes\xff"
    assert parse_ckc(encode_ckc(ckc, encoding).body) == ckc


def test_unreadable_ckc() -> None:
    with pytest.raises(ProviderBadResponse):
        parse_ckc(b'{"nockc": 1}')


# ---------------------------------------------------------------------------------- Axinom


def test_axinom_message_lists_only_granted_keys() -> None:
    policy = decide(Entitlement(plan="basic"), DEFAULT_PLAN_PROFILES)
    granted = select_keys(policy, VIDEO)
    ctx = LicenseContext(KeySystem.WIDEVINE, "v", "bob", granted, policy)
    config = BrokerConfig()
    settings = config.axinom.__class__(com_key_id="cid", com_key=b"s" * 32, message_ttl_s=60)
    message = entitlement_message(ctx, settings, 1_700_000_000, "mid")
    token = sign_message(message, settings.com_key)
    decoded = jwt.decode(token, b"s" * 32, algorithms=["HS256"])
    assert decoded["com_key_id"] == "cid"
    assert decoded["expiration_date"] == "2023-11-14T22:14:20Z"
    ids = [k["id"] for k in decoded["message"]["content_keys_source"]["inline"]]
    assert ids == [uuid_str(b"\x01" * 16), uuid_str(b"\x02" * 16)]
    assert decoded["message"]["license"] == {"duration": 21600, "allow_persistence": False}


# ---------------------------------------------------------------------------------- config


def test_config_defaults() -> None:
    config = BrokerConfig.from_env({})
    assert (config.host, config.port) == ("127.0.0.1", 9003)
    assert config.license_cache_ttl == 300
    assert config.vault_addr is None
    assert config.widevine.adapter == "none"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"VAULT_ADDR": "http://v"}, "VAULT_TOKEN"),
        ({"WIDEVINE_LICENSE_URL": "http://w"}, "WIDEVINE_SIGNER"),
        ({"WIDEVINE_SIGNING_KEY": "zz"}, "WIDEVINE_SIGNING_KEY"),
        ({"PLAYREADY_PROVIDER": "soap"}, "PLAYREADY_LICENSE_URL"),
        ({"FAIRPLAY_PROVIDER": "ksm"}, "FAIRPLAY_KSM_URL"),
        ({"PLAYREADY_LICENSE_URL": "http://p", "PLAYREADY_PROVIDER": "axinom"}, "AXINOM_COM_KEY"),
        ({"PROVIDER_TIMEOUT": "soon"}, "PROVIDER_TIMEOUT"),
        ({"VAULT_KEY_PATH": "keys/all"}, "VAULT_KEY_PATH"),
        ({"PLAN_POLICIES": "[1]"}, "PLAN_POLICIES"),
        ({"WIDEVINE_PROVIDER": "magic"}, "WIDEVINE_PROVIDER"),
    ],
)
def test_config_errors_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        BrokerConfig.from_env(env)


def test_secrets_stay_out_of_the_config_repr() -> None:
    config = BrokerConfig.from_env(
        {
            "VAULT_ADDR": "http://v",
            "VAULT_TOKEN": "hvs.topsecret",
            "PLAYREADY_LICENSE_URL": "http://p",
            "PLAYREADY_AUTH_TOKEN": "pr-secret",
        }
    )
    text = repr(config)
    assert "topsecret" not in text
    assert "pr-secret" not in text
    updated = config.with_credentials({"playready_auth_token": "from-vault"})
    assert updated.playready.auth_token == "from-vault"


class DeadRedis:
    """Stands in for redis.asyncio.Redis: every command fails (behind our RedisGuard)."""

    def __init__(self) -> None:
        self.calls = 0

    async def get(self, key: str) -> bytes:
        self.calls += 1
        raise ConnectionError("refused")

    def register_script(self, script: str) -> Any:
        async def run(**kwargs: Any) -> int:
            self.calls += 1
            raise ConnectionError("refused")

        return run


async def test_redis_guard_spares_a_dead_redis() -> None:
    clock = FakeClock()
    dead = DeadRedis()
    guard = RedisGuard(threshold=3, cooldown=2.0, clock=clock)
    cache = RedisLicenseCache(dead, guard)  # type: ignore[arg-type]
    for _ in range(5):
        assert await cache.get("k") is None
    assert dead.calls == 3
    assert guard.open
    clock.now += 2
    assert await cache.get("k") is None  # one trial after the cool-down
    assert dead.calls == 4


def test_vault_credentials_are_validated_by_name() -> None:
    with pytest.raises(ConfigError, match="vault:widevine_signing_key") as info:
        BrokerConfig().with_credentials({"widevine_signing_key": "abcd"})
    assert "abcd" not in str(info.value)
