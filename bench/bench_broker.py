"""License broker alone: ClearKey licenses at a fixed rate, latency percentiles and CPU per request.

    .venv/bin/python bench/bench_broker.py [--rate 200] [--seconds 10] [--redis-url URL]

The broker runs in its own process (uvloop when installed, like ``playback-drm serve broker``)
with the demo keys in memory, on a loopback port; this process is the open-loop load generator
(``bench/harness.py``). Every request carries the headers authz would set (user, plan, compact
entitlement facts). Concurrent-stream slots are authz's (``bench/bench_sessions.py``), not the
broker's. Scenarios:

- ``clearkey-memory``: in-memory license cache, a new viewer per request, so every license is
  built (warm key cache, license cache miss);
- ``clearkey-redis-miss``: Redis license cache, a new viewer per request (GET miss + SET NX per
  license);
- ``clearkey-redis-hit``: Redis, one viewer repeating one request (GET hit).

A real Redis is started for the run unless ``--redis-url`` is given. CPU is the broker process's
user+system time during the measured window divided by the requests sent. On a shared or
virtualized machine that figure includes the host's contention (a trivial aiohttp handler was
measured at ~250 us there), so the run also prints ``LicenseService.issue`` timed in process,
without HTTP: the broker's own cost per ClearKey license.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.harness import Request, RunResult, run_open_loop, table  # noqa: E402
from license_broker.demo_keys import DEMO_KID  # noqa: E402
from tests.support.procs import free_port  # noqa: E402
from tests.support.servers import start_redis  # noqa: E402

LAUNCHER = """
import asyncio, os
from license_broker.app import serve
from license_broker.config import BrokerConfig
config = BrokerConfig.from_env(os.environ)
try:
    import uvloop
except ImportError:
    asyncio.run(serve(config))
else:
    uvloop.run(serve(config))
"""

FACTS = json.dumps(
    {"plan": "premium", "tier": "HD", "maxStreams": 4, "playbackWindowSeconds": 28800},
    separators=(",", ":"),
    sort_keys=True,
)
BODY = json.dumps(
    {
        "kids": [base64.urlsafe_b64encode(bytes.fromhex(DEMO_KID)).decode().rstrip("=")],
        "type": "temporary",
    }
).encode()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=0.5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("broker did not become ready")


@contextmanager
def broker(env: dict[str, str]) -> Iterator[tuple[str, int]]:
    port = free_port()
    full = {
        **os.environ,
        "BROKER_HOST": "127.0.0.1",
        "BROKER_PORT": str(port),
        "LOG_LEVEL": "WARNING",
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER], env=full, stdout=subprocess.DEVNULL, cwd=REPO
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base + "/health/live", proc)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def clearkey_requests(base: str, *, same_viewer: bool) -> Callable[[int], Request]:
    url = base + "/drm/license/org.w3.clearkey?videoId=demo"

    def make(i: int) -> Request:
        user = "viewer-0" if same_viewer else f"viewer-{i}"
        return Request(
            "POST",
            url,
            headers={
                "Content-Type": "application/json",
                "x-playback-user": user,
                "x-playback-plan": "premium",
                "x-playback-video": "demo",
                "x-playback-entitlement": FACTS,
            },
            body=BODY,
        )

    return make


async def run(rate: float, seconds: float, redis_url: str) -> list[RunResult]:
    results: list[RunResult] = []
    with broker({}) as (base, pid):
        results.append(
            await run_open_loop(
                "clearkey-memory",
                clearkey_requests(base, same_viewer=False),
                rate=rate,
                seconds=seconds,
                processes={"broker": pid},
            )
        )
    with broker({"REDIS_URL": redis_url}) as (base, pid):
        results.append(
            await run_open_loop(
                "clearkey-redis-miss",
                clearkey_requests(base, same_viewer=False),
                rate=rate,
                seconds=seconds,
                processes={"broker": pid},
            )
        )
        results.append(
            await run_open_loop(
                "clearkey-redis-hit",
                clearkey_requests(base, same_viewer=True),
                rate=rate,
                seconds=seconds,
                processes={"broker": pid},
            )
        )
    return results


async def service_only(n: int = 5000) -> float:
    """CPU microseconds per ClearKey license in ``LicenseService.issue`` (memory caches)."""
    from license_broker.cache import MemoryLicenseCache
    from license_broker.config import BrokerConfig
    from license_broker.demo_keys import DEMO_KEYS
    from license_broker.keys import CachedKeyStore, MemoryKeyStore
    from license_broker.policy import Identity
    from license_broker.service import LicenseService
    from playback_drm.events import NullSink

    keys = CachedKeyStore(
        MemoryKeyStore.from_document(DEMO_KEYS),
        ttl=60,
        max_stale=3600,
        negative_ttl=5,
        max_videos=100,
    )
    service = LicenseService(
        BrokerConfig(),
        keys=keys,
        cache=MemoryLicenseCache(100_000),
        providers={},
        events=NullSink(),
    )
    identities = [
        Identity(user=f"viewer-{i}", plan="premium", video="demo", entitlement=FACTS)
        for i in range(n + 200)
    ]
    for identity in identities[:200]:
        await service.issue(identity, "demo", None, BODY)
    started = time.process_time()
    for identity in identities[200:]:
        await service.issue(identity, "demo", None, BODY)
    return 1e6 * (time.process_time() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        redis = None
        url = args.redis_url
        if url is None:
            redis = start_redis(Path(tmp))
            url = redis.url
        try:
            results = asyncio.run(run(args.rate, args.seconds, url))
        finally:
            if redis is not None:
                redis.process.stop()
    print(table(results))
    per_license = asyncio.run(service_only())
    print(
        f"LicenseService.issue in process (ClearKey, key system inferred): {per_license:.1f} us CPU"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
