"""gRPC adapter: Envoy's ext_proc stream (envoy.service.ext_proc.v3) for manifest routes, plus a
small HTTP app for /health and /metrics.

Manifest routes skip both header phases: Envoy sends one message, the buffered response body,
with the request's facts attached as CEL attributes (the viewer's original path, status, identity
headers, client address; ``EXTPROC_ATTRIBUTES`` in the Envoy configuration). One gRPC message per
manifest instead of three. The response headers have left by then, so nothing here changes them:
the route drops the origin's length and validators and marks the answer ``no-store``, Envoy sends
the signed body chunked, and a gzip or deflate body is answered in the same encoding.

The JSON form of the manifest route (``Accept: application/json`` -> ``{"url", "expiresAt"}``)
keeps a request-headers phase and is answered there, as an immediate response after authz admitted
the viewer. Any failure is an immediate problem+json response: an unsigned manifest never reaches
a viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.trace import SpanKind

from extproc import dash, hls, metrics
from extproc.config import ExtprocConfig
from extproc.policy import SigningPolicy
from extproc.signer import (
    ManifestContext,
    ManifestSigner,
    context_from_request,
    mapper_factory,
)
from playback_drm import tracing
from playback_drm.events import EXTPROC_SOURCE, EventSink, NullSink, playback_started
from playback_drm.h2grpc import make_server
from playback_drm.metrics import add_metrics_route
from playback_drm.problem import PROBLEM_CONTENT_TYPE, PlaybackError, problem_body
from playback_drm.timefmt import rfc3339_seconds

log = logging.getLogger(__name__)
# extproc.manifest imports the rewriters lazily (they import it): loaded here, at start, so no
# viewer's first manifest pays for the import
_REWRITERS = (dash, hls)
SOURCE = EXTPROC_SOURCE

_CONTINUE_REQUEST_HEADERS = ep.ProcessingResponse(request_headers=ep.HeadersResponse())
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
        # the request facts Envoy attached (path, viewer, address) -> their request context
        self._contexts: dict[tuple[str, ...], ManifestContext | None] = {}
        # signed body -> the ProcessingResponse built around it (re-encoded when the origin
        # compressed), reused while the signer's cache hands out the same body object
        self._responses: OrderedDict[
            tuple[int, str | None], tuple[bytes, ep.ProcessingResponse, int]
        ] = OrderedDict()
        self._response_bytes = 0

    async def Process(
        self,
        request_iterator: AsyncIterator[ep.ProcessingRequest],
        context: grpc.aio.ServicerContext[Any, Any] | None,
    ) -> AsyncIterator[ep.ProcessingResponse]:
        """Manifest routes send one message: the buffered response body, with the request's
        facts as attributes (see ``EXTPROC_ATTRIBUTES`` in the Envoy configuration). The JSON
        route sends request headers instead and is answered immediately."""
        trace_parent: dict[str, str] | None = None
        if tracing.tracing_enabled() and context is not None:
            # Envoy's ext_proc client span travels in the gRPC metadata (W3C traceparent).
            trace_parent = dict(context.invocation_metadata() or ())
        async for request in request_iterator:
            phase = request.WhichOneof("request")
            if phase == "response_body":
                if trace_parent is None:
                    yield self._response_body(request)
                    continue
                with tracing.span(
                    tracing.EXTPROC_REWRITE_MANIFEST, parent=trace_parent, kind=SpanKind.SERVER
                ):
                    reply = self._response_body(request)
                yield reply
            elif phase == "request_headers":
                headers = headers_of(request.request_headers)
                ctx = context_from_request(self._config, headers.get(":path", ""), headers)
                if ctx is not None and ctx.entry and _wants_json(headers):
                    # The JSON form: answered here, after authz admitted the viewer. Only Envoy
                    # can ask, so no HTTP port of ours hands out signed URLs.
                    yield self._manifest_url(ctx, headers)
                    return
                yield _CONTINUE_REQUEST_HEADERS
            elif phase == "response_headers":
                yield _CONTINUE_RESPONSE_HEADERS
            else:  # phases we never asked for: let them pass
                yield _generic_continue(phase)

    def _response_body(self, request: ep.ProcessingRequest) -> ep.ProcessingResponse:
        struct = request.attributes.get(ATTRIBUTE_NAMESPACE)
        if struct is None:
            return _UNCHANGED_BODY
        fields = struct.fields
        code = fields.get("response.code")
        if code is None or (code.number_value != 200 and code.string_value != "200"):
            return _UNCHANGED_BODY
        # the path the viewer asked for: Envoy keeps it when the route rewrites :path
        facts = tuple(
            value.string_value if (value := fields.get(key)) is not None else ""
            for key in _CONTEXT_KEYS
        )
        ctx = self._contexts.get(facts)
        if ctx is None and facts not in self._contexts:
            ctx = self._context_of(facts)
        request_id = fields.get(_REQUEST_ID_KEY)
        return self._body(
            ctx, request.response_body.body, request_id.string_value if request_id else None
        )

    def _context_of(self, facts: tuple[str, ...]) -> ManifestContext | None:
        """The request context of these facts, remembered: a viewer's player asks again and
        again with the same ones (only the request id differs, and it is not part of them)."""
        original, path, user, video, session, address = facts
        headers = {"x-playback-user": user, "x-playback-video": video}
        if session:
            headers["x-playback-session"] = session
        if address:
            headers["x-envoy-external-address"] = _host_of(address)
        ctx = context_from_request(self._config, original or path, headers)
        if len(self._contexts) >= _CONTEXT_MEMO:
            self._contexts.clear()
        self._contexts[facts] = ctx
        return ctx

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
        self, ctx: ManifestContext | None, body: bytes, request_id: str | None
    ) -> ep.ProcessingResponse:
        if ctx is None:
            return _UNCHANGED_BODY
        started = time.perf_counter()
        encoding = sniff_encoding(body)
        try:
            signed = self._signer.sign(ctx, None, encoding, body)
        except PlaybackError as exc:
            metrics.MANIFESTS.labels("none", "error", exc.code).inc()
            metrics.REQUESTS.observe(ctx.format, "error", exc.code, time.perf_counter() - started)
            log.warning(
                "manifest refused: %s",
                exc.code,
                extra={"videoId": ctx.video, "userId": ctx.user, "requestId": request_id},
            )
            status = 502 if exc.status < 500 else exc.status
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
            metrics.manifest_counter("none", "passthrough", "ok").inc()
            return _UNCHANGED_BODY
        response = self._response_for(signed.body, encoding if signed.decoded else None)
        kind = signed.kind.value
        metrics.REQUESTS.observe(kind, "ok", "ok", time.perf_counter() - started)
        metrics.manifest_counter(kind, "signed", "ok").inc()
        metrics.manifest_cache_counter("hit" if signed.cached else "miss").inc()
        if ctx.entry:
            # no span of ours when tracing is off: skip asking the OpenTelemetry context
            trace_id = tracing.current_trace_id() if tracing.tracing_enabled() else None
            self._events.emit(
                playback_started(
                    SOURCE,
                    user_id=ctx.user or "",
                    video_id=ctx.video,
                    request_id=request_id,
                    trace_id=trace_id,
                    format=kind,
                    sessionId=ctx.session,
                )
            )
        return response

    def _response_for(self, body: bytes, encoding: str | None) -> ep.ProcessingResponse:
        """The answer carrying this signed body. A cache hit of the signer returns the same body
        object, so the message (and a gzip re-encoding) is built once per signed manifest."""
        key = (id(body), encoding)
        found = self._responses.get(key)
        if found is not None and found[0] is body:
            return found[1]
        # the response headers are already on their way: answer in the origin's encoding
        out = encode_like(body, encoding) if encoding is not None else body
        response = ep.ProcessingResponse(
            response_body=ep.BodyResponse(
                response=ep.CommonResponse(body_mutation=ep.BodyMutation(body=out))
            )
        )
        size = len(body) + len(out)
        if size > _RESPONSE_MEMO_BYTES // 16:
            return response  # a huge manifest: not worth holding twice
        self._responses[key] = (body, response, size)
        self._response_bytes += size
        while len(self._responses) > _RESPONSE_MEMO or self._response_bytes > _RESPONSE_MEMO_BYTES:
            self._response_bytes -= self._responses.popitem(last=False)[1][2]
        return response


ATTRIBUTE_NAMESPACE = "envoy.filters.http.ext_proc"
_RESPONSE_MEMO = 256
_RESPONSE_MEMO_BYTES = 64 << 20
_CONTEXT_MEMO = 4096
# the attributes a request context is made of, in _context_of's order; the request id is apart
_CONTEXT_KEYS = (
    "request.headers['x-envoy-original-path']",
    "request.path",
    "request.headers['x-playback-user']",
    "request.headers['x-playback-video']",
    "request.headers['x-playback-session']",
    "source.address",
)
_REQUEST_ID_KEY = "request.headers['x-request-id']"


def _host_of(address: str) -> str:
    """``203.0.113.7:0`` or ``[2001:db8::1]:443`` -> the address without the port."""
    host, sep, _port = address.rpartition(":")
    if not sep:
        return address
    return host.strip("[]")


def sniff_encoding(body: bytes) -> str | None:
    """gzip or zlib (deflate) by their magic bytes; manifests themselves start with text."""
    if body[:2] == b"\x1f\x8b":
        return "gzip"
    if len(body) >= 2 and body[0] == 0x78 and (body[0] * 256 + body[1]) % 31 == 0:
        return "deflate"
    return None


def encode_like(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=1, mtime=0)
    return zlib.compress(body, 1)


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
    return {"url": url, "expiresAt": rfc3339_seconds(expires_at), "format": ctx.format}


def build_http_app() -> web.Application:
    """Health and metrics only: signed URLs are handed out through Envoy (ext_proc), never here."""

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": "extproc"})

    app = web.Application()
    app.router.add_get("/health", live)
    app.router.add_get("/health/live", live)
    add_metrics_route(app)
    return app


@contextlib.asynccontextmanager
async def running_extproc(
    config: ExtprocConfig, events: EventSink | None = None
) -> AsyncIterator[Any]:
    policy = SigningPolicy(config.policy)
    signer = ManifestSigner(config, mapper_factory(config, policy))
    server = make_server(
        config.grpc_transport,
        max_receive_bytes=config.max_manifest_bytes + 1024 * 1024,
        max_send_bytes=4 * config.max_manifest_bytes,
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
    log.info(
        "extproc serving gRPC on %s:%d (%s)",
        config.grpc_host,
        config.grpc_port,
        config.grpc_transport,
    )
    try:
        yield server
    finally:
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=5)
        await runner.cleanup()


async def serve(config: ExtprocConfig, events: EventSink | None = None) -> None:
    async with running_extproc(config, events):
        await asyncio.Event().wait()
