"""Analytics events: ``PlaybackStarted``, ``LicenseIssued``, ``PlaybackError``.

Services record events through the :class:`EventSink` protocol. ``emit`` never blocks and never
raises: a viewer's request must not wait for analytics. Transports implement the protocol:

    MemorySink / NullSink            tests and the embedded stack
    eventlog.JsonLinesSink           local stack default: CloudEvents appended to a JSON-lines file
    jetstream.JetStreamSink          NATS JetStream, at-least-once, deduplicated by message id

:func:`open_sink` picks the transport from :class:`EventsConfig` (NATS when ``NATS_URL`` is set).

Wire format: CloudEvents 1.0, JSON structured mode
--------------------------------------------------

One JSON object per event (``application/cloudevents+json``)::

    {"specversion": "1.0", "id": "<Event.id>", "source": "/playback-drm/license-broker",
     "type": "dev.playback-drm.license.issued.v1", "time": "2025-01-01T12:00:00.123456Z",
     "subject": "<videoId>", "datacontenttype": "application/json",
     "data": {"userId": ..., "videoId": ..., "licenseId": ..., "keySystem": ..., "plan": ...,
              "code": ..., "requestId": ..., "traceId": ...}}

``type`` is ``dev.playback-drm.<noun>.<verb>.v<major>``; a breaking change of ``data`` bumps the
major version and gets a new type (consumers filter on it). ``subject`` is the video id (absent when
the event concerns no video, e.g. a malformed request).

NATS subjects
-------------

``playback.events.<event>.<service>``, all lower-case kebab, for example
``playback.events.license-issued.license-broker`` or ``playback.events.playback-error.authz``.

- ``<event>``: ``playback-started``, ``license-issued``, ``playback-error``;
- ``<service>``: the last path segment of the CloudEvent ``source`` (``authz``, ``extproc``,
  ``license-broker``).

Neither user ids nor video ids appear in subjects: JetStream keeps per-subject state, so subject
cardinality stays at (event kinds x services), about ten. Consumers filter with
``playback.events.license-issued.>`` (one kind) or ``playback.events.*.authz`` (one service); the
video id is in the CloudEvent ``subject`` and ``data.videoId``. One stream, ``PLAYBACK_EVENTS``,
captures ``playback.events.>``.

Configuration (environment variables, read by :meth:`EventsConfig.from_env`)
---------------------------------------------------------------------------

=================================  ========================  ==================================
variable                           default                   meaning
=================================  ========================  ==================================
``NATS_URL``                       (unset)                   NATS URL(s), comma separated
``EVENTS_LOG_PATH``                ``.local/events.jsonl``   JSON-lines log when NATS_URL is unset
``EVENTS_SPILL_DIR``               ``.local/events-spill``   JetStream sink overflow buffer
``EVENTS_QUEUE_SIZE``              ``10000``                 events in memory before spilling
``EVENTS_SPILL_MAX_BYTES``         ``268435456`` (256 MiB)   disk buffer bound, then events drop
``EVENTS_SPILL_SEGMENT_BYTES``     ``8388608`` (8 MiB)       spill segment file rotation size
``EVENTS_SPILL_FSYNC``             ``batch``                 ``batch``, ``segment`` or ``never``
``EVENTS_STREAM``                  ``PLAYBACK_EVENTS``       JetStream stream name
``EVENTS_STREAM_MAX_AGE_S``        ``604800`` (7 days)       stream retention
``EVENTS_DUPLICATE_WINDOW_S``      ``120``                   JetStream dedup window (>= 120 s)
``EVENTS_MAX_INFLIGHT``            ``64``                    unacknowledged publishes at once
``EVENTS_ACK_TIMEOUT_S``           ``2.0``                   wait for an ack before retrying
``EVENTS_DRAIN_TIMEOUT_S``         ``5.0``                   flush deadline on close
``EVENTS_RECONNECT_MAX_WAIT_S``    ``2.0``                   reconnect backoff cap (with jitter)
``EVENTS_LINGER_S``                ``0.1``                   longest wait for a batch to fill
``EVENTS_BACKLOG_RATE``            ``2000``                  events/s a backlog drains at, beyond
                                                            the live rate
=================================  ========================  ==================================
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal, Protocol, get_args

from playback_drm.problem import PlaybackError
from playback_drm.settings import ConfigError, env_float, env_int, env_opt, env_str
from playback_drm.timefmt import rfc3339_micros as rfc3339

EventType = Literal["PlaybackStarted", "LicenseIssued", "PlaybackError"]

PLAYBACK_STARTED: Final = "PlaybackStarted"
LICENSE_ISSUED: Final = "LicenseIssued"
PLAYBACK_ERROR: Final = "PlaybackError"

EVENT_TYPES: Final[tuple[EventType, ...]] = get_args(EventType)

# CloudEvent ``source`` of each service (URI-references, RFC 3986).
AUTHZ_SOURCE: Final = "/playback-drm/authz"
EXTPROC_SOURCE: Final = "/playback-drm/extproc"
BROKER_SOURCE: Final = "/playback-drm/license-broker"

SPECVERSION: Final = "1.0"
DATA_CONTENT_TYPE: Final = "application/json"
CLOUDEVENTS_CONTENT_TYPE: Final = "application/cloudevents+json"

SUBJECT_PREFIX: Final = "playback.events"
SUBJECT_WILDCARD: Final = SUBJECT_PREFIX + ".>"
DEFAULT_STREAM: Final = "PLAYBACK_EVENTS"

CLOUDEVENT_TYPES: Final[Mapping[EventType, str]] = {
    "PlaybackStarted": "dev.playback-drm.playback.started.v1",
    "LicenseIssued": "dev.playback-drm.license.issued.v1",
    "PlaybackError": "dev.playback-drm.playback.error.v1",
}
EVENT_TYPE_BY_CLOUDEVENT: Final[Mapping[str, EventType]] = {
    ce: name for name, ce in CLOUDEVENT_TYPES.items()
}
SUBJECT_TOKENS: Final[Mapping[EventType, str]] = {
    "PlaybackStarted": "playback-started",
    "LicenseIssued": "license-issued",
    "PlaybackError": "playback-error",
}


class _EventIds:
    """Event ids: 32 hex digits, a random per-process prefix and a counter. Unique per fact
    like a UUID4, without a ``getrandom`` system call per event (one per manifest adds up).
    A forked child draws a new prefix."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


