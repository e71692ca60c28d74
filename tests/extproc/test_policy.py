"""extproc.policy: what each manifest URI becomes, checked the way a player and authz see it.

"Player resolution" below means RFC 3986 resolution of the rewritten URI against the public URL
the player loaded (and the rewritten DASH BaseURLs); "authz" means ``urlsign.verify`` on the
resulting path and query, exactly what the sidecar does on ``/media/*`` and ``/drm/key/*``.
"""

from __future__ import annotations

import base64
import functools
import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from extproc import manifest
from extproc.config import Binding, PolicyConfig, TokenMode
from extproc.manifest import ManifestKind
from extproc.policy import ManifestUriMapper, SigningPolicy, SigningUnavailable
from extproc.signers import AkamaiEdgeAuth, CloudFrontSigner, S3Presigner
from extproc.uri import UriKind, UriRef
from extproc.urls import resolve_reference
from playback_drm import urlsign
from playback_drm.settings import ConfigError

ORIGIN = "http://origin.internal:9104/"
PUBLIC = "https://play.example.com"
NOW = 1_700_000_000.0
SECRET = bytes(range(32))
KEYS = f"k1:{base64.b64encode(SECRET).decode()}"
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
CF_HOST = "d111111abcdef8.cloudfront.net"


def make_policy(**overrides: object) -> SigningPolicy:
    # bearer tokens unless a test binds them (the service's default binds to the session)
    env = {"ORIGIN_URL": ORIGIN, "URL_SIGNING_KEYS": KEYS, "URL_TOKEN_BINDING": "none"}
    config = PolicyConfig.from_env(env)
    fields = {f: getattr(config, f) for f in config.__dataclass_fields__}
    fields.update(overrides)
    return SigningPolicy(PolicyConfig(**fields))


def authz(
    policy: SigningPolicy, url: str, *, now: float = NOW, ip: str | None = None
) -> urlsign.VerifiedToken:
    parts = urlsplit(url)
    return urlsign.verify(policy.config.keys, parts.path, parts.query, now=now, client_ip=ip)


def master_mapper(policy: SigningPolicy, **kw: object) -> ManifestUriMapper:
    """The entry manifest: origin demo/master.m3u8, served at /playback/demo/manifest."""
    return policy.mapper(
        video_id="demo",
        document_url="master.m3u8",
        public_path="/playback/demo/manifest",
        now=NOW,
        **kw,  # type: ignore[arg-type]
    )


def media_mapper(policy: SigningPolicy, doc: str = "hls/720p/playlist.m3u8") -> ManifestUriMapper:
    """A child manifest fetched through its signed public URL (the mirror of the origin path)."""
    return policy.mapper(
        video_id="demo", document_url=doc, public_path=f"/media/demo/{doc}", now=NOW
    )


MASTER = """#EXTM3U
#EXT-X-VERSION:6
#EXT-X-SESSION-KEY:METHOD=AES-128,URI="/drm/key/demo/00112233"
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",URI="audio/en.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=800000,AUDIO="a"
hls/480p/playlist.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=2000000,AUDIO="a"
http://origin.internal:9104/demo/hls/720p/playlist.m3u8?v=2
#EXT-X-STREAM-INF:BANDWIDTH=3000000
https://ads.third-party.example/demo/1080p.m3u8
"""

MEDIA = """#EXTM3U
#EXT-X-TARGETDURATION:4
#EXT-X-MAP:URI="init.mp4",BYTERANGE="800@0"
#EXT-X-KEY:METHOD=AES-128,URI="/drm/key/demo/00112233",IV=0x0
#EXTINF:4,
#EXT-X-BYTERANGE:1000@800
main.mp4
#EXTINF:4,
#EXT-X-BYTERANGE:1000
main.mp4
#EXTINF:4,
../720p/seg 3.ts
#EXT-X-KEY:METHOD=SAMPLE-AES,URI="skd://key-id"
#EXTINF:4,
https://cdn.other.example/seg4.ts
#EXT-X-ENDLIST
"""


_TOKEN = re.compile(r"[?&]pdt=[A-Za-z0-9_.:-]+")


def strip_tokens(text: str) -> str:
    """Remove every appended pdt parameter from a manifest (tokens are always appended last)."""
    return _TOKEN.sub("", text)


def rewrite_hls(text: str, mapper: ManifestUriMapper) -> list[str]:
    out = manifest.rewrite(ManifestKind.HLS, text.encode(), mapper).decode()
    return out.split("\n")


# --- HLS ------------------------------------------------------------------------------------------


