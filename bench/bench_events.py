"""Analytics events: the cost of ``emit``, and request latency before vs during a NATS outage.

    .venv/bin/python bench/bench_events.py [--rate 500] [--seconds 6] [--queue-size 2000]

Part 1, in process: microseconds per call of building a ``LicenseIssued`` event and of ``emit``
on each sink (JetStream with room in memory, JetStream spilling, JSON-lines, memory, null), and
of ``tracing.span`` when tracing is off.

Part 2, a simulated license endpoint: an aiohttp app in its own process (uvloop when installed,
like ``playback-drm serve``) whose handler builds a ``LicenseIssued`` event and emits it to a
``JetStreamSink`` connected to a real NATS server; this process is the open-loop load generator
(``bench/harness.py``). Scenarios, in order, at the same rate:

- ``null-sink``: the same handler with a ``NullSink`` (what the endpoint costs without events);
- ``nats-up``: JetStream sink, NATS running;
- ``nats-down``: NATS stopped: events fill the memory queue (``--queue-size``) and then spill to
  disk; the sink's reconnect attempts run in the background;
- ``nats-back``: NATS restarted: the backlog is published while requests keep coming.

Afterwards it waits until the sink is idle and checks that the stream holds exactly one message
per request sent (warm-up included) with no duplicate ids.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import timeit
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.harness import Request, RunResult, run_open_loop, table  # noqa: E402
from playback_drm import tracing  # noqa: E402
from playback_drm.events import (  # noqa: E402
    BROKER_SOURCE,
    Event,
    EventsConfig,
    EventSink,
    MemorySink,
    NullSink,
    license_issued,
)
from playback_drm.events.jetstream import JetStreamSink  # noqa: E402
from playback_drm.events.jsonlines import JsonLinesSink  # noqa: E402
from playback_drm.events.reader import read_stream  # noqa: E402
from tests.support.procs import free_port  # noqa: E402
from tests.support.servers import NatsServer, start_nats  # noqa: E402


def make_event(n: int) -> Event:
    return license_issued(
        BROKER_SOURCE,
        user_id="user-42",
        video_id="big-buck-bunny",
        license_id=f"lic-{n}",
        key_system="org.w3.clearkey",
        plan="premium",
        request_id=f"req-{n}",
    )


# ----------------------------------------------------------------------------- part 1: micro


def per_call_us(fn: Callable[[], object], number: int) -> float:
    best = min(timeit.repeat(fn, number=number, repeat=5))
    return 1e6 * best / number


async def micro(nats: NatsServer, tmp: Path) -> dict[str, float]:
    results: dict[str, float] = {}
    events = [make_event(n) for n in range(20_000)]
    counter = iter(range(10**9))
    results["build LicenseIssued event"] = per_call_us(lambda: make_event(next(counter)), 20_000)

    def emit_all(sink: EventSink, batch: list[Event]) -> Callable[[], None]:
        def run() -> None:
            emit = sink.emit
            for event in batch:
                emit(event)

        return run

    results["NullSink.emit"] = per_call_us(emit_all(NullSink(), events), 1) / len(events)
    memory = MemorySink()
    results["MemorySink.emit"] = per_call_us(emit_all(memory, events), 1) / len(events)

    config = EventsConfig(
        nats_url=nats.url, spill_dir=tmp / "micro-spill", queue_size=200_000, drain_timeout_s=30
    )
    async with JetStreamSink(config, name="micro") as sink:
        best = float("inf")
        for _ in range(5):  # no await inside a run: the publisher cannot interleave
            start = time.perf_counter()
            emit_all(sink, events)()
            best = min(best, time.perf_counter() - start)
            await sink.drain(30)
        results["JetStreamSink.emit (memory queue)"] = 1e6 * best / len(events)

    spill_config = EventsConfig(
        nats_url=nats.url, spill_dir=tmp / "micro-spill2", queue_size=1, drain_timeout_s=30
    )
    async with JetStreamSink(spill_config, name="micro") as sink:
        batch = events[:4000]  # within the spill writer's staging bound
        best = float("inf")
        for _ in range(5):
            await sink.drain(30)
            start = time.perf_counter()
            emit_all(sink, batch)()
            best = min(best, time.perf_counter() - start)
        await sink.drain(30)
        results["JetStreamSink.emit (spilling to disk)"] = 1e6 * best / len(batch)

    async with JsonLinesSink(tmp / "micro.jsonl", queue_size=200_000) as log_sink:
        start = time.perf_counter()
        emit_all(log_sink, events)()
        results["JsonLinesSink.emit"] = 1e6 * (time.perf_counter() - start) / len(events)

    def traced() -> None:
        with tracing.span(tracing.BROKER_ISSUE_LICENSE, videoId="v"):
            pass

    results["tracing.span (tracing off)"] = per_call_us(traced, 100_000)
    return results


# -------------------------------------------------------------------- part 2: the endpoint

SERVER = r"""
import asyncio, json, signal, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from aiohttp import web
from bench.bench_events import make_event
from playback_drm.events import EventsConfig, NullSink
from playback_drm.events.jetstream import JetStreamSink  # noqa: E402

