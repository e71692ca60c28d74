"""The copy kustomize needs inside k8s/ equals its source (see tests/k8s/sync.py), and the Envoy
configuration has no copy there any more: the pods render it from the ConfigMap's settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.k8s.sync import (
    ALERTS_SOURCE,
    REPO_ROOT,
    RULE_COPY,
    SYNC_COMMAND,
    render_prometheus_rule,
)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def test_no_pre_rendered_envoy_configuration_under_k8s() -> None:
    """A copy would drift from the settings the pods render from, and mislead whoever reads it."""
    rendered = [
        str(p.relative_to(REPO_ROOT))
        for p in (REPO_ROOT / "k8s").rglob("*.yaml")
        if "static_resources:" in p.read_text()
    ]
    assert rendered == []


def test_prometheus_rule_embeds_the_alerts_file() -> None:
    assert ALERTS_SOURCE.exists(), (
        f"{_rel(ALERTS_SOURCE)} is missing; {_rel(RULE_COPY)} holds a placeholder until it "
        f"exists. Then run `{SYNC_COMMAND}`."
    )
    alerts = ALERTS_SOURCE.read_text()
    assert RULE_COPY.read_text() == render_prometheus_rule(alerts), (
        f"{_rel(RULE_COPY)} differs from {_rel(ALERTS_SOURCE)}. Run `{SYNC_COMMAND}`."
    )
    rule = yaml.safe_load(RULE_COPY.read_text())
    assert rule["spec"] == yaml.safe_load(alerts)


def test_rule_rendering_keeps_the_rules_file_as_the_spec() -> None:
    alerts = (
        "# comment kept\n---\ngroups:\n  - name: g\n    rules:\n"
        "      - alert: A\n        expr: up == 0\n        annotations:\n"
        "          description: |\n            two\n            lines\n"
    )
    rendered = yaml.safe_load(render_prometheus_rule(alerts))
    assert rendered["kind"] == "PrometheusRule"
    assert rendered["spec"] == yaml.safe_load(alerts.replace("---\n", ""))
    assert rendered["spec"]["groups"][0]["rules"][0]["annotations"]["description"] == "two\nlines\n"
