"""DASH MPD rewriter (ISO/IEC 23009-1): splices URIs into the original bytes, never re-serializes.

Expat (``pyexpat``, C) reads the document once: it checks that the XML is well formed and reports
each start tag with its byte offset. Only for the few tags that carry a URI does Python look at the
raw bytes, to find the exact span of the attribute value or text to replace. Everything else
(comments, CDATA, processing instructions, namespace prefixes, quote styles, whitespace, attribute
order) is copied byte for byte.

Namespaces are resolved the way players read MPDs, leniently: Expat runs without namespace
processing (real MPDs use undeclared prefixes such as ``mspr:pro``, which a namespace-aware parser
rejects), unprefixed element names are MPD names, and a prefix counts as the MPD or XLink namespace
if the document binds it so anywhere.

URI positions (MPD elements):

    BaseURL, Location, PatchLocation, ContentSteering                 text
    SegmentTemplate@media @initialization @index @bitstreamSwitching   templates ($...$, $$)
    SegmentURL@media @index, Initialization@sourceURL, RepresentationIndex@sourceURL,
    BitstreamSwitching@sourceURL, ReplacePresentation@url (alternative MPD event)
    UTCTiming@value            only for the urn:mpeg:dash:utc:http-* schemes; a list of URLs
    xlink:href on any element  except urn:mpeg:dash:resolve-to-zero:2013

and, in whatever namespace they appear (DRM signalling varies by vendor): ``Laurl`` and
``Authzurl`` text (DASH-IF, ClearKey), ``laurl@licenseUrl`` (Microsoft), all of kind
:attr:`UriKind.LICENSE_URL`; ISO/IEC 23009-4 ``CryptoPeriod@keyUriTemplate`` (kind
:attr:`UriKind.KEY`, a template). ``BaseURL`` inheritance: see :mod:`extproc.manifest`.

Security: a DOCTYPE is refused with :class:`ManifestForbiddenXml` as soon as Expat reports its
start, before any entity is declared, so nothing is ever expanded (billion laughs) or fetched
(XXE). Any well-formedness error is :class:`ManifestMalformed`, as is a tree nested deeper than
``limits.max_depth`` (Expat itself would follow any depth). The mapper is called while Expat reads,
so it may have seen URIs of a document refused further down; nothing it returned is used then.
Encodings: UTF-8 (with or without BOM), and a declared US-ASCII, ISO-8859-1 or windows-1252;
UTF-16 is refused. The output keeps the input's encoding.

A changed value is written with canonical escaping (``&amp;``, ``&lt;``, the attribute's quote); a
URI text node that holds comments or CDATA is replaced as a whole.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple
from xml.parsers import expat

from extproc.errors import (
    ManifestForbiddenXml,
    ManifestMalformed,
    ManifestTooLarge,
    MapperContractError,
)
from extproc.uri import (
    DEFAULT_LIMITS,
    ManifestLimits,
    UriKind,
    UriMapper,
    UriRef,
    is_opaque,
)

__all__ = ["rewrite_dash"]

MPD_NS: Final = "urn:mpeg:dash:schema:mpd:2011"
XLINK_NS: Final = "http://www.w3.org/1999/xlink"
RESOLVE_TO_ZERO: Final = "urn:mpeg:dash:resolve-to-zero:2013"
_UTC_URL_SCHEMES: Final = frozenset(
    f"urn:mpeg:dash:utc:http-{method}:{year}"
    for method in ("head", "xsdate", "iso", "ntp")
    for year in ("2012", "2014")
)


class _Spec(NamedTuple):
    text: UriKind | None  # the element's text is a URI of this kind
    attributes: dict[str, tuple[UriKind, bool]]  # attribute -> (kind, is_template)
    mpd_only: bool  # must be an MPD element (unprefixed, or a prefix bound to the MPD namespace)


_NONE: Final[dict[str, tuple[UriKind, bool]]] = {}
_ELEMENTS: Final[dict[str, _Spec]] = {
    "BaseURL": _Spec(UriKind.DASH_BASE_URL, _NONE, True),
    "Location": _Spec(UriKind.DASH_LOCATION, _NONE, True),
    "PatchLocation": _Spec(UriKind.DASH_PATCH_LOCATION, _NONE, True),
    "ContentSteering": _Spec(UriKind.STEERING, _NONE, True),
    "SegmentTemplate": _Spec(
        None,
        {
            "media": (UriKind.DASH_SEGMENT, True),
            "initialization": (UriKind.DASH_INIT, True),
            "index": (UriKind.DASH_INDEX, True),
            "bitstreamSwitching": (UriKind.DASH_BITSTREAM_SWITCHING, True),
        },
        True,
    ),
    "SegmentURL": _Spec(
        None, {"media": (UriKind.DASH_SEGMENT, False), "index": (UriKind.DASH_INDEX, False)}, True
    ),
    "Initialization": _Spec(None, {"sourceURL": (UriKind.DASH_INIT, False)}, True),
    "RepresentationIndex": _Spec(None, {"sourceURL": (UriKind.DASH_INDEX, False)}, True),
    "BitstreamSwitching": _Spec(
        None, {"sourceURL": (UriKind.DASH_BITSTREAM_SWITCHING, False)}, True
    ),
    "ReplacePresentation": _Spec(None, {"url": (UriKind.DASH_ALTERNATE_MPD, False)}, True),
    "UTCTiming": _Spec(None, {"value": (UriKind.DASH_UTC_TIMING, False)}, True),
    "Laurl": _Spec(UriKind.LICENSE_URL, _NONE, False),
    "Authzurl": _Spec(UriKind.LICENSE_URL, _NONE, False),
    "laurl": _Spec(UriKind.LICENSE_URL, {"licenseUrl": (UriKind.LICENSE_URL, False)}, False),
    "CryptoPeriod": _Spec(None, {"keyUriTemplate": (UriKind.KEY, True)}, False),
}
_PREFIX_DECLARATION = re.compile(rb"""xmlns:([^\s=/>]++)\s*+=\s*+(?:"([^"]*+)"|'([^']*+)')""")
_REFERENCE = re.compile(r"&(?:#x([0-9A-Fa-f]{1,6})|#([0-9]{1,7})|(amp|lt|gt|quot|apos));")
_URL_LIST_ITEM = re.compile(r"[^ \t\r\n]+")
_NAMED: Final = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
_ENCODING_DECL = re.compile(rb"""<\?xml\s[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]{1,40})["']""")
# declared encoding -> (Python codec, name given to Expat)
_CODECS: Final = {
    "utf-8": ("utf-8", "UTF-8"),
    "utf8": ("utf-8", "UTF-8"),
    "us-ascii": ("utf-8", "UTF-8"),
    "ascii": ("utf-8", "UTF-8"),
    "iso-8859-1": ("latin-1", "ISO-8859-1"),
    "iso8859-1": ("latin-1", "ISO-8859-1"),
    "latin-1": ("latin-1", "ISO-8859-1"),
    "latin1": ("latin-1", "ISO-8859-1"),
    "windows-1252": ("cp1252", "windows-1252"),
    "cp1252": ("cp1252", "windows-1252"),
}
_XML_WS: Final = " \t\r\n"
_TEXT = 0
_CDATA = 1