def test_master_playlist_uris_become_public_absolute_paths_that_authz_accepts() -> None:
    policy = make_policy()
    lines = rewrite_hls(MASTER, master_mapper(policy))
    key_line, media_line, variant_1, variant_2, third = (
        lines[2],
        lines[3],
        lines[5],
        lines[7],
        lines[9],
    )
    key = re.search(r'URI="([^"]+)"', key_line)
    audio = re.search(r'URI="([^"]+)"', media_line)
    assert key is not None
    assert audio is not None
    assert key.group(1).startswith("/drm/key/demo/00112233?pdt=v1.")
    assert audio.group(1).startswith("/media/demo/audio/en.m3u8?pdt=v1.")
    assert variant_1.startswith("/media/demo/hls/480p/playlist.m3u8?pdt=v1.")
    assert variant_2.startswith("/media/demo/hls/720p/playlist.m3u8?v=2&pdt=v1.")
    assert third == "https://ads.third-party.example/demo/1080p.m3u8"  # no token for third parties
    for uri in (key.group(1), audio.group(1), variant_1, variant_2):
        assert authz(policy, PUBLIC + uri)


def test_media_playlist_relative_uris_stay_relative_and_strip_back_to_the_original() -> None:
    policy = make_policy()
    mapper = media_mapper(policy)
    lines = rewrite_hls(MEDIA, mapper)
    originals = MEDIA.split("\n")
    public_doc = PUBLIC + "/media/demo/hls/720p/playlist.m3u8?pdt=whatever"
    uris = [lines[2].split('"')[1], lines[3].split('"')[1], lines[6], lines[9], lines[11]]
    for uri in uris:
        assert authz(policy, urljoin(public_doc, uri))
    assert [strip_tokens(line) for line in lines] == originals
    assert lines[6] == lines[9]  # BYTERANGE sub-ranges of one file: one URL
    assert lines[12] == originals[12]  # skd:// untouched
    assert lines[14] == "https://cdn.other.example/seg4.ts"
    assert mapper.stats == {"signed": 4, "in_place": 1, "third_party": 1}  # per occurrence


def test_prefix_token_is_shared_and_scoped_to_the_video() -> None:
    policy = make_policy()
    mapper = media_mapper(policy)
    a = mapper(UriRef("a.ts", UriKind.SEGMENT))
    b = mapper(UriRef("b.ts", UriKind.SEGMENT))
    assert a is not None
    assert b is not None
    assert a.split("pdt=")[1] == b.split("pdt=")[1]
    token_query = "pdt=" + a.split("pdt=")[1]
    verified = urlsign.verify(
        policy.config.keys, "/media/demo/any/file.ts", token_query, now=NOW, client_ip=None
    )
    assert verified.scope == "/media/demo/"
    with pytest.raises(urlsign.UrlTokenOutOfScope):
        urlsign.verify(
            policy.config.keys, "/media/other/file.ts", token_query, now=NOW, client_ip=None
        )


def test_key_uris_get_a_per_url_token_the_video_token_does_not_open_keys() -> None:
    policy = make_policy()
    mapper = media_mapper(policy)
    key = mapper(UriRef("/drm/key/demo/00112233", UriKind.KEY))
    segment = mapper(UriRef("a.ts", UriKind.SEGMENT))
    assert key is not None
    assert segment is not None
    assert authz(policy, PUBLIC + key)
    with pytest.raises(urlsign.UrlTokenError):
        authz(policy, PUBLIC + "/drm/key/demo/00112233?" + segment.split("?")[1])
    with pytest.raises(urlsign.UrlTokenBadSignature):
        authz(policy, PUBLIC + key.replace("00112233", "00112234"))


def test_per_url_mode_signs_each_path() -> None:
    policy = make_policy(mode=TokenMode.URL)
    mapper = media_mapper(policy)
    a = mapper(UriRef("seg1.ts", UriKind.SEGMENT))
    b = mapper(UriRef("seg2.ts", UriKind.SEGMENT))
    assert a is not None
    assert b is not None
    doc = PUBLIC + "/media/demo/hls/720p/playlist.m3u8"
    assert authz(policy, urljoin(doc, a))
    assert authz(policy, urljoin(doc, b))
    swapped = urljoin(doc, "seg2.ts?" + a.split("?")[1])
    with pytest.raises(urlsign.UrlTokenBadSignature):
        authz(policy, swapped)


