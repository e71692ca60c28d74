"""Signed URLs: our own HMAC-SHA256 URL token, minted by extproc and verified by authz.

One query parameter, ``pdt`` (playback token), so stripping it restores the original URL exactly::

    pdt=v1.<exp>.<kid>.<scope>.<binding>.<sig>

``v1``
    format version.
``exp``
    expiry, Unix seconds, ASCII digits.
``kid``
    key id, 1-32 characters of ``[A-Za-z0-9_-]``; selects the secret in the :class:`KeyRing`.
``scope``
    empty in per-URL mode (the signature covers the request path); in prefix mode the
    base64url (unpadded) of a path prefix ending in ``/`` (``/media/{videoId}/``): one token for
    every URL under it, so a CDN cache key that ignores the token sees identical URLs.
``binding``
    empty (bearer token); ``i:<fp>`` bound to the client IP, where ``fp`` is the first 64 bits
    (base64url) of ``HMAC(secret, "pdt-ip\\n" + ip)`` so the address never appears in the URL
    and a changed address is told apart from a forged signature; or ``s:<sid>`` bound to a
    session, ``sid`` the base64url of the session id (returned by :func:`verify`, so authz can
    check that the session is still alive).
``sig``
    base64url (unpadded) of ``HMAC-SHA256(secret, header + "\\n" + path)`` where ``header``
    is everything before the last dot (version, exp, kid, scope, binding) and ``path`` is the
    request path in per-URL mode (in the :func:`canonical_path` form) and empty in prefix
    mode. Because the MAC covers the header exactly as written, any change to any byte of the
    token fails.

The value only contains ``[A-Za-z0-9_.:-]``: URL-safe, no ``$`` (DASH templates) or ``&``.
Query parameters other than ``pdt`` are not covered, so the ones players add later
(LL-HLS ``_HLS_msn``, ``_HLS_part``, ``_HLS_skip``) survive.

Errors (all HTTP 403, each with a stable ``code``)::

    UrlTokenError                  url_token_invalid       base class
    ├── UrlTokenMissing            url_token_missing       no pdt parameter
    ├── UrlTokenMalformed          url_token_malformed     not the v1 shape, bad fields
    ├── UrlTokenExpired            url_token_expired       exp (+ leeway) is in the past
    ├── UrlTokenUnknownKey         url_token_unknown_key   kid not in the ring, or retired
    ├── UrlTokenBadSignature       url_token_bad_signature MAC does not match
    ├── UrlTokenOutOfScope         url_token_out_of_scope  path not under the scope, or traversal
    └── UrlTokenBindingMismatch    url_token_binding_mismatch  other client IP or session

This module imports nothing from the services: authz and extproc both use it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import math
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal
from urllib.parse import quote, unquote

from playback_drm.problem import PlaybackError
from playback_drm.settings import ConfigError

__all__ = [
    "MIN_SECRET_BYTES",
    "TOKEN_PARAM",
    "HmacSha256",
    "KeyRing",
    "SigningKey",
    "TokenMinter",
    "UrlTokenBadSignature",
    "UrlTokenBindingMismatch",
    "UrlTokenError",
    "UrlTokenExpired",
    "UrlTokenMalformed",
    "UrlTokenMissing",
    "UrlTokenOutOfScope",
    "UrlTokenUnknownKey",
    "VerifiedToken",
    "append_token",
    "canonical_path",
    "expiry_for",
    "has_traversal",
    "minter",
    "sign",
    "strip_token",
    "verify",
]

TOKEN_PARAM = "pdt"  # noqa: S105 - a parameter name, not a secret
VERSION = "v1"
MIN_SECRET_BYTES = 32
MAX_KID_LENGTH = 32
SIGNATURE_LENGTH = 43  # base64url of 32 bytes, unpadded
IP_FINGERPRINT_LENGTH = 11  # base64url of 8 bytes, unpadded
MAX_EXP_DIGITS = 12

_KID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_B64URL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_B64_TO_URL = bytes.maketrans(b"+/", b"-_")
_IP_DOMAIN = b"pdt-ip\n"
_PARAM_PREFIX = TOKEN_PARAM + "="


# --------------------------------------------------------------------------------------------
# Errors


class UrlTokenError(PlaybackError):
    """A signed URL was refused. Never raised directly; every subclass has its own code."""

    code: ClassVar[str] = "url_token_invalid"
    status: ClassVar[int] = 403
    title: ClassVar[str] = "Invalid signed URL"


class UrlTokenMissing(UrlTokenError):
    """The request carries no ``pdt`` parameter."""

    code = "url_token_missing"
    title = "Signed URL token missing"


class UrlTokenMalformed(UrlTokenError):
    """The ``pdt`` value does not parse (wrong shape, version, field syntax, duplicates)."""

    code = "url_token_malformed"
    title = "Signed URL token malformed"


class UrlTokenExpired(UrlTokenError):
    """The token's expiry (plus leeway) is in the past."""

    code = "url_token_expired"
    title = "Signed URL expired"


