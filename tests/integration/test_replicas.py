"""Two sidecar replicas (Envoy + authz each) sharing Redis: the per-user limit is global."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from devstack.stack import Stack, StackSettings
from devstack.supervise import free_port
from tests.support.servers import RedisServer
from tests.support.stack import http, start_stack, stop_and_audit

pytestmark = pytest.mark.integration


@pytest.fixture
def replicas(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[Stack, Stack]]:
    first = start_stack(tmp_path, redis_url=redis_server.url)
    ports = dataclasses.replace(
        first.ports,
        gateway=free_port(),
        sidecar=free_port(),
        admin=free_port(),
        authz_grpc=free_port(),
        authz_http=free_port(),
    )
    second = Stack(
        StackSettings(
            root=tmp_path,
            ports=ports,
            redis_url=redis_server.url,
            media_dir=first.media_dir,
            instance="replica2",
        )
    )
    try:
        second.start(["authz", "envoy"])
        yield first, second
    finally:
        stop_and_audit(second)
        stop_and_audit(first)


async def _spread(urls: list[str], token: str, count: int) -> list[int]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def one(i: int) -> int:
            async with session.get(urls[i % len(urls)], headers=headers) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def test_limit_holds_across_two_replicas(replicas: tuple[Stack, Stack]) -> None:
    first, second = replicas
    urls = [f"{s.gateway}/playback/demo/manifest" for s in (first, second)]
    alice, bob = first.token("alice"), first.token("bob")
    await _spread(urls, alice, 2)
    await asyncio.sleep(1.1)
    started = time.monotonic()
    alice_codes, bob_codes = await asyncio.gather(_spread(urls, alice, 300), _spread(urls, bob, 40))
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"the burst took {elapsed:.2f}s"
    # each replica alone would admit up to 200: only a shared window rejects this many
    assert alice_codes.count(429) >= 90, alice_codes
    assert bob_codes == [200] * 40
    over = http(urls[1], headers={"Authorization": f"Bearer {alice}", "Accept": "application/json"})
    if over.status == 429:
        assert int(over.headers["retry-after"]) >= 1
        assert "x-ratelimit-limit" in over.headers
        assert over.json()["code"] == "rate_limited"
