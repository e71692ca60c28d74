"""Per-user sliding-window rate limiting, inside the ext_authz check or behind Envoy's rate limit
service API.

Envoy's ``local_ratelimit`` is per replica and token-bucket shaped; with two or more replicas a
per-user limit needs shared state. This module counts requests per descriptor (``user=<id>``) in a
sliding log of the last ``window`` seconds: exactly ``limit`` requests pass in any window.

- :class:`RedisSlidingWindow`: one atomic Lua script per check (ZSET per key, Redis' own clock so
  replicas agree), one round trip.
- :class:`MemorySlidingWindow`: the same semantics in process (a single replica).
- :class:`UserLimit`: the limit as ext_authz keeps it inside its check (the sidecar's default,
  ``ENVOY_PER_USER_LIMIT=check``): no second gRPC call per request, and where the check runs a
  session-store script about the viewer anyway, the hit rides in it (:class:`Charge`): one Redis
  round trip for both.

All return a :class:`WindowResult`; the gRPC adapters live in ``authz.server``.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from playback_drm.redisconn import RedisClient

log = logging.getLogger(__name__)


DOMAIN = "playback"  # the rate limit domain of our Envoy configurations (envoyconf.filters)
POLICY_NAME = "per_user"
RATE_LIMITED = "rate_limited"  # the problem code of a refusal


def user_window_key(user: str) -> str:
    """A viewer's window, in the viewer's hash slot (``{u:<id>}``, as the session store's keys):
    one script may count a request and take a stream slot on a Redis Cluster."""
    return f"{{u:{user}}}:rate"


def descriptor_key(domain: str, entries: Sequence[tuple[str, str]]) -> str:
    """The window of a rate limit service descriptor. The per-user one (``user=<id>`` in our
    domain) is the viewer's window: one budget per viewer whichever way Envoy asks."""
    if domain == DOMAIN and len(entries) == 1 and entries[0][0] == "user":
        return user_window_key(entries[0][1])
    return domain + "|" + "|".join(f"{k}={v}" for k, v in entries)


@dataclass(frozen=True, slots=True)
class WindowResult:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until one more request would be admitted


class SlidingWindow(Protocol):
    async def hit(self, key: str, hits: int = 1) -> WindowResult: ...


class MemorySlidingWindow:
    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window
        self._logs: dict[str, deque[float]] = {}
        self._max_keys = max_keys
        self._clock = clock

    async def hit(self, key: str, hits: int = 1) -> WindowResult:
        return self.hit_now(key, hits)

    def hit_now(self, key: str, hits: int = 1) -> WindowResult:
        now = self._clock()
        log_ = self._logs.get(key)
        if log_ is None:
            if len(self._logs) >= self._max_keys:
                self._evict(now)
            log_ = self._logs[key] = deque()
        horizon = now - self._window
        while log_ and log_[0] <= horizon:
            log_.popleft()
        if len(log_) + hits > self._limit:
            reset = (log_[0] + self._window - now) if log_ else self._window
            return WindowResult(False, self._limit, max(0, self._limit - len(log_)), reset)
        log_.extend([now] * hits)
        return WindowResult(True, self._limit, self._limit - len(log_), self._window)

    def _evict(self, now: float) -> None:
        horizon = now - self._window
        for key in [k for k, v in self._logs.items() if not v or v[-1] <= horizon]:
            del self._logs[key]


# One hit of ``hits`` requests on a window, in Lua: the window's own script and the session
# store's (which counts a request's hit in the round trip it makes anyway, see Charge) both use
# this function, so the algorithm is written once. ``span`` in µs; ``member`` unique per call
# (replica id + counter). Scores are Redis' own clock in µs (exact in a double); members never
# derive from floats. Returns {allowed(0/1), count_after, oldest_score_us_or_-1, now_us}.
WINDOW_HIT_LUA: Final = """
local function window_hit(key, limit, span, hits, member)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - span)
  local count = redis.call('ZCARD', key)
  if count + hits > limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local first = -1
    if oldest[2] then first = tonumber(oldest[2]) end
    return {0, count, first, now}
  end
  for i = 1, hits do
    redis.call('ZADD', key, now, member .. ':' .. i)
  end
  redis.call('PEXPIRE', key, math.ceil(span / 1000) + 1000)
  return {1, count + hits, -1, now}
end
"""

# KEYS[1] = window key. ARGV = limit, window_us, hits, unique call id.
_SLIDING_WINDOW_LUA: Final = (
    WINDOW_HIT_LUA
    + "return window_hit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), "
    + "ARGV[4])\n"
)


def window_result(
    limit: int, window_us: int, allowed: int, count: int, oldest: int, now: int
) -> WindowResult:
    """What the window script's reply ``{allowed, count_after, oldest_us_or_-1, now_us}`` means."""
    window = window_us / 1e6
    if allowed:
        return WindowResult(True, limit, limit - count, window)
    reset = (oldest + window_us - now) / 1e6 if oldest >= 0 else 0.0
    return WindowResult(False, limit, max(0, limit - count), max(reset, 0.0))


@dataclass(slots=True)
class Charge:
    """One request's hit on its viewer's window, pending until counted: a session-store script
    about the same viewer counts it in its own round trip (``authz.sessionstore``, the window
    key shares the viewer's ``{u:<id>}`` hash slot), else the check asks the window itself.
    ``failed``: the store could not be asked, so neither can the window now (fail open at once,
    no second wait)."""

    limit: int
    window_us: int
    member: str  # unique per hit (replica id + counter): the window's sorted-set member
    prefix: str
    user: str | None = None
    result: WindowResult | None = None
    failed: bool = False

    @property
    def pending(self) -> bool:
        return self.result is None and not self.failed

    def key(self, user: str) -> str:
        return self.prefix + user_window_key(user)

    def settle(self, user: str, allowed: int, count: int, oldest: int, now: int) -> WindowResult:
        self.user = user
        self.result = window_result(self.limit, self.window_us, allowed, count, oldest, now)
        return self.result


class RateLimitBackendUnavailable(Exception):
    """Redis could not be asked; the adapter decides (Envoy's failure_mode_deny)."""


class RedisSlidingWindow:
    def __init__(
        self, client: RedisClient, limit: int, window: float, *, prefix: str = "playback:rl:"
    ) -> None:
        self._redis = client
        self._script = self._redis.register_script(_SLIDING_WINDOW_LUA)
        self._limit = limit
        self._window_us = int(window * 1_000_000)
        self._window = window
        self._prefix = prefix
        self._replica = uuid.uuid4().hex[:12]
        self._calls = itertools.count()

    def _member(self) -> str:
        return f"{self._replica}:{next(self._calls)}"

    async def hit(self, key: str, hits: int = 1) -> WindowResult:
        try:
            allowed, count, oldest, now = await self._script(
                keys=[self._prefix + key],
                args=[self._limit, self._window_us, hits, self._member()],
            )
        except Exception as exc:
            raise RateLimitBackendUnavailable(type(exc).__name__) from exc
        return window_result(
            self._limit, self._window_us, int(allowed), int(count), int(oldest), int(now)
        )

    def charge(self) -> Charge:
        """A hit for a session-store script to count in its own round trip (:class:`Charge`)."""
        return Charge(self._limit, self._window_us, self._member(), self._prefix)


# ------------------------------------------------------------------ the per-user limit in a check


def quota_headers(limit: int, window: float, result: WindowResult) -> tuple[tuple[str, str], ...]:
    """The RateLimit header fields (IETF draft 03) as Envoy's ratelimit filter writes them
    (``enable_x_ratelimit_headers: DRAFT_VERSION_03``) from the rate limit service's answer."""
    return (
        ("x-ratelimit-limit", f'{limit}, {limit};w={max(1, round(window))};name="{POLICY_NAME}"'),
        ("x-ratelimit-remaining", str(result.remaining)),
        ("x-ratelimit-reset", str(int(result.reset_after))),
    )


def retry_after(result: WindowResult) -> int:
    """Whole seconds until the window admits one more request (at least 1)."""
    return max(1, int(result.reset_after + 0.999))


class UserLimit:
    """The per-user limit as ext_authz keeps it inside its check (EnvoySettings.per_user_limit
    ``check``): the same window and keys as the rate limit service, one Redis round trip and no
    second gRPC call per request. Fails open, as the ratelimit filter does (availability over a
    global limit): the backend away reads as admitted, without quota headers."""

    def __init__(self, window: SlidingWindow, limit: int, window_seconds: float) -> None:
        self._window = window
        self.limit = limit
        self.window_seconds = window_seconds

    def charge(self) -> Charge | None:
        """A pending hit a session-store script may count in its round trip (a window in Redis);
        None: the window is asked on its own (in memory, nothing to save)."""
        return self._window.charge() if isinstance(self._window, RedisSlidingWindow) else None

    async def hit(self, user: str, charge: Charge | None = None) -> WindowResult | None:
        """The viewer's request counted, by the charge's script when it ran for this viewer,
        else now; None when the backend could not be asked (fail open)."""
        if charge is not None:
            if charge.failed:
                return None
            if charge.result is not None and charge.user == user:
                return charge.result
        try:
            return await self._window.hit(user_window_key(user))
        except RateLimitBackendUnavailable:
            return None
