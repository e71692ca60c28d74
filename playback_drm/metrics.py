"""Shared Prometheus conventions and the ``/metrics`` exposition.

Every service exports, on its HTTP port (authz 9011, extproc 9012, license broker 9003):

=================================================  =========  ===============================
metric                                             type       labels
=================================================  =========  ===============================
``playback_<service>_requests_total``              counter    route, outcome, code
``playback_<service>_request_duration_seconds``    histogram  route (:data:`LATENCY_BUCKETS`)
``playback_cache_requests_total``                  counter    cache, result (hit/miss)
``playback_<service>_provider_duration_seconds``   histogram  provider, outcome
``playback_<service>_provider_errors_total``       counter    provider, code
``playback_<service>_provider_breaker_open``       gauge      provider (1 open, 0 closed)
``playback_events_queue_depth``                    gauge      (in memory, not yet acked)
``playback_events_spill_bytes``                    gauge      (bytes in the spill buffer)
``playback_events_published_total``                counter    type
``playback_events_spilled_total``                  counter
``playback_events_retried_total``                  counter
``playback_events_dropped_total``                  counter    reason (buffer_full, rejected,
                                                              closed)
=================================================  =========  ===============================

``<service>`` is one of :data:`SERVICES` (``authz``, ``extproc``, ``broker``). ``outcome`` is
``ok``; ``rejected`` when the viewer was refused correctly (a 4xx: bad token, not entitled, expired
URL); ``error`` when the service failed (a 5xx, or fail-closed on a dependency). Only ``error``
counts against the error-rate SLO. ``code`` is the stable ``PlaybackError.code`` (``ok`` on
success); ``route`` is a fixed route name, never a raw path.

Envoy's own statistics are scraped from its admin endpoint ``/stats/prometheus`` (admin port 9901
locally); the alert rules and the dashboard use the names in :data:`ENVOY_METRICS`.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Resolves 1 ms (the per-request budget of a sidecar hop) and 50 ms (the p95 alert threshold).
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

SERVICES: Final[tuple[str, ...]] = ("authz", "extproc", "broker")
CACHES: Final[tuple[str, ...]] = ("tokens", "entitlements", "manifests", "keys", "licenses")

OUTCOME_OK: Final = "ok"
OUTCOME_REJECTED: Final = "rejected"
OUTCOME_ERROR: Final = "error"
OUTCOMES: Final[tuple[str, ...]] = (OUTCOME_OK, OUTCOME_REJECTED, OUTCOME_ERROR)

CACHE_HIT: Final = "hit"
CACHE_MISS: Final = "miss"

# Names Envoy exposes on /stats/prometheus that our rules and dashboard use. Counters and
# histograms of HTTP connection managers (label envoy_http_conn_manager_prefix) and clusters
# (label envoy_cluster_name); response classes in envoy_response_code_class; times in ms.
ENVOY_METRICS: Final[frozenset[str]] = frozenset(
    {
        "envoy_http_downstream_rq_xx",
        "envoy_http_downstream_rq_total",
        "envoy_http_downstream_rq_time_bucket",
        "envoy_http_downstream_rq_time_count",
        "envoy_http_downstream_rq_time_sum",
        "envoy_cluster_upstream_rq_xx",
        "envoy_cluster_upstream_rq_total",
        "envoy_cluster_upstream_rq_time_bucket",
        "envoy_cluster_upstream_rq_time_count",
        "envoy_cluster_upstream_rq_time_sum",
    }
)

_SERVICE_NAME = re.compile(r"[a-z][a-z0-9_]*")


def requests_total_name(service: str) -> str:
    return f"playback_{service}_requests_total"


def request_duration_name(service: str) -> str:
    return f"playback_{service}_request_duration_seconds"


def _check_service(service: str) -> str:
    if not _SERVICE_NAME.fullmatch(service):
        raise ValueError(f"service must match {_SERVICE_NAME.pattern}, got {service!r}")
    return service


@dataclass(eq=False)
class RequestMetrics:
    """Request counter and latency histogram of one service.

    :meth:`observe` caches label children: the hot path does one dict lookup, no label parsing.
    """

    service: str
    requests: Counter
    duration: Histogram
    _counters: dict[tuple[str, str, str], Counter] = field(default_factory=dict, repr=False)
    _histograms: dict[str, Histogram] = field(default_factory=dict, repr=False)

    def observe(self, route: str, outcome: str, code: str, seconds: float) -> None:
        key = (route, outcome, code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(route, outcome, code)
        counter.inc()
        histogram = self._histograms.get(route)
        if histogram is None:
            histogram = self._histograms[route] = self.duration.labels(route)
        histogram.observe(seconds)


@dataclass(eq=False)
class ProviderMetrics:
    """Latency, errors and circuit-breaker state of calls to external providers."""

    service: str
    duration: Histogram
    errors: Counter
    breaker_open: Gauge

    def observe(self, provider: str, outcome: str, seconds: float, code: str | None = None) -> None:
        self.duration.labels(provider, outcome).observe(seconds)
        if code is not None:
            self.errors.labels(provider, code).inc()

    def set_breaker(self, provider: str, is_open: bool) -> None:
        self.breaker_open.labels(provider).set(1.0 if is_open else 0.0)


_request_metrics: dict[tuple[int, str], RequestMetrics] = {}
_provider_metrics: dict[tuple[int, str], ProviderMetrics] = {}


def request_metrics(service: str, registry: CollectorRegistry = REGISTRY) -> RequestMetrics:
    """``playback_<service>_requests_total`` and ``..._request_duration_seconds`` (idempotent)."""
    key = (id(registry), _check_service(service))
    found = _request_metrics.get(key)
    if found is None:
        found = _request_metrics[key] = RequestMetrics(
            service=service,
            requests=Counter(
                requests_total_name(service),
                f"Requests handled by {service}, by route, outcome (ok/rejected/error) and code.",
                ("route", "outcome", "code"),
                registry=registry,
            ),
            duration=Histogram(
                request_duration_name(service),
                f"Time {service} spent on a request, by route.",
                ("route",),
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
        )
    return found


def provider_metrics(
    service: str = "broker", registry: CollectorRegistry = REGISTRY
) -> ProviderMetrics:
    """Provider call metrics of ``service`` (the license broker's DRM providers) (idempotent)."""
    key = (id(registry), _check_service(service))
    found = _provider_metrics.get(key)
    if found is None:
        prefix = f"playback_{service}_provider"
        found = _provider_metrics[key] = ProviderMetrics(
            service=service,
            duration=Histogram(
                f"{prefix}_duration_seconds",
                "Duration of calls to an external provider, by provider and outcome.",
                ("provider", "outcome"),
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            errors=Counter(
                f"{prefix}_errors_total",
                "Failed calls to an external provider, by provider and stable error code.",
                ("provider", "code"),
                registry=registry,
            ),
            breaker_open=Gauge(
                f"{prefix}_breaker_open",
                "1 while the circuit breaker of a provider is open, else 0.",
                ("provider",),
                registry=registry,
            ),
        )
    return found


# ----------------------------------------------------------------------------------- caches

CACHE_REQUESTS: Final = Counter(
    "playback_cache_requests_total",
    "Cache lookups by cache (tokens/entitlements/manifests/keys/licenses) and result (hit/miss).",
    ("cache", "result"),
)
_CACHE_CHILDREN: Final[dict[tuple[str, bool], Counter]] = {
    (cache, hit): CACHE_REQUESTS.labels(cache, CACHE_HIT if hit else CACHE_MISS)
    for cache in CACHES
    for hit in (True, False)
}


def record_cache(cache: str, hit: bool) -> None:
    """Count one lookup in ``cache`` (one of :data:`CACHES`)."""
    _CACHE_CHILDREN[(cache, hit)].inc()


# ----------------------------------------------------------------------------------- events

EVENTS_QUEUE_DEPTH: Final = Gauge(
    "playback_events_queue_depth", "Events held in memory and not yet acknowledged by NATS."
)
EVENTS_SPILL_BYTES: Final = Gauge(
    "playback_events_spill_bytes", "Bytes of events in the durable spill buffer on disk."
)
EVENTS_PUBLISHED: Final = Counter(
    "playback_events_published_total", "Events acknowledged by the event store, by type.", ("type",)
)


@lru_cache(maxsize=16)
def events_published(event_type: str) -> Counter:
    """The labelled child of :data:`EVENTS_PUBLISHED` (``labels()`` costs a lock per call)."""
    return EVENTS_PUBLISHED.labels(event_type)


EVENTS_SPILLED: Final = Counter(
    "playback_events_spilled_total", "Events written to the durable spill buffer."
)
EVENTS_RETRIED: Final = Counter(
    "playback_events_retried_total", "Event publishes retried after a failure or missing ack."
)
EVENTS_DROPPED: Final = Counter(
    "playback_events_dropped_total",
    "Events lost: every buffer full (buffer_full), refused by the store (rejected) or emitted"
    " after the sink closed (closed).",
    ("reason",),
)
DROP_BUFFER_FULL: Final = "buffer_full"
DROP_REJECTED: Final = "rejected"
DROP_CLOSED: Final = "closed"


# --------------------------------------------------------------------------------- known names

_SUFFIXES: Final[dict[str, tuple[str, ...]]] = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum", ""),
    "info": ("_info",),
}


def defined_metric_names(
    services: Sequence[str] = SERVICES, registry: CollectorRegistry = REGISTRY
) -> frozenset[str]:
    """Every sample name our code exports (after creating the per-service metrics), plus Envoy's.

    Alert rules and dashboard queries may only reference these.
    """
    for service in services:
        request_metrics(service, registry)
    provider_metrics("broker", registry)
    names: set[str] = set(ENVOY_METRICS)
    for family in registry.collect():
        if not family.name.startswith("playback_"):
            continue
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return frozenset(names)


# ------------------------------------------------------------------------------- exposition

REGISTRY_KEY: Final = web.AppKey("metrics_registry", CollectorRegistry)


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics`` in the Prometheus text format."""
    registry = request.app.get(REGISTRY_KEY, REGISTRY)
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_metrics_route(app: web.Application, path: str = "/metrics") -> None:
    """Mount :func:`metrics_handler` on a service's own aiohttp app."""
    app.router.add_get(path, metrics_handler)


@dataclass(frozen=True, slots=True)
class MetricsServer:
    host: str
    port: int


@asynccontextmanager
async def start_metrics_server(
    host: str,
    port: int,
    *,
    routes: Iterable[web.RouteDef] = (),
    registry: CollectorRegistry = REGISTRY,
) -> AsyncIterator[MetricsServer]:
    """A small aiohttp server with ``/metrics`` (plus ``routes``, e.g. ``/health``).

    ``port=0`` binds a free port; the bound one is in the yielded :class:`MetricsServer`.
    """
    app = web.Application()
    app[REGISTRY_KEY] = registry
    add_metrics_route(app)
    app.router.add_routes(list(routes))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield MetricsServer(host, int(sock.getsockname()[1]))
    finally:
        await runner.cleanup()
        sock.close()


__all__ = [
    "CACHES",
    "CACHE_HIT",
    "CACHE_MISS",
    "CACHE_REQUESTS",
    "DROP_BUFFER_FULL",
    "DROP_REJECTED",
    "ENVOY_METRICS",
    "EVENTS_DROPPED",
    "EVENTS_PUBLISHED",
    "EVENTS_QUEUE_DEPTH",
    "EVENTS_RETRIED",
    "EVENTS_SPILLED",
    "EVENTS_SPILL_BYTES",
    "LATENCY_BUCKETS",
    "OUTCOMES",
    "OUTCOME_ERROR",
    "OUTCOME_OK",
    "OUTCOME_REJECTED",
    "SERVICES",
    "MetricsServer",
    "ProviderMetrics",
    "RequestMetrics",
    "add_metrics_route",
    "defined_metric_names",
    "metrics_handler",
    "provider_metrics",
    "record_cache",
    "request_duration_name",
    "request_metrics",
    "requests_total_name",
    "start_metrics_server",
]
