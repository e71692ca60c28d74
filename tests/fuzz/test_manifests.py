"""Fuzzing the origin's manifests through the real signer (``extproc.service.ManifestService``
with the signing policy a deployment runs): whatever an origin sends, the viewer gets a signed
manifest, the body untouched (not a manifest), or a 502 with a ``manifest_*`` code; never a 503
(our own failure), an unsigned manifest, a hang, or memory out of proportion to the body.

Documents are generated from the constructs that matter (URI tags and attributes, BaseURL chains,
templates, entities, DOCTYPEs, CDATA, namespaces, declared encodings), then damaged the way
networks and broken packagers damage them: truncation, huge lines, deep nesting, other encodings,
gzip and deflate (whole, truncated, corrupt).
"""

from __future__ import annotations

import gzip
import zlib

from hypothesis import event, example, given
from hypothesis import strategies as st

from extproc.config import ExtprocConfig
from extproc.errors import ManifestError
from extproc.policy import SigningPolicy
from extproc.service import ManifestService, Passthrough, Refused, ResponseFacts, Signed
from extproc.signer import ManifestSigner, mapper_factory
from playback_drm.events import MemorySink
from tests.fuzz import MemoryBound, fuzz_settings

MAX_BYTES = 256 * 1024
CONFIG = ExtprocConfig.from_env(
    {
        "URL_SIGNING_KEYS": "k1:" + "A" * 43,
        "ORIGIN_URL": "http://origin.test/",
        "MANIFEST_MAX_BYTES": str(MAX_BYTES),
        "MANIFEST_CACHE_ENTRIES": "0",  # every example is signed afresh
        "PUBLIC_BASE_URLS": "https://play.example.com",
    }
)
# the refusals an origin's document can cause: 502 with one of the manifest codes
_ORIGIN_ERRORS: list[type[ManifestError]] = [ManifestError, *ManifestError.__subclasses__()]
ORIGIN_CODES = frozenset(cls.code for cls in _ORIGIN_ERRORS)
# the document's bytes (and what gzip inflates them to) times this, plus a constant
MEMORY_FACTOR = 24
MEMORY_BASE = 2 << 20


def service() -> ManifestService:
    policy = SigningPolicy(CONFIG.policy)
    signer = ManifestSigner(CONFIG, mapper_factory(CONFIG, policy))
    return ManifestService(CONFIG, signer, policy, MemorySink())


SERVICE = service()
ROUTES = [  # (path the player asked for, path at the origin, user, video, session, address)
    ResponseFacts(
        "/playback/demo/manifest", "/demo/master.m3u8", "alice", "demo", "s1", "203.0.113.7:5000"
    ),
    ResponseFacts(
        "/media/demo/hls/720p/playlist.m3u8", "/demo/hls/720p/playlist.m3u8", "", "demo", "s2", ""
    ),
    ResponseFacts(
        "/playback/demo/manifest", "/demo/manifest.mpd", "alice", "demo", "s3", "[2001:db8::1]:443"
    ),
    ResponseFacts("/media/demo/dash/manifest.mpd", "/demo/dash/manifest.mpd", "", "demo", "s4", ""),
]


# --- HLS ------------------------------------------------------------------------------------

