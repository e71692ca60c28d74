"""The manifest signer and the ext_proc adapter, without Envoy (Envoy is in tests/integration)."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urljoin

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf.struct_pb2 import Struct

from extproc.config import ExtprocConfig
from extproc.manifest import ManifestKind
from extproc.policy import SigningPolicy, SigningUnavailable
from extproc.server import ExternalProcessor, processor_for
from extproc.signer import (
    ManifestSigner,
    context_from_request,
    mapper_factory,
    presentation_seconds,
)
from playback_drm import urlsign
from playback_drm.events import MemorySink
from playback_drm.identity import SESSION_HEADER


def urlsafe_b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


KEYS = "k1:" + "A" * 43
# bearer tokens unless a test binds them (the service default binds to the playback session)
ENV = {
    "URL_SIGNING_KEYS": KEYS,
    "ORIGIN_URL": "http://origin.test/",
    "URL_TOKEN_WINDOW": "60",
    "URL_TOKEN_BINDING": "none",
}
VOD = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n" + b"#EXTINF:4.0,\nseg.ts\n" * 150 + b"#EXT-X-ENDLIST\n"
LIVE = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nseg1.ts\n#EXTINF:4.0,\nseg2.ts\n"
MASTER = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nhls/720p/playlist.m3u8\n"


def config(**extra: str) -> ExtprocConfig:
    return ExtprocConfig.from_env({**ENV, **extra})


def signer(clock: list[float], **extra: str) -> ManifestSigner:
    cfg = config(**extra)
    return ManifestSigner(
        cfg, mapper_factory(cfg, SigningPolicy(cfg.policy)), clock=lambda: clock[0]
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/playback/demo/manifest", ("/media/demo/master.m3u8", True, "hls")),
        ("/playback/demo/manifest?format=dash&token=x", ("/media/demo/manifest.mpd", True, "dash")),
        (
            "/media/demo/hls/720p/playlist.m3u8?pdt=x",
            ("/media/demo/hls/720p/playlist.m3u8", False, "hls"),
        ),
        ("/media/demo/dash/x.mpd", ("/media/demo/dash/x.mpd", False, "dash")),
        ("/drm/license", None),
        ("/playback/../manifest", None),
        ("/media/demo", None),
    ],
)
def test_context_from_request(path: str, expected: tuple[str, bool, str] | None) -> None:
    ctx = context_from_request(config(), path, {"x-playback-user": "alice"})
    if expected is None:
        assert ctx is None
    else:
        assert ctx is not None
        assert (ctx.public_path, ctx.entry, ctx.format) == expected
        assert ctx.user == "alice"


def test_the_client_address_is_envoys_never_x_forwarded_for() -> None:
    """What an IP-bound URL is bound to: x-envoy-external-address (Envoy sets it past the
    trusted hops and strips a client's copy), never the first X-Forwarded-For entry, which the
    client writes."""
    path = "/playback/demo/manifest"
    forged = context_from_request(config(), path, {"x-forwarded-for": "198.51.100.1, 10.0.0.7"})
    assert forged is not None
    assert forged.client_ip is None
    derived = context_from_request(
        config(),
        path,
        {"x-forwarded-for": "198.51.100.1", "x-envoy-external-address": " 203.0.113.9 "},
    )
    assert derived is not None
    assert derived.client_ip == "203.0.113.9"


def test_presentation_seconds() -> None:
    assert presentation_seconds(ManifestKind.HLS, VOD) == 600.0
    assert presentation_seconds(ManifestKind.HLS, LIVE) == 0.0
    assert presentation_seconds(ManifestKind.HLS, MASTER) == 0.0
    static = b'<?xml version="1.0"?><MPD type="static" mediaPresentationDuration="PT1H2M3.5S">'
    assert presentation_seconds(ManifestKind.DASH, static) == 3723.5
    assert (
        presentation_seconds(ManifestKind.DASH, b"<MPD mediaPresentationDuration='P1DT1S'>")
        == 86401
    )
    dynamic = b'<MPD type="dynamic" mediaPresentationDuration="PT60S">'
    assert presentation_seconds(ManifestKind.DASH, dynamic) == 0.0
    assert presentation_seconds(ManifestKind.DASH, b'<MPD mediaPresentationDuration="bogus">') == 0


def _exp_of(body: bytes) -> int:
    token = body.split(b"pdt=", 1)[1].split(b"\n", 1)[0].decode()
    return int(token.split(".")[1])


def test_vod_segments_outlive_the_presentation_live_ones_do_not() -> None:
    clock = [1_000_000.0]
    sign = signer(clock)
    ctx = context_from_request(config(), "/media/demo/hls/720p/playlist.m3u8", {})
    assert ctx is not None
    vod = sign.sign(ctx, "application/vnd.apple.mpegurl", None, VOD)
    live = sign.sign(ctx, "application/vnd.apple.mpegurl", None, LIVE)
    assert vod is not None
    assert live is not None
    assert _exp_of(vod.body) >= clock[0] + 300 + 600
    assert clock[0] + 300 <= _exp_of(live.body) < clock[0] + 300 + 60
    off = signer(clock, URL_TOKEN_VOD_EXTENSION_MAX="0").sign(ctx, None, None, VOD)
    assert off is not None
    assert _exp_of(off.body) < clock[0] + 300 + 60


def test_cache_per_window_and_gzip_and_passthrough() -> None:
    clock = [1_000_000.0]
    sign = signer(clock)
    ctx = context_from_request(config(), "/playback/demo/manifest", {})
    assert ctx is not None
    first = sign.sign(ctx, "application/vnd.apple.mpegurl", None, MASTER)
    again = sign.sign(ctx, "application/vnd.apple.mpegurl", "gzip", gzip.compress(MASTER))
    assert first is not None
    assert again is not None
    assert (first.cached, again.cached) == (False, True)
    assert again.decoded
    assert again.body == first.body
    clock[0] += 120  # the next expiry window: a fresh rewrite
    later = sign.sign(ctx, None, None, MASTER)
    assert later is not None
    assert not later.cached
    assert sign.sign(ctx, "text/plain", None, b"not a manifest") is None


KEYED = (
    b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n"
    b'#EXT-X-KEY:METHOD=AES-128,URI="/drm/key/demo/00112233"\n'
    b"#EXTINF:4.0,\nseg.ts\n#EXT-X-ENDLIST\n"
)


def _bindings(body: bytes) -> dict[str, str]:
    """Each URI's path -> the binding field of its pdt token."""
    found = {}
    for line in body.decode().replace('"', "\n").splitlines():
        if "pdt=" in line:
            path, _, token = line.partition("?pdt=")
            found[path.rsplit("URI=", 1)[-1]] = token.split(".")[4]
    return found


def test_playback_sessions_bind_every_url_by_default_and_key_urls_always() -> None:
    clock = [1_000_000.0]
    path = "/media/demo/hls/720p/playlist.m3u8"
    a = context_from_request(config(), path, {SESSION_HEADER: "A" * 22})
    b = context_from_request(config(), path, {SESSION_HEADER: "B" * 22})
    bare = context_from_request(config(), path, {})
    assert a is not None
    assert b is not None
    assert bare is not None
    bound_a, bound_b = "s:" + urlsafe_b64(b"A" * 22), "s:" + urlsafe_b64(b"B" * 22)
    # URL_TOKEN_BINDING=session (the service default): every URL names the session
    default = signer(clock, URL_TOKEN_BINDING="session")
    signed_a = default.sign(a, None, None, KEYED)
    signed_b = default.sign(b, None, None, KEYED)
    assert signed_a is not None
    assert signed_b is not None
    assert set(_bindings(signed_a.body).values()) == {bound_a}
    assert set(_bindings(signed_b.body).values()) == {bound_b}
    assert not signed_b.cached  # one session's manifest is never another's
    with pytest.raises(SigningUnavailable):
        default.sign(bare, None, None, KEYED)  # fails closed: no session to bind
    # bearer or IP-bound segment URLs: the key URL is still bound to the session (it takes its
    # slot), and so are playlist URLs (the next playlist's key URLs need the session)
    for binding, segment in (("none", ""), ("ip", "i:")):
        other = signer(clock, URL_TOKEN_BINDING=binding)
        for sid, bound in (("A" * 22, bound_a), ("B" * 22, bound_b)):
            address = {"x-envoy-external-address": "203.0.113.9"}
            ctx = context_from_request(config(), path, {SESSION_HEADER: sid, **address})
            assert ctx is not None
            signed = other.sign(ctx, None, None, KEYED)
            assert signed is not None
            assert not signed.cached
            found = _bindings(signed.body)
            assert found["/drm/key/demo/00112233"] == bound
            assert found["seg.ts"].startswith(segment) if segment else found["seg.ts"] == ""
        entry_ip = context_from_request(
            config(),
            "/playback/demo/manifest",
            {SESSION_HEADER: "A" * 22, "x-envoy-external-address": "203.0.113.9"},
        )
        assert entry_ip is not None
        master = other.sign(entry_ip, None, None, MASTER)
        assert master is not None
        assert set(_bindings(master.body).values()) == {bound_a}


def test_cached_manifest_resolves_from_the_path_the_player_asked_for() -> None:
    """The same origin manifest reached as /playback/{id}/manifest (the entry) and as its signed
    /media/ URL (the JSON form) shares a public path, but its relative URIs differ: one cached
    rewrite served to both would send one of the players to a path with no route."""
    clock = [1_000_000.0]
    sign = signer(clock)
    for path in ("/media/demo/master.m3u8", "/playback/demo/manifest", "/media/demo/master.m3u8"):
        ctx = context_from_request(config(), path, {})
        assert ctx is not None
        assert ctx.public_path == "/media/demo/master.m3u8"
        signed = sign.sign(ctx, None, None, MASTER)
        assert signed is not None
        variant = signed.body.decode().splitlines()[-1]
        assert urljoin(path, variant).split("?")[0] == "/media/demo/hls/720p/playlist.m3u8", path


async def _stream(*messages: ep.ProcessingRequest) -> AsyncIterator[ep.ProcessingRequest]:
    for message in messages:
        yield message


def _headers(**values: str) -> ep.HttpHeaders:
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(
                    key=k.replace("_", "-").replace("colon-", ":"), raw_value=v.encode()
                )
                for k, v in values.items()
            ]
        )
    )


