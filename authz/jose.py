"""The JWS compact serialisation (RFC 7515 section 7.1), read strictly before anything else looks
at a token. Pure: no I/O, no pyjwt.

A viewer's token is untrusted input until its signature verifies, and even the parts read before
that (the JOSE header: which key, which algorithm) steer what authz does. So the header is parsed
here, once, into a typed :class:`JoseHeader`, and every way it can be wrong is a
:class:`~authz.errors.TokenMalformed` (401 ``token_malformed``) with a detail saying what:

- three segments of unpadded base64url (RFC 7515 section 2), nothing else; the header's bytes
  UTF-8 JSON, an object, its member names unique (section 4: a parser that kept the last of two
  ``alg`` members would read another header than the one that was signed), no ``NaN`` or
  ``Infinity`` (not JSON), nesting bounded by the interpreter (a ``RecursionError`` is malformed
  input, not an internal error);
- ``alg`` a non-empty string (whether it is allowed is the verifier's question:
  ``token_algorithm_rejected``); ``kid``, ``typ`` and ``cty`` strings when present;
- ``crit`` (section 4.1.11): when present, a non-empty list of distinct strings naming extension
  parameters that are in the header and are not ones the JWS specification defines; and since
  this verifier implements no extension, any well-formed ``crit`` is rejected as not understood
  ("the recipient MUST reject the JWS if ... not understood"). That includes RFC 7797's
  unencoded payloads (``b64``), which are refused even without ``crit``.

Key-naming parameters a token may carry (``jku``, ``jwk``, ``x5u``, ``x5c``) are never used:
keys come only from the configured JWKS.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from authz.errors import TokenMalformed

__all__ = ["UNDERSTOOD_CRITICAL", "JoseHeader", "parse_header"]

# Extension header parameters this verifier implements (RFC 7515 section 4.1.11): none.
UNDERSTOOD_CRITICAL: Final[frozenset[str]] = frozenset()
# Header parameters the JWS specification itself defines: crit must not list them.
_REGISTERED: Final = frozenset(
    {"alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit"}
)
_B64URL: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_B64URL_AND_DOT: Final = _B64URL | {"."}
MAX_KID_CHARS: Final = 256


@dataclass(frozen=True, slots=True)
class JoseHeader:
    """The parts of a JOSE header authz uses, typed."""

    alg: str
    kid: str | None = None
    typ: str | None = None


def _malformed(detail: str) -> NoReturn:
    raise TokenMalformed(detail)


def _b64url_decode(segment: str) -> bytes:
    """Unpadded base64url, the alphabet already checked. Trailing bits are tolerated (issuers
    do not set them, and the signature covers the text, not the decoded bytes)."""
    if len(segment) % 4 == 1:
        _malformed("a token segment has an impossible base64url length")
    try:
        return binascii.a2b_base64(
            segment.replace("-", "+").replace("_", "/") + "=" * (-len(segment) % 4),
            strict_mode=True,
        )
    except binascii.Error:
        _malformed("a token segment is not base64url")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        _malformed("the JOSE header repeats a member name")
    return doc


def _not_json(constant: str) -> NoReturn:
    _malformed(f"the JOSE header holds {constant}, which is not JSON")


def _optional_string(header: dict[str, Any], name: str) -> str | None:
    value = header.get(name)
    if value is not None and not isinstance(value, str):
        _malformed(f"the JOSE header's {name} must be a string")
    return value


def _check_critical(header: dict[str, Any]) -> None:
    crit = header["crit"]
    if not isinstance(crit, list) or not crit:
        _malformed("crit must be a non-empty list of header parameter names")
    if not all(isinstance(name, str) and name for name in crit) or len(set(crit)) != len(crit):
        _malformed("crit must list distinct, non-empty header parameter names")
    for name in crit:
        if name in _REGISTERED:
            _malformed(f"crit must not list {name!r}, which the JWS specification defines")
        if name not in header:
            _malformed(f"crit lists {name[:40]!r}, which the header does not carry")
    for name in crit:
        if name not in UNDERSTOOD_CRITICAL:
            _malformed(f"critical header parameter {name[:40]!r} is not understood")


def parse_header(token: str) -> JoseHeader:
    """The JOSE header of a compact JWS, validated (see the module docstring). The caller has
    bounded the token's length."""
    if token.count(".") != 2 or not set(token) <= _B64URL_AND_DOT:
        _malformed("not a compact JWS: three base64url segments separated by dots")
    header_segment = token[: token.index(".")]
    if not header_segment:
        _malformed("the JOSE header is empty")
    _b64url_decode(token[len(header_segment) + 1 : token.rindex(".")])  # payload: same rules
    _b64url_decode(token[token.rindex(".") + 1 :])  # signature: same rules
    raw = _b64url_decode(header_segment)
    try:
        header = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_members, parse_constant=_not_json
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        _malformed("the JOSE header is not UTF-8 JSON")
    if not isinstance(header, dict):
        _malformed("the JOSE header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        _malformed("the JOSE header's alg must be a non-empty string")
    kid = _optional_string(header, "kid")
    if kid is not None and not 0 < len(kid) <= MAX_KID_CHARS:
        _malformed(f"the JOSE header's kid must be 1 to {MAX_KID_CHARS} characters")
    typ = _optional_string(header, "typ")
    _optional_string(header, "cty")
    if "crit" in header:
        _check_critical(header)
    if "b64" in header:
        _malformed("unencoded payloads (RFC 7797 b64) are not accepted")
    return JoseHeader(alg, kid, typ)
