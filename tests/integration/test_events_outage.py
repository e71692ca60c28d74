"""NATS stops in the middle of 1,000 license requests and comes back: exactly 1,000
``LicenseIssued`` events land in JetStream, none twice, and no viewer saw an error (issue 5)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import nats
import pytest

from devstack.stack import Stack
from tests.support.servers import NatsServer
from tests.support.stack import start_stack, stop_and_audit

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REQUESTS = 1000
LICENSE_ISSUED = "dev.playback-drm.license.issued.v1"


@pytest.fixture
def nats_stack(tmp_path: Path, nats_server: NatsServer) -> Iterator[Stack]:
    stack = start_stack(tmp_path, nats_url=nats_server.url)
    yield stack
    stop_and_audit(stack)


def _license_body(stack: Stack) -> bytes:
    keys = json.loads((stack.media_dir / "keys.json").read_text())["videos"]["demo"]["keys"]
    kid = base64.urlsafe_b64encode(bytes.fromhex(keys[0]["kid"])).rstrip(b"=").decode()
    challenge = json.dumps({"kids": [kid], "type": "temporary"}).encode()
    return json.dumps(
        {"videoId": "demo", "licenseRequest": base64.b64encode(challenge).decode()}
    ).encode()


async def _stream_events(url: str) -> list[dict[str, object]]:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        info = await js.stream_info("PLAYBACK_EVENTS")
        total = info.state.messages
        sub = await js.subscribe("playback.events.>", ordered_consumer=True)
        docs = []
        for _ in range(total):
            msg = await sub.next_msg(timeout=5)
            docs.append(json.loads(msg.data))
        await sub.unsubscribe()
        return docs
    finally:
        await client.close()


async def test_no_event_lost_or_duplicated_across_a_nats_outage(
    nats_stack: Stack, nats_server: NatsServer
) -> None:
    url = f"{nats_stack.gateway}/drm/license"
    body = _license_body(nats_stack)
    # 20 viewers, 50 licenses each: well inside every viewer's rate limit
    viewers = [f"viewer-{i}" for i in range(20)]
    billing = f"http://127.0.0.1:{nats_stack.ports.billing}/admin/users/"
    statuses: list[int] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as session:
        for viewer in viewers:
            async with session.put(billing + viewer, json={"plan": "premium"}) as resp:
                assert resp.status == 200
        tokens = {v: nats_stack.token(v) for v in viewers}

        async def issue(viewer: str, n: int) -> None:
            headers = {
                "Authorization": f"Bearer {tokens[viewer]}",
                "Content-Type": "application/json",
            }
            for _ in range(n):
                async with session.post(url, headers=headers, data=body) as resp:
                    await resp.read()
                    statuses.append(resp.status)

        async def phase(per_viewer: int) -> None:
            await asyncio.gather(*(issue(v, per_viewer) for v in viewers))

        await phase(20)  # 400 with NATS up
        nats_server.process.stop()  # NATS goes away mid-run
        await phase(20)  # 400 during the outage
        nats_server.restart()  # same port, same JetStream store
        await phase(10)  # 200 after it came back
    assert statuses == [200] * REQUESTS  # the outage never reached a viewer

    deadline = time.monotonic() + 30
    issued: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        docs = await _stream_events(nats_server.url)
        issued = [d for d in docs if d.get("type") == LICENSE_ISSUED]
        if len(issued) >= REQUESTS:
            break
        await asyncio.sleep(0.5)
    ids = [d["id"] for d in issued]
    assert len(ids) == REQUESTS, f"{len(ids)} LicenseIssued events in the stream"
    assert len(set(ids)) == REQUESTS, "duplicates in the stream"
