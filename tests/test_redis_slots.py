"""Every Lua script and multi-key command of the project keeps its keys in one Redis Cluster slot.

The project's own code runs against a real Redis Cluster (tests/support/ha.py) while every
master is watched with MONITOR, which shows each command a client sends and each command a script
runs (``[0 lua]``). The keys of each (``COMMAND GETKEYS``) are mapped to slots: a command, or a
script with the commands it ran, that touches two slots fails the test. A real cluster answers
CROSSSLOT only for keys a command declares; this Redis (6.2) lets a script reach an undeclared key
of another slot on the same node, which is why the commands a script runs are checked too. The
test shows it would catch both kinds of mistake.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import redis
from redis.crc import key_slot

from authz.entitlement import Entitlement, EntitlementCache, RedisCache, redis_client
from authz.ratelimit import RedisSlidingWindow
from authz.sessionstore import RedisSessionStore
from license_broker.cache import CachedLicense, RedisLicenseCache, cache_key
from playback_drm.redisconn import RedisClient
from tests.authz.test_sessions import LIFE, T0, facts
from tests.support.ha import RedisClusterSet

_LINE = re.compile(rb"^\+(\S+) \[(\d+) ([^\]]+)\] (.*)$")
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def _unquote(raw: bytes) -> bytes:
    """One MONITOR argument back to its bytes (Redis writes them with sdscatrepr)."""
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\":
            nxt = raw[i + 1 : i + 2]
            if nxt == b"x":
                out += bytes([int(raw[i + 2 : i + 4], 16)])
                i += 4
                continue
            out += _ESCAPES.get(nxt, nxt)
            i += 2
            continue
        out += raw[i : i + 1]
        i += 1
    return bytes(out)


@dataclass
class Seen:
    """What ran on one master: (source, args) per command, in order."""

    port: int
    commands: list[tuple[str, list[bytes]]] = field(default_factory=list)


class SlotWatch:
    """MONITOR on every master of a cluster, until :meth:`collect`."""

    def __init__(self, cluster: RedisClusterSet) -> None:
        self._cluster = cluster
        self._streams: list[tuple[int, asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._marker = f"slot-watch-{uuid.uuid4().hex}"

    async def __aenter__(self) -> SlotWatch:
        for node in self._cluster.masters:
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            writer.write(b"MONITOR\r\n")
            await writer.drain()
            assert await reader.readline() == b"+OK\r\n"
            self._streams.append((node.port, reader, writer))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _port, _reader, writer in self._streams:
            writer.close()
            await writer.wait_closed()

    async def collect(self) -> list[Seen]:
        """Everything each master ran so far (an ECHO of our own marks the end)."""
        seen = []
        for port, reader, _writer in self._streams:
            with redis.Redis(port=port, socket_timeout=2) as direct:
                direct.echo(self._marker)
            found = Seen(port)
            while True:
                line = (await asyncio.wait_for(reader.readline(), 5)).rstrip(b"\r\n")
                match = _LINE.match(line)
                if match is None:
                    continue
                source = match.group(3).decode()
                args = [_unquote(a) for a in _ARG.findall(match.group(4))]
                if args[:2] == [b"ECHO", self._marker.encode()] or args[:2] == [
                    b"echo",
                    self._marker.encode(),
                ]:
                    break
                found.commands.append(("lua" if source == "lua" else "client", args))
            seen.append(found)
        return seen


@dataclass
class Verdict:
    scripts: int  # script runs seen (EVAL/EVALSHA)
    commands: int  # commands with keys seen
    crossing: list[str]  # what touched two slots


def judge(seen: list[Seen], cluster: RedisClusterSet) -> Verdict:
    keys_of: dict[tuple[bytes, ...], list[bytes]] = {}
    node = next(n for n in cluster.masters if n.process.running)
    with redis.Redis(port=node.port, socket_timeout=2) as direct:

        def keys(args: list[bytes]) -> list[bytes]:
            memo = tuple(args)
            if memo not in keys_of:
                try:
                    found = direct.command_getkeys(*args)
                except redis.ResponseError:  # no key arguments (TIME, PING, ...)
                    found = []
                keys_of[memo] = [k if isinstance(k, bytes) else str(k).encode() for k in found]
            return keys_of[memo]

        scripts = commands = 0
        crossing: list[str] = []
        for master in seen:
            run: tuple[str, set[int], list[bytes]] | None = None
            groups: list[tuple[str, set[int], list[bytes]]] = []
            for source, args in master.commands:
                name = args[0].upper() if args else b""
                if name in (b"MONITOR", b"COMMAND", b"HELLO", b"SCRIPT", b"CLUSTER", b"INFO"):
                    continue
                found = keys(args)
                slots = {key_slot(k) for k in found}
                if found:
                    commands += 1
                if len(slots) > 1:
                    crossing.append(f"{source} {args[0]!r} on {sorted(set(found))}")
                if source == "client":
                    run = None
                    if name in (b"EVAL", b"EVALSHA"):
                        scripts += 1
                        run = (f"script {args[1][:12]!r}", set(slots), list(found))
                        groups.append(run)
                elif run is not None:  # a command the script above ran
                    run[1].update(slots)
                    run[2].extend(found)
                else:
                    crossing.append(f"a script command without its script: {args!r}")
            for what, slots, touched in groups:
                if len(slots) > 1:
                    crossing.append(f"{what} touched {sorted(set(touched))}")
    return Verdict(scripts, commands, crossing)


async def _every_operation(client: RedisClient) -> None:
    """Every Redis operation of authz and the license broker, each path of each script."""
    window = RedisSlidingWindow(client, 3, 5.0)
    for _ in range(5):  # admitted, then refused (the refusal reads the oldest entry)
        await window.hit("user=a}b")
    await window.hit("user=bob", hits=2)

    cache = EntitlementCache(
        _Billing(),
        ttl=60,
        deny_ttl=10,
        shared=RedisCache(client),
        local_ttl=0.0,
    )
    await cache.get("a}b", "demo")  # miss: Billing, then SET
    await cache.get("a}b", "demo")  # hit in Redis

    store = RedisSessionStore(client, LIFE)
    user = "x{y}z"
    first, second = facts("S" * 22, user=user), facts("T" * 22, user=user, video="w")
    await store.create(first, T0)
    await store.create(second, T0 + 1)
    assert await store.facts(first.sid) == first
    await store.touch(first, 1, T0 + 2, take=True)
    await store.touch(second, 1, T0 + 3, take=True)  # refused: the one slot is taken
    await store.touch(first, 1, T0 + 4, take=False)
    await store.license(user, "v", first.label, "U" * 22, first.plan, 1, T0 + 5)
    await store.license(user, "fresh", first.label, "V" * 22, first.plan, 2, T0 + 6)
    await store.release(user, "v", first.label, "U" * 22, first.plan, T0 + 7)
    # the per-user rate limit riding in the session script (authz.ratelimit.Charge): its window
    # is in the viewer's slot; admitted twice, then refused
    charged = RedisSlidingWindow(client, 2, 5.0)
    for _ in range(3):
        await store.touch(first, 1, T0 + 8, take=False, charge=charged.charge())
    await store.license(user, "v", first.label, "X" * 22, first.plan, 1, T0 + 9, charged.charge())
    for n in range(LIFE.max_sessions + 1):  # past the per-viewer maximum: the oldest goes
        await store.create(facts(f"W{n:021d}", user=user), T0 + 10 + n)
    await store.end(second, T0 + 20)
    await store.active(["basic", "premium"], T0 + 21)

    licenses = RedisLicenseCache(client)
    key = cache_key("org.w3.clearkey", "demo", "a}b", "basic", b"request")
    issued = CachedLicense("lic-1", 2e9, "org.w3.clearkey", "application/json")
    await licenses.add(key, issued, 300)
    await licenses.add(key, CachedLicense("lic-2", 2e9, "x", "y"), 300)  # exists: read back
    assert await licenses.get(key) == issued


class _Billing:
    async def fetch(self, user: str, video: str) -> Entitlement:
        return Entitlement(user, video, True, "basic", None)


@pytest.fixture
async def cluster_client(
    redis_cluster: RedisClusterSet, redis_cluster_url: str
) -> AsyncIterator[RedisClient]:
    shared = redis_client(redis_cluster_url)
    yield shared.client
    await shared.aclose()


async def test_every_script_and_multi_key_command_stays_in_one_slot(
    redis_cluster: RedisClusterSet, cluster_client: RedisClient
) -> None:
    async with SlotWatch(redis_cluster) as watch:
        await _every_operation(cluster_client)
        verdict = judge(await watch.collect(), redis_cluster)
    assert not verdict.crossing, "\n".join(verdict.crossing)
    # the watch saw the work: both scripts on several paths, and the plain commands
    assert verdict.scripts >= 15, verdict
    assert verdict.commands >= 60, verdict


async def test_the_watch_catches_a_script_that_crosses_slots(
    redis_cluster: RedisClusterSet, cluster_client: RedisClient
) -> None:
    """The controls: a script that reaches an undeclared key of another slot, and a command that
    declares keys of two slots (the cluster's own CROSSSLOT)."""
    declared = "pdrm:{ctl-a}:x"
    owner = redis_cluster.owner_of(declared)
    # another key on the same master but in another slot: this Redis runs the script
    other = next(
        k
        for k in (f"pdrm:{{ctl-{n}}}:y" for n in range(1000))
        if key_slot(k.encode()) != key_slot(declared.encode())
        and redis_cluster.owner_of(k).port == owner.port
    )
    sneaky: Callable[..., Awaitable[object]] = cluster_client.register_script(
        "redis.call('SET', KEYS[1], 1); redis.call('SET', ARGV[1], 1); return 1"
    )
    async with SlotWatch(redis_cluster) as watch:
        refused = None
        try:
            await sneaky(keys=[declared], args=[other])
        except redis.RedisError as exc:  # a Redis that refuses it outright (7.0 and later)
            refused = str(exc)
        verdict = judge(await watch.collect(), redis_cluster)
    assert refused is not None or any(other in c for c in verdict.crossing), verdict
    with (
        redis.Redis(port=owner.port, socket_timeout=2) as direct,
        pytest.raises(redis.ResponseError, match="hash to the same slot"),  # CROSSSLOT
    ):
        direct.eval("return 1", 2, declared, other)
