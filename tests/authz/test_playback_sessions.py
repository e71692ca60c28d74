"""The authorizer's session flows and the registry's caching and failure decisions, with the
memory store and controlled clocks (the same flows through Envoy: tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest

from authz.decision import Allow, CheckInput, Decision, Deny
from authz.entitlement import Entitlement, EntitlementCache
from authz.errors import SessionEnded, StreamLimitReached
from authz.registry import SessionRegistry
from authz.service import Authorizer
from authz.sessions import Kind, Lifetimes, Outcome, SessionFacts, StreamLimits
from authz.sessionstore import MemorySessionStore, SessionStoreUnavailable
from authz.tokens import JwksCache, TokenVerifier
from devstack.emulators.auth import AuthEmulator
from playback_drm import contract, identity, urlsign
from tests.authz.test_sessions import widevine_request

ISS = "https://auth.test"
RING = urlsign.KeyRing.from_spec("k1:" + "a" * 43)
LIFE = Lifetimes(session_idle_ms=600_000, stream_idle_ms=60_000)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Billing:
    """Stands in for Billing behind the EntitlementSource protocol: every viewer on 'basic'
    with ``max_streams`` streams."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams

    async def fetch(self, user: str, video: str) -> Entitlement:
        facts = {"tier": "HD", "maxStreams": self.max_streams}
        return Entitlement(user, video, user != "carol", "basic", None, facts)


class World:
    def __init__(self, max_streams: int = 1, store: Any = None) -> None:
        self.clock = Clock()
        self.auth = AuthEmulator(issuer=ISS)
        self.store = store or MemorySessionStore(LIFE)
        self.registry = SessionRegistry(
            self.store,
            StreamLimits.parse("basic=2"),
            check_interval=5.0,
            clock=self.clock,
            monotonic=self.clock,
        )

        async def fetch() -> dict[str, Any]:
            return self.auth.jwks()

        verifier = TokenVerifier(
            JwksCache(fetch, frozenset({"RS256"}), min_refresh=0.0),
            issuer=ISS,
            audience="playback",
            algorithms=("RS256",),
        )

        def verify_url(path: str, query: str, client_ip: str | None, leeway: int = 0) -> Any:
            return urlsign.verify(
                RING, path, query, now=self.clock(), client_ip=client_ip, leeway=leeway
            )

        entitlements = EntitlementCache(Billing(max_streams), ttl=60, deny_ttl=10)
        self.authz = Authorizer(verifier, entitlements, verify_url, self.registry)

    def jwt(self, user: str = "alice", login: str | None = None) -> str:
        return self.auth.token(user, sid=login) if login else self.auth.token(user)

    async def check(
        self, mode: str, path: str, query: str = "", *, jwt: str | None = None, body: bytes = b""
    ) -> Decision:
        return await self.authz.check(
            CheckInput(
                method="POST" if body else "GET",
                path=path,
                query=query,
                authorization=f"Bearer {jwt}" if jwt else None,
                client_ip="203.0.113.9",
                mode=mode,
                body=body,
            )
        )

    async def start(self, jwt: str, video: str = "demo") -> str:
        allowed = await self.check(
            contract.MODE_SESSION_START, f"/playback/{video}/manifest", jwt=jwt
        )
        assert isinstance(allowed, Allow), allowed
        return dict(allowed.headers)[identity.SESSION_HEADER]

    def signed(self, path: str, sid: str | None, *, ttl: int = 300) -> str:
        token = urlsign.sign(RING, path, expires_at=int(self.clock()) + ttl, session_id=sid)
        return "pdt=" + token

    async def key(self, sid: str | None, video: str = "demo") -> Decision:
        path = f"/drm/key/{video}/00112233445566778899aabbccddeeff"
        return await self.check(contract.MODE_KEY, path, self.signed(path, sid))

    async def segment(self, sid: str, video: str = "demo") -> Decision:
        path = f"/media/{video}/hls/720p/seg-1.ts"
        return await self.check(contract.MODE_SIGNED_URL, path, self.signed(path, sid))


def denied(result: Decision, code: str) -> Deny:
    assert isinstance(result, Deny), result
    assert result.code == code, result
    return result


async def test_every_entry_manifest_starts_its_own_session() -> None:
    world = World()
    jwt = world.jwt(login="login-1")
    first, second = await world.start(jwt), await world.start(jwt)
    assert first != second  # a reload is a new session, the JWT the same
    assert len(first) == 22
    facts = await world.store.facts(first)
    assert facts is not None
    assert (facts.user, facts.video, facts.plan) == ("alice", "demo", "basic")


async def test_hls_key_takes_a_slot_once_per_session_and_names_the_viewer() -> None:
    world = World(max_streams=1)
    a, b = await world.start(world.jwt()), await world.start(world.jwt())
    allowed = await world.key(a)
    assert isinstance(allowed, Allow)
    headers = dict(allowed.headers)
    assert headers[identity.USER_HEADER] == "alice"  # the broker knows who asks for a key
    assert headers[identity.SESSION_HEADER] == a
    assert headers[identity.PLAN_HEADER] == "basic"
    assert allowed.remove_query == ("pdt",)
    assert isinstance(await world.key(a), Allow)  # the same key again, or the next one
    refused = denied(await world.key(b), "stream_limit_reached")
    assert (refused.status, refused.user, refused.video) == (403, "alice", "demo")
    # b wants a slot now: its other requests are refused too while none is free
    denied(await world.segment(b), "stream_limit_reached")
    world.clock.now += 5
    denied(await world.segment(b), "stream_limit_reached")
    assert isinstance(await world.segment(a), Allow)


