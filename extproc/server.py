"""gRPC adapter: Envoy's ext_proc stream (envoy.service.ext_proc.v3) for manifest routes, plus a
small HTTP app for /health and /metrics.

Manifest routes skip both header phases: Envoy sends one message, the buffered response body,
with the request's facts attached as CEL attributes (``playback_drm.contract``). One gRPC message
per manifest instead of three. A proxy that cannot name single headers as attributes (Envoy
Gateway's ``EnvoyExtensionPolicy``) sends the request-headers phase instead, then the response
headers (it cannot skip them) and the body: the facts are read from the request's headers and
kept, with whatever came as attributes, for the body of the same stream. A body whose facts
never came, or do not name a manifest, is refused: the filter only runs on manifest routes, so
that is a misconfigured proxy, never a reason to let an unsigned manifest through.

The response headers have left by then, so nothing here changes them: the route drops the
origin's length and validators and marks the answer ``no-store``, Envoy sends the signed body
chunked, and a gzip or deflate body is answered in the same encoding.

The JSON form of the manifest route (``Accept: application/json`` -> ``{"url", "expiresAt"}``)
keeps a request-headers phase and is answered there, as an immediate response after authz admitted
the viewer. Any failure is an immediate problem+json response: an unsigned manifest never reaches
a viewer.

This module only translates between Envoy's messages and ``extproc.service``'s plain data.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf.struct_pb2 import Struct
from opentelemetry.trace import SpanKind

from extproc.config import ExtprocConfig
from extproc.policy import SigningPolicy
from extproc.service import (
    MISSING_FACTS,
    ManifestService,
    ManifestUrl,
    Passthrough,
    Refused,
    ResponseFacts,
    Signed,
)
from extproc.signer import ManifestSigner, mapper_factory
from playback_drm import contract, tracing
from playback_drm.events import EventSink, NullSink
from playback_drm.health import Readiness, health_app
from playback_drm.problem import PROBLEM_CONTENT_TYPE, problem_body
from playback_drm.runtime import serving_grpc, serving_http

log = logging.getLogger(__name__)

_CONTINUE_REQUEST_HEADERS = ep.ProcessingResponse(request_headers=ep.HeadersResponse())
_CONTINUE_RESPONSE_HEADERS = ep.ProcessingResponse(response_headers=ep.HeadersResponse())
_UNCHANGED_BODY = ep.ProcessingResponse(response_body=ep.BodyResponse())
_FACTS: Final = contract.EXTPROC_ATTRIBUTE_NAMESPACE
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
RESPONSE_MEMO: Final = 256
RESPONSE_MEMO_BYTES: Final = 64 << 20


@dataclass(slots=True)
class _Stream:
    """What one ext_proc stream told us before the body: the attributes, and the request's
    and response's headers when the proxy sends those phases."""

    facts: Struct | None = None
    headers: dict[str, str] | None = None
    status: str | None = None


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


def _refused(outcome: Refused) -> ep.ProcessingResponse:
    return immediate(outcome.status, outcome.code, outcome.title, outcome.detail)


def _manifest_url(outcome: ManifestUrl) -> ep.ProcessingResponse:
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=200),
            headers=ep.HeaderMutation(
                set_headers=[_header("content-type", "application/json"), _NO_STORE]
            ),
            body=json.dumps(outcome.document, separators=(",", ":")).encode(),
            details="manifest_url",
        )
    )


def encode_like(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=1, mtime=0)
    return zlib.compress(body, 1)


