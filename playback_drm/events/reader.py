"""Reading recorded events back: ``playback-drm events [--follow]`` prints them, one CloudEvent
per line, from the JetStream stream when ``NATS_URL`` is set, else from the local JSON-lines log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Final, Protocol

import nats
from nats.aio.client import Client as NATS
from nats.js import api as js_api
from nats.js import errors as js_errors

from playback_drm.events.config import EventsConfig
from playback_drm.events.jsonlines import read_events
from playback_drm.events.model import SUBJECT_WILDCARD, EventsUnavailable
from playback_drm.events.natsconn import (
    CLOSE_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    INITIAL_CONNECT_WAIT_S,
)

logger = logging.getLogger(__name__)

READ_IDLE_TIMEOUT_S: Final = 5.0


async def read_stream(config: EventsConfig, follow: bool) -> AsyncIterator[dict[str, Any]]:
    """CloudEvents stored in the stream, oldest first, through an ephemeral ordered consumer.

    Without ``follow`` it stops at the last message stored when it started (or when no message
    arrives for a few seconds); with it, it keeps waiting for new ones (and for NATS).
    Raises :class:`~playback_drm.events.EventsUnavailable` when NATS cannot be reached.
    """

    async def quiet(exc: Exception) -> None:
        logger.debug("NATS connection error: %s", exc)

    nc = NATS()
    try:
        await nc.connect(
            servers=config.nats_servers,
            connect_timeout=CONNECT_TIMEOUT_S,
            allow_reconnect=follow,
            # nats-py retries the first connection until the attempts run out (-1: forever).
            max_reconnect_attempts=-1 if follow else 1,
            reconnect_time_wait=INITIAL_CONNECT_WAIT_S if follow else 0,
            name="playback-drm-events-reader",
            error_cb=quiet,
        )
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        # the failed attempt's socket is still open in the client: close it, or it outlives the
        # loop (an unclosed transport)
        with contextlib.suppress(Exception):
            await nc.close()
        raise EventsUnavailable(f"cannot reach NATS at {config.nats_url}: {exc}") from exc
    try:
        js = nc.jetstream()
        while True:
            try:
                info = await js.stream_info(config.stream)
                break
            except js_errors.NotFoundError:
                if not follow:
                    return
                await asyncio.sleep(INITIAL_CONNECT_WAIT_S)  # nothing published yet
            except (nats.errors.Error, TimeoutError) as exc:
                raise EventsUnavailable(f"cannot read stream {config.stream}: {exc}") from exc
        last_seq = info.state.last_seq
        if not follow and info.state.messages == 0:
            return
        sub = await js.subscribe(
            SUBJECT_WILDCARD,
            stream=config.stream,
            ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.ALL,
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=READ_IDLE_TIMEOUT_S)
                except nats.errors.TimeoutError:
                    if follow:
                        continue
                    return
                try:
                    doc = json.loads(msg.data)
                except ValueError:
                    doc = None
                if isinstance(doc, dict):
                    yield doc
                if not follow and msg.metadata.sequence.stream >= last_seq:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT_S)


class TextOut(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


async def print_events(source: EventsConfig, follow: bool, out: TextOut) -> int:
    """Print recorded events, one CloudEvent per line; return how many were printed.

    Reads the JetStream stream (an ephemeral ordered consumer) when ``source.nats_url`` is set,
    otherwise ``source.log_path``. Exits at the end unless ``follow``.
    """
    if source.nats_url:
        events = read_stream(source, follow)
    else:
        events = read_events(source.log_path, follow)
    count = 0
    async for doc in events:
        out.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n")
        out.flush()
        count += 1
    return count


__all__ = ["print_events", "read_stream"]
