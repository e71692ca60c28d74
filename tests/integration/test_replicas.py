"""Two sidecar replicas (Envoy + authz each) sharing Redis: the per-user rate limit is global,
and so are the playback sessions and their concurrent-stream slots (with short lifetimes here:
a slot idles out 3 s after its session's last sign of life)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from devstack.stack import Stack, StackSettings
from devstack.supervise import free_port
from tests.integration.test_stream_limits import (
    clearkey_challenge,
    hls_urls,
    license,
    new_viewer,
    refused,
    start,
)
from tests.support.servers import RedisServer
from tests.support.stack import http, start_stack, stop_and_audit

pytestmark = pytest.mark.integration


LIFETIMES = {"STREAM_IDLE_SECONDS": "3", "SESSION_CHECK_SECONDS": "1"}
# A low per-user limit, so that what one shared window admits can be bounded however slowly a
# busy machine sends the burst, and told apart from what two windows of their own would admit.
PER_USER = 20


@pytest.fixture
def replicas(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[Stack, Stack]]:
    first = start_stack(
        tmp_path,
        redis_url=redis_server.url,
        extra_env=LIFETIMES,
        per_user_rps=PER_USER,
        per_user_burst=PER_USER,
    )
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
            extra_env=LIFETIMES,
            per_user_rps=PER_USER,
            per_user_burst=PER_USER,
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
    # a few at a time: the rate limit service answers within its 0.25 s on a busy machine, or
    # the limit fails open (by design)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:

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
    alice_codes, bob_codes = await asyncio.gather(
        _spread(urls, alice, 8 * PER_USER), _spread(urls, bob, PER_USER // 2)
    )
    elapsed = time.monotonic() - started
    # one shared sliding window admits PER_USER per second; each replica's own would admit that
    # much again (and Envoy's per-replica bucket its burst on top)
    admitted = alice_codes.count(200)
    assert admitted <= PER_USER * math.ceil(elapsed), (elapsed, alice_codes)
    assert set(alice_codes) == {200, 429}, alice_codes
    assert bob_codes == [200] * (PER_USER // 2)
    over = http(urls[1], headers={"Authorization": f"Bearer {alice}", "Accept": "application/json"})
    if over.status == 429:
        assert int(over.headers["retry-after"]) >= 1
        assert "x-ratelimit-limit" in over.headers
        assert over.json()["code"] == "rate_limited"


def test_admitted_answers_carry_the_viewers_quota_from_the_shared_window(
    replicas: tuple[Stack, Stack],
) -> None:
    """authz counts the per-user limit inside its check (ENVOY_PER_USER_LIMIT=check) and Envoy
    adds the quota headers (IETF draft 03) to the admitted answer: one window for both
    replicas, so the second replica's answer counts the first one's request too."""
    first, second = replicas
    token = first.token(new_viewer(first, 0))  # a viewer of its own: an empty window
    started = time.monotonic()
    answers = [
        http(f"{s.gateway}/playback/demo/manifest", headers={"Authorization": f"Bearer {token}"})
        for s in (first, second)
    ]
    elapsed = time.monotonic() - started
    assert [a.status for a in answers] == [200, 200], [a.body[:200] for a in answers]
    assert answers[0].headers["x-ratelimit-limit"].startswith(f"{PER_USER}, {PER_USER};w=1")
    assert answers[0].headers["x-ratelimit-remaining"] == str(PER_USER - 1)
    if elapsed < 1.0:  # both in one window (a second stalled box would let the first one out)
        assert answers[1].headers["x-ratelimit-remaining"] == str(PER_USER - 2)


def _on(stack: Stack, url: str) -> str:
    """``url`` (on any replica's gateway) through ``stack``'s gateway instead."""
    parts = urllib.parse.urlsplit(url)
    return stack.gateway + parts.path + ("?" + parts.query if parts.query else "")


def test_sessions_and_slots_are_shared_follow_playback_and_outlive_replicas(
    replicas: tuple[Stack, Stack],
) -> None:
    first, second = replicas
    user = new_viewer(first, max_streams=1)
    a = start(first, user, "hls")
    key_a, segment_a = hls_urls(a)
    # a session started on one replica is known to the other: its key takes the one slot there
    assert http(_on(second, key_a)).status == 200
    b = start(second, user, "hls")
    key_b, _ = hls_urls(b)
    refused(http(_on(first, key_b)))
    # a plays on, its segments landing on both replicas: a sign of life every second holds the
    # slot well past its 3 s idle time
    for i in range(5):
        assert http(_on((first, second)[i % 2], segment_a)).status == 200
        time.sleep(1)
    refused(http(_on(first, key_b)))
    # a stops (no request at all): its slot is free 3 s later, on every replica
    time.sleep(3.5)
    assert http(_on(first, key_b)).status == 200
    # a resumes: the only slot is b's now
    time.sleep(1.1)
    refused(http(_on(second, segment_a)))
    # b's replica dies while b holds the slot: nothing leaks beyond the idle time
    second.stop_component("envoy")
    second.stop_component("authz")
    c = start(first, user, "dash")
    challenge = clearkey_challenge(first)
    refused(license(c, "org.w3.clearkey", challenge))
    time.sleep(3.5)
    assert license(c, "org.w3.clearkey", challenge).status == 200
    # the surviving replica restarts: sessions and slots are in Redis, not in the process
    first.stop_component("authz")
    first.start_component("authz")
    assert license(c, "org.w3.clearkey", challenge).status == 200
    refused(license(start(first, user, "dash"), "org.w3.clearkey", challenge))
