"""Errors of the license broker. Each has a stable ``code`` (also a metric label) and a status.

    PlaybackError (playback_drm.problem)
    └── BrokerError
        ├── MissingIdentity          401, the x-playback-* headers from authz absent or malformed
        ├── VideoMismatch            403, x-playback-video names another video than the request
        ├── NotEntitledToTrack       403, every requested key is above the viewer's tier (UHD, ...)
        ├── PersistenceNotAllowed    403, a persistent license was asked for on a plan without it
        ├── UnknownVideo             404, the key store has no keys for this video
        ├── UnknownKeyId             404, a requested key id is not one of the video's keys
        ├── BadRequest               400, the request envelope is unusable (JSON, base64, fields)
        │   └── MalformedChallenge   400, the license challenge itself cannot be read
        ├── UnsupportedKeySystem     400, unknown key system, or one without a configured provider
        ├── RequestTooLarge          413, body above MAX_BODY_BYTES
        ├── ProviderError            the DRM provider could not issue the license
        │   ├── ProviderRejected     502, the provider answered with a refusal (status, SOAP fault)
        │   ├── ProviderBadResponse  502, the provider answered something we cannot read
        │   ├── ProviderUnavailable  503, unreachable, 5xx, or its circuit breaker is open
        │   └── ProviderTimeout      504, no answer within PROVIDER_TIMEOUT
        └── KeyStoreUnavailable      503, Vault is unreachable and no cached keys are usable

``ProviderBadResponse``, ``ProviderUnavailable`` and ``ProviderTimeout`` count as provider failures
for the circuit breaker; ``ProviderRejected`` proves the provider is alive.

(Concurrent-stream limits are authz's: ``authz.errors.StreamLimitReached``.)
"""

from __future__ import annotations

from typing import Any, ClassVar

from playback_drm.problem import PlaybackError


class BrokerError(PlaybackError):
    code: ClassVar[str] = "broker_error"


class MissingIdentity(BrokerError):
    code = "missing_identity"
    status = 401
    title = "Viewer identity missing"


class VideoMismatch(BrokerError):
    code = "video_mismatch"
    status = 403
    title = "Request does not match the authorized video"


class NotEntitledToTrack(BrokerError):
    code = "not_entitled_to_track"
    status = 403
    title = "Not entitled to this track or quality"


class PersistenceNotAllowed(BrokerError):
    code = "persistence_not_allowed"
    status = 403
    title = "Persistent licenses are not allowed for this plan"


class UnknownVideo(BrokerError):
    code = "unknown_video"
    status = 404
    title = "Unknown video"


class UnknownKeyId(BrokerError):
    code = "unknown_key_id"
    status = 404
    title = "Unknown key id"


class BadRequest(BrokerError):
    code = "bad_request"
    status = 400
    title = "Bad request"


class MalformedChallenge(BadRequest):
    code = "malformed_challenge"
    title = "Malformed license challenge"


class UnsupportedKeySystem(BrokerError):
    code = "unsupported_key_system"
    status = 400
    title = "Unsupported key system"


class RequestTooLarge(BrokerError):
    code = "request_too_large"
    status = 413
    title = "Request body too large"


class ProviderError(BrokerError):
    code = "provider_error"
    status = 502
    title = "DRM provider error"


class ProviderRejected(ProviderError):
    """The provider refused. ``relay`` holds a provider answer that native clients should see
    verbatim (a PlayReady SOAP fault), as ``(status, content_type, body)``."""

    code = "provider_rejected"
    status = 502
    title = "DRM provider rejected the request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        relay: tuple[int, str, bytes] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail, **extensions)
        self.relay = relay


class ProviderBadResponse(ProviderError):
    code = "provider_bad_response"
    status = 502
    title = "DRM provider answered an unreadable response"


class ProviderUnavailable(ProviderError):
    code = "provider_unavailable"
    status = 503
    title = "DRM provider unavailable"


class ProviderTimeout(ProviderError):
    code = "provider_timeout"
    status = 504
    title = "DRM provider timed out"


class KeyStoreUnavailable(BrokerError):
    code = "key_store_unavailable"
    status = 503
    title = "Key store unavailable"


PROVIDER_FAILURES: tuple[type[ProviderError], ...] = (
    ProviderBadResponse,
    ProviderUnavailable,
    ProviderTimeout,
)
"""Errors that mean the provider is unhealthy (they open the circuit breaker)."""
