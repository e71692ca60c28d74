"""The license broker's HTTP API (aiohttp). Thin: parse, call :class:`LicenseService`, render.

Routes

``POST /drm/license``
    JSON ``{videoId, licenseRequest (base64), keySystem?}`` → JSON ``{license (base64),
    licenseId, expiresAt, keySystem}``; the key system is inferred when absent (``keysystems``).
``POST /drm/license/{keySystem}?videoId=``
    raw challenge → raw license: ClearKey JWK set, Widevine bytes, PlayReady SOAP, FairPlay CKC
    in the encoding of the SPC. ``keySystem`` is an EME name or alias (``org.w3.clearkey``,
    ``com.widevine.alpha``, ``com.microsoft.playready``, ``com.apple.fps``, ``widevine``, ...).
``GET /drm/certificate/{keySystem}``
    Widevine service certificate / FairPlay FPS certificate (raw bytes).
``GET /drm/key/{videoId}/{kid}``
    HLS AES-128 key: exactly 16 raw bytes, ``Cache-Control: no-store``.
``GET /health``, ``GET /health/live``, ``GET /metrics``
    readiness JSON with dependency status (503 only while draining), liveness, Prometheus.

``expiresAt`` is RFC 3339 UTC. Native answers carry ``X-Playback-License-Id`` and
``X-Playback-License-Expires``. ``videoId`` of the native route falls back to ``x-playback-video``.
Every error is ``application/problem+json`` with a stable ``code`` (one middleware), except a
PlayReady SOAP fault on the native route, which is relayed verbatim for PlayReady clients.
CORS is not the broker's: Envoy answers preflights and writes every ``Access-Control-*`` header
(``envoyconf.cors``), and drops any an upstream sets, so there is one policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from license_broker import metrics
from license_broker.cache import (
    LicenseCache,
    MemoryLicenseCache,
    RedisGuard,
    RedisLicenseCache,
    TieredLicenseCache,
    redis_client,
)
from license_broker.config import BrokerConfig
from license_broker.demo_keys import DEMO_KEYS
from license_broker.encoding import b64, b64decode_lenient
from license_broker.errors import (
    BadRequest,
    KeyStoreUnavailable,
    MalformedChallenge,
    ProviderRejected,
    RequestTooLarge,
)
from license_broker.keys import CachedKeyStore, KeyStore, MemoryKeyStore, VaultKeyStore
from license_broker.keysystems import KeySystem, parse_key_system
from license_broker.policy import Identity
from license_broker.providers import build_providers
from license_broker.service import IssuedLicense, LicenseService
from playback_drm import identity
from playback_drm.events import BROKER_SOURCE, EventSink, NullSink, playback_error
from playback_drm.metrics import metrics_handler
from playback_drm.problem import PROBLEM_CONTENT_TYPE, PlaybackError, Problem
from playback_drm.timefmt import rfc3339_seconds
from playback_drm.untrusted import json_loads

log = logging.getLogger(__name__)

CONFIG_KEY: Final = web.AppKey("config", BrokerConfig)
SERVICE_KEY: Final = web.AppKey("service", LicenseService)
EVENTS_KEY: Final = web.AppKey("events", EventSink)
STATE_KEY: Final = web.AppKey("state", dict[str, Any])
VIDEO_RKEY: Final = web.RequestKey("video_id", str)
KEY_SYSTEM_RKEY: Final = web.RequestKey("key_system", str)
NATIVE_RKEY: Final = web.RequestKey("native", bool)

LICENSE_ID_HEADER: Final = "X-Playback-License-Id"
LICENSE_EXPIRES_HEADER: Final = "X-Playback-License-Expires"
FORWARDED_HEADERS: Final = ("Content-Type", "SOAPAction")
HEALTH_PROBE_INTERVAL: Final = 5.0
_HTTP_CODES: Final = {
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=problem.status,
        body=problem.to_json(),
        headers={
            "Content-Type": PROBLEM_CONTENT_TYPE,
            "Cache-Control": "no-store",
            **(headers or {}),
        },
    )


# ---------------------------------------------------------------------------------- middlewares


def _record_error(request: web.Request, exc: PlaybackError) -> None:
    if not request.path.startswith("/drm/"):
        return
    headers = request.headers
    video = request.get(VIDEO_RKEY) or headers.get(identity.VIDEO_HEADER) or ""
    request.app[EVENTS_KEY].emit(
        playback_error(
            BROKER_SOURCE,
            code=exc.code,
            status=exc.status,
            user_id=headers.get(identity.USER_HEADER),
            video_id=video or None,
            key_system=request.get(KEY_SYSTEM_RKEY),
            plan=headers.get(identity.PLAN_HEADER),
            request_id=headers.get(identity.REQUEST_ID_HEADER),
            path=request.path,
        )
    )
    level = logging.ERROR if exc.status >= 500 else logging.INFO
    log.log(
        level,
        "request refused: %s",
        exc.code,
        extra={"userId": headers.get(identity.USER_HEADER), "videoId": video or None},
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes problem+json (or a relayed SOAP fault); every request is measured."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    status, code = 500, "internal_error"
    try:
        response = await handler(request)
        status, code = response.status, "ok"
        return response
    except ProviderRejected as exc:
        status, code = exc.status, exc.code
        _record_error(request, exc)
        if exc.relay is not None and request.get(NATIVE_RKEY):
            relay_status, ctype, body = exc.relay
            return web.Response(status=relay_status, body=body, headers={"Content-Type": ctype})
        return problem_response(exc.to_problem(request.path))
    except PlaybackError as exc:
        status, code = exc.status, exc.code
        _record_error(request, exc)
        headers: dict[str, str] = {}
        retry_after = exc.extensions.get("retryAfter")
        if isinstance(retry_after, int | float) and retry_after > 0:
            headers["Retry-After"] = str(max(1, round(retry_after)))
        return problem_response(exc.to_problem(request.path), headers)
    except web.HTTPRequestEntityTooLarge:
        mapped = RequestTooLarge(
            f"request body exceeds {request.app[CONFIG_KEY].max_body_bytes} bytes"
        )
        status, code = mapped.status, mapped.code
        _record_error(request, mapped)
        return problem_response(mapped.to_problem(request.path))
    except web.HTTPException as exc:
        if exc.status < 400:
            status, code = exc.status, "ok"
            raise
        code, title = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
        status = exc.status
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return problem_response(
            Problem(code=code, status=exc.status, title=title, detail=title, instance=request.path),
            headers,
        )
    except asyncio.CancelledError:
        status, code = 499, "client_closed"
        raise
    except Exception:
        log.exception("unexpected error", extra={"videoId": request.get(VIDEO_RKEY)})
        err = PlaybackError("unexpected error; see the broker log")
        _record_error(request, err)
        return problem_response(err.to_problem(request.path))
    finally:
        metrics.REQUESTS.observe(
            route, metrics.outcome_of(status), code, time.perf_counter() - started
        )


# ---------------------------------------------------------------------------------- handlers


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[CONFIG_KEY].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(f"request body exceeds {limit} bytes")
    body = await request.read()
    if not body:
        raise BadRequest("empty request body")
    return body


def _forwarded(request: web.Request) -> dict[str, str]:
    return {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}


async def license_json(request: web.Request) -> web.Response:
    body = await _read_body(request)
    try:
        doc = json_loads(body)
    except ValueError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    video_id = doc.get("videoId")
    if not isinstance(video_id, str) or not video_id:
        raise BadRequest("'videoId' (string) is required")
    request[VIDEO_RKEY] = video_id
    raw_ks = doc.get("keySystem")
    key_system: KeySystem | None = None
    if raw_ks is not None:
        if not isinstance(raw_ks, str):
            raise BadRequest("'keySystem' must be a string")
        key_system = parse_key_system(raw_ks)
        request[KEY_SYSTEM_RKEY] = key_system.value
    encoded = doc.get("licenseRequest")
    if not isinstance(encoded, str) or not encoded:
        raise BadRequest("'licenseRequest' (base64 string) is required")
    try:
        challenge = b64decode_lenient(encoded)
    except ValueError:
        raise MalformedChallenge("'licenseRequest' is not valid base64") from None
    issued = await request.app[SERVICE_KEY].issue(
        Identity.from_headers(request.headers),
        video_id,
        key_system,
        challenge,
        request_headers=_forwarded(request),
    )
    request[KEY_SYSTEM_RKEY] = issued.key_system
    doc_out = {
        "license": b64(issued.body),
        "licenseId": issued.license_id,
        "expiresAt": rfc3339_seconds(issued.expires_at),
        "keySystem": issued.key_system,
    }
    return web.Response(
        body=json.dumps(doc_out, separators=(",", ":")).encode(),
        headers={
            "Content-Type": "application/json",
            "Cache-Control": "no-store",
            **_license_headers(issued),
        },
    )


def _license_headers(issued: IssuedLicense) -> dict[str, str]:
    return {
        LICENSE_ID_HEADER: issued.license_id,
        LICENSE_EXPIRES_HEADER: rfc3339_seconds(issued.expires_at),
    }


async def license_native(request: web.Request) -> web.Response:
    request[NATIVE_RKEY] = True
    key_system = parse_key_system(request.match_info["keySystem"])
    request[KEY_SYSTEM_RKEY] = key_system.value
    video_id = request.query.get("videoId") or request.headers.get("x-playback-video")
    if not video_id:
        raise BadRequest("the videoId query parameter is required")
    request[VIDEO_RKEY] = video_id
    challenge = await _read_body(request)
    issued = await request.app[SERVICE_KEY].issue(
        Identity.from_headers(request.headers),
        video_id,
        key_system,
        challenge,
        request_headers=_forwarded(request),
    )
    return web.Response(
        body=issued.native_body,
        headers={
            "Content-Type": issued.native_type,
            "Cache-Control": "no-store",
            **_license_headers(issued),
        },
    )


async def certificate(request: web.Request) -> web.Response:
    key_system = parse_key_system(request.match_info["keySystem"])
    request[KEY_SYSTEM_RKEY] = key_system.value
    cert = await request.app[SERVICE_KEY].certificate(key_system)
    return web.Response(
        body=cert,
        headers={"Content-Type": "application/octet-stream", "Cache-Control": "max-age=3600"},
    )


async def hls_key(request: web.Request) -> web.Response:
    video_id = request.match_info["videoId"]
    request[VIDEO_RKEY] = video_id
    request[KEY_SYSTEM_RKEY] = "hls-aes-128"
    key = await request.app[SERVICE_KEY].hls_key(
        Identity.from_headers(request.headers), video_id, request.match_info["kid"]
    )
    return web.Response(
        body=key,
        headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"},
    )


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    service = request.app.get(SERVICE_KEY)
    if service is None or state.get("draining"):
        return web.json_response({"status": "draining"}, status=503)
    now = time.monotonic()
    probe = state.get("probe")
    if probe is None or now - probe[0] > HEALTH_PROBE_INTERVAL:
        key_ok, cache_ok = await asyncio.gather(service.keys.ping(), service.cache.ping())
        probe = state["probe"] = (now, key_ok, cache_ok)
    _, key_ok, cache_ok = probe
    keys = service.keys
    doc = {
        "status": "ok" if key_ok and cache_ok else "degraded",
        "keyStore": {
            "reachable": key_ok,
            "cachedVideos": len(keys) if isinstance(keys, CachedKeyStore) else None,
            "lastRefreshError": getattr(keys, "last_refresh_error", None),
        },
        "licenseCache": {"reachable": cache_ok, "backend": state.get("cache_backend")},
        "providers": {
            ks.value: provider.breaker_state() for ks, provider in service.providers.items()
        },
    }
    return web.json_response(doc)


async def liveness(request: web.Request) -> web.Response:
    """The process answers; dependencies are not consulted (that is ``/health``)."""
    return web.json_response({"status": "alive"})


# ---------------------------------------------------------------------------------- lifecycle


async def _load_credentials(config: BrokerConfig, vault: VaultKeyStore) -> BrokerConfig:
    if not config.vault_provider_path:
        return config
    try:
        secret = await vault.read_secret(config.vault_provider_path)
    except KeyStoreUnavailable as exc:
        log.warning("provider credentials not read from Vault: %s", exc.detail)
        return config
    if not secret:
        return config
    return config.with_credentials({k: str(v) for k, v in secret.items()})


def _source_store(config: BrokerConfig) -> tuple[KeyStore, VaultKeyStore | None]:
    if config.vault_addr:
        vault = VaultKeyStore(
            config.vault_addr,
            config.vault_token,
            mount=config.vault_mount,
            path_template=config.vault_key_path,
            timeout=config.vault_timeout,
        )
        return vault, vault
    if config.keys_file is not None:
        return MemoryKeyStore.from_file(config.keys_file), None
    return MemoryKeyStore.from_document(DEMO_KEYS), None


def _resources(
    key_store: KeyStore | None,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG_KEY]
        if key_store is not None:
            source, vault = key_store, None
        else:
            source, vault = _source_store(config)
        if vault is not None:
            config = await _load_credentials(config, vault)
        keys = CachedKeyStore(
            source,
            ttl=config.key_cache_ttl,
            max_stale=config.key_cache_max_stale,
            negative_ttl=config.key_cache_negative_ttl,
            max_videos=config.key_cache_max_videos,
        )
        redis = None
        cache: LicenseCache
        if config.redis is not None:
            redis = redis_client(
                config.redis,
                max_connections=config.redis_max_connections,
                timeout=config.redis_timeout,
            )
            guard = RedisGuard()
            shared = RedisLicenseCache(redis.client, guard)
            cache = shared
            if config.license_cache_l1_ttl > 0:
                cache = TieredLicenseCache(
                    MemoryLicenseCache(config.license_cache_max_entries),
                    shared,
                    config.license_cache_l1_ttl,
                )
            app[STATE_KEY]["cache_backend"] = "redis"
        else:
            cache = MemoryLicenseCache(config.license_cache_max_entries)
            app[STATE_KEY]["cache_backend"] = "memory"
        providers = build_providers(config)
        try:
            await asyncio.gather(*(p.start() for p in providers.values()))
            app[SERVICE_KEY] = LicenseService(
                config,
                keys=keys,
                cache=cache,
                providers=providers,
                events=app[EVENTS_KEY],
            )
            log.info(
                "license broker ready: key store %s, cache %s, providers %s",
                "vault" if vault else "memory",
                app[STATE_KEY]["cache_backend"],
                ",".join(ks.value for ks in providers) or "none",
            )
            yield
        finally:
            await asyncio.gather(*(p.close() for p in providers.values()), return_exceptions=True)
            await cache.close()
            await keys.close()
            if redis is not None:
                await redis.aclose()

    return ctx


async def _on_shutdown(app: web.Application) -> None:
    app[STATE_KEY]["draining"] = True


def build_app(
    config: BrokerConfig,
    *,
    events: EventSink | None = None,
    key_store: KeyStore | None = None,
) -> web.Application:
    """The broker application. ``key_store`` replaces the configured source (tests)."""
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[problem_middleware],
    )
    app[CONFIG_KEY] = config
    app[EVENTS_KEY] = events if events is not None else NullSink()
    app[STATE_KEY] = {"draining": False}
    app.cleanup_ctx.append(_resources(key_store))
    app.on_shutdown.append(_on_shutdown)
    app.router.add_post("/drm/license", license_json)
    app.router.add_post("/drm/license/{keySystem}", license_native)
    app.router.add_get("/drm/certificate/{keySystem}", certificate, allow_head=False)
    app.router.add_get("/drm/key/{videoId}/{kid}", hls_key, allow_head=False)
    app.router.add_get("/health", health, allow_head=False)
    app.router.add_get("/health/live", liveness, allow_head=False)
    app.router.add_get("/metrics", metrics_handler, allow_head=False)
    return app


async def serve(config: BrokerConfig, events: EventSink | None = None) -> None:
    """Run the broker until cancelled; on cancel: health 503, stop accepting, drain, close."""
    app = build_app(config, events=events)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.shutdown_grace)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_address=True)
    await site.start()
    log.info("license broker listening on %s:%d", config.host, config.port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


__all__ = ["SERVICE_KEY", "build_app", "serve"]
