"""What the JetStream sink buffers and publishes.

An entry is an :class:`~playback_drm.events.model.Event` still in memory, a raw line read back
from a spill segment, or a :class:`Message` ready to publish (subject, CloudEvent bytes, the
deduplication id).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from nats.js import api as js_api

from playback_drm.events.model import (
    CLOUDEVENTS_CONTENT_TYPE,
    EVENT_TYPE_BY_CLOUDEVENT,
    Event,
    EventType,
    encode_cloudevent,
    subject_for,
)

MSG_ID_HEADER: Final = "Nats-Msg-Id"
CONTENT_TYPE_HEADER: Final = "Content-Type"
ENCODE_SLICE: Final = 64  # events encoded between two yields to the event loop


class Message(NamedTuple):
    subject: str
    payload: bytes
    msg_id: str
    type: EventType
    from_disk: bool


@dataclass
class SinkStats:
    """Per-sink counters (the Prometheus metrics aggregate every sink of the process)."""

    emitted: int = 0
    published: int = 0
    spilled: int = 0
    retried: int = 0
    dropped: int = 0


def message_from_event(event: Event) -> Message:
    return Message(
        subject_for(event.type, event.source), encode_cloudevent(event), event.id, event.type, False
    )


def message_from_line(line: bytes) -> Message | None:
    try:
        doc = json.loads(line)
        event_type = EVENT_TYPE_BY_CLOUDEVENT[doc["type"]]
        return Message(
            subject_for(event_type, str(doc["source"])), line, str(doc["id"]), event_type, True
        )
    except (ValueError, KeyError, TypeError):
        return None


# A buffered event: in memory (Event), read back from a spill segment (raw line), or encoded.
Entry = Event | bytes | Message


def take(source: deque[Any], limit: int) -> list[Any]:
    count = min(limit, len(source))
    popleft = source.popleft
    return [popleft() for _ in range(count)]


def publish_headers(item: Message) -> dict[str, str]:
    """JetStream dedup id and the CloudEvents structured-mode content type."""
    return {MSG_ID_HEADER: item.msg_id, CONTENT_TYPE_HEADER: CLOUDEVENTS_CONTENT_TYPE}


def acked(future: asyncio.Future[js_api.PubAck]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


async def encode_in_slices(events: list[Event]) -> list[bytes]:
    """CloudEvent bytes of ``events``, yielding to the loop between slices."""
    lines: list[bytes] = []
    for start in range(0, len(events), ENCODE_SLICE):
        if start:
            await asyncio.sleep(0)
        lines.extend(encode_cloudevent(event) for event in events[start : start + ENCODE_SLICE])
    return lines


# ------------------------------------------------------------------------------------- sink


__all__ = [
    "CONTENT_TYPE_HEADER",
    "MSG_ID_HEADER",
    "Entry",
    "Message",
    "SinkStats",
    "acked",
    "encode_in_slices",
    "message_from_event",
    "message_from_line",
    "publish_headers",
    "take",
]
