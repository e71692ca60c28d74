"""Real players, unchanged, play protected content through the whole stack (issue 7).

The demo page gets nothing but a JWT from ``/demo/api/token``; Shaka Player and dash.js fetch the
signed DASH manifest and a ClearKey license, hls.js the signed HLS playlists and AES-128 keys, all
through the gateway, the sidecar (mTLS, authz, ext_proc) and the license broker.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import pytest

from playback_drm import urlsign

if TYPE_CHECKING:  # playwright is imported by the browser fixture (skip or fail loudly there)
    from playwright.sync_api import FloatRect

from tests.e2e.browser import PLAYERS, DemoPage, DemoPages, artifact
from tests.support.stack import set_viewer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

PLAYED_S = 3.0  # the same bound is written in PLAYED_OR_FAILED
PLAYED_OR_FAILED = """(name) => {
  const s = window.demoState && window.demoState[name];
  return !!s && (s.maxTime > 3.0 || !!s.error);
}"""
ALL_FAILED = """(names) => names.every((n) => window.demoState && window.demoState[n].error)"""
# Decrypted frames cannot be read back from an EME <video>, but a screenshot can: decode the PNG in
# the page (no imaging library needed) and count its colours, 4 bits per channel.
PNG_COLOURS = """async (b64) => {
  const img = new Image();
  img.src = 'data:image/png;base64,' + b64;
  await img.decode();
  const canvas = document.createElement('canvas');
  canvas.width = img.width; canvas.height = img.height;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const colours = new Set();
  for (let i = 0; i < pixels.length; i += 4) {
    colours.add((pixels[i] >> 4) << 8 | (pixels[i + 1] >> 4) << 4 | (pixels[i + 2] >> 4));
  }
  return colours.size;
}"""


def _describe(state: dict[str, Any]) -> str:
    keep = ("state", "maxTime", "error", "license", "warnings")
    return json.dumps({k: state.get(k) for k in keep}, default=str)


def _requests(demo: DemoPage) -> list[dict[str, Any]]:
    return list(demo.state().get("requests") or [])


def _is_playback_error(event_type: str) -> bool:
    # "PlaybackError" or its CloudEvents type, e.g. "dev.playback-drm.playback.error.v1"
    return event_type.endswith("PlaybackError") or ".playback.error." in event_type


def _playback_errors(events: list[dict[str, Any]], video_id: str) -> list[dict[str, Any]]:
    found = []
    for event in events:
        data = event.get("data") or {}
        about = (data.get("videoId"), event.get("subject"), data.get("path"))
        if _is_playback_error(str(event.get("type", ""))) and any(
            value == video_id or f"/{video_id}/" in str(value or "") for value in about
        ):
            found.append(event)
    return found


@pytest.fixture(scope="module")
def alice_demo(demo_pages: DemoPages) -> DemoPage:
    return demo_pages.open("alice", "demo")


@pytest.mark.parametrize("player", PLAYERS)
def test_player_plays_protected_demo_from_the_jwt_only(alice_demo: DemoPage, player: str) -> None:
    alice_demo.wait(PLAYED_OR_FAILED, player)
    state = alice_demo.player(player)

    assert state["error"] is None, f"{player} failed: {_describe(state)}"
    assert state["maxTime"] > PLAYED_S, _describe(state)
    # The decryption key came from our broker: a ClearKey license (DASH) or an AES-128 key (HLS).
    assert state["license"] is not None, f"{player} never got a key: {_describe(state)}"
    assert state["license"]["status"] == 200, _describe(state)


def test_keys_came_through_the_gateway_with_nothing_but_the_jwt(alice_demo: DemoPage) -> None:
    for player in PLAYERS:
        alice_demo.wait(PLAYED_OR_FAILED, player)
    log = _requests(alice_demo)
    ok = {(r["method"], r["path"].split("?")[0]) for r in log if r["status"] == 200}

    assert ("POST", "/drm/license/org.w3.clearkey") in ok, log
    assert any(m == "GET" and p.startswith("/drm/key/demo/") for m, p in ok), log
    assert ("GET", "/playback/demo/manifest") in ok, log
    # The players fetched signed media URLs only: every segment request succeeded.
    assert not [r for r in log if r["path"].startswith("/media/") and r["status"] != 200], log


def test_screenshot_of_a_playing_frame(
    alice_demo: DemoPage, record_property: Callable[[str, object], None]
) -> None:
    for player in PLAYERS:
        alice_demo.wait(PLAYED_OR_FAILED, player)
    page = alice_demo.page
    shot = artifact("demo-playing.png")
    page.screenshot(path=str(shot), full_page=True)
    colours = {}
    for player in PLAYERS:
        box = page.locator(f"#video-{player}").bounding_box()
        assert box is not None
        # The upper 60% of the picture: clear of the native controls bar.
        clip = {"x": box["x"], "y": box["y"], "width": box["width"], "height": box["height"] * 0.6}
        frame = artifact(f"demo-playing-{player}.png")
        png = page.screenshot(path=str(frame), clip=cast("FloatRect", clip))
        colours[player] = page.evaluate(PNG_COLOURS, base64.b64encode(png).decode())
    record_property("screenshot", str(shot))
    print(f"\nscreenshot of the demo page playing: {shot}")

    assert shot.stat().st_size > 20_000
    # A decrypted testsrc2 frame is colourful; a black (undecryptable) one is not.
    assert all(n > 40 for n in colours.values()), colours


def test_bob_gets_a_clean_entitlement_failure_on_premium_video(
    demo_pages: DemoPages, stack: Any
) -> None:
    bob = demo_pages.open("bob", "demo-uhd")
    bob.wait(ALL_FAILED, list(PLAYERS))
    states = {name: bob.player(name) for name in PLAYERS}

    for name, state in states.items():
        # (a player may seek to the first buffered timestamp, a fraction of a second, undecoded)
        assert state["maxTime"] < 1.0, f"{name} played premium content: {_describe(state)}"
        # Refused by our stack (manifest, license or key), with a problem+json body the player
        # handed over: not a crash, a network failure or a missing token.
        error = state["error"]
        assert error["httpStatus"] == 403, f"{name}: {_describe(state)}"
        assert (error["problem"] or {}).get("code"), f"{name}: {_describe(state)}"

    deadline = time.monotonic() + 15
    while not (errors := _playback_errors(stack.events(), "demo-uhd")):
        assert time.monotonic() < deadline, f"no PlaybackError for demo-uhd in {stack.events()}"
        time.sleep(0.25)
    assert all(e["data"].get("status", 403) == 403 for e in errors), errors
    demo_pages.close(bob)


# ------------------------------------------------------------------- signed URL expiry (HTTP)


def _get(url: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def _reminted(url: str, ring: urlsign.KeyRing, expires_at: int) -> str:
    """``url`` with its ``pdt`` signed again by the stack's key, same scope and binding."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    token = dict(query)["pdt"]
    _version, _exp, _kid, scope_field, binding, _sig = token.split(".")
    scope = base64.urlsafe_b64decode(scope_field + "=" * (-len(scope_field) % 4)).decode()
    kwargs: dict[str, Any] = {"scope": scope or None}
    if binding.startswith("i:"):
        kwargs["client_ip"] = "127.0.0.1"
    elif binding.startswith("s:"):
        sid = binding[2:]
        kwargs["session_id"] = base64.urlsafe_b64decode(sid + "=" * (-len(sid) % 4)).decode()
    fresh = urlsign.sign(ring, parts.path, expires_at=expires_at, **kwargs)
    new_query = urllib.parse.urlencode([(k, fresh if k == "pdt" else v) for k, v in query])
    return urllib.parse.urlunsplit(parts._replace(query=new_query))