class UrlTokenUnknownKey(UrlTokenError):
    """The key id is not in the ring, or the key has been retired."""

    code = "url_token_unknown_key"
    title = "Signed URL key unknown"


class UrlTokenBadSignature(UrlTokenError):
    """The MAC does not match: the URL or the token was changed, or it was never ours."""

    code = "url_token_bad_signature"
    title = "Signed URL signature invalid"


class UrlTokenOutOfScope(UrlTokenError):
    """A prefix token was used outside its prefix, or the path tries to escape it."""

    code = "url_token_out_of_scope"
    title = "Signed URL used outside its scope"


class UrlTokenBindingMismatch(UrlTokenError):
    """The token is bound to another client IP or session."""

    code = "url_token_binding_mismatch"
    title = "Signed URL bound to another client"


# --------------------------------------------------------------------------------------------
# Keys


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_SHA256_BLOCK = 64


class HmacSha256:
    """HMAC-SHA256 (RFC 2104) with the padded key's inner and outer hash states precomputed.

    Measured here: 0.6 us per MAC for a URL-sized message, against 1.5-1.8 us for the one-shot
    ``hmac.digest`` (OpenSSL 3 fetches the algorithm on every call). Copies of hashlib objects
    are safe to take from several threads.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes) -> None:
        if len(secret) > _SHA256_BLOCK:
            secret = hashlib.sha256(secret).digest()
        block = secret.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def with_prefix(self, prefix: bytes) -> HmacSha256:
        """The same key with ``prefix`` already absorbed: ``digest(m)`` is HMAC(prefix + m)."""
        clone = HmacSha256.__new__(HmacSha256)
        clone._inner = self._inner.copy()
        clone._inner.update(prefix)
        clone._outer = self._outer
        return clone

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One HMAC secret. ``retire_after`` (Unix seconds): stops verifying after that instant."""

    kid: str
    secret: bytes = field(repr=False)
    retire_after: float | None = None
    mac: HmacSha256 = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (0 < len(self.kid) <= MAX_KID_LENGTH) or not set(self.kid) <= _KID_CHARS:
            raise ConfigError(
                f"key id {self.kid!r} must be 1-{MAX_KID_LENGTH} characters of [A-Za-z0-9_-]"
            )
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"secret of key {self.kid!r} has {len(self.secret)} bytes; "
                f"at least {MIN_SECRET_BYTES} are required"
            )
        object.__setattr__(self, "mac", HmacSha256(self.secret))

    def usable_at(self, now: float) -> bool:
        return self.retire_after is None or now <= self.retire_after