def test_unsigned_kinds_and_unmappable_origin_paths_are_left_alone() -> None:
    policy = make_policy(unsigned_kinds=frozenset({UriKind.KEY}))
    mapper = media_mapper(policy)
    assert mapper(UriRef("/drm/key/demo/00", UriKind.KEY)) is None
    assert mapper(UriRef("../../../top.ts", UriKind.SEGMENT)) is None  # above {videoId}/
    assert mapper(UriRef("data:text/plain,hi", UriKind.SEGMENT)) is None
    assert mapper(UriRef("ftp://origin.internal:9104/demo/x", UriKind.SEGMENT)) is None
    assert mapper(UriRef("http://[::1/x.ts", UriKind.SEGMENT)) is None
    assert mapper.stats == {"unsigned_kind": 1, "unmappable": 1, "third_party": 2, "invalid": 1}


def test_other_videos_on_the_origin_get_per_url_tokens_only() -> None:
    policy = make_policy()
    mapper = media_mapper(policy, "master.m3u8")
    other = mapper(UriRef("../shared/ad.ts", UriKind.SEGMENT))
    assert other is not None
    verified = authz(policy, urljoin(PUBLIC + "/media/demo/master.m3u8", other))
    assert verified.scope is None


def test_same_window_same_output_next_window_new_tokens() -> None:
    policy = make_policy()

    def sign_at(now: float) -> str | None:
        return policy.mapper(
            video_id="demo", document_url="master.m3u8", public_path=None, now=now
        )(UriRef("a.ts", UriKind.SEGMENT))

    assert sign_at(NOW + 1) == sign_at(NOW + 30)  # NOW is 20 s into a 60 s window
    assert sign_at(NOW + 41) != sign_at(NOW + 1)


def test_playlist_ttl_for_live_refresh_never_extends_segments() -> None:
    policy = make_policy(playlist_ttl=3600)
    mapper = media_mapper(policy, "master.m3u8")
    playlist = mapper(UriRef("hls/720p/playlist.m3u8", UriKind.PLAYLIST))
    segment = mapper(UriRef("hls/720p/seg1.ts", UriKind.SEGMENT))
    assert playlist is not None
    assert segment is not None
    doc = PUBLIC + "/media/demo/master.m3u8"
    late = NOW + 1800
    assert authz(policy, urljoin(doc, playlist), now=late)
    with pytest.raises(urlsign.UrlTokenExpired):
        authz(policy, urljoin(doc, segment), now=late)
    # the long-lived playlist token is per-URL: it does not open a segment
    with pytest.raises(urlsign.UrlTokenBadSignature):
        authz(policy, doc.rsplit("/", 1)[0] + "/hls/720p/seg1.ts?" + playlist.split("?")[1])


def test_ip_binding_requires_and_checks_the_client_address() -> None:
    policy = make_policy(binding=Binding.IP)
    with pytest.raises(SigningUnavailable) as info:
        master_mapper(policy)
    assert info.value.code == "url_signing_unavailable"
    mapper = master_mapper(policy, client_ip="203.0.113.5")
    url = mapper(UriRef("hls/720p/playlist.m3u8", UriKind.PLAYLIST))
    assert url is not None
    assert authz(policy, PUBLIC + url, ip="203.0.113.5")
    with pytest.raises(urlsign.UrlTokenBindingMismatch):
        authz(policy, PUBLIC + url, ip="198.51.100.1")


def test_session_binding_carries_the_session() -> None:
    policy = make_policy(binding=Binding.SESSION)
    with pytest.raises(SigningUnavailable):
        master_mapper(policy)
    url = master_mapper(policy, session_id="sess-9")(UriRef("a/b.m3u8", UriKind.PLAYLIST))
    assert url is not None
    assert authz(policy, PUBLIC + url).session_id == "sess-9"


def test_invalid_video_ids_are_refused() -> None:
    policy = make_policy()
    for video in ("", "../x", "a/b", "-x", "a..b"):
        with pytest.raises(SigningUnavailable):
            policy.mapper(video_id=video, document_url="m.m3u8", now=NOW)


def test_signed_manifest_url_for_the_json_form() -> None:
    policy = make_policy(playlist_ttl=600)
    url, expires_at = policy.signed_manifest_url(video_id="demo", path="manifest.mpd", now=NOW)
    assert url.startswith("/media/demo/manifest.mpd?pdt=v1.")
    assert expires_at == 1_700_000_640
    verified = authz(policy, PUBLIC + url)
    assert verified.expires_at == expires_at


