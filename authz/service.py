"""The authorizer: runs token verification, entitlement lookups and the playback-session registry
around the pure decision code, one flow per check mode (``playback_drm.contract``).

=======================  ===========================================================================
``session_start``        entry manifests: JWT + entitlement, then a new playback session whose id
                         the manifest signer binds into every URL it signs
``signed_url``           a signed media URL; when bound to a session, a sign of life of it, and the
                         identity headers come from the session; on a playlist the viewer's
                         entitlement is re-checked (cached), and a revoked one ends the session
``key``                  a session's signed HLS key URL: entitlement re-checked, a stream slot taken
``license``              the session's signed license URL (as ``key``), or a viewer JWT (the
                         JWT-only rule of ``authz.sessions``); a Widevine release ends the session
``session_end``          the session's signed end URL: ended at once (idempotent)
``session_heartbeat``    the session's signed heartbeat URL: a sign of life
``jwt``, ``jwt_only``    JWT (+ entitlement for ``jwt``), no session
=======================  ===========================================================================

Long sessions: a session-bound playlist, license or heartbeat URL (what a player re-fetches for
as long as it plays) whose token has expired is accepted while its session is alive and its
viewer still entitled (docs/ARCHITECTURE.md, "Long sessions"), so no lifetime setting ever
stops an entitled viewer; segments and keys need unexpired tokens (each playlist refresh signs
them anew).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from authz import decision, metrics
from authz.challenges import LicenseMessage, license_message
from authz.decision import Allow, CheckInput, Decision, Deny
from authz.entitlement import Entitlement, EntitlementCache
from authz.errors import (
    BillingUnavailable,
    NotEntitled,
    SessionEnded,
    SessionRequired,
    SessionsUnavailable,
    TokenMissing,
)
from authz.ratelimit import Charge
from authz.registry import SessionRegistry
from authz.sessions import Kind, SessionFacts, jwt_label
from authz.tokens import Identity, TokenVerifier
from playback_drm import contract, identity, tracing
from playback_drm.problem import PlaybackError
from playback_drm.urlsign import UrlTokenExpired

log = logging.getLogger(__name__)
_TOKEN_HIT = metrics.CACHE.labels("tokens", "hit")
_TOKEN_MISS = metrics.CACHE.labels("tokens", "miss")
_ENTITLEMENT_HIT = metrics.CACHE.labels("entitlements", "hit")
_ENTITLEMENT_MISS = metrics.CACHE.labels("entitlements", "miss")
_URL_TOKEN_ONLY: Final = ("pdt",)
_LICENSE_SCOPE: Final = contract.LICENSE_PATH + "/"  # the JSON form's license URLs
# An end URL ends its session whenever it comes: ending is harmless, and the signature still has
# to verify. (Heartbeats, keys and licenses need an unexpired token.)
END_URL_LEEWAY: Final = 30 * 86400
# How long past its expiry a session URL a player re-fetches (playlist, license, heartbeat) may
# still be accepted, given its session is alive and its viewer entitled: as long as anyone plays.
RENEWAL_LEEWAY: Final = 30 * 86400
_ACCEPTED = metrics.RENEWALS.labels("accepted")
_REFUSED = metrics.RENEWALS.labels("refused")
_HELD = metrics.REVALIDATIONS.labels("held")
_REVOKED = metrics.REVALIDATIONS.labels("revoked")
_UNCHECKED = metrics.REVALIDATIONS.labels("unchecked")


class UrlVerifier(Protocol):
    """Verifies a signed URL; raises a PlaybackError (403) when it does not verify. The result
    names the session the URL is bound to (``session_id``), if any."""

    def __call__(self, path: str, query: str, client_ip: str | None, leeway: int = 0) -> Any: ...


@dataclass(slots=True)
class _Who:
    """Who a check is about, as far as it got: what a denial's PlaybackError event names."""

    user: str | None = None
    video: str | None = None
    # the request's hit on the per-user rate limit, for the session store to count in the round
    # trip it makes anyway (authz.ratelimit.Charge); None: the route does not count, or the
    # window is not in Redis
    charge: Charge | None = None


Flow = Callable[["Authorizer", CheckInput, _Who], Awaitable[Decision]]


