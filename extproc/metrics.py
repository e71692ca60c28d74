"""Prometheus metrics of the extproc service."""

from __future__ import annotations

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
