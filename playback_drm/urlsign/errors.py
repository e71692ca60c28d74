"""The errors of signed-URL verification: all HTTP 403, each with a stable ``code``."""

from __future__ import annotations

from typing import ClassVar

from playback_drm.problem import PlaybackError


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
