"""JetStreamSink against a real NATS server: nothing lost across outages, nothing duplicated."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import logging
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from playback_drm import metrics
from playback_drm.events import (
    BROKER_SOURCE,
    LICENSE_ISSUED,
    SUBJECT_WILDCARD,
    Event,
    EventsConfig,
    EventsUnavailable,
    SpillDirectoryBusy,
    license_issued,
    open_sink,
    playback_error,
)
from playback_drm.events.jetstream import JetStreamSink
from playback_drm.events.reader import print_events
from tests.support.procs import free_port
from tests.support.servers import NatsServer

pytestmark = pytest.mark.timeout(90)


def config_for(nats_server: NatsServer, tmp_path: Path, **overrides: object) -> EventsConfig:
    settings: dict[str, object] = {
        "nats_url": nats_server.url,
        "spill_dir": tmp_path / "spill",
        "reconnect_max_wait_s": 0.2,
        "ack_timeout_s": 1.0,
        "drain_timeout_s": 20.0,
    }
    settings.update(overrides)
    return EventsConfig(**settings)  # type: ignore[arg-type]


def issued(n: int) -> Event:
    return license_issued(
        BROKER_SOURCE,
        user_id=f"user-{n % 13}",
        video_id=f"video-{n % 7}",
        license_id=f"lic-{n:04d}",
        key_system="org.w3.clearkey",
        plan="premium",
        request_id=f"req-{n}",
    )


async def stream_events(config: EventsConfig) -> list[dict[str, Any]]:
    """Every CloudEvent in the stream, in stream order, read the way `playback-drm events` does."""
    out = io.StringIO()
    await print_events(config, follow=False, out=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def stream_message_count(config: EventsConfig) -> int:
    nc = await nats.connect(config.nats_servers)
    try:
        info = await nc.jetstream().stream_info(config.stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def wait_until(predicate: object, within_s: float = 10.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def spill_segments(config: EventsConfig, name: str) -> list[Path]:
    return sorted((config.spill_dir / name).glob("*.jsonl"))


# --------------------------------------------------------------------------------- must show


@pytest.fixture
async def license_app(
    nats_server: NatsServer, tmp_path: Path
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], JetStreamSink]]:
    """A stand-in license endpoint that emits LicenseIssued per request, like the broker."""
    config = config_for(nats_server, tmp_path)
    async with JetStreamSink(config, name="broker") as sink:

        async def license_handler(request: web.Request) -> web.Response:
            n = int(request.query["n"])
            sink.emit(issued(n))
            return web.json_response({"licenseId": f"lic-{n:04d}"})

        app = web.Application()
        app.router.add_post("/drm/license", license_handler)
        async with TestClient(TestServer(app)) as client:
            yield client, sink


async def test_nats_restart_mid_run_loses_and_duplicates_no_license_event(
    nats_server: NatsServer,
    license_app: tuple[TestClient[web.Request, web.Application], JetStreamSink],
) -> None:
    client, sink = license_app
    outage: asyncio.Task[None] | None = None
    for n in range(1000):
        if n == 350:  # stop NATS while requests keep flowing and publishes are in flight
            outage = asyncio.create_task(asyncio.to_thread(nats_server.process.stop))
        if n == 700:
            assert outage is not None
            await outage
            assert not nats_server.process.running
            assert sink.depth() > 0  # events of the outage are held, not lost
            outage = asyncio.create_task(asyncio.to_thread(nats_server.restart))
        resp = await client.post(f"/drm/license?n={n}")
        assert resp.status == 200
    assert outage is not None
    await outage

    assert await sink.drain(30.0)
    assert sink.stats.published + sink.stats.dropped == 1000
    assert sink.stats.dropped == 0

    events = await stream_events(sink.config)
    assert len(events) == 1000
    assert await stream_message_count(sink.config) == 1000
    ids = [event["id"] for event in events]
    assert len(set(ids)) == 1000
    license_ids = sorted(event["data"]["licenseId"] for event in events)
    assert license_ids == [f"lic-{n:04d}" for n in range(1000)]
    assert {event["type"] for event in events} == {"dev.playback-drm.license.issued.v1"}


# ------------------------------------------------------------------------------- buffering


async def test_emit_is_synchronous_and_returns_while_nats_is_down(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    assert not inspect.iscoroutinefunction(JetStreamSink.emit)
    config = config_for(nats_server, tmp_path)
    nats_server.process.stop()
    async with JetStreamSink(config, name="down") as sink:
        before = sink.depth()
        assert sink.emit(issued(1)) is None  # type: ignore[func-returns-value]
        assert sink.depth() == before + 1
        assert sink.stats.emitted == 1

        # From a worker thread the event hops onto the loop, still without waiting.
        worker = threading.Thread(target=sink.emit, args=(issued(2),))
        worker.start()
        worker.join()
        await wait_until(lambda: sink.depth() == before + 2)
        assert sink.stats.published == 0

        await asyncio.to_thread(nats_server.restart)
        assert await sink.drain(20.0)
    assert await stream_message_count(config) == 2


async def test_full_memory_queue_spills_to_disk_and_replays_in_order(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    config = config_for(nats_server, tmp_path, queue_size=10, spill_segment_bytes=4096)
    nats_server.process.stop()
    spilled_before = metrics.EVENTS_SPILLED._value.get()
    emitted = [issued(n) for n in range(200)]
    async with JetStreamSink(config, name="spill") as sink:  # NATS is down at start
        for start in range(0, 200, 20):
            for event in emitted[start : start + 20]:
                sink.emit(event)
            await asyncio.sleep(0)  # let the spill writer run, as request handlers would
        await wait_until(lambda: sink.stats.spilled == 190)
        assert sink.depth() == 10  # memory holds its bound, the rest is on disk
        segments = spill_segments(config, "spill")
        assert len(segments) > 1  # rotated at spill_segment_bytes
        on_disk = [
            json.loads(line)["id"] for path in segments for line in path.read_text().splitlines()
        ]
        assert on_disk == [event.id for event in emitted[10:]]
        assert metrics.EVENTS_SPILLED._value.get() - spilled_before == 190

        await asyncio.to_thread(nats_server.restart)
        assert await sink.drain(20.0)
        assert sink.stats.dropped == 0
        assert sink.spill_bytes == 0
        assert spill_segments(config, "spill") == []

    events = await stream_events(config)
    assert [event["id"] for event in events] == [event.id for event in emitted]


async def test_full_disk_buffer_drops_counts_and_warns(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_for(nats_server, tmp_path, queue_size=5, spill_max_bytes=3000)
    dropped = metrics.EVENTS_DROPPED.labels(metrics.DROP_BUFFER_FULL)
    dropped_before = dropped._value.get()
    nats_server.process.stop()
    caplog.set_level(logging.WARNING, logger="playback_drm.events.jetstream")
    async with JetStreamSink(config, name="tiny") as sink:
        for n in range(100):
            sink.emit(issued(n))
            if n % 5 == 4:
                await asyncio.sleep(0)
        # 5 events fit in memory; every other one is either on disk or dropped.
        await wait_until(lambda: sink.stats.spilled + sink.stats.dropped == 95)
        assert sink.stats.dropped > 0
        assert sink.spill_bytes <= 3000
        assert dropped._value.get() - dropped_before == sink.stats.dropped
        assert any("dropped" in record.getMessage() for record in caplog.records)

        await asyncio.to_thread(nats_server.restart)
        assert await sink.drain(20.0)
        kept = 100 - sink.stats.dropped
        assert sink.stats.published == kept
    assert await stream_message_count(config) == kept


# ----------------------------------------------------------------------- dedup and restarts


async def test_the_same_event_id_is_stored_once(nats_server: NatsServer, tmp_path: Path) -> None:
    config = config_for(nats_server, tmp_path)
    event = issued(7)
    async with JetStreamSink(config, name="dedup") as sink:
        sink.emit(event)
        assert await sink.drain(10.0)
        sink.emit(event)  # a retry after a lost ack looks exactly like this
        assert await sink.drain(10.0)
        assert sink.stats.published == 2
    events = await stream_events(config)
    assert [e["id"] for e in events] == [event.id]


async def test_events_buffered_at_shutdown_are_published_by_the_next_process_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    config = config_for(nats_server, tmp_path, queue_size=10, drain_timeout_s=0.2)
    emitted = [issued(n) for n in range(30)]
    async with JetStreamSink(config, name="restart") as sink:
        for event in emitted[:5]:
            sink.emit(event)
        assert await sink.drain(10.0)
        await asyncio.to_thread(nats_server.process.stop)
        for event in emitted[5:]:
            sink.emit(event)
        await asyncio.sleep(0)
    # The sink closed with NATS down: everything unpublished is on disk, nothing in memory lost.
    segments = spill_segments(config, "restart")
    assert segments
    on_disk = [json.loads(line)["id"] for p in segments for line in p.read_text().splitlines()]
    assert sorted(on_disk) == sorted(event.id for event in emitted[5:])
    # A crash after publishing part of a segment replays it: simulate by duplicating one.
    shutil.copy(segments[0], segments[0].with_name("999999999999.jsonl"))

    await asyncio.to_thread(nats_server.restart)
    async with JetStreamSink(config_for(nats_server, tmp_path), name="restart") as again:
        assert await again.drain(10.0)
    events = await stream_events(config)
    assert sorted(e["id"] for e in events) == sorted(event.id for event in emitted)
    assert spill_segments(config, "restart") == []


async def test_one_process_per_spill_directory(nats_server: NatsServer, tmp_path: Path) -> None:
    config = config_for(nats_server, tmp_path)
    async with JetStreamSink(config, name="svc"):
        with pytest.raises(SpillDirectoryBusy):
            await JetStreamSink(config, name="svc").start()
        async with JetStreamSink(config, name="other"):
            pass


async def test_stream_subjects_and_dedup_window(nats_server: NatsServer, tmp_path: Path) -> None:
    config = config_for(nats_server, tmp_path)
    async with open_sink(config, name="svc") as sink:
        assert isinstance(sink, JetStreamSink)
        sink.emit(issued(1))
        sink.emit(
            playback_error(
                "/playback-drm/authz", code="token_expired", status=401, video_id="v1", user_id="u1"
            )
        )
        assert await sink.drain(10.0)
    nc = await nats.connect(config.nats_servers)
    try:
        js = nc.jetstream()
        info = await js.stream_info(config.stream)
        assert info.config.subjects == [SUBJECT_WILDCARD]
        assert info.config.duplicate_window is not None
        assert info.config.duplicate_window >= 120
        assert str(info.config.storage) in {"file", "StorageType.FILE"}
        first = await js.get_msg(config.stream, 1)
        second = await js.get_msg(config.stream, 2)
        assert first.subject == "playback.events.license-issued.license-broker"
        assert second.subject == "playback.events.playback-error.authz"
        assert first.headers is not None
        assert first.data is not None
        first_doc = json.loads(first.data)
        assert first.headers["Nats-Msg-Id"] == first_doc["id"]
        assert first.headers["Content-Type"] == "application/cloudevents+json"
        assert first_doc["type"] == "dev.playback-drm.license.issued.v1"
        assert LICENSE_ISSUED == "LicenseIssued"
    finally:
        await nc.close()


async def test_reading_events_without_nats_fails_with_a_stable_code(tmp_path: Path) -> None:
    config = EventsConfig(nats_url=f"nats://127.0.0.1:{free_port()}")
    with pytest.raises(EventsUnavailable) as raised:
        await print_events(config, follow=False, out=io.StringIO())
    assert raised.value.code == "events_unavailable"
    assert raised.value.status == 503


async def test_batches_leave_when_full_or_when_the_linger_is_over(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Kafka-style linger: a partial batch waits for more events (one write and one read of
    acks then carry many), a full batch goes at once."""
    config = config_for(nats_server, tmp_path, linger_s=60.0, max_inflight=4)
    async with JetStreamSink(config, name="linger") as sink:
        await wait_until(lambda: sink._stream_ready)
        for n in range(3):
            sink.emit(issued(n))
        await asyncio.sleep(0.3)  # connected and idle: only the linger holds them back
        assert sink.stats.published == 0
        assert sink.depth() == 3
        sink.emit(issued(3))  # the batch is full: it goes without waiting out the 60 s
        await wait_until(lambda: sink.stats.published == 4)
    assert sorted(e["data"]["licenseId"] for e in await stream_events(config)) == [
        f"lic-{n:04d}" for n in range(4)
    ]