def rewrite_dash(data: bytes, mapper: UriMapper, limits: ManifestLimits = DEFAULT_LIMITS) -> bytes:
    """Return ``data`` with every URI replaced by ``mapper``'s answer; ``data`` itself if none
    changed. Raises :class:`ManifestTooLarge`, :class:`ManifestMalformed`,
    :class:`ManifestForbiddenXml`; :class:`MapperContractError` for a misbehaving mapper."""
    if len(data) > limits.max_bytes:
        raise ManifestTooLarge(f"MPD is {len(data)} bytes, limit {limits.max_bytes}")
    codec, expat_encoding = _encoding(data)
    return _Rewriter(data, codec, expat_encoding, mapper, limits.max_depth).run()


def _encoding(data: bytes) -> tuple[str, str]:
    if data.startswith(b"\xef\xbb\xbf"):
        return _CODECS["utf-8"]
    if data.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00<", b"<\x00")):
        raise ManifestMalformed("UTF-16 MPDs are not supported")
    match = _ENCODING_DECL.match(data)
    declared = match.group(1).decode("ascii").lower() if match else "utf-8"
    found = _CODECS.get(declared)
    if found is None:
        raise ManifestMalformed(f"unsupported XML encoding {declared!r}")
    return found


def _forbid_doctype(*_: object) -> None:
    raise ManifestForbiddenXml("DOCTYPE declarations are not allowed in an MPD")


