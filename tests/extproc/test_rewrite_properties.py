"""Property tests for the rewriters and body decoding: garbage never escapes the typed errors,
generated manifests round-trip byte for byte, every URI is offered, escaping is right."""

from __future__ import annotations

import contextlib
import gzip
import zlib
from dataclasses import dataclass, field

import pytest
from defusedxml.ElementTree import fromstring
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.dash import rewrite_dash
from extproc.errors import ManifestError, ManifestMalformed, ManifestTooLarge
from extproc.hls import rewrite_hls
from extproc.manifest import ManifestKind, decode_body, rewrite
from extproc.uri import ManifestLimits, UriKind, UriRef
from tests.extproc import Recorder, strip_marks

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- garbage in: typed errors or a result, nothing else ----------------------------------------

HLS_ALPHABET = st.sampled_from(
    [
        "#EXTM3U",
        "#EXT-X-KEY:",
        "#EXT-X-MAP:",
        "#EXT-X-DATERANGE:",
        "#EXTINF:1,",
        "#EXT-X-STREAM-INF:",
        "URI=",
        "X-ASSET-LIST=",
        '"',
        ",",
        "=",
        "\n",
        "\r",
        "\r\n",
        " ",
        "\t",
        "#",
        "a.ts",
        "{$v}",
        "data:",
        "skd://",
        "\ufeff",
        "?",
        "&",
        "\x00",
        "é",
    ]
)


@FAST
@given(st.one_of(st.text(), st.lists(HLS_ALPHABET).map("".join)))
def test_hls_garbage_raises_only_typed_errors(text: str) -> None:
    try:
        out = rewrite_hls(text, Recorder())
    except ManifestError:
        return
    assert strip_marks(out.encode("utf-8", "surrogatepass")) == text.encode(
        "utf-8", "surrogatepass"
    )


@FAST
@given(st.binary())
def test_any_bytes_as_hls_or_dash_raise_only_typed_errors(data: bytes) -> None:
    for kind in ManifestKind:
        with contextlib.suppress(ManifestError):
            rewrite(kind, data, Recorder())


XML_ALPHABET = st.sampled_from(
    [
        "<",
        ">",
        "/",
        "=",
        '"',
        "'",
        "&",
        ";",
        "amp",
        "#x41",
        "!--",
        "--",
        "![CDATA[",
        "]]>",
        "?",
        "MPD",
        "BaseURL",
        "SegmentTemplate",
        " media",
        " xlink:href",
        " xmlns:xlink",
        "http://www.w3.org/1999/xlink",
        "DOCTYPE",
        "ENTITY",
        "x",
        " ",
        "\n",
        "$",
        "Location",
        "<MPD>",
        "</MPD>",
        "<BaseURL>",
        "</BaseURL>",
        "\xe9",
        "\ufeff",
    ]
)


@FAST
@given(st.lists(XML_ALPHABET).map("".join))
def test_dash_garbage_raises_only_typed_errors(text: str) -> None:
    data = text.encode()
    try:
        out = rewrite_dash(data, Recorder())
    except ManifestError:
        return
    assert strip_marks(out) == data


@FAST
@given(st.text())
def test_mapper_returning_none_never_changes_a_playlist(text: str) -> None:
    with contextlib.suppress(ManifestError):
        assert rewrite_hls(text, lambda ref: None) is text


# --- generated HLS playlists --------------------------------------------------------------------

URI_CHARS = st.text(
    alphabet=st.sampled_from("abcXYZ019-._~/%:@!$'()*+;=é"), min_size=1, max_size=12
).filter(lambda s: not s.lower().startswith(("data:", "skd:")))
URIS = st.builds(
    lambda path, query, fragment: path + query + fragment,
    URI_CHARS,
    st.sampled_from(["", "?a=1", "?_HLS_msn=3&_HLS_part=1", "?"]),
    st.sampled_from(["", "#t=1"]),
)
SKIPPED_URIS = st.sampled_from(["data:text/plain;base64,AAAA", "skd://key?KeyId=1", "{$base}/s.ts"])
ATTRIBUTE_TAGS = st.sampled_from(
    [
        ("EXT-X-KEY", "URI"),
        ("EXT-X-MAP", "URI"),
        ("EXT-X-MEDIA", "URI"),
        ("EXT-X-PART", "URI"),
        ("EXT-X-PRELOAD-HINT", "URI"),
        ("EXT-X-RENDITION-REPORT", "URI"),
        ("EXT-X-SESSION-DATA", "URI"),
        ("EXT-X-I-FRAME-STREAM-INF", "URI"),
        ("EXT-X-CONTENT-STEERING", "SERVER-URI"),
        ("EXT-X-DATERANGE", "X-ASSET-URI"),
        ("EXT-X-DATERANGE", "X-ASSET-LIST"),
    ]
)
OTHER_ATTRIBUTES = st.lists(
    st.sampled_from(["BANDWIDTH=1", 'CODECS="a,b"', 'NAME="URI=x"', "IV=0x1", 'X-URI="y.ts"']),
    max_size=3,
)


