"""Every manifest of the shared corpus (real files from players and packagers) through the rewriter.

For each file: detection finds the right kind; marking every URI and removing the marks again gives
back the original bytes; and every URI a player would request, found by an independent and plain
reading of the specifications below (not by the rewriter's code), was offered to the mapper and
comes out marked. URIs the rewriter deliberately never offers (``data:``, ``skd://``, HLS
``{$var}`` placeholders) are left out on both sides.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import reduce
from pathlib import Path
from urllib.parse import urljoin, urlsplit
from xml.etree.ElementTree import Element

import pytest
from defusedxml.ElementTree import ParseError, fromstring

from extproc.manifest import ManifestKind, detect, rewrite
from tests.conftest import CORPUS_DIR
from tests.extproc import MARK, Recorder, strip_marks

HLS_FILES = sorted((CORPUS_DIR / "hls").glob("*.m3u8"))
DASH_FILES = sorted((CORPUS_DIR / "dash").glob("*.mpd"))
MANIFEST_URL = "https://origin.example/videos/demo/manifest"


def test_corpus_is_there() -> None:
    assert len(HLS_FILES) >= 60
    assert len(DASH_FILES) >= 60


def offered(uri: str, *, hls: bool) -> bool:
    """What the rewriter promises to offer the mapper."""
    return bool(uri) and not uri.lower().startswith(("data:", "skd:")) and not (hls and "{$" in uri)


def marked(url: str) -> bool:
    return MARK in urlsplit(url).query.split("&")


# --- HLS: RFC 8216bis section 4.4, Apple content steering, HLS interstitials -------------------

HLS_URI_ATTRIBUTES = {
    "EXT-X-KEY": {"URI"},
    "EXT-X-SESSION-KEY": {"URI"},
    "EXT-X-MAP": {"URI"},
    "EXT-X-MEDIA": {"URI"},
    "EXT-X-I-FRAME-STREAM-INF": {"URI"},
    "EXT-X-IMAGE-STREAM-INF": {"URI"},
    "EXT-X-PART": {"URI"},
    "EXT-X-PRELOAD-HINT": {"URI"},
    "EXT-X-RENDITION-REPORT": {"URI"},
    "EXT-X-SESSION-DATA": {"URI"},
    "EXT-X-CONTENT-STEERING": {"SERVER-URI"},
    "EXT-X-DATERANGE": {"X-ASSET-URI", "X-ASSET-LIST"},
}
HLS_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def hls_player_uris(text: str) -> Iterator[str]:
    """URI lines and URI attributes, in document order, the way a player reads them."""
    for raw_line in re.split(r"\r?\n", text.removeprefix("\ufeff")):
        line = raw_line.strip()
        if not line:
            continue
        if not line.startswith("#"):
            yield line
            continue
        tag, _, attributes = line[1:].partition(":")
        for name, value in HLS_ATTRIBUTE.findall(attributes):
            if name in HLS_URI_ATTRIBUTES.get(tag, ()):
                yield value[1:-1] if value.startswith('"') else value.strip()


@pytest.mark.parametrize("path", HLS_FILES, ids=[p.name for p in HLS_FILES])
def test_hls_file(path: Path) -> None:
    original = path.read_bytes()
    assert MARK.encode() not in original
    assert detect(None, original) is ManifestKind.HLS
    assert detect("application/vnd.apple.mpegurl", original) is ManifestKind.HLS
    mapper = Recorder()
    out = rewrite(ManifestKind.HLS, original, mapper)
    assert strip_marks(out) == original

    expected = [uri for uri in hls_player_uris(original.decode()) if offered(uri, hls=True)]
    assert mapper.raws == expected
    for uri in hls_player_uris(out.decode()):
        assert marked(uri) == offered(uri, hls=True), uri


# --- DASH: ISO/IEC 23009-1 (5.6 BaseURL, 5.3.9 segment information, 5.5 xlink, 5.8.4.11 UTC) ----

MPD_NS = "{urn:mpeg:dash:schema:mpd:2011}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
SEGMENT_ATTRIBUTES = {
    "SegmentTemplate": ("media", "initialization", "index", "bitstreamSwitching"),
    "SegmentURL": ("media", "index"),
    "Initialization": ("sourceURL",),
    "RepresentationIndex": ("sourceURL",),
    "BitstreamSwitching": ("sourceURL",),
}
UTC_URL_SCHEME = re.compile(r"urn:mpeg:dash:utc:http-(head|xsdate|iso|ntp):20(12|14)")


def parse(data: bytes) -> Element:
    """defusedxml, with declarations added for prefixes some real MPDs use undeclared."""
    try:
        return fromstring(data)  # type: ignore[no-any-return]
    except ParseError as exc:
        if "unbound prefix" not in str(exc):
            raise
    text = data.decode()
    declared = set(re.findall(r"xmlns:([\w.-]+)=", text))
    used = set(re.findall(r"[<\s]([\w.-]+):[\w.-]+", text)) - declared - {"xmlns", "xml"}
    extra = "".join(f' xmlns:{prefix}="urn:undeclared:{prefix}"' for prefix in sorted(used))
    return fromstring(re.sub(r"(<MPD\b)", r"\1" + extra, text, count=1))  # type: ignore[no-any-return]


def dash_player_view(data: bytes) -> tuple[list[tuple[str, str]], set[str]]:
    """(raw, resolved URL) for everything a player may fetch, and every value at a URI position."""
    root = parse(data)
    prefix = MPD_NS if root.tag.startswith(MPD_NS) else ""
    requested: list[tuple[str, str]] = []
    positions: set[str] = set()

    def local(element: Element) -> str:
        return element.tag.rpartition("}")[2]

    def first_base(element: Element) -> str | None:
        found = element.find(prefix + "BaseURL")
        return (found.text or "").strip() if found is not None else None

    def add(raw: str | None, *bases: str) -> None:
        raw = (raw or "").strip()
        if raw:
            requested.append((raw, reduce(urljoin, (MANIFEST_URL, *bases, raw))))
            positions.add(raw)

    def chain(*levels: Element) -> list[str]:
        return [base for base in map(first_base, levels) if base is not None]

    # BaseURL alternatives may all be fetched (players fail over): each one, resolved against the
    # first BaseURL of each level above its parent.
    parents = {child: parent for parent in root.iter() for child in parent}
    for base in root.iter(prefix + "BaseURL"):
        above: list[Element] = []  # the ancestors of the BaseURL's parent, root first
        level = parents[base]
        while level in parents:
            level = parents[level]
            above.insert(0, level)
        add(base.text, *chain(*above))
    for name in ("Location", "PatchLocation", "ContentSteering"):
        for element in root.iter(prefix + name):
            add(element.text)
    for element in root.iter(prefix + "UTCTiming"):
        if UTC_URL_SCHEME.fullmatch(element.get("schemeIdUri", "").strip()):
            for url in element.get("value", "").split():
                add(url)
    for element in root.iter(prefix + "ReplacePresentation"):
        add(element.get("url"))
    for element in root.iter():
        href = element.get(XLINK_HREF)
        if href and href.strip() != "urn:mpeg:dash:resolve-to-zero:2013":
            add(href)
        if local(element) in ("Laurl", "Authzurl"):
            add(element.text)
        if local(element) == "laurl":
            add(element.get("licenseUrl"))
        if local(element) == "CryptoPeriod":
            add(element.get("keyUriTemplate"))
        for attribute in (
            SEGMENT_ATTRIBUTES.get(local(element), ()) if element.tag.startswith(prefix) else ()
        ):
            if element.get(attribute):
                positions.add(element.get(attribute, "").strip())

    # Segments of each Representation: the nearest segment information, inherited downwards.
    for period in root.findall(prefix + "Period"):
        for adaptation_set in period.findall(prefix + "AdaptationSet"):
            for representation in adaptation_set.findall(prefix + "Representation"):
                bases = chain(root, period, adaptation_set, representation)
                levels = (representation, adaptation_set, period)
                templates = [
                    t for lv in levels if (t := lv.find(prefix + "SegmentTemplate")) is not None
                ]
                lists = [s for lv in levels if (s := lv.find(prefix + "SegmentList")) is not None]
                single = [b for lv in levels if (b := lv.find(prefix + "SegmentBase")) is not None]
                if templates:
                    for attribute in SEGMENT_ATTRIBUTES["SegmentTemplate"]:
                        value = next(
                            (t.get(attribute) for t in templates if t.get(attribute)), None
                        )
                        add(value, *bases)
                    continue
                info = lists[0] if lists else single[0] if single else None
                if info is not None:
                    for name in ("Initialization", "RepresentationIndex", "BitstreamSwitching"):
                        for element in info.iter(prefix + name):
                            add(element.get("sourceURL"), *bases)
                    for segment in info.iter(prefix + "SegmentURL"):
                        add(segment.get("index"), *bases)
                        if segment.get("media"):
                            add(segment.get("media"), *bases)
                        elif bases:
                            add(bases[-1], *bases[:-1])
                    if lists:
                        continue
                if bases:  # SegmentBase or nothing: the BaseURL is the media itself
                    add(bases[-1], *bases[:-1])
    return requested, positions


@pytest.mark.parametrize("path", DASH_FILES, ids=[p.name for p in DASH_FILES])
def test_dash_file(path: Path) -> None:
    original = path.read_bytes()
    assert MARK.encode() not in original
    assert detect(None, original) is ManifestKind.DASH
    assert detect("application/dash+xml; charset=utf-8", original) is ManifestKind.DASH
    mapper = Recorder()
    out = rewrite(ManifestKind.DASH, original, mapper)
    assert strip_marks(out) == original

    requested, positions = dash_player_view(original)
    player = {raw for raw, _ in requested if offered(raw, hls=False)}
    assert player <= set(mapper.raws), "a URI the player fetches was not offered"
    assert set(mapper.raws) <= positions, "something that is no URI was offered"
    for raw, url in dash_player_view(out)[0]:
        assert marked(url) == offered(raw, hls=False), url


# --- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "kind"),
    [
        ("application/vnd.apple.mpegurl", b"", ManifestKind.HLS),
        ("Application/X-MpegURL; charset=UTF-8", b"", ManifestKind.HLS),
        ("audio/mpegurl", b"", ManifestKind.HLS),
        ("audio/x-mpegurl", b"", ManifestKind.HLS),
        ("application/dash+xml", b"", ManifestKind.DASH),
        ("application/octet-stream", b"\xef\xbb\xbf\r\n #EXTM3U\n", ManifestKind.HLS),
        (None, b"# comment first\n#EXTM3U\n", ManifestKind.HLS),
        (None, b"#EXT-X-TARGETDURATION:10\n#EXTINF:10,\na.ts\n", ManifestKind.HLS),
        ("text/plain", b"#hello\nworld\n", None),
        (None, b'<?xml version="1.0"?>\n<!-- c --><?pi x?>\n<MPD xmlns="x"/>', ManifestKind.DASH),
        (
            "binary/octet-stream",
            b'<mpd:MPD xmlns:mpd="urn:mpeg:dash:schema:mpd:2011">',
            ManifestKind.DASH,
        ),
        (None, b'<!DOCTYPE MPD [<!ENTITY a "b">]>\n<MPD>&a;</MPD>', ManifestKind.DASH),
        (None, b"<MPDX/>", None),
        (None, b"<html><body>MPD</body></html>", None),
        ("application/json", b'{"url": "x"}', None),
        (None, b"", None),
        (None, b"<?xml unterminated", None),
    ],
)
def test_detect(content_type: str | None, body: bytes, kind: ManifestKind | None) -> None:
    assert detect(content_type, body) is kind