new_event_id = _EventIds()


@dataclass(frozen=True, slots=True)
class Event:
    """One analytics fact. ``data`` holds userId, videoId, licenseId, keySystem, plan, code, ...

    ``id`` is unique per fact and doubles as the JetStream ``Nats-Msg-Id`` for deduplication.
    """

    type: EventType
    source: str
    subject: str
    data: dict[str, Any]
    id: str = field(default_factory=new_event_id)
    time: float = field(default_factory=time.time)


class EventSink(Protocol):
    """Where events go. ``emit`` is non-blocking and never raises."""

    def emit(self, event: Event) -> None: ...


class MemorySink:
    """Keeps events in a list: for tests and for the embedded local stack."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


class NullSink:
    """Drops every event."""

    def emit(self, event: Event) -> None:
        return None


class EventsError(PlaybackError):
    """Root of event transport errors (configuration and lifecycle, never raised by ``emit``)."""

    code = "events_error"
    status = 500
    title = "Event transport error"


class SpillDirectoryBusy(EventsError):
    """Another process holds the spill directory: each process needs its own."""

    code = "events_spill_dir_busy"
    title = "Event spill directory in use"


class EventsUnavailable(EventsError):
    """The event store (NATS) cannot be reached (reading events; publishing never raises)."""

    code = "events_unavailable"
    status = 503
    title = "Event store unavailable"


class MalformedEvent(EventsError):
    """A recorded line is not a CloudEvent of ours."""

    code = "events_malformed"
    status = 422
    title = "Malformed CloudEvent"


# ------------------------------------------------------------------------------------ constructors


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value is not None}


def playback_started(
    source: str,
    *,
    user_id: str,
    video_id: str,
    plan: str | None = None,
    request_id: str | None = None,
    trace_id: str | None = None,
    **extra: Any,
) -> Event:
    """A manifest was served to a viewer."""
    data = _compact(
        {
            "userId": user_id,
            "videoId": video_id,
            "plan": plan,
            "requestId": request_id,
            "traceId": trace_id,
            **extra,
        }
    )
    return Event(PLAYBACK_STARTED, source, video_id, data)


def license_issued(
    source: str,
    *,
    user_id: str,
    video_id: str,
    license_id: str,
    key_system: str,
    plan: str | None = None,
    request_id: str | None = None,
    trace_id: str | None = None,
    **extra: Any,
) -> Event:
    """A DRM license (or an HLS AES-128 key) was handed to a viewer."""
    data = _compact(
        {
            "userId": user_id,
            "videoId": video_id,
            "licenseId": license_id,
            "keySystem": key_system,
            "plan": plan,
            "requestId": request_id,
            "traceId": trace_id,
            **extra,
        }
    )
    return Event(LICENSE_ISSUED, source, video_id, data)


def playback_error(
    source: str,
    *,
    code: str,
    status: int | None = None,
    user_id: str | None = None,
    video_id: str | None = None,
    key_system: str | None = None,
    plan: str | None = None,
    request_id: str | None = None,
    trace_id: str | None = None,
    **extra: Any,
) -> Event:
    """A viewer hit a failure: denied, expired URL, provider failure, ... (``code`` is stable)."""
    data = _compact(
        {
            "code": code,
            "status": status,
            "userId": user_id,
            "videoId": video_id,
            "keySystem": key_system,
            "plan": plan,
            "requestId": request_id,
            "traceId": trace_id,
            **extra,
        }
    )
    return Event(PLAYBACK_ERROR, source, video_id or "", data)


# ----------------------------------------------------------------------------- CloudEvents mapping

_SUBJECT_TOKEN_UNSAFE = re.compile(r"[^a-z0-9-]+")


@lru_cache(maxsize=256)
def _service_token(source: str) -> str:
    last = source.rstrip("/").rsplit("/", 1)[-1].lower()
    token = _SUBJECT_TOKEN_UNSAFE.sub("-", last).strip("-")
    return token or "unknown"


@lru_cache(maxsize=1024)
def subject_for(event_type: EventType, source: str) -> str:
    """NATS subject: ``playback.events.<event>.<service>`` (see the module docstring)."""
    return f"{SUBJECT_PREFIX}.{SUBJECT_TOKENS[event_type]}.{_service_token(source)}"


def parse_rfc3339(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def to_cloudevent(event: Event) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event.id,
        "source": event.source,
        "type": CLOUDEVENT_TYPES[event.type],
        "time": rfc3339(event.time),
    }
    if event.subject:
        doc["subject"] = event.subject
    doc["datacontenttype"] = DATA_CONTENT_TYPE
    doc["data"] = event.data
    return doc


_JSON: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def encode_cloudevent(event: Event) -> bytes:
    """Compact JSON bytes of the CloudEvent (no newline)."""
    return _JSON.encode(to_cloudevent(event)).encode()


def from_cloudevent(doc: Mapping[str, Any]) -> Event:
    """The :class:`Event` a CloudEvent document was made from (raises :class:`MalformedEvent`)."""
    try:
        event_type = EVENT_TYPE_BY_CLOUDEVENT[doc["type"]]
        data = doc.get("data") or {}
        if not isinstance(data, dict):
            raise TypeError("data is not an object")
        return Event(
            type=event_type,
            source=str(doc["source"]),
            subject=str(doc.get("subject", "")),
            data=data,
            id=str(doc["id"]),
            time=parse_rfc3339(str(doc["time"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedEvent(f"not a playback CloudEvent: {exc}") from exc


def decode_cloudevent(raw: bytes | str) -> Event:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise MalformedEvent("not JSON") from exc
    if not isinstance(doc, dict):
        raise MalformedEvent("not a JSON object")
    return from_cloudevent(doc)


# -------------------------------------------------------------------------------------- config

FsyncPolicy = Literal["batch", "segment", "never"]
_FSYNC_POLICIES: Final[tuple[FsyncPolicy, ...]] = get_args(FsyncPolicy)

DEFAULT_LOG_PATH: Final = Path(".local/events.jsonl")
DEFAULT_SPILL_DIR: Final = Path(".local/events-spill")
DEFAULT_QUEUE_SIZE: Final = 10_000
DEFAULT_SPILL_MAX_BYTES: Final = 256 * 1024 * 1024
DEFAULT_SPILL_SEGMENT_BYTES: Final = 8 * 1024 * 1024
DEFAULT_STREAM_MAX_AGE_S: Final = 7 * 24 * 3600.0
MIN_DUPLICATE_WINDOW_S: Final = 120.0
DEFAULT_MAX_INFLIGHT: Final = 64
DEFAULT_ACK_TIMEOUT_S: Final = 2.0
DEFAULT_DRAIN_TIMEOUT_S: Final = 5.0
DEFAULT_RECONNECT_MAX_WAIT_S: Final = 2.0
DEFAULT_LINGER_S: Final = 0.1
DEFAULT_BACKLOG_RATE: Final = 2000.0


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """How events leave the process. Built once by :meth:`from_env` (variables in the docstring)."""

    nats_url: str | None = None
    log_path: Path = DEFAULT_LOG_PATH
    spill_dir: Path = DEFAULT_SPILL_DIR
    queue_size: int = DEFAULT_QUEUE_SIZE
    spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES
    spill_segment_bytes: int = DEFAULT_SPILL_SEGMENT_BYTES
    spill_fsync: FsyncPolicy = "batch"
    stream: str = DEFAULT_STREAM
    stream_max_age_s: float = DEFAULT_STREAM_MAX_AGE_S
    duplicate_window_s: float = MIN_DUPLICATE_WINDOW_S
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    reconnect_max_wait_s: float = DEFAULT_RECONNECT_MAX_WAIT_S
    linger_s: float = DEFAULT_LINGER_S
    backlog_rate: float = DEFAULT_BACKLOG_RATE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EventsConfig:
        fsync = env_str(env, "EVENTS_SPILL_FSYNC", "batch").lower()
        if fsync not in _FSYNC_POLICIES:
            raise ConfigError(f"EVENTS_SPILL_FSYNC must be one of {_FSYNC_POLICIES}, got {fsync!r}")
        stream = env_str(env, "EVENTS_STREAM", DEFAULT_STREAM)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", stream):
            raise ConfigError(f"EVENTS_STREAM must be a plain stream name, got {stream!r}")
        return cls(
            nats_url=env_opt(env, "NATS_URL"),
            log_path=Path(env_str(env, "EVENTS_LOG_PATH", str(DEFAULT_LOG_PATH))),
            spill_dir=Path(env_str(env, "EVENTS_SPILL_DIR", str(DEFAULT_SPILL_DIR))),
            queue_size=env_int(env, "EVENTS_QUEUE_SIZE", DEFAULT_QUEUE_SIZE, minimum=1),
            spill_max_bytes=env_int(
                env, "EVENTS_SPILL_MAX_BYTES", DEFAULT_SPILL_MAX_BYTES, minimum=0
            ),
            spill_segment_bytes=env_int(
                env, "EVENTS_SPILL_SEGMENT_BYTES", DEFAULT_SPILL_SEGMENT_BYTES, minimum=1024
            ),
            spill_fsync=fsync,
            stream=stream,
            stream_max_age_s=env_float(
                env, "EVENTS_STREAM_MAX_AGE_S", DEFAULT_STREAM_MAX_AGE_S, minimum=0
            ),
            duplicate_window_s=env_float(
                env,
                "EVENTS_DUPLICATE_WINDOW_S",
                MIN_DUPLICATE_WINDOW_S,
                minimum=MIN_DUPLICATE_WINDOW_S,
            ),
            max_inflight=env_int(env, "EVENTS_MAX_INFLIGHT", DEFAULT_MAX_INFLIGHT, minimum=1),
            ack_timeout_s=env_float(
                env, "EVENTS_ACK_TIMEOUT_S", DEFAULT_ACK_TIMEOUT_S, minimum=0.01
            ),
            drain_timeout_s=env_float(
                env, "EVENTS_DRAIN_TIMEOUT_S", DEFAULT_DRAIN_TIMEOUT_S, minimum=0
            ),
            reconnect_max_wait_s=env_float(
                env, "EVENTS_RECONNECT_MAX_WAIT_S", DEFAULT_RECONNECT_MAX_WAIT_S, minimum=0.01
            ),
            linger_s=env_float(env, "EVENTS_LINGER_S", DEFAULT_LINGER_S, minimum=0),
            backlog_rate=env_float(env, "EVENTS_BACKLOG_RATE", DEFAULT_BACKLOG_RATE, minimum=0),
        )

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in (self.nats_url or "").split(",") if url.strip()]


@asynccontextmanager
async def open_sink(config: EventsConfig, *, name: str = "events") -> AsyncIterator[EventSink]:
    """The configured sink, started and (on exit) drained and closed.

    ``name`` identifies the process's spill buffer (``<EVENTS_SPILL_DIR>/<name>``): pass the
    service name so services sharing a host do not share a buffer.
    """
    if config.nats_url:
        from playback_drm.jetstream import JetStreamSink  # noqa: PLC0415 - import cycle

        async with JetStreamSink(config, name=name) as sink:
            yield sink
    else:
        from playback_drm.eventlog import JsonLinesSink  # noqa: PLC0415 - import cycle

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
