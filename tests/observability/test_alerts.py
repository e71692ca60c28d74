"""Alert rules: valid, about metrics our code (and Envoy) really export, and behaving as intended.

`promtool` comes from Debian's `prometheus` package. Without it the promtool tests skip locally
and fail in CI (the CI environment variable is set), so CI cannot silently stop testing rules.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from playback_drm.metrics import ENVOY_METRICS, SERVICES, defined_metric_names
from tests.conftest import REPO_ROOT
from tests.observability.promql import grafana_to_promql, metric_names
from tests.support.procs import free_port
from tests.support.servers import start_envoy

RULES = REPO_ROOT / "observability" / "prometheus" / "alerts.yaml"
RULES_TEST = REPO_ROOT / "observability" / "prometheus" / "alerts_test.yaml"
DASHBOARD = REPO_ROOT / "observability" / "grafana" / "playback-drm.json"


def load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [
        grafana_to_promql(target["expr"])
        for panel in doc["panels"]
        for target in panel.get("targets", [])
    ]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found: apt-get install prometheus (Debian package `prometheus`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


# ----------------------------------------------------------------------------- structure


def test_every_rule_references_metrics_our_code_defines() -> None:
    known = defined_metric_names()
    for rule in load_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= known, (rule["alert"], names - known)


def test_slo_alerts_cover_every_service_with_the_product_thresholds() -> None:
    rules = {rule["alert"]: rule for rule in load_rules()}
    for service in SERVICES:
        errors = rules[f"Playback{service.capitalize()}ErrorRateHigh"]
        assert f"playback_{service}_requests_total" in metric_names(errors["expr"])
        assert 'outcome="error"' in errors["expr"]
        assert re.search(r">\s*0\.01\s*$", errors["expr"].strip())
        latency = rules[f"Playback{service.capitalize()}LatencyHigh"]
        assert f"playback_{service}_request_duration_seconds_bucket" in metric_names(
            latency["expr"]
        )
        assert "histogram_quantile(0.95" in latency["expr"]
        assert re.search(r">\s*0\.05\s*$", latency["expr"].strip())
    assert re.search(r">\s*50\s*$", rules["PlaybackEdgeLatencyHigh"]["expr"].strip())  # ms
    assert "playback_events_dropped_total" in rules["PlaybackEventsDropped"]["expr"]
    assert "playback_broker_provider_breaker_open" in rules["PlaybackProviderBreakerOpen"]["expr"]


def test_every_alert_is_routable_and_explained() -> None:
    for rule in load_rules():
        assert rule["labels"]["severity"] in {"page", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


# ------------------------------------------------------------------------------- promtool


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(RULES_TEST)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=RULES_TEST.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": expr}
                    for index, expr in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------- Envoy's own names

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def envoy_config(admin: int, listener: int) -> dict[str, Any]:
    """One listener (stat prefix ``sidecar``) routing to one cluster (Envoy's own admin API)."""

    def address(port: int) -> dict[str, Any]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "admin_api"}}]
    manager = {
        "@type": f"{HCM}.HttpConnectionManager",
        "stat_prefix": "sidecar",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "admin": {"address": address(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "sidecar",
                    "address": address(listener),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "admin_api",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "admin_api",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": address(admin)}}]}
                        ],
                    },
                }
            ],
        },
    }


@pytest.mark.timeout(90)
def test_envoy_exports_the_names_rules_and_dashboard_use(tmp_path: Path) -> None:
    admin, listener = free_port(), free_port()
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(envoy_config(admin, listener)))
    envoy = start_envoy(config, admin, tmp_path, name="envoy-metrics")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{listener}/ready", timeout=5) as resp:
            assert resp.status == 200  # one request through a listener and a cluster
        url = f"http://127.0.0.1:{admin}/stats/prometheus"
        with urllib.request.urlopen(url, timeout=5) as resp:
            exposition = resp.read().decode()
    finally:
        envoy.process.stop()
    exported = {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }
    assert exported >= ENVOY_METRICS, ENVOY_METRICS - exported
    used = set().union(
        *(metric_names(rule["expr"]) for rule in load_rules()),
        *(metric_names(expr) for expr in dashboard_exprs()),
    )
    envoy_used = {name for name in used if name.startswith("envoy_")}
    assert envoy_used
    assert envoy_used <= exported
    assert 'envoy_response_code_class="5"' in exposition
