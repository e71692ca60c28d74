"""Issue 21 through the real stack: one concurrent-stream rule on every key path, slots that
follow playback, explicit ends, the EME release. (Across replicas and idle lifetimes:
tests/integration/test_replicas.py; the rules themselves: tests/authz.)

Every test has viewers of its own (Billing's emulator gives each a plan and a limit), so the
shared stack's other tests cannot take their slots.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
import uuid
from typing import Any

import pytest

from devstack.stack import Stack
from tests.authz.test_sessions import widevine_request
from tests.support.stack import Reply, http, set_viewer

pytestmark = pytest.mark.integration

CLEARKEY = "org.w3.clearkey"
WIDEVINE = "com.widevine.alpha"


def new_viewer(stack: Stack, max_streams: int) -> str:
    user = f"viewer-{uuid.uuid4().hex[:8]}"
    set_viewer(stack, user, "basic", max_streams)
    return user


def start(stack: Stack, user: str, fmt: str = "dash", token: str | None = None) -> dict[str, Any]:
    """A playback session: the JSON form of the entry manifest (what the demo page does)."""
    query = "?format=dash" if fmt == "dash" else ""
    reply = http(
        f"{stack.gateway}/playback/demo/manifest{query}",
        headers={
            "Authorization": f"Bearer {token or stack.token(user)}",
            "Accept": "application/json",
        },
    )
    assert reply.status == 200, reply.body
    doc: dict[str, Any] = reply.json()
    assert {"url", "sessionEndUrl", "heartbeatUrl", "licenseUrls"} <= set(doc), doc
    return doc


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def clearkey_challenge(stack: Stack) -> bytes:
    keys = json.loads((stack.media_dir / "keys.json").read_text())["videos"]["demo"]["keys"]
    kid = next(k["kid"] for k in keys if k["track"] != "AUDIO")
    return json.dumps({"kids": [_b64url(bytes.fromhex(kid))], "type": "temporary"}).encode()


def license(session: dict[str, Any], key_system: str, body: bytes) -> Reply:
    return http(session["licenseUrls"][key_system], method="POST", body=body)


def hls_urls(session: dict[str, Any]) -> tuple[str, str]:
    """(a key URL, a segment URL) of the session's first variant, as hls.js finds them."""
    master = http(session["url"])
    assert master.status == 200, master.body
    variant = next(
        line for line in master.body.decode().splitlines() if line and not line.startswith("#")
    )
    variant_url = urllib.parse.urljoin(session["url"], variant)
    media = http(variant_url).body.decode()
    key = re.search(r'#EXT-X-KEY:[^\n]*URI="([^"]+)"', media)
    assert key is not None, media[:400]
    segment = next(line for line in media.splitlines() if line and not line.startswith("#"))
    return urllib.parse.urljoin(variant_url, key.group(1)), urllib.parse.urljoin(
        variant_url, segment
    )


def refused(reply: Reply, code: str = "stream_limit_reached") -> dict[str, Any]:
    assert reply.status == 403, (reply.status, reply.body[:300])
    assert reply.headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = reply.json()
    assert doc["code"] == code, doc
    return doc