def test_session_urls_are_signed_for_their_session_and_path_only() -> None:
    policy = make_policy(playlist_ttl=600)
    urls = policy.session_urls(session_id="S" * 22, now=NOW)
    assert urls.expires_at == 1_700_000_640  # as long as playlist URLs
    assert set(urls.licenses) == {
        "org.w3.clearkey",
        "com.widevine.alpha",
        "com.microsoft.playready",
        "com.apple.fps",
    }
    for url in (urls.end, urls.heartbeat, *urls.licenses.values()):
        verified = authz(policy, PUBLIC + url)
        assert (verified.binding, verified.session_id) == ("session", "S" * 22)
    assert urls.end.startswith("/playback/sessions/end?pdt=")
    # each is good for its own path only: an end URL is no license URL, a license URL no key
    moved = urls.end.replace("/playback/sessions/end", "/drm/license/org.w3.clearkey")
    with pytest.raises(urlsign.UrlTokenBadSignature):
        authz(policy, PUBLIC + moved)
    license_url = urls.licenses["org.w3.clearkey"]
    with pytest.raises(urlsign.UrlTokenOutOfScope):
        authz(policy, PUBLIC + license_url.replace("/drm/license/org.w3.clearkey", "/drm/key/x/y"))


# --- CDN allowlist --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cdn_policy() -> SigningPolicy:
    cloudfront = CloudFrontSigner("K2JCJMDEHXQW5F", ec.generate_private_key(ec.SECP256R1()))
    return make_policy(
        cdn_signers={
            CF_HOST: cloudfront,
            "media.example.akamaized.net": AkamaiEdgeAuth("52a152a152a152a152a152a152a1"),
            "bucket.s3.eu-west-1.amazonaws.com": S3Presigner("AKID", "secret", "eu-west-1"),
        }
    )


def test_cdn_hosts_get_their_signer_third_parties_nothing(cdn_policy: SigningPolicy) -> None:
    mapper = media_mapper(cdn_policy)
    cf = mapper(UriRef(f"https://{CF_HOST}/v/demo/a.ts", UriKind.SEGMENT))
    akamai = mapper(UriRef("https://media.example.akamaized.net/v/demo/a.ts", UriKind.SEGMENT))
    s3 = mapper(UriRef("https://bucket.s3.eu-west-1.amazonaws.com/demo/a.ts", UriKind.SEGMENT))
    third = mapper(UriRef("https://evil.example/v/demo/a.ts", UriKind.SEGMENT))
    assert cf is not None
    assert "Policy=" in cf
    assert "pdt=" not in cf
    assert akamai is not None
    assert "__token__=exp=" in akamai
    assert "~acl=/v/demo/*~" in akamai
    assert s3 is not None
    assert "X-Amz-Signature=" in s3
    assert third is None
    assert mapper.stats == {"cdn:cloudfront": 1, "cdn:akamai": 1, "cdn:s3": 1, "third_party": 1}


def test_s3_cannot_sign_templates(cdn_policy: SigningPolicy) -> None:
    mapper = media_mapper(cdn_policy)
    ref = UriRef(
        "https://bucket.s3.eu-west-1.amazonaws.com/demo/$Number$.m4s", UriKind.DASH_SEGMENT, True
    )
    assert mapper(ref) is None
    assert mapper.stats == {"cdn_refused": 1}


def test_cdn_outputs_are_memoized_per_rewrite(cdn_policy: SigningPolicy) -> None:
    mapper = media_mapper(cdn_policy)
    ref = UriRef(f"https://{CF_HOST}/v/demo/main.mp4", UriKind.MAP)
    assert mapper(ref) == mapper(ref)
    assert mapper.stats == {"cdn:cloudfront": 1}


# --- DASH -----------------------------------------------------------------------------------------

MPD = """<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT8S"
     profiles="urn:mpeg:dash:profile:isoff-live:2011">
  <BaseURL>dash/</BaseURL>
  <Period id="p0">
    <AdaptationSet mimeType="video/mp4">
      <SegmentTemplate media="$RepresentationID$/seg-$Number%05d$.m4s?a=1&amp;b=2"
                       initialization="$RepresentationID$/init.mp4" startNumber="1" duration="4"/>
      <Representation id="v1" bandwidth="1000"><BaseURL>v1base/</BaseURL></Representation>
      <Representation id="v2" bandwidth="2000"/>
    </AdaptationSet>
  </Period>
  <Period id="p1">
    <BaseURL>https://d111111abcdef8.cloudfront.net/cdn/demo/</BaseURL>
    <AdaptationSet mimeType="audio/mp4">
      <SegmentList duration="4">
        <Initialization sourceURL="a/init.mp4"/>
        <SegmentURL media="a/1.m4s"/>
      </SegmentList>
    </AdaptationSet>
  </Period>
</MPD>
"""


