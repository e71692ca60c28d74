"""Prometheus metrics of the license broker (``playback_broker_*``). Labels stay low-cardinality:
key systems, routes, outcomes and error codes, never users or videos."""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

REQUEST_SECONDS: Final = Histogram(
    "playback_broker_request_seconds",
    "Time to answer a broker request, by route and outcome.",
    ["route", "outcome"],
    buckets=_LATENCY_BUCKETS,
)
LICENSES_ISSUED: Final = Counter(
    "playback_broker_licenses_total",
    "Licenses and keys delivered, by key system and whether the license cache answered.",
    ["key_system", "cached"],
)
ERRORS: Final = Counter(
    "playback_broker_errors_total",
    "Requests that ended in a problem response, by stable error code.",
    ["code"],
)
PROVIDER_SECONDS: Final = Histogram(
    "playback_broker_provider_seconds",
    "Duration of DRM provider calls (all attempts), by provider and outcome.",
    ["provider", "outcome"],
    buckets=_LATENCY_BUCKETS,
)
PROVIDER_RETRIES: Final = Counter(
    "playback_broker_provider_retries_total",
    "Extra attempts made after a retryable provider failure.",
    ["provider"],
)
BREAKER_STATE: Final = Gauge(
    "playback_broker_breaker_state",
    "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open.",
    ["provider"],
)
KEY_LOOKUPS: Final = Counter(
    "playback_broker_key_lookups_total",
    "Content key lookups by result: hit, stale, miss, unknown, error.",
    ["result"],
)
LICENSE_CACHE: Final = Counter(
    "playback_broker_license_cache_total",
    "License cache lookups by result: hit, miss, error.",
    ["result"],
)
STREAM_CHECKS: Final = Counter(
    "playback_broker_stream_checks_total",
    "Concurrent stream checks by result: allowed, refused, error (allowed: fail open).",
    ["result"],
)


# Label lookups cost a lock and a dict walk; the hot path uses these memoized children instead.
KEY_LOOKUP: Final = {r: KEY_LOOKUPS.labels(r) for r in ("hit", "stale", "miss", "unknown", "error")}
LICENSE_CACHE_RESULT: Final = {r: LICENSE_CACHE.labels(r) for r in ("hit", "miss", "error")}
STREAM_RESULT: Final = {r: STREAM_CHECKS.labels(r) for r in ("allowed", "refused", "error")}


@lru_cache(maxsize=64)
def issued(key_system: str, cached: bool) -> Counter:
    return LICENSES_ISSUED.labels(key_system, "true" if cached else "false")


@lru_cache(maxsize=256)
def error(code: str) -> Counter:
    return ERRORS.labels(code)


@lru_cache(maxsize=512)
def request_seconds(route: str, outcome: str) -> Histogram:
    return REQUEST_SECONDS.labels(route, outcome)
