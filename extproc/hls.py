"""HLS playlist rewriter (RFC 8216, draft-pantos-hls-rfc8216bis, Apple content steering and
interstitials): one linear pass over the lines, dispatching on the tag name.

URIs live in two places:

- URI lines: every non-blank line that does not start with ``#`` (whitespace around it is kept).
  After ``#EXT-X-STREAM-INF`` it is a :attr:`UriKind.PLAYLIST`, otherwise a
  :attr:`UriKind.SEGMENT`.
- Quoted attributes of the tags in ``_URI_ATTRIBUTES``; a small scanner walks each attribute list,
  respecting quoted strings, and also accepts an unquoted ``URI=value`` as players do.

Lines end with LF or CRLF (RFC 8216 section 4.1); a CR before the LF stays where it was, a lone CR
is refused (players would split the line there). A playlist without ``#EXTM3U`` is accepted if it
has at least one ``#EXT`` tag (it was served as HLS); anything else is refused rather than having
its lines signed as URIs. See :mod:`extproc.manifest` for the mapper contract and the URIs never
offered to the mapper (``data:``, ``skd://``, ``{$var}``).
"""

from __future__ import annotations

from typing import Final

from extproc.errors import ManifestMalformed, ManifestTooLarge, MapperContractError
from extproc.uri import (
    DEFAULT_LIMITS,
    ManifestLimits,
    UriKind,
    UriMapper,
    UriRef,
    is_opaque,
)

__all__ = ["encode", "rewrite_hls"]

_URI_ATTRIBUTES: Final[dict[str, dict[str, UriKind]]] = {
    "EXT-X-KEY": {"URI": UriKind.KEY},
    "EXT-X-SESSION-KEY": {"URI": UriKind.KEY},
    "EXT-X-MAP": {"URI": UriKind.MAP},
    "EXT-X-MEDIA": {"URI": UriKind.PLAYLIST},
    "EXT-X-I-FRAME-STREAM-INF": {"URI": UriKind.PLAYLIST},
    "EXT-X-IMAGE-STREAM-INF": {"URI": UriKind.PLAYLIST},
    "EXT-X-PART": {"URI": UriKind.PART},
    "EXT-X-PRELOAD-HINT": {"URI": UriKind.PRELOAD_HINT},
    "EXT-X-RENDITION-REPORT": {"URI": UriKind.RENDITION_REPORT},
    "EXT-X-SESSION-DATA": {"URI": UriKind.SESSION_DATA},
    "EXT-X-CONTENT-STEERING": {"SERVER-URI": UriKind.STEERING},
    "EXT-X-DATERANGE": {
        "X-ASSET-URI": UriKind.INTERSTITIAL_ASSET,
        "X-ASSET-LIST": UriKind.INTERSTITIAL_LIST,
    },
}
_SEGMENT: Final = UriKind.SEGMENT
_PLAYLIST: Final = UriKind.PLAYLIST
_BOM: Final = "\ufeff"