def _expand(template: str) -> str:
    return re.sub(r"\$(\w+)(%0\d+d)?\$", "7", template).replace("$$", "$")


def player_urls(
    mapper: ManifestUriMapper, body: bytes, kind: ManifestKind, doc: str
) -> list[tuple[UriRef, str | None, str | None, str]]:
    """Rewrite ``body`` and return, for every URI offered, ``(ref, output, player URL, origin
    URL)``: the mapper's output, that output resolved against the public document URL ``doc``
    and the rewritten BaseURL chain, and the raw URI resolved at the origin."""
    seen: list[tuple[UriRef, str | None]] = []

    def recording(ref: UriRef) -> str | None:
        out = mapper(ref)
        seen.append((ref, out))
        return out

    manifest.rewrite(kind, body, recording)
    origin_doc = mapper.document_url
    results: list[tuple[UriRef, str | None, str | None, str]] = []
    for ref, out in seen:
        base, origin = doc, origin_doc
        for depth, value in enumerate(ref.bases):
            mapped = mapper(UriRef(value, UriKind.DASH_BASE_URL, False, ref.bases[:depth]))
            base = urljoin(base, mapped if mapped is not None else value)
            origin = urljoin(origin, value)
        player = None
        if out is not None:
            player = urljoin(base, _expand(out) if ref.is_template else out)
        results.append((ref, out, player, urljoin(origin, ref.raw)))
    return results


def test_dash_base_url_chain_templates_and_cdn_periods(cdn_policy: SigningPolicy) -> None:
    mapper = cdn_policy.mapper(
        video_id="demo", document_url="manifest.mpd", public_path="/playback/demo/manifest", now=NOW
    )
    out = manifest.rewrite(ManifestKind.DASH, MPD.encode(), mapper).decode()
    assert "<BaseURL>/media/demo/dash/?pdt=v1." in out
    assert 'media="$RepresentationID$/seg-$Number%05d$.m4s?a=1&amp;b=2&amp;pdt=v1.' in out
    doc = PUBLIC + "/playback/demo/manifest?format=dash"
    rewritten = player_urls(mapper, MPD.encode(), ManifestKind.DASH, doc)
    urls = [url for _, _, url, _ in rewritten if url]
    ours = [url for url in urls if url.startswith(PUBLIC)]
    cdn = [url for url in urls if CF_HOST in url]
    assert len(ours) >= 4
    assert len(cdn) >= 3
    for url in ours:
        assert urlsplit(url).path.startswith("/media/demo/dash/")
        assert authz(cdn_policy, url)
    for url in cdn:
        assert "&Policy=" in url or "?Policy=" in url
        assert url.startswith(f"https://{CF_HOST}/cdn/demo/")


def test_dash_templates_in_per_url_mode_get_the_directory_scope() -> None:
    policy = make_policy(mode=TokenMode.URL)
    mapper = policy.mapper(
        video_id="demo",
        document_url="manifest.mpd",
        public_path="/media/demo/manifest.mpd",
        now=NOW,
    )
    ref = UriRef("dash/v1/seg-$Number$.m4s", UriKind.DASH_SEGMENT, True)
    out = mapper(ref)
    assert out is not None
    assert out.startswith("dash/v1/seg-$Number$.m4s?pdt=")
    player = urljoin(PUBLIC + "/media/demo/manifest.mpd", _expand(out))
    assert authz(policy, player).scope == "/media/demo/dash/v1/"
    with pytest.raises(urlsign.UrlTokenOutOfScope):
        authz(policy, PUBLIC + "/media/demo/dash/v2/seg-1.m4s?" + out.split("?")[1])


def test_templates_with_dot_segments_keep_the_template_text() -> None:
    policy = make_policy()
    mapper = master_mapper(policy)
    ref = UriRef("../demo/dash/seg-$Number$.m4s", UriKind.DASH_SEGMENT, True)
    out = mapper(ref)
    assert out is not None
    assert ref.raw in out
    assert authz(policy, urljoin(PUBLIC + "/playback/demo/manifest", _expand(out)))


