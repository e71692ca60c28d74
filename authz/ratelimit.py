"""Per-user sliding-window rate limiting behind Envoy's rate limit service API.

Envoy's ``local_ratelimit`` is per replica and token-bucket shaped; with two or more replicas a
per-user limit needs shared state. This module counts requests per descriptor (``user=<id>``) in a
sliding log of the last ``window`` seconds: exactly ``limit`` requests pass in any window.

- :class:`RedisSlidingWindow`: one atomic Lua script per check (ZSET per key, Redis' own clock so
  replicas agree), one round trip.
- :class:`MemorySlidingWindow`: the same semantics in process (a single replica).

Both return a :class:`WindowResult`; the gRPC adapter lives in ``authz.server``.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from playback_drm.redisconn import RedisClient

log = logging.getLogger(__name__)


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


# KEYS[1] = window key. ARGV = limit, window_us, hits, unique call id.
# Scores are Redis' own clock in µs (exact in a double); members never derive from floats.
# Returns {allowed(0/1), count_after, oldest_score_us_or_-1, now_us}.
_SLIDING_WINDOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local hits = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count + hits > limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local first = -1
  if oldest[2] then first = tonumber(oldest[2]) end
  return {0, count, first, now}
end
for i = 1, hits do
  -- members must be unique per hit: ARGV[4] is unique per call (replica id + counter)
  redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. i)
end
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
return {1, count + hits, -1, now}
"""


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

    async def hit(self, key: str, hits: int = 1) -> WindowResult:
        try:
            allowed, count, oldest, now = await self._script(
                keys=[self._prefix + key],
                args=[self._limit, self._window_us, hits, f"{self._replica}:{next(self._calls)}"],
            )
        except Exception as exc:
            raise RateLimitBackendUnavailable(type(exc).__name__) from exc
        if allowed:
            return WindowResult(True, self._limit, self._limit - int(count), self._window)
        reset = (int(oldest) + self._window_us - int(now)) / 1e6 if int(oldest) >= 0 else 0.0
        return WindowResult(False, self._limit, max(0, self._limit - int(count)), max(reset, 0.0))
