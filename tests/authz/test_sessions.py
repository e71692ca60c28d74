"""The session and slot rules (authz.sessions, authz.challenges), and the two stores that keep
them: the same table of scenarios runs against the memory store and against real Redis (the Lua
script), so the script is proved to be the rules."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from authz.challenges import LicenseMessage, classify, license_message
from authz.entitlement import redis_client
from authz.sessions import (
    NO_LABEL,
    UNLIMITED,
    Kind,
    Lifetimes,
    Outcome,
    SessionFacts,
    StreamLimits,
    UserSessions,
    View,
    derived_session_id,
    is_session_id,
    jwt_label,
    needs_check,
    new_session_id,
)
from authz.sessionstore import MemorySessionStore, RedisSessionStore, SessionStore
from tests.support.ha import REDIS_SHAPES
from tests.support.protobuf import varint

LIFE = Lifetimes(session_idle_ms=10_000, stream_idle_ms=3_000, max_sessions=3)
T0 = 1_700_000_000_000


# ---------------------------------------------------------------------------------- ids, limits


def test_session_ids_are_128_random_bits_never_derived() -> None:
    ids = {new_session_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and is_session_id(i) for i in ids)
    assert not is_session_id("sess-1")  # a JWT's sid is not one of ours
    assert base64.urlsafe_b64decode(next(iter(ids)) + "==").__len__() == 16


def test_jwt_labels_and_derived_sessions() -> None:
    assert jwt_label(None) == NO_LABEL
    assert jwt_label("login-1") == jwt_label("login-1") != jwt_label("login-2")
    assert "login-1" not in jwt_label("login-1")  # a digest, not the claim
    a = derived_session_id("alice", "demo", jwt_label("login-1"))
    assert a == derived_session_id("alice", "demo", jwt_label("login-1"))
    assert a != derived_session_id("alice", "other", jwt_label("login-1"))
    assert a != derived_session_id("bob", "demo", jwt_label("login-1"))
    assert not is_session_id(a)  # never mistaken for a URL's session


@pytest.mark.parametrize(
    ("text", "plan", "max_streams", "limit"),
    [
        ("premium=4,basic=2,default=1", "premium", None, 4),
        ("premium=4,basic=2,default=1", "BASIC", None, 2),
        ("premium=4,basic=2,default=1", "gold", None, 1),
        ("premium=4,basic=2,default=1", None, None, 1),
        ("premium=4,basic=2", "premium", 7, 7),  # the entitlement's maxStreams wins
        ("premium=4", "premium", True, 4),  # not a count
        ("premium=0,default=3", "premium", None, UNLIMITED),  # 0: no limit
        ("premium=4", "x", 0, UNLIMITED),
        ("", "x", None, 1),
    ],
)
def test_stream_limits(text: str, plan: str | None, max_streams: object, limit: int) -> None:
    assert StreamLimits.parse(text).limit_for(plan, max_streams) == limit


@pytest.mark.parametrize("bad", ["premium", "premium=x", "=3", "basic=-1", "a=1,b"])
def test_stream_limits_refuse_bad_entries(bad: str) -> None:
    with pytest.raises(ValueError, match=r"is not plan=count|whole number|0 \(no limit\)"):
        StreamLimits.parse(bad)


def test_lifetimes_a_slot_never_outlives_its_session() -> None:
    with pytest.raises(ValueError, match="slot"):
        Lifetimes(session_idle_ms=1000, stream_idle_ms=2000)


def test_facts_round_trip_and_bad_records() -> None:
    facts = SessionFacts("s" * 22, "alice", "demo", "basic", '{"maxStreams":2}', 1700, "lbl")
    assert SessionFacts.from_json(facts.sid, facts.to_json()) == facts
    assert facts.max_streams == 2
    for bad in ("[]", '{"u": ""}', '{"u":"a","v":"b","p":"c","e":"d","c":"x"}'):
        with pytest.raises(ValueError, match="session record"):
            SessionFacts.from_json("s", bad)


# ---------------------------------------------------------------------------------- the rules


def test_a_session_takes_one_slot_and_keeps_it_while_alive() -> None:
    state = UserSessions()
    for sid in ("a", "b"):
        state.create(sid, T0, LIFE)
    assert state.touch("a", T0, 1, LIFE, take=False).outcome is Outcome.ALIVE  # no slot yet
    assert state.touch("b", T0, 1, LIFE, take=False).outcome is Outcome.ALIVE
    assert state.touch("a", T0, 1, LIFE, take=True).outcome is Outcome.TAKEN
    assert state.touch("a", T0 + 1, 1, LIFE, take=True).outcome is Outcome.HELD  # a key again
    refused = state.touch("b", T0 + 2, 1, LIFE, take=True)
    assert (refused.outcome, refused.held) == (Outcome.REFUSED, 1)
    # refused once, b wants a slot: its segments are refused too while none is free
    assert state.touch("b", T0 + 3, 1, LIFE, take=False).outcome is Outcome.REFUSED
    # signs of life hold the slot past the stream idle time
    for step in range(1, 5):
        assert state.touch("a", T0 + step * 2000, 1, LIFE, take=False).outcome is Outcome.HELD
    assert state.touch("b", T0 + 8000, 1, LIFE, take=True).outcome is Outcome.REFUSED


def test_a_paused_session_loses_its_slot_and_competes_again() -> None:
    state = UserSessions()
    state.create("a", T0, LIFE)
    state.create("b", T0, LIFE)
    state.touch("a", T0, 1, LIFE, take=True)
    # a's slot idles out after 3 s; b takes it
    assert state.touch("b", T0 + 3000, 1, LIFE, take=True).outcome is Outcome.TAKEN
    # a resumes: its next sign of life wants its slot back and finds none
    assert state.touch("a", T0 + 4000, 1, LIFE, take=False).outcome is Outcome.REFUSED
    state.end("b")
    assert state.touch("a", T0 + 4001, 1, LIFE, take=False).outcome is Outcome.TAKEN


def test_a_session_dies_after_its_idle_time() -> None:
    state = UserSessions()
    state.create("a", T0, LIFE)
    assert state.touch("a", T0 + 9_999, 1, LIFE, take=False).outcome is Outcome.ALIVE
    assert state.touch("a", T0 + 19_998, 1, LIFE, take=False).outcome is Outcome.ALIVE
    assert state.touch("a", T0 + 30_000, 1, LIFE, take=False).outcome is Outcome.ENDED
    assert state.empty


@pytest.mark.parametrize(
    ("view", "age", "kind", "ask"),
    [
        (None, 0.0, Kind.LIFE, True),
        (View(Outcome.HELD, 0.0), 1.0, Kind.LIFE, False),
        (View(Outcome.HELD, 0.0), 1.0, Kind.SLOT, False),  # a key again: no store call
        (View(Outcome.ALIVE, 0.0), 1.0, Kind.LIFE, False),
        (View(Outcome.ALIVE, 0.0), 1.0, Kind.SLOT, True),  # the first key: always asked
        (View(Outcome.REFUSED, 0.0), 1.0, Kind.SLOT, False),  # a retry storm: answered here
        (View(Outcome.ENDED, 0.0), 1.0, Kind.LIFE, False),
        (View(None, 0.0), 1.0, Kind.SLOT, False),  # unchecked (store away): not hammered
        (View(Outcome.HELD, 0.0), 5.0, Kind.LIFE, True),  # the interval passed
    ],
)
def test_signs_of_life_are_coalesced(view: View | None, age: float, kind: Kind, ask: bool) -> None:
    assert needs_check(view, age, 5.0, kind) is ask


# ------------------------------------------------------------------------------ challenges


def widevine_request(request_type: int) -> bytes:
    """A Widevine SignedMessage{type: LICENSE_REQUEST, msg: LicenseRequest{type}} (with the
    fields around it a CDM sends: content id, request time, a signature)."""
    inner = (
        b"\x12\x06"
        + b"\x0a\x04abcd"  # content_id (nested)
        + b"\x18"
        + varint(request_type)
        + b"\x20"
        + varint(1_700_000_000)  # request_time
    )
    return b"\x08\x01" + b"\x12" + varint(len(inner)) + inner + b"\x1a\x04sign"


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"\x08\x04", LicenseMessage.CERTIFICATE_REQUEST),
        (widevine_request(1), LicenseMessage.CHALLENGE),
        (widevine_request(2), LicenseMessage.RENEWAL),
        (widevine_request(3), LicenseMessage.RELEASE),
        (b'{"kids":["AAAAAAAAAAAAAAAAAAAAAA"],"type":"temporary"}', LicenseMessage.CHALLENGE),
        (b'<?xml version="1.0"?><soap:Envelope/>', LicenseMessage.CHALLENGE),
        (b"\x00\x00\x00\x01" + b"\x00" * 40, LicenseMessage.CHALLENGE),  # a FairPlay SPC
        (b"spc=AAAA&assetId=x", LicenseMessage.CHALLENGE),
        (b"\x08", LicenseMessage.CHALLENGE),  # truncated
        (b"\x08\x01\x12\x50abc", LicenseMessage.CHALLENGE),  # a length beyond the body
        (b"", LicenseMessage.CHALLENGE),
    ],
)
def test_license_messages(body: bytes, kind: LicenseMessage) -> None:
    assert classify(body) is kind


def test_only_widevine_routes_can_release() -> None:
    release = widevine_request(3)
    wrapped = json.dumps({"licenseRequest": base64.b64encode(release).decode()}).encode()
    assert license_message("/drm/license/com.widevine.alpha", release) is LicenseMessage.RELEASE
    assert license_message("/drm/license/widevine", release) is LicenseMessage.RELEASE
    assert license_message("/drm/license", wrapped) is LicenseMessage.RELEASE
    assert license_message("/drm/license/org.w3.clearkey", release) is LicenseMessage.CHALLENGE
    named = json.dumps(
        {"licenseRequest": base64.b64encode(release).decode(), "keySystem": "playready"}
    ).encode()
    assert license_message("/drm/license", named) is LicenseMessage.CHALLENGE
    assert license_message("/drm/license", b"{not json") is LicenseMessage.CHALLENGE
    assert license_message("/drm/license", b'{"licenseRequest": "%%%"}') is LicenseMessage.CHALLENGE


# --------------------------------------------------------------- both stores, one contract


@pytest.fixture(params=["memory", *REDIS_SHAPES])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield MemorySessionStore(LIFE)
        return
    shared = redis_client(request.getfixturevalue(REDIS_SHAPES[request.param]))
    try:
        yield RedisSessionStore(shared.client, LIFE)
    finally:
        await shared.aclose()


def facts(sid: str, user: str = "u{1}", video: str = "v", label: str = NO_LABEL) -> SessionFacts:
    # a user id with braces: the Redis keys' hash tag must still hold one viewer's keys together
    return SessionFacts(sid, user, video, "basic", '{"maxStreams":1}', T0 // 1000, label)


async def test_store_slot_table(store: SessionStore) -> None:
    a, b = facts("A" * 22), facts("B" * 22)
    await store.create(a, T0)
    await store.create(b, T0)
    steps = [
        (a, 0, True, Outcome.TAKEN, 1),
        (a, 100, True, Outcome.HELD, 1),
        (b, 200, True, Outcome.REFUSED, 1),
        (b, 300, False, Outcome.REFUSED, 1),  # refused a slot: it wants one, on every request
        (a, 2_000, False, Outcome.HELD, 1),
        (b, 4_000, True, Outcome.REFUSED, 1),  # a's slot lives until 5 000
        (b, 5_001, True, Outcome.TAKEN, 1),  # a idled out
        (a, 5_500, False, Outcome.REFUSED, 1),  # a lost its slot and b holds the only one
    ]
    for who, at, take, outcome, held in steps:
        result = await store.touch(who, 1, T0 + at, take=take)
        assert (result.outcome, result.held, result.sid) == (outcome, held, who.sid), (at, who)
    assert await store.active(["basic", "premium"], T0 + 5_500) == {"basic": 1, "premium": 0}
    assert await store.end(b, T0 + 6_000) is True
    assert await store.end(b, T0 + 6_000) is False
    assert (await store.touch(a, 1, T0 + 6_100, take=False)).outcome is Outcome.TAKEN
    assert (await store.touch(b, 1, T0 + 6_200, take=True)).outcome is Outcome.ENDED
    # the session dies 10 s after its last sign of life
    assert (await store.touch(a, 1, T0 + 16_100, take=False)).outcome is Outcome.ENDED
    assert await store.active(["basic"], T0 + 16_100) == {"basic": 0}


async def test_store_facts_and_eviction(store: SessionStore) -> None:
    made = [facts(c * 22) for c in "CDEF"]
    for i, f in enumerate(made):
        await store.create(f, T0 + i)
    assert await store.facts(made[3].sid) == made[3]
    assert await store.facts("Z" * 22) is None
    # at most 3 live sessions per viewer: the least recently seen one went
    first = await store.touch(made[0], 1, T0 + 10, take=False)
    assert first.outcome is Outcome.ENDED
    assert (await store.touch(made[1], 1, T0 + 10, take=False)).outcome is Outcome.ALIVE
    await store.end(made[1], T0 + 20)
    assert await store.facts(made[1].sid) is None


async def test_store_jwt_only_rule(store: SessionStore) -> None:
    label = jwt_label("login-1")
    manifest = facts("M" * 22, label=label)
    await store.create(manifest, T0)
    fallback = derived_session_id(manifest.user, "v", label)
    # a license with the JWT that started the manifest session: that session's slot
    first = await store.license(manifest.user, "v", label, fallback, "basic", 2, T0 + 10)
    assert (first.outcome, first.sid) == (Outcome.TAKEN, manifest.sid)
    again = await store.license(manifest.user, "v", label, fallback, "basic", 2, T0 + 20)
    assert (again.outcome, again.sid) == (Outcome.HELD, manifest.sid)
    # the manifest session's segments keep that slot
    assert (await store.touch(manifest, 2, T0 + 30, take=False)).outcome is Outcome.HELD
    # another login (no session of its own on the video): a session derived from it
    other = jwt_label("login-2")
    derived = derived_session_id(manifest.user, "v", other)
    second = await store.license(manifest.user, "v", other, derived, "basic", 2, T0 + 40)
    assert (second.outcome, second.sid) == (Outcome.TAKEN, derived)
    third_label = jwt_label("login-3")
    third = derived_session_id(manifest.user, "v", third_label)
    refused = await store.license(manifest.user, "v", third_label, third, "basic", 2, T0 + 50)
    assert (refused.outcome, refused.held) == (Outcome.REFUSED, 2)
    # a Widevine release with login-2's JWT ends the derived session; login-3 gets its slot
    assert await store.release(manifest.user, "v", other, derived, "basic", T0 + 60) == (
        True,
        derived,
    )
    taken = await store.license(manifest.user, "v", third_label, third, "basic", 2, T0 + 70)
    assert (taken.outcome, taken.sid) == (Outcome.TAKEN, third)
    # once the manifest session ended, its JWT's licenses fall back to the derived session
    await store.end(manifest, T0 + 80)
    after = await store.license(manifest.user, "v", label, fallback, "basic", 3, T0 + 90)
    assert (after.outcome, after.sid) == (Outcome.TAKEN, fallback)
    assert await store.active(["basic"], T0 + 90) == {"basic": 2}


async def test_redis_keys_of_one_viewer_share_a_cluster_slot(redis_url: str) -> None:
    from authz.sessionstore import link_key, user_key

    def tag(key: str) -> str:
        start = key.index("{")
        return key[start + 1 : key.index("}", start)]

    for user in ("alice", "a}b", "x{y}z", "Ω"):
        keys = [user_key(user, "live"), user_key(user, "slots"), link_key(user, "v", "l")]
        assert len({tag(k) for k in keys}) == 1, keys
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RedisSessionStore(client, LIFE)
        await client.script_flush()  # a new or restarted Redis: the script is loaded on demand
        await store.create(facts("K" * 22, user="a}b"), T0)
        ttls = [await client.pttl(k) for k in await client.keys("pdrm:*")]
        assert len(ttls) == 3  # live, link, facts (no slot yet)
        assert all(0 < t <= LIFE.key_ttl_ms for t in ttls)  # nothing lives forever
    finally:
        await client.aclose()
