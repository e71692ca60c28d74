"""The local JSON-lines event log and the reader behind `playback-drm events`."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path

import pytest

from playback_drm.events import (
    BROKER_SOURCE,
    EXTPROC_SOURCE,
    Event,
    EventsConfig,
    encode_cloudevent,
    jsonlines,
    license_issued,
    open_sink,
    playback_started,
)
from playback_drm.events.files import append_bytes
from playback_drm.events.jsonlines import JsonLinesSink, read_events
from playback_drm.events.reader import print_events

pytestmark = pytest.mark.timeout(30)


def started(n: int) -> Event:
    return playback_started(EXTPROC_SOURCE, user_id=f"u{n}", video_id=f"v{n}")


async def test_sink_appends_one_cloudevent_per_line(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "events.jsonl"
    events = [started(n) for n in range(50)]
    async with JsonLinesSink(path) as sink:
        for event in events:
            sink.emit(event)
        worker = threading.Thread(target=sink.emit, args=(started(50),))
        worker.start()
        worker.join()
        await asyncio.sleep(0)  # the event hops onto the loop
    lines = path.read_bytes().splitlines()
    assert lines[:50] == [encode_cloudevent(event) for event in events]
    assert json.loads(lines[50])["data"]["userId"] == "u50"
    assert sink.written == 51


async def test_a_steady_stream_is_written_once_per_linger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events that arrive while a batch is being written wait for the next linger: a busy
    process makes one write (and one worker-thread hop) per linger, not one per few events."""
    writes: list[int] = []
    append = append_bytes  # what jsonlines writes with (imported from events.files)

    def counting_append(path: Path, data: bytes, *, mode: int = 0o600) -> None:
        writes.append(data.count(b"\n"))
        append(path, data, mode=mode)

    monkeypatch.setattr(jsonlines, "append_bytes", counting_append)
    monkeypatch.setattr(jsonlines, "LINGER_S", 0.05)
    async with JsonLinesSink(tmp_path / "e.jsonl") as sink:
        loop = asyncio.get_running_loop()
        stop = loop.time() + 0.4
        emitted = 0
        while loop.time() < stop:
            sink.emit(started(emitted))
            emitted += 1
            await asyncio.sleep(0.0005)
    assert sum(writes) == emitted
    assert len(writes) <= 0.4 / 0.05 + 2, writes  # not one per worker hop
    assert emitted > 5 * len(writes)


async def test_full_queue_drops_instead_of_blocking(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "e.jsonl", queue_size=3)
    await sink.start()
    for n in range(10):  # no await: the writer cannot run in between
        sink.emit(started(n))
    assert sink.dropped == 7
    await sink.close()
    assert len((tmp_path / "e.jsonl").read_bytes().splitlines()) == 3


async def test_read_events_stops_at_the_end_and_skips_garbage(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = [encode_cloudevent(started(n)) for n in range(3)]
    path.write_bytes(
        good[0]
        + b"\nnot json\n"
        + good[1]
        + b'\n{"type":"other"}\n'
        + good[2]
        + b"\n"
        + good[0][:20]
    )  # the last line is still being written
    docs = [doc async for doc in read_events(path, follow=False)]
    assert [doc["id"] for doc in docs] == [json.loads(line)["id"] for line in good]
    assert [doc async for doc in read_events(tmp_path / "missing.jsonl", follow=False)] == []


async def test_follow_sees_lines_appended_later(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    first, second = started(1), started(2)
    path.write_bytes(encode_cloudevent(first) + b"\n")
    seen: list[str] = []

    async def follow() -> None:
        async for doc in read_events(path, follow=True, poll_interval_s=0.01):
            seen.append(doc["id"])
            if len(seen) == 2:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    assert seen == [first.id]
    payload = encode_cloudevent(second) + b"\n"
    with path.open("ab") as handle:  # written in two pieces: the reader waits for the newline
        handle.write(payload[:10])
        handle.flush()
        await asyncio.sleep(0.05)
        handle.write(payload[10:])
    await asyncio.wait_for(task, 5)
    assert seen == [first.id, second.id]


async def test_print_events_from_the_local_log(tmp_path: Path) -> None:
    config = EventsConfig(log_path=tmp_path / "events.jsonl")
    async with open_sink(config) as sink:
        assert isinstance(sink, JsonLinesSink)
        sink.emit(
            license_issued(
                BROKER_SOURCE,
                user_id="alice",
                video_id="v",
                license_id="l1",
                key_system="org.w3.clearkey",
            )
        )
        sink.emit(started(2))
    out = io.StringIO()
    assert await print_events(config, follow=False, out=out) == 2
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["type"] for line in lines] == [
        "dev.playback-drm.license.issued.v1",
        "dev.playback-drm.playback.started.v1",
    ]
