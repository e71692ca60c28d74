"""Prometheus metrics of the extproc service."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from playback_drm.metrics import CACHE_REQUESTS

REWRITE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

MANIFESTS = Counter(
    "playback_extproc_manifests_total",
    "Manifest responses by kind (hls/dash/none), outcome (signed/passthrough/error) and code",
    ["kind", "outcome", "code"],
)
REWRITE_SECONDS = Histogram(
    "playback_extproc_rewrite_seconds",
    "Time to sign one manifest (decode, rewrite or cache hit)",
    ["kind"],
    buckets=REWRITE_BUCKETS,
)
CACHE = CACHE_REQUESTS  # shared across services: playback_cache_requests_total{cache,result}
