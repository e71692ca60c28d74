"""How a service process runs: the one start-up every service shares, and the lifecycle of the
servers it opens.

``python -m authz`` (and ``extproc``, ``license_broker``) is ``run_service(NAME, Config.from_env,
serve)``: read the process environment once, configure JSON logging and tracing, build the
service's typed configuration (a bad setting stops the process with exit code 2 and a message
naming it, before anything listens), open the events sink (JetStream or the local log), and run
``serve(config, events)`` on uvloop until SIGTERM or SIGINT, which cancel it so that the service's
own shutdown runs (health NOT_SERVING, stop accepting, drain, close) and then the sink flushes.

:func:`serving_grpc` and :func:`serving_http` open a service's listeners and close them in the
house order: health NOT_SERVING, stop accepting, drain in-flight calls (grace), close.

This module is, with the services' ``__main__`` modules, the only reader of ``os.environ``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, TextIO, TypeVar

import uvloop
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from playback_drm.events import EventsConfig, EventSink, open_sink
from playback_drm.h2grpc import make_server
from playback_drm.logs import LoggingConfig, configure_logging
from playback_drm.settings import ConfigError
from playback_drm.tracing import TracingConfig, configure_tracing

C = TypeVar("C")
log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2


def run_service(
    name: str,
    load_config: Callable[[Mapping[str, str]], C],
    serve: Callable[[C, EventSink], Awaitable[None]],
    *,
    env: Mapping[str, str] | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one service until a signal stops it; the process's exit code."""
    environ = dict(os.environ if env is None else env)
    err = stderr if stderr is not None else sys.stderr
    try:
        logging_config = LoggingConfig.from_env(environ)
        tracing_config = TracingConfig.from_env(environ)
        events_config = EventsConfig.from_env(environ)
        config = load_config(environ)
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=err)
        return EXIT_CONFIG
    logs = configure_logging(name, logging_config.level, logging_config.json)
    tracing = configure_tracing(name, tracing_config)

    async def main() -> None:
        async with open_sink(events_config, name=name) as events:
            await serve(config, events)

    try:
        run_until_signalled(main())
    except ConfigError as exc:  # a setting only checked while resources open
        print(f"{name}: configuration error: {exc}", file=err)
        return EXIT_CONFIG
    finally:
        tracing.shutdown()
        logs.close()
    return EXIT_OK


def run_until_signalled(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on uvloop; SIGTERM and SIGINT cancel it (its ``finally`` blocks run)."""

    async def guarded() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await coro

    uvloop.run(guarded())


@contextlib.asynccontextmanager
async def serving_grpc(
    name: str,
    transport: str,
    host: str,
    port: int,
    register: Callable[[Any], None],
    *,
    max_receive_bytes: int,
    max_send_bytes: int,
    grace_s: float = 5.0,
) -> AsyncIterator[Any]:
    """A gRPC server on ``transport`` (``lean`` or ``grpcio``) with the servicers ``register``
    adds and the standard health service, serving until the block exits; then NOT_SERVING,
    stop accepting, up to ``grace_s`` for calls in flight, close. Yields the server."""
    server = make_server(
        transport, max_receive_bytes=max_receive_bytes, max_send_bytes=max_send_bytes
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving gRPC on %s:%d (%s)", name, host, port, transport)
    try:
        yield server
    finally:
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=grace_s)


@contextlib.asynccontextmanager
async def serving_http(app: web.Application, host: str, port: int) -> AsyncIterator[None]:
    """``app`` listening on ``host:port`` until the block exits."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()


__all__ = [
    "EXIT_CONFIG",
    "EXIT_OK",
    "run_service",
    "run_until_signalled",
    "serving_grpc",
    "serving_http",
]
