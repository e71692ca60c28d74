"""Paths and queries of signed URLs: the canonical form signatures cover, traversal checks,
and adding or removing the ``pdt`` parameter so that stripping it restores the URL exactly."""

from __future__ import annotations

import string
from typing import Final
from urllib.parse import quote

TOKEN_PARAM: Final = "pdt"  # noqa: S105 - a parameter name, not a secret
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def canonical_path(path: str) -> str:
    """The form of a path that signatures cover, so that innocuous rewriting by a player or a
    proxy does not break them: characters outside printable ASCII (and spaces) percent-encoded
    as UTF-8, as a client sends them; RFC 3986 section 6.2.2 percent-encoding normalization
    (upper-case hex digits, unreserved characters decoded); runs of ``/`` merged into one, as
    Envoy's ``merge_slashes`` does. Plain paths are returned as they are (the common case)."""
    if not (path.isascii() and path.isprintable()) or " " in path:
        path = quote(path, safe=string.punctuation, errors="surrogatepass")
    if "//" in path:
        while "//" in path:
            path = path.replace("//", "/")
    if "%" not in path:
        return path
    pieces = path.split("%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        hex_pair = piece[:2]
        if len(hex_pair) == 2 and hex_pair[0] in _HEX and hex_pair[1] in _HEX:
            char = chr(int(hex_pair, 16))
            out.append(char if char in _UNRESERVED else "%" + hex_pair.upper())
            out.append(piece[2:])
        else:
            out.append("%")
            out.append(piece)
    return "".join(out)


def check_scope(scope: str) -> None:
    if not scope.startswith("/") or not scope.endswith("/"):
        raise ValueError("scope must be a path prefix starting and ending with '/'")
    if has_traversal(scope):
        raise ValueError("scope must not contain dot segments or encoded separators")
    if canonical_path(scope) != scope:
        raise ValueError("scope must be in canonical form (see canonical_path)")


def has_traversal(path: str) -> bool:
    """True if a (canonical) path contains dot segments, backslashes or encoded separators."""
    if "\\" in path or "%2F" in path or "%5C" in path or "%00" in path:
        return True
    padded = path + "/"
    return "/../" in padded or "/./" in padded


def append_token(url: str, token: str, *, name: str = TOKEN_PARAM) -> str:
    """Add ``name=token`` as the last query parameter, before any fragment.

    A URL without ``?`` gets ``?``; any other (even an empty query) gets ``&``, so that
    :func:`strip_token` gives back exactly the original.
    """
    hash_at = url.find("#")
    if hash_at >= 0:
        base, fragment = url[:hash_at], url[hash_at:]
    else:
        base, fragment = url, ""
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}{name}={token}{fragment}"


def strip_token(path_and_query: str, *, name: str = TOKEN_PARAM) -> str:
    """Remove every ``name=`` parameter, restoring the URL :func:`append_token` started from
    (parameters a player added after the token are kept)."""
    hash_at = path_and_query.find("#")
    if hash_at >= 0:
        base, fragment = path_and_query[:hash_at], path_and_query[hash_at:]
    else:
        base, fragment = path_and_query, ""
    q = base.find("?")
    if q < 0:
        return path_and_query
    prefix = name + "="
    params = base[q + 1 :].split("&")
    kept = [p for p in params if not p.startswith(prefix)]
    if len(kept) == len(params):
        return path_and_query
    if not kept:
        return base[:q] + fragment
    return base[: q + 1] + "&".join(kept) + fragment
