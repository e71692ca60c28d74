"""The Grafana dashboard: valid JSON, the panels on-call needs, only metrics that exist."""

from __future__ import annotations

import json
from typing import Any

# the services' own metric modules register their names: those count as defined too
import authz.metrics  # noqa: F401
import extproc.metrics  # noqa: F401
import license_broker.metrics  # noqa: F401
from playback_drm.metrics import SERVICES, defined_metric_names
from tests.conftest import REPO_ROOT
from tests.observability.promql import grafana_to_promql, metric_names

DASHBOARD = REPO_ROOT / "observability" / "grafana" / "playback-drm.json"


def load() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


def panels() -> list[dict[str, Any]]:
    return [panel for panel in load()["panels"] if panel["type"] != "row"]


def test_every_query_references_known_metrics() -> None:
    known = defined_metric_names()
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(grafana_to_promql(target["expr"]))
            assert names, (panel["title"], target["expr"])
            assert names <= known, (panel["title"], names - known)


def test_panels_on_call_needs() -> None:
    used: set[str] = set()
    quantiles: set[str] = set()
    for panel in panels():
        for target in panel["targets"]:
            used |= metric_names(grafana_to_promql(target["expr"]))
            for q in ("0.5", "0.95", "0.99"):
                if f"histogram_quantile({q}," in target["expr"]:
                    quantiles.add(q)
    for service in SERVICES:
        assert f"playback_{service}_requests_total" in used  # request and error rates
        assert f"playback_{service}_request_duration_seconds_bucket" in used  # latency
    assert quantiles == {"0.5", "0.95", "0.99"}
    assert {
        "playback_cache_requests_total",
        "playback_events_queue_depth",
        "playback_events_dropped_total",
        "playback_events_spill_bytes",
        "playback_broker_provider_duration_seconds_bucket",
        "playback_broker_provider_errors_total",
        "envoy_http_downstream_rq_xx",
        "envoy_http_downstream_rq_time_bucket",
    } <= used
    titles = " ".join(panel["title"].lower() for panel in panels())
    for word in ("error ratio", "p95", "cache hit ratio", "dropped", "provider latency"):
        assert word in titles


def test_dashboard_is_importable() -> None:
    doc = load()
    assert doc["uid"] == "playback-drm"
    assert doc["schemaVersion"] >= 36
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids))
    variables = {var["name"]: var for var in doc["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        assert panel["fieldConfig"]["defaults"]["unit"]
