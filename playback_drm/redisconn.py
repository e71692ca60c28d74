"""``REDIS_URL``: one parser and one factory for the three shapes a Redis deployment takes.

    redis://[[user]:password@]host:6379/0            one primary (or a managed endpoint that
    rediss://...                                     fails over behind one name), as redis-py
                                                     reads it
    redis+sentinel://[[user]:password@]h1:26379,h2:26379,h3:26379/<service>[?db=0]
    rediss+sentinel://...                            Sentinel: the sentinels name the primary
    redis+cluster://[[user]:password@]h1:7000,h2:7001,...
    rediss+cluster://...                             Redis Cluster: any reachable nodes seed the map

The clients are redis-py's own (``Redis`` with a blocking pool, ``Sentinel.master_for``,
``RedisCluster``): failover is theirs, none is written here. A URL that cannot be read is a
:class:`~playback_drm.settings.ConfigError` naming the setting, at start-up; the message never
carries the password.

Query parameters (each shape reads only its own; anything else is an error):

- Sentinel: ``db`` (default 0), ``sentinel_password`` (when the sentinels themselves require one;
  the userinfo's password is the data nodes').
- Sentinel and Cluster over TLS: ``ssl_ca_certs`` (a CA bundle; the system's by default).
- ``redis://`` / ``rediss://`` / ``unix://``: whatever redis-py's ``from_url`` accepts.

Cluster deployments need every multi-key command and script to keep its keys in one slot: the
services' keys carry hash tags (``{u:<user>}`` and the like) for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.connection import parse_url as redis_parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from playback_drm.settings import ConfigError

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"
"""What the services hold: a primary's client (plain or Sentinel-managed) or a cluster client."""

Shape = Literal["single", "sentinel", "cluster"]

CLUSTER_RETRIES: Final = 0
"""A cluster command that failed (a node gone, the cluster down while a replica takes over) is not
tried again, as a primary's client (plain or Sentinel) does not: each user already treats a failed
command as a miss or fails open, and the slot map is read again before the next command. redis-py's
default (ten tries with backoff, and a quarter second before each after CLUSTERDOWN) held a
request for longer than Envoy waits for authz (0.5 s): a failover turned into 503s where a miss
would do. Redirections (MOVED, ASK) are followed all the same: they are not retries."""
SENTINEL_PORT: Final = 26379
REDIS_PORT: Final = 6379

