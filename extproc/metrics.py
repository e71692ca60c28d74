"""Prometheus metrics of the extproc service."""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import Counter

from playback_drm.metrics import CACHE_REQUESTS, request_metrics

MANIFESTS = Counter(
    "playback_extproc_manifests_total",
    "Manifest responses by kind (hls/dash/none), outcome (signed/passthrough/error) and code",
    ["kind", "outcome", "code"],
)
# playback_extproc_requests_total{route,outcome,code} and
# playback_extproc_request_duration_seconds{route}: what the alert rules and dashboard watch
# (route = hls, dash or url for the JSON form).
REQUESTS = request_metrics("extproc")
CACHE = CACHE_REQUESTS  # shared across services: playback_cache_requests_total{cache,result}


@lru_cache(maxsize=256)
def manifest_counter(kind: str, outcome: str, code: str) -> Counter:
    """The labelled child, looked up once (``labels()`` costs a lock and a dict per call)."""
    return MANIFESTS.labels(kind, outcome, code)


@lru_cache(maxsize=8)
def manifest_cache_counter(result: str) -> Counter:
    return CACHE.labels("manifests", result)
