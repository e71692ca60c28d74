"""Prometheus metrics of the authz service (label children pre-resolved off the hot path)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from playback_drm.metrics import CACHE_REQUESTS, request_metrics

# playback_authz_requests_total{route,outcome,code} and playback_authz_request_duration_seconds:
# the names the alert rules and the dashboard watch (route = the check mode).
REQUESTS = request_metrics("authz")
CACHE = CACHE_REQUESTS  # shared across services: playback_cache_requests_total{cache,result}
RATE_LIMIT = Counter(
    "playback_ratelimit_decisions_total",
    "Per-user rate limit decisions (inside the check, or as the rate limit service)",
    ["outcome"],
)

# Playback sessions and concurrent-stream slots (authz.registry).
SESSIONS_STARTED = Counter(
    "playback_sessions_started_total",
    "Playback sessions started (entry manifest requests admitted)",
)
STREAM_SLOTS = Counter(
    "playback_stream_slots_total",
    "Concurrent-stream slot decisions: taken, refused, released (an explicit end or a license "
    "release), unchecked (the session store could not be asked: allowed)",
    ["result"],
)
SESSION_STORE_ERRORS = Counter(
    "playback_session_store_errors_total",
    "Session store calls that failed; the request went on (fail open)",
    ["op"],
)
SESSIONS_ACTIVE = Gauge(
    "playback_sessions_active",
    "Playback sessions holding a concurrent-stream slot, per plan. With Redis every replica "
    "reports the same cluster-wide count: aggregate with max, not sum",
    ["plan"],
)
# Long sessions (authz.service): what became of session URLs whose token had expired, and
# entitlements found gone at a playlist refresh.
RENEWALS = Counter(
    "playback_session_renewals_total",
    "Expired session-bound playlist, license and heartbeat URLs: accepted (the session alive and "
    "its viewer still entitled), refused (the session over or the entitlement gone)",
    ["result"],
)
REVALIDATIONS = Counter(
    "playback_session_revalidations_total",
    "Entitlement re-checks at a live session's playlist refresh: held, revoked (the session "
    "ended), unchecked (Billing unreachable: the session plays on)",
    ["result"],
)
