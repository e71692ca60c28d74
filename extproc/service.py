"""What happens to a manifest response, decided as plain data: no gRPC, no protobuf.

``extproc.server`` turns Envoy's ext_proc messages into the inputs here (:class:`ResponseFacts`,
the body, the viewer's request headers for the JSON form) and the outcomes back into
ProcessingResponses. This module runs the signer around them and records what happened (metrics,
the ``PlaybackStarted`` event of an entry manifest, warnings).

Outcomes:

- :class:`Passthrough`: leave the body as the origin sent it (not a 200, not a manifest at all).
- :class:`Signed`: the signed manifest, to be sent in ``encoding`` (the origin's gzip/deflate,
  since the response headers have already left) or as is.
- :class:`Refused`: a problem+json answer instead of the body. A manifest that cannot be signed is
  never served unsigned: the origin's malformed or forbidden input is a 502 with its code, our own
  failure a 503, and so is a response whose request facts name no manifest (a misconfigured
  proxy: :data:`MISSING_FACTS`).
- :class:`ManifestUrl`: the JSON form's ``{"url", "expiresAt", "format"}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from extproc import metrics
from extproc.config import ExtprocConfig
from extproc.manifest import ManifestKind
from extproc.policy import SigningPolicy
from extproc.signer import ManifestContext, ManifestSigner, context_from_request
from playback_drm import tracing
from playback_drm.events import EXTPROC_SOURCE, EventSink, playback_started
from playback_drm.identity import SESSION_HEADER, USER_HEADER, VIDEO_HEADER
from playback_drm.problem import PlaybackError
from playback_drm.timefmt import rfc3339_seconds

log = logging.getLogger(__name__)
SOURCE: Final = EXTPROC_SOURCE
CONTEXT_MEMO: Final = 4096


@dataclass(frozen=True, slots=True)
class ResponseFacts:
    """What Envoy tells extproc about the request a manifest response answers. Equal facts give
    the same request context (the request id is apart: it differs every time)."""

    original_path: str  # the path the player asked for (``x-envoy-original-path``), or ""
    path: str  # ``:path`` after the route's rewrite
    user: str
    video: str
    session: str
    address: str  # ``source.address``: the viewer's address and port


@dataclass(frozen=True, slots=True)
class Passthrough:
    pass


@dataclass(frozen=True, slots=True)
class Signed:
    body: bytes  # the same object for every hit of the signer's cache
    encoding: str | None  # re-encode like the origin (``gzip``/``deflate``), or send as is


@dataclass(frozen=True, slots=True)
class Refused:
    status: int
    code: str
    title: str
    detail: str


@dataclass(frozen=True, slots=True)
class ManifestUrl:
    document: dict[str, str]


PASSTHROUGH: Final = Passthrough()
# ext_proc runs on manifest routes only: a response whose request facts are missing, or name no
# manifest, means the proxy is misconfigured (no attributes, no x-envoy-original-path). Refused,
# never passed through unsigned.
MISSING_FACTS: Final = Refused(
    503,
    "manifest_context_missing",
    "Manifest signing failed",
    "the proxy sent no facts naming a manifest request",
)
BodyOutcome = Passthrough | Signed | Refused


def sniff_encoding(body: bytes) -> str | None:
    """gzip or zlib (deflate) by their magic bytes; manifests themselves start with text."""
    if body[:2] == b"\x1f\x8b":
        return "gzip"
    if len(body) >= 2 and body[0] == 0x78 and (body[0] * 256 + body[1]) % 31 == 0:
        return "deflate"
    return None


def host_of(address: str) -> str:
    """``203.0.113.7:0`` or ``[2001:db8::1]:443`` -> the address without the port."""
    host, sep, _port = address.rpartition(":")
    if not sep:
        return address
    return host.strip("[]")


def wants_json(headers: Mapping[str, str]) -> bool:
    return "application/json" in headers.get("accept", "")


class ManifestService:
    """Signs manifest responses for Envoy's ext_proc filter and answers the JSON form."""

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
        self._contexts: dict[ResponseFacts, ManifestContext | None] = {}

    # ------------------------------------------------------------------ the manifest response

    def response_body(
        self, facts: ResponseFacts, body: bytes, request_id: str | None
    ) -> BodyOutcome:
        """The outcome for a 200 response body on a manifest route."""
        ctx = self._contexts.get(facts)
        if ctx is None and facts not in self._contexts:
            ctx = self._context_of(facts)
        if ctx is None:
            metrics.MANIFESTS.labels("none", "error", MISSING_FACTS.code).inc()
            log.error(
                "manifest route without a manifest request: %s",
                facts.original_path or facts.path,
                extra={"code": MISSING_FACTS.code},
            )
            return MISSING_FACTS
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
            return Refused(status, exc.code, exc.title, exc.detail)
        except Exception:
            log.exception("manifest signing failed", extra={"videoId": ctx.video})
            metrics.MANIFESTS.labels("none", "error", "internal_error").inc()
            metrics.REQUESTS.observe(
                ctx.format, "error", "internal_error", time.perf_counter() - started
            )
            return Refused(
                503, "manifest_signing_failed", "Manifest signing failed", "internal error"
            )
        if signed is None:
            metrics.manifest_counter("none", "passthrough", "ok").inc()
            return PASSTHROUGH
        kind = signed.kind.value
        metrics.REQUESTS.observe(kind, "ok", "ok", time.perf_counter() - started)
        metrics.manifest_counter(kind, "signed", "ok").inc()
        metrics.manifest_cache_counter("hit" if signed.cached else "miss").inc()
        if ctx.entry:
            self._playback_started(ctx, signed.kind, request_id)
        return Signed(signed.body, encoding if signed.decoded else None)

    def _context_of(self, facts: ResponseFacts) -> ManifestContext | None:
        """The request context of these facts, remembered: a viewer's player asks again and
        again with the same ones (only the request id differs, and it is not part of them)."""
        headers = {USER_HEADER: facts.user, VIDEO_HEADER: facts.video}
        if facts.session:
            headers[SESSION_HEADER] = facts.session
        if facts.address:
            headers["x-envoy-external-address"] = host_of(facts.address)
        ctx = context_from_request(self._config, facts.original_path or facts.path, headers)
        if len(self._contexts) >= CONTEXT_MEMO:
            self._contexts.clear()
        self._contexts[facts] = ctx
        return ctx

    def _playback_started(
        self, ctx: ManifestContext, kind: ManifestKind, request_id: str | None
    ) -> None:
        # no span of ours when tracing is off: skip asking the OpenTelemetry context
        trace_id = tracing.current_trace_id() if tracing.tracing_enabled() else None
        self._events.emit(
            playback_started(
                SOURCE,
                user_id=ctx.user or "",
                video_id=ctx.video,
                request_id=request_id,
                trace_id=trace_id,
                format=kind.value,
                sessionId=ctx.session,
            )
        )

    # ------------------------------------------------------------------------- the JSON form

    def json_form(self, headers: Mapping[str, str]) -> ManifestUrl | Refused | None:
        """The JSON form of an entry manifest request (``Accept: application/json``), answered
        after authz admitted the viewer; None when the request is not one (let it pass)."""
        ctx = context_from_request(self._config, headers.get(":path", ""), headers)
        if ctx is None or not ctx.entry or not wants_json(headers):
            return None
        if not ctx.user:
            return Refused(401, "token_missing", "Token missing", "request did not pass authz")
        base = f"{headers.get('x-forwarded-proto', 'http')}://{headers.get(':authority', '')}"
        try:
            document = signed_manifest_url(self._config, self._policy, ctx, base, time.time())
        except PlaybackError as exc:
            return Refused(exc.status, exc.code, exc.title, exc.detail)
        metrics.MANIFESTS.labels("url", "signed", "ok").inc()
        metrics.REQUESTS.observe("url", "ok", "ok", 0.0)
        return ManifestUrl(document)


def signed_manifest_url(
    config: ExtprocConfig, policy: SigningPolicy, ctx: ManifestContext, base: str, now: float
) -> dict[str, str]:
    """``{"url", "expiresAt", "format"}``: a signed URL of the manifest itself, loadable by any
    player."""
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


__all__ = [
    "MISSING_FACTS",
    "BodyOutcome",
    "ManifestService",
    "ManifestUrl",
    "Passthrough",
    "Refused",
    "ResponseFacts",
    "Signed",
    "host_of",
    "signed_manifest_url",
    "sniff_encoding",
    "wants_json",
]