async def _run(processor: ExternalProcessor, *messages: ep.ProcessingRequest) -> list[Any]:
    return [r async for r in processor.Process(_stream(*messages), None)]


def processor(**extra: str) -> tuple[ExternalProcessor, MemorySink]:
    cfg = config(**extra)
    sink = MemorySink()
    return processor_for(cfg, sink), sink


def _body_message(path: str, body: bytes, code: int = 200, **headers: str) -> ep.ProcessingRequest:
    """What Envoy sends on a manifest route: the buffered body plus the request's facts."""
    facts = Struct()
    facts.update({"request.path": "/rewritten" + path, "response.code": code})
    facts.update({"request.headers['x-envoy-original-path']": path})
    for key, value in headers.items():
        facts.update({f"request.headers['{key.replace('_', '-')}']": value})
    request = ep.ProcessingRequest(response_body=ep.HttpBody(body=body, end_of_stream=True))
    request.attributes["envoy.filters.http.ext_proc"].CopyFrom(facts)
    return request


async def test_adapter_signs_the_body_in_one_message() -> None:
    proc, sink = processor()
    replies = await _run(
        proc,
        _body_message(
            "/playback/demo/manifest", MASTER, x_playback_user="alice", x_playback_video="demo"
        ),
    )
    assert [r.WhichOneof("response") for r in replies] == ["response_body"]
    common = replies[0].response_body.response
    assert b"pdt=" in common.body_mutation.body
    assert not common.header_mutation.set_headers  # headers are gone by now: none are sent
    assert [e.type for e in sink.events] == ["PlaybackStarted"]
    assert sink.events[0].data["userId"] == "alice"


