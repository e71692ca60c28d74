"""Local event log: CloudEvents appended to a JSON-lines file, and reading it back.

:class:`JsonLinesSink` is the local stack's default sink (``EVENTS_LOG_PATH``, when ``NATS_URL`` is
unset). ``emit`` appends to a bounded in-memory queue; a writer task appends whole batches with a
single ``write`` on an ``O_APPEND`` descriptor in a worker thread (after lingering ``LINGER_S``
so a batch carries every event of the moment), so several local processes can
share one file without interleaving lines. It keeps nothing across crashes (a development log, not
a delivery guarantee: that is :class:`playback_drm.events.jetstream.JetStreamSink`'s job); when
the queue is full, events are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from playback_drm import metrics
from playback_drm.events.files import append_bytes
from playback_drm.events.model import EVENT_TYPE_BY_CLOUDEVENT, Event, encode_cloudevent

logger = logging.getLogger(__name__)

POLL_INTERVAL_S: Final = 0.25
READ_CHUNK_BYTES: Final = 1 << 20
DROP_LOG_INTERVAL_S: Final = 5.0
# Woken by an emit, the writer waits this long so one write (and one worker-thread hop) carries
# every event of the moment rather than one each: at 200 manifests per second the hop per event
# was a third of extproc's CPU. It delays the log, never a request.
LINGER_S: Final = 0.05


class JsonLinesSink:
    """:class:`~playback_drm.events.EventSink` appending CloudEvents to a JSON-lines file."""

    def __init__(self, path: Path, *, queue_size: int = 10_000) -> None:
        self.path = path
        self.queue_size = queue_size
        self.written = 0
        self.dropped = 0
        self._queue: deque[Event] = deque()
        self._writing = 0
        self._wake: asyncio.Event | None = None
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closed = False
        self._last_drop_log = 0.0

    def emit(self, event: Event) -> None:
        """Queue ``event``; never blocks, never raises."""
        try:
            if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._emit, event)
            else:
                self._emit(event)
        except Exception:
            self._drop(metrics.DROP_CLOSED)

    def _emit(self, event: Event) -> None:
        if self._closed:
            self._drop(metrics.DROP_CLOSED)
            return
        if len(self._queue) >= self.queue_size:
            self._drop(metrics.DROP_BUFFER_FULL)
            return
        self._queue.append(event)
        if self._wake is not None:
            self._wake.set()

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        metrics.EVENTS_DROPPED.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            logger.warning("dropped analytics events (%s); %d so far", reason, self.dropped)

    def depth(self) -> int:
        return len(self._queue) + self._writing

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        if self._queue:
            self._wake.set()
        metrics.EVENTS_QUEUE_DEPTH.set_function(self.depth)
        self._task = asyncio.create_task(self._run(), name="events-jsonl-writer")

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            await asyncio.sleep(LINGER_S)
            self._wake.clear()
            # one write per linger: events emitted while it is under way wait for the next one
            # (a busy process otherwise writes back to back, a few events per worker hop)
            if self._queue:
                await self._write_batch()
            self._progress.set()

    async def _write_batch(self) -> None:
        batch = list(self._queue)
        self._queue.clear()
        self._writing = len(batch)
        try:
            data = b"".join(encode_cloudevent(event) + b"\n" for event in batch)
            await asyncio.to_thread(append_bytes, self.path, data, mode=0o644)
        except OSError:
            logger.exception("cannot write the event log %s", self.path)
            for _ in batch:
                self._drop(metrics.DROP_REJECTED)
            return
        finally:
            self._writing = 0
        self.written += len(batch)
        counts: dict[str, int] = {}
        for event in batch:
            counts[event.type] = counts.get(event.type, 0) + 1
        for event_type, count in counts.items():
            metrics.events_published(event_type).inc(count)

    async def flush(self) -> None:
        """Return once every event emitted so far is in the file."""
        while (self._queue or self._writing) and self._task is not None and not self._task.done():
            self._progress.clear()
            await self._progress.wait()

    async def close(self) -> None:
        if self._closed:
            return
        if self._task is not None:
            await self.flush()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue:  # emitted after the writer stopped: write them synchronously
            await self._write_batch()
        self._closed = True
        metrics.EVENTS_QUEUE_DEPTH.set_function(lambda: 0.0)


# ------------------------------------------------------------------------------------ reading


def _read_from(path: Path, offset: int) -> tuple[bytes, int] | None:
    """Bytes of ``path`` from ``offset`` (at most one chunk) and the file size; None if missing."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < offset:
                return b"", size
            handle.seek(offset)
            return handle.read(READ_CHUNK_BYTES), size
    except FileNotFoundError:
        return None


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("type") not in EVENT_TYPE_BY_CLOUDEVENT:
        return None
    return doc


async def read_events(
    path: Path, follow: bool, *, poll_interval_s: float = POLL_INTERVAL_S
) -> AsyncIterator[dict[str, Any]]:
    """CloudEvents recorded in a JSON-lines file, oldest first.

    Without ``follow`` it stops at the end of the file; with it, it keeps polling for new lines (a
    truncated or replaced file is read again from the start). Unreadable lines are skipped.
    """
    offset = 0
    pending = b""
    while True:
        result = await asyncio.to_thread(_read_from, path, offset)
        if result is None:
            if not follow:
                return
            await asyncio.sleep(poll_interval_s)
            continue
        chunk, size = result
        if size < offset:  # truncated or rotated
            offset, pending = 0, b""
            continue
        offset += len(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            doc = _parse(line)
            if doc is not None:
                yield doc
        if offset >= size:
            if not follow:
                return  # a partial last line is being written: it is not an event yet
            await asyncio.sleep(poll_interval_s)


__all__ = ["JsonLinesSink", "read_events"]