def _signed_segment_url(stack: Any) -> str:
    token = stack.token("alice")
    manifest_url = f"{stack.gateway}/playback/demo/manifest?format=dash&token={token}"
    status, _ctype, body = _get(manifest_url)
    assert status == 200, body[:500]
    found = re.search(r'initialization="([^"]+)"', body.decode())
    assert found, body[:800]
    template = html.unescape(found.group(1)).replace("$$", "$")
    return urllib.parse.urljoin(manifest_url, template.replace("$RepresentationID$", "0"))


def test_expired_signed_url_is_refused_mid_session(stack: Any) -> None:
    url = _signed_segment_url(stack)
    status, _ctype, body = _get(url)
    assert status == 200, body[:300]
    assert body[4:8] == b"ftyp"  # the session is under way: the init segment was served

    keys = stack.url_signing_keys  # the stack's URL_SIGNING_KEYS spec (method or attribute)
    ring = urlsign.KeyRing.from_spec(keys() if callable(keys) else keys)
    expired = _reminted(url, ring, int(time.time()) - 60)
    status, ctype, body = _get(expired)

    assert status == 403, body[:300]
    assert ctype.startswith("application/problem+json")
    assert json.loads(body)["code"] == "url_token_expired"


def test_signed_url_with_an_edited_expiry_is_refused(stack: Any) -> None:
    url = _signed_segment_url(stack)
    later = str(int(time.time()) + 86_400)
    edited = re.sub(r"(pdt=v1\.)(\d+)", lambda m: m.group(1) + later, url)
    assert edited != url
    status, ctype, body = _get(edited)

    assert status == 403, body[:300]
    assert ctype.startswith("application/problem+json")
    assert json.loads(body)["code"] == "url_token_bad_signature"


# ------------------------------------------------------------------ concurrent-stream limits


def _viewer(stack: Any, max_streams: int) -> str:
    user = f"viewer-{uuid.uuid4().hex[:8]}"
    set_viewer(stack, user, "basic", max_streams)
    return user


def _wait_all(demo: DemoPage) -> dict[str, dict[str, Any]]:
    for player in PLAYERS:
        demo.wait(PLAYED_OR_FAILED, player)
    return {name: demo.player(name) for name in PLAYERS}


def test_three_players_on_a_two_stream_plan_one_is_refused(
    demo_pages: DemoPages, stack: Any
) -> None:
    """Each player is a playback session: the third one's license or key is refused, and the
    player shows the problem's code."""
    demo = demo_pages.open(_viewer(stack, max_streams=2), "demo")
    states = _wait_all(demo)
    failed = {name: s for name, s in states.items() if s["error"]}
    assert len(failed) == 1, {name: _describe(s) for name, s in states.items()}
    [(name, state)] = failed.items()
    assert state["error"]["httpStatus"] == 403, _describe(state)
    assert (state["error"]["problem"] or {}).get("code") == "stream_limit_reached", _describe(state)
    assert all(s["maxTime"] > PLAYED_S for n, s in states.items() if n != name)
    demo_pages.close(demo)


def test_reloading_the_page_at_the_limit_plays_again_at_once(
    demo_pages: DemoPages, stack: Any
) -> None:
    """A viewer whose three players use their three streams reloads the page: the page ends its
    sessions on pagehide (sendBeacon), so the reloaded page's three players play at once, not a
    minute later when idle slots would free."""
    demo = demo_pages.open(_viewer(stack, max_streams=3), "demo")
    before = _wait_all(demo)
    assert all(s["error"] is None for s in before.values()), before
    demo.page.reload(wait_until="load")
    after = _wait_all(demo)
    for name, state in after.items():
        assert state["error"] is None, f"{name} after the reload: {_describe(state)}"
        assert state["maxTime"] > PLAYED_S, _describe(state)
    demo_pages.close(demo)
