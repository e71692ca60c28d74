"""Minting and verifying ``pdt`` tokens (the format: :mod:`playback_drm.urlsign`)."""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import ipaddress
import math
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from playback_drm.urlsign.errors import (
    UrlTokenBadSignature,
    UrlTokenBindingMismatch,
    UrlTokenExpired,
    UrlTokenMalformed,
    UrlTokenMissing,
    UrlTokenOutOfScope,
    UrlTokenUnknownKey,
)
from playback_drm.urlsign.keys import KeyRing, SigningKey
from playback_drm.urlsign.paths import TOKEN_PARAM, canonical_path, check_scope, has_traversal

VERSION: Final = "v1"
SIGNATURE_LENGTH: Final = 43  # base64url of 32 bytes, unpadded
IP_FINGERPRINT_LENGTH: Final = 11  # base64url of 8 bytes, unpadded
MAX_EXP_DIGITS: Final = 12
_B64URL_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_B64_TO_URL: Final = bytes.maketrans(b"+/", b"-_")
_IP_DOMAIN: Final = b"pdt-ip\n"
_PARAM_PREFIX: Final = TOKEN_PARAM + "="


def _b64url(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_B64_TO_URL).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url: raises ValueError on anything non-canonical."""
    if not set(text) <= _B64URL_CHARS or len(text) % 4 == 1:
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64url(raw) != text:  # trailing bits set: a second spelling of the same bytes
        raise ValueError("non-canonical base64url")
    return raw


def _mac(key: SigningKey, message: str) -> str:
    return _b64url(key.mac.digest(message.encode("utf-8", "surrogatepass")))


def _ip_fingerprint(key: SigningKey, ip: str) -> str:
    return _b64url(key.mac.digest(_IP_DOMAIN + ip.encode())[:8])


@functools.lru_cache(maxsize=4096)
def _normalize_ip(ip: str) -> str | None:
    """Canonical text of an address (IPv4-mapped IPv6 becomes IPv4); None if not an address."""
    try:
        address = ipaddress.ip_address(ip.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def expiry_for(now: float, ttl: int, window: int) -> int:
    """``now + ttl`` rounded up to a multiple of ``window``: identical within one window, so
    manifests (and URLs) signed during the same window are byte-identical and cacheable.
    The token lives between ``ttl`` and ``ttl + window`` seconds."""
    earliest = math.ceil(now) + ttl
    if window <= 1:
        return earliest
    return -(-earliest // window) * window


# --------------------------------------------------------------------------------------------
# Signing


class TokenMinter:
    """Everything about a token except the path, prepared once (per manifest rewrite).

    In prefix mode the token does not depend on the path, so it is computed once here.
    """

    __slots__ = ("_head", "_mac", "_prefix_token", "expires_at", "scope")

    def __init__(self, header: str, key: SigningKey, expires_at: int, scope: str | None) -> None:
        self._head = header + "."
        # The header is the same for every path: absorb it into the inner hash once.
        self._mac = key.mac.with_prefix((header + "\n").encode())
        self.expires_at = expires_at
        self.scope = scope
        self._prefix_token = (
            self._head + _b64url(self._mac.digest(b"")) if scope is not None else None
        )

    def token(self, path: str = "") -> str:
        """The ``pdt`` value for ``path`` (ignored in prefix mode)."""
        if self._prefix_token is not None:
            return self._prefix_token
        if path[:1] != "/":
            raise ValueError("per-URL tokens sign an absolute path starting with '/'")
        message = canonical_path(path).encode("utf-8", "surrogatepass")
        return self._head + _b64url(self._mac.digest(message))


def minter(
    ring: KeyRing,
    *,
    expires_at: int,
    scope: str | None = None,
    client_ip: str | None = None,
    session_id: str | None = None,
) -> TokenMinter:
    """Prepare tokens signed with the ring's active key. See :func:`sign`."""
    key = ring.active
    if expires_at < 0:
        raise ValueError("expires_at must be Unix seconds")
    scope_field = ""
    if scope is not None:
        check_scope(scope)
        scope_field = _b64url(scope.encode())
    if client_ip is not None and session_id is not None:
        raise ValueError("bind a token to the client IP or to the session, not both")
    binding = ""
    if client_ip is not None:
        normalized = _normalize_ip(client_ip)
        if normalized is None:
            raise ValueError("client_ip is not an IP address")
        binding = "i:" + _ip_fingerprint(key, normalized)
    elif session_id is not None:
        if not session_id:
            raise ValueError("session_id must not be empty")
        binding = "s:" + _b64url(session_id.encode("utf-8", "surrogatepass"))
    header = f"{VERSION}.{expires_at}.{key.kid}.{scope_field}.{binding}"
    return TokenMinter(header, key, expires_at, scope)


