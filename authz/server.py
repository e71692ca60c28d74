"""gRPC adapter: Envoy's ext_authz (envoy.service.auth.v3) and rate limit service
(envoy.service.ratelimit.v3) on one grpc.aio server, plus /health and /metrics over HTTP.

This module only converts between Envoy's protobuf types and ``authz.decision``'s plain types;
what to decide lives in ``authz.service`` and ``authz.decision``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2
from google.rpc import code_pb2, status_pb2
from opentelemetry.trace import SpanKind

from authz import metrics
from authz.config import AuthzConfig
from authz.decision import Allow, CheckInput, Decision, Deny, video_for
from authz.entitlement import (
    BillingClient,
    EntitlementCache,
    RedisCache,
    redis_client,
)
from authz.ratelimit import (
    RATE_LIMITED,
    Charge,
    MemorySlidingWindow,
    RateLimitBackendUnavailable,
    RedisSlidingWindow,
    SlidingWindow,
    UserLimit,
    WindowResult,
    descriptor_key,
    quota_headers,
    retry_after,
)
from authz.registry import SessionRegistry
from authz.service import Authorizer, UrlVerifier
from authz.sessions import Lifetimes
from authz.sessionstore import MemorySessionStore, RedisSessionStore, SessionStore
from authz.tokens import JwksCache, TokenVerifier
from playback_drm import tracing, urlsign
from playback_drm.contract import (
    AUTHZ_LIMIT_KEY,
    AUTHZ_MODE_KEY,
    EXTERNAL_ADDRESS_HEADER,
    LIMIT_PER_USER,
    MODE_SESSION_END,
    MODE_SESSION_HEARTBEAT,
    authz_mode_for_path,
)
from playback_drm.events import AUTHZ_SOURCE, EventSink, NullSink, playback_error
from playback_drm.health import OK, Check, Readiness, health_app
from playback_drm.identity import IDENTITY_HEADERS, USER_HEADER, VIDEO_HEADER
from playback_drm.problem import PROBLEM_CONTENT_TYPE, PlaybackError, problem_body
from playback_drm.redisconn import RedisClient, SharedRedis
from playback_drm.runtime import serving_grpc, serving_http

log = logging.getLogger(__name__)

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK_STATUS = status_pb2.Status(code=code_pb2.OK)
_GRPC_CODE_FOR_HTTP = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    429: code_pb2.RESOURCE_EXHAUSTED,
}
_CONTENT_TYPE = base_pb2.HeaderValueOption(
    header=base_pb2.HeaderValue(key="content-type", value=PROBLEM_CONTENT_TYPE),
    append_action=_OVERWRITE,
)
_NO_STORE = base_pb2.HeaderValueOption(
    header=base_pb2.HeaderValue(key="cache-control", value="no-store"),
    append_action=_OVERWRITE,
)
SOURCE = AUTHZ_SOURCE


def to_input(request: external_auth_pb2.CheckRequest) -> CheckInput:
    attrs = request.attributes
    http = attrs.request.http
    raw_path = http.path
    path, sep, query = raw_path.partition("?")
    if not sep and http.query:
        query = http.query
    headers = http.headers
    # Our sidecar and Envoy Gateway name the mode per route; Istio's CUSTOM action cannot, so the
    # path decides (one definition: playback_drm.contract).
    extensions = attrs.context_extensions
    mode = extensions.get(AUTHZ_MODE_KEY) or authz_mode_for_path(path)
    body = http.raw_body or (http.body.encode() if http.body else b"")
    # the viewer's address as Envoy derived it past the trusted gateway hop; the connection's
    # peer is the gateway itself
    client_ip = (
        headers.get(EXTERNAL_ADDRESS_HEADER) or attrs.source.address.socket_address.address or None
    )
    return CheckInput(
        method=http.method,
        path=path,
        query=query,
        authorization=headers.get("authorization"),
        client_ip=client_ip,
        mode=mode,
        content_type=headers.get("content-type"),
        body=body,
        limit_user=extensions.get(AUTHZ_LIMIT_KEY) == LIMIT_PER_USER,
    )


def to_response(decision: Decision) -> external_auth_pb2.CheckResponse:
    if isinstance(decision, Allow):
        written = {k for k, _ in decision.headers}
        ok = external_auth_pb2.OkHttpResponse(
            headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=k, value=v), append_action=_OVERWRITE
                )
                for k, v in decision.headers
            ],
            # Every identity header authz does not write is removed, so a client's copy never
            # reaches the services, whatever the proxy in front strips (or forgets to); and the
            # viewer's credential stays at the edge, like the `token` query parameter.
            headers_to_remove=[h for h in IDENTITY_HEADERS if h not in written] + ["authorization"],
            query_parameters_to_remove=decision.remove_query,
        )
        return external_auth_pb2.CheckResponse(status=_OK_STATUS, ok_response=ok)
    headers = [_CONTENT_TYPE, _NO_STORE]
    headers.extend(
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, value=v), append_action=_OVERWRITE
        )
        for k, v in decision.headers
    )
    if decision.www_authenticate is not None:
        headers.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(
                    key="www-authenticate", value=decision.www_authenticate
                ),
                append_action=_OVERWRITE,
            )
        )
    denied = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=decision.status),
        headers=headers,
        body=problem_body(decision.code, decision.status, decision.title, decision.detail).decode(),
    )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(
            code=_GRPC_CODE_FOR_HTTP.get(decision.status, code_pb2.UNAVAILABLE),
            message=decision.code,
        ),
        denied_response=denied,
    )


_RL_OK = metrics.RATE_LIMIT.labels("ok")
_RL_OVER = metrics.RATE_LIMIT.labels("over_limit")
_RL_UNCHECKED = metrics.RATE_LIMIT.labels("unavailable")


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(
        self, authorizer: Authorizer, events: EventSink, user_limit: UserLimit | None = None
    ) -> None:
        self._authorizer = authorizer
        self._events = events
        self._user_limit = user_limit
        self._responses: dict[Allow, tuple[float, external_auth_pb2.CheckResponse]] = {}

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter()
        inp = to_input(request)
        if tracing.tracing_enabled():
            # Envoy's ext_authz client span travels in the gRPC metadata (W3C traceparent).
            parent = dict(context.invocation_metadata() or ())
            if tracing.TRACEPARENT not in parent:
                parent = dict(request.attributes.request.http.headers)
            with tracing.span(
                tracing.AUTHZ_CHECK_TOKEN, parent=parent, kind=SpanKind.SERVER, mode=inp.mode
            ) as current:
                decision, quota = await self._decide(inp)
                if isinstance(decision, Deny):
                    if current is not None:
                        current.set_attribute("playback.code", decision.code)
                    self._record_denial(inp, decision)  # inside the span: events carry its id
        else:
            decision, quota = await self._decide(inp)
            if isinstance(decision, Deny):
                self._record_denial(inp, decision)
        elapsed = time.perf_counter() - started
        if isinstance(decision, Allow):
            metrics.REQUESTS.observe(inp.mode, "ok", "ok", elapsed)
            response = self._allow_response(decision)
            return with_response_headers(response, quota) if quota else response
        outcome = "error" if decision.status >= 500 else "rejected"
        metrics.REQUESTS.observe(inp.mode, outcome, decision.code, elapsed)
        return to_response(decision)

    async def _decide(self, inp: CheckInput) -> tuple[Decision, tuple[tuple[str, str], ...]]:
        """The authorizer's decision, then the per-user limit when the route asks for it; with
        the quota headers for an admitted viewer's response."""
        limit = self._user_limit if inp.limit_user else None
        if limit is None:
            return await self._authorizer.check(inp), ()
        charge = limit.charge()
        decision = await self._authorizer.check(inp, charge)
        if isinstance(decision, Allow):
            return await self._count(decision, limit, charge)
        if decision.code == RATE_LIMITED and charge is not None and charge.result is not None:
            return self._refusal(limit, charge.result, decision.user, decision.video), ()
        return decision, ()

    async def _count(
        self, allow: Allow, limit: UserLimit, charge: Charge | None
    ) -> tuple[Decision, tuple[tuple[str, str], ...]]:
        """The per-user limit, kept inside the check (the route asks, see
        ``authz.ratelimit.UserLimit``): counted by the session store's script when the check
        ran one for the viewer (the charge), else now. An admitted viewer's response carries the
        quota headers, one over the limit gets 429 ``rate_limited``. A request without a viewer
        (a bearer media URL) is not counted, as the ratelimit filter skips it."""
        user = next((v for k, v in allow.headers if k == USER_HEADER), None)
        if user is None:
            return allow, ()
        result = await limit.hit(user, charge)
        if result is None:  # fails open, as the ratelimit filter's failure_mode_deny false
            _RL_UNCHECKED.inc()
            return allow, ()
        if result.allowed:
            _RL_OK.inc()
            return allow, quota_headers(limit.limit, limit.window_seconds, result)
        video = next((v for k, v in allow.headers if k == VIDEO_HEADER), None)
        return self._refusal(limit, result, user, video), ()

    @staticmethod
    def _refusal(
        limit: UserLimit, result: WindowResult, user: str | None, video: str | None
    ) -> Deny:
        _RL_OVER.inc()
        wait = retry_after(result)
        return Deny(
            429,
            RATE_LIMITED,
            "Too many requests",
            f"per-user limit reached; retry in {wait}s",
            user=user,
            video=video,
            headers=(
                ("retry-after", str(wait)),
                *quota_headers(limit.limit, limit.window_seconds, result),
            ),
        )

    def _allow_response(self, decision: Allow) -> external_auth_pb2.CheckResponse:
        """Admissions repeat (same viewer, same video): reuse the built message for a second."""
        now = time.monotonic()
        cached = self._responses.get(decision)
        if cached is not None and cached[0] > now:
            return cached[1]
        response = to_response(decision)
        if len(self._responses) >= 10_000:
            self._responses.clear()
        self._responses[decision] = (now + 1.0, response)
        return response

    def _record_denial(self, inp: CheckInput, decision: Deny) -> None:
        if decision.code == RATE_LIMITED:
            return  # counted (playback_ratelimit_decisions_total); a flood is not an event each
        log.info(
            "denied %s %s: %s",
            inp.method,
            inp.path,
            decision.code,
            extra={"code": decision.code, "status": decision.status},
        )
        self._events.emit(
            playback_error(
                SOURCE,
                code=decision.code,
                status=decision.status,
                user_id=decision.user,
                video_id=decision.video or _video_or_none(inp),
                trace_id=tracing.current_trace_id(),
                path=inp.path,
            )
        )