async def test_key_urls_must_be_bound_to_a_session() -> None:
    world = World()
    denied(await world.key(None), "playback_session_required")
    denied(await world.key("A" * 22), "playback_session_ended")  # never started


async def test_an_explicit_end_frees_the_slot_at_once_and_stops_the_session() -> None:
    world = World(max_streams=1)
    a, b = await world.start(world.jwt()), await world.start(world.jwt())
    assert isinstance(await world.key(a), Allow)
    denied(await world.key(b), "stream_limit_reached")
    end = contract.SESSION_END_PATH
    # an end URL signed long ago still ends its session (ending is harmless)
    old = urlsign.sign(RING, end, expires_at=int(world.clock()) - 3600, session_id=a)
    assert isinstance(await world.check(contract.MODE_SESSION_END, end, "pdt=" + old), Allow)
    world.clock.now += 5  # b's refusal is remembered for the check interval
    assert isinstance(await world.key(b), Allow)
    denied(await world.segment(a), "playback_session_ended")
    # ending again is idempotent
    assert isinstance(
        await world.check(contract.MODE_SESSION_END, end, world.signed(end, a)), Allow
    )
    # an end URL of no session: refused, not a crash
    denied(
        await world.check(contract.MODE_SESSION_END, end, world.signed(end, None)),
        "playback_session_required",
    )


async def test_slots_follow_signs_of_life_and_idle_out() -> None:
    world = World(max_streams=1)
    a, b = await world.start(world.jwt()), await world.start(world.jwt())
    assert isinstance(await world.key(a), Allow)
    for _ in range(30):  # 150 s of playback, a segment every 5 s: the slot holds
        world.clock.now += 5
        assert isinstance(await world.segment(a), Allow)
    denied(await world.key(b), "stream_limit_reached")
    world.clock.now += 61  # a stopped: its slot is free a minute later
    assert isinstance(await world.key(b), Allow)
    # a resumes: its slot is gone and the only one is b's
    world.clock.now += 5
    denied(await world.segment(a), "stream_limit_reached")


async def test_heartbeats_are_signs_of_life() -> None:
    world = World(max_streams=1)
    a, b = await world.start(world.jwt()), await world.start(world.jwt())
    assert isinstance(await world.key(a), Allow)
    beat = contract.SESSION_HEARTBEAT_PATH
    for _ in range(5):
        world.clock.now += 30
        allowed = await world.check(contract.MODE_SESSION_HEARTBEAT, beat, world.signed(beat, a))
        assert isinstance(allowed, Allow)
    denied(await world.key(b), "stream_limit_reached")


async def test_jwt_only_licenses_join_the_session_their_jwt_started() -> None:
    world = World(max_streams=2)
    jwt = world.jwt(login="login-1")
    manifest = await world.start(jwt)
    body = b'{"kids":["AAAAAAAAAAAAAAAAAAAAAA"]}'
    path = "/drm/license/org.w3.clearkey"
    allowed = await world.check(contract.MODE_LICENSE, path, "videoId=demo", jwt=jwt, body=body)
    assert isinstance(allowed, Allow)
    assert dict(allowed.headers)[identity.SESSION_HEADER] == manifest
    # the same login session again (another token of it): the same stream
    again = await world.check(
        contract.MODE_LICENSE, path, "videoId=demo", jwt=world.jwt(login="login-1"), body=body
    )
    assert dict(again.headers)[identity.SESSION_HEADER] == manifest
    # two more logins: the second is one too many
    other = await world.check(
        contract.MODE_LICENSE, path, "videoId=demo", jwt=world.jwt(login="login-2"), body=body
    )
    assert isinstance(other, Allow)
    refused = await world.check(
        contract.MODE_LICENSE, path, "videoId=demo", jwt=world.jwt(login="login-3"), body=body
    )
    assert denied(refused, "stream_limit_reached").user == "alice"


async def test_widevine_release_ends_the_session_and_certificates_take_no_slot() -> None:
    world = World(max_streams=1)
    a, b = await world.start(world.jwt()), await world.start(world.jwt())
    path = "/drm/license/com.widevine.alpha"
    cert = await world.check(contract.MODE_LICENSE, path, world.signed(path, b), body=b"\x08\x04")
    assert isinstance(cert, Allow)  # b asked for the service certificate: no slot
    assert isinstance(
        await world.check(
            contract.MODE_LICENSE, path, world.signed(path, a), body=widevine_request(1)
        ),
        Allow,
    )
    denied(
        await world.check(
            contract.MODE_LICENSE, path, world.signed(path, b), body=widevine_request(1)
        ),
        "stream_limit_reached",
    )
    released = await world.check(
        contract.MODE_LICENSE, path, world.signed(path, a), body=widevine_request(3)
    )
    assert isinstance(released, Allow)  # the release goes on to the provider
    world.clock.now += 5
    assert isinstance(
        await world.check(
            contract.MODE_LICENSE, path, world.signed(path, b), body=widevine_request(1)
        ),
        Allow,
    )
    denied(await world.segment(a), "playback_session_ended")


