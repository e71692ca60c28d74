"""Real Redis, NATS (JetStream), OpenBao (Vault API) and Envoy servers for the tests.

Each is started only when a test asks for its fixture, on a free loopback port, with a readiness
wait and a clean teardown. Binaries come from the project's pip extras (``[servers]``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.procs import ManagedProcess, binary, free_port, http_ok, port_open


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    process: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def redis_argv(port: int, workdir: Path, *extra: str) -> list[str]:
    """A redis-server on loopback ``port``, nothing persisted, files in ``workdir``."""
    argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    return [*argv, "--save", "", "--appendonly", "no", "--dir", str(workdir), *extra]


def start_redis(log_dir: Path) -> RedisServer:
    port = free_port()
    argv = redis_argv(port, log_dir, "--protected-mode", "yes")
    proc = ManagedProcess(
        f"redis-{port}", argv, log_dir=log_dir, ready=lambda: _redis_ping(port)
    ).start()
    return RedisServer(proc, port)


@dataclass
class NatsServer:
    process: ManagedProcess
    port: int
    monitor_port: int
    store_dir: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def restart(self) -> None:
        """Start again on the same port and store directory (JetStream state survives)."""
        self.process.start()


def nats_argv(port: int, monitor: int, store: Path, *extra: str) -> list[str]:
    """A JetStream nats-server on loopback ``port`` (monitoring on ``monitor``), storing in
    ``store``."""
    argv = [binary("nats-server"), "-js", "-a", "127.0.0.1", "-p", str(port)]
    return [*argv, "-m", str(monitor), "-sd", str(store), *extra]


def start_nats(log_dir: Path) -> NatsServer:
    port, monitor = free_port(), free_port()
    store = log_dir / f"nats-{port}-store"
    store.mkdir(parents=True, exist_ok=True)
    argv = nats_argv(port, monitor, store)
    proc = ManagedProcess(
        f"nats-{port}",
        argv,
        log_dir=log_dir,
        ready=lambda: http_ok(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"),
    ).start()
    return NatsServer(proc, port, monitor, store)


@dataclass
class NatsCluster:
    """Three (or more) JetStream servers routed into one cluster, on loopback ports."""

    nodes: list[NatsServer]

    @property
    def url(self) -> str:
        """``NATS_URL`` for the whole cluster: every node, comma separated."""
        return ",".join(node.url for node in self.nodes)

    def node_at(self, host_port: str) -> NatsServer:
        """The node listening on ``host:port`` (what a client reports it is connected to)."""
        port = int(host_port.rpartition(":")[2])
        return next(node for node in self.nodes if node.port == port)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every running node reports JetStream current with a meta leader (``/healthz``)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if not node.process.running:
                continue
            while not http_ok(f"http://127.0.0.1:{node.monitor_port}/healthz"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"NATS node {node.port} not healthy after {timeout}s")
                time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.process.stop()


def start_nats_cluster(log_dir: Path, size: int = 3) -> NatsCluster:
    """``size`` nats-server processes with JetStream, routed to each other (one cluster, store
    directories under ``log_dir``), started together; returns once all are healthy."""
    name = f"pdrm-{free_port()}"
    ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
    nodes: list[NatsServer] = []
    for index, (port, monitor, cluster_port) in enumerate(ports):
        store = log_dir / f"{name}-n{index}-store"
        store.mkdir(parents=True, exist_ok=True)
        routes = ",".join(f"nats://127.0.0.1:{c}" for _, _, c in ports if c != cluster_port)
        argv = nats_argv(
            port,
            monitor,
            store,
            "--server_name",
            f"{name}-n{index}",
            "--cluster_name",
            name,
            "--cluster",
            f"nats://127.0.0.1:{cluster_port}",
            "--routes",
            routes,
        )
        proc = ManagedProcess(
            f"{name}-n{index}",
            argv,
            log_dir=log_dir,
            ready=lambda m=monitor: http_ok(f"http://127.0.0.1:{m}/healthz"),  # type: ignore[misc]
            ready_timeout=60,
        )
        nodes.append(NatsServer(proc, port, monitor, store))
    cluster = NatsCluster(nodes)
    try:
        for node in nodes:  # together: a node is healthy once the cluster has a meta leader
            node.process.start(wait=False)
        for node in nodes:
            node.process.wait_ready()
    except BaseException:
        cluster.stop()
        raise
    return cluster


VAULT_ROOT_TOKEN = "test-root-token"


@dataclass
class VaultServer:
    process: ManagedProcess
    port: int
    token: str = VAULT_ROOT_TOKEN

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_vault(log_dir: Path) -> VaultServer:
    """OpenBao in dev mode: in-memory, unsealed, KV v2 mounted at ``secret/``."""
    port = free_port()
    argv = [
        binary("bao"),
        "server",
        "-dev",
        f"-dev-root-token-id={VAULT_ROOT_TOKEN}",
        f"-dev-listen-address=127.0.0.1:{port}",
    ]
    proc = ManagedProcess(
        f"openbao-{port}",
        argv,
        log_dir=log_dir,
        env={"BAO_DEV_ROOT_TOKEN_ID": VAULT_ROOT_TOKEN, "HOME": str(log_dir)},
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/v1/sys/health"),
    ).start()
    return VaultServer(proc, port)


def envoy_validate(config_path: Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate`` on a config file; the caller asserts on returncode/output."""
    return subprocess.run(
        [binary("envoy"), "--mode", "validate", "-c", str(config_path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass
class EnvoyServer:
    process: ManagedProcess
    admin_port: int

    def stats(self) -> dict[str, int]:
        url = f"http://127.0.0.1:{self.admin_port}/stats?format=json"
        with urllib.request.urlopen(url, timeout=2) as resp:
            doc = json.load(resp)
        # counters and gauges; text readouts (an SDS secret's version hash, "") are left out
        return {
            s["name"]: int(s["value"])
            for s in doc.get("stats", [])
            if str(s.get("value", "")).isdigit()
        }


def start_envoy(
    config_path: Path, admin_port: int, log_dir: Path, name: str = "envoy"
) -> EnvoyServer:
    argv = [
        binary("envoy"),
        "-c",
        str(config_path),
        "--log-level",
        "warn",
        "--base-id",
        str(admin_port),
        "--concurrency",
        "2",
        "--drain-time-s",
        "1",
    ]
    proc = ManagedProcess(
        f"{name}-{admin_port}",
        argv,
        log_dir=log_dir,
        ready=lambda: http_ok(f"http://127.0.0.1:{admin_port}/ready"),
        ready_timeout=60,
    ).start()
    return EnvoyServer(proc, admin_port)


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def redis_server(server_logs: Path) -> Iterator[RedisServer]:
    server = start_redis(server_logs)
    yield server
    server.process.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A Redis URL whose database is flushed after the test."""
    yield redis_server.url
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=2) as sock:
        sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        sock.recv(16)


@pytest.fixture
def nats_server(server_logs: Path) -> Iterator[NatsServer]:
    """A fresh NATS with JetStream per test (tests stop and restart it)."""
    server = start_nats(server_logs)
    yield server
    server.process.stop()


@pytest.fixture
def nats_cluster(server_logs: Path) -> Iterator[NatsCluster]:
    """A fresh 3-node JetStream cluster per test (tests kill and restart its nodes)."""
    cluster = start_nats_cluster(server_logs)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def vault_server(server_logs: Path) -> Iterator[VaultServer]:
    server = start_vault(server_logs)
    yield server
    server.process.stop()


__all__ = [
    "EnvoyServer",
    "NatsCluster",
    "NatsServer",
    "RedisServer",
    "VaultServer",
    "envoy_validate",
    "port_open",
    "start_envoy",
    "start_nats",
    "start_nats_cluster",
    "start_redis",
    "start_vault",
]
