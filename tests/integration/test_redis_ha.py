"""authz and the license broker on Redis the HA ways, through Envoy: Sentinel and Cluster.

For each shape the whole stack runs with that ``REDIS_URL`` (redis+sentinel:// or
redis+cluster://) and shows every Redis-backed decision working: the per-user rate limit, the
entitlement cache, the playback sessions and their stream slots, the license cache. Then the
Redis node holding a viewer's state is killed (SIGKILL): Sentinel promotes a replica, or the
cluster master's replica takes over. While that happens a probe keeps asking; afterwards the same
decisions hold again, on the promoted node, for the state written before the failover and for new
viewers.

What the code does in the failover window (a few seconds here, ``down-after-milliseconds`` and
``cluster-node-timeout`` of 1 s): a Redis error is never a denial of its own and never an allow of
what Billing denies. The entitlement cache reads a failure as a miss and asks Billing (whose
denials stay denials); the rate limit service's errors let Envoy admit (``failure_mode_deny:
false``); the session registry fails open (the stream limit is a business rule, counted as
``unchecked``); the license cache is skipped (a miss). The probe asserts no denied viewer is ever
admitted and reports what the others saw.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from threading import Event, Thread
from typing import Any

import pytest
import redis

from devstack.stack import Stack
from tests.integration.test_stream_limits import (
    CLEARKEY,
    clearkey_challenge,
    hls_urls,
    license,
    refused,
    start,
)
from tests.support.ha import RedisClusterSet, SentinelSet, start_cluster, start_sentinel_set
from tests.support.stack import Reply, add_subscriber, http, set_viewer, start_stack, stop_and_audit

pytestmark = pytest.mark.integration

PER_USER_RPS = 20
ENV = {
    "LICENSE_CACHE_L1_TTL": "0",  # every license cache lookup goes to Redis
    "SESSION_CHECK_SECONDS": "1",
}


@dataclass
class Shape:
    """A Redis deployment the stack runs on, and how to reach its data and break it."""

    name: str
    url: str
    sentinel: SentinelSet | None = None
    cluster: RedisClusterSet | None = None

    def clients(self) -> list[redis.Redis]:
        if self.sentinel is not None:
            return [self.sentinel.primary().client()]
        assert self.cluster is not None
        found = []
        for node in self.cluster.nodes:  # a replica may have been promoted
            if not node.process.running:
                continue
            client = node.client()
            if client.info("replication")["role"] == "master":
                found.append(client)
            else:
                client.close()
        return found

    def keys(self, pattern: str) -> list[str]:
        found: list[str] = []
        for client in self.clients():
            with client:
                found += [k.decode() for k in client.scan_iter(pattern)]
        return found

    def kill(self, user: str) -> float:
        """Kill the node holding ``user``'s sessions; seconds until a replica serves them."""
        if self.sentinel is not None:
            return self.sentinel.kill_primary()
        assert self.cluster is not None
        return self.cluster.kill_master_of(f"pdrm:{{u:{user}}}:live")

    def stop(self) -> None:
        for found in (self.sentinel, self.cluster):
            if found is not None:
                found.stop()


@pytest.fixture(params=["sentinel", "cluster"])
def shape(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shape]:
    """A Redis set of this test's own: the test kills one of its nodes."""
    if request.param == "sentinel":
        sentinel = start_sentinel_set(tmp_path / "sentinel")
        found = Shape("sentinel", sentinel.url, sentinel=sentinel)
    else:
        cluster = start_cluster(tmp_path / "cluster")
        found = Shape("cluster", cluster.url, cluster=cluster)
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture
def ha_stack(shape: Shape, tmp_path: Path) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path / "stack", redis_url=shape.url, per_user_rps=PER_USER_RPS, extra_env=ENV
    )
    try:
        yield stack
    finally:
        stop_and_audit(stack)


def _manifest(stack: Stack, user: str) -> Reply:
    return http(
        f"{stack.gateway}/playback/demo/manifest",
        headers={"Authorization": f"Bearer {stack.token(user)}", "Accept": "application/json"},
    )


def _viewer(stack: Stack, max_streams: int, prefix: str = "ha") -> str:
    user = f"{prefix}-{uuid.uuid4().hex[:8]}"
    set_viewer(stack, user, "basic", max_streams)
    return user


