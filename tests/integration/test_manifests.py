"""Issue 3 through the real stack: signed manifests, verified media URLs, rotation, gzip origins."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import time
import urllib.parse

import pytest

from devstack.stack import Stack
from playback_drm import urlsign
from tests.support.stack import Reply, http

pytestmark = pytest.mark.integration

_DASH_URL_ATTRS = re.compile(r'(?:media|initialization|sourceURL)="([^"]+)"')


def _bearer(stack: Stack, user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token(user)}"}


def _uris_hls(text: str) -> list[str]:
    uris = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    uris += re.findall(r'URI="([^"]+)"', text)
    return uris


def _fetch(stack: Stack, url: str) -> Reply:
    return http(urllib.parse.urljoin(stack.gateway + "/", url))


def test_hls_session_from_one_jwt(stack: Stack) -> None:
    """Master -> variants -> segments and keys: every URI signed, every one fetchable."""
    master = http(f"{stack.gateway}/playback/demo/manifest", headers=_bearer(stack))
    assert master.status == 200
    assert master.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    assert master.headers["cache-control"] == "private, no-store"
    variants = _uris_hls(master.body.decode())
    assert variants
    assert all("pdt=" in uri for uri in variants)
    fetched = 0
    for variant in variants:
        media = _fetch(stack, variant)
        assert media.status == 200, variant
        # the origin's length no longer applies: Envoy sends the signed body chunked
        assert "content-length" not in media.headers
        base = urllib.parse.urljoin(stack.gateway + "/", variant)
        for uri in _uris_hls(media.body.decode()):
            assert "pdt=" in uri, uri
            reply = http(urllib.parse.urljoin(base, uri))
            assert reply.status == 200, uri
            fetched += 1
            if "/drm/key/" in uri:
                assert len(reply.body) == 16
                assert reply.headers["cache-control"] == "no-store"
    assert fetched > 4


def _fresh_video(stack: Stack, name: str) -> str:
    """A copy of ``demo`` under a new id (no signed manifest cached for it yet)."""
    origin_dir = stack.media_dir / "origin"
    shutil.rmtree(origin_dir / name, ignore_errors=True)
    shutil.copytree(origin_dir / "demo", origin_dir / name)
    req = http(
        f"http://127.0.0.1:{stack.ports.billing}/admin/catalog/{name}",
        method="PUT",
        body=json.dumps({"tier": "HD", "plan": "basic"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert req.status == 200
    return name


def test_json_form_and_entry_route_each_resolve_their_own_variants(stack: Stack) -> None:
    """The master reached first through the JSON form's signed URL, then through the entry route,
    in one expiry window: each player's relative variant URIs lead to a playlist, not a 404."""
    video = _fresh_video(stack, "json-then-entry")
    try:
        entry = f"{stack.gateway}/playback/{video}/manifest"
        doc = http(entry, headers={**_bearer(stack), "Accept": "application/json"}).json()
        for url, headers in ((doc["url"], {}), (entry, _bearer(stack)), (doc["url"], {})):
            master = http(url, headers=headers)
            assert master.status == 200, url
            variants = _uris_hls(master.body.decode())
            assert variants
            for variant in variants:
                media = http(urllib.parse.urljoin(url, variant))
                assert media.status == 200, (url, variant, media.body[:200])
                assert media.body.startswith(b"#EXTM3U")
    finally:
        shutil.rmtree(stack.media_dir / "origin" / video, ignore_errors=True)


def test_dash_manifest_every_url_signed_and_fetchable(stack: Stack) -> None:
    mpd = http(f"{stack.gateway}/playback/demo/manifest?format=dash", headers=_bearer(stack))
    assert mpd.status == 200
    assert mpd.headers["content-type"].startswith("application/dash+xml")
    text = mpd.body.decode()
    urls = _DASH_URL_ATTRS.findall(text)
    assert urls
    assert all("pdt=" in u for u in urls)
    init = next(u for u in urls if "init" in u).replace("&amp;", "&")
    representation = re.search(r'<Representation id="([^"]+)"', text)
    assert representation is not None
    init = init.replace("$RepresentationID$", representation.group(1))
    assert _fetch(stack, init).status == 200


def _signed_segment(stack: Stack) -> str:
    master = http(f"{stack.gateway}/playback/demo/manifest", headers=_bearer(stack))
    variant = _uris_hls(master.body.decode())[0]
    media = _fetch(stack, variant)
    segment = next(u for u in _uris_hls(media.body.decode()) if ".ts" in u)
    return urllib.parse.urljoin(urllib.parse.urljoin(stack.gateway + "/", variant), segment)


