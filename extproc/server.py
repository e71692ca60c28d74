"""gRPC adapter: Envoy's ext_proc stream (envoy.service.ext_proc.v3) for manifest routes, plus a
small HTTP app for /health and /metrics. The JSON form of the manifest route
(``Accept: application/json`` -> ``{"url", "expiresAt"}``) is answered on the ext_proc stream
itself, as an immediate response after authz admitted the viewer.

Per request Envoy sends request headers, response headers and (BUFFERED) the response body. The
adapter records the request context, lets non-manifest responses through without buffering
(``mode_override``), and replaces manifest bodies with their signed version, fixing
``content-length`` and ``content-encoding``. Any failure is an immediate problem+json response:
an unsigned manifest never reaches a viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from extproc import metrics
from extproc.config import ExtprocConfig
from extproc.policy import SigningPolicy
from extproc.signer import (
    ManifestContext,
    ManifestSigner,
    context_from_request,
    mapper_factory,
    wants_body,
)
from playback_drm import tracing
from playback_drm.events import PLAYBACK_STARTED, Event, EventSink, NullSink
from playback_drm.problem import PROBLEM_CONTENT_TYPE, PlaybackError, problem_body

log = logging.getLogger(__name__)
SOURCE = "/playback-drm/extproc"

_CONTINUE_REQUEST_HEADERS = ep.ProcessingResponse(request_headers=ep.HeadersResponse())
_SKIP_BODY = ep.ProcessingResponse(
    response_headers=ep.HeadersResponse(),
    mode_override=processing_mode_pb2.ProcessingMode(
        response_body_mode=processing_mode_pb2.ProcessingMode.NONE
    ),
)
_CONTINUE_RESPONSE_HEADERS = ep.ProcessingResponse(response_headers=ep.HeadersResponse())
_UNCHANGED_BODY = ep.ProcessingResponse(response_body=ep.BodyResponse())
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    # Envoy sends header values in raw_value; we answer with raw_value only (never both).
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()), append_action=_OVERWRITE
    )


_NO_STORE = _header("cache-control", "private, no-store")


def headers_of(message: ep.HttpHeaders) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in message.headers.headers:
        out[h.key] = h.raw_value.decode("latin-1") if h.raw_value else h.value
    return out


def immediate(status: int, code: str, title: str, detail: str) -> ep.ProcessingResponse:
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=ep.HeaderMutation(
                set_headers=[_header("content-type", PROBLEM_CONTENT_TYPE), _NO_STORE]
            ),
            body=problem_body(code, status, title, detail),
            details=code,
        )
    )


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        config: ExtprocConfig,
        signer: ManifestSigner,
        policy: SigningPolicy,
        events: EventSink,
    ) -> None:
        self._config = config
        self._signer = signer
        self._policy = policy
        self._events = events

    async def Process(
        self,
        request_iterator: AsyncIterator[ep.ProcessingRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[ep.ProcessingResponse]:
        ctx: ManifestContext | None = None
        content_type: str | None = None
        content_encoding: str | None = None
        trace_parent: dict[str, str] | None = None
        if tracing.tracing_enabled() and context is not None:
            # Envoy's ext_proc client span travels in the gRPC metadata (W3C traceparent).
            trace_parent = dict(context.invocation_metadata() or ())
        async for request in request_iterator:
            phase = request.WhichOneof("request")
            if phase == "request_headers":
                headers = headers_of(request.request_headers)
                ctx = context_from_request(self._config, headers.get(":path", ""), headers)
                if ctx is not None and ctx.entry and _wants_json(headers):
                    # The JSON form: answered here, after authz admitted the viewer. Only Envoy
                    # can ask, so no HTTP port of ours hands out signed URLs.
                    yield self._manifest_url(ctx, headers)
                    return
                yield _CONTINUE_REQUEST_HEADERS
            elif phase == "response_headers":
                headers = headers_of(request.response_headers)
                content_type = headers.get("content-type")
                content_encoding = headers.get("content-encoding")
                if ctx is None or not wants_body(headers.get(":status", ""), content_type):
                    yield _SKIP_BODY
                else:
                    yield _CONTINUE_RESPONSE_HEADERS
            elif phase == "response_body":
                body = request.response_body.body
                if trace_parent is None:
                    yield self._body(ctx, content_type, content_encoding, body)
                    continue
                with tracing.span(
                    tracing.EXTPROC_REWRITE_MANIFEST,
                    parent=trace_parent,
                    kind=SpanKind.SERVER,
                    videoId=ctx.video if ctx else None,
                    bytes=len(body),
                ):
                    reply = self._body(ctx, content_type, content_encoding, body)
                yield reply
            else:  # phases we never asked for: let them pass
                yield _generic_continue(phase)

    def _manifest_url(self, ctx: ManifestContext, headers: dict[str, str]) -> ep.ProcessingResponse:
        if not ctx.user:
            return immediate(401, "token_missing", "Token missing", "request did not pass authz")
        base = f"{headers.get('x-forwarded-proto', 'http')}://{headers.get(':authority', '')}"
        try:
            doc = signed_manifest_url(self._config, self._policy, ctx, base, time.time())
        except PlaybackError as exc:
            return immediate(exc.status, exc.code, exc.title, exc.detail)
        metrics.MANIFESTS.labels("url", "signed", "ok").inc()
        metrics.REQUESTS.observe("url", "ok", "ok", 0.0)
        return ep.ProcessingResponse(
            immediate_response=ep.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=200),
                headers=ep.HeaderMutation(
                    set_headers=[_header("content-type", "application/json"), _NO_STORE]
                ),
                body=json.dumps(doc, separators=(",", ":")).encode(),
                details="manifest_url",
            )
        )

    def _body(
        self,
        ctx: ManifestContext | None,
        content_type: str | None,
        content_encoding: str | None,
        body: bytes,
    ) -> ep.ProcessingResponse:
        if ctx is None:
            return _UNCHANGED_BODY
        started = time.perf_counter()
        try:
            signed = self._signer.sign(ctx, content_type, content_encoding, body)
        except PlaybackError as exc:
            metrics.MANIFESTS.labels("none", "error", exc.code).inc()
            log.warning(
                "manifest refused: %s",
                exc.code,
                extra={"videoId": ctx.video, "userId": ctx.user, "requestId": ctx.request_id},
            )
            status = 502 if exc.status < 500 else exc.status
            metrics.REQUESTS.observe(ctx.format, "error", exc.code, time.perf_counter() - started)
            return immediate(status, exc.code, exc.title, exc.detail)
        except Exception:
            log.exception("manifest signing failed", extra={"videoId": ctx.video})
            metrics.MANIFESTS.labels("none", "error", "internal_error").inc()
            metrics.REQUESTS.observe(
                ctx.format, "error", "internal_error", time.perf_counter() - started
            )
            return immediate(
                503, "manifest_signing_failed", "Manifest signing failed", "internal error"
            )
        if signed is None:
            metrics.MANIFESTS.labels("none", "passthrough", "ok").inc()
            return _UNCHANGED_BODY
        kind = signed.kind.value
        metrics.REQUESTS.observe(kind, "ok", "ok", time.perf_counter() - started)
        metrics.MANIFESTS.labels(kind, "signed", "ok").inc()
        metrics.CACHE.labels("manifests", "hit" if signed.cached else "miss").inc()
        set_headers = [_header("content-length", str(len(signed.body))), _NO_STORE]
        mutation = ep.HeaderMutation(
            set_headers=set_headers,
            remove_headers=["content-encoding", "etag", "last-modified"]
            if signed.decoded
            else ["etag", "last-modified"],
        )
        if ctx.entry:
            self._events.emit(
                Event(
                    type=PLAYBACK_STARTED,
                    source=SOURCE,
                    subject=ctx.video,
                    data={
                        "userId": ctx.user,
                        "videoId": ctx.video,
                        "format": kind,
                        "sessionId": ctx.session,
                        "requestId": ctx.request_id,
                        "traceId": tracing.current_trace_id(),
                    },
                )
            )
        return ep.ProcessingResponse(
            response_body=ep.BodyResponse(
                response=ep.CommonResponse(
                    header_mutation=mutation,
                    body_mutation=ep.BodyMutation(body=signed.body),
                )
            )
        )


def _wants_json(headers: dict[str, str]) -> bool:
    return "application/json" in headers.get("accept", "")


def _generic_continue(phase: str | None) -> ep.ProcessingResponse:
    if phase == "request_body":
        return ep.ProcessingResponse(request_body=ep.BodyResponse())
    if phase == "request_trailers":
        return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
    if phase == "response_trailers":
        return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())
    return ep.ProcessingResponse()


# ----------------------------------------------------------------------------------- HTTP side


def signed_manifest_url(
    config: ExtprocConfig, policy: SigningPolicy, ctx: ManifestContext, base: str, now: float
) -> dict[str, str]:
    """``{"url", "expiresAt"}``: a signed URL of the manifest itself, loadable by any player."""
    video_prefix = f"{config.media_prefix}/{ctx.video}/"
    path = ctx.public_path[len(video_prefix) :]
    url, expires_at = policy.signed_manifest_url(
        video_id=ctx.video,
        path=path,
        now=now,
        client_ip=ctx.client_ip,
        session_id=ctx.session,
    )
    if url.startswith("/"):
        url = base + url
    expires = dt.datetime.fromtimestamp(expires_at, dt.UTC).isoformat().replace("+00:00", "Z")
    return {"url": url, "expiresAt": expires, "format": ctx.format}


def build_http_app() -> web.Application:
    """Health and metrics only: signed URLs are handed out through Envoy (ext_proc), never here."""

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": "extproc"})

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", live)
    app.router.add_get("/health/live", live)
    app.router.add_get("/metrics", prometheus)
    return app


@contextlib.asynccontextmanager
async def running_extproc(
    config: ExtprocConfig, events: EventSink | None = None
) -> AsyncIterator[grpc.aio.Server]:
    policy = SigningPolicy(config.policy)
    signer = ManifestSigner(config, mapper_factory(config, policy))
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", config.max_manifest_bytes + 1024 * 1024),
            ("grpc.max_send_message_length", 4 * config.max_manifest_bytes),
        ]
    )
    ep_grpc.add_ExternalProcessorServicer_to_server(
        ExternalProcessor(config, signer, policy, events or NullSink()), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"{config.grpc_host}:{config.grpc_port}")
    runner = web.AppRunner(build_http_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.http_host, config.http_port).start()
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("extproc serving gRPC on %s:%d", config.grpc_host, config.grpc_port)
    try:
        yield server
    finally:
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=5)
        await runner.cleanup()


async def serve(config: ExtprocConfig, events: EventSink | None = None) -> None:
    async with running_extproc(config, events):
        await asyncio.Event().wait()
