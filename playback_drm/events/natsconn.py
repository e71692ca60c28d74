"""Connecting to NATS and keeping the JetStream stream defined, for the sink and the reader.

- ``nats-py`` reconnects forever; the delay between attempts is exponential with full jitter
  (``reconnect_to_server_handler``), capped by ``EVENTS_RECONNECT_MAX_WAIT_S``. With several
  servers in ``NATS_URL`` (and those the cluster announces), each attempt goes to the server
  with the fewest failed attempts, so a dead node is never retried while another is untried:
  nats-py's handler hook otherwise takes the first server of its pool, every time.
- The stream (``PLAYBACK_EVENTS``, subjects ``playback.events.>``, file storage, limits retention,
  discard old, the deduplication window, ``EVENTS_STREAM_REPLICAS`` replicas) is created when
  missing. When it exists with another
  configuration (an operator may have tuned it) theirs is kept, but it is made to capture our
  subjects and to deduplicate at least as long as ``EVENTS_DUPLICATE_WINDOW_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final

from nats.aio.client import Client as NATS
from nats.aio.client import Server
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js import errors as js_errors

from playback_drm.events.config import EventsConfig
from playback_drm.events.model import SUBJECT_WILDCARD

INITIAL_CONNECT_WAIT_S: Final = 1
RECONNECT_BASE_S: Final = 0.05
CONNECT_TIMEOUT_S: Final = 2
PING_INTERVAL_S: Final = 10
MAX_OUTSTANDING_PINGS: Final = 3
CLOSE_TIMEOUT_S: Final = 2.0

Callback = Callable[[], Awaitable[None]]

logger = logging.getLogger(__name__)


def reconnect_delay(cap_s: float) -> Any:
    """nats-py's ``reconnect_to_server_handler``: the server with the fewest failed attempts
    (one of them at random), after an exponential backoff with full jitter on that count."""

    def choose(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        if not servers:
            return None, 0.0
        attempts = min(server.reconnects for server in servers)
        fewest = [server for server in servers if server.reconnects == attempts]
        ceiling = min(cap_s, RECONNECT_BASE_S * (2 ** min(attempts, 16)))
        # jitter and a spread over equals, not crypto
        return random.choice(fewest), random.uniform(0, ceiling)  # noqa: S311

    return choose


async def connect(
    config: EventsConfig, client_name: str, disconnected: Callback, reconnected: Callback
) -> tuple[NATS, JetStreamContext]:
    """A connection that reconnects forever, and its JetStream context (acks wait
    ``EVENTS_ACK_TIMEOUT_S``). Raises what nats-py raises when the first attempt fails."""

    async def error(exc: Exception) -> None:
        logger.debug("NATS connection error: %s", exc)

    nc = NATS()
    try:
        await _connect(nc, config, client_name, disconnected, reconnected, error)
    except BaseException:
        # a failed or cancelled first attempt (a sink closed while still connecting) leaves its
        # socket open in the client: close it, or it outlives the event loop
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT_S)
        raise
    return nc, nc.jetstream(timeout=config.ack_timeout_s)


async def _connect(
    nc: NATS,
    config: EventsConfig,
    client_name: str,
    disconnected: Callback,
    reconnected: Callback,
    error: Callable[[Exception], Awaitable[None]],
) -> None:
    await nc.connect(
        servers=config.nats_servers,
        name=client_name,
        connect_timeout=CONNECT_TIMEOUT_S,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=INITIAL_CONNECT_WAIT_S,
        reconnect_to_server_handler=reconnect_delay(config.reconnect_max_wait_s),
        ping_interval=PING_INTERVAL_S,
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
    )


def stream_config(config: EventsConfig) -> js_api.StreamConfig:
    """The stream the services create when it is missing."""
    return js_api.StreamConfig(
        name=config.stream,
        subjects=[SUBJECT_WILDCARD],
        retention=js_api.RetentionPolicy.LIMITS,
        discard=js_api.DiscardPolicy.OLD,
        storage=js_api.StorageType.FILE,
        max_age=config.stream_max_age_s,
        duplicate_window=config.duplicate_window_s,
        num_replicas=config.stream_replicas,
    )


async def ensure_stream(js: JetStreamContext, config: EventsConfig) -> None:
    """Create the stream, or make an existing one capture our subjects and deduplicate long
    enough. Raises what nats-py raises when JetStream cannot be reached."""
    try:
        await js.add_stream(stream_config(config))
    except js_errors.BadRequestError:
        current = (await js.stream_info(config.stream)).config
        subjects = list(current.subjects or [])
        if SUBJECT_WILDCARD not in subjects:
            subjects.append(SUBJECT_WILDCARD)
        window = max(current.duplicate_window or 0, config.duplicate_window_s)
        await js.update_stream(current.evolve(subjects=subjects, duplicate_window=window))


__all__ = [
    "CLOSE_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "INITIAL_CONNECT_WAIT_S",
    "connect",
    "ensure_stream",
    "reconnect_delay",
    "stream_config",
]