HLS_URIS = st.sampled_from(
    [
        "seg.ts",
        "hls/720p/playlist.m3u8",
        "../other/seg.ts",
        "/demo/abs.ts",
        "http://origin.test/demo/a.ts",
        "https://play.example.com/media/demo/b.ts",
        "https://cdn.third.party/x.ts",
        "http://origin.test/drm/key/demo/00112233",
        "skd://key",
        "data:text/plain,AAAA",
        "{$base}/s.ts",
        'a"b.ts',
        "a,b.ts",
        "seg.ts?x=1#t=2",
        "%2e%2e/%2e%2e/etc",
        "seg\u2028.ts",
        "\x00.ts",
        "",
        "http://[::1",
        "http://origin.test:99999/x",
    ]
) | st.text(max_size=20)
HLS_LINES = st.one_of(
    st.builds(
        lambda d, u: f"#EXTINF:{d},\n{u}", st.sampled_from(["4.0", "x", "1e999", "-1"]), HLS_URIS
    ),
    st.builds(lambda u: f"#EXT-X-STREAM-INF:BANDWIDTH=1\n{u}", HLS_URIS),
    st.builds(
        lambda tag, name, u, quoted: f"#{tag}:METHOD=AES-128,{name}={quoted.format(u)},IV=0x1",
        st.sampled_from(
            [
                "EXT-X-KEY",
                "EXT-X-MAP",
                "EXT-X-MEDIA",
                "EXT-X-PART",
                "EXT-X-PRELOAD-HINT",
                "EXT-X-RENDITION-REPORT",
                "EXT-X-SESSION-DATA",
                "EXT-X-CONTENT-STEERING",
                "EXT-X-DATERANGE",
                "EXT-X-I-FRAME-STREAM-INF",
            ]
        ),
        st.sampled_from(["URI", "SERVER-URI", "X-ASSET-URI", "X-ASSET-LIST"]),
        HLS_URIS,
        st.sampled_from(['"{}"', "{}", '"{}', '{}"']),
    ),
    st.sampled_from(
        [
            "#EXTM3U",
            "#EXT-X-ENDLIST",
            "#EXT-X-TARGETDURATION:4",
            "# comment",
            "",
            " ",
            "#EXT-X-",
            '#EXT-X-DEFINE:NAME="base",VALUE="x"',
            "#EXT-X-BYTERANGE:10@0",
            "\ufeff#EXTM3U",
        ]
    ),
    st.text(max_size=30),
)


@st.composite
def playlists(draw: st.DrawFn) -> bytes:
    lines = ["#EXTM3U", *draw(st.lists(HLS_LINES, max_size=30))]
    if draw(st.integers(0, 9)) == 0:
        lines.append("#EXTINF:1,\n" + "a" * draw(st.sampled_from([65_000, 70_000])))  # huge line
    newline = draw(st.sampled_from(["\n", "\r\n", "\r", "\n\r"]))
    text = newline.join(lines)
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["utf-8-sig", "latin-1", "utf-16", "cp1252"]))
    return text.encode(encoding, "surrogatepass" if encoding.startswith("utf-8") else "replace")


# --- DASH -----------------------------------------------------------------------------------

XML_VALUES = st.sampled_from(
    [
        "seg-$Number%05d$.m4s",
        "init.mp4",
        "http://origin.test/demo/dash/",
        "https://play.example.com/media/demo/",
        "https://cdn.third.party/",
        "../../x/",
        "a&amp;b",
        "&#x41;&#65;",
        "&#1114112;",
        "&undefined;",
        "&",
        "<",
        "$$",
        "$Time$",
        "$Number",
        "&lt;script&gt;",
        "urn:mpeg:dash:resolve-to-zero:2013",
        "data:,x",
        "",
        " spaced ",
    ]
) | st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
ELEMENTS = st.sampled_from(
    [
        "Period",
        "AdaptationSet",
        "Representation",
        "BaseURL",
        "SegmentTemplate",
        "SegmentURL",
        "SegmentList",
        "Initialization",
        "Location",
        "PatchLocation",
        "UTCTiming",
        "ContentProtection",
        "cenc:pssh",
        "dashif:Laurl",
        "mspr:pro",
        "xlink:Period",
        "Foo",
        "x:BaseURL",
    ]
)
ATTRIBUTES = st.sampled_from(
    [
        "media",
        "initialization",
        "index",
        "sourceURL",
        "xlink:href",
        "value",
        "schemeIdUri",
        "bitstreamSwitching",
        "id",
        "licenseUrl",
        "url",
    ]
)


@st.composite
def elements(draw: st.DrawFn, depth: int) -> str:
    name = draw(ELEMENTS)
    quote = draw(st.sampled_from(['"', "'"]))
    attrs = "".join(
        f" {attr}={quote}{value.replace(quote, '')}{quote}"
        for attr, value in draw(
            st.lists(st.tuples(ATTRIBUTES, XML_VALUES), max_size=3, unique_by=lambda t: t[0])
        )
    )
    if depth <= 0 or draw(st.integers(0, 2)) == 0:
        inner = draw(
            st.sampled_from(["", "<!-- c -->", "<![CDATA[cdata.m4s]]>", "<?pi x?>"]) | XML_VALUES
        )
    else:
        inner = "".join(draw(st.lists(elements(depth - 1), max_size=3)))
    return f"<{name}{attrs}>{inner}</{name}>"


