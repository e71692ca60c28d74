"""Tracing: joined to Envoy's W3C trace context, one trace across services, free when off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from multidict import CIMultiDict
from opentelemetry import trace

from playback_drm import tracing
from playback_drm.tracing import SpanKind, TracingConfig

ENVOY_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
ENVOY_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{ENVOY_TRACE_ID}-{ENVOY_SPAN_ID}-01"


@pytest.fixture
def memory() -> Iterator[tracing.Tracing]:
    with tracing.in_memory_tracing("playback-drm") as handle:
        yield handle


def test_off_by_default_is_a_shared_no_op() -> None:
    assert not tracing.tracing_enabled()
    first = tracing.span(tracing.AUTHZ_CHECK_TOKEN, parent={"traceparent": TRACEPARENT})
    second = tracing.span(tracing.EXTPROC_REWRITE_MANIFEST, videoId="v")
    assert first is second  # no span object, no context switch
    with first as span:
        assert span is None
        assert tracing.current_ids() == (None, None)
    headers: dict[str, str] = {}
    tracing.inject_headers(headers)
    assert headers == {}


def test_a_manifest_request_is_one_trace_from_envoy_through_authz_and_extproc(
    memory: tracing.Tracing,
) -> None:
    # Envoy -> authz: the CheckRequest's http.headers (plain dict, lower-case keys).
    check_headers = {":path": "/playback/v1/manifest", "traceparent": TRACEPARENT}
    with (
        tracing.span(
            tracing.AUTHZ_CHECK_TOKEN,
            parent=check_headers,
            kind=SpanKind.SERVER,
            route="manifest",
            userId=None,
        ),
        tracing.span(tracing.AUTHZ_ENTITLEMENT, videoId="v1"),
    ):
        pass
    # Envoy -> extproc: request headers as aiohttp/multidict would present them.
    extproc_headers = CIMultiDict({"TraceParent": TRACEPARENT})
    with tracing.span(
        tracing.EXTPROC_REWRITE_MANIFEST, parent=extproc_headers, kind=SpanKind.SERVER
    ):
        pass
    spans = {span.name: span for span in memory.finished_spans()}
    assert set(spans) == {
        tracing.AUTHZ_CHECK_TOKEN,
        tracing.AUTHZ_ENTITLEMENT,
        tracing.EXTPROC_REWRITE_MANIFEST,
    }
    trace_ids = {
        format(span.context.trace_id, "032x") for span in spans.values() if span.context is not None
    }
    assert trace_ids == {ENVOY_TRACE_ID}
    check = spans[tracing.AUTHZ_CHECK_TOKEN]
    assert check.parent is not None
    assert format(check.parent.span_id, "016x") == ENVOY_SPAN_ID
    assert check.parent.is_remote
    assert check.kind == trace.SpanKind.SERVER
    assert dict(check.attributes or {}) == {"route": "manifest"}  # None values skipped
    entitlement = spans[tracing.AUTHZ_ENTITLEMENT]
    assert entitlement.parent is not None
    assert check.context is not None
    assert entitlement.parent.span_id == check.context.span_id


def test_without_traceparent_a_new_trace_starts_and_is_propagated(
    memory: tracing.Tracing,
) -> None:
    outgoing: dict[str, str] = {}
    with (
        tracing.span(tracing.BROKER_ISSUE_LICENSE, parent={}, kind=SpanKind.SERVER),
        tracing.span(tracing.BROKER_PROVIDER_CALL, provider="widevine"),
    ):
        trace_id, span_id = tracing.current_ids()
        tracing.inject_headers(outgoing)
    assert trace_id is not None
    assert trace_id != ENVOY_TRACE_ID
    assert tracing.traceparent_ids(outgoing["traceparent"]) == (trace_id, span_id)
    assert len(memory.finished_spans()) == 2


def test_exceptions_mark_the_span_as_failed(memory: tracing.Tracing) -> None:
    with pytest.raises(RuntimeError), tracing.span(tracing.BROKER_FETCH_KEY):
        raise RuntimeError("vault sealed")
    (span,) = memory.finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.events[0].name == "exception"


def test_shutdown_turns_tracing_off_again() -> None:
    with tracing.in_memory_tracing() as handle:
        assert handle.enabled
        assert tracing.tracing_enabled()
    assert not tracing.tracing_enabled()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TRACEPARENT, (ENVOY_TRACE_ID, ENVOY_SPAN_ID)),
        (TRACEPARENT.upper(), (ENVOY_TRACE_ID, ENVOY_SPAN_ID)),
        (f"00-{'0' * 32}-{ENVOY_SPAN_ID}-01", None),
        (f"00-{ENVOY_TRACE_ID}-{'0' * 16}-01", None),
        ("garbage", None),
        ("", None),
        (None, None),
    ],
)
def test_traceparent_parser(value: str | None, expected: tuple[str, str] | None) -> None:
    assert tracing.traceparent_ids(value) == expected


def test_config_from_env() -> None:
    assert TracingConfig.from_env({}).exporter == "none"
    otlp = TracingConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    )
    assert otlp.exporter == "otlp"
    assert otlp.insecure
    assert otlp.sample_ratio == 0.25
    tls = TracingConfig.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c:4317"})
    assert not tls.insecure
    off = TracingConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}
    )
    assert off.exporter == "none"


def test_otlp_exporter_can_be_built() -> None:
    """Catches a broken install (xds-protos overwriting opentelemetry-proto: grpc/grpc#42926)."""
    handle = tracing.configure_tracing(
        "authz", TracingConfig(exporter="otlp", endpoint="http://127.0.0.1:1", insecure=True)
    )
    try:
        assert handle.enabled
        assert tracing.tracing_enabled()
    finally:
        handle.shutdown()
    assert not tracing.tracing_enabled()