def _burst(stack: Stack, user: str, count: int) -> list[int]:
    token = stack.token(user)
    url = f"{stack.gateway}/playback/demo/manifest"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda _: http(url, headers=headers).status, range(count)))


def check_decisions(stack: Stack, shape: Shape, viewer: str) -> None:
    """Each Redis-backed decision, through Envoy. ``viewer`` (one stream) plays session ``a``."""
    # entitlement: a grant is cached in Redis for every replica; a denial stays a denial
    assert _manifest(stack, viewer).status == 200
    assert shape.keys(f"playback:ent:{viewer}:demo"), "the grant is not cached in Redis"
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"
    set_viewer(stack, nobody, None)
    denied = _manifest(stack, nobody)
    assert denied.status == 403, denied.body
    assert denied.json()["code"] == "not_entitled"
    # the stream limit: a second playback of a one-stream viewer is refused at its key
    a = start(stack, viewer, "hls")
    key_a, _ = hls_urls(a)
    assert http(key_a).status == 200
    refused(http(hls_urls(start(stack, viewer, "hls"))[0]))
    assert shape.keys(f"pdrm:{{u:{viewer}}}:slots")
    # the license cache: the same challenge twice is the same license, from Redis
    dash = start(stack, add_subscriber(stack, f"lic-{uuid.uuid4().hex[:8]}"), "dash")
    challenge = clearkey_challenge(stack)
    first, again = license(dash, CLEARKEY, challenge), license(dash, CLEARKEY, challenge)
    assert first.status == again.status == 200, (first.body, again.body)
    assert first.headers["x-playback-license-id"] == again.headers["x-playback-license-id"]
    assert shape.keys("pdrm:lic:*")
    # the per-user rate limit, counted in Redis across the burst
    burster = add_subscriber(stack, f"burst-{uuid.uuid4().hex[:8]}")
    codes = _burst(stack, burster, 2 * PER_USER_RPS)
    assert codes.count(429) >= PER_USER_RPS // 2, codes
    assert set(codes) <= {200, 429}, codes
    assert shape.keys(f"playback:rl:{{u:{burster}}}:rate")  # in the viewer's slot


class Probe:
    """Asks every 50 ms while a node dies: an entitled viewer's manifest, a denied viewer's."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self.allowed_user = add_subscriber(stack, f"probe-{uuid.uuid4().hex[:8]}")
        self.denied_user = f"probe-denied-{uuid.uuid4().hex[:8]}"
        set_viewer(stack, self.denied_user, None)
        self.results: list[tuple[str, int, float]] = []  # (who, status, seconds)
        self._stop = Event()
        self._thread = Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for who, user in (("allowed", self.allowed_user), ("denied", self.denied_user)):
                started = time.monotonic()
                reply = _manifest(self._stack, user)
                self.results.append((who, reply.status, time.monotonic() - started))
            self._stop.wait(0.05)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for who in ("allowed", "denied"):
            mine = [(s, t) for w, s, t in self.results if w == who]
            codes: dict[int, int] = {}
            for status, _t in mine:
                codes[status] = codes.get(status, 0) + 1
            slowest = max((t for _s, t in mine), default=0.0)
            out[who] = {"requests": len(mine), "codes": codes, "slowest_s": round(slowest, 3)}
        return out


def test_decisions_hold_on_ha_redis_and_after_a_failover(
    shape: Shape, ha_stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = ha_stack
    viewer = _viewer(stack, max_streams=1)
    check_decisions(stack, shape, viewer)
    another = start(stack, viewer, "hls")  # the viewer's one slot is held by check_decisions
    with Probe(stack) as probe:
        failover = shape.kill(viewer)
        time.sleep(1.0)  # and a second of the promoted node
    report = probe.summary()
    # a denied viewer is never admitted, whatever Redis is doing (a 503 would be a refusal too)
    assert report["denied"]["codes"].keys() <= {403, 503}, report
    assert report["allowed"]["requests"] > 0
    # the viewer's state outlived its node: the stream still holds the one slot
    refused(http(hls_urls(another)[0]))
    # and every decision holds on the promoted node, for a new viewer too
    check_decisions(stack, shape, _viewer(stack, max_streams=1))
    with capsys.disabled():
        print(f"\n{shape.name}: failover {failover:.2f}s; probe: {json.dumps(report)}")