def with_response_headers(
    response: external_auth_pb2.CheckResponse, headers: tuple[tuple[str, str], ...]
) -> external_auth_pb2.CheckResponse:
    """An admission's response (possibly shared, see ``_allow_response``) plus headers for the
    viewer's response: a copy, the shared one stays as it is."""
    out = external_auth_pb2.CheckResponse()
    out.CopyFrom(response)
    out.ok_response.response_headers_to_add.extend(
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, value=v), append_action=_OVERWRITE
        )
        for k, v in headers
    )
    return out


def _video_or_none(inp: CheckInput) -> str | None:
    if inp.mode in (MODE_SESSION_END, MODE_SESSION_HEARTBEAT):
        return None  # /playback/sessions/...: no video in the path
    try:
        return video_for(inp)
    except PlaybackError:
        return None


_RL_UNIT_SECOND = rls_pb2.RateLimitResponse.RateLimit.SECOND


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """Envoy rate limit service: every descriptor is limited by the sliding window."""

    def __init__(self, window: SlidingWindow, limit: int) -> None:
        self._window = window
        self._limit = rls_pb2.RateLimitResponse.RateLimit(
            name="per_user", requests_per_unit=limit, unit=_RL_UNIT_SECOND
        )

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rls_pb2.RateLimitResponse:
        hits = request.hits_addend or 1
        statuses = []
        overall = rls_pb2.RateLimitResponse.OK
        retry_after = 0.0
        for descriptor in request.descriptors:
            key = descriptor_key(request.domain, [(e.key, e.value) for e in descriptor.entries])
            try:
                result = await self._window.hit(key, hits)
            except RateLimitBackendUnavailable:
                # Envoy's failure_mode_deny decides; answering an error makes that explicit.
                await context.abort(grpc.StatusCode.UNAVAILABLE, "rate limit backend unavailable")
                raise  # unreachable: abort raises
            code = (
                rls_pb2.RateLimitResponse.OK
                if result.allowed
                else rls_pb2.RateLimitResponse.OVER_LIMIT
            )
            if not result.allowed:
                overall = rls_pb2.RateLimitResponse.OVER_LIMIT
                retry_after = max(retry_after, result.reset_after)
            seconds = int(result.reset_after)
            statuses.append(
                rls_pb2.RateLimitResponse.DescriptorStatus(
                    code=code,
                    current_limit=self._limit,
                    limit_remaining=result.remaining,
                    duration_until_reset=duration_pb2.Duration(
                        seconds=seconds, nanos=int((result.reset_after - seconds) * 1e9)
                    ),
                )
            )
        response = rls_pb2.RateLimitResponse(overall_code=overall, statuses=statuses)
        if overall == rls_pb2.RateLimitResponse.OVER_LIMIT:
            metrics.RATE_LIMIT.labels("over_limit").inc()
            wait = max(1, int(retry_after + 0.999))
            response.response_headers_to_add.extend(
                [
                    base_pb2.HeaderValue(key="retry-after", value=str(wait)),
                    base_pb2.HeaderValue(key="content-type", value=PROBLEM_CONTENT_TYPE),
                ]
            )
            response.raw_body = problem_body(
                "rate_limited",
                429,
                "Too many requests",
                f"per-user limit reached; retry in {wait}s",
            )
        else:
            metrics.RATE_LIMIT.labels("ok").inc()
        return response