# RFC 3986 section 5.4: reference resolution examples (base http://a/b/c/d;p?q), normal and
# abnormal; "http:g" resolves the non-strict way, as browsers do.
RFC3986_EXAMPLES = {
    "g:h": "g:h",
    "g": "http://a/b/c/g",
    "./g": "http://a/b/c/g",
    "g/": "http://a/b/c/g/",
    "/g": "http://a/g",
    "//g": "http://g",
    "?y": "http://a/b/c/d;p?y",
    "g?y": "http://a/b/c/g?y",
    "#s": "http://a/b/c/d;p?q#s",
    "g#s": "http://a/b/c/g#s",
    "g?y#s": "http://a/b/c/g?y#s",
    ";x": "http://a/b/c/;x",
    "g;x": "http://a/b/c/g;x",
    "g;x?y#s": "http://a/b/c/g;x?y#s",
    "": "http://a/b/c/d;p?q",
    ".": "http://a/b/c/",
    "./": "http://a/b/c/",
    "..": "http://a/b/",
    "../": "http://a/b/",
    "../g": "http://a/b/g",
    "../..": "http://a/",
    "../../": "http://a/",
    "../../g": "http://a/g",
    "../../../g": "http://a/g",
    "../../../../g": "http://a/g",
    "/./g": "http://a/g",
    "/../g": "http://a/g",
    "g.": "http://a/b/c/g.",
    ".g": "http://a/b/c/.g",
    "g..": "http://a/b/c/g..",
    "..g": "http://a/b/c/..g",
    "./../g": "http://a/b/g",
    "./g/.": "http://a/b/c/g/",
    "g/./h": "http://a/b/c/g/h",
    "g/../h": "http://a/b/c/h",
    "g;x=1/./y": "http://a/b/c/g;x=1/y",
    "g;x=1/../y": "http://a/b/c/y",
    "g?y/./x": "http://a/b/c/g?y/./x",
    "g?y/../x": "http://a/b/c/g?y/../x",
    "g#s/./x": "http://a/b/c/g#s/./x",
    "g#s/../x": "http://a/b/c/g#s/../x",
    "http:g": "http://a/b/c/g",
}


@pytest.mark.parametrize(("ref", "expected"), RFC3986_EXAMPLES.items())
def test_resolve_reference_rfc3986_examples(ref: str, expected: str) -> None:
    assert resolve_reference("http://a/b/c/d;p?q", ref) == expected


def test_resolve_reference_like_browsers() -> None:
    base = "http://a/b/c/d"
    assert resolve_reference(base, "  \tg\n.ts ") == "http://a/b/c/g.ts"
    assert resolve_reference(base, "%2e%2E/g") == "http://a/b/g"
    assert resolve_reference(base, "..\\g") == "http://a/b/g"


def test_a_reference_starting_with_a_semicolon_is_signed_where_players_fetch_it() -> None:
    policy = make_policy(mode=TokenMode.URL)
    out = master_mapper(policy)(UriRef(";v=1/x.ts", UriKind.SEGMENT))
    assert out is not None
    assert out.startswith("/media/demo/;v=1/x.ts?pdt=")
    assert authz(policy, PUBLIC + out)


# --- the corpus through the real rewriters --------------------------------------------------------


def _corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.glob("*/*") if p.suffix in (".m3u8", ".mpd"))


@pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")
@pytest.mark.parametrize("mode", [TokenMode.PREFIX, TokenMode.URL])
def test_every_corpus_uri_on_our_origin_is_signed_and_verifies(mode: TokenMode) -> None:
    """Each corpus manifest, served from the origin as demo/<name> and fetched at its mirror
    public path: every URI the player resolves onto our origin is signed, authz accepts it for
    the path the player requests, and relative URIs stay relative (stripping the tokens gives
    back the original URI, and the whole HLS document when all its URIs are relative)."""
    policy = make_policy(mode=mode)
    checked = 0
    for path in _corpus_files():
        body = path.read_bytes()
        kind = manifest.detect(None, body)
        assert kind is not None, path.name
        doc_path = f"{path.parent.name}/{path.name}"
        mapper = media_mapper(policy, doc_path)
        public_doc = f"{PUBLIC}/media/demo/{doc_path}"
        all_relative = True
        for ref, out, player, origin in player_urls(mapper, body, kind, public_doc):
            public = policy.public_path_of(origin)
            if public is None or ref.kind in policy.config.unsigned_kinds:
                assert player is None or not player.startswith(PUBLIC + "/media/"), path.name
                continue
            assert out is not None, (path.name, ref)
            assert player is not None, (path.name, ref)
            assert urlsplit(player).path == urlsplit(_expand(PUBLIC + public)).path, path.name
            authz(policy, player)
            checked += 1
            if "://" in ref.raw or ref.raw.startswith("/"):
                all_relative = False
            else:
                assert urlsign.strip_token(out) == ref.raw, (path.name, ref)
        if all_relative and kind is ManifestKind.HLS:
            out_body = manifest.rewrite(kind, body, media_mapper(policy, doc_path))
            assert strip_tokens(out_body.decode()).encode() == body, path.name
    assert checked > 1000


