"""Prometheus metrics of the authz service (label children pre-resolved off the hot path)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from playback_drm.metrics import CACHE_REQUESTS

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

CHECKS = Counter(
    "playback_authz_checks_total",
    "ext_authz checks by mode, outcome (allow/deny) and stable code",
    ["mode", "outcome", "code"],
)
CHECK_SECONDS = Histogram(
    "playback_authz_check_seconds",
    "Time to decide one ext_authz check",
    ["mode"],
    buckets=LATENCY_BUCKETS,
)
CACHE = CACHE_REQUESTS  # shared across services: playback_cache_requests_total{cache,result}
RATE_LIMIT = Counter(
    "playback_ratelimit_decisions_total",
    "Rate limit service decisions",
    ["outcome"],
)
