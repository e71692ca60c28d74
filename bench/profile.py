"""Where the license path's CPU goes: py-spy samples authz and the broker under load.

    python bench/profile.py license [--seconds N] [--rate R] [--top K] [--out DIR]

Starts the license scenario's stack (bench/edge.py: gateway -> mTLS -> sidecar -> authz ->
broker, Redis, OpenBao, NATS), sends ClearKey license requests at R req/s (200 by default) for N
seconds after a warm-up, and meanwhile records each service with ``py-spy record`` (sampling,
from outside the process, idle frames dropped). Prints, per service, the functions with the most
samples on the stack (inclusive) and at the top of it (self), as shares of the samples; the raw
collapsed stacks stay in DIR for a flame graph (``flamegraph.pl`` or speedscope). Also prints
the CPU µs per license of Envoy, authz and the broker in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.edge import license_requests, license_stack
from bench.harness import run_open_loop, table
from devstack.supervise import binary

SERVICES = ("authz", "broker")
# frames of the event loop and the profiler's own waiting, which say nothing about our code
_IDLE = re.compile(r"\b(select|poll|epoll_wait|_run_once|run_forever)\b")


def summarise(raw: Path, top: int) -> str:
    """Inclusive and self shares of the functions in py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        if frames and _IDLE.search(frames[-1]):
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if total == 0:
        return "  (no samples)"
    lines = [f"  {total} busy samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        lines.append(f"  -- {title}")
        for frame, count in counter.most_common(top):
            lines.append(f"  {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``: lines vary, functions do not."""
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    name, path = match.groups()
    parts = Path(path).parts
    where = "/".join(parts[-2:]) if "site-packages" not in parts else parts[-1]
    return f"{name} ({where})"


def profile_license(seconds: float, rate: float, top: int, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with license_stack() as bench:
        stack = bench.stack
        request = license_requests(stack, bench.manifest)
        pids = {
            name: stack.processes[name].proc.pid  # type: ignore[union-attr]
            for name in ("envoy", *SERVICES)
        }
        # warm caches, connections and the key store before sampling
        asyncio.run(
            run_open_loop("warmup", request, rate=rate, seconds=2, processes=pids, warmup=0)
        )
        recorders = {name: _record(pids[name], seconds, out / name) for name in SERVICES}
        result = asyncio.run(
            run_open_loop("license", request, rate=rate, seconds=seconds, processes=pids, warmup=0)
        )
        for name, recorder in recorders.items():
            if recorder.wait(timeout=60) != 0:
                log = (out / f"{name}.py-spy.log").read_text().strip()
                raise RuntimeError(f"py-spy record of {name} failed: {log[-500:]}")
    report = [table([result])]
    for name in SERVICES:
        report.append(f"\n== {name} ({out / f'{name}.txt'})\n{summarise(out / f'{name}.txt', top)}")
    return "\n".join(report)


def _record(pid: int, seconds: float, stem: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` for ``seconds``: collapsed stacks in ``stem``.txt."""
    command = [binary("py-spy"), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    command += ["--rate", "250", "--format", "raw", "--nonblocking"]
    command += ["--output", f"{stem}.txt"]
    with Path(f"{stem}.py-spy.log").open("w") as log:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", choices=["license"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("test-artifacts/profile"))
    args = parser.parse_args()
    print(profile_license(args.seconds, args.rate, args.top, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
