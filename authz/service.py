"""The authorizer: runs token verification and entitlement lookups around the pure decision code."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from authz import decision, metrics
from authz.decision import Allow, CheckInput, Decision, Deny
from authz.entitlement import EntitlementCache
from authz.errors import TokenMissing
from authz.tokens import TokenVerifier
from playback_drm import contract, identity, tracing
from playback_drm.problem import PlaybackError

log = logging.getLogger(__name__)
_TOKEN_HIT = metrics.CACHE.labels("tokens", "hit")
_TOKEN_MISS = metrics.CACHE.labels("tokens", "miss")
_ENTITLEMENT_HIT = metrics.CACHE.labels("entitlements", "hit")
_ENTITLEMENT_MISS = metrics.CACHE.labels("entitlements", "miss")


class UrlVerifier(Protocol):
    """Verifies a signed media URL; raises a PlaybackError (403) when it does not verify."""

    def __call__(self, path: str, query: str, client_ip: str | None) -> Any: ...


class Authorizer:
    def __init__(
        self,
        verifier: TokenVerifier,
        entitlements: EntitlementCache,
        url_verifier: UrlVerifier,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = verifier
        self._entitlements = entitlements
        self._url_verifier = url_verifier
        self._clock = clock

    async def check(self, inp: CheckInput) -> Decision:
        try:
            if inp.mode == contract.MODE_SIGNED_URL:
                return self._check_signed_url(inp)
            return await self._check_jwt(inp)
        except PlaybackError as exc:
            return decision.deny(exc)
        except Exception:  # fail closed, visibly
            log.exception("authorization failed unexpectedly")
            return Deny(503, "authz_internal_error", "Authorization failed", "internal error")

    async def _check_jwt(self, inp: CheckInput) -> Decision:
        token = decision.extract_token(inp)
        if token is None:
            raise TokenMissing("a JWT is required: Authorization: Bearer or ?token=")
        ident = self._verifier.cached(token)
        if ident is None:
            _TOKEN_MISS.inc()
            ident = await self._verifier.verify(token)
        else:
            _TOKEN_HIT.inc()
        remove = inp.authorization is None or decision.has_token_param(inp.query)
        if inp.mode == contract.MODE_JWT_ONLY:
            return decision.identified(ident, remove)
        video = decision.video_for(inp)
        cached = self._entitlements.cached(ident.sub, video)
        if cached is not None:
            _ENTITLEMENT_HIT.inc()
            return decision.entitled(ident, cached, remove)
        _ENTITLEMENT_MISS.inc()
        with tracing.span(tracing.AUTHZ_ENTITLEMENT, videoId=video, userId=ident.sub):
            ent = await self._entitlements.get(ident.sub, video)
        return decision.entitled(ident, ent, remove)

    def _check_signed_url(self, inp: CheckInput) -> Decision:
        video = decision.video_for(inp)
        verified = self._url_verifier(inp.path, inp.query, inp.client_ip)
        headers: list[tuple[str, str]] = [(identity.VIDEO_HEADER, video)]
        session = getattr(verified, "session_id", None)
        if isinstance(session, str) and session:
            headers.append((identity.SESSION_HEADER, session))
        return Allow(tuple(headers), ("pdt",))
