"""Redis the HA ways, as real processes: a Sentinel set and a Redis Cluster.

- :func:`start_sentinel_set`: one primary, two replicas, three sentinels (quorum 2), so killing
  the primary makes the sentinels promote a replica (``down-after-milliseconds`` 1000).
- :func:`start_cluster`: three masters, each with one replica (``cluster-node-timeout`` 1000,
  ``cluster-require-full-coverage no``), built with CLUSTER ADDSLOTS / MEET / REPLICATE (no
  ``redis-cli --cluster`` needed).

Both from the same ``redis-server`` binary as :func:`tests.support.servers.start_redis`, on free
loopback ports, with a readiness wait; ``stop()`` ends every process they started.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from tests.support.procs import ManagedProcess, binary, free_port
from tests.support.servers import redis_argv

SERVICE = "pdrm"
SLOTS = 16384
FAILURE_MS = 1000  # sentinel down-after-milliseconds, cluster-node-timeout


@dataclass
class RedisNode:
    process: ManagedProcess
    port: int
    password: str | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=2)

    def kill(self) -> None:
        """SIGKILL: no goodbye to replicas or sentinels, as when a machine dies."""
        self.process.kill()


def _wait(what: str, check: Callable[[], bool], timeout: float = 20.0) -> float:
    """Poll ``check`` until it holds; seconds it took."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what}: not after {timeout}s")
        time.sleep(0.05)


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _answers(port: int) -> bool:
    """The server is up: PONG, or a refusal for want of a password."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def _start_node(
    log_dir: Path,
    *extra: str,
    name: str = "redis",
    port: int | None = None,
    password: str | None = None,
) -> RedisNode:
    port = port or free_port()
    if password:
        extra = (*extra, "--requirepass", password, "--masterauth", password)
    workdir = log_dir / f"{name}-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = redis_argv(port, workdir, *extra)
    proc = ManagedProcess(
        f"{name}-{port}", argv, log_dir=log_dir, ready=functools.partial(_answers, port)
    ).start()
    return RedisNode(proc, port, password)


# -------------------------------------------------------------------------------- Sentinel


@dataclass
class SentinelSet:
    servers: list[RedisNode]  # [0] is the first primary
    sentinels: list[RedisNode]
    service: str = SERVICE

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        auth = f":{self.servers[0].password}@" if self.servers[0].password else ""
        secret = self.sentinels[0].password
        query = f"?sentinel_password={secret}" if secret else ""
        return f"redis+sentinel://{auth}{hosts}/{self.service}{query}"

    def primary_port(self) -> int:
        """The primary as a sentinel that still answers names it."""
        for sentinel in self.sentinels:
            if not sentinel.process.running:
                continue
            with contextlib.suppress(redis.RedisError), sentinel.client() as client:
                _host, port = client.sentinel_get_master_addr_by_name(self.service)
                return int(port)
        raise RuntimeError("no sentinel answers")

    def primary(self) -> RedisNode:
        port = self.primary_port()
        return next(s for s in self.servers if s.port == port)

    def kill_primary(self) -> float:
        """Kill the primary; seconds until every sentinel names a new one that accepts writes."""
        old = self.primary()
        old.kill()

        def promoted() -> bool:
            ports = set()
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    _host, port = client.sentinel_get_master_addr_by_name(self.service)
                    ports.add(int(port))
            if len(ports) != 1 or old.port in ports:
                return False
            with self.primary().client() as client:
                return bool(client.info("replication")["role"] == "master")

        return _wait("sentinel failover", promoted, timeout=30)

    def flush(self) -> None:
        with contextlib.suppress(redis.RedisError), self.primary().client() as client:
            client.flushall()

    def stop(self) -> None:
        for node in [*self.sentinels, *self.servers]:
            node.process.stop()


def start_sentinel_set(
    log_dir: Path,
    replicas: int = 2,
    sentinels: int = 3,
    *,
    password: str | None = None,
    sentinel_password: str | None = None,
) -> SentinelSet:
    """``password``: the data nodes require one; ``sentinel_password``: the sentinels do."""
    started: list[RedisNode] = []
    try:
        primary = _start_node(log_dir, name="sentinel-primary", password=password)
        started.append(primary)
        for _ in range(replicas):
            started.append(
                _start_node(
                    log_dir,
                    "--replicaof",
                    "127.0.0.1",
                    str(primary.port),
                    name="sentinel-replica",
                    password=password,
                )
            )
        with primary.client() as client:
            _wait(
                "replicas in sync",
                lambda: client.info("replication").get("connected_slaves") == replicas,
            )
        watchers: list[RedisNode] = []
        for _ in range(sentinels):
            port = free_port()
            conf = log_dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {log_dir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {FAILURE_MS}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
                + (f"sentinel auth-pass {SERVICE} {password}\n" if password else "")
                + (
                    f"requirepass {sentinel_password}\nsentinel sentinel-pass {sentinel_password}\n"
                    if sentinel_password
                    else ""
                )
            )
            argv = [binary("redis-server"), str(conf), "--sentinel"]
            proc = ManagedProcess(
                f"sentinel-{port}",
                argv,
                log_dir=log_dir,
                ready=functools.partial(_answers, port),
            ).start()
            watchers.append(RedisNode(proc, port, sentinel_password))
        found = SentinelSet(started, watchers)

        def every_sentinel_sees_everyone() -> bool:
            for sentinel in watchers:
                with sentinel.client() as client:
                    doc = client.sentinel_master(SERVICE)
                    if int(doc["num-slaves"]) != replicas:
                        return False
                    if int(doc["num-other-sentinels"]) != sentinels - 1:
                        return False
            return True

        # sentinels find each other through the primary's hello channel (every 2 s)
        _wait("sentinels discover each other", every_sentinel_sees_everyone)
        return found
    except BaseException:
        for node in started:
            node.process.stop()
        raise


# --------------------------------------------------------------------------------- Cluster


@dataclass
class RedisClusterSet:
    masters: list[RedisNode]
    replicas: list[RedisNode]
    ids: dict[int, str] = field(default_factory=dict)  # port -> node id

    @property
    def nodes(self) -> list[RedisNode]:
        return [*self.masters, *self.replicas]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.masters)
        auth = f":{self.masters[0].password}@" if self.masters[0].password else ""
        return f"redis+cluster://{auth}{hosts}"

    def _any_live(self) -> RedisNode:
        return next(n for n in self.nodes if n.process.running)

    def owner_of(self, key: str) -> RedisNode:
        """The master serving ``key``'s slot now."""
        slot = key_slot(key.encode())
        with self._any_live().client() as client:
            for start, end, primary, *_replicas in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"slot {slot} is served by no one")

    def kill_master_of(self, key: str) -> float:
        """Kill the master of ``key``'s slot; seconds until a replica serves it (cluster ok)."""
        old = self.owner_of(key)
        old.kill()

        def taken_over() -> bool:
            with self._any_live().client() as client:
                if client.cluster("INFO")["cluster_state"] != "ok":
                    return False
            return self.owner_of(key).port != old.port

        return _wait("cluster failover", taken_over, timeout=30)

    def flush(self) -> None:
        for node in self.masters:
            if node.process.running:
                with contextlib.suppress(redis.RedisError), node.client() as client:
                    if client.info("replication")["role"] == "master":
                        client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.process.stop()


