"""Errors of the authz service. Each maps to one Envoy denial (status, problem+json, metric label).

PlaybackError (playback_drm.problem)
└── AuthzError
    ├── TokenError                 401, WWW-Authenticate: Bearer error="invalid_token"
    │   ├── TokenMissing           no token in the `token` query parameter or Bearer header
    │   ├── TokenMalformed         not a compact JWS, bad base64/JSON, oversized
    │   ├── TokenAlgorithmRejected alg none, not allowlisted, or not matching the key type
    │   ├── TokenUnknownKey        kid not in the Auth service's JWKS (after a refresh)
    │   ├── TokenBadSignature      signature does not verify
    │   ├── TokenExpired           exp in the past (beyond leeway)
    │   ├── TokenNotYetValid       nbf/iat in the future (beyond leeway)
    │   └── TokenClaimsInvalid     wrong iss/aud, missing sub/exp
    ├── NotEntitled                403, Billing says no (no subscription, plan too low, ...)
    ├── StreamLimitReached         403, the viewer already holds as many stream slots as allowed
    ├── SessionEnded               403, the URL's playback session ended or idled out
    ├── SessionRequired            403, a key, license end or heartbeat URL not bound to a session
    ├── VideoNotSpecified          400, the request names no video to check
    ├── KeySourceUnavailable       503, JWKS cannot be fetched and no cached key fits
    ├── SessionsUnavailable        503, a key or license URL whose session cannot be looked up
    └── BillingUnavailable         503, Billing unreachable/timed out/invalid answer
"""

from __future__ import annotations

from typing import ClassVar

from playback_drm.problem import PlaybackError


class AuthzError(PlaybackError):
    code: ClassVar[str] = "authz_error"


class TokenError(AuthzError):
    code: ClassVar[str] = "invalid_token"
    status: ClassVar[int] = 401
    title: ClassVar[str] = "Invalid token"


class TokenMissing(TokenError):
    code = "token_missing"
    title = "Token missing"


class TokenMalformed(TokenError):
    code = "token_malformed"
    title = "Malformed token"


class TokenAlgorithmRejected(TokenError):
    code = "token_algorithm_rejected"
    title = "Token algorithm not allowed"


class TokenUnknownKey(TokenError):
    code = "token_unknown_key"
    title = "Token signed by an unknown key"


class TokenBadSignature(TokenError):
    code = "token_bad_signature"
    title = "Token signature invalid"


class TokenExpired(TokenError):
    code = "token_expired"
    title = "Token expired"


class TokenNotYetValid(TokenError):
    code = "token_not_yet_valid"
    title = "Token not yet valid"


class TokenClaimsInvalid(TokenError):
    code = "token_claims_invalid"
    title = "Token claims invalid"


class NotEntitled(AuthzError):
    code = "not_entitled"
    status = 403
    title = "Not entitled"


class StreamLimitReached(AuthzError):
    """A new stream (a playback session's first key or license) while the viewer already holds
    as many concurrent-stream slots as the entitlement allows. A policy decision the viewer acts on
    (stop another playback), not a rate limit: 403, not 429."""

    code = "stream_limit_reached"
    status = 403
    title = "Concurrent stream limit reached"


class RateLimited(AuthzError):
    """The viewer is over the per-user rate limit (``authz.ratelimit``): 429, with Retry-After
    and the quota headers added where the check answers (``authz.server``)."""

    code = "rate_limited"
    status = 429
    title = "Too many requests"


class SessionEnded(AuthzError):
    """A session-bound URL whose playback session was ended (explicitly, by a license release or
    by idleness) or is unknown: playback has to start again from the manifest."""

    code = "playback_session_ended"
    status = 403
    title = "Playback session ended"


class SessionRequired(AuthzError):
    """Key delivery and the session routes need a URL signed for a playback session."""

    code = "playback_session_required"
    status = 403
    title = "Playback session required"


class VideoNotSpecified(AuthzError):
    code = "video_not_specified"
    status = 400
    title = "No video specified"


class KeySourceUnavailable(AuthzError):
    code = "key_source_unavailable"
    status = 503
    title = "Token key source unavailable"


class SessionsUnavailable(AuthzError):
    """The session store cannot be asked and this replica does not know the URL's session: a
    key or license cannot go to a viewer nobody can name (segments still pass)."""

    code = "session_store_unavailable"
    status = 503
    title = "Playback session store unavailable"


class BillingUnavailable(AuthzError):
    code = "billing_unavailable"
    status = 503
    title = "Entitlement service unavailable"
