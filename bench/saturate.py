"""Saturation per pod (issue 16): ``python bench/edge.py saturate``.

For three paths through the local stack on real Redis, OpenBao and NATS (gateway -> mTLS ->
sidecar, as ``bench/edge.py license`` measures it):

- manifest: the 150-segment HLS entry manifest (ext_authz starts a playback session, ext_proc
  signs every segment URL);
- media: one signed 1 MB segment (ext_authz checks the URL's signature);
- license: a ClearKey license (ext_authz, the broker: Redis, Vault-cached keys, events),

and for each beside Envoy alone on the same route in the same run (the stack's Envoy serves a
twin of its gateway and sidecar listeners without ext_authz and ext_proc, the broker's routes
answered by a direct response: bench/edge.py ``add_alone_twin``), an open-loop rate ramp
(bench/ramp.py: doubling from 100 req/s, then bisecting; a few seconds a step, a cap on the
rate and on the steps) finds the highest rate held with p99 under 50 ms and no errors. Prints
the CPU µs per request of each process at that rate, the load generator's included (it shares
the box), and the requests per second one replica serves before a process reaches 60% of one
core, which is what an HPA target is sized from (docs/DEPLOYMENT.md).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bench.edge import (
    BenchStack,
    _get,
    _put_json,
    license_requests,
    license_stack,
    write_bench_media,
)
from bench.harness import Request, RunResult, run_open_loop
from bench.ramp import Ramp, bottleneck, per_replica_at, ratio

BUDGET_MS = 50.0  # the seed's hard number, per request
START_RATE = 100.0
SEGMENT = "bench-hls/segments/720p/seg_00000.ts"
SEGMENT_BYTES = 1 << 20
MANIFEST_VIEWER = "saturate-bench"
# the pod's processes on each path (origin is a stand-in for the CDN origin, not in the pod)
POD = {
    "manifest": ("envoy", "authz", "extproc"),
    "media": ("envoy", "authz"),
    "license": ("envoy", "authz", "broker"),
}
SHOWN = ("envoy", "authz", "extproc", "broker", "origin", "loadgen")


@dataclass
class RampOutcome:
    path: str
    variant: str  # "full" (our filters and services) or "alone" (Envoy alone)
    ramp: Ramp
    steps: list[RunResult]

    @property
    def at_held(self) -> RunResult | None:
        """The step at the highest rate held (or the lowest rate tried, if none held)."""
        held = [s for s in self.steps if s.rate == self.ramp.held and held_budget(s)]
        if held:
            return held[-1]
        return min(self.steps, key=lambda s: s.rate) if self.steps else None

    @property
    def busiest_served(self) -> RunResult | None:
        """The step at the highest rate whose every request was answered (p99 aside): its CPU
        per request is the least diluted by what a process spends idle."""
        served = [s for s in self.steps if s.count > 0 and errors(s) == 0]
        return max(served, key=lambda s: s.rate) if served else None


def errors(result: RunResult) -> int:
    return result.errors + sum(v for k, v in result.statuses.items() if k != 200)


def held_budget(result: RunResult) -> bool:
    """Every request answered 200, p99 under the budget."""
    return result.count > 0 and errors(result) == 0 and 1e3 * result.percentile(99) < BUDGET_MS


async def run_ramp(
    path: str,
    variant: str,
    requests: Callable[[int], Request],
    processes: Mapping[str, int],
    *,
    cap: float,
    max_steps: int,
    step_seconds: float,
) -> RampOutcome:
    ramp = Ramp(start=START_RATE, cap=cap, max_steps=max_steps)
    steps: list[RunResult] = []
    warmup = 100  # connections, caches; later steps only reopen a few connections
    while (rate := ramp.next_rate()) is not None:
        # a missed step runs once more after a pause: on a shared box one stall of another
        # process's making is enough to put a 3-second step's p99 over the budget
        for attempt in range(2):
            result = await run_open_loop(
                f"{path}_{variant}" + ("_retry" if attempt else ""),
                requests,
                rate=rate,
                seconds=step_seconds,
                processes=processes,
                warmup=warmup,
                timeout_s=2.0,  # anything slower misses the budget anyway
            )
            warmup = 10
            steps.append(result)
            held = held_budget(result)
            await asyncio.sleep(0.5 if held else 2.0)  # let a missed step's backlog drain
            if held:
                break
        ramp.record(rate, held)
    return RampOutcome(path, variant, ramp, steps)


def _steps_line(outcome: RampOutcome) -> str:
    parts = []
    for s in outcome.steps:
        failed = {str(k): v for k, v in s.statuses.items() if k != 200}
        if s.errors:
            failed["timeout/reset"] = s.errors
        mark = "ok" if held_budget(s) else f"MISSED (errors: {failed or 'none'})"
        again = " (again)" if s.name.endswith("_retry") else ""
        parts.append(f"{s.rate:.0f}{again}: p99 {1e3 * s.percentile(99):.1f} ms {mark}")
    return f"  {outcome.path} {outcome.variant} steps: " + "; ".join(parts)


def report(outcomes: list[RampOutcome]) -> str:
    lines = []
    header = ["path", "variant", "held_rps", "p99_ms", *(f"cpu_us_{k}" for k in SHOWN)]
    header.append("loadgen_core")
    rows = [header]
    for o in outcomes:
        r = o.at_held
        if r is None:
            continue
        held = f"{o.ramp.held:.0f}" + ("+" if o.ramp.capped else "")
        row = [o.path, o.variant, held, f"{1e3 * r.percentile(99):.1f}"]
        row += [f"{r.cpu_us_per_request(k):.0f}" for k in SHOWN]
        row.append(f"{r.cpu.get('loadgen', 0.0) / r.seconds:.2f}" if r.seconds else "")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append("(held_rps: highest rate with p99 < 50 ms and no errors, '+' = the cap; cpu_us:")
    lines.append(" CPU µs per request at that rate; envoy = gateway + sidecar hops, one process;")
    lines.append(" loadgen_core: the load generator's share of a core at that rate)")
    by_key = {(o.path, o.variant): o for o in outcomes}
    lines.append("")
    for path, pod in POD.items():
        full, alone = by_key.get((path, "full")), by_key.get((path, "alone"))
        if full is None or alone is None:
            continue
        goal = " (issue 16 goal for license: >= 40%)" if path == "license" else ""
        lines.append(
            f"{path}: saturation {full.ramp.held:.0f} req/s vs Envoy alone "
            f"{alone.ramp.held:.0f} req/s = {100 * ratio(full.ramp.held, alone.ramp.held):.0f}%"
            f"{goal}"
        )
        r = full.busiest_served
        if r is None:
            continue
        cpu = {k: r.cpu_us_per_request(k) for k in pod}
        per = per_replica_at(cpu)
        if per:
            name, rps = bottleneck(per)
            each = ", ".join(f"{k} {v:.0f}" for k, v in per.items())
            lines.append(
                f"  requests per replica at 60% CPU (one core per process; CPU per request at "
                f"{r.rate:.0f} req/s, the busiest step served in full: "
                + ", ".join(f"{k} {v:.0f} us" for k, v in cpu.items())
                + f"): {each} -> bottleneck {name} at {rps:.0f} req/s"
            )
    lines.append("")
    lines += [_steps_line(o) for o in outcomes]
    return "\n".join(lines)


def _signed_segment(stack: BenchStack, token: str) -> str:
    """The signed URL of the bench segment, as the signed entry manifest lists it (a path and
    query, to send to either gateway)."""
    manifest_url = f"{stack.gateway}/playback/bench-hls/manifest"
    request = urllib.request.Request(manifest_url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        body = resp.read().decode()
    for line in body.splitlines():
        if line and not line.startswith("#") and "seg_00000" in line:
            parts = urllib.parse.urlsplit(urllib.parse.urljoin(manifest_url, line))
            return f"{parts.path}?{parts.query}"
    raise RuntimeError(f"no signed segment in the bench manifest: {body[:300]}")


async def _saturate(step_seconds: float, cap: float, max_steps: int) -> list[RampOutcome]:
    # every request comes from one address and at most two viewers: limits far above the ramp,
    # so that the checks still run but never refuse (the ramp measures CPU, not the limiters)
    with license_stack(per_user_rps=100_000, per_ip_rps=100_000) as bench:
        stack = bench.stack
        origin = bench.manifest.origin_dir
        write_bench_media(origin)
        segment = origin / SEGMENT
        segment.parent.mkdir(parents=True, exist_ok=True)
        if not segment.exists() or segment.stat().st_size != SEGMENT_BYTES:
            segment.write_bytes(bytes(range(256)) * (SEGMENT_BYTES // 256))
        _put_json(
            f"http://127.0.0.1:{stack.ports.billing}/admin/catalog/bench-hls",
            {"tier": "HD", "plan": "basic"},
        )
        # the manifest ramps start thousands of playback sessions: a viewer of their own, so
        # that they do not end the session the media ramps' signed URL belongs to (a viewer
        # keeps a bounded number of sessions)
        _put_json(
            f"http://127.0.0.1:{stack.ports.billing}/admin/users/{MANIFEST_VIEWER}",
            {"plan": "premium", "maxStreams": 0},
        )
        auth = {"Authorization": f"Bearer {stack.token(MANIFEST_VIEWER)}"}
        processes = {
            name: stack.processes[name].proc.pid  # type: ignore[union-attr]
            for name in ("envoy", "authz", "extproc", "broker", "origin")
        }

        def requests(path: str, base: str, signed: str) -> Callable[[int], Request]:
            if path == "manifest":
                return _get(f"{base}/playback/bench-hls/manifest", auth)
            if path == "media":
                return _get(f"{base}{signed}", {})
            return license_requests(stack, bench.manifest, base=base)

        outcomes = []
        for path in POD:
            # a fresh session for the media path, its URL signed just before its ramps
            signed = _signed_segment(stack, stack.token("alice")) if path == "media" else ""
            for variant, base in (("alone", stack.alone_gateway), ("full", stack.gateway)):
                outcomes.append(
                    await run_ramp(
                        path,
                        variant,
                        requests(path, base, signed),
                        processes,
                        cap=cap,
                        max_steps=max_steps,
                        step_seconds=step_seconds,
                    )
                )
        return outcomes


def saturate(step_seconds: float, cap: float, max_steps: int) -> str:
    started = time.monotonic()
    outcomes = asyncio.run(_saturate(step_seconds, cap, max_steps))
    took = time.monotonic() - started
    return (
        f"\n== saturate ({step_seconds:.0f}s per step, cap {cap:.0f} req/s, "
        f"{took:.0f}s in all)\n{report(outcomes)}"
    )