def readiness_of(
    jwks: JwksCache,
    session: aiohttp.ClientSession,
    billing_url: str,
    redis: SharedRedis | None,
) -> Readiness:
    """authz is ready when the JWKS is loaded, Billing answers and Redis (when configured) does."""
    billing_health = billing_url + "/health"

    async def jwks_loaded() -> str:
        return OK if jwks.loaded else "unavailable"

    async def billing() -> str:
        try:
            async with session.get(
                billing_health, timeout=aiohttp.ClientTimeout(total=0.5)
            ) as resp:
                return OK if resp.status < 500 else f"http {resp.status}"
        except (aiohttp.ClientError, TimeoutError):
            return "unreachable"

    checks: dict[str, Check] = {"jwks": jwks_loaded, "billing": billing}
    if redis is not None:
        client = redis

        async def redis_reachable() -> str:
            return OK if await client.ping() else "unreachable"

        checks["redis"] = redis_reachable
    return Readiness("authz", checks)


def url_verifier_from(config: AuthzConfig) -> UrlVerifier:
    ring = urlsign.KeyRing.from_spec(config.url_signing_keys)

    def verify(path: str, query: str, client_ip: str | None, leeway: int = 0) -> Any:
        return urlsign.verify(
            ring, path, query, now=time.time(), client_ip=client_ip, leeway=leeway
        )

    return verify