async def test_each_request_keeps_its_own_viewer_facts() -> None:
    """Request contexts are remembered per (path, viewer, session, address), never per request:
    each PlaybackStarted carries its own request id, and another viewer is another context."""
    proc, sink = processor()
    for user, request_id in (("alice", "r1"), ("alice", "r2"), ("bob", "r3")):
        await _run(
            proc,
            _body_message(
                "/playback/demo/manifest",
                MASTER,
                x_playback_user=user,
                x_request_id=request_id,
                x_playback_video="demo",
                x_playback_session="s1",
            ),
        )
    assert [(e.data["userId"], e.data["requestId"], e.data["sessionId"]) for e in sink.events] == [
        ("alice", "r1", "s1"),
        ("alice", "r2", "s1"),
        ("bob", "r3", "s1"),
    ]


def test_cache_is_bounded_in_bytes() -> None:
    """MANIFEST_CACHE_BYTES bounds what the cache holds (origin and signed bodies); a manifest
    larger than a quarter of it is signed every time rather than pushing everything out."""
    clock = [1_000_000.0]
    ctx = context_from_request(config(), "/media/demo/hls/720p/playlist.m3u8", {})
    assert ctx is not None
    probe = signer(clock).sign(ctx, None, None, VOD)
    assert probe is not None
    budget = 4 * (len(VOD) + len(probe.body) + 400)  # four 150-segment playlists (+ "seg7")
    sign = signer(clock, MANIFEST_CACHE_BYTES=str(budget))
    bodies = [VOD.replace(b"seg.ts", b"seg%d.ts" % n) for n in range(8)]
    for body in bodies:
        assert sign.sign(ctx, None, None, body) is not None
    assert 0 < sign._cache_bytes <= budget
    assert len(sign._cache) == 4
    last = sign.sign(ctx, None, None, bodies[-1])
    assert last is not None
    assert last.cached  # the newest stayed
    first = sign.sign(ctx, None, None, bodies[0])
    assert first is not None
    assert not first.cached  # the oldest went
    huge = VOD * 8
    assert len(huge) > budget // 4
    twice = [sign.sign(ctx, None, None, huge), sign.sign(ctx, None, None, huge)]
    assert [s is not None and s.cached for s in twice] == [False, False]