def _generic_continue(phase: str | None) -> ep.ProcessingResponse:
    if phase == "request_body":
        return ep.ProcessingResponse(request_body=ep.BodyResponse())
    if phase == "request_trailers":
        return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
    if phase == "response_trailers":
        return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())
    return ep.ProcessingResponse()


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, service: ManifestService) -> None:
        self._service = service
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
        facts as attributes. The JSON route sends request headers instead and is answered
        immediately."""
        trace_parent: dict[str, str] | None = None
        if tracing.tracing_enabled() and context is not None:
            # Envoy's ext_proc client span travels in the gRPC metadata (W3C traceparent).
            trace_parent = dict(context.invocation_metadata() or ())
        stream = _Stream()
        async for request in request_iterator:
            phase = request.WhichOneof("request")
            if _FACTS in request.attributes:
                stream.facts = request.attributes[_FACTS]
            if phase == "response_body":
                if trace_parent is None:
                    yield self._response_body(request, stream)
                    continue
                with tracing.span(
                    tracing.EXTPROC_REWRITE_MANIFEST, parent=trace_parent, kind=SpanKind.SERVER
                ):
                    reply = self._response_body(request, stream)
                yield reply
            elif phase == "request_headers":
                # The JSON form: answered here, after authz admitted the viewer. Only Envoy can
                # ask, so no HTTP port of ours hands out signed URLs. Any other request: its
                # headers are the facts of a proxy that sends them instead of attributes.
                headers = headers_of(request.request_headers)
                outcome = self._service.json_form(headers)
                if outcome is None:
                    stream.headers = headers
                    yield _CONTINUE_REQUEST_HEADERS
                    continue
                yield (
                    _manifest_url(outcome)
                    if isinstance(outcome, ManifestUrl)
                    else _refused(outcome)
                )
                return
            elif phase == "response_headers":
                stream.status = headers_of(request.response_headers).get(":status")
                yield _CONTINUE_RESPONSE_HEADERS
            else:  # phases we never asked for: let them pass
                yield _generic_continue(phase)

    def _response_body(
        self, request: ep.ProcessingRequest, stream: _Stream
    ) -> ep.ProcessingResponse:
        fields = stream.facts.fields if stream.facts is not None else {}
        headers = stream.headers
        code = fields.get(contract.STATUS_ATTRIBUTE)
        status = (
            (code.string_value or str(int(code.number_value)))
            if code is not None
            else stream.status
        )
        if (not fields and headers is None) or status is None:
            log.error("manifest body without the request's facts: check the ext_proc settings")
            return _refused(MISSING_FACTS)
        if status != "200":
            return _UNCHANGED_BODY

        def text(key: str) -> str:
            value = fields.get(key)
            if value is not None:
                return str(value.string_value)
            if headers is not None and key in contract.HEADER_OF_ATTRIBUTE:
                return headers.get(contract.HEADER_OF_ATTRIBUTE[key], "")
            return ""

        facts = ResponseFacts(
            original_path=text(contract.ORIGINAL_PATH_ATTRIBUTE),
            path=text(contract.PATH_ATTRIBUTE),
            user=text(contract.USER_ATTRIBUTE),
            video=text(contract.VIDEO_ATTRIBUTE),
            session=text(contract.SESSION_ATTRIBUTE),
            address=text(contract.SOURCE_ATTRIBUTE),
        )
        outcome = self._service.response_body(
            facts, request.response_body.body, text(contract.REQUEST_ID_ATTRIBUTE) or None
        )
        if isinstance(outcome, Signed):
            return self._response_for(outcome.body, outcome.encoding)
        if isinstance(outcome, Passthrough):
            return _UNCHANGED_BODY
        return _refused(outcome)

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
        if size > RESPONSE_MEMO_BYTES // 16:
            return response  # a huge manifest: not worth holding twice
        self._responses[key] = (body, response, size)
        self._response_bytes += size
        while len(self._responses) > RESPONSE_MEMO or self._response_bytes > RESPONSE_MEMO_BYTES:
            self._response_bytes -= self._responses.popitem(last=False)[1][2]
        return response


def processor_for(config: ExtprocConfig, events: EventSink) -> ExternalProcessor:
    """The ext_proc servicer of this configuration (policy, signer, service)."""
    policy = SigningPolicy(config.policy)
    signer = ManifestSigner(config, mapper_factory(config, policy))
    return ExternalProcessor(ManifestService(config, signer, policy, events))


@contextlib.asynccontextmanager
async def running_extproc(
    config: ExtprocConfig, events: EventSink | None = None
) -> AsyncIterator[Any]:
    """Serve ext_proc (gRPC) and /health, /metrics (HTTP) until the block exits."""
    processor = processor_for(config, events or NullSink())

    def register(server: Any) -> None:
        ep_grpc.add_ExternalProcessorServicer_to_server(processor, server)

    # Signed URLs are handed out through Envoy (ext_proc), never on the HTTP port.
    async with (
        serving_http(health_app(Readiness("extproc")), config.http_host, config.http_port),
        serving_grpc(
            "extproc",
            config.grpc_transport,
            config.grpc_host,
            config.grpc_port,
            register,
            max_receive_bytes=config.max_manifest_bytes + 1024 * 1024,
            max_send_bytes=4 * config.max_manifest_bytes,
        ) as server,
    ):
        yield server


async def serve(config: ExtprocConfig, events: EventSink | None = None) -> None:
    async with running_extproc(config, events):
        await asyncio.Event().wait()


__all__ = ["ExternalProcessor", "processor_for", "running_extproc", "serve"]
