"""Resolving URI references the way players do, and the small URL predicates the signing policy
needs. Pure functions over strings.

:func:`resolve_reference` follows RFC 3986 section 5.2 (non-strict: ``http:g`` with an http base
is relative) after the WHATWG clean-up browsers apply (leading/trailing C0 controls and spaces
removed, tabs and line breaks dropped, ``\\`` read as ``/`` in http(s) URLs, ``%2e`` counted as a
dot), because a signed URL must point where the player will really go.
"""

from __future__ import annotations

from typing import Final

_DEFAULT_PORTS: Final = {"http": ":80", "https": ":443"}
_C0_OR_SPACE: Final = "".join(chr(c) for c in range(0x21))
_SCHEME_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."
)
_SPECIAL_SCHEMES: Final = frozenset({"http", "https"})
_DOT: Final = frozenset({".", "%2e"})
_DOT_DOT: Final = frozenset({"..", ".%2e", "%2e.", "%2e%2e"})


def normalize_netloc(scheme: str, netloc: str) -> str:
    """``host[:port]`` in lower case, without userinfo or the scheme's default port."""
    host = netloc.rpartition("@")[2].lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and host.endswith(default):
        host = host[: -len(default)]
    return host


def is_relative_path(raw: str) -> bool:
    """A relative-path reference (RFC 3986 4.2): no scheme, not ``/...`` or ``//host``."""
    if raw[:1] == "/":
        return False
    colon = raw.find(":")
    if colon < 0:
        return True
    for delimiter in "/?#":
        at = raw.find(delimiter)
        if 0 <= at < colon:
            return True
    return False


def needs_cleaning(raw: str) -> bool:
    """URL parsers (WHATWG, urllib) strip leading/trailing C0 controls and spaces and drop tabs
    and line breaks anywhere: such a URI must not be kept relative or concatenated as is."""
    return raw[0] <= " " or raw[-1] <= " " or "\t" in raw or "\n" in raw or "\r" in raw


def is_simple(raw: str) -> bool:
    """A relative path that resolves by plain concatenation with its base directory."""
    return (
        raw[:1] not in ("/", ".", "")
        and ":" not in raw
        and "/." not in raw
        and "#" not in raw
        and "\\" not in raw
    )


def split_reference(
    ref: str,
) -> tuple[str | None, str | None, str, str | None, str | None]:
    """(scheme, authority, path, query, fragment); None marks an absent component."""
    fragment = query = scheme = authority = None
    hash_at = ref.find("#")
    if hash_at >= 0:
        ref, fragment = ref[:hash_at], ref[hash_at + 1 :]
    question = ref.find("?")
    if question >= 0:
        ref, query = ref[:question], ref[question + 1 :]
    colon = ref.find(":")
    if colon > 0 and ref[0].isascii() and ref[0].isalpha() and set(ref[:colon]) <= _SCHEME_CHARS:
        scheme, ref = ref[:colon].lower(), ref[colon + 1 :]
    if scheme in _SPECIAL_SCHEMES or scheme is None:
        ref = ref.replace("\\", "/")  # browsers treat \ as / in http(s) URLs
    if ref.startswith("//"):
        end = ref.find("/", 2)
        end = len(ref) if end < 0 else end
        authority, ref = ref[2:end], ref[end:]
    return scheme, authority, ref, query, fragment


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4; like browsers, ``%2e`` counts as a dot."""
    if "." not in path and "%" not in path:
        return path
    absolute = path.startswith("/")
    segments = path.split("/")[1:] if absolute else path.split("/")
    out: list[str] = []
    for segment in segments:
        lowered = segment.lower()
        if lowered in _DOT_DOT:
            if out:
                out.pop()
        elif lowered not in _DOT:
            out.append(segment)
    if segments and segments[-1].lower() in _DOT | _DOT_DOT:
        out.append("")
    joined = "/".join(out)
    return "/" + joined if absolute else joined


def resolve_reference(base: str, ref: str) -> str:
    """Resolve ``ref`` against the absolute URL ``base`` like a player does: RFC 3986 section
    5.2, non-strict (``http:g`` with an http base is relative), after the WHATWG clean-up of
    leading/trailing C0 controls and spaces and of tabs and line breaks.

    ``urllib.parse.urljoin`` is not used: it drops an empty ``;`` parameter and mishandles a
    reference that starts with ``;`` (RFC 3986 5.4.1: ``;x`` is ``http://a/b/c/;x``).
    """
    ref = ref.strip(_C0_OR_SPACE)
    if "\t" in ref or "\n" in ref or "\r" in ref:
        ref = ref.replace("\t", "").replace("\n", "").replace("\r", "")
    r_scheme, r_authority, r_path, r_query, r_fragment = split_reference(ref)
    b_scheme, b_authority, b_path, b_query, _ = split_reference(base)
    if r_scheme is not None and r_scheme == b_scheme and r_authority is None:
        r_scheme = None
    scheme: str | None
    authority: str | None
    query: str | None
    if r_scheme is not None:
        scheme, authority, query = r_scheme, r_authority, r_query
        path = remove_dot_segments(r_path)
    else:
        scheme = b_scheme
        if r_authority is not None:
            authority, path, query = r_authority, remove_dot_segments(r_path), r_query
        else:
            authority = b_authority
            if not r_path:
                path, query = b_path, r_query if r_query is not None else b_query
            else:
                if r_path.startswith("/"):
                    path = remove_dot_segments(r_path)
                elif b_authority is not None and not b_path:
                    path = remove_dot_segments("/" + r_path)
                else:
                    path = remove_dot_segments(b_path[: b_path.rfind("/") + 1] + r_path)
                query = r_query
    out = f"{scheme}:" if scheme is not None else ""
    if authority is not None:
        out += "//" + authority
    out += path
    if query is not None:
        out += "?" + query
    if r_fragment is not None:
        out += "#" + r_fragment
    return out


__all__ = [
    "is_relative_path",
    "is_simple",
    "needs_cleaning",
    "normalize_netloc",
    "remove_dot_segments",
    "resolve_reference",
    "split_reference",
]
