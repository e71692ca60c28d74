"""The issued-license cache: a retried identical request gets the same license (and licenseId).

    LicenseCache (protocol)   get(key) / add(key, license, ttl); never raises (errors are misses)
    ├── MemoryLicenseCache    bounded TTL LRU, per process (default)
    ├── RedisLicenseCache     shared by replicas, through a redis.asyncio connection pool
    └── TieredLicenseCache    a short-lived in-process copy in front of Redis

The cache key hashes (key system, video, user, license policy, canonical request), so a different
viewer, a plan change or another challenge never shares an entry. ClearKey entries store the key
ids and session type only, never key material: the JWK set is rebuilt from the key store on a hit.
Licenses from providers are stored as issued (they are encrypted to the requesting device).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from license_broker import metrics
from license_broker.breaker import BreakerState, CircuitBreaker
from license_broker.encoding import b64, b64decode_lenient
from playback_drm.redisconn import RedisClient, RedisOptions, RedisTarget, SharedRedis, open_redis

log = logging.getLogger(__name__)

KEY_PREFIX: Final = "pdrm:lic:"


@dataclass(frozen=True, slots=True)
class CachedLicense:
    license_id: str
    expires_at: float
    key_system: str
    content_type: str
    body: bytes = b""
    kids: tuple[bytes, ...] = ()
    session_type: str = ""

    def to_bytes(self) -> bytes:
        doc = {
            "id": self.license_id,
            "exp": self.expires_at,
            "ks": self.key_system,
            "ct": self.content_type,
            "b": b64(self.body) if self.body else "",
            "kids": [k.hex() for k in self.kids],
            "t": self.session_type,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @staticmethod
    def from_bytes(raw: bytes | str) -> CachedLicense:
        doc = json.loads(raw)
        return CachedLicense(
            license_id=str(doc["id"]),
            expires_at=float(doc["exp"]),
            key_system=str(doc["ks"]),
            content_type=str(doc["ct"]),
            body=b64decode_lenient(doc["b"]) if doc.get("b") else b"",
            kids=tuple(bytes.fromhex(k) for k in doc.get("kids", ())),
            session_type=str(doc.get("t", "")),
        )


def cache_key(
    key_system: str, video_id: str, user: str, policy: str, canonical_request: bytes
) -> str:
    h = hashlib.blake2b(digest_size=20)
    for part in (key_system, video_id, user, policy):
        h.update(part.encode())
        h.update(b"\x00")
    h.update(canonical_request)
    return KEY_PREFIX + h.hexdigest()


class LicenseCache(Protocol):
    async def get(self, key: str) -> CachedLicense | None: ...

    async def add(self, key: str, value: CachedLicense, ttl: int) -> CachedLicense:
        """Store ``value`` unless an entry exists; returns the entry that won (races of identical
        requests then answer with one licenseId)."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryLicenseCache:
    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, CachedLicense]] = OrderedDict()

    async def get(self, key: str) -> CachedLicense | None:
        found = self.peek(key)
        metrics.license_cache(found is not None)
        return found

    def peek(self, key: str) -> CachedLicense | None:
        """The live entry, without counting a cache request."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    async def add(self, key: str, value: CachedLicense, ttl: float) -> CachedLicense:
        if ttl <= 0:
            return value
        now = self._clock()
        existing = self._entries.get(key)
        if existing is not None and existing[0] > now:
            return existing[1]
        self.put(key, value, ttl)
        return value

    def put(self, key: str, value: CachedLicense, ttl: float) -> None:
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()


def redis_client(target: RedisTarget, *, max_connections: int, timeout: float) -> SharedRedis:
    """One pooled client per process (the license cache), for any shape of ``REDIS_URL``.

    A blocking pool: past ``max_connections`` commands in flight the next one waits (up to the
    timeout) for a connection, instead of failing with "Too many connections" (a miss).
    """
    options = RedisOptions(
        max_connections=max_connections,
        timeout=timeout,
        connect_timeout=max(timeout, 0.5),
        pool_timeout=timeout,
        health_check_interval=30,
    )
    return open_redis(target, options)


class RedisGuard:
    """Skips Redis for ``cooldown`` seconds after ``threshold`` consecutive failures, so a dead or
    slow Redis costs one timeout per cool-down instead of one per request."""

    def __init__(
        self, threshold: int = 3, cooldown: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._breaker = CircuitBreaker(failure_threshold=threshold, cooldown=cooldown, clock=clock)

    def allow(self) -> bool:
        return self._breaker.allow()

    def succeeded(self) -> None:
        self._breaker.record_success()

    def failed(self, what: str, exc: BaseException) -> None:
        self._breaker.record_failure()
        log.warning("redis %s failed: %s", what, type(exc).__name__)

    @property
    def open(self) -> bool:
        return self._breaker.state != BreakerState.CLOSED


class RedisLicenseCache:
    def __init__(self, client: RedisClient, guard: RedisGuard | None = None) -> None:
        self._redis = client
        self._guard = guard or RedisGuard()

    async def get(self, key: str) -> CachedLicense | None:
        if not self._guard.allow():
            metrics.REDIS_ERROR["license_cache"].inc()
            metrics.license_cache(False)
            return None
        try:
            raw = await self._redis.get(key)
        except Exception as exc:  # redis errors must not escape this module
            metrics.REDIS_ERROR["license_cache"].inc()
            metrics.license_cache(False)
            self._guard.failed("license cache get", exc)
            return None
        self._guard.succeeded()
        if raw is None:
            metrics.license_cache(False)
            return None
        try:
            value = CachedLicense.from_bytes(raw)
        except (ValueError, KeyError, TypeError):
            metrics.license_cache(False)
            log.warning("license cache entry unreadable; ignored")
            return None
        metrics.license_cache(True)
        return value

    async def add(self, key: str, value: CachedLicense, ttl: int) -> CachedLicense:
        if ttl <= 0 or not self._guard.allow():
            return value
        try:
            stored = await self._redis.set(key, value.to_bytes(), ex=ttl, nx=True)
            raw = None if stored else await self._redis.get(key)
        except Exception as exc:
            metrics.REDIS_ERROR["license_cache"].inc()
            self._guard.failed("license cache add", exc)
            return value
        self._guard.succeeded()
        if raw is None:
            return value
        try:
            return CachedLicense.from_bytes(raw)
        except (ValueError, KeyError, TypeError):
            return value

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        """The client is shared; its owner closes it."""
        return


class TieredLicenseCache:
    """Redis behind a short-lived in-process copy (``LICENSE_CACHE_L1_TTL``, 10 s by default).

    Entries never change once stored (first writer wins, then the TTL), so a copy can only be
    stale in living up to the L1 TTL past the Redis entry, and never past the license's own
    expiry. A repeated request (a player's retry, a second tab) then costs no Redis round trip.
    """

    def __init__(
        self,
        l1: MemoryLicenseCache,
        l2: RedisLicenseCache,
        l1_ttl: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._l1 = l1
        self._l2 = l2
        self._l1_ttl = l1_ttl
        self._wall = wall_clock

    def _keep(self, key: str, value: CachedLicense) -> None:
        ttl = min(self._l1_ttl, value.expires_at - self._wall())
        if ttl > 0:
            self._l1.put(key, value, ttl)

    async def get(self, key: str) -> CachedLicense | None:
        found = self._l1.peek(key)
        if found is not None:
            metrics.license_cache(True)
            return found
        found = await self._l2.get(key)  # counts the request
        if found is not None:
            self._keep(key, found)
        return found

    async def add(self, key: str, value: CachedLicense, ttl: int) -> CachedLicense:
        winner = await self._l2.add(key, value, ttl)
        if ttl > 0:
            self._keep(key, winner)
        return winner

    async def ping(self) -> bool:
        return await self._l2.ping()

    async def close(self) -> None:
        await self._l1.close()
        await self._l2.close()
