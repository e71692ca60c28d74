"""Keep the copy under k8s/ in step with its source (kustomize cannot read outside k8s/).

``k8s/base/monitoring/prometheusrule.yaml`` wraps ``observability/prometheus/alerts.yaml`` (a
Prometheus rules file) in a ``PrometheusRule``: the rules file, indented, is its ``spec``.

``python -m tests.k8s.sync`` rewrites the copy; ``--check`` only reports (exit 1 when stale).
tests/k8s/test_sync.py fails, naming this command, while the copy is stale. (The Envoy
configuration has no copy here: the edge pod renders it at start from the ``playback-envoy``
ConfigMap.)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ALERTS_SOURCE = REPO_ROOT / "observability" / "prometheus" / "alerts.yaml"
RULE_COPY = REPO_ROOT / "k8s" / "base" / "monitoring" / "prometheusrule.yaml"
SYNC_COMMAND = "python -m tests.k8s.sync"

RULE_HEADER = """\
# Generated from observability/prometheus/alerts.yaml by `python -m tests.k8s.sync`; edit that file.
# A PrometheusRule's spec is a Prometheus rules file (groups), so the file is embedded as it is.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: playback-drm
  labels:
    app.kubernetes.io/name: playback-drm
spec:
"""


def render_prometheus_rule(alerts_text: str) -> str:
    """The PrometheusRule manifest whose ``spec`` is the rules file ``alerts_text``."""
    # A rules file is one YAML document: document markers would end the manifest early.
    lines = [line for line in alerts_text.splitlines() if line.rstrip() not in {"---", "..."}]
    while lines and not lines[0].strip():
        lines.pop(0)
    body = "".join(f"  {line}\n" if line.strip() else "\n" for line in lines)
    return RULE_HEADER + body


@dataclass(frozen=True)
class Copy:
    source: Path
    target: Path
    expected: str | None  # None: the source does not exist yet

    @property
    def stale(self) -> bool:
        if self.expected is None:
            return True
        return not self.target.exists() or self.target.read_text() != self.expected


def copies() -> list[Copy]:
    alerts = ALERTS_SOURCE.read_text() if ALERTS_SOURCE.exists() else None
    return [Copy(ALERTS_SOURCE, RULE_COPY, render_prometheus_rule(alerts) if alerts else None)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=SYNC_COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale copies, write nothing")
    args = parser.parse_args(argv)
    status = 0
    for item in copies():
        rel_source = item.source.relative_to(REPO_ROOT)
        rel_target = item.target.relative_to(REPO_ROOT)
        if item.expected is None:
            print(f"missing source {rel_source}: {rel_target} left as it is", file=sys.stderr)
            status = 1
        elif not item.stale:
            print(f"{rel_target}: up to date")
        elif args.check:
            print(f"{rel_target}: stale (source {rel_source})", file=sys.stderr)
            status = 1
        else:
            item.target.write_text(item.expected)
            print(f"{rel_target}: written from {rel_source}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
