"""Prometheus metrics of the authz service (label children pre-resolved off the hot path)."""

from __future__ import annotations

from prometheus_client import Counter

from playback_drm.metrics import CACHE_REQUESTS, request_metrics

# playback_authz_requests_total{route,outcome,code} and playback_authz_request_duration_seconds:
# the names the alert rules and the dashboard watch (route = the check mode).
REQUESTS = request_metrics("authz")
CACHE = CACHE_REQUESTS  # shared across services: playback_cache_requests_total{cache,result}
RATE_LIMIT = Counter(
    "playback_ratelimit_decisions_total",
    "Rate limit service decisions",
    ["outcome"],
)
