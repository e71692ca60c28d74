"""Entitlement lookups against the Billing service, cached.

Billing API (see ``devstack.emulators.billing``)::

    GET {BILLING_URL}/v1/entitlements?userId=U&videoId=V
    200 {"userId", "videoId", "entitled": bool, "plan": str|null, "reason": str|null,
         "tier", "maxStreams", "rentalWindowSeconds", "playbackWindowSeconds", "hdcp"}

Grants are cached for ``ttl`` seconds and denials for ``deny_ttl`` (shorter, so a new subscription
works quickly). Layers: an in-process dict (always), then Redis when configured (shared by
replicas).
A Redis failure is a cache miss, never a denial; a Billing failure is ``BillingUnavailable`` (503):
fail closed, distinguishable from "not entitled".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp

from authz.errors import BillingUnavailable
from playback_drm.redisconn import (
    RedisClient,
    RedisOptions,
    RedisTarget,
    SharedRedis,
    open_redis,
    parse_redis_url,
)

log = logging.getLogger(__name__)

FACT_KEYS = ("tier", "maxStreams", "rentalWindowSeconds", "playbackWindowSeconds", "hdcp")


@dataclass(frozen=True, slots=True)
class Entitlement:
    user: str
    video: str
    entitled: bool
    plan: str | None
    reason: str | None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def facts_header(self) -> str:
        """Compact JSON of the facts for ``x-playback-entitlement`` (plan included)."""
        doc = {"plan": self.plan, **self.facts}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    def to_json(self) -> str:
        return json.dumps(
            {
                "userId": self.user,
                "videoId": self.video,
                "entitled": self.entitled,
                "plan": self.plan,
                "reason": self.reason,
                **self.facts,
            },
            separators=(",", ":"),
        )

    @staticmethod
    def from_doc(user: str, video: str, doc: Any) -> Entitlement:
        if not isinstance(doc, dict) or not isinstance(doc.get("entitled"), bool):
            raise ValueError("entitlement document lacks a boolean 'entitled'")
        plan = doc.get("plan")
        reason = doc.get("reason")
        return Entitlement(
            user=user,
            video=video,
            entitled=doc["entitled"],
            plan=plan if isinstance(plan, str) else None,
            reason=reason if isinstance(reason, str) else None,
            facts={k: doc[k] for k in FACT_KEYS if doc.get(k) is not None},
        )


class EntitlementSource(Protocol):
    async def fetch(self, user: str, video: str) -> Entitlement: ...


class SharedCache(Protocol):
    """The L2 cache (Redis). Implementations never raise: errors read as misses."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl: int) -> None: ...


class BillingClient:
    """Pooled aiohttp client for the Billing service."""

    def __init__(self, base_url: str, timeout: float, session: aiohttp.ClientSession) -> None:
        self._url = base_url + "/v1/entitlements"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session

    async def fetch(self, user: str, video: str) -> Entitlement:
        try:
            async with self._session.get(
                self._url, params={"userId": user, "videoId": video}, timeout=self._timeout
            ) as resp:
                if resp.status != 200:
                    raise BillingUnavailable(f"Billing answered HTTP {resp.status}")
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BillingUnavailable(f"Billing unreachable ({type(exc).__name__})") from exc
        except ValueError as exc:
            raise BillingUnavailable("Billing answered invalid JSON") from exc
        try:
            return Entitlement.from_doc(user, video, doc)
        except ValueError as exc:
            raise BillingUnavailable("Billing answered an unexpected document") from exc


REDIS_OPTIONS: Final = RedisOptions(
    max_connections=64, timeout=0.2, connect_timeout=0.5, pool_timeout=0.2
)
"""The one Redis client an authz process shares (entitlements, rate limits, sessions).

A blocking pool: past ``max_connections`` commands in flight, the next waits (up to 0.2 s) for a
connection. The default pool raises "Too many connections" instead, which a burst of rate-limit
checks turned into backend errors, and Envoy into admitted requests.
"""


def redis_client(target: RedisTarget | str) -> SharedRedis:
    """authz's client for ``REDIS_URL`` (any of its shapes, :mod:`playback_drm.redisconn`)."""
    parsed = parse_redis_url(target) if isinstance(target, str) else target
    return open_redis(parsed, REDIS_OPTIONS)


class RedisCache:
    """Redis L2 cache; failures are logged misses."""

    def __init__(self, client: RedisClient) -> None:
        self._redis = client

    async def get(self, key: str) -> str | None:
        try:
            value = await self._redis.get(key)
        except Exception as exc:  # redis errors must not escape this module
            log.warning("redis get failed: %s", type(exc).__name__)
            return None
        return value.decode() if isinstance(value, bytes) else None

    async def set(self, key: str, value: str, ttl: int) -> None:
        try:
            await self._redis.set(key, value, ex=ttl)
        except Exception as exc:
            log.warning("redis set failed: %s", type(exc).__name__)


class EntitlementCache:
    """L1 dict + optional shared L2 in front of an EntitlementSource, with single-flight misses."""

    def __init__(
        self,
        source: EntitlementSource,
        *,
        ttl: int,
        deny_ttl: int,
        shared: SharedCache | None = None,
        local_ttl: float | None = None,
        max_entries: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._ttl = ttl
        self._deny_ttl = deny_ttl
        self._shared = shared
        # With a shared cache the local copy lives briefly so revocations propagate fast.
        self._local_ttl = local_ttl if local_ttl is not None else (2.0 if shared else None)
        self._local: dict[tuple[str, str], tuple[float, Entitlement]] = {}
        self._max = max_entries
        self._clock = clock
        self._inflight: dict[tuple[str, str], asyncio.Future[Entitlement]] = {}
        self.hits = 0
        self.misses = 0

    def cached(self, user: str, video: str) -> Entitlement | None:
        entry = self._local.get((user, video))
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._local.pop((user, video), None)
            return None
        return entry[1]

    async def get(self, user: str, video: str) -> Entitlement:
        ent = self.cached(user, video)
        if ent is not None:
            self.hits += 1
            return ent
        key = (user, video)
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Entitlement] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            ent = await self._load(user, video)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        else:
            future.set_result(ent)
            return ent
        finally:
            del self._inflight[key]

    async def _load(self, user: str, video: str) -> Entitlement:
        redis_key = f"playback:ent:{user}:{video}"
        if self._shared is not None:
            raw = await self._shared.get(redis_key)
            if raw is not None:
                try:
                    ent = Entitlement.from_doc(user, video, json.loads(raw))
                except ValueError:
                    ent = None
                if ent is not None:
                    self.hits += 1
                    self._store_local(ent)
                    return ent
        self.misses += 1
        ent = await self._source.fetch(user, video)
        self._store_local(ent)
        if self._shared is not None:
            await self._shared.set(
                redis_key, ent.to_json(), self._ttl if ent.entitled else self._deny_ttl
            )
        return ent

    def _store_local(self, ent: Entitlement) -> None:
        ttl = float(self._ttl if ent.entitled else self._deny_ttl)
        if self._local_ttl is not None:
            ttl = min(ttl, self._local_ttl)
        if len(self._local) >= self._max:
            now = self._clock()
            for k in [k for k, (exp, _) in self._local.items() if exp <= now]:
                del self._local[k]
            if len(self._local) >= self._max:
                self._local.clear()
        self._local[(ent.user, ent.video)] = (self._clock() + ttl, ent)
