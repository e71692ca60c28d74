"""One trace links a viewer's manifest request across Envoy, authz and extproc (issue 5)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import Stack
from tests.support.otlp import Collector
from tests.support.stack import http, start_stack, stop_and_audit

pytestmark = pytest.mark.integration


@pytest.fixture
def traced_stack(tmp_path: Path, otlp_collector: Collector) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path,
        otlp_endpoint=otlp_collector.endpoint,
        extra_env={"OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    yield stack
    stop_and_audit(stack)


def test_one_trace_spans_envoy_authz_and_extproc(
    traced_stack: Stack, otlp_collector: Collector
) -> None:
    token = traced_stack.token("alice")
    reply = http(
        f"{traced_stack.gateway}/playback/demo/manifest",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status == 200
    deadline = time.monotonic() + 15
    linked: set[str] = set()
    while time.monotonic() < deadline and not linked:
        time.sleep(0.3)
        by_trace: dict[str, set[str]] = {}
        for span in list(otlp_collector.spans):
            by_trace.setdefault(span.trace_id, set()).add(f"{span.service}:{span.name}")
        linked = {
            trace
            for trace, names in by_trace.items()
            if any(n.startswith("playback-gateway:") for n in names)
            and any(n.startswith("playback-sidecar:") for n in names)
            and "authz:authz.check_token" in names
            and "extproc:extproc.rewrite_manifest" in names
        }
    assert linked, sorted({f"{s.service}:{s.name}" for s in otlp_collector.spans})