async def test_adapter_answers_compressed_origins_in_their_encoding() -> None:
    proc, _ = processor()
    for encode, decode in ((gzip.compress, gzip.decompress), (zlib.compress, zlib.decompress)):
        replies = await _run(proc, _body_message("/media/demo/hls/a.m3u8", encode(VOD)))
        signed = decode(replies[0].response_body.response.body_mutation.body)
        assert b"seg.ts?pdt=" in signed


async def test_adapter_reuses_the_answer_of_a_repeated_manifest() -> None:
    """A signer cache hit reuses the built answer (and its gzip re-encoding); a new manifest
    or another encoding gets its own."""
    proc, sink = processor()
    path = "/media/demo/hls/a.m3u8"
    first = await _run(proc, _body_message(path, gzip.compress(VOD)))
    again = await _run(proc, _body_message(path, gzip.compress(VOD)))
    assert again[0] is first[0]
    plain = await _run(proc, _body_message(path, VOD))
    assert plain[0] is not first[0]
    assert plain[0].response_body.response.body_mutation.body == gzip.decompress(
        first[0].response_body.response.body_mutation.body
    )
    other = await _run(proc, _body_message(path, VOD.replace(b"seg.ts", b"other.ts")))
    assert b"other.ts?pdt=" in other[0].response_body.response.body_mutation.body
    assert not sink.events  # media playlists are not playback starts


async def test_adapter_passes_non_200_and_non_manifests_through() -> None:
    proc, sink = processor()
    replies = await _run(proc, _body_message("/playback/demo/manifest", b"not found", code=404))
    assert not replies[0].response_body.response.HasField("body_mutation")
    replies = await _run(proc, _body_message("/playback/demo/manifest", b"\x00\x01binary"))
    assert not replies[0].response_body.response.HasField("body_mutation")
    assert not sink.events


async def test_adapter_refuses_a_broken_manifest_with_a_problem() -> None:
    proc, sink = processor()
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><MPD/>'
    replies = await _run(proc, _body_message("/media/demo/manifest.mpd", bomb))
    immediate = replies[0].immediate_response
    assert immediate.status.code == 502
    assert b"manifest_forbidden_xml" in immediate.body
    assert not sink.events


async def test_json_form_is_answered_on_the_stream() -> None:
    proc, _ = processor(PUBLIC_BASE_URLS="https://edge.test")
    replies = await _run(
        proc,
        ep.ProcessingRequest(
            request_headers=_headers(
                colon_path="/playback/demo/manifest",
                colon_authority="edge.test",
                accept="application/json",
                x_playback_user="alice",
            )
        ),
    )
    immediate = replies[0].immediate_response
    assert immediate.status.code == 200
    assert b'"url":"https://edge.test/media/demo/master.m3u8?pdt=' in immediate.body
    assert b"sessionEndUrl" not in immediate.body  # no playback session: nothing to end
    with_session = await _run(
        proc,
        ep.ProcessingRequest(
            request_headers=_headers(
                colon_path="/playback/demo/manifest",
                colon_authority="edge.test",
                accept="application/json",
                x_playback_user="alice",
                x_playback_session="S" * 22,
            )
        ),
    )
    doc = json.loads(with_session[0].immediate_response.body)
    assert doc["sessionEndUrl"].startswith("https://edge.test/playback/sessions/end?pdt=v1.")
    assert doc["heartbeatUrl"].startswith("https://edge.test/playback/sessions/heartbeat?pdt=")
    assert doc["licenseUrls"]["org.w3.clearkey"].startswith(
        "https://edge.test/drm/license/org.w3.clearkey?pdt="
    )
    anonymous = await _run(
        proc,
        ep.ProcessingRequest(
            request_headers=_headers(
                colon_path="/playback/demo/manifest", accept="application/json"
            )
        ),
    )
    assert anonymous[0].immediate_response.status.code == 401


