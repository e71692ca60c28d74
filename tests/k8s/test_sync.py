"""The copies kustomize needs inside k8s/ equal their sources (see tests/k8s/sync.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.k8s.sync import (
    ALERTS_SOURCE,
    ENVOY_COPY,
    ENVOY_SOURCE,
    REPO_ROOT,
    RULE_COPY,
    SYNC_COMMAND,
    render_prometheus_rule,
)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def test_envoy_config_copy_is_byte_identical_to_the_rendered_sidecar_config() -> None:
    assert ENVOY_SOURCE.exists(), (
        f"{_rel(ENVOY_SOURCE)} is missing: render it with "
        "`playback-drm envoy-config --profile k8s`, then run `" + SYNC_COMMAND + "`"
    )
    assert ENVOY_COPY.read_bytes() == ENVOY_SOURCE.read_bytes(), (
        f"{_rel(ENVOY_COPY)} differs from {_rel(ENVOY_SOURCE)}: the pods would run another "
        f"Envoy configuration than the one tested. Run `{SYNC_COMMAND}`."
    )


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