@dataclass
class Playlist:
    lines: list[str] = field(default_factory=list)
    offered: list[str] = field(default_factory=list)


@st.composite
def playlists(draw: st.DrawFn) -> tuple[str, list[str]]:
    playlist = Playlist(["#EXTM3U"])
    for _ in range(draw(st.integers(0, 12))):
        choice = draw(st.integers(0, 4))
        if choice == 0:  # segment
            uri = draw(st.one_of(URIS, SKIPPED_URIS))
            lead, trail = draw(st.sampled_from(["", " ", "\t"])), draw(st.sampled_from(["", " "]))
            playlist.lines += [f"#EXTINF:{draw(st.integers(1, 9))},", lead + uri + trail]
            if not uri.startswith(("data:", "skd:", "{$")):
                playlist.offered.append(uri)
        elif choice == 1:  # variant
            uri = draw(URIS)
            playlist.lines += ["#EXT-X-STREAM-INF:BANDWIDTH=1", uri]
            playlist.offered.append(uri)
        elif choice == 2:  # URI attribute between others
            tag, name = draw(ATTRIBUTE_TAGS)
            uri = draw(st.one_of(URIS, SKIPPED_URIS))
            before, after = draw(OTHER_ATTRIBUTES), draw(OTHER_ATTRIBUTES)
            playlist.lines.append(f"#{tag}:" + ",".join([*before, f'{name}="{uri}"', *after]))
            if not uri.startswith(("data:", "skd:", "{$")):
                playlist.offered.append(uri)
        elif choice == 3:
            playlist.lines.append(
                draw(
                    st.sampled_from(
                        [
                            "",
                            '# comment URI="c"',
                            "#EXT-X-CUE-IN",
                            '#EXT-X-FOO:URI="f"',
                            "#EXT-X-ENDLIST",
                        ]
                    )
                )
            )
        else:
            playlist.lines.append(f"#EXT-X-BYTERANGE:{draw(st.integers(1, 99))}@0")
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join(playlist.lines) + draw(st.sampled_from(["", newline]))
    return text, playlist.offered


@FAST
@given(playlists())
def test_generated_playlists_round_trip_and_offer_every_uri(case: tuple[str, list[str]]) -> None:
    text, expected = case
    mapper = Recorder()
    out = rewrite_hls(text, mapper)
    assert mapper.raws == expected
    assert strip_marks(out.encode()) == text.encode()
    assert out.count("pdt=TEST") == len(expected)
    assert rewrite_hls(text, lambda ref: None) is text


# --- generated MPDs -----------------------------------------------------------------------------

VALUE_CHARS = st.text(
    alphabet=st.sampled_from("ab/._-?=&<>\"'$ é%"), min_size=1, max_size=10
).filter(lambda s: s.strip() == s and not s.lower().startswith(("data:", "skd:")))
SUFFIXES = st.text(alphabet=st.sampled_from("?=&<>\"'$k1é"), min_size=1, max_size=6)


def attribute(name: str, value: str, quote: str) -> str:
    escaped = value.replace("&", "&amp;").replace("<", "&lt;")
    escaped = escaped.replace(quote, "&quot;" if quote == '"' else "&apos;")
    return f" {name}={quote}{escaped}{quote}"