async def _json_form_url(proc: ExternalProcessor, **headers: str) -> str:
    replies = await _run(
        proc,
        ep.ProcessingRequest(
            request_headers=_headers(
                colon_path="/playback/demo/manifest",
                accept="application/json",
                x_playback_user="alice",
                **headers,
            )
        ),
    )
    assert replies[0].immediate_response.status.code == 200
    url: str = json.loads(replies[0].immediate_response.body)["url"]
    return url


HOSTILE_HOSTS = {
    "colon_authority": "evil.example",
    "x_forwarded_host": "evil.example",
    "x_forwarded_proto": "javascript",
    "forwarded": "for=203.0.113.9;host=evil.example;proto=https",
}


async def test_json_form_url_never_takes_its_host_from_the_request() -> None:
    """Issue 18: ``Host: evil.example`` answered ``{"url": "http://evil.example/media/..."}``,
    a cache-poisoning and phishing primitive. The base is configuration: a request for another
    host gets the configured one, whatever Host or X-Forwarded-* say."""
    proc, _ = processor(PUBLIC_BASE_URLS="https://play.example.com,http://alt.example:8080")
    url = await _json_form_url(proc, **HOSTILE_HOSTS)
    assert url.startswith("https://play.example.com/media/demo/master.m3u8?pdt=")
    # another of our own public hosts keeps its own base (a multi-domain deployment)
    alt = await _json_form_url(proc, colon_authority="alt.example:8080")
    assert alt.startswith("http://alt.example:8080/media/demo/master.m3u8?pdt=")


async def test_json_form_without_public_base_urls_answers_a_path() -> None:
    proc, _ = processor()
    url = await _json_form_url(proc, **HOSTILE_HOSTS)
    assert url.startswith("/media/demo/master.m3u8?pdt=")