def sign(
    ring: KeyRing,
    path: str,
    *,
    expires_at: int,
    scope: str | None = None,
    client_ip: str | None = None,
    session_id: str | None = None,
) -> str:
    """The ``pdt`` value for ``path`` (per-URL mode), or for everything under ``scope``.

    ``scope`` is a path prefix ending in ``/`` (``/media/{videoId}/``); ``path`` is then unused.
    ``client_ip`` or ``session_id`` bind the token to that client.
    """
    return minter(
        ring, expires_at=expires_at, scope=scope, client_ip=client_ip, session_id=session_id
    ).token(path)


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a valid token proved."""

    kid: str
    expires_at: int
    scope: str | None
    binding: Literal["none", "ip", "session"]
    session_id: str | None = None


def _find_token(query: str) -> str:
    if _PARAM_PREFIX not in query:
        raise UrlTokenMissing()
    found: str | None = None
    for param in query.split("&"):
        if param.startswith(_PARAM_PREFIX):
            if found is not None:
                raise UrlTokenMalformed("more than one pdt parameter")
            found = param[len(_PARAM_PREFIX) :]
    if found is None:
        raise UrlTokenMissing()
    if "%" in found:  # a client re-encoded ':' or similar; tokens never contain '%'
        found = unquote(found, errors="strict") if found.isascii() else found
    if not found:
        raise UrlTokenMalformed("empty pdt parameter")
    return found


def verify(
    ring: KeyRing,
    path: str,
    query: str,
    *,
    now: float,
    client_ip: str | None,
    session_id: str | None = None,
    leeway: int = 0,
) -> VerifiedToken:
    """Check the ``pdt`` token in ``query`` for the request ``path`` (no query, as received).

    ``client_ip`` is required for IP-bound tokens. For session-bound tokens, ``session_id`` is
    compared when given; either way the token's session id is returned. Raises a
    :class:`UrlTokenError` subclass; never anything else.
    """
    try:
        token = _find_token(query)
    except UnicodeDecodeError:
        raise UrlTokenMalformed("pdt is not valid percent-encoded UTF-8") from None
    parts = token.split(".")
    if len(parts) != 6:
        raise UrlTokenMalformed("pdt must have six dot-separated fields")
    version, exp_text, kid, scope_field, binding_field, signature = parts
    if version != VERSION:
        raise UrlTokenMalformed("unsupported pdt version")
    if not (0 < len(exp_text) <= MAX_EXP_DIGITS and exp_text.isascii() and exp_text.isdigit()):
        raise UrlTokenMalformed("pdt expiry is not Unix seconds")
    if len(signature) != SIGNATURE_LENGTH:
        raise UrlTokenMalformed("pdt signature has the wrong length")

    scope: str | None = None
    if scope_field:
        try:
            scope = _b64url_decode(scope_field).decode()
        except ValueError:  # includes UnicodeDecodeError
            raise UrlTokenMalformed("pdt scope is not base64url") from None

    kind: Literal["none", "ip", "session"] = "none"
    bound_value = ""
    token_session: str | None = None
    if binding_field:
        tag, colon, bound_value = binding_field.partition(":")
        if not colon or not bound_value:
            raise UrlTokenMalformed("pdt binding is not i:<fp> or s:<session>")
        if tag == "i":
            kind = "ip"
            if len(bound_value) != IP_FINGERPRINT_LENGTH:
                raise UrlTokenMalformed("pdt IP fingerprint has the wrong length")
        elif tag == "s":
            kind = "session"
            try:
                token_session = _b64url_decode(bound_value).decode()
            except ValueError:
                raise UrlTokenMalformed("pdt session is not base64url") from None
        else:
            raise UrlTokenMalformed("pdt binding is not i:<fp> or s:<session>")

    key = ring.get(kid)
    if key is None:
        raise UrlTokenUnknownKey()
    if not key.usable_at(now):
        raise UrlTokenUnknownKey("signing key retired")

    header = token[: -SIGNATURE_LENGTH - 1]
    canonical = canonical_path(path)
    expected = _mac(key, header + "\n" + ("" if scope is not None else canonical))
    if not hmac.compare_digest(expected, signature):
        raise UrlTokenBadSignature()

    expires_at = int(exp_text)
    if now > expires_at + leeway:
        raise UrlTokenExpired()

    if scope is not None and (not canonical.startswith(scope) or has_traversal(canonical)):
        raise UrlTokenOutOfScope()

    if kind == "ip":
        normalized = _normalize_ip(client_ip) if client_ip is not None else None
        if normalized is None or not hmac.compare_digest(
            _ip_fingerprint(key, normalized), bound_value
        ):
            raise UrlTokenBindingMismatch("token bound to another client address")
    elif kind == "session" and session_id is not None and session_id != token_session:
        raise UrlTokenBindingMismatch("token bound to another session")

    return VerifiedToken(
        kid=kid, expires_at=expires_at, scope=scope, binding=kind, session_id=token_session
    )