def text_node(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def mpds(draw: st.DrawFn) -> tuple[str, list[tuple[str, bool]]]:
    """An MPD and its URI values (value, is_template) in document order."""
    uris: list[tuple[str, bool]] = []
    quote = draw(st.sampled_from(['"', "'"]))

    def base_urls() -> str:
        out = ""
        for _ in range(draw(st.integers(0, 2))):
            value = draw(VALUE_CHARS)
            uris.append((value, False))
            out += f"<BaseURL>{text_node(value)}</BaseURL>"
        return out

    def segment_template() -> str:
        media, init = draw(VALUE_CHARS) + "$Number$", draw(VALUE_CHARS)
        uris.extend([(media, True), (init, True)])
        attributes = attribute("media", media, quote) + attribute("initialization", init, quote)
        return f"<SegmentTemplate{attributes}/>"

    def segment_list() -> str:
        out = "<SegmentList>"
        for _ in range(draw(st.integers(1, 3))):
            value = draw(VALUE_CHARS)
            uris.append((value, False))
            out += f"<SegmentURL{attribute('media', value, quote)}/>"
        return out + "</SegmentList>"

    body = base_urls()
    for _ in range(draw(st.integers(1, 2))):
        body += "<Period>" + base_urls() + "<AdaptationSet>" + base_urls()
        body += segment_template() if draw(st.booleans()) else ""
        for _ in range(draw(st.integers(1, 2))):
            body += "<Representation>" + base_urls()
            body += segment_list() if draw(st.booleans()) else "<!-- no list -->"
            body += "</Representation>"
        body += "</AdaptationSet></Period>"
    return f'<MPD xmlns="urn:mpeg:dash:schema:mpd:2011">{body}</MPD>', uris


@FAST
@given(mpds(), SUFFIXES)
def test_generated_mpds_escape_what_the_mapper_adds(
    case: tuple[str, list[tuple[str, bool]]], suffix: str
) -> None:
    document, uris = case
    data = document.encode()
    mapper = Recorder()
    assert strip_marks(rewrite_dash(data, mapper)) == data
    assert [(ref.raw, ref.is_template) for ref in mapper.refs] == uris

    out = rewrite_dash(data, lambda ref: ref.raw + suffix)
    root = fromstring(out)
    found = []
    for element in root.iter():
        tag = element.tag.rpartition("}")[2]
        if tag == "BaseURL":
            found.append(element.text)
        for name in ("media", "initialization"):
            if element.get(name) is not None:
                found.append(element.get(name))
    expected = [raw + (suffix.replace("$", "$$") if template else suffix) for raw, template in uris]
    assert found == expected


# --- body decoding --------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=2000), st.sampled_from(["gzip", "x-gzip", "deflate", "raw-deflate"]))
def test_decode_body_undoes_content_encoding(body: bytes, coding: str) -> None:
    if coding in ("gzip", "x-gzip"):
        encoded = gzip.compress(body)
    elif coding == "deflate":
        encoded = zlib.compress(body)
    else:
        compressor = zlib.compressobj(wbits=-15)
        encoded, coding = compressor.compress(body) + compressor.flush(), "deflate"
    assert decode_body(encoded, coding) == body
    assert decode_body(encoded, f"{coding.upper()}, identity") == body


def test_decode_body_identity_and_multi_member_gzip() -> None:
    assert decode_body(b"#EXTM3U", None) == b"#EXTM3U"
    assert decode_body(b"#EXTM3U", "identity") == b"#EXTM3U"
    members = gzip.compress(b"#EXTM3U\n") + gzip.compress(b"#EXTINF:1,\na.ts\n") + b"\x00" * 4
    assert decode_body(members, "gzip") == b"#EXTM3U\n#EXTINF:1,\na.ts\n"
    assert decode_body(gzip.compress(gzip.compress(b"x")), "gzip, gzip") == b"x"


def test_zip_bomb_stops_at_the_limit() -> None:
    limits = ManifestLimits(max_bytes=1024 * 1024)
    bomb = gzip.compress(b"\x00" * (20 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < limits.max_bytes // 10
    with pytest.raises(ManifestTooLarge):
        decode_body(bomb, "gzip", limits)
    with pytest.raises(ManifestTooLarge):
        decode_body(zlib.compress(b"\x00" * (2 * 1024 * 1024)), "deflate", limits)
    with pytest.raises(ManifestTooLarge):
        decode_body(b"x" * (limits.max_bytes + 1), None, limits)


@pytest.mark.parametrize(
    ("body", "coding"),
    [
        (gzip.compress(b"#EXTM3U\n" * 100)[:-10], "gzip"),
        (b"not gzip at all", "gzip"),
        (b"not deflate", "deflate"),
        (zlib.compress(b"x") + b"trailing", "deflate"),
        (b"x", "br"),
        (b"x", "zstd"),
    ],
    ids=["truncated", "not gzip", "not deflate", "trailing bytes", "br", "zstd"],
)
def test_decode_body_refuses_corrupt_or_unknown_codings(body: bytes, coding: str) -> None:
    with pytest.raises(ManifestMalformed):
        decode_body(body, coding)


def test_uri_ref_is_hashable_and_immutable() -> None:
    ref = UriRef("a.ts", UriKind.SEGMENT)
    assert ref == UriRef("a.ts", UriKind.SEGMENT, False, ())
    assert hash(ref) == hash(UriRef("a.ts", UriKind.SEGMENT))
    with pytest.raises(AttributeError):
        ref.raw = "b"  # type: ignore[misc]