async def test_a_backlog_is_flushed_at_a_bounded_rate(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Full batches mean a backlog: they go at EVENTS_BACKLOG_RATE at most, never in one burst
    that would crowd out the requests being served."""
    config = config_for(nats_server, tmp_path, max_inflight=2, backlog_rate=1.0)
    async with JetStreamSink(config, name="paced") as sink:
        await wait_until(lambda: sink._stream_ready)
        for n in range(4):
            sink.emit(issued(n))
        await wait_until(lambda: sink.stats.published == 2)
        await asyncio.sleep(0.3)  # the next full batch waits 2 s (2 events at 1 event/s)
        assert sink.stats.published == 2
        await wait_until(lambda: sink.stats.published == 4)


async def test_a_backlog_drains_beyond_the_live_rate(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """EVENTS_BACKLOG_RATE is what a backlog drains at on top of the live rate: with the cap
    under a steady live rate, the backlog still shrinks instead of growing for good."""
    config = config_for(nats_server, tmp_path, max_inflight=4, backlog_rate=20.0, linger_s=1.0)
    async with JetStreamSink(config, name="live") as sink:
        await wait_until(lambda: sink._stream_ready)
        for n in range(40):  # a backlog, as after an outage
            sink.emit(issued(n))
        loop = asyncio.get_running_loop()
        end = loop.time() + 3.0
        n = 40
        while loop.time() < end:  # live traffic at about 40 events/s, twice the cap
            sink.emit(issued(n))
            n += 1
            await asyncio.sleep(0.025)
        behind = sink.stats.emitted - sink.stats.published
        # capped at 20/s the backlog would have grown by 20/s to about 100
        assert behind < 40, behind
        await wait_until(lambda: sink.stats.published == n, within_s=10.0)
