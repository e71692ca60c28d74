"""The pure parts of ``bench/edge.py saturate``: a bounded stepped rate ramp (doubling, then
bisecting between the highest rate held and the lowest one missed) and the sizing arithmetic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CORE_US_PER_S = 1_000_000.0  # one core: a million CPU µs per second


@dataclass
class Ramp:
    """Which open-loop rate to try next. Doubles from ``start`` while every step holds, then
    bisects between the highest rate held and the lowest rate missed until they are within
    ``resolution`` of each other. Never above ``cap``, never more than ``max_steps`` steps; a
    first step missed bisects down towards ``start / 8``. Rates are whole requests per second."""

    start: float
    cap: float
    max_steps: int = 9
    resolution: float = 0.15
    held: float = 0.0
    missed: float | None = None
    steps: int = 0

    def next_rate(self) -> float | None:
        """The next rate to try, or None when the ramp is done."""
        if self.steps >= self.max_steps:
            return None
        if self.missed is None:
            if self.steps == 0:
                return min(self.start, self.cap)
            if self.held >= self.cap:
                return None
            return min(self.held * 2, self.cap)
        if self.held == 0:
            lower = float(round(self.missed / 2))
            return None if lower < max(1.0, self.start / 8) else lower
        if self.missed - self.held <= self.resolution * self.held:
            return None
        rate = float(round((self.held + self.missed) / 2))
        return None if rate in (self.held, self.missed) else rate

    def record(self, rate: float, held: bool) -> None:
        self.steps += 1
        if held:
            self.held = max(self.held, rate)
        else:
            self.missed = rate if self.missed is None else min(self.missed, rate)

    @property
    def capped(self) -> bool:
        """The cap was held: the real saturation is higher than the ramp could show."""
        return self.held >= self.cap


def per_replica_at(cpu_us_per_request: Mapping[str, float], share: float = 0.6) -> dict[str, float]:
    """Requests per second each process serves at ``share`` of one core, from its CPU µs per
    request (1 core = 1,000,000 µs/s); processes that spent nothing are left out."""
    return {name: share * CORE_US_PER_S / us for name, us in cpu_us_per_request.items() if us > 0}


def bottleneck(per_replica: Mapping[str, float]) -> tuple[str, float]:
    """The process that reaches the CPU share first, and the request rate at which it does."""
    name = min(per_replica, key=lambda k: per_replica[k])
    return name, per_replica[name]


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 (nothing measured)."""
    return numerator / denominator if denominator else float("nan")
