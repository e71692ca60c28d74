"""Issue 15 through the real stack (Envoy, authz, extproc, the broker, the live origin), with token
lifetimes of seconds (``tests.support.stack.LIVE_ENV``): a live session keeps playing long after
its playlist URLs' tokens expired, and a revoked viewer is cut off within the stated bound.
The rules themselves: tests/authz/test_long_sessions.py; the players: tests/e2e/test_live.py.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from devstack.stack import Stack
from tests.authz.test_sessions import widevine_request
from tests.support.stack import (
    LIVE_ENTITLEMENT_TTL,
    LIVE_PLAYLIST_TTL,
    LIVE_SESSION_CHECK,
    Reply,
    http,
    set_viewer,
)

pytestmark = pytest.mark.integration

WIDEVINE = "com.widevine.alpha"
REFRESH_S = 2.0  # the channel's target duration and minimumUpdatePeriod
# A revoked viewer's next playlist request is refused once the entitlement cache lets Billing's
# answer through: at most ENTITLEMENT_TTL_SECONDS after the revocation, plus one refresh.
REVOCATION_BOUND_S = LIVE_ENTITLEMENT_TTL + REFRESH_S


def _viewer(stack: Stack) -> str:
    user = f"live-{uuid.uuid4().hex[:8]}"
    set_viewer(stack, user, "basic", 0)
    return user


def _start(stack: Stack, user: str, fmt: str) -> dict[str, Any]:
    query = "?format=dash" if fmt == "dash" else ""
    reply = http(
        f"{stack.gateway}/playback/live-demo/manifest{query}",
        headers={"Authorization": f"Bearer {stack.token(user)}", "Accept": "application/json"},
    )
    assert reply.status == 200, reply.body
    doc: dict[str, Any] = reply.json()
    return doc


def _ok(url: str) -> Reply:
    reply = http(url)
    assert reply.status == 200, (url[:120], reply.status, reply.body[:300])
    return reply


def _expiry(url: str) -> int:
    token = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["pdt"]
    return int(token.split(".")[1])


def _variant(stack: Stack, session: dict[str, Any]) -> str:
    master = _ok(session["url"]).body.decode()
    variant = next(line for line in master.splitlines() if line and not line.startswith("#"))
    return urllib.parse.urljoin(str(session["url"]), variant)


def _hls_refresh(url: str) -> tuple[int, list[str], list[str]]:
    """(media sequence, segment URLs, key URLs) of one playlist refresh."""
    body = _ok(url).body.decode()
    assert "#EXT-X-ENDLIST" not in body
    sequence = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", body).group(1))  # type: ignore[union-attr]
    segments = [
        urllib.parse.urljoin(url, line)
        for line in body.splitlines()
        if line and not line.startswith("#")
    ]
    keys = [urllib.parse.urljoin(url, k) for k in re.findall(r'URI="([^"]+)"', body)]
    return sequence, segments, keys


def test_live_sessions_outlive_every_token_lifetime(live_stack: Stack) -> None:
    """HLS re-fetches one media playlist URL for the whole session; DASH follows the MPD's
    Location, re-signed at every refresh. Both play on for more than twice the playlist lifetime
    and every refresh's segments and keys are served."""
    user = _viewer(live_stack)
    variant = _variant(live_stack, _start(live_stack, user, "hls"))
    mpd_url = _start(live_stack, user, "dash")["url"]
    started = time.time()
    sequences: list[int] = []
    keys_seen: set[str] = set()
    mpd_tokens: set[int] = set()
    while time.time() - started < 2 * LIVE_PLAYLIST_TTL + 3:
        sequence, segments, keys = _hls_refresh(variant)
        sequences.append(sequence)
        assert _ok(segments[-1]).headers["content-type"] == "video/mp2t"
        for key in keys:
            if key.split("?")[0] not in keys_seen:
                assert len(_ok(key).body) == 16
                keys_seen.add(key.split("?")[0])
        mpd = _ok(mpd_url).body.decode()
        location = re.search(r"<Location>([^<]+)</Location>", mpd)
        assert location is not None, mpd[:300]
        mpd_url = urllib.parse.urljoin(mpd_url, location.group(1).replace("&amp;", "&"))
        mpd_tokens.add(_expiry(mpd_url))
        template = re.search(r'media="([^"]+)"', mpd)
        assert template is not None
        number = re.search(r'startNumber="(\d+)"', mpd)
        assert number is not None
        segment = template.group(1).replace("&amp;", "&").replace("$Number$", number.group(1))
        _ok(urllib.parse.urljoin(mpd_url, segment))
        time.sleep(REFRESH_S)
    # the playlist URL's token expired long ago, and it is still served
    assert time.time() > _expiry(variant) + LIVE_PLAYLIST_TTL
    assert sequences == sorted(sequences)
    assert sequences[-1] - sequences[0] >= LIVE_PLAYLIST_TTL // REFRESH_S
    assert len(keys_seen) >= 3  # a key every 3 segments
    assert len(mpd_tokens) >= 3  # each MPD refresh named a fresh MPD URL


def _events(stack: Stack, user: str) -> list[dict[str, Any]]:
    return [
        e
        for e in stack.events()
        if str(e.get("type", "")).endswith(".playback.error.v1")
        and isinstance(e.get("data"), dict)
        and e["data"].get("userId") == user
    ]


