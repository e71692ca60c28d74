"""Analytics events: ``PlaybackStarted``, ``LicenseIssued``, ``PlaybackError``.

Services record events through the :class:`EventSink` protocol. ``emit`` never blocks and never
raises: a viewer's request must not wait for analytics. Transports implement the protocol:

    MemorySink / NullSink            tests and the embedded stack
    jsonlines.JsonLinesSink          local stack default: CloudEvents appended to a JSON-lines file
    jetstream.JetStreamSink          NATS JetStream, at-least-once, deduplicated by message id

:func:`open_sink` picks the transport from :class:`EventsConfig` (NATS when ``NATS_URL`` is set).

Modules, bottom up:
    model      the events, their constructors, the sink protocol, the CloudEvents wire format.
    config     EventsConfig (every ``EVENTS_*`` setting, ``NATS_URL``).
    files      blocking file helpers the sinks run in worker threads.
    jsonlines  the local JSON-lines log (sink and reading back).
    spill      the JetStream sink's bounded on-disk overflow buffer.
    jetstream  the JetStream sink: memory queue, publisher, spill, reconnects.
    reader     ``playback-drm events``: print recorded events from either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from playback_drm.events.config import EventsConfig
from playback_drm.events.jetstream import JetStreamSink
from playback_drm.events.jsonlines import JsonLinesSink
from playback_drm.events.model import (
    AUTHZ_SOURCE,
    BROKER_SOURCE,
    CLOUDEVENT_TYPES,
    DEFAULT_STREAM,
    EVENT_TYPES,
    EXTPROC_SOURCE,
    LICENSE_ISSUED,
    PLAYBACK_ERROR,
    PLAYBACK_STARTED,
    SUBJECT_PREFIX,
    SUBJECT_WILDCARD,
    Event,
    EventsError,
    EventSink,
    EventsUnavailable,
    EventType,
    MalformedEvent,
    MemorySink,
    NullSink,
    SpillDirectoryBusy,
    decode_cloudevent,
    encode_cloudevent,
    from_cloudevent,
    license_issued,
    playback_error,
    playback_started,
    subject_for,
    to_cloudevent,
)


@asynccontextmanager
async def open_sink(config: EventsConfig, *, name: str = "events") -> AsyncIterator[EventSink]:
    """The configured sink, started and (on exit) drained and closed.

    ``name`` identifies the process's spill buffer (``<EVENTS_SPILL_DIR>/<name>``): pass the
    service name so services sharing a host do not share a buffer.
    """
    if config.nats_url:
        async with JetStreamSink(config, name=name) as sink:
            yield sink
    else:
        async with JsonLinesSink(config.log_path, queue_size=config.queue_size) as log_sink:
            yield log_sink


__all__ = [
    "AUTHZ_SOURCE",
    "BROKER_SOURCE",
    "CLOUDEVENT_TYPES",
    "DEFAULT_STREAM",
    "EVENT_TYPES",
    "EXTPROC_SOURCE",
    "LICENSE_ISSUED",
    "PLAYBACK_ERROR",
    "PLAYBACK_STARTED",
    "SUBJECT_PREFIX",
    "SUBJECT_WILDCARD",
    "Event",
    "EventSink",
    "EventType",
    "EventsConfig",
    "EventsError",
    "EventsUnavailable",
    "JetStreamSink",
    "JsonLinesSink",
    "MalformedEvent",
    "MemorySink",
    "NullSink",
    "SpillDirectoryBusy",
    "decode_cloudevent",
    "encode_cloudevent",
    "from_cloudevent",
    "license_issued",
    "open_sink",
    "playback_error",
    "playback_started",
    "subject_for",
    "to_cloudevent",
]
