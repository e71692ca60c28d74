"""Entitlement cache layers and the sliding-window rate limiter (memory and real Redis)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from authz.entitlement import Entitlement, EntitlementCache, RedisCache, redis_client
from authz.errors import BillingUnavailable
from authz.ratelimit import (
    MemorySlidingWindow,
    RateLimitBackendUnavailable,
    RedisSlidingWindow,
    WindowResult,
)


class CountingSource:
    """Stands in for Billing behind our EntitlementSource protocol."""

    def __init__(self, entitled: bool = True, fail: bool = False, delay: float = 0.0) -> None:
        self.calls = 0
        self.entitled = entitled
        self.fail = fail
        self.delay = delay

    async def fetch(self, user: str, video: str) -> Entitlement:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise BillingUnavailable("down")
        return Entitlement(
            user, video, self.entitled, "basic", None if self.entitled else "no_subscription"
        )


async def test_grants_are_cached_denials_for_less_time() -> None:
    clock = [0.0]
    source = CountingSource()
    cache = EntitlementCache(source, ttl=60, deny_ttl=10, clock=lambda: clock[0])
    await cache.get("alice", "demo")
    await cache.get("alice", "demo")
    assert source.calls == 1
    clock[0] = 59
    await cache.get("alice", "demo")
    assert source.calls == 1
    clock[0] = 61
    await cache.get("alice", "demo")
    assert source.calls == 2

    deny_source = CountingSource(entitled=False)
    deny_cache = EntitlementCache(deny_source, ttl=60, deny_ttl=10, clock=lambda: clock[0])
    clock[0] = 100
    await deny_cache.get("carol", "demo")
    clock[0] = 111
    await deny_cache.get("carol", "demo")
    assert deny_source.calls == 2


async def test_concurrent_misses_are_single_flight() -> None:
    source = CountingSource(delay=0.05)
    cache = EntitlementCache(source, ttl=60, deny_ttl=10)
    results = await asyncio.gather(*(cache.get("alice", "demo") for _ in range(50)))
    assert source.calls == 1
    assert all(r.entitled for r in results)


async def test_billing_failure_propagates_to_all_waiters_and_is_not_cached() -> None:
    source = CountingSource(fail=True, delay=0.01)
    cache = EntitlementCache(source, ttl=60, deny_ttl=10)
    results = await asyncio.gather(*(cache.get("a", "v") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, BillingUnavailable) for r in results)
    source.fail = False
    assert (await cache.get("a", "v")).entitled
    assert source.calls == 2


async def test_redis_layer_is_shared_between_replicas(any_redis_url: str) -> None:
    source = CountingSource()
    redis_one, redis_two = redis_client(any_redis_url), redis_client(any_redis_url)
    one = EntitlementCache(source, ttl=60, deny_ttl=10, shared=RedisCache(redis_one.client))
    two = EntitlementCache(source, ttl=60, deny_ttl=10, shared=RedisCache(redis_two.client))
    await one.get("alice", "demo")
    ent = await two.get("alice", "demo")
    assert ent.entitled
    assert ent.plan == "basic"
    assert source.calls == 1
    await redis_one.aclose()
    await redis_two.aclose()


async def test_redis_down_is_a_miss_not_a_denial() -> None:
    source = CountingSource()
    redis = redis_client("redis://127.0.0.1:1/0")
    cache = EntitlementCache(source, ttl=60, deny_ttl=10, shared=RedisCache(redis.client))
    assert (await cache.get("alice", "demo")).entitled
    assert source.calls == 1
    await redis.aclose()


async def test_memory_window_admits_exactly_limit_per_window() -> None:
    clock = [0.0]
    window = MemorySlidingWindow(200, 1.0, clock=lambda: clock[0])
    results = []
    for i in range(300):
        clock[0] = i * 0.001
        results.append(window.hit_now("user=alice"))
    assert sum(r.allowed for r in results) == 200
    assert not results[-1].allowed
    assert results[-1].reset_after > 0
    clock[0] = 1.0005  # first entries leave the window
    assert window.hit_now("user=alice").allowed
    assert window.hit_now("user=bob").allowed


async def test_redis_window_is_shared_and_exact(any_redis_url: str) -> None:
    client_one, client_two = redis_client(any_redis_url), redis_client(any_redis_url)
    one = RedisSlidingWindow(client_one.client, 50, 5.0)
    two = RedisSlidingWindow(client_two.client, 50, 5.0)
    # concurrent hits land in the same microseconds: each must still count once
    outcomes = await asyncio.gather(*((one if i % 2 else two).hit("user=alice") for i in range(80)))
    assert sum(o.allowed for o in outcomes) == 50
    denied = [o for o in outcomes if not o.allowed]
    assert denied
    assert all(0 < o.reset_after <= 5.0 for o in denied)
    assert (await one.hit("user=bob")).allowed
    await client_one.aclose()
    await client_two.aclose()


async def test_a_burst_beyond_the_pool_is_counted_not_failed(any_redis_url: str) -> None:
    """More checks in flight than the pool has connections: they wait for one and are counted.
    With a non-blocking pool the surplus raised, and Envoy (failure_mode_deny: false) admitted
    those requests."""
    client = redis_client(any_redis_url)
    # a window far longer than the burst takes, however busy the machine: exactly 200 admitted
    window = RedisSlidingWindow(client.client, 200, 120.0)
    tag = uuid.uuid4().hex
    key, warm = f"user={{{tag}}}", f"user={{{tag}}}:warm-up"  # one cluster slot, one node
    # What is tested is the overflow of a warm pool: its connections to the key's node open
    # first (each new Sentinel-managed connection first asks a sentinel for the primary; a
    # cluster client's nodes each have a pool) and the script is loaded (else every call of a
    # cold burst loads it again), by as many checks as the pool has connections.
    try:
        assert all(o.allowed for o in await asyncio.gather(*(window.hit(warm) for _ in range(64))))
        outcomes = await asyncio.gather(
            *(window.hit(key) for _ in range(300)), return_exceptions=True
        )
        failed = [o for o in outcomes if not isinstance(o, WindowResult)]
        assert not failed, f"{len(failed)} of 300 checks failed: {failed[0]!r}"
        assert sum(o.allowed for o in outcomes if isinstance(o, WindowResult)) == 200
    finally:
        await client.aclose()


async def test_redis_window_unavailable_raises_typed_error() -> None:
    client = redis_client("redis://127.0.0.1:1/0")
    window = RedisSlidingWindow(client.client, 10, 1.0)
    with pytest.raises(RateLimitBackendUnavailable):
        await window.hit("user=x")
    await client.aclose()
