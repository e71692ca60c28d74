"""The analytics event model: ``PlaybackStarted``, ``LicenseIssued``, ``PlaybackError``, their
constructors, the sink protocol, and the wire format every transport carries.

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

"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, Literal, Protocol, get_args

from playback_drm.problem import PlaybackError
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
