"""The session registry as authz uses it: a :class:`~authz.sessionstore.SessionStore` behind
per-process caches, with the decisions about failures and the session metrics.

- Facts (who, what video, which plan) never change: read once per process, kept in an LRU.
- Signs of life are coalesced: each process asks the store about a session at most once every
  ``SESSION_CHECK_SECONDS`` (concurrent requests share one call) and answers the requests in
  between from its last view, except a session's first slot request. So an ended session may be
  served by another replica for up to that long, and a playing session costs one store call per
  replica every few seconds, not one per segment.
- Failures (the store cannot be asked) fail open, deliberately: the concurrent-stream limit is a
  business rule, not a security boundary, and a Redis outage must not stop every playback. The
  request goes on (counted as ``unchecked``); a session started meanwhile is recorded on its first
  successful check. Viewers whose sessions this process cannot name get only what the URL token
  itself proves (see :meth:`SessionRegistry.lookup`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from authz import metrics
from authz.errors import RateLimited, SessionEnded, StreamLimitReached
from authz.ratelimit import Charge
from authz.sessions import (
    Kind,
    Outcome,
    SessionFacts,
    StreamLimits,
    View,
    derived_session_id,
    is_session_id,
    needs_check,
    new_session_id,
)
from authz.sessionstore import SessionStore, SessionStoreUnavailable

log = logging.getLogger(__name__)

CACHE_ENTRIES: Final = 100_000
MAX_PLANS: Final = 64
GAUGE_INTERVAL: Final = 15.0
NO_PLAN: Final = "none"
_TAKEN = metrics.STREAM_SLOTS.labels("taken")
_REFUSED = metrics.STREAM_SLOTS.labels("refused")
_RELEASED = metrics.STREAM_SLOTS.labels("released")
_UNCHECKED = metrics.STREAM_SLOTS.labels("unchecked")

T = TypeVar("T")
K = TypeVar("K")


def _lru_put(cache: OrderedDict[str, T], key: str, value: T, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


class SessionRegistry:
    def __init__(
        self,
        store: SessionStore,
        limits: StreamLimits,
        *,
        check_interval: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self.store = store
        self.limits = limits
        self._interval = check_interval
        self._clock = clock
        self._monotonic = monotonic
        self._entries = cache_entries
        self._facts: OrderedDict[str, SessionFacts] = OrderedDict()
        self._views: OrderedDict[str, View] = OrderedDict()
        self._unrecorded: OrderedDict[str, None] = OrderedDict()
        self._inflight: dict[tuple[str, Kind], asyncio.Future[View]] = {}
        self._lookups: dict[str, asyncio.Future[SessionFacts | None]] = {}
        self._plans: set[str] = {p or NO_PLAN for p in limits.plans}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _error(self, op: str, exc: Exception) -> None:
        metrics.SESSION_STORE_ERRORS.labels(op).inc()
        log.warning("session store %s failed: %s", op, exc)

    def _note_plan(self, plan: str) -> str:
        label = plan or NO_PLAN
        if label not in self._plans and len(self._plans) < MAX_PLANS:
            self._plans.add(label)
        return label

    # ----------------------------------------------------------------------------- sessions

    async def start(
        self, *, user: str, video: str, plan: str, entitlement: str, label: str
    ) -> SessionFacts:
        """A new playback session (an entry manifest was admitted)."""
        facts = SessionFacts(
            new_session_id(), user, video, plan, entitlement, int(self._clock()), label
        )
        self._note_plan(plan)
        try:
            await self.store.create(facts, self._now_ms())
        except SessionStoreUnavailable as exc:
            self._error("create", exc)
            _lru_put(self._unrecorded, facts.sid, None, self._entries)
        _lru_put(self._facts, facts.sid, facts, self._entries)
        _lru_put(self._views, facts.sid, View(Outcome.ALIVE, self._monotonic()), self._entries)
        metrics.SESSIONS_STARTED.inc()
        return facts

    async def lookup(self, sid: str) -> SessionFacts | None:
        """The facts of the session a URL names. Raises :class:`SessionEnded` when there is no
        such session; None when the store cannot be asked and this process does not know it."""
        cached = self._facts.get(sid)
        if cached is not None:
            self._facts.move_to_end(sid)
            return cached
        if not is_session_id(sid):
            raise SessionEnded("the URL names no playback session of this service")
        facts = await self._single_flight_lookup(sid)
        if facts is None:
            return None
        _lru_put(self._facts, sid, facts, self._entries)
        return facts

    async def _single_flight_lookup(self, sid: str) -> SessionFacts | None:
        pending = self._lookups.get(sid)
        if pending is not None:
            return await asyncio.shield(pending)
        return await self._shared(self._lookups, sid, lambda: self._load(sid))

    async def _load(self, sid: str) -> SessionFacts | None:
        try:
            facts = await self.store.facts(sid)
        except SessionStoreUnavailable as exc:
            self._error("lookup", exc)
            return None
        if facts is None:
            raise SessionEnded("the playback session ended; start playback again")
        return facts

    @staticmethod
    async def _shared(
        inflight: dict[K, asyncio.Future[T]], key: K, call: Callable[[], Awaitable[T]]
    ) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        inflight[key] = future
        try:
            value = await call()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del inflight[key]

    async def check(
        self, facts: SessionFacts, limit: int, kind: Kind, charge: Charge | None = None
    ) -> Outcome | None:
        """A sign of life (LIFE) or a slot request (SLOT) of a session. Raises
        :class:`SessionEnded` or :class:`StreamLimitReached`; None when it went unchecked.
        ``charge``: the request's hit on the per-user rate limit, counted by the store in the
        same round trip when this request is the one asking it (:class:`RateLimited` when the
        viewer is over the limit)."""
        view = self._views.get(facts.sid)
        if needs_check(view, self._monotonic(), self._interval, kind):
            key = (facts.sid, kind)
            pending = self._inflight.get(key)
            if pending is not None:
                view = await asyncio.shield(pending)
            else:
                view = await self._shared(
                    self._inflight, key, lambda: self._ask(facts, limit, kind, charge)
                )
        assert view is not None
        return self._verdict(facts, limit, view)

    async def _ask(
        self, facts: SessionFacts, limit: int, kind: Kind, charge: Charge | None
    ) -> View:
        now_ms = self._now_ms()
        take = kind is Kind.SLOT
        try:
            result = await self.store.touch(facts, limit, now_ms, take=take, charge=charge)
            if result.outcome is Outcome.RATE_LIMITED:
                raise RateLimited("per-user limit reached")
            if result.outcome is Outcome.ENDED and facts.sid in self._unrecorded:
                # started while the store was away: record it now, then ask again
                await self.store.create(facts, now_ms)
                result = await self.store.touch(facts, limit, now_ms, take=take)
            self._unrecorded.pop(facts.sid, None)
        except SessionStoreUnavailable as exc:
            self._error("touch", exc)
            _UNCHECKED.inc()
            view = View(None, self._monotonic())
        else:
            if result.outcome is Outcome.TAKEN:
                _TAKEN.inc()
            elif result.outcome is Outcome.REFUSED:
                _REFUSED.inc()
            view = View(result.outcome, self._monotonic())
        _lru_put(self._views, facts.sid, view, self._entries)
        return view

    @staticmethod
    def _verdict(facts: SessionFacts, limit: int, view: View) -> Outcome | None:
        if view.outcome is Outcome.ENDED:
            raise SessionEnded("the playback session ended; start playback again")
        if view.outcome is Outcome.REFUSED:
            raise StreamLimitReached(
                f"already {limit} concurrent streams: stop another playback first",
                maxStreams=limit,
            )
        return view.outcome

    async def license(
        self,
        *,
        user: str,
        video: str,
        plan: str,
        label: str,
        limit: int,
        release: bool = False,
        charge: Charge | None = None,
    ) -> str:
        """The JWT-only rule (``authz.sessions``): the session a license request without a
        session-bound URL belongs to, its slot taken (or the session ended, for a release)."""
        fallback = derived_session_id(user, video, label)
        self._note_plan(plan)
        now_ms = self._now_ms()
        try:
            if release:
                was, sid = await self.store.release(user, video, label, fallback, plan, now_ms)
                if was:
                    _RELEASED.inc()
                _lru_put(self._views, sid, View(Outcome.ENDED, self._monotonic()), self._entries)
                return sid
            result = await self.store.license(
                user, video, label, fallback, plan, limit, now_ms, charge
            )
        except SessionStoreUnavailable as exc:
            self._error("license", exc)
            _UNCHECKED.inc()
            return fallback
        if result.outcome is Outcome.RATE_LIMITED:
            raise RateLimited("per-user limit reached")
        view = View(result.outcome, self._monotonic())
        _lru_put(self._views, result.sid, view, self._entries)
        if result.outcome is Outcome.TAKEN:
            _TAKEN.inc()
        elif result.outcome is Outcome.REFUSED:
            _REFUSED.inc()
            raise StreamLimitReached(
                f"already {limit} concurrent streams: stop another playback first",
                maxStreams=limit,
            )
        return result.sid

    async def end(self, facts: SessionFacts) -> bool:
        """End a session at once (explicit end, license release); whether it was live."""
        _lru_put(self._views, facts.sid, View(Outcome.ENDED, self._monotonic()), self._entries)
        self._unrecorded.pop(facts.sid, None)
        try:
            was = await self.store.end(facts, self._now_ms())
        except SessionStoreUnavailable as exc:
            self._error("end", exc)
            return False
        if was:
            _RELEASED.inc()
        return was

    # -------------------------------------------------------------------------------- gauge

    async def refresh_gauge(self) -> None:
        plans = sorted(self._plans)
        try:
            counts = await self.store.active(plans, self._now_ms())
        except SessionStoreUnavailable as exc:
            self._error("active", exc)
            return
        for plan, count in counts.items():
            metrics.SESSIONS_ACTIVE.labels(plan).set(count)

    async def run_gauge(self, interval: float = GAUGE_INTERVAL) -> None:
        """Refresh ``playback_sessions_active`` until cancelled."""
        while True:
            try:
                await self.refresh_gauge()
            except Exception:  # a gauge never stops the service
                log.exception("refreshing the active sessions gauge failed")
            await asyncio.sleep(interval)


__all__ = ["SessionRegistry"]