PROLOGS = st.sampled_from(
    [
        "",
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<?xml version='1.0' encoding='ISO-8859-1'?>",
        '<?xml version="1.0" encoding="windows-1252"?>',
        '<?xml version="1.0" encoding="UTF-16"?>',
        '<?xml version="1.0" encoding="EBCDIC"?>',
        '<!DOCTYPE MPD [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>',
        '<!DOCTYPE MPD SYSTEM "http://evil.example/x.dtd">',
        '<!DOCTYPE MPD [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
        "\ufeff",
        "<!-- leading comment -->",
    ]
)


@st.composite
def mpds(draw: st.DrawFn) -> bytes:
    root_attrs = draw(
        st.sampled_from(
            [
                ' xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"'
                ' mediaPresentationDuration="PT1H"',
                ' xmlns:xlink="http://www.w3.org/1999/xlink" type="dynamic"',
                ' xmlns:x="urn:mpeg:dash:schema:mpd:2011" mediaPresentationDuration="P1DT"',
                "",
            ]
        )
    )
    body = "".join(draw(st.lists(elements(3), max_size=4)))
    if draw(st.integers(0, 9)) == 0:  # nested far deeper than any MPD
        depth = draw(st.integers(60, 3000))
        body = "<Period>" * depth + "</Period>" * depth
    text = draw(PROLOGS) + f"<MPD{root_attrs}>{body}</MPD>"
    encoding = draw(st.sampled_from(["utf-8"] * 5 + ["latin-1", "utf-16", "utf-16-le"]))
    return text.encode(encoding, "replace")


# --- damage ---------------------------------------------------------------------------------


@st.composite
def damaged(draw: st.DrawFn, documents: st.SearchStrategy[bytes]) -> bytes:
    body = draw(documents)
    how = draw(st.integers(0, 9))
    if how == 1 and body:
        body = body[: draw(st.integers(0, len(body) - 1))]  # truncated
    elif how == 2 and body:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]  # bytes flipped in
    elif how == 3:
        body = gzip.compress(body, mtime=0)
    elif how == 4:
        body = zlib.compress(body)
    elif how == 5:
        packed = gzip.compress(body, mtime=0)
        body = packed[: draw(st.integers(2, max(2, len(packed) - 1)))]  # truncated gzip
    elif how == 6:
        body = gzip.compress(b"#EXTM3U\n" + b"#" * (MAX_BYTES + 1), mtime=0)  # a small bomb
    return body


def sign(facts: ResponseFacts, body: bytes) -> None:
    limit = MEMORY_FACTOR * min(max(len(body), 1) * 1024, MAX_BYTES) + MEMORY_BASE
    with MemoryBound(limit)("response_body"):
        outcome = SERVICE.response_body(facts, body, "req-1")
    if isinstance(outcome, Refused):
        event(f"refused {outcome.code}")
        assert (outcome.status, outcome.code in ORIGIN_CODES) == (502, True), outcome
    elif isinstance(outcome, Signed):
        event("signed")
        assert isinstance(outcome.body, bytes)
    else:
        event("passthrough")
        assert isinstance(outcome, Passthrough)


@fuzz_settings(0.6)
@given(facts=st.sampled_from(ROUTES), body=damaged(playlists()))
@example(facts=ROUTES[0], body=b'#EXTM3U\n#EXT-X-KEY:URI=a"b\n')
@example(facts=ROUTES[1], body=b"#EXTM3U\n#EXTINF:1,\n" + b"a" * 70_000)
def test_any_playlist_from_the_origin_is_signed_or_a_502(facts: ResponseFacts, body: bytes) -> None:
    sign(facts, body)


@fuzz_settings(0.4)
@given(facts=st.sampled_from(ROUTES), body=damaged(mpds()))
@example(facts=ROUTES[2], body=b"<MPD>" + b"<Period>" * 5000 + b"</Period>" * 5000 + b"</MPD>")
@example(
    facts=ROUTES[3],
    body=b'<!DOCTYPE MPD [<!ENTITY a "x"><!ENTITY b "&a;&a;">]><MPD><BaseURL>&b;</BaseURL></MPD>',
)
def test_any_mpd_from_the_origin_is_signed_or_a_502(facts: ResponseFacts, body: bytes) -> None:
    sign(facts, body)


@fuzz_settings(0.3)
@given(facts=st.sampled_from(ROUTES), body=st.binary(max_size=4096))
def test_any_bytes_from_the_origin_are_signed_passed_or_a_502(
    facts: ResponseFacts, body: bytes
) -> None:
    sign(facts, body)