def test_tampered_expired_and_moved_urls_are_403(stack: Stack) -> None:
    url = _signed_segment(stack)
    assert http(url).status == 200
    # one changed character of the signature
    tampered = url[:-1] + ("A" if url[-1] != "A" else "B")
    reply = http(tampered)
    assert (reply.status, reply.json()["code"]) == (403, "url_token_bad_signature")
    # moved to another video: the token's scope is /media/demo/
    moved = url.replace("/media/demo/", "/media/demo-uhd/")
    reply = http(moved)
    assert (reply.status, reply.json()["code"]) == (403, "url_token_out_of_scope")
    # no token at all
    bare = url.split("?", 1)[0]
    assert http(bare).json()["code"] == "url_token_missing"
    # a correctly signed URL whose expiry has passed
    ring = urlsign.KeyRing.from_spec(stack.url_signing_keys())
    path = urllib.parse.urlsplit(bare).path
    token = urlsign.sign(ring, path, expires_at=int(time.time()) - 5, scope="/media/demo/")
    reply = http(urlsign.append_token(stack.gateway + path, token))
    assert (reply.status, reply.json()["code"]) == (403, "url_token_expired")
    # a key URL (per-URL token) moved to another key id
    master = http(f"{stack.gateway}/playback/demo/manifest", headers=_bearer(stack))
    media = _fetch(stack, _uris_hls(master.body.decode())[0])
    key_uri = re.findall(r'URI="([^"]+)"', media.body.decode())[0]
    assert _fetch(stack, key_uri).status == 200
    other_key = re.sub(r"/drm/key/demo/[0-9a-f]+", "/drm/key/demo/" + "0" * 32, key_uri)
    assert _fetch(stack, other_key).status == 403


def test_playback_started_recorded(stack: Stack) -> None:
    http(f"{stack.gateway}/playback/demo/manifest", headers=_bearer(stack, "bob"))
    deadline = time.monotonic() + 5
    while True:
        started = [
            e
            for e in stack.events()
            if e.get("type") == "dev.playback-drm.playback.started.v1"
            and e.get("data", {}).get("userId") == "bob"
        ]
        if started or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert started, "no PlaybackStarted event for bob"
    assert started[-1]["data"]["videoId"] == "demo"
    assert started[-1]["subject"] == "demo"


def _resigned(url: str, ring: urlsign.KeyRing) -> str:
    """``url`` with its prefix token minted again by ``ring``'s first key: same scope, expiry and
    playback session."""
    parts = urllib.parse.urlsplit(url)
    _v, exp, _kid, scope, binding, _sig = parts.query.split("pdt=")[1].split(".")
    session = base64.urlsafe_b64decode(binding[2:] + "==").decode()
    token = urlsign.sign(
        ring,
        parts.path,
        expires_at=int(exp),
        scope=base64.urlsafe_b64decode(scope + "==").decode(),
        session_id=session,
    )
    return urlsign.append_token(urlsign.strip_token(url), token)


def test_key_rotation_keeps_old_urls_valid(stack: Stack) -> None:
    old_url = _signed_segment(stack)
    old_kid = urllib.parse.parse_qs(urllib.parse.urlsplit(old_url).query)["pdt"][0].split(".")[2]
    old_spec = stack.url_signing_keys()
    new_secret = "bmV3LXNpZ25pbmcta2V5LWZvci1yb3RhdGlvbi10ZXN0IQ"  # 34 bytes
    stack.url_keys_path.write_text(f"knew:{new_secret},{old_spec}\n")
    try:
        for name in ("authz", "extproc"):
            stack.stop_component(name)
            stack.start_component(name)
        # The local stack keeps playback sessions in authz's memory: a restart ends them (with
        # REDIS_URL they survive it). The URL itself still verifies: the refusal is the session's.
        gone = http(old_url)
        assert (gone.status, gone.json()["code"]) == (403, "playback_session_ended")
        fresh = _signed_segment(stack)
        assert ".knew." in fresh
        assert f".{old_kid}." not in fresh
        assert http(fresh).status == 200
        # a URL the old key signed (for a live session) still verifies while the key is listed
        old_signed = _resigned(fresh, urlsign.KeyRing.from_spec(old_spec))
        assert f".{old_kid}." in old_signed
        assert http(old_signed).status == 200
    finally:
        stack.url_keys_path.write_text(old_spec + "\n")
        for name in ("authz", "extproc"):
            stack.stop_component(name)
            stack.start_component(name)


def test_gzip_origin_manifest_is_decoded_and_signed(stack: Stack) -> None:
    video = stack.media_dir / "origin" / _fresh_video(stack, "gzip-probe")
    master = video / "master.m3u8"
    master.with_name("master.m3u8.gz").write_bytes(gzip.compress(master.read_bytes()))
    master.write_text("#EXTM3U\n# the gzip variant must be served\n")
    try:
        reply = http(f"{stack.gateway}/playback/gzip-probe/manifest", headers=_bearer(stack))
        assert reply.status == 200
        # the response headers left before the body was signed: the answer keeps the origin's
        # encoding, and it is signed inside
        assert reply.headers["content-encoding"] == "gzip"
        text = gzip.decompress(reply.body).decode()
        assert "#EXT-X-STREAM-INF" in text
        assert all("pdt=" in u for u in _uris_hls(text))
    finally:
        shutil.rmtree(video, ignore_errors=True)
