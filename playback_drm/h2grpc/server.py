"""The lean gRPC server: the subset of ``grpc.aio.Server`` that the generated
``add_*Servicer_to_server`` functions and our services use (registration, ports, start, stop with
a grace period), and the choice between it and grpcio's transport (``GRPC_TRANSPORT``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from typing import Any

import grpc

from playback_drm.h2grpc.connection import Connection
from playback_drm.settings import ConfigError


class LeanGrpcServer:
    """The subset of ``grpc.aio.Server`` that generated registration code and our services use."""

    def __init__(
        self, *, max_message_bytes: int = 4 << 20, max_concurrent_streams: int = 1024
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_concurrent_streams = max_concurrent_streams
        self.connections: set[Connection] = set()
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._sockets: list[socket.socket] = []
        self._servers: list[asyncio.Server] = []
        self._stopped = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()

    # -- registration, as the generated add_*Servicer_to_server functions call it
    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self._methods[f"/{service}/{name}"] = handler

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def handler_for(self, path: str) -> grpc.RpcMethodHandler | None:
        handler = self._methods.get(path)
        if handler is not None:
            return handler
        for generic in self._generic:
            found = generic.service(_CallDetails(path))
            if found is not None:
                self._methods[path] = found
                return found
        return None

    # -- lifecycle
    def add_insecure_port(self, address: str) -> int:
        """``host:port`` (port 0 picks one; the bound port is returned) or ``unix:/path``."""
        if address.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(address[len("unix:") :])
            port = 0
        else:
            host, _, port_text = address.rpartition(":")
            host = host.strip("[]") or "0.0.0.0"
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port_text)))
            port = sock.getsockname()[1]
        sock.setblocking(False)
        self._sockets.append(sock)
        return int(port)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            self._servers.append(
                await loop.create_server(lambda: Connection(self), sock=sock, backlog=1024)
            )

    async def stop(self, grace: float | None) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.go_away()
        if grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drained.wait(), grace)
        for conn in list(self.connections):
            for stream in list(conn.streams.values()):
                conn._cancel(stream)
            conn._close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)
        self._servers.clear()
        self._stopped.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """As ``grpc.aio``: True if the wait timed out, False once the server has stopped."""
        if self._stopped.is_set():
            return False
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            return True
        return False


class _CallDetails(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: tuple[tuple[str, str], ...] = ()


# ------------------------------------------------------------------ choosing the transport

TRANSPORTS = ("lean", "grpcio")


def check_transport(value: str) -> str:
    """``GRPC_TRANSPORT``: ``lean`` (this module, the default) or ``grpcio`` (``grpc.aio``)."""
    choice = value.strip().lower()
    if choice not in TRANSPORTS:
        raise ConfigError(f"GRPC_TRANSPORT must be one of {', '.join(TRANSPORTS)}, got {value!r}")
    return choice


def make_server(transport: str, *, max_receive_bytes: int, max_send_bytes: int) -> Any:
    """A server with grpc.aio's registration and lifecycle methods, on the chosen transport."""
    if transport == "lean":
        return LeanGrpcServer(max_message_bytes=max_receive_bytes)
    return grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", 1024),
            ("grpc.max_receive_message_length", max_receive_bytes),
            ("grpc.max_send_message_length", max_send_bytes),
        ]
    )