# --- properties -----------------------------------------------------------------------------------

segment_names = st.text(
    alphabet=st.characters(
        # ';' excluded: the oracle, urllib's urljoin, mishandles a reference starting with ';'
        codec="utf-8",
        exclude_categories=("Cc", "Zs"),
        exclude_characters="#?\"'<>&%$:;\\/",
    ),
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", ".."))


@settings(max_examples=200, deadline=None)
@given(
    dirs=st.lists(segment_names, max_size=3),
    name=segment_names,
    query=st.sampled_from(["", "?x=1", "?a=b&c=d"]),
    mode=st.sampled_from([TokenMode.PREFIX, TokenMode.URL]),
)
def test_property_relative_uris_verify_where_the_player_resolves_them(
    dirs: list[str], name: str, query: str, mode: TokenMode
) -> None:
    policy = _policies(mode)
    raw = "/".join([*dirs, name]) + query
    mapper = media_mapper(policy, "hls/720p/playlist.m3u8")
    out = mapper(UriRef(raw, UriKind.SEGMENT))
    assert out is not None
    assert urlsign.strip_token(out) == raw
    player = urljoin(PUBLIC + "/media/demo/hls/720p/playlist.m3u8", out)
    assert authz(policy, player)
    entry = master_mapper(policy)(UriRef(raw, UriKind.SEGMENT))
    assert entry is not None
    assert authz(policy, urljoin(PUBLIC + "/playback/demo/manifest", entry))


@settings(max_examples=300, deadline=None)
@given(
    raw=st.text(min_size=1, max_size=40),
    bases=st.lists(st.text(max_size=20), max_size=2).map(tuple),
    kind=st.sampled_from(list(UriKind)),
    is_template=st.booleans(),
    mode=st.sampled_from([TokenMode.PREFIX, TokenMode.URL]),
)
# a base the video-wide token cannot cover: the fast path once decided otherwise than the first
@example(raw="0", bases=("0\x00/",), kind=UriKind.SEGMENT, is_template=False, mode=TokenMode.PREFIX)
def test_property_any_reference_maps_to_a_string_or_none(
    raw: str, bases: tuple[str, ...], kind: UriKind, is_template: bool, mode: TokenMode
) -> None:
    mapper = master_mapper(_policies(mode))
    out = mapper(UriRef(raw, kind, is_template, bases))
    assert out is None or isinstance(out, str)
    if out is not None and is_template:
        assert raw in out  # the rewriter's template contract
    assert mapper(UriRef(raw, kind, is_template, bases)) == out


@pytest.mark.parametrize("base", ["0\x00/", "a%2Fb/", "a%5cb/"])
def test_a_base_the_video_token_cannot_cover_gets_a_token_per_url(base: str) -> None:
    """A base directory with an encoded separator or NUL is outside what the video-wide token
    covers: its URIs get their own token, on the first reference and on every later one (the
    fast path for known bases decides as the first, slow, one did)."""
    mapper = master_mapper(_policies(TokenMode.PREFIX))
    ref = UriRef("seg.ts", UriKind.SEGMENT, False, (base,))
    first = mapper(ref)
    assert first is not None
    assert mapper(ref) == first
    assert mapper(UriRef("seg2.ts", UriKind.SEGMENT, False, (base,))) != first.replace(
        "seg.ts", "seg2.ts"
    )


@functools.cache
def _policies(mode: TokenMode) -> SigningPolicy:
    return make_policy(mode=mode)


# --- configuration --------------------------------------------------------------------------------


def test_from_env_defaults_and_cdn_signers() -> None:
    env = {
        "ORIGIN_URL": ORIGIN,
        "URL_SIGNING_KEYS": KEYS,
        "URL_TOKEN_MODE": "url",
        "URL_TOKEN_TTL": "120",
        "URL_TOKEN_BINDING": "session",
        "URL_TOKEN_UNSIGNED_KINDS": "key,license_url",
        "PUBLIC_BASE_URLS": "https://Play.Example.com:443/, http://alt.example:8080",
        "CDN_SIGNERS": '[{"host": "MEDIA.example.net:443", "type": "akamai", "key_env": "AK"}]',
        "AK": "52a152a152a152a152a152a152a1",
    }
    config = PolicyConfig.from_env(env)
    assert config.mode is TokenMode.URL
    assert (config.ttl, config.playlist_ttl, config.window) == (120, 6 * 3600, 60)
    assert config.binding is Binding.SESSION
    assert config.unsigned_kinds == frozenset({UriKind.KEY, UriKind.LICENSE_URL})
    assert config.public_base_urls == ("https://play.example.com", "http://alt.example:8080")
    assert config.public_hosts == frozenset({"play.example.com", "alt.example:8080"})
    assert isinstance(config.cdn_signers["media.example.net"], AkamaiEdgeAuth)
    defaults = PolicyConfig.from_env({"ORIGIN_URL": ORIGIN, "URL_SIGNING_KEYS": KEYS})
    assert (defaults.mode, defaults.ttl, defaults.binding) == (
        TokenMode.PREFIX,
        300,
        Binding.SESSION,
    )
    assert defaults.unsigned_kinds == frozenset()
    assert defaults.in_place_prefixes == ("/drm/key/", "/drm/license/")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"ORIGIN_URL": ""}, "ORIGIN_URL"),
        ({"ORIGIN_URL": "origin:9104"}, "ORIGIN_URL"),
        ({"URL_SIGNING_KEYS": ""}, "URL_SIGNING_KEYS"),
        ({"URL_TOKEN_MODE": "cookie"}, "URL_TOKEN_MODE"),
        ({"URL_TOKEN_BINDING": "device"}, "URL_TOKEN_BINDING"),
        ({"URL_TOKEN_TTL": "0"}, "URL_TOKEN_TTL"),
        ({"URL_TOKEN_UNSIGNED_KINDS": "keys"}, "unknown kind"),
        ({"CDN_SIGNERS": "{"}, "CDN_SIGNERS"),
        ({"CDN_SIGNERS": '[{"type": "s3"}]'}, "host"),
        ({"PUBLIC_BASE_URLS": "play.example.com"}, "PUBLIC_BASE_URLS"),
        ({"PUBLIC_BASE_URLS": "ftp://play.example.com"}, "PUBLIC_BASE_URLS"),
        ({"PUBLIC_BASE_URLS": "https://play.example.com/video"}, "PUBLIC_BASE_URLS"),
        ({"PUBLIC_BASE_URLS": "https://user@play.example.com"}, "PUBLIC_BASE_URLS"),
        ({"PUBLIC_BASE_URLS": "https://play.example.com:x"}, "PUBLIC_BASE_URLS"),
        ({"PUBLIC_BASE_URLS": "https://play.example.com?a=b"}, "PUBLIC_BASE_URLS"),
        # the setting it replaced: refused, naming the replacement, rather than ignored
        ({"PUBLIC_HOSTS": "play.example.com"}, "PUBLIC_BASE_URLS"),
    ],
)
def test_from_env_errors_name_the_variable(extra: dict[str, str], message: str) -> None:
    env = {"ORIGIN_URL": ORIGIN, "URL_SIGNING_KEYS": KEYS, **extra}
    with pytest.raises(ConfigError, match=message):
        PolicyConfig.from_env(env)


