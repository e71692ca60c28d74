"""The manifest path through the three ways to run playback-drm's Envoy, in one run on one box.

    python bench/modes.py [--seconds N] [--rate R]

Each mode serves ``GET /playback/demo/manifest`` (JWT, entitlement, the HLS master playlist signed
by extproc) from the same local stack (tests/mesh/harness.py): our sidecar (gateway listener +
mTLS sidecar), Istio's configuration (a plain-HTTP front + mesh mTLS to the gateway, whose
ext_authz, rate limit and ext_proc calls go through the services' inbound sidecars, mTLS), and
Envoy Gateway's (HTTPS to its listener; three ext_proc messages per manifest instead of one).
Open-loop load, latency from the scheduled send time; CPU µs per request of authz and extproc.
The topologies differ (the Istio row has two more TLS hops), so compare extproc's CPU across
rows for the cost of the ext_proc form, and the latencies as what each deployment adds.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ssl
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Request, RunResult, run_open_loop, table
from tests.mesh.harness import start_modes
from tests.support.servers import start_redis


def _same(request: Request, _i: int) -> Request:
    """The i-th request of a run that sends one request over and over."""
    return request


async def _measure(seconds: float, rate: float) -> list[RunResult]:
    with tempfile.TemporaryDirectory(prefix="bench-modes-") as tmp:
        root = Path(tmp)
        redis = start_redis(root)
        modes = start_modes(root / "stack", redis.url, per_user_rps=1_000_000)
        try:
            stack = modes.stack
            token = stack.token("alice")
            pids = {
                name: proc.proc.pid
                for name, proc in stack.processes.items()
                if name in ("authz", "extproc") and proc.proc is not None
            }
            results = []
            for name in ("sidecar", "istio", "envoy-gateway"):
                mode = modes.by_name[name]
                url = mode.base + "/playback/demo/manifest"
                headers = {"Authorization": f"Bearer {token}"}
                context: ssl.SSLContext | bool = mode.context or False
                manifest = Request("GET", url, headers)
                results.append(
                    await run_open_loop(
                        name,
                        functools.partial(_same, manifest),
                        rate=rate,
                        seconds=seconds,
                        processes=pids,
                        ssl=context,
                    )
                )
            return results
        finally:
            modes.stop()
            modes.stack.stop()
            redis.process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    results = asyncio.run(_measure(args.seconds, args.rate))
    print(table(results, baseline="sidecar"))
    for result in results:
        print(
            result.name,
            "statuses",
            dict(sorted(result.statuses.items())),
            "client errors",
            result.errors,
        )


if __name__ == "__main__":
    main()
