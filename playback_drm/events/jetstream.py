"""NATS JetStream event sink: at-least-once delivery that never blocks a request.

Subjects, CloudEvent format and configuration: :mod:`playback_drm.events.model`, :mod:`.config`.

How an event travels::

    emit(event)  ──▶  memory queue (EVENTS_QUEUE_SIZE)  ──▶  publisher task  ──▶  JetStream
       │  (full, or a spill is in progress)                    ▲   acks; failures retried first
       ▼                                                       │
    staging list ──▶ spill writer task ──▶ segment files ──────┘  replayed, oldest first,
                     (thread I/O, fsync policy)  (EVENTS_SPILL_DIR/<name>/NNN.jsonl)

- ``emit`` is synchronous and O(1): it appends to a deque (or, when the memory queue is full, to
  the staging list of the spill writer) and wakes a task. It does no I/O, never awaits, never
  raises. Called from another thread it hops to the loop with ``call_soon_threadsafe``.
- The publisher sends up to ``EVENTS_MAX_INFLIGHT`` events at once with ``publish_async`` and
  headers ``Nats-Msg-Id: <event id>`` and ``Content-Type: application/cloudevents+json``, then
  waits for the acks. An event leaves the sink only once JetStream acknowledged it (or rejected
  it for good: ``dropped_total{reason="rejected"}``). Unacknowledged events are retried before
  anything newer, one at a time with ``js.publish`` (which reports server errors properly).
- Batching: a batch leaves when it is full (``EVENTS_MAX_INFLIGHT``) or when its oldest event
  has waited ``EVENTS_LINGER_S`` (100 ms), as Kafka's ``linger.ms``; the spill writer, woken
  from idle, waits ``EVENTS_LINGER_S`` before a write. Per-batch costs (wake-ups, a socket write,
  reading the acks, an fsync) are then shared: at 200 events/s, batches of 20 cost the broker
  about 55 µs per event and nats-server 45 µs, against 150 and 90 µs in batches of 4. It costs
  analytics latency, never request latency. Retries, replays and a backlog go without lingering,
  and a backlog drains at ``EVENTS_BACKLOG_RATE`` events per second (2000) beyond the live rate,
  so that catching up after an outage does not crowd out requests, and still catches up when
  the live rate itself is high.
- Deduplication: JetStream drops a message whose ``Nats-Msg-Id`` it stored within the stream's
  ``duplicate_window`` (>= 2 min, persisted with the stream), so a retry after a lost ack stores
  nothing twice: at-least-once delivery becomes effectively exactly-once.
- Order: events are published in ``emit`` order, except that an event retried after a lost ack
  may land after others of its batch. Retries go before anything newer; spilled events are newer
  than every event in memory (once a spill starts every new event goes to the spill until the
  disk buffer is empty again). Segments left by a previous process are replayed first; across
  such a restart, order is best effort.
- Fairness: the publisher yields to the event loop every ``YIELD_EVERY`` publishes and the spill
  writer every ``ENCODE_SLICE`` encodes, so a backlog being flushed does not stall requests.
- Connection (:mod:`.natsconn`): reconnects forever with jittered backoff, to another server of
  ``NATS_URL`` (or of the cluster) when the one it used is gone. If NATS is down at
  start, the first connection is retried every second in the background (the service starts
  anyway). The stream is created or updated after connecting, and again whenever a publish finds
  no stream.
- Spill buffer (:mod:`.spill`): bounded JSON-lines segment files, fsynced per
  ``EVENTS_SPILL_FSYNC``, one process per spill directory.
- Overflow: when memory, staging and disk are all full the event is dropped,
  ``playback_events_dropped_total{reason="buffer_full"}`` counts it and a warning is logged (at most
  every few seconds).
- Shutdown (``async with`` exit / :meth:`JetStreamSink.close`): drain for up to
  ``EVENTS_DRAIN_TIMEOUT_S``; events still in memory are then written to the spill buffer, so the
  next start publishes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js import errors as js_errors

from playback_drm import metrics
from playback_drm.events import natsconn
from playback_drm.events.config import EventsConfig
from playback_drm.events.files import read_lines
from playback_drm.events.messages import (
    Entry,
    Message,
    SinkStats,
    acked,
    encode_in_slices,
    message_from_event,
    message_from_line,
    publish_headers,
    take,
)
from playback_drm.events.model import (
    Event,
    encode_cloudevent,
)
from playback_drm.events.spill import SpillBuffer

logger = logging.getLogger(__name__)

RETRY_PAUSE_S: Final = 0.2
DROP_LOG_INTERVAL_S: Final = 5.0
# Events waiting for the spill writer's next batch (it writes them within one loop iteration).
STAGING_MIN_EVENTS: Final = 4096
YIELD_EVERY: Final = 16  # publishes between two yields to the event loop


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them. nats-py swallows ``CancelledError`` in places (its
    publish flush path), so a task may survive one cancel: cancel again until it ends."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            logger.error("event task failed", exc_info=task.exception())


class JetStreamSink:
    """:class:`~playback_drm.events.EventSink` publishing CloudEvents to NATS JetStream."""

    def __init__(self, config: EventsConfig, *, name: str = "events") -> None:
        if not config.nats_servers:
            raise ValueError("JetStreamSink needs NATS_URL")
        self.config = config
        self.name = name
        self.stats = SinkStats()
        self._queue_size = config.queue_size
        self._staging_size = max(config.queue_size, STAGING_MIN_EVENTS)
        self._spill = SpillBuffer(
            config.spill_dir / name,
            config.spill_max_bytes,
            config.spill_segment_bytes,
            config.spill_fsync,
        )
        # Oldest first: retries, then the replayed segment, then memory, then live segments.
        self._mem: deque[Event] = deque()
        self._staging: list[Event] = []
        self._retry: deque[Entry] = deque()
        self._replay: deque[bytes] = deque()
        self._replay_segment: tuple[Path, int] | None = None
        self._backlog: deque[tuple[Path, int]] = deque()
        self._inflight = 0
        self._spill_batch = 0
        self._spilling = False
        self._closed = False
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._mem_since = 0.0  # monotonic time of the oldest event waiting in memory
        self._rate_mark = (0.0, 0)  # (monotonic time, stats.emitted) the live rate counts from
        self._live_rate = 0.0  # events emitted per second, last measured
        self._spill_wake: asyncio.Event | None = None
        self._spill_done: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self._disk_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._stream_ready = False
        self._last_drop_log = 0.0
        self._drops_since_log = 0

    # ------------------------------------------------------------------------- emit (hot path)

    def emit(self, event: Event) -> None:
        """Queue ``event``; O(1), no I/O, never blocks, never raises."""
        try:
            if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._emit, event)
            else:
                self._emit(event)
        except Exception:  # the loop is gone (shutdown): count it, never raise into a request
            self._drop(metrics.DROP_CLOSED, 1)

    def _emit(self, event: Event) -> None:
        self.stats.emitted += 1
        if self._closed:
            self._drop(metrics.DROP_CLOSED, 1)
            return
        if not self._spilling and len(self._mem) < self._queue_size:
            if not self._mem:
                self._mem_since = time.monotonic()
            self._mem.append(event)
            wake = self._wake
            if wake is not None:
                wake.set()
            if len(self._mem) >= self.config.max_inflight and self._full is not None:
                self._full.set()  # a full batch goes without waiting for the linger
            return
        if len(self._staging) >= self._staging_size or self._spill.full:
            self._drop(metrics.DROP_BUFFER_FULL, 1)
            return
        self._staging.append(event)
        self._spilling = True
        spill_wake = self._spill_wake
        if spill_wake is not None:
            spill_wake.set()

    def _drop(self, reason: str, count: int) -> None:
        self.stats.dropped += count
        metrics.EVENTS_DROPPED.labels(reason).inc(count)
        self._drops_since_log += count
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            logger.warning(
                "dropped %d analytics event(s) (%s): memory queue and spill buffer are full",
                self._drops_since_log,
                reason,
                extra={"reason": reason, "spillBytes": self._spill.bytes},
            )
            self._last_drop_log = now
            self._drops_since_log = 0

    def depth(self) -> int:
        """Events held in memory and not yet acknowledged (queued, staged, in flight, retries)."""
        return (
            len(self._mem)
            + len(self._staging)
            + self._spill_batch
            + len(self._retry)
            + len(self._replay)
            + self._inflight
        )

    @property
    def spill_bytes(self) -> int:
        return self._spill.bytes

    @property
    def server(self) -> str | None:
        """``host:port`` of the NATS server the sink is connected to; None while it is not."""
        nc = self._nc
        url = nc.connected_url if nc is not None else None
        return f"{url.hostname}:{url.port}" if url is not None else None

    def idle(self) -> bool:
        """Nothing left to publish: every emitted event is acknowledged or dropped."""
        return (
            self.depth() == 0
            and not self._backlog
            and self._replay_segment is None
            and self._spill.empty
            and not self._spilling
        )

    # --------------------------------------------------------------------------- lifecycle

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
        if self._started:
            return
        leftovers = await asyncio.to_thread(self._spill.open)
        self._started = True
        self._rate_mark = (time.monotonic(), self.stats.emitted)
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._spill_wake = asyncio.Event()
        self._spill_done = asyncio.Event()
        self._connected = asyncio.Event()
        self._disk_lock = asyncio.Lock()
        self._backlog.extend(leftovers)
        if leftovers:
            logger.info(
                "replaying %d spilled event segment(s) from %s",
                len(leftovers),
                self._spill.directory,
            )
        metrics.EVENTS_QUEUE_DEPTH.set_function(self.depth)
        metrics.EVENTS_SPILL_BYTES.set_function(lambda: self._spill.bytes)
        if self._mem:
            self._wake.set()
        if self._staging:
            self._spilling = True
            self._spill_wake.set()
        self._tasks = [
            asyncio.create_task(self._run_publisher(), name=f"events-publisher-{self.name}"),
            asyncio.create_task(self._run_spill_writer(), name=f"events-spill-{self.name}"),
        ]

    async def drain(self, deadline_s: float | None = None) -> bool:
        """Wait until every event is acknowledged (True) or ``deadline_s`` passes (False).

        Default deadline: ``EVENTS_DRAIN_TIMEOUT_S``.
        """
        wait = self.config.drain_timeout_s if deadline_s is None else deadline_s
        deadline = time.monotonic() + wait
        while not self.idle():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        """Drain (bounded), persist what is left to the spill buffer, close the connection."""
        if self._closed or not self._started:
            self._closed = True
            return
        flushed = await self.drain()
        self._closed = True
        await _stop(self._tasks)
        if not flushed:
            await self._persist_remaining()
        nc = self._nc
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), natsconn.CLOSE_TIMEOUT_S)
        metrics.EVENTS_QUEUE_DEPTH.set_function(lambda: 0.0)
        metrics.EVENTS_SPILL_BYTES.set_function(lambda: 0.0)
        self._spill.close()
        logger.info(
            "event sink closed",
            extra={
                "published": self.stats.published,
                "dropped": self.stats.dropped,
                "flushed": flushed,
            },
        )

    async def _persist_remaining(self) -> None:
        """At shutdown: events only held in memory go to the spill buffer for the next run.

        Raw lines (retries or replays read from a segment) are still in their segment file.
        """
        lines: list[bytes] = []
        for entry in self._retry:
            if isinstance(entry, Event):
                lines.append(encode_cloudevent(entry))
            elif isinstance(entry, Message) and not entry.from_disk:
                lines.append(entry.payload)
        lines.extend(encode_cloudevent(event) for event in self._mem)
        lines.extend(encode_cloudevent(event) for event in self._staging)
        self._retry.clear()
        self._mem.clear()
        self._staging.clear()
        self._replay.clear()
        if not lines:
            return
        written = await self._spill.write(lines)
        await self._spill.seal()
        self.stats.spilled += written
        metrics.EVENTS_SPILLED.inc(written)
        if written < len(lines):
            self._drop(metrics.DROP_BUFFER_FULL, len(lines) - written)
        logger.warning(
            "NATS unavailable at shutdown: %d event(s) kept in %s", written, self._spill.directory
        )

    # ----------------------------------------------------------------------- spill writer

    async def _run_spill_writer(self) -> None:
        assert self._spill_wake is not None
        assert self._spill_done is not None
        assert self._disk_lock is not None
        assert self._wake is not None
        while True:
            await self._spill_wake.wait()
            if self.config.linger_s and not self._closed:
                # Batch a few events per write: with fsync per batch, one event per write would
                # mean one fsync per event.
                await asyncio.sleep(self.config.linger_s)
            self._spill_wake.clear()
            while self._staging:
                # Holding the lock while a batch is out of `_staging` keeps the publisher from
                # concluding that the disk is empty in the meantime.
                async with self._disk_lock:
                    batch, self._staging = self._staging, []
                    self._spill_batch = len(batch)
                    try:
                        try:
                            lines = await encode_in_slices(batch)
                        except asyncio.CancelledError:
                            self._staging[:0] = batch  # shutting down: close() persists them
                            raise
                        # Cancelled from here on, the worker thread still completes the write.
                        written = await self._spill.write(lines)
                    except OSError:
                        logger.exception("cannot write the event spill buffer")
                        written = 0
                    finally:
                        self._spill_batch = 0
                self.stats.spilled += written
                metrics.EVENTS_SPILLED.inc(written)
                if written < len(batch):
                    self._drop(metrics.DROP_BUFFER_FULL, len(batch) - written)
            self._spill_done.set()
            self._wake.set()

    # -------------------------------------------------------------------------- publisher

    async def _run_publisher(self) -> None:
        assert self._wake is not None
        assert self._connected is not None
        await self._connect()
        while True:
            await self._connected.wait()
            if not self._stream_ready and not await self._ensure_stream():
                await asyncio.sleep(RETRY_PAUSE_S * (1 + random.random()))  # noqa: S311
                continue
            linger = self._linger_left()
            if linger > 0:
                # Let the batch fill (or its oldest event reach the linger), so one socket write
                # and one read of acks carry many events.
                assert self._full is not None
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), linger)
            batch = await self._next_batch()
            if batch is None:
                # Nothing buffered. No await since _next_batch looked, so no emit was missed.
                self._wake.clear()
                await self._wake.wait()
                continue
            entries, is_retry = batch
            self._inflight = len(entries)
            try:
                if is_retry:
                    failed = await self._publish_sequential(entries)
                else:
                    failed = await self._publish_pipelined(entries)
            finally:
                self._inflight = 0
            if failed:
                self._retry.extendleft(reversed(failed))
                self.stats.retried += len(failed)
                metrics.EVENTS_RETRIED.inc(len(failed))
                await asyncio.sleep(RETRY_PAUSE_S * (1 + random.random()))  # noqa: S311
            elif len(entries) >= self.config.max_inflight and self.config.backlog_rate:
                # A full batch means a backlog (after an outage, or a replay from disk): flush
                # it at a bounded rate, so catching up never crowds out the requests being served.
                await asyncio.sleep(self._backlog_pause(len(entries)))

    def _backlog_pause(self, sent: int) -> float:
        """Seconds to wait after a full batch of ``sent``: a backlog drains at
        ``EVENTS_BACKLOG_RATE`` beyond the live rate (events emitted per second, measured over
        windows of a second or more), so it shrinks whatever the traffic, never only while the
        live rate stays under a fixed cap."""
        now = time.monotonic()
        since, emitted = self._rate_mark
        if now - since >= 1.0:
            self._live_rate = (self.stats.emitted - emitted) / (now - since)
            self._rate_mark = (now, self.stats.emitted)
        return sent / (self.config.backlog_rate + self._live_rate)

    def _linger_left(self) -> float:
        """Seconds the next batch should still wait for more events (0: send now)."""
        if (
            not self.config.linger_s
            or self._closed
            or self._retry
            or self._replay
            or self._replay_segment is not None
            or self._backlog
            or self._spilling
            or not self._mem
            or len(self._mem) >= self.config.max_inflight
        ):
            return 0.0
        return self._mem_since + self.config.linger_s - time.monotonic()

    async def _next_batch(self) -> tuple[list[Entry], bool] | None:
        """The next events to publish, oldest first, and whether they are retries."""
        limit = self.config.max_inflight
        while True:
            if self._retry:
                return take(self._retry, limit), True
            if self._replay:
                return list(take(self._replay, limit)), False
            if self._replay_segment is not None:
                path, size = self._replay_segment  # every event of it is acknowledged
                await self._spill.remove(path, size)
                self._replay_segment = None  # after the unlink: idle() means "nothing on disk"
                continue
            if self._backlog:
                await self._load_segment(self._backlog.popleft())
                continue
            if self._mem:
                return list(take(self._mem, limit)), False
            if not self._spilling:
                return None
            # Memory is empty: the next events are on disk or about to be written there.
            if self._staging:
                assert self._spill_done is not None
                self._spill_done.clear()
                await self._spill_done.wait()
                continue
            assert self._disk_lock is not None
            async with self._disk_lock:
                if not self._spill.sealed:
                    await self._spill.seal()
                if not self._spill.sealed:
                    if not self._staging:
                        self._spilling = False  # disk empty, nothing staged: memory again
                    continue
                segment = self._spill.sealed.popleft()
            await self._load_segment(segment)

    async def _load_segment(self, segment: tuple[Path, int]) -> None:
        self._replay_segment = segment  # first: while reading, the sink is not idle
        self._replay.extend(await asyncio.to_thread(read_lines, segment[0]))

    async def _publish_pipelined(self, entries: list[Entry]) -> list[Entry]:
        """Send every entry, then wait (bounded) for the acks; return the entries to retry.

        Yields to the event loop every few messages: a batch must not delay requests.
        """
        js = self._js
        assert js is not None
        sent: list[tuple[Message, asyncio.Future[js_api.PubAck]]] = []
        index = 0
        try:
            for index, entry in enumerate(entries):
                if index and index % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                item = self._to_item(entry)
                if item is None:
                    continue
                try:
                    future = await js.publish_async(
                        item.subject,
                        item.payload,
                        headers=publish_headers(item),
                        stream=self.config.stream,
                    )
                except nats.errors.MaxPayloadError:
                    self._reject(item, "larger than the server's max payload")
                    continue
                except Exception:  # disconnected or outbound buffer full: retry from here
                    for _, pending in sent:
                        pending.cancel()
                    return [sent_item for sent_item, _ in sent] + entries[index:]
                sent.append((item, future))
            index = len(entries)
            if sent:
                await asyncio.wait(
                    [future for _, future in sent], timeout=self.config.ack_timeout_s
                )
        except asyncio.CancelledError:
            # Shutting down mid-batch: whatever is not acknowledged goes back for persisting.
            unacked: list[Entry] = [i for i, f in sent if not acked(f)]
            self._retry.extendleft(reversed(unacked + entries[index:]))
            raise
        failed: list[Entry] = []
        for item, future in sent:
            if acked(future):
                self._published(item)
                continue
            if not future.done():
                future.cancel()  # frees nats-py's slot; a late ack is deduplicated on retry
            elif not future.cancelled() and isinstance(
                future.exception(), js_errors.NoStreamResponseError
            ):
                self._stream_ready = False
            failed.append(item)
        return failed

    async def _publish_sequential(self, entries: list[Entry]) -> list[Entry]:
        """Retries: one request at a time, so server errors are reported (and classified)."""
        js = self._js
        assert js is not None
        for index, entry in enumerate(entries):
            item = self._to_item(entry)
            if item is None:
                continue
            try:
                await js.publish(
                    item.subject,
                    item.payload,
                    timeout=self.config.ack_timeout_s,
                    headers=publish_headers(item),
                    stream=self.config.stream,
                )
            except (nats.errors.MaxPayloadError, js_errors.BadRequestError) as exc:
                self._reject(item, str(exc))
                continue
            except js_errors.NoStreamResponseError:
                self._stream_ready = False
                return [item, *entries[index + 1 :]]
            except Exception:
                return [item, *entries[index + 1 :]]
            self._published(item)
        return []

    def _to_item(self, entry: Entry) -> Message | None:
        if isinstance(entry, Message):
            return entry
        if isinstance(entry, Event):
            return message_from_event(entry)
        item = message_from_line(entry)
        if item is None:
            logger.warning("skipped an unreadable line of the event spill buffer")
            self._drop(metrics.DROP_REJECTED, 1)
        return item

    def _published(self, item: Message) -> None:
        self.stats.published += 1
        metrics.events_published(item.type).inc()

    def _reject(self, item: Message, why: str) -> None:
        logger.error("JetStream refused event %s: %s", item.msg_id, why)
        self._drop(metrics.DROP_REJECTED, 1)

    # ------------------------------------------------------------------------- connection

    async def _connect(self) -> None:
        assert self._connected is not None

        async def disconnected() -> None:
            assert self._connected is not None
            if self._connected.is_set() and not self._closed:
                logger.warning("NATS disconnected; events are buffered")
            self._connected.clear()

        async def reconnected() -> None:
            assert self._connected is not None
            assert self._wake is not None
            logger.info("NATS reconnected")
            self._connected.set()
            self._wake.set()

        self._nc, self._js = await natsconn.connect(
            self.config, f"playback-drm-{self.name}", disconnected, reconnected
        )
        logger.info("NATS connected", extra={"stream": self.config.stream})
        self._connected.set()

    async def _ensure_stream(self) -> bool:
        assert self._js is not None
        try:
            await natsconn.ensure_stream(self._js, self.config)
        except Exception as exc:
            logger.warning("cannot create JetStream stream %s: %s", self.config.stream, exc)
            return False
        self._stream_ready = True
        return True


__all__ = ["JetStreamSink", "SinkStats"]
