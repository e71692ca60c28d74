"""Analytics events: ``PlaybackStarted``, ``LicenseIssued``, ``PlaybackError``.

Services record events through the :class:`EventSink` protocol. ``emit`` never blocks and never
raises: a viewer's request must not wait for analytics. Transports (NATS JetStream, a local JSON
lines log, in-memory for tests) implement the protocol.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

EventType = Literal["PlaybackStarted", "LicenseIssued", "PlaybackError"]

PLAYBACK_STARTED: Final = "PlaybackStarted"
LICENSE_ISSUED: Final = "LicenseIssued"
PLAYBACK_ERROR: Final = "PlaybackError"


@dataclass(frozen=True, slots=True)
class Event:
    """One analytics fact. ``data`` holds userId, videoId, licenseId, keySystem, plan, code, ...

    ``id`` is unique per fact and doubles as the JetStream ``Nats-Msg-Id`` for deduplication.
    """

    type: EventType
    source: str
    subject: str
    data: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
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