def session_store(config: AuthzConfig, redis: RedisClient | None) -> SessionStore:
    """The playback-session store: Redis when configured (shared by replicas), else memory."""
    life = Lifetimes(config.session_idle * 1000, config.stream_idle * 1000)
    return RedisSessionStore(redis, life) if redis is not None else MemorySessionStore(life)


@contextlib.asynccontextmanager
async def running_authz(
    config: AuthzConfig, events: EventSink | None = None
) -> AsyncIterator[tuple[Any, Authorizer]]:
    """Start the gRPC and HTTP servers; on exit: NOT_SERVING, stop accepting, drain, close."""
    events = events or NullSink()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30, ttl_dns_cache=60)
    )
    shared_redis = redis_client(config.redis) if config.redis is not None else None
    redis = shared_redis.client if shared_redis is not None else None
    window: SlidingWindow
    if redis is not None:
        window = RedisSlidingWindow(redis, config.rate_limit_per_user, config.rate_limit_window)
    else:
        window = MemorySlidingWindow(config.rate_limit_per_user, config.rate_limit_window)

    async def fetch_jwks() -> dict[str, Any]:
        async with session.get(config.jwks_url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            resp.raise_for_status()
            doc: dict[str, Any] = await resp.json(content_type=None)
            return doc

    allowed = frozenset(a for a in config.algorithms if a != "HS256")
    jwks = JwksCache(fetch_jwks, allowed, min_refresh=config.jwks_min_refresh)
    verifier = TokenVerifier(
        jwks,
        issuer=config.issuer,
        audience=config.audience,
        algorithms=config.algorithms,
        hs256_secret=config.hs256_secret,
        leeway=config.leeway,
        max_token_bytes=config.max_token_bytes,
    )
    billing = BillingClient(config.billing_url, config.billing_timeout, session)
    entitlements = EntitlementCache(
        billing,
        ttl=config.entitlement_ttl,
        deny_ttl=config.entitlement_deny_ttl,
        shared=RedisCache(redis) if redis is not None else None,
    )
    sessions = SessionRegistry(
        session_store(config, redis), config.stream_limits, check_interval=config.session_check
    )
    authorizer = Authorizer(verifier, entitlements, url_verifier_from(config), sessions)

    def register(server: Any) -> None:
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            AuthorizationService(
                authorizer,
                events,
                UserLimit(window, config.rate_limit_per_user, config.rate_limit_window),
            ),
            server,
        )
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(
            RateLimitService(window, config.rate_limit_per_user), server
        )

    await jwks.refresh(force=True)
    if not jwks.loaded:
        log.warning("JWKS not loaded at start-up; will retry on the first token")

    async def periodic_refresh() -> None:
        while True:
            await asyncio.sleep(config.jwks_refresh)
            await jwks.refresh(force=True)

    refresher = asyncio.create_task(periodic_refresh())
    gauge = asyncio.create_task(sessions.run_gauge())
    readiness = readiness_of(jwks, session, config.billing_url, shared_redis)
    try:
        async with (
            serving_http(health_app(readiness), config.http_host, config.http_port),
            serving_grpc(
                "authz",
                config.grpc_transport,
                config.grpc_host,
                config.grpc_port,
                register,
                max_receive_bytes=4 << 20,
                max_send_bytes=4 << 20,
            ) as server,
        ):
            yield server, authorizer
    finally:
        refresher.cancel()
        gauge.cancel()
        await sessions.store.close()
        await session.close()
        if shared_redis is not None:
            await shared_redis.aclose()


async def serve(config: AuthzConfig, events: EventSink | None = None) -> None:
    async with running_authz(config, events):
        await asyncio.Event().wait()
