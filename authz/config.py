"""Configuration of the authz service, read once from the environment.

| variable | default | meaning |
| --- | --- | --- |
| AUTHZ_GRPC_ADDR | 127.0.0.1:9001 | ext_authz + rate limit service gRPC listen address |
| GRPC_TRANSPORT | lean | `lean` (`playback_drm.h2grpc`, on the event loop) or `grpcio` |
| AUTHZ_HTTP_ADDR | 127.0.0.1:9011 | /health, /health/live, /metrics |
| JWKS_URL | (required) | Auth service JWKS document |
| JWT_ISSUER | (required) | expected `iss` |
| JWT_AUDIENCE | playback | expected `aud` |
| JWT_ALGORITHMS | RS256,ES256,EdDSA | allowlist; HS256 only with JWT_HS256_SECRET |
| JWT_HS256_SECRET | (unset) | enables HS256 with this shared secret (>= 32 bytes) |
| JWT_LEEWAY_SECONDS | 30 | clock skew allowed on exp/nbf/iat |
| JWT_MAX_BYTES | 8192 | longer tokens are rejected before any parsing |
| JWKS_REFRESH_SECONDS | 300 | background JWKS refresh period |
| JWKS_MIN_REFRESH_SECONDS | 10 | at most one refresh per this period on an unknown `kid` |
| BILLING_URL | (required) | Billing service base URL |
| BILLING_TIMEOUT_SECONDS | 0.3 | per request (under Envoy's 0.5 s for authz), then 503 |
| ENTITLEMENT_TTL_SECONDS | 60 | cache lifetime of a grant |
| ENTITLEMENT_DENY_TTL_SECONDS | 10 | cache lifetime of a denial |
| REDIS_URL | (unset) | entitlements, rate limits, sessions; in memory when unset (redisconn) |
| URL_SIGNING_KEYS | (required) | `kid:base64secret,...` keys that verify signed media URLs |
| RATE_LIMIT_PER_USER | 200 | requests per window per user (in the check, or the rate limit API) |
| RATE_LIMIT_WINDOW_SECONDS | 1 | sliding window length |
| STREAM_LIMITS | premium=4,standard=2,basic=2,default=1 | streams per plan (0: no limit) |
| STREAM_IDLE_SECONDS | 60 | a slot is freed this long after the session's last sign of life |
| SESSION_IDLE_SECONDS | 1800 | a playback session ends this long after its last sign of life |
| SESSION_CHECK_SECONDS | 5 | a replica asks the session store about a session at most this often |
| LOG_LEVEL | INFO | |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from authz.sessions import StreamLimits
from playback_drm.h2grpc import check_transport
from playback_drm.redisconn import RedisTarget, env_redis
from playback_drm.settings import (
    ConfigError,
    env_addr,
    env_float,
    env_int,
    env_list,
    env_opt,
    env_str,
)

DEFAULT_STREAM_LIMITS = "premium=4,standard=2,basic=2,default=1"
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"})


@dataclass(frozen=True, slots=True)
class AuthzConfig:
    grpc_host: str
    grpc_port: int
    grpc_transport: str
    http_host: str
    http_port: int
    jwks_url: str
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    hs256_secret: bytes | None
    leeway: int
    max_token_bytes: int
    jwks_refresh: float
    jwks_min_refresh: float
    billing_url: str
    billing_timeout: float
    entitlement_ttl: int
    entitlement_deny_ttl: int
    redis: RedisTarget | None
    url_signing_keys: str
    rate_limit_per_user: int
    rate_limit_window: float
    log_level: str
    stream_limits: StreamLimits = field(
        default_factory=lambda: StreamLimits.parse(DEFAULT_STREAM_LIMITS)
    )
    stream_idle: int = 60
    session_idle: int = 1800
    session_check: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuthzConfig:
        grpc_host, grpc_port = env_addr(env, "AUTHZ_GRPC_ADDR", "127.0.0.1:9001")
        http_host, http_port = env_addr(env, "AUTHZ_HTTP_ADDR", "127.0.0.1:9011")
        algorithms = env_list(env, "JWT_ALGORITHMS", ("RS256", "ES256", "EdDSA"))
        secret = env_opt(env, "JWT_HS256_SECRET")
        for alg in algorithms:
            if alg == "HS256":
                if secret is None:
                    raise ConfigError("JWT_ALGORITHMS lists HS256 but JWT_HS256_SECRET is not set")
            elif alg not in ASYMMETRIC_ALGORITHMS:
                raise ConfigError(f"JWT_ALGORITHMS: unsupported algorithm {alg!r}")
        if secret is not None and len(secret.encode()) < 32:
            raise ConfigError("JWT_HS256_SECRET must be at least 32 bytes")
        try:
            limits = StreamLimits.parse(env_str(env, "STREAM_LIMITS", DEFAULT_STREAM_LIMITS))
        except ValueError as exc:
            raise ConfigError(f"STREAM_LIMITS: {exc}") from None
        stream_idle = env_int(env, "STREAM_IDLE_SECONDS", 60, minimum=1)
        session_idle = env_int(env, "SESSION_IDLE_SECONDS", 1800, minimum=1)
        session_check = env_float(env, "SESSION_CHECK_SECONDS", 5.0, minimum=0.0)
        if session_idle < stream_idle:
            raise ConfigError("SESSION_IDLE_SECONDS must be at least STREAM_IDLE_SECONDS")
        if session_check * 2 > stream_idle:
            raise ConfigError("SESSION_CHECK_SECONDS must be at most half of STREAM_IDLE_SECONDS")
        return cls(
            grpc_host=grpc_host,
            grpc_port=grpc_port,
            grpc_transport=check_transport(env_str(env, "GRPC_TRANSPORT", "lean")),
            http_host=http_host,
            http_port=http_port,
            jwks_url=env_str(env, "JWKS_URL"),
            issuer=env_str(env, "JWT_ISSUER"),
            audience=env_str(env, "JWT_AUDIENCE", "playback"),
            algorithms=algorithms,
            hs256_secret=secret.encode() if secret and "HS256" in algorithms else None,
            leeway=env_int(env, "JWT_LEEWAY_SECONDS", 30, minimum=0),
            max_token_bytes=env_int(env, "JWT_MAX_BYTES", 8192, minimum=256),
            jwks_refresh=env_float(env, "JWKS_REFRESH_SECONDS", 300.0, minimum=1.0),
            jwks_min_refresh=env_float(env, "JWKS_MIN_REFRESH_SECONDS", 10.0, minimum=0.0),
            billing_url=env_str(env, "BILLING_URL").rstrip("/"),
            billing_timeout=env_float(env, "BILLING_TIMEOUT_SECONDS", 0.3, minimum=0.01),
            entitlement_ttl=env_int(env, "ENTITLEMENT_TTL_SECONDS", 60, minimum=1),
            entitlement_deny_ttl=env_int(env, "ENTITLEMENT_DENY_TTL_SECONDS", 10, minimum=1),
            redis=env_redis(env, "REDIS_URL"),
            url_signing_keys=env_str(env, "URL_SIGNING_KEYS"),
            rate_limit_per_user=env_int(env, "RATE_LIMIT_PER_USER", 200, minimum=1),
            rate_limit_window=env_float(env, "RATE_LIMIT_WINDOW_SECONDS", 1.0, minimum=0.01),
            log_level=env_str(env, "LOG_LEVEL", "INFO"),
            stream_limits=limits,
            stream_idle=stream_idle,
            session_idle=session_idle,
            session_check=session_check,
        )