def start_cluster(
    log_dir: Path, masters: int = 3, replicas_each: int = 1, *, password: str | None = None
) -> RedisClusterSet:
    flags = [
        "--cluster-enabled",
        "yes",
        "--cluster-node-timeout",
        str(FAILURE_MS),
        # a replica takes over however long it was cut off (the test kills masters abruptly)
        "--cluster-replica-validity-factor",
        "0",
        # as docs/DEPLOYMENT.md recommends: the other masters' slots answer while a replica
        # takes over (with "yes" every node answers CLUSTERDOWN, which redis-py waits 0.25 s on)
        "--cluster-require-full-coverage",
        "no",
    ]
    nodes: list[RedisNode] = []
    try:
        for i in range(masters * (1 + replicas_each)):
            port = _cluster_port()
            conf = log_dir / f"cluster-{port}.conf"
            nodes.append(
                _start_node(
                    log_dir,
                    *flags,
                    "--cluster-config-file",
                    str(conf),
                    name=f"cluster-{'m' if i < masters else 'r'}",
                    port=port,
                    password=password,
                )
            )
        found = RedisClusterSet(nodes[:masters], nodes[masters:])
        for node in nodes:
            with node.client() as client:
                found.ids[node.port] = client.execute_command("CLUSTER MYID").decode()
        bounds = [SLOTS * i // masters for i in range(masters + 1)]
        for i, node in enumerate(found.masters):
            with node.client() as client:
                client.execute_command("CLUSTER ADDSLOTS", *range(bounds[i], bounds[i + 1]))
        first = nodes[0]
        for node in nodes[1:]:
            with node.client() as client:
                client.execute_command("CLUSTER MEET", "127.0.0.1", first.port)

        def everyone_knows_everyone() -> bool:
            for node in nodes:
                with node.client() as client:
                    known = client.execute_command("CLUSTER NODES")  # address -> facts
                    if len(known) != len(nodes):
                        return False
                    if any("handshake" in str(n.get("flags")) for n in known.values()):
                        return False
            return True

        _wait("cluster nodes meet", everyone_knows_everyone)
        for i, node in enumerate(found.replicas):
            master = found.masters[i % masters]
            with node.client() as client:
                client.execute_command("CLUSTER REPLICATE", found.ids[master.port])

        def ready() -> bool:
            for node in nodes:
                with node.client() as client:
                    if client.cluster("INFO")["cluster_state"] != "ok":
                        return False
            for master in found.masters:
                with master.client() as client:
                    if client.info("replication").get("connected_slaves") != replicas_each:
                        return False
            return True

        _wait("cluster ok with replicas in sync", ready)
        return found
    except BaseException:
        for node in nodes:
            node.process.stop()
        raise


# -------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def sentinel_set(server_logs: Path) -> Iterator[SentinelSet]:
    found = start_sentinel_set(server_logs / "sentinel")
    yield found
    found.stop()


@pytest.fixture(scope="session")
def redis_cluster(server_logs: Path) -> Iterator[RedisClusterSet]:
    found = start_cluster(server_logs / "cluster")
    yield found
    found.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterSet) -> Iterator[str]:
    """A Redis Cluster URL whose data is flushed after the test."""
    yield redis_cluster.url
    redis_cluster.flush()


@pytest.fixture
def redis_sentinel_url(sentinel_set: SentinelSet) -> Iterator[str]:
    """A Sentinel URL whose primary is flushed after the test."""
    yield sentinel_set.url
    sentinel_set.flush()


REDIS_SHAPES = {
    "redis": "redis_url",
    "sentinel": "redis_sentinel_url",
    "cluster": "redis_cluster_url",
}


@pytest.fixture(params=list(REDIS_SHAPES))
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """Each shape of REDIS_URL in turn (one primary, Sentinel, Cluster), flushed after the test."""
    url: str = request.getfixturevalue(REDIS_SHAPES[request.param])
    return url


__all__ = [
    "REDIS_SHAPES",
    "RedisClusterSet",
    "RedisNode",
    "SentinelSet",
    "any_redis_url",
    "redis_cluster",
    "redis_cluster_url",
    "redis_sentinel_url",
    "sentinel_set",
    "start_cluster",
    "start_sentinel_set",
]
