"""Benchmark plumbing: an open-loop load generator at a fixed rate and per-process CPU accounting.

Open loop: request i is sent at ``start + i / rate`` whether or not earlier ones finished, so a
slow server shows up as latency (no coordinated omission). Latency is measured from the scheduled
send time. CPU time per request comes from ``/proc/<pid>/stat`` (utime + stime, all threads)
before and after a run, divided by the requests sent; the load generator's own CPU (this process,
which shares the box with the servers) is counted too, as ``loadgen``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (and its waited-for children)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


@dataclass
class RunResult:
    name: str
    rate: float
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    cpu: dict[str, float] = field(default_factory=dict)  # process -> seconds during the run
    errors: int = 0

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[index]

    def cpu_us_per_request(self, process: str) -> float:
        return 1e6 * self.cpu.get(process, 0.0) / max(1, self.count)

    def summary(self) -> dict[str, float | str]:
        return {
            "scenario": self.name,
            "rate": self.rate,
            "throughput": round(self.throughput, 1),
            "p50_ms": round(1e3 * self.percentile(50), 3),
            "p99_ms": round(1e3 * self.percentile(99), 3),
            "mean_ms": round(1e3 * statistics.fmean(self.latencies), 3) if self.latencies else 0,
            "ok": self.statuses.get(200, 0),
            "errors": self.errors + sum(v for k, v in self.statuses.items() if k != 200),
            **{f"cpu_us_{k}": round(self.cpu_us_per_request(k), 1) for k in self.cpu},
        }


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None


async def run_open_loop(
    name: str,
    requests: Callable[[int], Request],
    *,
    rate: float,
    seconds: float,
    processes: Mapping[str, int],
    warmup: int = 200,
    ssl: object = None,
    timeout_s: float = 10.0,
) -> RunResult:
    connector = aiohttp.TCPConnector(limit=256, ssl=ssl)  # type: ignore[arg-type]
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(req: Request) -> int:
            async with session.request(
                req.method, req.url, headers=req.headers, data=req.body
            ) as resp:
                await resp.read()
                return resp.status

        for i in range(warmup):  # connections, caches, JITs of every kind
            await send(requests(i))
        total = int(rate * seconds)
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        errors = 0
        cpu_before = {k: cpu_seconds(pid) for k, pid in processes.items()}
        own_before = time.process_time()
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05

        async def one(i: int) -> None:
            nonlocal errors
            scheduled = start + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                status = await send(requests(i))
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                return
            latencies.append(loop.time() - scheduled)
            statuses[status] = statuses.get(status, 0) + 1

        wall = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        wall = time.perf_counter() - wall
        cpu = {k: cpu_seconds(pid) - cpu_before[k] for k, pid in processes.items()}
        cpu["loadgen"] = time.process_time() - own_before
    return RunResult(name, rate, wall, latencies, statuses, cpu, errors)


def table(results: Sequence[RunResult], baseline: str | None = None) -> str:
    """A plain-text table; ``ratio`` columns compare each row with the baseline at its rate."""
    rows = [r.summary() for r in results]
    keys: list[str] = []
    for row in rows:
        for key in row:
            if key not in keys:
                keys.append(key)
    if baseline:
        base = {r.rate: r for r in results if r.name == baseline}
        for result, row in zip(results, rows, strict=True):
            ref = base.get(result.rate)
            if ref is not None and result is not ref:
                row["p50_delta_ms"] = round(1e3 * (result.percentile(50) - ref.percentile(50)), 3)
                row["p99_delta_ms"] = round(1e3 * (result.percentile(99) - ref.percentile(99)), 3)
                row["p50_ratio"] = round(result.percentile(50) / ref.percentile(50), 2)
        for key in ("p50_delta_ms", "p99_delta_ms", "p50_ratio"):
            if key not in keys:
                keys.append(key)
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    for row in rows:
        lines.append("  ".join(str(row.get(k, "")).ljust(widths[k]) for k in keys))
    return "\n".join(lines)
