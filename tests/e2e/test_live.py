"""Issue 15 in real players: Shaka (DASH) and hls.js (HLS) play the live channel through the
gateway with token lifetimes of seconds (``tests.support.stack.LIVE_ENV``: segments 6 s,
playlists 10 s) for more than three times the longest lifetime, then Billing revokes the viewer
and playback stops within the stated bound (docs/ARCHITECTURE.md, "Long sessions").

About 50 s: both players play at once (the long run is the point of the test), then the
revocation; the demo page's three players play the channel for a few seconds on the side.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from devstack.stack import Stack
from tests.e2e.browser import DemoPages, PlayerPage
from tests.support.stack import (
    LIVE_ENTITLEMENT_TTL,
    LIVE_PLAYLIST_TTL,
    LIVE_SESSION_CHECK,
    LIVE_TOKEN_TTL,
    set_viewer,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Request

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LIVE_PLAYERS = ("shaka", "hlsjs")
PLAY_S = 3 * max(LIVE_TOKEN_TTL, LIVE_PLAYLIST_TTL) + 2
SAMPLE_S = 2.0
REFRESH_S = 2.0
# requests refused at most this long after the revocation (ENTITLEMENT_TTL + one refresh +
# another replica's view), and the picture stops once the buffer has played out: the live delay
# (Shaka: suggestedPresentationDelay, three segments; hls.js: three target durations) and the
# segment being fetched, noticed STALLED_S later, with a margin for this shared machine
CUT_OFF_S = LIVE_ENTITLEMENT_TTL + REFRESH_S + LIVE_SESSION_CHECK
STOPPED_BOUND_S = CUT_OFF_S + 4 * 2 + 2 + 3
STALLED_S = 2.0  # nothing to play this long: the picture stopped


def _describe(page: PlayerPage) -> str:
    state = page.state()
    keep = ("state", "currentTime", "maxTime", "license", "error")
    return f"{ {k: state.get(k) for k in keep} } console: {page.console[-8:]}"


def _path(request: Request) -> str:
    return urllib.parse.urlsplit(request.url).path


def _status(request: Request) -> int | None:
    response = request.response()
    return response.status if response is not None else None


@pytest.fixture(scope="module")
def live_pages(browser: Browser, live_stack: Stack) -> Iterator[DemoPages]:
    pages = DemoPages(browser, live_stack.gateway)
    yield pages
    for page in list(pages.open_pages):
        pages.close(page)


@pytest.fixture(autouse=True)
def _save_live_pages_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reports = request.node.stash.get(_reports_key(), {})
    if any(r.failed for r in reports.values()) and "live_pages" in request.fixturenames:
        pages: DemoPages = request.getfixturevalue("live_pages")
        pages.save_failure(request.node.name)


def _reports_key() -> Any:
    from tests.e2e import conftest  # the stash key of the shared hook

    return conftest._REPORTS


def _viewer(stack: Stack, player: str) -> str:
    user = f"live-{player}-{uuid.uuid4().hex[:6]}"
    set_viewer(stack, user, "basic", 0)
    return user


def _times(pages: dict[str, PlayerPage]) -> dict[str, float]:
    return {name: float(page.state().get("currentTime") or 0.0) for name, page in pages.items()}


def _viewer_token(page: PlayerPage) -> str:
    (request,) = [r for r in page.requests if "/demo/api/token" in r.url]
    response = request.response()
    assert response is not None
    token = response.json()["token"]
    assert isinstance(token, str)
    return token


def test_live_plays_past_every_token_lifetime_then_stops_on_revocation(
    live_pages: DemoPages, live_stack: Stack
) -> None:
    users = {p: _viewer(live_stack, p) for p in LIVE_PLAYERS}
    pages = {
        p: live_pages.open_player(live_stack.gateway, p, users[p], "live-demo")
        for p in LIVE_PLAYERS
    }
    for page in pages.values():
        page.wait(
            "() => window.playerState.state === 'playing' || !!window.playerState.error", None, 45
        )
        assert page.state()["error"] is None, _describe(page)

    # Play for three times the longest token lifetime: time advances in every sample window.
    started = time.time()
    first = last = _times(pages)
    while time.time() - started < PLAY_S:
        time.sleep(SAMPLE_S * 3)
        now = _times(pages)
        for name, page in pages.items():
            assert page.state()["error"] is None, _describe(page)
            assert now[name] > last[name] + SAMPLE_S, (name, last[name], now[name])
        last = now
    for name, page in pages.items():
        assert last[name] - first[name] >= PLAY_S - 2 * SAMPLE_S, _describe(page)
        # never refused (a 4xx); a 503 of a dependency slow on this shared box is retried by the
        # player and is no refusal
        refused = [
            (r.method, _path(r), _status(r))
            for r in page.requests
            if _path(r).startswith(("/media/", "/drm/", "/playback/"))
            and 400 <= (_status(r) or 0) < 500
        ]
        assert refused == [], refused

    hls = pages["hlsjs"]
    keys = {_path(r) for r in hls.requests if _path(r).startswith("/drm/key/live-demo/")}
    assert len(keys) >= 3, keys  # the key changed at least twice
    for name, page in pages.items():
        # the JWT went out on the first manifest request only (and, for Shaka, as the
        # Authorization of its license requests): never on a refresh
        token = _viewer_token(page)
        carrying = [
            (r.method, _path(r)) for r in page.requests if token in urllib.parse.unquote(r.url)
        ]
        assert carrying == [("GET", "/playback/live-demo/manifest")], (name, carrying)
        refreshes = [r for r in page.requests if _path(r).endswith((".m3u8", ".mpd"))]
        assert len(refreshes) >= PLAY_S // REFRESH_S // 2, (name, len(refreshes))

    # Billing revokes both viewers: requests are refused within CUT_OFF_S and the picture stops.
    for user in users.values():
        set_viewer(live_stack, user, None)
    revoked = time.time()
    stopped: dict[str, float] = {}
    starved: dict[str, float] = {}
    while len(stopped) < len(pages):
        assert time.time() - revoked < STOPPED_BOUND_S, (
            "still playing",
            {n: _describe(p) for n, p in pages.items() if n not in stopped},
        )
        time.sleep(0.5)
        for name, page in pages.items():
            if name in stopped:
                continue
            # The picture stops when the buffer runs dry: readyState HAVE_CURRENT_DATA or less
            # (Shaka then jumps its playhead to the live edge now and then, with nothing to
            # show; hls.js reports a fatal error after its retries).
            ready = page.page.evaluate("() => document.getElementById('video').readyState")
            if page.state().get("error") or (
                ready <= 2 and time.time() - starved.setdefault(name, time.time()) >= STALLED_S
            ):
                stopped[name] = round(time.time() - revoked, 1)
            elif ready > 2:
                starved.pop(name, None)
    cut_offs = {}
    for name, page in pages.items():
        refusals = [(_path(r), _status(r)) for r in page.requests if _status(r) == 403]
        assert refusals, (name, _describe(page))
        first_refusal = (
            min(r.timing["startTime"] for r in page.requests if _status(r) == 403) / 1000
        )  # ms since the epoch, in the browser's clock (this machine's)
        assert first_refusal - revoked <= CUT_OFF_S + 1, (name, first_refusal - revoked)
        cut_offs[name] = round(first_refusal - revoked, 1)
    # the figures (pytest -s): seconds from Billing's change to the first 403 and to a still picture
    print(f"live revocation: first 403 {cut_offs} s, picture stopped {stopped} s")
    events = [
        e["data"]
        for e in live_stack.events()
        if str(e.get("type", "")).endswith(".playback.error.v1")
        and isinstance(e.get("data"), dict)
        and e["data"].get("code") == "not_entitled"
    ]
    for user in users.values():
        assert any(d.get("userId") == user and d.get("videoId") == "live-demo" for d in events), (
            user,
            events[-5:],
        )
    for page in pages.values():  # (players of revoked viewers keep retrying: stop them)
        live_pages.close(page)


def test_the_demo_page_lists_and_plays_the_live_channel(
    live_pages: DemoPages, live_stack: Stack
) -> None:
    user = f"live-demo-page-{uuid.uuid4().hex[:6]}"
    set_viewer(live_stack, user, "basic", 0)
    demo = live_pages.open(user, "live-demo")
    options = demo.page.eval_on_selector_all("#video option", "els => els.map(e => e.value)")
    assert "live-demo" in options
    for name in ("shaka", "dashjs", "hlsjs"):
        demo.wait(
            "(n) => !!window.demoState[n] && (window.demoState[n].state === 'playing'"
            " || !!window.demoState[n].error)",
            name,
            45,
        )
    before = {n: demo.player(n)["currentTime"] for n in ("shaka", "dashjs", "hlsjs")}
    time.sleep(4)
    for name in ("shaka", "dashjs", "hlsjs"):
        state = demo.player(name)
        assert state["error"] is None, (name, state, demo.console[-8:])
        assert state["currentTime"] > before[name] + 2, (name, before[name], state)
    live_pages.close(demo)
