"""The real servers the suite relies on start, answer and stop."""

from __future__ import annotations

import socket

from tests.support.servers import NatsServer, RedisServer, VaultServer


def test_redis_answers_ping(redis_server: RedisServer) -> None:
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=2) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert sock.recv(16) == b"+PONG\r\n"


def test_nats_restarts_on_same_port(nats_server: NatsServer) -> None:
    nats_server.process.stop()
    assert not nats_server.process.running
    nats_server.restart()
    assert nats_server.process.running


def test_vault_kv_v2_is_mounted(vault_server: VaultServer) -> None:
    import urllib.request

    req = urllib.request.Request(
        f"{vault_server.url}/v1/sys/mounts", headers={"X-Vault-Token": vault_server.token}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        mounts = __import__("json").load(resp)
    assert mounts["secret/"]["options"]["version"] == "2"