def rewrite_hls(text: str, mapper: UriMapper, limits: ManifestLimits = DEFAULT_LIMITS) -> str:
    """Return ``text`` with every URI replaced by ``mapper``'s answer; ``text`` itself if none
    changed. Raises :class:`ManifestTooLarge` or :class:`ManifestMalformed` for refused input."""
    if len(text) > limits.max_bytes:
        raise ManifestTooLarge(f"playlist is {len(text)} characters, limit {limits.max_bytes}")
    bom = text.startswith(_BOM)
    body = text[1:] if bom else text
    if "#EXT" not in body:
        raise ManifestMalformed("not an HLS playlist: no #EXTM3U header and no #EXT tag")
    if "\r" in body and body.count("\r") != body.count("\r\n"):
        # Players split lines at a lone CR too; refusing keeps their view and ours the same.
        raise ManifestMalformed("lone CR in playlist: HLS lines end with LF or CRLF")
    lines = body.split("\n")
    longest = max(map(len, lines)) if len(body) > limits.max_line_chars else 0
    if longest > limits.max_line_chars:
        raise ManifestMalformed(
            f"playlist line of {longest} characters, limit {limits.max_line_chars}"
        )

    changed = False
    pending = _SEGMENT  # kind of the next URI line; #EXT-X-STREAM-INF makes it a playlist
    for index, line in enumerate(lines):
        if not line:
            continue
        if line[0] == "#":
            if not line.startswith("#EXT-X-"):
                continue  # comments, #EXTINF, #EXTM3U: no URI (the hot path of media playlists)
            start = 0
        else:
            uri = line.strip()
            if not uri:
                continue
            if uri[0] != "#":
                kind = pending
                pending = _SEGMENT
                # The first-letter test spares a call per segment; is_opaque repeats it.
                if "{$" in uri or (uri[0] in "dDsS" and is_opaque(uri)):
                    continue
                new = mapper(UriRef(uri, kind, False, ()))
                if new is not None and new != uri:
                    if not new or new[0] == "#" or "\n" in new or "\r" in new:
                        raise MapperContractError("mapper returned a URI unfit for a URI line")
                    lines[index] = new if len(uri) == len(line) else _uri_line(line, uri, new)
                    changed = True
                continue
            start = line.index("#")  # a tag or comment indented by whitespace
            if not line.startswith("#EXT-X-", start):
                continue
        colon = line.find(":", start)
        if colon < 0:
            continue  # tag without attributes (EXT-X-ENDLIST, ...)
        tag = line[start + 1 : colon]
        if tag == "EXT-X-STREAM-INF":
            pending = _PLAYLIST
            continue
        names = _URI_ATTRIBUTES.get(tag)
        if names is not None:
            new_line = _rewrite_attributes(line, colon + 1, names, mapper)
            if new_line is not None:
                lines[index] = new_line
                changed = True
    if not changed:
        return text
    out = "\n".join(lines)
    return _BOM + out if bom else out


def encode(text: str) -> bytes:
    """UTF-8 bytes of a rewritten playlist; a mapper that produced unencodable text is a bug."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MapperContractError("mapper returned a URI that is not valid Unicode") from exc


def _uri_line(line: str, uri: str, new: str) -> str:
    """Put ``new`` where ``uri`` stood in ``line``, keeping the whitespace (and CR) around it."""
    lead = len(line) - len(line.lstrip())
    return line[:lead] + new + line[lead + len(uri) :]


def _rewrite_attributes(
    line: str, start: int, names: dict[str, UriKind], mapper: UriMapper
) -> str | None:
    """Scan the attribute list ``line[start:]`` (``NAME=value`` pairs separated by commas, values
    quoted or not) and replace the values of ``names``. Tolerates stray commas, spaces and quotes
    the way players do: an unquoted value runs to the next comma."""
    pieces: list[str] = []
    copied = 0
    size = len(line)
    pos = start
    while pos < size:
        equals = line.find("=", pos)
        if equals < 0:
            break
        name = line[pos:equals].rpartition(",")[2].strip()
        value_start = equals + 1
        quoted = value_start < size and line[value_start] == '"'
        if quoted:
            value_start += 1
            value_end = line.find('"', value_start)
            if value_end < 0:
                break  # unterminated quoted string: no further attributes
            comma = line.find(",", value_end + 1)
        else:
            comma = line.find(",", value_start)
            value_end = size if comma < 0 else comma
        kind = names.get(name)
        if kind is not None:
            raw = line[value_start:value_end]
            uri = raw if quoted else raw.strip()
            if not quoted and '"' in uri:
                raise ManifestMalformed(f"{name} attribute with a stray quote")
            if uri and "{$" not in uri and not (uri[0] in "dDsS" and is_opaque(uri)):
                new = mapper(UriRef(uri, kind))
                if new is not None and new != uri:
                    if "\n" in new or "\r" in new or '"' in new:
                        raise MapperContractError(
                            "mapper returned a URI with a quote or line break"
                        )
                    if not quoted:
                        value_start += raw.find(uri)
                        value_end = value_start + len(uri)
                        if "," in new:
                            new = f'"{new}"'
                    pieces.append(line[copied:value_start])
                    pieces.append(new)
                    copied = value_end
        if comma < 0:
            break
        pos = comma + 1
    if not pieces:
        return None
    pieces.append(line[copied:])
    return "".join(pieces)