# --- public base URLs (issue 18): absolute URLs come from configuration, never from the client ---


@pytest.mark.parametrize(
    ("bases", "authority", "expected"),
    [
        (("https://play.example.com",), "evil.example", "https://play.example.com"),
        (("https://play.example.com",), "", "https://play.example.com"),
        (("https://play.example.com",), "play.example.com:443", "https://play.example.com"),
        (
            ("https://play.example.com", "http://alt.example:8080"),
            "ALT.example:8080",
            "http://alt.example:8080",
        ),
        (
            ("https://play.example.com", "http://alt.example:8080"),
            "alt.example",
            "https://play.example.com",
        ),
        (
            ("https://play.example.com",),
            "evil.example/@play.example.com",
            "https://play.example.com",
        ),
        ((), "evil.example", ""),
    ],
)
def test_public_base_is_always_a_configured_one(
    bases: tuple[str, ...], authority: str, expected: str
) -> None:
    assert make_policy(public_base_urls=bases).public_base(authority) == expected


def test_absolute_urls_on_a_public_host_are_signed_in_place() -> None:
    policy = make_policy(public_base_urls=("https://play.example.com",))
    mapper = master_mapper(policy)
    out = mapper(UriRef("https://play.example.com/media/demo/hls/720p/seg.ts", UriKind.SEGMENT))
    assert out is not None
    assert out.startswith("https://play.example.com/media/demo/hls/720p/seg.ts?pdt=")
    assert authz(policy, out).scope in (None, "/media/demo/")
    # the same URL on a host that is not ours: a third party, left alone
    assert (
        master_mapper(policy)(UriRef("https://cdn.other/media/demo/seg.ts", UriKind.SEGMENT))
        is None
    )
