"""Shared metric helpers and the /metrics exposition: counters and histograms move with requests."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from playback_drm import metrics


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_buckets_resolve_one_and_fifty_milliseconds() -> None:
    assert 0.001 in metrics.LATENCY_BUCKETS
    assert 0.05 in metrics.LATENCY_BUCKETS
    assert list(metrics.LATENCY_BUCKETS) == sorted(metrics.LATENCY_BUCKETS)
    registry = CollectorRegistry()
    service = metrics.request_metrics("authz", registry)
    service.observe("check", metrics.OUTCOME_OK, "ok", 0.0007)  # 0.7 ms
    service.observe("check", metrics.OUTCOME_OK, "ok", 0.049)  # 49 ms
    bucket = "playback_authz_request_duration_seconds_bucket"
    assert sample(registry, bucket, route="check", le="0.0005") == 0
    assert sample(registry, bucket, route="check", le="0.001") == 1
    assert sample(registry, bucket, route="check", le="0.025") == 1
    assert sample(registry, bucket, route="check", le="0.05") == 2


def test_request_metrics_follow_the_naming_convention_and_are_idempotent() -> None:
    registry = CollectorRegistry()
    broker = metrics.request_metrics("broker", registry)
    assert metrics.request_metrics("broker", registry) is broker
    broker.observe("license", metrics.OUTCOME_ERROR, "provider_unavailable", 0.2)
    broker.observe("license", metrics.OUTCOME_REJECTED, "not_entitled", 0.002)
    broker.observe("license", metrics.OUTCOME_REJECTED, "not_entitled", 0.003)
    name = "playback_broker_requests_total"
    assert (
        sample(registry, name, route="license", outcome="error", code="provider_unavailable") == 1
    )
    assert sample(registry, name, route="license", outcome="rejected", code="not_entitled") == 2
    assert sample(registry, "playback_broker_request_duration_seconds_count", route="license") == 3
    with pytest.raises(ValueError, match="service"):
        metrics.request_metrics("License-Broker", registry)


def test_provider_metrics_and_breaker_state() -> None:
    registry = CollectorRegistry()
    providers = metrics.provider_metrics("broker", registry)
    providers.observe("widevine", metrics.OUTCOME_ERROR, 2.0, code="timeout")
    providers.set_breaker("widevine", True)
    assert (
        sample(
            registry, "playback_broker_provider_errors_total", provider="widevine", code="timeout"
        )
        == 1
    )
    assert (
        sample(
            registry,
            "playback_broker_provider_duration_seconds_count",
            provider="widevine",
            outcome="error",
        )
        == 1
    )
    assert sample(registry, "playback_broker_provider_breaker_open", provider="widevine") == 1
    providers.set_breaker("widevine", False)
    assert sample(registry, "playback_broker_provider_breaker_open", provider="widevine") == 0


def test_cache_counters_by_cache_and_result() -> None:
    registry = metrics.CACHE_REQUESTS
    before = registry.labels("keys", "hit")._value.get()
    metrics.record_cache("keys", hit=True)
    metrics.record_cache("keys", hit=False)
    assert registry.labels("keys", "hit")._value.get() == before + 1
    with pytest.raises(KeyError):
        metrics.record_cache("sessions", hit=True)


def test_defined_names_include_every_shared_metric() -> None:
    names = metrics.defined_metric_names()
    for service in metrics.SERVICES:
        assert f"playback_{service}_requests_total" in names
        assert f"playback_{service}_request_duration_seconds_bucket" in names
    assert {
        "playback_cache_requests_total",
        "playback_events_queue_depth",
        "playback_events_spill_bytes",
        "playback_events_published_total",
        "playback_events_spilled_total",
        "playback_events_retried_total",
        "playback_events_dropped_total",
        "playback_broker_provider_duration_seconds_bucket",
        "playback_broker_provider_errors_total",
        "playback_broker_provider_breaker_open",
        "envoy_http_downstream_rq_xx",
    } <= names


async def test_metrics_endpoint_shows_counters_and_histograms_moving() -> None:
    registry = CollectorRegistry()
    extproc = metrics.request_metrics("extproc", registry)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async with (
        metrics.start_metrics_server(
            "127.0.0.1", 0, routes=[web.get("/health", health)], registry=registry
        ) as server,
        aiohttp.ClientSession() as http,
    ):
        assert server.port > 0
        base = f"http://127.0.0.1:{server.port}"

        async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }

        extproc.observe("manifest", metrics.OUTCOME_OK, "ok", 0.003)
        first = await scrape()
        for _ in range(4):
            extproc.observe("manifest", metrics.OUTCOME_OK, "ok", 0.003)
        second = await scrape()
        counter = (
            "playback_extproc_requests_total",
            (("code", "ok"), ("outcome", "ok"), ("route", "manifest")),
        )
        bucket = (
            "playback_extproc_request_duration_seconds_bucket",
            (("le", "0.005"), ("route", "manifest")),
        )
        assert first[counter] == 1
        assert second[counter] == 5
        assert first[bucket] == 1
        assert second[bucket] == 5
        async with http.get(f"{base}/health") as resp:
            assert await resp.text() == "ok"


async def test_metrics_route_mounts_on_a_service_app() -> None:
    app = web.Application()
    metrics.add_metrics_route(app)
    assert any(
        route.resource is not None and route.resource.canonical == "/metrics"
        for route in app.router.routes()
    )