class _Rewriter:
    """One rewrite. Expat calls :meth:`_start` for every start tag; end tags go straight into a
    list (a C-level call), so the depth of an element is ``starts - ends``."""

    __slots__ = (
        "codec",
        "copied",
        "data",
        "encode_errors",
        "ends",
        "firsts",
        "mapper",
        "max_depth",
        "mpd_prefixes",
        "parser",
        "pieces",
        "starts",
        "xlink_names",
    )

    def __init__(
        self, data: bytes, codec: str, expat_encoding: str, mapper: UriMapper, max_depth: int
    ) -> None:
        self.data = data
        self.codec = codec
        # Outside UTF-8, characters the codec lacks become character references.
        self.encode_errors = "strict" if codec == "utf-8" else "xmlcharrefreplace"
        self.mapper = mapper
        self.max_depth = max_depth
        self.starts = 0
        self.ends: list[str] = []
        # firsts[d]: the first BaseURL child of the open element at depth d, if any yet. A slot
        # is reset when an element opens at that depth, so slots below the current depth always
        # belong to the current ancestors.
        self.firsts: list[str | None] = [None] * (max_depth + 1)
        self.mpd_prefixes: set[str] = set()
        self.xlink_names: list[str] = []  # "xlink:href", under whatever prefix the document uses
        for declaration in _PREFIX_DECLARATION.finditer(data):
            prefix = declaration.group(1).decode(codec, "replace")
            uri = (declaration.group(2) or declaration.group(3) or b"").strip().lower()
            if uri == MPD_NS.encode():
                self.mpd_prefixes.add(prefix)
            elif uri == XLINK_NS.encode():
                self.xlink_names.append(prefix + ":href")
        self.pieces: list[bytes] = []
        self.copied = 0
        parser = expat.ParserCreate(expat_encoding)
        parser.ordered_attributes = True
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self.ends.append
        parser.StartDoctypeDeclHandler = _forbid_doctype
        parser.EntityDeclHandler = _forbid_doctype
        self.parser = parser

    def run(self) -> bytes:
        try:
            self.parser.Parse(self.data, True)
        except expat.ExpatError as exc:
            raise ManifestMalformed(f"malformed MPD: {exc}") from None
        if not self.pieces:
            return self.data
        self.pieces.append(self.data[self.copied :])
        return b"".join(self.pieces)

    def _start(self, name: str, attributes: list[str]) -> None:
        self.starts += 1
        depth = self.starts - len(self.ends) - 1
        if depth >= self.max_depth:
            raise ManifestMalformed(f"elements nested deeper than {self.max_depth}")
        self.firsts[depth] = None
        spec = _ELEMENTS.get(name)
        if spec is None and ":" in name:
            prefix, _, local = name.partition(":")
            spec = _ELEMENTS.get(local)
            if spec is not None and spec.mpd_only and prefix not in self.mpd_prefixes:
                spec = None
        if spec is not None:
            self._uris(spec, attributes, depth)
        elif self.xlink_names:
            for href in self.xlink_names:
                if href in attributes:
                    self._uris(None, attributes, depth)
                    return

    def _bases(self, depth: int) -> tuple[str, ...]:
        """The BaseURL chain in scope for a child of the element at ``depth - 1``."""
        return tuple(filter(None, self.firsts[:depth]))  # an empty BaseURL changes nothing

    def _uris(self, spec: _Spec | None, attributes: list[str], depth: int) -> None:
        """A start tag with URIs: offer each to the mapper, splice what changed."""
        tag = self.parser.CurrentByteIndex
        spans: list[tuple[int, int, str]] | None = None
        uri_attributes = spec.attributes if spec is not None else _NONE
        bases: tuple[str, ...] | None = None
        for index in range(0, len(attributes), 2):
            name = attributes[index]
            target = uri_attributes.get(name)
            if target is not None:
                kind, is_template = target
                value = attributes[index + 1]
                if kind is UriKind.DASH_UTC_TIMING:
                    if (
                        _attribute(attributes, "schemeIdUri").strip().lower()
                        not in _UTC_URL_SCHEMES
                    ):
                        continue
                    new = self._url_list(value)
                else:
                    if bases is None:
                        bases = self._bases(depth)
                    new = self._offer(value, kind, is_template, bases)
            elif name in self.xlink_names:
                new = self._offer(attributes[index + 1], UriKind.DASH_XLINK, False, ())
            else:
                continue
            if new is not None:
                if spans is None:
                    spans = self._attribute_spans(tag, len(attributes) // 2)[0]
                start, end, quote = spans[index // 2]
                self._splice(start, end, _escape_attribute(new, quote))
        if spec is not None and spec.text is not None:
            self._text_uri(spec.text, tag, depth, len(attributes) // 2)

    def _offer(
        self, value: str, kind: UriKind, is_template: bool, bases: tuple[str, ...]
    ) -> str | None:
        """The mapper's replacement for an attribute value, or None to keep it."""
        uri = value.strip(_XML_WS)
        if not uri or is_opaque(uri) or (kind is UriKind.DASH_XLINK and uri == RESOLVE_TO_ZERO):
            return None
        new = self.mapper(UriRef(uri, kind, is_template, bases))
        if new is None or new == uri:
            return None
        if is_template:
            new = _escape_added_dollars(uri, new)
        return new if len(uri) == len(value) else value.replace(uri, new, 1)

    def _url_list(self, value: str) -> str | None:
        """``UTCTiming@value`` of the http schemes: a whitespace-separated list of URLs."""
        changed = False

        def each(match: re.Match[str]) -> str:
            nonlocal changed
            uri = match.group()
            new = None if is_opaque(uri) else self.mapper(UriRef(uri, UriKind.DASH_UTC_TIMING))
            if new is None or new == uri:
                return uri
            changed = True
            return new

        rewritten = _URL_LIST_ITEM.sub(each, value)
        return rewritten if changed else None

    def _attribute_spans(self, tag: int, count: int) -> tuple[list[tuple[int, int, str]], int]:
        """Value spans (start, end, quote) of the tag's ``count`` attributes, in the order Expat
        lists them (``ordered_attributes``), and the offset just past the tag. Expat has already
        accepted this start tag, so each attribute is ``name = "value"`` or ``name = 'value'``
        and plain searches find them (names hold no ``=``, values no ``<``)."""
        data = self.data
        spans = []
        pos = tag
        for _ in range(count):
            opening = data.find(b"=", pos) + 1
            while data[opening] in b" \t\r\n":
                opening += 1
            quote = data[opening : opening + 1]
            closing = data.find(quote, opening + 1)
            spans.append((opening + 1, closing, quote.decode("ascii")))
            pos = closing + 1
        return spans, data.find(b">", pos) + 1

    def _text_uri(self, kind: UriKind, tag: int, depth: int, attributes: int) -> None:
        """An element whose text is the URI. Its content is read from the bytes right away (Expat
        validates it later); an element with child elements holds no URI."""
        data = self.data
        content_start = self._attribute_spans(tag, attributes)[1]
        if data[content_start - 2 : content_start - 1] == b"/":
            return  # self-closing: empty
        segments: list[tuple[int, int, int]] = []
        complex_content = False
        pos = content_start
        while True:
            lt = data.find(b"<", pos)
            if lt < 0:
                return  # truncated: Expat reports the error
            if lt > pos:
                segments.append((_TEXT, pos, lt))
            if data.startswith(b"</", lt):
                break
            complex_content = True
            if data.startswith(b"<!--", lt):
                pos = data.find(b"-->", lt + 4) + 3
            elif data.startswith(b"<![CDATA[", lt):
                end = data.find(b"]]>", lt + 9)
                segments.append((_CDATA, lt + 9, end))
                pos = end + 3
            elif data.startswith(b"<?", lt):
                pos = data.find(b"?>", lt + 2) + 2
            else:
                return  # a child element
            if pos < 3:
                return  # unterminated: Expat reports the error
        codec = self.codec
        try:
            parts = [
                _text_value(data[start:end].decode(codec))
                if what == _TEXT
                else data[start:end].decode(codec)
                for what, start, end in segments
            ]
        except UnicodeDecodeError:
            raise ManifestMalformed(f"MPD text is not valid {codec}") from None
        uri = "".join(parts).strip(_XML_WS)
        bases: tuple[str, ...] = ()
        if kind is UriKind.DASH_BASE_URL and depth > 0:
            bases = self._bases(depth - 1)
            if self.firsts[depth - 1] is None:
                self.firsts[depth - 1] = uri
        if not uri or is_opaque(uri):
            return
        new = self.mapper(UriRef(uri, kind, False, bases))
        if new is None or new == uri:
            return
        escaped = _escape_text(new)
        if not complex_content and segments:
            _, start, end = segments[0]
            raw = data[start:end]
            self._splice(
                start + len(raw) - len(raw.lstrip()), end - len(raw) + len(raw.rstrip()), escaped
            )
            return
        # Comments, CDATA or processing instructions inside: replace the whole content, keeping
        # the whitespace around it.
        content = data[content_start:lt]
        lead = len(content) - len(content.lstrip())
        trail = len(content) - len(content.rstrip()) if content.strip() else 0
        self._splice(content_start + lead, lt - trail, escaped)

    def _splice(self, start: int, end: int, replacement: str) -> None:
        self.pieces.append(self.data[self.copied : start])
        try:
            self.pieces.append(replacement.encode(self.codec, self.encode_errors))
        except UnicodeEncodeError:
            raise MapperContractError("mapper returned a URI that is not valid Unicode") from None
        self.copied = end


def _attribute(attributes: list[str], wanted: str) -> str:
    for index in range(0, len(attributes), 2):
        if attributes[index] == wanted:
            return attributes[index + 1]
    return ""


def _text_value(raw: str) -> str:
    """Character data as a parser reports it: line ends normalized, references decoded."""
    if "\r" in raw:
        raw = raw.replace("\r\n", "\n").replace("\r", "\n")
    if "&" not in raw:
        return raw
    out: list[str] = []
    pos = 0
    while (amp := raw.find("&", pos)) >= 0:
        match = _REFERENCE.match(raw, amp)
        if match is None:
            raise ManifestMalformed("undefined entity or bare '&' in a URI")
        out.append(raw[pos:amp])
        hex_digits, decimal, named = match.groups()
        if named is not None:
            out.append(_NAMED[named])
        else:
            code = int(hex_digits, 16) if hex_digits is not None else int(decimal)
            if code > 0x10FFFF:
                raise ManifestMalformed("character reference beyond Unicode in a URI")
            out.append(chr(code))
        pos = match.end()
    out.append(raw[pos:])
    return "".join(out)


def _escape_attribute(value: str, quote: str) -> str:
    if "&" in value:
        value = value.replace("&", "&amp;")
    if "<" in value:
        value = value.replace("<", "&lt;")
    if quote in value:
        value = value.replace(quote, "&quot;" if quote == '"' else "&apos;")
    if "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;")
    return value


def _escape_text(value: str) -> str:
    if "&" in value:
        value = value.replace("&", "&amp;")
    if "<" in value:
        value = value.replace("<", "&lt;")
    if ">" in value:
        value = value.replace(">", "&gt;")
    if "\r" in value:
        value = value.replace("\r", "&#13;")
    return value


def _escape_added_dollars(template: str, new: str) -> str:
    """Write ``$`` in the text the mapper added to a template as ``$$`` (ISO/IEC 23009-1
    5.3.9.4.4); see the mapper contract in :mod:`extproc.manifest`."""
    at = new.find(template)
    if at >= 0:
        end = at + len(template)
        return new[:at].replace("$", "$$") + template + new[end:].replace("$", "$$")
    shortest = min(len(template), len(new))
    prefix = 0
    while prefix < shortest and template[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and template[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    if "$" in template[prefix : len(template) - suffix]:
        raise MapperContractError("mapper changed the $...$ identifiers of a DASH template")
    added_end = len(new) - suffix
    return new[:prefix] + new[prefix:added_end].replace("$", "$$") + new[added_end:]