_SINGLE_SCHEMES: Final = {"redis", "rediss", "unix"}
_SCHEMES: Final[dict[str, tuple[Shape, bool]]] = {
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_QUERY: Final[dict[Shape, frozenset[str]]] = {
    "sentinel": frozenset({"db", "sentinel_password", "ssl_ca_certs"}),
    "cluster": frozenset({"ssl_ca_certs"}),
}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``REDIS_URL``. ``repr`` leaves the secrets out."""

    shape: Shape
    url: str = field(repr=False)
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl_ca_certs: str | None = None


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """How a process's client behaves: pool size, and how long it waits for what (seconds)."""

    max_connections: int = 64
    timeout: float = 0.25  # one command (socket read/write)
    connect_timeout: float = 0.5
    pool_timeout: float = 0.2  # a blocking pool's wait for a free connection
    health_check_interval: float = 0


_USERINFO_SECRET: Final = re.compile(r"(://[^:@/?#]*:)[^@/?#]*@")
_QUERY_SECRET: Final = re.compile(r"((?:[?&])sentinel_password=)[^&#]*")


def redact(url: str) -> str:
    """``url`` with the password (and a sentinel password) replaced by ``***``."""
    return _QUERY_SECRET.sub(r"\1***", _USERINFO_SECRET.sub(r"\1***@", url))


def parse_redis_url(url: str, setting: str = "REDIS_URL") -> RedisTarget:
    """Read one of the three shapes; :class:`ConfigError` naming ``setting`` when it is not one."""
    scheme, sep, _rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or (scheme not in _SINGLE_SCHEMES and scheme not in _SCHEMES):
        raise ConfigError(
            f"{setting} must start with redis://, rediss://, unix://, redis+sentinel://, "
            f"rediss+sentinel://, redis+cluster:// or rediss+cluster://; got {redact(url)!r}"
        )
    if scheme in _SINGLE_SCHEMES:
        try:
            redis_parse_url(url)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{setting} is not a Redis URL ({exc}): {redact(url)!r}") from None
        path = urlsplit(url).path.strip("/")
        if scheme != "unix" and path and not path.isdigit():
            # redis-py would quietly use database 0
            raise ConfigError(
                f"{setting} is not a Redis URL (the path is a database number): {redact(url)!r}"
            )
        return RedisTarget("single", url, tls=scheme == "rediss")
    shape, tls = _SCHEMES[scheme]
    return _parse_multi(url, setting, shape, tls)


def _parse_multi(url: str, setting: str, shape: Shape, tls: bool) -> RedisTarget:
    shown = redact(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"{setting} is not a URL ({exc}): {shown!r}") from None
    if parts.fragment:
        raise ConfigError(f"{setting} has a #fragment, which means nothing here: {shown!r}")
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    default_port = SENTINEL_PORT if shape == "sentinel" else REDIS_PORT
    hosts = tuple(_host_port(item, setting, shown, default_port) for item in hostlist.split(","))
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in _QUERY[shape] or (key == "ssl_ca_certs" and not tls):
            allowed = ", ".join(sorted(k for k in _QUERY[shape] if tls or k != "ssl_ca_certs"))
            raise ConfigError(
                f"{setting}: unknown parameter {key!r} for a {shape} URL "
                f"(known: {allowed or 'none'}): {shown!r}"
            )
        if key in query:
            raise ConfigError(f"{setting}: parameter {key!r} given twice: {shown!r}")
        query[key] = value
    path = parts.path
    service = ""
    db = 0
    if shape == "sentinel":
        service = unquote(path[1:]) if path.startswith("/") else ""
        if not service or "/" in service:
            raise ConfigError(
                f"{setting} names no Sentinel service: the path is the primary's name, "
                f"e.g. redis+sentinel://h1:26379,h2:26379/mymaster; got {shown!r}"
            )
        db = _db(query.get("db", "0"), setting, shown)
    elif path not in ("", "/", "/0"):
        raise ConfigError(f"{setting}: a Redis Cluster has database 0 only (no path): {shown!r}")
    return RedisTarget(
        shape,
        url,
        hosts=hosts,
        service=service,
        db=db,
        tls=tls,
        username=username,
        password=password,
        sentinel_password=query.get("sentinel_password") or None,
        ssl_ca_certs=query.get("ssl_ca_certs") or None,
    )


def env_redis(env: Mapping[str, str], name: str = "REDIS_URL") -> RedisTarget | None:
    """The setting ``name`` read as a Redis URL; None when unset or empty."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    return parse_redis_url(raw.strip(), name)


def _host_port(item: str, setting: str, shown: str, default_port: int) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [v6]:port
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"{setting}: unreadable host {item!r} in {shown!r}")
        port_text = rest[1:]
    else:
        host, _colon, port_text = item.partition(":")
    if not host:
        raise ConfigError(f"{setting}: an empty host in the host list of {shown!r}")
    if any(c in host for c in " /?#@"):
        raise ConfigError(f"{setting}: unreadable host {host!r} in {shown!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{setting}: port {port_text!r} of {host} is not a TCP port: {shown!r}")
    return host, int(port_text)


def _db(raw: str, setting: str, shown: str) -> int:
    if not raw.isdigit():
        raise ConfigError(f"{setting}: db must be a number >= 0, got {raw!r}: {shown!r}")
    return int(raw)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (it asks the sentinels where the primary is) with the blocking pool's wait
    for a free connection, as the single-primary shape has: a burst waits instead of failing."""


class _Gate:
    """At most ``size`` commands in flight; the next waits up to ``wait`` seconds for a turn."""

    def __init__(self, size: int, wait: float) -> None:
        self._turns = asyncio.Semaphore(size)
        self._wait = wait

    async def enter(self) -> None:
        if not self._turns.locked():  # a free turn: no timer to arm
            await self._turns.acquire()
            return
        try:
            async with asyncio.timeout(self._wait):
                await self._turns.acquire()
        except TimeoutError:
            raise RedisConnectionError("No connection available.") from None

    def leave(self) -> None:
        self._turns.release()


class _GatedPipeline(ClusterPipeline):
    _gate: _Gate

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        await self._gate.enter()
        try:
            return await super().execute(raise_on_error, allow_redirections)
        finally:
            self._gate.leave()


class _GatedCluster(RedisCluster):
    """redis-py's cluster client with the blocking pool's manners: its nodes' pools raise
    ``MaxConnectionsError`` past ``max_connections`` (a burst of rate-limit checks would fail),
    so commands and pipelines take turns, as many at once as a node has connections. A turn
    holds at most one connection per node, so no node's pool runs dry."""

    def __init__(self, *args: Any, gate: _Gate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self._gate.enter()
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._gate.leave()

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        pipe = _GatedPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py does
        pipe._gate = self._gate
        return pipe


@dataclass(slots=True)
class SharedRedis:
    """A process's Redis client and what else must close with it (a Sentinel's own clients)."""

    target: RedisTarget
    client: RedisClient
    _sentinel: Sentinel | None = None

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:  # redis errors never leave this module
            return False

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()
        if self._sentinel is not None:
            with contextlib.suppress(Exception):
                await self._sentinel.aclose()


def open_redis(target: RedisTarget, options: RedisOptions | None = None) -> SharedRedis:
    """The client for ``target`` (no I/O yet: connections open on first use)."""
    opts = options or RedisOptions()
    common: dict[str, Any] = {
        "socket_timeout": opts.timeout,
        "socket_connect_timeout": opts.connect_timeout,
        "health_check_interval": opts.health_check_interval,
    }
    if target.shape == "single":
        pool = aioredis.BlockingConnectionPool.from_url(
            target.url, max_connections=opts.max_connections, timeout=opts.pool_timeout, **common
        )
        return SharedRedis(target, aioredis.Redis.from_pool(pool))  # owns the pool
    tls: dict[str, Any] = {}
    if target.tls:
        tls = {"ssl": True, "ssl_cert_reqs": "required"}
        if target.ssl_ca_certs:
            tls["ssl_ca_certs"] = target.ssl_ca_certs
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.shape == "sentinel":
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": opts.timeout,
            "socket_connect_timeout": opts.connect_timeout,
            **tls,
        }
        if target.sentinel_password:
            sentinel_kwargs["password"] = target.sentinel_password
        sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs)
        client = sentinel.master_for(
            target.service,
            redis_class=aioredis.Redis,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=opts.max_connections,
            timeout=opts.pool_timeout,
            db=target.db,
            **auth,
            **common,
            **tls,
        )
        return SharedRedis(target, client, sentinel)
    cluster = _GatedCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
        max_connections=opts.max_connections,
        gate=_Gate(opts.max_connections, opts.pool_timeout),
        retry=Retry(NoBackoff(), CLUSTER_RETRIES),
        **auth,
        **common,
        **tls,
    )
    return SharedRedis(target, cluster)


__all__ = [
    "RedisClient",
    "RedisOptions",
    "RedisTarget",
    "SharedRedis",
    "env_redis",
    "open_redis",
    "parse_redis_url",
    "redact",
]
