"""Events on a 3-node JetStream cluster (issue 14): the publisher the services run
(``JetStreamSink``) keeps publishing to a replicas=3 stream while the node it is connected to is
killed; it reconnects to another node, and every event is in the stream exactly once by id (the
retries of unacknowledged publishes are removed by the stream's ``Nats-Msg-Id`` window)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest

from playback_drm.events import BROKER_SOURCE, Event, EventsConfig, license_issued
from playback_drm.events.jetstream import JetStreamSink
from tests.support.servers import NatsCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EVENTS = 1500
RATE = 500  # events per second, emitted the way request handlers do: a few per loop turn
KILL_AT = 500


def _event(n: int) -> Event:
    return license_issued(
        BROKER_SOURCE,
        user_id=f"user-{n % 17}",
        video_id="demo",
        license_id=f"lic-{n:05d}",
        key_system="org.w3.clearkey",
        plan="premium",
        request_id=f"req-{n}",
    )


async def _stream_ids(servers: list[str], stream: str) -> tuple[list[str], int]:
    """Every message id in ``stream`` (read through ``servers``) and its replica count."""
    client = await nats.connect(servers)
    try:
        js = client.jetstream()
        deadline = time.monotonic() + 30
        while True:  # the killed node may have led the stream: a new leader is being elected
            try:
                info = await js.stream_info(stream)
                sub = await js.subscribe("playback.events.>", ordered_consumer=True)
                ids = []
                for _ in range(info.state.messages):
                    # generous: right after a failover a loaded machine took over 5 s for a message
                    msg = await sub.next_msg(timeout=20)
                    ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))
                await sub.unsubscribe()
                return ids, int(info.config.num_replicas or 1)
            except nats.errors.Error:
                assert time.monotonic() < deadline, "the stream cannot be read"
                await asyncio.sleep(0.5)
    finally:
        await client.close()


async def test_a_node_dies_mid_publish_and_no_event_is_lost_or_doubled(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    config = EventsConfig.from_env(
        {
            "NATS_URL": nats_cluster.url,
            "EVENTS_STREAM_REPLICAS": "3",
            "EVENTS_SPILL_DIR": str(tmp_path / "spill"),
            "EVENTS_ACK_TIMEOUT_S": "1",
            "EVENTS_RECONNECT_MAX_WAIT_S": "0.5",
            "EVENTS_DRAIN_TIMEOUT_S": "30",
        }
    )
    emitted: list[str] = []
    async with JetStreamSink(config, name="cluster") as sink:
        deadline = time.monotonic() + 20
        while sink.server is None or sink.stats.published == 0:
            assert time.monotonic() < deadline, "the sink never connected"
            sink.emit(event := _event(len(emitted)))
            emitted.append(event.id)
            await asyncio.sleep(0.05)
        killed: str | None = None
        loop = asyncio.get_running_loop()
        started = loop.time()
        while len(emitted) < EVENTS:
            if len(emitted) >= KILL_AT and killed is None:
                killed = sink.server  # the node this publisher talks to, mid-stream
                assert killed is not None
                await asyncio.to_thread(nats_cluster.node_at(killed).process.kill)
            for _ in range(5):
                sink.emit(event := _event(len(emitted)))
                emitted.append(event.id)
            pause = started + len(emitted) / RATE - loop.time()
            await asyncio.sleep(max(0.0, pause))
        assert await sink.drain(30.0), f"{sink.depth()} events still unacknowledged"
        # it carries on through another node of the cluster
        assert sink.server not in (None, killed), sink.server
        assert (sink.stats.dropped, sink.stats.published) == (0, len(emitted))
    survivors = [node.url for node in nats_cluster.nodes if node.process.running]
    ids, replicas = await _stream_ids(survivors, config.stream)
    assert replicas == 3
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicates in the stream"
    assert sorted(ids) == sorted(emitted), f"{len(set(emitted) - set(ids))} events lost"