def limit_errors(stack: Stack, user: str, at_least: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        found = [
            e["data"]
            for e in stack.events()
            if str(e.get("type", "")).endswith(("PlaybackError", ".playback.error.v1"))
            and e.get("data", {}).get("userId") == user
            and e.get("data", {}).get("code") == "stream_limit_reached"
        ]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_one_viewer_over_the_limit_is_refused_on_every_key_path(stack: Stack) -> None:
    """DASH/ClearKey, HLS AES-128, Widevine and the JWT routes share one count per viewer."""
    user = new_viewer(stack, max_streams=2)
    challenge = clearkey_challenge(stack)
    dash = start(stack, user, "dash")
    hls = start(stack, user, "hls")
    assert license(dash, CLEARKEY, challenge).status == 200
    key_url, _segment = hls_urls(hls)
    key = http(key_url)
    assert (key.status, len(key.body)) == (200, 16)
    # two streams play: a third playback is refused whatever path it takes to a key
    refused(license(start(stack, user, "dash"), CLEARKEY, challenge))
    refused(http(hls_urls(start(stack, user, "hls"))[0]))
    refused(license(start(stack, user, "dash"), WIDEVINE, widevine_request(1)))
    jwt = {"Authorization": f"Bearer {stack.token(user)}"}
    refused(
        http(
            f"{stack.gateway}/drm/license/{CLEARKEY}?videoId=demo",
            method="POST",
            body=challenge,
            headers=jwt,
        )
    )
    refused(
        http(
            f"{stack.gateway}/drm/license",
            method="POST",
            body=json.dumps(
                {"videoId": "demo", "licenseRequest": base64.b64encode(challenge).decode()}
            ).encode(),
            headers={**jwt, "Content-Type": "application/json"},
        )
    )
    # the two playing sessions are not affected: a key again, a license again (no new slot)
    assert http(key_url).status == 200
    assert license(dash, CLEARKEY, challenge).status == 200
    events = limit_errors(stack, user, at_least=5)
    assert len(events) >= 5
    assert all(e["videoId"] == "demo" and e["status"] == 403 for e in events)


def test_reloading_at_the_limit_starts_again_once_the_old_session_ended(stack: Stack) -> None:
    user = new_viewer(stack, max_streams=1)
    first = start(stack, user, "hls")
    key_url, segment_url = hls_urls(first)
    assert http(key_url).status == 200
    assert http(segment_url).status == 200
    # a reload that does not say the old playback stopped: over the limit
    refused(http(hls_urls(start(stack, user, "hls"))[0]))
    # the page's beacon on pagehide ends the old session; the reload plays at once
    ended = http(first["sessionEndUrl"], method="POST", body=b"")
    assert ended.status == 204, ended.body
    reloaded = start(stack, user, "hls")
    key = http(hls_urls(reloaded)[0])
    assert (key.status, len(key.body)) == (200, 16)
    # the ended session's URLs are over, including its key and its segments
    refused(http(segment_url), "playback_session_ended")
    refused(http(key_url), "playback_session_ended")
    # ending twice is harmless
    assert http(first["sessionEndUrl"], method="POST", body=b"").status == 204


def test_a_widevine_license_release_frees_the_slot(stack: Stack) -> None:
    user = new_viewer(stack, max_streams=1)
    playing = start(stack, user, "dash")
    assert license(playing, WIDEVINE, b"\x08\x04").status == 200  # certificate: no slot
    assert license(playing, WIDEVINE, widevine_request(1)).status == 200
    refused(license(start(stack, user, "dash"), WIDEVINE, widevine_request(1)))
    # the CDM's release message when the player closes its MediaKeySession
    assert license(playing, WIDEVINE, widevine_request(3)).status == 200
    assert license(start(stack, user, "dash"), WIDEVINE, widevine_request(1)).status == 200


def test_the_session_routes_need_their_session_url(stack: Stack) -> None:
    user = new_viewer(stack, max_streams=1)
    session = start(stack, user, "dash")
    beat = session["heartbeatUrl"]
    assert http(beat, method="POST", body=b"").status == 204
    assert http(beat).status == 404  # POST only
    bare = beat.split("?", 1)[0]
    refused(http(bare, method="POST", body=b""), "url_token_missing")
    tampered = beat[:-1] + ("A" if not beat.endswith("A") else "B")
    refused(http(tampered, method="POST", body=b""), "url_token_bad_signature")
    # a heartbeat URL is no end URL
    moved = session["sessionEndUrl"].split("?")[0] + "?" + beat.split("?")[1]
    refused(http(moved, method="POST", body=b""), "url_token_bad_signature")
    assert http(session["sessionEndUrl"], method="POST", body=b"").status == 204
    refused(http(beat, method="POST", body=b""), "playback_session_ended")
