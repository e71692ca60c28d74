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

Modules: ``keys`` (HMAC, the key ring), ``paths`` (canonical paths, adding and removing the
parameter), ``tokens`` (mint and verify), ``errors``. This package imports nothing from the
services: authz and extproc both use it.
"""

from __future__ import annotations

from playback_drm.urlsign.errors import (
    UrlTokenBadSignature,
    UrlTokenBindingMismatch,
    UrlTokenError,
    UrlTokenExpired,
    UrlTokenMalformed,
    UrlTokenMissing,
    UrlTokenOutOfScope,
    UrlTokenUnknownKey,
)
from playback_drm.urlsign.keys import MIN_SECRET_BYTES, HmacSha256, KeyRing, SigningKey
from playback_drm.urlsign.paths import (
    TOKEN_PARAM,
    append_token,
    canonical_path,
    has_traversal,
    strip_token,
)
from playback_drm.urlsign.tokens import TokenMinter, VerifiedToken, expiry_for, minter, sign, verify

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