async def test_no_session_for_a_viewer_billing_refuses() -> None:
    world = World()
    refused = await world.check(
        contract.MODE_SESSION_START, "/playback/demo/manifest", jwt=world.jwt("carol")
    )
    assert (denied(refused, "not_entitled").user, refused.video) == ("carol", "demo")  # type: ignore[union-attr]


# ------------------------------------------------------------------------ the registry


class CountingStore(MemorySessionStore):
    def __init__(self) -> None:
        super().__init__(LIFE)
        self.touches = 0
        self.down = False

    async def touch(
        self, facts: SessionFacts, limit: int, now_ms: int, *, take: bool, charge: Any = None
    ) -> Any:
        self.touches += 1
        if self.down:
            raise SessionStoreUnavailable("ConnectionError")
        return await super().touch(facts, limit, now_ms, take=take, charge=charge)

    async def create(self, facts: SessionFacts, now_ms: int) -> None:
        if self.down:
            raise SessionStoreUnavailable("ConnectionError")
        await super().create(facts, now_ms)

    async def facts(self, sid: str) -> SessionFacts | None:
        if self.down:
            raise SessionStoreUnavailable("ConnectionError")
        return await super().facts(sid)


def registry(store: CountingStore, clock: Clock) -> SessionRegistry:
    return SessionRegistry(
        store, StreamLimits.parse("basic=1"), check_interval=5.0, clock=clock, monotonic=clock
    )


async def start(reg: SessionRegistry) -> SessionFacts:
    return await reg.start(user="u", video="v", plan="basic", entitlement="{}", label="-")


async def test_signs_of_life_cost_one_store_call_per_interval() -> None:
    import asyncio

    clock, store = Clock(), CountingStore()
    reg = registry(store, clock)
    facts = await start(reg)
    assert await reg.check(facts, 1, Kind.SLOT) is Outcome.TAKEN
    calls = store.touches
    await asyncio.gather(*(reg.check(facts, 1, Kind.LIFE) for _ in range(50)))
    await reg.check(facts, 1, Kind.SLOT)  # a key again: held, from the view
    assert store.touches == calls
    clock.now += 5
    await asyncio.gather(*(reg.check(facts, 1, Kind.LIFE) for _ in range(50)))
    assert store.touches == calls + 1  # concurrent requests shared one call


async def test_another_replica_notices_an_end_within_the_interval() -> None:
    clock, store = Clock(), CountingStore()
    here, there = registry(store, clock), registry(store, clock)
    facts = await start(here)
    seen = await there.lookup(facts.sid)
    assert seen == facts
    assert await there.check(facts, 1, Kind.LIFE) is Outcome.ALIVE
    await here.end(facts)
    assert await there.check(facts, 1, Kind.LIFE) is Outcome.ALIVE  # its view is still fresh
    clock.now += 5
    with pytest.raises(SessionEnded):
        await there.check(facts, 1, Kind.LIFE)


async def test_the_store_down_fails_open_and_catches_up() -> None:
    clock, store = Clock(), CountingStore()
    reg = registry(store, clock)
    store.down = True
    facts = await start(reg)  # admitted all the same
    assert await reg.check(facts, 1, Kind.SLOT) is None  # unchecked: allowed
    assert await reg.lookup("Q" * 22) is None  # unknown here: the caller uses the token alone
    store.down = False
    clock.now += 5
    # started while the store was away: recorded on its first check, not taken for ended
    assert await reg.check(facts, 1, Kind.SLOT) is Outcome.TAKEN
    with pytest.raises(SessionEnded):
        await reg.lookup("Q" * 22)


async def test_refusals_name_the_limit() -> None:
    clock, store = Clock(), CountingStore()
    reg = registry(store, clock)
    a, b = await start(reg), await start(reg)
    await reg.check(a, 1, Kind.SLOT)
    with pytest.raises(StreamLimitReached) as caught:
        await reg.check(b, 1, Kind.SLOT)
    assert caught.value.extensions == {"maxStreams": 1}


async def test_the_gauge_counts_sessions_holding_slots_per_plan() -> None:
    from prometheus_client import REGISTRY

    clock, store = Clock(), CountingStore()
    reg = registry(store, clock)
    a, b = await start(reg), await start(reg)
    await reg.check(a, 5, Kind.SLOT)
    await reg.check(b, 5, Kind.SLOT)
    await reg.refresh_gauge()
    assert REGISTRY.get_sample_value("playback_sessions_active", {"plan": "basic"}) == 2
    await reg.end(a)
    await reg.refresh_gauge()
    assert REGISTRY.get_sample_value("playback_sessions_active", {"plan": "basic"}) == 1
