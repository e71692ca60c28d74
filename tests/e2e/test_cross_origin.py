"""Players on their own origin (issue 19): the player pages come from the local stack's site, an
origin other than the gateway's, as a platform's pages come from ``www.example.tv`` while the
API lives on ``api.example.tv``. Every manifest, segment, license and key request is then
cross-origin and gets through only if the edge's CORS policy lets it: dash.js, for one, sends its
license request with credentials as soon as it carries an ``Authorization`` header.

Each player keeps its default request settings (``devstack/demo/player.js``). The three pages of
a test group play at once, so the browser tests stay short.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.browser import PLAYERS, DemoPages, PlayerPage
from tests.e2e.test_players import PLAYED_OR_FAILED as DEMO_PLAYED_OR_FAILED
from tests.support.stack import add_subscriber

if TYPE_CHECKING:
    from playwright.sync_api import Request

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

PLAYED_S = 1.0
NEAR_END_S = 1.5  # the seek lands this far before the end, then the player plays to the end
PLAYED_OR_FAILED = """(min) => {
  const s = window.playerState;
  return !!s && (s.maxTime > min || !!s.error);
}"""
ENDED_OR_FAILED = """() => {
  const s = window.playerState;
  return !!s && (s.ended || !!s.error);
}"""
FAILED = "() => !!(window.playerState && window.playerState.error)"
# A viewer drags the bar near the end and presses play (in case it had ended already). The page
# clears `ended` on the seek; here too, in the same turn, so no stale value is read before it.
SEEK_NEAR_END = """(before) => {
  const video = document.getElementById('video');
  video.currentTime = video.duration - before;
  window.playerState.ended = false;
  return video.play().catch(() => {});
}"""


def _describe(page: PlayerPage) -> str:
    state = page.state()
    keep = ("state", "currentTime", "maxTime", "duration", "ended", "license", "error")
    return f"{ {k: state.get(k) for k in keep} } console: {page.console[-8:]}"


def _port(url: str) -> int | None:
    return urllib.parse.urlsplit(url).port


@pytest.fixture(scope="module")
def subscriber_players(demo_pages: DemoPages, stack: Any) -> dict[str, PlayerPage]:
    """A premium subscriber per page (like alice): each page is a playback session of its own,
    and these take none of the concurrent-stream slots the other browser tests need."""
    return {
        p: demo_pages.open_player(stack.site, p, add_subscriber(stack, f"xo-{p}"), "demo")
        for p in PLAYERS
    }


@pytest.mark.parametrize("player", PLAYERS)
def test_player_on_another_origin_plays_seeks_and_plays_to_the_end(
    subscriber_players: dict[str, PlayerPage], stack: Any, player: str
) -> None:
    page = subscriber_players[player]
    assert _port(page.page.url) == stack.ports.site != stack.ports.gateway

    page.wait(PLAYED_OR_FAILED, PLAYED_S)
    assert page.state()["error"] is None, _describe(page)
    page.page.evaluate(SEEK_NEAR_END, NEAR_END_S)
    page.wait(ENDED_OR_FAILED)
    state = page.state()

    # from a second and a half before the end, the player played on to the end
    assert state["error"] is None, _describe(page)
    assert state["ended"], _describe(page)
    assert state["currentTime"] >= state["duration"] - 0.25, _describe(page)
    # the key came from our broker, over CORS: a ClearKey license (DASH) or an AES-128 key (HLS)
    assert state["license"] == 200, _describe(page)


def _gateway_requests(page: PlayerPage, gateway_port: int) -> list[Request]:
    return [r for r in page.requests if _port(r.url) == gateway_port]


def _viewer_token(page: PlayerPage) -> str:
    """The JWT the page got from the site (the platform's login would hand it over)."""
    (request,) = [r for r in page.requests if "/demo/api/token" in r.url]
    response = request.response()
    assert response is not None
    token = response.json()["token"]
    assert isinstance(token, str)
    return token


def _carries(request: Request, token: str) -> list[str]:
    """Where ``request`` carries ``token``: ``url`` and/or the names of its headers/body."""
    where = ["url"] if token in urllib.parse.unquote(request.url) else []
    where += [name for name, value in request.all_headers().items() if token in value]
    body = request.post_data_buffer
    if body and token.encode() in body:
        where.append("body")
    return where


@pytest.mark.parametrize("player", PLAYERS)
def test_the_token_travels_only_on_the_first_manifest_request_and_license_requests(
    subscriber_players: dict[str, PlayerPage], stack: Any, player: str
) -> None:
    page = subscriber_players[player]
    page.wait(ENDED_OR_FAILED)
    token = _viewer_token(page)
    requests = _gateway_requests(page, stack.ports.gateway)
    paths = [(r.method, urllib.parse.urlsplit(r.url).path) for r in requests]

    manifests = [r for r in requests if urllib.parse.urlsplit(r.url).path.startswith("/playback/")]
    licenses = [r for r in requests if urllib.parse.urlsplit(r.url).path.startswith("/drm/license")]
    assert len(manifests) == 1, paths  # the first manifest request is the only one
    assert manifests[0] is requests[0], paths
    assert _carries(manifests[0], token) == ["url"]
    if player == "hlsjs":  # AES-128 keys come from signed URLs in the playlists
        assert licenses == [], paths
        assert any(p.startswith("/drm/key/") for _, p in paths), paths
    else:
        assert licenses, paths
        for license_request in licenses:
            assert license_request.method == "POST"
            assert _carries(license_request, token) == ["authorization"]
            assert license_request.all_headers()["authorization"] == f"Bearer {token}"
    # nowhere else: not in a segment, playlist or key URL, not in any other request's headers
    others = [r for r in page.requests if r is not manifests[0] and r not in licenses]
    leaks = [(r.method, r.url[:120], _carries(r, token)) for r in others if _carries(r, token)]
    assert leaks == []
    assert any(p.startswith("/media/") for _, p in paths), paths  # the check above saw segments


@pytest.fixture(scope="module")
def bob_players(demo_pages: DemoPages, stack: Any) -> dict[str, PlayerPage]:
    return {p: demo_pages.open_player(stack.site, p, "bob", "demo-uhd") for p in PLAYERS}


@pytest.mark.parametrize("player", PLAYERS)
def test_a_denied_viewer_on_another_origin_sees_the_403_problem(
    bob_players: dict[str, PlayerPage], player: str
) -> None:
    page = bob_players[player]
    page.wait(FAILED)
    state = page.state()

    assert state["maxTime"] < 1.0, _describe(page)
    error = state["error"]
    # the player handed over our refusal: its status and the problem+json body, both readable
    # from another origin only because the error answer carries the CORS headers too
    assert error["httpStatus"] == 403, _describe(page)
    assert (error["problem"] or {}).get("code") == "not_entitled", _describe(page)


def test_the_whole_demo_page_works_from_the_site_too(demo_pages: DemoPages, stack: Any) -> None:
    """What `make run` advertises as the cross-origin demo: three players, manifests, events."""
    demo = demo_pages.open(add_subscriber(stack, "xo-demo"), "demo", site=stack.site)
    for player in PLAYERS:
        demo.wait(DEMO_PLAYED_OR_FAILED, player)
    state = demo.state()
    demo_pages.close(demo)

    assert {p: state[p]["error"] for p in PLAYERS} == dict.fromkeys(PLAYERS)
    assert all(state[p]["license"]["status"] == 200 for p in PLAYERS), state
    # the page's own fetches of the signed manifests crossed origins too
    assert state["manifest"]["dash"]["status"] == state["manifest"]["hls"]["status"] == 200
