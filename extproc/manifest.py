"""Manifests: detection (content type, then sniffing), body decoding (gzip, deflate, bounded),
and the dispatcher to the HLS and DASH rewriters. The URI contract the rewriters and the signing
policy share is in :mod:`extproc.uri`.
"""

from __future__ import annotations

import enum
import re
import zlib
from collections.abc import Callable
from typing import Final

from extproc import dash, hls
from extproc.errors import ManifestMalformed, ManifestTooLarge
from extproc.uri import DEFAULT_LIMITS, ManifestLimits, UriMapper

__all__ = ["ManifestKind", "decode_body", "detect", "rewrite"]


class ManifestKind(enum.Enum):
    HLS = "hls"
    DASH = "dash"


_HLS_TYPES: Final = frozenset(
    {
        "application/vnd.apple.mpegurl",
        "application/x-mpegurl",
        "audio/mpegurl",
        "audio/x-mpegurl",
    }
)
_DASH_TYPES: Final = frozenset({"application/dash+xml", "video/vnd.mpeg.dash.mpd"})
_SNIFF_WINDOW: Final = 64 * 1024
_SNIFF_LINES: Final = 32
_UTF8_BOM: Final = b"\xef\xbb\xbf"
_XML_WS: Final = b" \t\r\n"
_MPD_ROOT = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?MPD[\s>/]")


def detect(content_type: str | None, body: bytes) -> ManifestKind | None:
    """Which manifest ``body`` is: by content type first, else by content. ``body`` must already
    be decoded (see :func:`decode_body`)."""
    if content_type:
        media_type = content_type.partition(";")[0].strip().lower()
        if media_type in _HLS_TYPES:
            return ManifestKind.HLS
        if media_type in _DASH_TYPES:
            return ManifestKind.DASH
    head = body[:_SNIFF_WINDOW]
    if head.startswith(_UTF8_BOM):
        head = head[3:]
    head = head.lstrip(_XML_WS)
    if head.startswith(b"#"):
        return ManifestKind.HLS if _sniff_hls(head) else None
    return ManifestKind.DASH if _sniff_mpd_root(head) else None


def _sniff_hls(head: bytes) -> bool:
    """The first line that is neither blank nor a comment is an ``#EXT`` tag (normally #EXTM3U;
    some authoring tools put comments first, some omit the header)."""
    for raw_line in head.split(b"\n", _SNIFF_LINES)[:_SNIFF_LINES]:
        line = raw_line.strip()
        if line.startswith(b"#EXT"):
            return True
        if line and not line.startswith(b"#"):
            return False
    return False


def _sniff_mpd_root(head: bytes) -> bool:
    """Skip the prolog (XML declaration, comments, processing instructions) and look at the root.
    A DOCTYPE before an ``<MPD`` still counts as DASH, so that the rewriter refuses it."""
    pos = 0
    while head.startswith(b"<?", pos) or head.startswith(b"<!--", pos):
        close = b"?>" if head[pos + 1] == ord("?") else b"-->"
        end = head.find(close, pos)
        if end < 0:
            return False
        pos = end + len(close)
        while pos < len(head) and head[pos] in _XML_WS:
            pos += 1
    if head.startswith(b"<!DOCTYPE", pos):
        return _MPD_ROOT.search(head, pos) is not None
    return _MPD_ROOT.match(head, pos) is not None


def decode_body(
    body: bytes, content_encoding: str | None, limits: ManifestLimits = DEFAULT_LIMITS
) -> bytes:
    """Undo ``Content-Encoding`` (gzip, x-gzip, deflate, identity; a list is undone right to left).

    The output is capped at ``limits.max_bytes``: a zip bomb stops after that many bytes with
    :class:`ManifestTooLarge`, never inflating further. Corrupt or truncated data and unsupported
    codings (``br``, ``zstd``: ask the origin for gzip or identity) raise
    :class:`ManifestMalformed`.
    """
    if len(body) > limits.max_bytes:
        raise ManifestTooLarge(f"manifest body is {len(body)} bytes, limit {limits.max_bytes}")
    if not content_encoding:
        return body
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    for coding in reversed(codings):
        if coding in ("", "identity"):
            continue
        decoder = _DECODERS.get(coding)
        if decoder is None:
            raise ManifestMalformed(f"unsupported content-encoding {coding!r}")
        body = decoder(body, limits.max_bytes)
    return body


def _inflate(data: bytes, wbits: int, cap: int, *, members: bool) -> bytes:
    out = bytearray()
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(data, cap + 1 - len(out))
        except zlib.error as exc:
            raise ManifestMalformed(f"corrupt compressed body: {exc}") from exc
        if len(out) > cap:
            raise ManifestTooLarge(f"decompressed manifest exceeds {cap} bytes")
        if not inflater.eof:
            raise ManifestMalformed("truncated compressed body")
        data = inflater.unused_data
        if not data.strip(b"\x00"):  # gzip writers may pad with zeros
            return bytes(out)
        if not members:
            raise ManifestMalformed("trailing bytes after the compressed body")


def _gunzip(data: bytes, cap: int) -> bytes:
    return _inflate(data, 16 + zlib.MAX_WBITS, cap, members=True)


def _deflate(data: bytes, cap: int) -> bytes:
    # HTTP "deflate" is zlib-wrapped (RFC 9110), but some servers send raw deflate.
    try:
        return _inflate(data, zlib.MAX_WBITS, cap, members=False)
    except ManifestMalformed:
        return _inflate(data, -zlib.MAX_WBITS, cap, members=False)


_DECODERS: Final[dict[str, Callable[[bytes, int], bytes]]] = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _deflate,
}


def rewrite(
    kind: ManifestKind, body: bytes, mapper: UriMapper, limits: ManifestLimits = DEFAULT_LIMITS
) -> bytes:
    """Rewrite a decoded manifest body. Returns ``body`` itself when no URI changed."""
    if kind is ManifestKind.DASH:
        return dash.rewrite_dash(body, mapper, limits)
    if len(body) > limits.max_bytes:
        raise ManifestTooLarge(f"manifest is {len(body)} bytes, limit {limits.max_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestMalformed(f"HLS playlist is not UTF-8 (byte {exc.start})") from None
    out = hls.rewrite_hls(text, mapper, limits)
    return body if out is text else hls.encode(out)
