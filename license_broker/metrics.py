"""Prometheus metrics of the license broker.

Shared conventions (``playback_drm.metrics``):
``playback_broker_requests_total{route,outcome,code}`` and
``playback_broker_request_duration_seconds{route}`` per request,
``playback_cache_requests_total{cache="keys"|"licenses",result}``, and
``playback_broker_provider_*`` for DRM provider calls (duration by outcome, errors by code,
breaker open). Broker-specific ones are below. Labels stay
low-cardinality: key systems, route names, outcomes and error codes, never users or videos.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from prometheus_client import Counter

from playback_drm.metrics import (
    OUTCOME_ERROR,
    OUTCOME_OK,
    OUTCOME_REJECTED,
    provider_metrics,
    record_cache,
    request_metrics,
)

REQUESTS: Final = request_metrics("broker")
PROVIDERS: Final = provider_metrics("broker")

LICENSES_ISSUED: Final = Counter(
    "playback_broker_licenses_total",
    "Licenses and keys delivered, by key system and whether the license cache answered.",
    ["key_system", "cached"],
)
PROVIDER_RETRIES: Final = Counter(
    "playback_broker_provider_retries_total",
    "Extra attempts made after a retryable provider failure.",
    ["provider"],
)
KEY_LOOKUPS: Final = Counter(
    "playback_broker_key_lookups_total",
    "Content key lookups by result: hit, stale (served while refreshing), miss, unknown, error.",
    ["result"],
)
REDIS_ERRORS: Final = Counter(
    "playback_broker_redis_errors_total",
    "Redis commands that failed or were skipped while Redis is considered down, by use.",
    ["use"],
)

# Label lookups cost a lock and a dict walk; the hot path uses these memoized children instead.
KEY_LOOKUP: Final = {r: KEY_LOOKUPS.labels(r) for r in ("hit", "stale", "miss", "unknown", "error")}
REDIS_ERROR: Final = {u: REDIS_ERRORS.labels(u) for u in ("license_cache",)}


def outcome_of(status: int) -> str:
    """``ok`` (2xx/3xx), ``rejected`` (4xx: the viewer was refused correctly), ``error`` (5xx)."""
    if status < 400:
        return OUTCOME_OK
    return OUTCOME_REJECTED if status < 500 else OUTCOME_ERROR


@lru_cache(maxsize=64)
def issued(key_system: str, cached: bool) -> Counter:
    return LICENSES_ISSUED.labels(key_system, "true" if cached else "false")


def key_cache(hit: bool) -> None:
    record_cache("keys", hit)


def license_cache(hit: bool) -> None:
    record_cache("licenses", hit)