def test_the_rewriters_load_with_the_server_not_on_a_first_manifest() -> None:
    """The HLS and DASH rewriters are loaded with the server, so no viewer's first manifest
    waits for an import."""
    probe = (
        "import sys, extproc.server; "
        "print(all(m in sys.modules for m in ('extproc.dash', 'extproc.hls')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "True"


async def test_facts_sent_with_the_response_headers_serve_the_body() -> None:
    """A proxy that cannot skip the response-headers phase (Envoy Gateway) attaches the facts to
    that first message: the body of the same stream is signed with them."""
    proc, sink = processor()
    with_facts = _body_message(
        "/playback/demo/manifest", b"", x_playback_user="alice", x_playback_video="demo"
    )
    headers = ep.ProcessingRequest(response_headers=ep.HttpHeaders())
    headers.attributes["envoy.filters.http.ext_proc"].CopyFrom(
        with_facts.attributes["envoy.filters.http.ext_proc"]
    )
    body = ep.ProcessingRequest(response_body=ep.HttpBody(body=MASTER, end_of_stream=True))
    replies = await _run(proc, headers, body)
    assert [r.WhichOneof("response") for r in replies] == ["response_headers", "response_body"]
    assert b"pdt=" in replies[1].response_body.response.body_mutation.body
    assert [e.data["userId"] for e in sink.events] == ["alice"]


async def test_a_manifest_without_facts_is_refused_not_passed_through() -> None:
    """No attributes (a proxy configured without them) or facts that name no manifest request
    (no x-envoy-original-path after a rewrite): 503, never the origin's unsigned manifest."""
    proc, _ = processor()
    bare = ep.ProcessingRequest(response_body=ep.HttpBody(body=MASTER, end_of_stream=True))
    rewritten_only = _body_message("/demo/master.m3u8", MASTER)
    rewritten_only.attributes["envoy.filters.http.ext_proc"].fields.pop(
        "request.headers['x-envoy-original-path']"
    )
    for message in (bare, rewritten_only):
        [reply] = await _run(proc, message)
        immediate = reply.immediate_response
        assert immediate.status.code == 503
        assert immediate.details == "manifest_context_missing"
        assert MASTER not in immediate.body


async def test_facts_read_from_the_request_headers_phase() -> None:
    """Envoy Gateway names no single header as an attribute: it sends the request headers (before
    the router rewrote the path), then the response headers and the body. The viewer, video and
    the path they asked for come from those headers; the status from the attribute."""
    proc, sink = processor()
    request_headers = ep.ProcessingRequest(
        request_headers=_headers(
            colon_path="/playback/demo/manifest",
            x_playback_user="alice",
            x_playback_video="demo",
            x_request_id="r1",
        )
    )
    facts = Struct()
    facts.update({"response.code": 200, "source.address": "203.0.113.7:4242"})
    response_headers = ep.ProcessingRequest(response_headers=_headers(colon_status="200"))
    response_headers.attributes["envoy.filters.http.ext_proc"].CopyFrom(facts)
    body = ep.ProcessingRequest(response_body=ep.HttpBody(body=MASTER, end_of_stream=True))
    replies = await _run(proc, request_headers, response_headers, body)
    assert [r.WhichOneof("response") for r in replies] == [
        "request_headers",
        "response_headers",
        "response_body",
    ]
    assert b"pdt=" in replies[2].response_body.response.body_mutation.body
    assert [(e.data["userId"], e.data["requestId"]) for e in sink.events] == [("alice", "r1")]
    # the status of the response headers decides when no attribute names it
    bare = ep.ProcessingRequest(response_headers=_headers(colon_status="404"))
    replies = await _run(proc, request_headers, bare, body)
    assert replies[2] == ep.ProcessingResponse(response_body=ep.BodyResponse())


LIVE_MPD = (
    b'<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic"'
    b' availabilityStartTime="2026-01-01T00:00:00Z" minimumUpdatePeriod="PT2S">'
    b'<Period id="p" start="PT0S"><AdaptationSet><Representation id="v" bandwidth="1">'
    b'<SegmentTemplate media="v/$Number$.m4s" initialization="v/init.mp4" duration="2"/>'
    b"</Representation></AdaptationSet></Period></MPD>"
)


def test_a_dynamic_mpd_at_the_entry_route_names_its_signed_url_for_refreshes() -> None:
    """Players refresh a dynamic MPD from its Location: without one, every refresh would go back
    to the entry URL with the viewer's JWT and start a playback session of its own."""
    clock = [1_000_000.0]
    sign = signer(clock, URL_TOKEN_BINDING="session", URL_TOKEN_PLAYLIST_TTL="600")
    headers = {SESSION_HEADER: "SSSSSSSSSSSSSSSSSSSSSS"}
    entry = context_from_request(config(), "/playback/live/manifest?format=dash", headers)
    assert entry is not None
    signed = sign.sign(entry, "application/dash+xml", None, LIVE_MPD)
    assert signed is not None
    body = signed.body.decode()
    start = body.index("<Location>") + len("<Location>")
    location = body[start : body.index("</Location>")]
    assert body.index("<Location>") < body.index("<Period")
    assert location.startswith("/media/live/manifest.mpd?pdt=")
    path, _, query = location.partition("?")
    verified = urlsign.verify(
        urlsign.KeyRing.from_spec(KEYS), path, query, now=clock[0] + 500, client_ip=None
    )
    assert verified.scope is None  # its own per-URL token, with the playlist lifetime
    assert verified.session_id == "SSSSSSSSSSSSSSSSSSSSSS"
    # not for a static MPD, not twice, not on the refresh itself (the /media/ URL)
    static = LIVE_MPD.replace(b'type="dynamic"', b'type="static"')
    plain = sign.sign(entry, "application/dash+xml", None, static)
    assert plain is not None
    assert b"<Location>" not in plain.body
    own = LIVE_MPD.replace(b"<Period", b"<Location>elsewhere.mpd</Location><Period")
    kept = sign.sign(entry, "application/dash+xml", None, own)
    assert kept is not None
    assert kept.body.count(b"<Location>") == 1
    assert b"/media/live/elsewhere.mpd?pdt=" in kept.body
    refresh = context_from_request(config(), "/media/live/manifest.mpd", headers)
    assert refresh is not None
    again = sign.sign(refresh, "application/dash+xml", None, LIVE_MPD)
    assert again is not None
    assert b"<Location>" not in again.body