class KeyRing:
    """Keys by id: one active key signs; every key verifies until its ``retire_after``.

    Rotation without downtime: publish the new key everywhere first (it verifies but does not
    sign), then make it active; keep the old key with ``retire_after`` set to the moment the
    last URL it signed expires.
    """

    __slots__ = ("_active", "_keys")

    def __init__(self, keys: Iterable[SigningKey], *, active: str) -> None:
        by_kid: dict[str, SigningKey] = {}
        for key in keys:
            if key.kid in by_kid:
                raise ConfigError(f"key id {key.kid!r} appears twice in the key ring")
            by_kid[key.kid] = key
        if active not in by_kid:
            raise ConfigError(f"active key id {active!r} is not in the key ring")
        if by_kid[active].retire_after is not None:
            raise ConfigError(f"active key {active!r} cannot have a retire_after time")
        self._keys = by_kid
        self._active = by_kid[active]

    @property
    def active(self) -> SigningKey:
        return self._active

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def get(self, kid: str) -> SigningKey | None:
        return self._keys.get(kid)

    def __repr__(self) -> str:
        return f"KeyRing(kids={list(self._keys)!r}, active={self._active.kid!r})"

    def rotated(self, new_key: SigningKey, *, retire_previous_after: float) -> KeyRing:
        """A ring where ``new_key`` signs and the current key verifies until the given time."""
        previous = SigningKey(
            self._active.kid, self._active.secret, retire_after=retire_previous_after
        )
        others = [k for k in self._keys.values() if k.kid not in (previous.kid, new_key.kid)]
        return KeyRing([new_key, previous, *others], active=new_key.kid)

    @classmethod
    def from_spec(cls, spec: str, *, name: str = "URL_SIGNING_KEYS") -> KeyRing:
        """Parse ``kid1:base64secret[:retire_after],kid2:base64secret[:retire_after]``.

        The first key is active. Secrets are base64 or base64url, padding optional. ``name``
        (the environment variable) appears in error messages; secrets never do.
        """
        keys: list[SigningKey] = []
        for index, item in enumerate(part.strip() for part in spec.split(",")):
            if not item:
                continue
            fields = item.split(":")
            if len(fields) not in (2, 3) or not fields[0] or not fields[1]:
                raise ConfigError(
                    f"{name}: entry {index + 1} must be kid:base64secret[:retire_after]"
                )
            retire_after: float | None = None
            if len(fields) == 3:
                try:
                    retire_after = float(fields[2])
                except ValueError:
                    raise ConfigError(
                        f"{name}: retire_after of key {fields[0]!r} must be Unix seconds"
                    ) from None
            try:
                keys.append(
                    SigningKey(fields[0], _decode_secret(fields[1]), retire_after=retire_after)
                )
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            except ValueError:
                raise ConfigError(f"{name}: secret of key {fields[0]!r} is not base64") from None
        if not keys:
            raise ConfigError(f"{name} contains no keys")
        return cls(keys, active=keys[0].kid)

    @classmethod
    def from_mapping(
        cls,
        secrets: Mapping[str, str | bytes],
        *,
        active: str,
        retire_after: Mapping[str, float] | None = None,
    ) -> KeyRing:
        """Build from ``{kid: secret}`` (raw bytes, or base64 text as stored in Vault KV)."""
        retire = retire_after or {}
        keys: list[SigningKey] = []
        for kid, secret in secrets.items():
            try:
                raw = secret if isinstance(secret, bytes) else _decode_secret(secret)
            except ValueError:
                raise ConfigError(f"secret of key {kid!r} is not base64") from None
            keys.append(SigningKey(kid, raw, retire_after=retire.get(kid)))
        return cls(keys, active=active)


def _decode_secret(text: str) -> bytes:
    cleaned = text.strip().replace("-", "+").replace("_", "/").rstrip("=")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64") from exc


# --------------------------------------------------------------------------------------------
# Encoding helpers


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


def _check_scope(scope: str) -> None:
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
        _check_scope(scope)
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


# --------------------------------------------------------------------------------------------
# Verification


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
