"""Long sessions: session URLs a player re-fetches outlive their tokens while the session is alive
and its viewer entitled; a revoked viewer is cut off at the next playlist refresh once the
entitlement cache lets Billing's answer through. Memory store, controlled clocks (the same
through Envoy: tests/integration/test_long_sessions.py)."""

from __future__ import annotations

from typing import Any

import pytest

from authz.decision import Allow, Decision
from authz.entitlement import Entitlement, EntitlementCache
from authz.errors import BillingUnavailable
from authz.service import Authorizer
from playback_drm import contract, urlsign
from tests.authz.test_playback_sessions import RING, World, denied

PLAYLIST = "/media/live-demo/hls/360p/playlist.m3u8"
SEGMENT = "/media/live-demo/hls/360p/seg_7.ts"
ENTITLEMENT_TTL = 4


class Billing:
    """Entitles everyone but those in ``revoked``; ``down`` makes it unreachable."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.down = False
        self.calls = 0

    async def fetch(self, user: str, video: str) -> Entitlement:
        self.calls += 1
        if self.down:
            raise BillingUnavailable("Billing unreachable (test)")
        if user in self.revoked:
            return Entitlement(user, video, False, None, "no_subscription", {})
        return Entitlement(user, video, True, "basic", None, {"tier": "HD", "maxStreams": 0})


class LiveWorld(World):
    def __init__(self) -> None:
        super().__init__()
        self.billing = Billing()
        entitlements = EntitlementCache(
            self.billing, ttl=ENTITLEMENT_TTL, deny_ttl=2, clock=self.clock
        )
        self.authz = Authorizer(
            self.authz._verifier,
            entitlements,
            self.authz._url_verifier,
            self.registry,
            clock=self.clock,
        )

    def url(self, path: str, sid: str | None, *, ttl: int, scope: str | None = None) -> str:
        token = urlsign.sign(
            RING, path, expires_at=int(self.clock()) + ttl, session_id=sid, scope=scope
        )
        return "pdt=" + token

    async def get(self, path: str, query: str) -> Decision:
        return await self.check(contract.MODE_SIGNED_URL, path, query)


@pytest.fixture
def world() -> LiveWorld:
    return LiveWorld()


def _ok(result: Decision) -> Allow:
    assert isinstance(result, Allow), result
    return result


async def test_an_entitled_viewer_keeps_their_playlist_url_for_hours(world: LiveWorld) -> None:
    sid = await world.start(world.jwt("alice"), "live-demo")
    playlist = world.url(PLAYLIST, sid, ttl=10)
    for _ in range(3 * 3600 // 2):  # a refresh every 2 s for three hours, one token
        world.clock.now += 2
        _ok(await world.get(PLAYLIST, playlist))
        # what each refresh lists is signed afresh: those tokens are unexpired
        _ok(await world.get(SEGMENT, world.url(SEGMENT, sid, ttl=6)))
    assert world.clock.now - 1_700_000_000.0 > 100 * 10  # far beyond the token's lifetime


async def test_expired_segment_and_key_urls_stay_expired(world: LiveWorld) -> None:
    sid = await world.start(world.jwt("alice"), "live-demo")
    segment = world.url(SEGMENT, sid, ttl=6)
    key_path = "/drm/key/live-demo/00112233445566778899aabbccddeeff"
    key = world.url(key_path, sid, ttl=6)
    world.clock.now += 10
    denied(await world.get(SEGMENT, segment), "url_token_expired")
    denied(await world.check(contract.MODE_KEY, key_path, key), "url_token_expired")
    # a segment token's video-wide prefix never stands in for an expired playlist token
    prefix = world.url(PLAYLIST, sid, ttl=6, scope="/media/live-demo/")
    world.clock.now += 10
    denied(await world.get(PLAYLIST, prefix), "url_token_expired")
    # nor does a bearer playlist token (no session to vouch for it)
    bearer = world.url(PLAYLIST, None, ttl=6)
    world.clock.now += 10
    denied(await world.get(PLAYLIST, bearer), "url_token_expired")


async def test_an_expired_playlist_url_of_an_ended_session_is_refused(world: LiveWorld) -> None:
    sid = await world.start(world.jwt("alice"), "live-demo")
    playlist = world.url(PLAYLIST, sid, ttl=10)
    end = world.url(contract.SESSION_END_PATH, sid, ttl=10)
    _ok(await world.check(contract.MODE_SESSION_END, contract.SESSION_END_PATH, end))
    world.clock.now += 11
    denied(await world.get(PLAYLIST, playlist), "playback_session_ended")
    # unexpired, it is refused too: the session is over
    denied(await world.get(PLAYLIST, world.url(PLAYLIST, sid, ttl=10)), "playback_session_ended")


async def test_a_revoked_viewer_is_cut_off_at_the_next_refresh_after_the_cache(
    world: LiveWorld,
) -> None:
    sid = await world.start(world.jwt("bob"), "live-demo")
    world.clock.now += 1
    _ok(await world.get(PLAYLIST, world.url(PLAYLIST, sid, ttl=10)))
    world.billing.revoked.add("bob")
    # the cached grant still holds for at most ENTITLEMENT_TTL seconds
    _ok(await world.get(PLAYLIST, world.url(PLAYLIST, sid, ttl=10)))
    world.clock.now += ENTITLEMENT_TTL
    refused = denied(await world.get(PLAYLIST, world.url(PLAYLIST, sid, ttl=10)), "not_entitled")
    assert (refused.user, refused.video) == ("bob", "live-demo")  # the PlaybackError event's
    # the session ended with it: its segments stop too, without another Billing call
    calls = world.billing.calls
    denied(await world.get(SEGMENT, world.url(SEGMENT, sid, ttl=6)), "playback_session_ended")
    assert world.billing.calls == calls


async def test_an_expired_url_of_a_revoked_viewer_is_refused(world: LiveWorld) -> None:
    sid = await world.start(world.jwt("bob"), "live-demo")
    playlist = world.url(PLAYLIST, sid, ttl=5)
    world.billing.revoked.add("bob")
    world.clock.now += ENTITLEMENT_TTL + 2
    refused = denied(await world.get(PLAYLIST, playlist), "not_entitled")
    assert (refused.user, refused.video) == ("bob", "live-demo")  # the PlaybackError event's
    denied(await world.get(SEGMENT, world.url(SEGMENT, sid, ttl=6)), "playback_session_ended")


async def test_billing_down_at_a_refresh_keeps_a_live_session_playing(world: LiveWorld) -> None:
    sid = await world.start(world.jwt("alice"), "live-demo")
    world.billing.down = True
    world.clock.now += ENTITLEMENT_TTL + 1
    _ok(await world.get(PLAYLIST, world.url(PLAYLIST, sid, ttl=10)))
    # but an expired token needs Billing's word that the viewer still may watch
    expired = world.url(PLAYLIST, sid, ttl=1)
    world.clock.now += 2
    denied(await world.get(PLAYLIST, expired), "billing_unavailable")
    world.billing.down = False
    _ok(await world.get(PLAYLIST, expired))


async def test_license_and_heartbeat_urls_of_a_live_session_outlive_their_tokens(
    world: LiveWorld,
) -> None:
    sid = await world.start(world.jwt("alice"), "live-demo")
    heartbeat = world.url(contract.SESSION_HEARTBEAT_PATH, sid, ttl=10)
    license_query = world.url("", sid, ttl=10, scope=contract.LICENSE_PATH + "/")
    world.clock.now += 60
    _ok(
        await world.check(
            contract.MODE_SESSION_HEARTBEAT, contract.SESSION_HEARTBEAT_PATH, heartbeat
        )
    )
    body: Any = b'{"kids":["AAAAAAAAAAAAAAAAAAAAAA"],"type":"temporary"}'
    path = contract.LICENSE_PATH + "/org.w3.clearkey"
    _ok(await world.check(contract.MODE_LICENSE, path, license_query, body=body))
    world.billing.revoked.add("alice")
    world.clock.now += ENTITLEMENT_TTL
    denied(await world.check(contract.MODE_LICENSE, path, license_query, body=body), "not_entitled")