class Authorizer:
    def __init__(
        self,
        verifier: TokenVerifier,
        entitlements: EntitlementCache,
        url_verifier: UrlVerifier,
        sessions: SessionRegistry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = verifier
        self._entitlements = entitlements
        self._url_verifier = url_verifier
        self.sessions = sessions
        self._clock = clock

    async def check(self, inp: CheckInput, charge: Charge | None = None) -> Decision:
        who = _Who(charge=charge)
        try:
            flow = _FLOWS.get(inp.mode, Authorizer._check_jwt)
            return await flow(self, inp, who)
        except PlaybackError as exc:
            return decision.deny(exc, user=who.user, video=who.video)
        except Exception:  # fail closed, visibly
            log.exception("authorization failed unexpectedly")
            return Deny(
                503,
                "authz_internal_error",
                "Authorization failed",
                "internal error",
                None,
                who.user,
                who.video,
            )

    # --------------------------------------------------------------------------- the viewer

    async def _identity(self, inp: CheckInput, who: _Who) -> tuple[Identity, bool]:
        token = decision.extract_token(inp)
        if token is None:
            raise TokenMissing("a JWT is required: Authorization: Bearer or ?token=")
        ident = self._verifier.cached(token)
        if ident is None:
            _TOKEN_MISS.inc()
            ident = await self._verifier.verify(token)
        else:
            _TOKEN_HIT.inc()
        who.user = ident.sub
        return ident, inp.authorization is None or decision.has_token_param(inp.query)

    async def _entitlement(self, user: str, video: str) -> Entitlement:
        """Billing's answer (cached); raises :class:`NotEntitled` when it is no."""
        cached = self._entitlements.cached(user, video)
        if cached is not None:
            _ENTITLEMENT_HIT.inc()
            return decision.require_entitled(cached)
        _ENTITLEMENT_MISS.inc()
        with tracing.span(tracing.AUTHZ_ENTITLEMENT, videoId=video, userId=user):
            ent = await self._entitlements.get(user, video)
        return decision.require_entitled(ent)

    async def _entitled_viewer(
        self, inp: CheckInput, who: _Who
    ) -> tuple[Identity, Entitlement, tuple[str, ...]]:
        ident, remove = await self._identity(inp, who)
        who.video = decision.video_for(inp)
        ent = await self._entitlement(ident.sub, who.video)
        return ident, ent, (decision.TOKEN_PARAM,) if remove else ()

    def _limit(self, ent: Entitlement) -> int:
        return self.sessions.limits.limit_for(ent.plan, ent.facts.get("maxStreams"))

    # -------------------------------------------------------------------------------- flows

    async def _check_jwt(self, inp: CheckInput, who: _Who) -> Decision:
        if inp.mode == contract.MODE_JWT_ONLY:
            ident, remove = await self._identity(inp, who)
            return decision.identified(ident, remove)
        ident, ent, removed = await self._entitled_viewer(inp, who)
        return Allow(_headers(ident.sub, ent, None), removed)

    async def _start_session(self, inp: CheckInput, who: _Who) -> Decision:
        ident, ent, removed = await self._entitled_viewer(inp, who)
        facts = await self.sessions.start(
            user=ident.sub,
            video=ent.video,
            plan=ent.plan or "",
            entitlement=ent.facts_header,
            label=jwt_label(ident.session),
        )
        return Allow(_headers(ident.sub, ent, facts.sid), removed)

    async def _session_of(
        self, inp: CheckInput, who: _Who, *, leeway: int = 0, renewable: bool = False
    ) -> tuple[str, SessionFacts | None]:
        """The session a signed URL is bound to (raises :class:`SessionRequired` for a URL
        bound to none) and its facts (None: the store cannot be asked, see the registry).
        ``renewable``: an expired token is accepted while the session is alive and its viewer
        entitled (:meth:`_renew`)."""
        if renewable:
            verified, expired = self._verify_renewable(inp)
        else:
            verified, expired = (
                self._url_verifier(inp.path, inp.query, inp.client_ip, leeway),
                False,
            )
        sid = getattr(verified, "session_id", None)
        if not isinstance(sid, str) or not sid:
            raise SessionRequired("this URL must be signed for a playback session")
        facts = await self.sessions.lookup(sid)
        if facts is not None:
            who.user, who.video = facts.user, who.video or facts.video
        if expired:
            await self._renew(facts, who.video or (facts.video if facts else ""))
        return sid, facts

    def _verify_renewable(self, inp: CheckInput) -> tuple[Any, bool]:
        """The verified token of a URL a player re-fetches, and whether it had expired: an
        expired token counts only when it is bound to a session and is the URL's own (per-URL,
        or the session's license scope), never a segment token's video-wide prefix."""
        try:
            return self._url_verifier(inp.path, inp.query, inp.client_ip), False
        except UrlTokenExpired:
            verified = self._url_verifier(inp.path, inp.query, inp.client_ip, RENEWAL_LEEWAY)
            scope = getattr(verified, "scope", None)
            if not getattr(verified, "session_id", None) or scope not in (None, _LICENSE_SCOPE):
                _REFUSED.inc()
                raise
            return verified, True

    async def _renew(self, facts: SessionFacts | None, video: str) -> None:
        """An expired session URL: accepted while the session is alive (the store says so) and
        its viewer entitled (Billing, through the cache); else the token's expiry stands."""
        if facts is None:  # the store is away: nobody can say the session is alive
            _REFUSED.inc()
            raise SessionsUnavailable("the playback session cannot be looked up; retry")
        limit = self.sessions.limits.limit_for(facts.plan, facts.max_streams)
        try:
            outcome = await self.sessions.check(facts, limit, Kind.LIFE)
            if outcome is None:
                raise SessionsUnavailable("the playback session cannot be looked up; retry")
            await self._entitlement(facts.user, video)
        except PlaybackError as exc:
            _REFUSED.inc()
            if isinstance(exc, NotEntitled):
                _REVOKED.inc()
                await self.sessions.end(facts)
            raise
        _ACCEPTED.inc()

    async def _revalidate(self, facts: SessionFacts, video: str) -> None:
        """A playlist refresh of a session: the viewer must still be entitled (the cache in
        front of Billing decides how soon a revocation shows). A revoked viewer's session ends
        at once, so its segment and key URLs stop too. Billing unreachable: the session plays
        on (it was entitled when it started; revocations wait until Billing answers)."""
        try:
            await self._entitlement(facts.user, video)
        except NotEntitled:
            _REVOKED.inc()
            await self.sessions.end(facts)
            raise
        except BillingUnavailable:
            _UNCHECKED.inc()
            return
        _HELD.inc()

    async def _check_signed_url(self, inp: CheckInput, who: _Who) -> Decision:
        video = who.video = decision.video_for(inp)
        playlist = contract.is_media_manifest(inp.path)
        if playlist:
            verified, expired = self._verify_renewable(inp)
        else:
            verified, expired = self._url_verifier(inp.path, inp.query, inp.client_ip), False
        sid = getattr(verified, "session_id", None)
        if not isinstance(sid, str) or not sid:  # a bearer or IP-bound URL: what it proves
            return Allow(((identity.VIDEO_HEADER, video),), _URL_TOKEN_ONLY)
        facts = await self.sessions.lookup(sid)
        if facts is not None:
            who.user = facts.user  # (before anything that may refuse: the event names them)
        if expired:
            await self._renew(facts, video)
        if facts is None:  # the store is away and the session unknown here: the token alone
            return Allow(
                ((identity.VIDEO_HEADER, video), (identity.SESSION_HEADER, sid)), _URL_TOKEN_ONLY
            )
        limit = self.sessions.limits.limit_for(facts.plan, facts.max_streams)
        await self.sessions.check(facts, limit, Kind.LIFE, who.charge)
        if playlist and not expired:  # (_renew checked the entitlement already)
            await self._revalidate(facts, video)
        headers = decision.viewer_headers(facts.user, facts.plan, video, facts.entitlement, sid)
        return Allow(headers, _URL_TOKEN_ONLY)

    async def _take_slot(self, facts: SessionFacts, video: str, who: _Who) -> Decision:
        """What decrypts content, through a session: entitlement re-checked, a slot taken."""
        ent = await self._entitlement(facts.user, video)
        await self.sessions.check(facts, self._limit(ent), Kind.SLOT, who.charge)
        return Allow(_headers(facts.user, ent, facts.sid, video), _URL_TOKEN_ONLY)

    async def _check_key(self, inp: CheckInput, who: _Who) -> Decision:
        video = who.video = decision.video_for(inp)
        _sid, facts = await self._session_of(inp, who)
        if facts is None:
            raise SessionsUnavailable("the playback session cannot be looked up; retry")
        return await self._take_slot(facts, video, who)

    async def _check_license(self, inp: CheckInput, who: _Who) -> Decision:
        message = license_message(inp.path, inp.body)
        if not decision.has_url_token(inp.query):
            return await self._license_by_jwt(inp, who, message)
        # The session's signed license URL: its session decides (a JWT beside it is not read).
        _sid, facts = await self._session_of(inp, who, renewable=True)
        if facts is None:
            raise SessionsUnavailable("the playback session cannot be looked up; retry")
        if message is LicenseMessage.RELEASE:
            await self.sessions.end(facts)
        elif message is LicenseMessage.CERTIFICATE_REQUEST:
            limit = self.sessions.limits.limit_for(facts.plan, facts.max_streams)
            await self.sessions.check(facts, limit, Kind.LIFE)
        else:  # a challenge or a renewal: what decrypts content
            return await self._take_slot(facts, facts.video, who)
        headers = decision.viewer_headers(
            facts.user, facts.plan, facts.video, facts.entitlement, facts.sid
        )
        return Allow(headers, _URL_TOKEN_ONLY)

    async def _license_by_jwt(
        self, inp: CheckInput, who: _Who, message: LicenseMessage
    ) -> Decision:
        ident, ent, removed = await self._entitled_viewer(inp, who)
        if message is LicenseMessage.CERTIFICATE_REQUEST:
            return Allow(_headers(ident.sub, ent, None), removed)
        sid = await self.sessions.license(
            user=ident.sub,
            video=ent.video,
            plan=ent.plan or "",
            label=jwt_label(ident.session),
            limit=self._limit(ent),
            release=message is LicenseMessage.RELEASE,
            charge=who.charge,
        )
        return Allow(_headers(ident.sub, ent, sid), removed)

    async def _session_end(self, inp: CheckInput, who: _Who) -> Decision:
        try:
            _sid, facts = await self._session_of(inp, who, leeway=END_URL_LEEWAY)
        except SessionEnded:
            return Allow((), _URL_TOKEN_ONLY)  # already over: ending is idempotent
        if facts is None:
            return Allow((), _URL_TOKEN_ONLY)  # the store is away: the slot idles out instead
        await self.sessions.end(facts)
        return Allow(((identity.USER_HEADER, facts.user),), _URL_TOKEN_ONLY)

    async def _session_heartbeat(self, inp: CheckInput, who: _Who) -> Decision:
        _sid, facts = await self._session_of(inp, who, renewable=True)
        if facts is None:
            return Allow((), _URL_TOKEN_ONLY)
        limit = self.sessions.limits.limit_for(facts.plan, facts.max_streams)
        await self.sessions.check(facts, limit, Kind.LIFE, who.charge)
        return Allow(((identity.USER_HEADER, facts.user),), _URL_TOKEN_ONLY)


def _headers(
    user: str, ent: Entitlement, session: str | None, video: str | None = None
) -> tuple[tuple[str, str], ...]:
    return decision.viewer_headers(
        user, ent.plan or "", video or ent.video, ent.facts_header, session
    )


_FLOWS: Final[dict[str, Flow]] = {
    contract.MODE_JWT: Authorizer._check_jwt,
    contract.MODE_JWT_ONLY: Authorizer._check_jwt,
    contract.MODE_SESSION_START: Authorizer._start_session,
    contract.MODE_SIGNED_URL: Authorizer._check_signed_url,
    contract.MODE_KEY: Authorizer._check_key,
    contract.MODE_LICENSE: Authorizer._check_license,
    contract.MODE_SESSION_END: Authorizer._session_end,
    contract.MODE_SESSION_HEARTBEAT: Authorizer._session_heartbeat,
}