async def main() -> None:
    sinks = {{"null": NullSink()}}
    config = EventsConfig(nats_url={nats!r}, spill_dir=Path({spill!r}), queue_size={queue},
                          reconnect_max_wait_s=1.0, drain_timeout_s=30)
    async with JetStreamSink(config, name="bench") as js:
        sinks["jetstream"] = js

        async def license(request: web.Request) -> web.Response:
            n = int(request.query["n"])
            sinks[request.match_info["sink"]].emit(make_event(n))
            return web.json_response({{"licenseId": f"lic-{{n}}"}})

        async def stats(_: web.Request) -> web.Response:
            return web.json_response({{**js.stats.__dict__, "depth": js.depth(),
                                      "spillBytes": js.spill_bytes, "idle": js.idle()}})

        app = web.Application()
        app.router.add_post("/{{sink}}/drm/license", license)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", {port}).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        doc = json.load(resp)
    assert isinstance(doc, dict)
    return doc


async def wait_ready(port: int, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError("bench server exited")
        try:
            get_json(f"http://127.0.0.1:{port}/stats")
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("bench server not ready")


async def stream_ids(nats: NatsServer) -> list[str]:
    """Ids of every event in the stream, read like `playback-drm events` does."""
    config = EventsConfig(nats_url=nats.url)
    return [str(doc["id"]) async for doc in read_stream(config, follow=False)]


async def endpoint(args: argparse.Namespace, nats: NatsServer, tmp: Path) -> None:
    port = free_port()
    script = SERVER.format(
        repo=str(REPO), nats=nats.url, spill=str(tmp / "spill"), queue=args.queue_size, port=port
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    sent = 0
    try:
        await wait_ready(port, proc)
        counter = iter(range(10**9))

        def requests_for(sink: str) -> Callable[[int], Request]:
            def make(_: int) -> Request:
                return Request(
                    "POST", f"http://127.0.0.1:{port}/{sink}/drm/license?n={next(counter)}"
                )

            return make

        async def run(name: str, sink: str, warmup: int) -> RunResult:
            nonlocal sent
            result = await run_open_loop(
                name,
                requests_for(sink),
                rate=args.rate,
                seconds=args.seconds,
                processes={"server": proc.pid},
                warmup=warmup,
            )
            if sink == "jetstream":
                sent += warmup + result.count + result.errors
            return result

        results = [await run("null-sink", "null", 300), await run("nats-up", "jetstream", 300)]
        before = get_json(f"http://127.0.0.1:{port}/stats")
        await asyncio.to_thread(nats.process.stop)
        results.append(await run("nats-down", "jetstream", 0))
        during = get_json(f"http://127.0.0.1:{port}/stats")
        await asyncio.to_thread(nats.restart)
        results.append(await run("nats-back", "jetstream", 0))
        deadline = time.monotonic() + 60
        while not get_json(f"http://127.0.0.1:{port}/stats")["idle"]:
            if time.monotonic() > deadline:
                raise RuntimeError("sink did not drain")
            await asyncio.sleep(0.1)
        after = get_json(f"http://127.0.0.1:{port}/stats")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)

    print(
        f"\nrequest loop at {args.rate:g} req/s, {args.seconds:g} s per scenario, "
        f"memory queue {args.queue_size}:"
    )
    print(table(results, baseline="nats-up"))
    up, down = results[1], results[2]
    print(
        f"\np99 before the outage {1e3 * up.percentile(99):.3f} ms, during it "
        f"{1e3 * down.percentile(99):.3f} ms (delta "
        f"{1e3 * (down.percentile(99) - up.percentile(99)):+.3f} ms)"
    )
    print(f"sink before the outage: {before}")
    print(f"sink at the end of the outage: {during}")
    print(f"sink after draining: {after}")
    ids = await stream_ids(nats)
    print(f"events sent {sent}, in the stream {len(ids)}, distinct ids {len(set(ids))}")
    if len(ids) != sent or len(set(ids)) != sent:
        raise SystemExit("MISMATCH: events lost or duplicated")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp_name:
        tmp = Path(tmp_name)
        nats = start_nats(tmp)
        try:
            if not args.skip_micro:
                print("per call, best of 5 (us):")
                for name, value in (await micro(nats, tmp)).items():
                    print(f"  {name:42s} {value:8.3f}")
                await asyncio.to_thread(nats.process.stop)
                nats = start_nats(tmp)  # a clean stream for the endpoint run
            await endpoint(args, nats, tmp)
        finally:
            nats.process.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument(
        "--queue-size",
        type=int,
        default=2000,
        help="memory queue; the outage emits rate*seconds events (spills beyond)",
    )
    parser.add_argument("--skip-micro", action="store_true")
    asyncio.run(main(parser.parse_args()))