def test_a_revoked_viewer_is_cut_off_within_the_bound(live_stack: Stack) -> None:
    user = _viewer(live_stack)
    variant = _variant(live_stack, _start(live_stack, user, "hls"))
    _sequence, segments, _keys = _hls_refresh(variant)
    set_viewer(live_stack, user, None)  # Billing: the subscription ends mid-match
    revoked = time.time()
    while True:
        reply = http(variant)
        if reply.status != 200:
            break
        assert time.time() - revoked < REVOCATION_BOUND_S + 1, "still served"
        segments = [
            urllib.parse.urljoin(variant, line)
            for line in reply.body.decode().splitlines()
            if line and not line.startswith("#")
        ]
        time.sleep(0.25)
    cut_off = time.time() - revoked
    assert reply.status == 403, reply.body
    assert reply.json()["code"] == "not_entitled"
    assert cut_off <= REVOCATION_BOUND_S, cut_off
    # the session ended with it: segments listed a moment ago are refused too (the same
    # replica at once, others within SESSION_CHECK_SECONDS)
    time.sleep(LIVE_SESSION_CHECK)
    segment = http(segments[-1])
    assert segment.status == 403, segment.status
    assert segment.json()["code"] == "playback_session_ended"
    deadline = time.time() + 5
    while not any(e["data"].get("code") == "not_entitled" for e in _events(live_stack, user)):
        assert time.time() < deadline, "no PlaybackError event"
        time.sleep(0.2)
    event = next(e for e in _events(live_stack, user) if e["data"]["code"] == "not_entitled")
    assert event["data"]["videoId"] == "live-demo"


def _widevine_received(stack: Stack) -> list[dict[str, Any]]:
    reply = http(f"http://127.0.0.1:{stack.ports.drm}/control/widevine/received")
    assert reply.status == 200
    received: list[dict[str, Any]] = reply.json()
    return received


def _overrides(entry: dict[str, Any]) -> dict[str, Any]:
    outer = json.loads(base64.b64decode(entry["body"]))
    inner = json.loads(base64.b64decode(outer["request"]))
    overrides: dict[str, Any] = inner["policy_overrides"]
    return overrides


def test_live_widevine_licenses_are_renewed_only_while_entitled(live_stack: Stack) -> None:
    """The session's Widevine license URL: the first license of a live video asks the CDM to
    renew (the broker's live policy), a renewal passes through the adapter while the viewer is
    entitled, and is refused once Billing revoked them."""
    user = _viewer(live_stack)
    session = _start(live_stack, user, "dash")
    url = session["licenseUrls"][WIDEVINE]
    first = http(url, method="POST", body=widevine_request(1))
    assert first.status == 200, first.body
    overrides = _overrides(_widevine_received(live_stack)[-1])
    assert overrides["can_renew"] is True
    assert overrides["can_persist"] is False
    assert overrides["license_duration_seconds"] == 600
    assert overrides["renewal_delay_seconds"] == 300
    seen = len(_widevine_received(live_stack))
    renewal = http(url, method="POST", body=widevine_request(2))
    assert renewal.status == 200, renewal.body
    assert len(_widevine_received(live_stack)) == seen + 1  # the provider saw the renewal
    set_viewer(live_stack, user, None)
    time.sleep(LIVE_ENTITLEMENT_TTL + 0.5)
    refused = http(url, method="POST", body=widevine_request(2))
    assert refused.status == 403, refused.body
    assert refused.json()["code"] == "not_entitled"
    assert len(_widevine_received(live_stack)) == seen + 1  # never reached the provider


def test_a_second_live_session_over_the_limit_is_refused(live_stack: Stack) -> None:
    """One stream allowed: the second live session is refused its first key (what decrypts),
    with the event, while the first plays on."""
    user = f"live-{uuid.uuid4().hex[:8]}"
    set_viewer(live_stack, user, "basic", 1)
    keys = []
    for _ in range(2):
        _sequence, _segments, found = _hls_refresh(
            _variant(live_stack, _start(live_stack, user, "hls"))
        )
        keys.append(found[-1])
    assert _ok(keys[0]).body
    refused = http(keys[1])
    assert refused.status == 403, refused.body
    assert refused.json()["code"] == "stream_limit_reached"
    assert len(_ok(keys[0]).body) == 16
    deadline = time.time() + 5
    while not any(
        e["data"].get("code") == "stream_limit_reached" for e in _events(live_stack, user)
    ):
        assert time.time() < deadline, "no PlaybackError event"
        time.sleep(0.2)


def test_the_live_mpd_time_source_is_reachable_without_a_token(live_stack: Stack) -> None:
    mpd = _ok(_start(live_stack, _viewer(live_stack), "dash")["url"]).body.decode()
    timing = re.search(r'<UTCTiming schemeIdUri="([^"]+)" value="([^"]+)"', mpd)
    assert timing is not None, mpd[:400]
    assert timing.groups() == ("urn:mpeg:dash:utc:http-iso:2014", "/demo/api/time")  # no pdt
    reply = http(
        f"{live_stack.gateway}{timing.group(2)}", headers={"Origin": "http://elsewhere.example"}
    )
    assert reply.status == 200
    assert reply.headers["access-control-allow-origin"] == "*"  # any page's player may ask
    stamp = datetime.strptime(reply.body.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(stamp.timestamp() - time.time()) < 2
