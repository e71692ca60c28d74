"""Concurrent stream slots per viewer.

A stream is one playback session (``x-playback-session``), or the video when authz sends no
session. Each license issued for a stream holds its slot for ``STREAM_SLOT_TTL`` seconds; a new
stream is refused when the viewer already holds ``maxStreams`` live slots. Re-licensing the same
stream (retries, renewals, key rotation) refreshes its slot and is never refused.

    StreamTracker (protocol)    acquire(user, stream, limit, ttl) -> bool
    ├── MemoryStreamTracker     per process
    └── RedisStreamTracker      one sorted set per user (member: stream, score: expiry), one Lua
                                call per check, shared by replicas

The limit is a business rule, not a security boundary: when Redis fails the check is allowed
(fail open, logged and counted) rather than stopping every playback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

import redis.asyncio as aioredis

from license_broker import metrics
from license_broker.cache import RedisGuard

log = logging.getLogger(__name__)

KEY_PREFIX: Final = "pdrm:streams:"

_ACQUIRE_LUA: Final = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local member = ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZSCORE', key, member) or redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now + ttl, member)
  redis.call('EXPIRE', key, math.ceil(ttl))
  return 1
end
return 0
"""


class StreamTracker(Protocol):
    async def acquire(self, user: str, stream: str, limit: int, ttl: int) -> bool:
        """Take or refresh ``stream``'s slot; False when ``limit`` other streams are live."""
        ...

    async def close(self) -> None: ...


class MemoryStreamTracker:
    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_users: int = 100_000
    ) -> None:
        self._clock = clock
        self._max_users = max_users
        self._slots: dict[str, dict[str, float]] = {}

    async def acquire(self, user: str, stream: str, limit: int, ttl: int) -> bool:
        now = self._clock()
        slots = self._slots.get(user)
        if slots is None:
            if len(self._slots) >= self._max_users:
                self._prune(now)
            slots = self._slots[user] = {}
        for member in [m for m, exp in slots.items() if exp <= now]:
            del slots[member]
        if stream in slots or len(slots) < limit:
            slots[stream] = now + ttl
            metrics.STREAM_RESULT["allowed"].inc()
            return True
        metrics.STREAM_RESULT["refused"].inc()
        return False

    def _prune(self, now: float) -> None:
        for user in [u for u, s in self._slots.items() if all(e <= now for e in s.values())]:
            del self._slots[user]

    async def close(self) -> None:
        self._slots.clear()


class RedisStreamTracker:
    def __init__(
        self,
        client: aioredis.Redis,
        guard: RedisGuard | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._guard = guard or RedisGuard()
        self._clock = clock
        self._script = client.register_script(_ACQUIRE_LUA)

    async def acquire(self, user: str, stream: str, limit: int, ttl: int) -> bool:
        if not self._guard.allow():
            metrics.STREAM_RESULT["error"].inc()
            metrics.REDIS_ERROR["streams"].inc()
            return True
        try:
            allowed = await self._script(
                keys=[KEY_PREFIX + user], args=[self._clock(), ttl, limit, stream]
            )
        except Exception as exc:  # redis errors must not escape this module
            metrics.STREAM_RESULT["error"].inc()
            metrics.REDIS_ERROR["streams"].inc()
            self._guard.failed("stream check (allowing)", exc)
            return True
        self._guard.succeeded()
        ok = bool(int(allowed))
        metrics.STREAM_RESULT["allowed" if ok else "refused"].inc()
        return ok

    async def close(self) -> None:
        return None
