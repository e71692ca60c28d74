"""The Envoy configuration, built from typed settings.

One builder serves every deployment: ``profile="local"`` (the ``make run`` stack: a gateway
listener that plays the API gateway and forwards over mutual TLS to the sidecar listener) and
``profile="k8s"`` (the pod's sidecar: mTLS listener, plain probe listener, stats listener).
The files in ``envoy/`` are rendered by ``playback-drm envoy-config`` and checked by the tests
(``envoy --mode validate`` and byte equality with a fresh rendering).

Sidecar HTTP filter chain, in order (see docs/ARCHITECTURE.md):
header_mutation (strip forged identity headers) -> cors -> local_ratelimit per IP -> rbac
(per route) -> ext_authz -> per-user limit (rate limit service, or local_ratelimit) -> ext_proc
(manifest routes only) -> router.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from authz.decision import IDENTITY_HEADERS, MODE_JWT, MODE_SIGNED_URL
from playback_drm.problem import PROBLEM_CONTENT_TYPE, Problem

Profile = Literal["local", "k8s"]

T_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
T_TLS_DOWN = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
T_TLS_UP = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
T_HTTP_OPTS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
T_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
T_EXT_AUTHZ_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
)
T_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
T_EXT_PROC_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
T_FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
T_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
T_RBAC_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
T_LOCAL_RL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
T_RL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
T_HEADER_MUTATION = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
)
T_CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
T_CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
T_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
T_CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
T_STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
T_REQ_WITHOUT_QUERY = (
    "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"
)
T_OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
T_HEAP_MONITOR = (
    "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
)
T_CONN_MONITOR = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
    "DownstreamConnectionsConfig"
)

MANIFEST_ROUTE_REGEX = r"^/playback/([A-Za-z0-9_.-]+)/manifest$"
MEDIA_MANIFEST_REGEX = r"^/media/[^/]+/.+[.](m3u8|mpd)$"


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str
    key: str
    ca: str


@dataclass(frozen=True, slots=True)
class EnvoySettings:
    """Everything that differs between deployments. Defaults are the local stack's."""

    profile: Profile = "local"
    listen_host: str = "127.0.0.1"
    gateway_port: int = 8080
    sidecar_port: int = 8443
    probe_port: int = 8081
    stats_port: int = 9902
    admin_port: int = 9901
    authz_grpc: Endpoint = Endpoint("127.0.0.1", 9001)
    authz_http: Endpoint = Endpoint("127.0.0.1", 9011)
    extproc_grpc: Endpoint = Endpoint("127.0.0.1", 9002)
    broker: Endpoint = Endpoint("127.0.0.1", 9003)
    origin: Endpoint = Endpoint("127.0.0.1", 9104)
    origin_tls: bool = False
    origin_host_header: str | None = None
    demo_site: Endpoint | None = Endpoint("127.0.0.1", 9104)
    sidecar_tls: TlsFiles = TlsFiles("/etc/envoy/tls/tls.crt", "/etc/envoy/tls/tls.key", "")
    client_ca: str = "/etc/envoy/tls/ca.crt"
    gateway_client_tls: TlsFiles | None = None  # local profile: the gateway's client identity
    sidecar_sni: str = "sidecar.playback-drm.local"
    license_principals: tuple[str, ...] = ("spiffe://playback-drm.local/ns/edge/sa/gateway",)
    license_peer_cidrs: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    license_client_cidrs: tuple[str, ...] = ("0.0.0.0/0", "::/0")
    per_ip_rps: int = 1000
    per_ip_burst: int = 1000
    per_user_rps: int = 200
    per_user_burst: int = 100
    use_rate_limit_service: bool = False
    rate_limit_service: Endpoint | None = None  # defaults to authz_grpc
    hls_path_template: str = "{videoId}/master.m3u8"
    dash_path_template: str = "{videoId}/manifest.mpd"
    cors_origins: tuple[str, ...] = ("*",)
    authz_timeout_ms: int = 500
    extproc_timeout_ms: int = 2000
    max_heap_bytes: int = 512 * 1024 * 1024
    max_connections: int = 50_000
    access_log: bool = True
    otlp_collector: Endpoint | None = None  # OpenTelemetry traces (OTLP/gRPC); None: off
    trace_sampling_percent: float = 100.0
    extra_headers_to_strip: tuple[str, ...] = field(default=())


def _socket(ep: Endpoint) -> dict[str, Any]:
    return {"socket_address": {"address": ep.host, "port_value": ep.port}}


def _template_to_rewrite(template: str) -> str:
    """``{videoId}/master.m3u8`` -> ``/\\1/master.m3u8`` for a regex_rewrite substitution."""
    if "{videoId}" not in template:
        raise ValueError("origin path template must contain {videoId}")
    cleaned = template.lstrip("/")
    if re.search(r"[\\\s?#]", cleaned):
        raise ValueError(f"origin path template has forbidden characters: {template!r}")
    return "/" + cleaned.replace("{videoId}", r"\1")


def _problem(code: str, status: int, title: str, detail: str) -> str:
    return Problem(code=code, status=status, title=title, detail=detail).to_json().decode()


def _mapper(
    filter_: dict[str, Any], status: int, code: str, title: str, detail: str, **headers: str
) -> dict[str, Any]:
    add = [
        {
            "header": {"key": "content-type", "value": PROBLEM_CONTENT_TYPE},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        },
        {
            "header": {"key": "cache-control", "value": "no-store"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        },
    ]
    for key, value in headers.items():
        add.append(
            {
                "header": {"key": key.replace("_", "-"), "value": value},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        )
    return {
        "filter": filter_,
        "status_code": status,
        "body": {"inline_string": _problem(code, status, title, detail)},
        "headers_to_add": add,
    }


def _cel(expression: str) -> dict[str, Any]:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {"@type": T_CEL_FILTER, "expression": expression},
        }
    }


def local_reply_config() -> dict[str, Any]:
    """Every reply Envoy makes itself becomes problem+json with a stable code.

    Denials from authz already carry their own problem body and are left untouched (no mapper
    matches ``ext_authz_denied``).
    """
    return {
        "mappers": [
            _mapper(
                _cel("response.code_details.startsWith('ext_authz_error')"),
                503,
                "authz_unavailable",
                "Authorization service unavailable",
                "the authorization service did not answer; access is denied until it does",
            ),
            _mapper(
                _cel("response.code_details.startsWith('rbac_access_denied')"),
                403,
                "client_not_allowed",
                "Client not allowed",
                "this route requires an allowed client certificate and source address",
            ),
            _mapper(
                # The rate limit filter flags RL before its reply; the local rate limit filter
                # flags it only after, so its reply is matched by its details.
                {
                    "or_filter": {
                        "filters": [
                            {"response_flag_filter": {"flags": ["RL"]}},
                            _cel("response.code_details == 'local_rate_limited'"),
                        ]
                    }
                },
                429,
                "rate_limited",
                "Too many requests",
                "request rate limit reached; retry later",
                retry_after="1",
            ),
            _mapper(
                _cel("response.code_details.startsWith('ext_proc_error')"),
                503,
                "manifest_signer_unavailable",
                "Manifest signer unavailable",
                "the manifest could not be signed; it is not served unsigned",
            ),
            _mapper(
                {"response_flag_filter": {"flags": ["UT"]}},
                504,
                "upstream_timeout",
                "Upstream timeout",
                "the upstream did not answer in time",
            ),
            _mapper(
                {"response_flag_filter": {"flags": ["UF", "UH", "URX", "UO", "UC", "NC"]}},
                503,
                "upstream_unavailable",
                "Upstream unavailable",
                "the upstream is unavailable",
            ),
            _mapper(
                {"response_flag_filter": {"flags": ["NR"]}},
                404,
                "not_found",
                "Not found",
                "no such route",
            ),
        ]
    }


def _access_log() -> list[dict[str, Any]]:
    # Never the query string: viewer tokens and URL signatures travel there.
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": T_STDOUT_LOG,
                "log_format": {
                    "json_format": {
                        "time": "%START_TIME%",
                        "level": "info",
                        "service": "envoy",
                        "requestId": "%REQ(X-REQUEST-ID)%",
                        "traceparent": "%REQ(TRACEPARENT)%",
                        "method": "%REQ(:METHOD)%",
                        "path": "%REQ_WITHOUT_QUERY(:PATH)%",
                        "status": "%RESPONSE_CODE%",
                        "details": "%RESPONSE_CODE_DETAILS%",
                        "flags": "%RESPONSE_FLAGS%",
                        "durationMs": "%DURATION%",
                        "upstreamMs": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
                        "userId": "%REQ(X-PLAYBACK-USER)%",
                        "videoId": "%REQ(X-PLAYBACK-VIDEO)%",
                        "bytesSent": "%BYTES_SENT%",
                    },
                    "formatters": [
                        {
                            "name": "envoy.formatter.req_without_query",
                            "typed_config": {"@type": T_REQ_WITHOUT_QUERY},
                        }
                    ],
                },
            },
        }
    ]


def _tracing(s: EnvoySettings, service: str) -> dict[str, Any]:
    return {
        "random_sampling": {"value": s.trace_sampling_percent},
        "spawn_upstream_span": True,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": T_OTEL,
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": "otel_collector"},
                    "timeout": "0.25s",
                },
                "service_name": service,
            },
        },
    }


def _hcm_common(stat_prefix: str) -> dict[str, Any]:
    return {
        "@type": T_HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "common_http_protocol_options": {
            "idle_timeout": "300s",
            "headers_with_underscores_action": "REJECT_REQUEST",
            "max_headers_count": 100,
        },
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        "max_request_headers_kb": 32,
        "stream_idle_timeout": "30s",
        "request_timeout": "60s",
        "request_headers_timeout": "10s",
        "generate_request_id": True,
        "preserve_external_request_id": False,
        "server_header_transformation": "PASS_THROUGH",
        "local_reply_config": local_reply_config(),
    }


def _disable_authz() -> dict[str, Any]:
    return {"envoy.filters.http.ext_authz": {"@type": T_EXT_AUTHZ_ROUTE, "disabled": True}}


def _authz_mode(mode: str, *, with_body: bool = False) -> dict[str, Any]:
    settings: dict[str, Any] = {"context_extensions": {"mode": mode}}
    if with_body:
        settings["with_request_body"] = {
            "max_request_bytes": 65536,
            "allow_partial_message": True,
            "pack_as_bytes": True,
        }
    return {"@type": T_EXT_AUTHZ_ROUTE, "check_settings": settings}


# What extproc needs to know about a manifest request, sent as CEL attributes with the single
# response-body message (both header phases are skipped: one gRPC message per manifest).
EXTPROC_ATTRIBUTES = (
    "request.path",
    "response.code",
    "source.address",
    *(
        f"request.headers['{h}']"
        for h in (
            "x-envoy-original-path",  # request.path is already rewritten by the route
            "x-playback-user",
            "x-playback-video",
            "x-playback-session",
            "x-request-id",
            "traceparent",
        )
    ),
)
# One message per manifest: the buffered body, with the request's facts as attributes. Static
# header changes live on the routes (manifest_encoding).
EXTPROC_PROCESSING_MODE = {
    "request_header_mode": "SKIP",
    "response_header_mode": "SKIP",
    "request_body_mode": "NONE",
    "response_body_mode": "BUFFERED",
    "request_trailer_mode": "SKIP",
    "response_trailer_mode": "SKIP",
}


def _enable_extproc(*, request_headers: bool = False) -> dict[str, Any]:
    # The filter is disabled at the HCM level; FilterConfig{disabled: false} turns it on here.
    overrides: dict[str, Any] = {"failure_mode_allow": False}
    if not request_headers:
        # per-route overrides replace the filter's attribute list: name them here too
        overrides["response_attributes"] = list(EXTPROC_ATTRIBUTES)
    if request_headers:
        # the JSON form is answered at request headers, as an immediate response
        overrides["processing_mode"] = {
            "request_header_mode": "SEND",
            "response_header_mode": "SKIP",
            "request_body_mode": "NONE",
            "response_body_mode": "NONE",
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        }
    return {
        "@type": T_FILTER_CONFIG,
        "disabled": False,
        "config": {"@type": T_EXT_PROC_ROUTE, "overrides": overrides},
    }


def _license_rbac(s: EnvoySettings) -> dict[str, Any]:
    principal = {
        "and_ids": {
            "ids": [
                {
                    "or_ids": {
                        "ids": [
                            {"authenticated": {"principal_name": {"exact": p}}}
                            for p in s.license_principals
                        ]
                    }
                },
                {"or_ids": {"ids": [{"direct_remote_ip": _cidr(c)} for c in s.license_peer_cidrs]}},
                {"or_ids": {"ids": [{"remote_ip": _cidr(c)} for c in s.license_client_cidrs]}},
            ]
        }
    }
    return {
        "@type": T_RBAC_ROUTE,
        "rbac": {
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "license-clients": {"permissions": [{"any": True}], "principals": [principal]}
                },
            }
        },
    }


def _cidr(value: str) -> dict[str, Any]:
    prefix, _, length = value.partition("/")
    if not length:
        length = "128" if ":" in prefix else "32"
    return {"address_prefix": prefix, "prefix_len": int(length)}


def _sidecar_routes(s: EnvoySettings) -> list[dict[str, Any]]:
    hls_rewrite = _template_to_rewrite(s.hls_path_template)
    dash_rewrite = _template_to_rewrite(s.dash_path_template)
    origin_route: dict[str, Any] = {"cluster": "origin", "timeout": "15s"}
    if s.origin_host_header:
        origin_route["host_rewrite_literal"] = s.origin_host_header
    # The signer handles gzip and deflate (and answers in the same encoding), but identity is
    # cheapest; never let the origin pick br or zstd.
    manifest_encoding = [
        {
            "header": {"key": "accept-encoding", "value": "identity, gzip;q=0.5, deflate;q=0.5"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
    # Signed manifests are per viewer and expire: never cached, never revalidated against the
    # origin's validators (Envoy sends the rewritten body chunked).
    manifest_response_headers = {
        "response_headers_to_add": [
            {
                "header": {"key": "cache-control", "value": "private, no-store"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "response_headers_to_remove": ["etag", "last-modified", "content-length"],
    }
    manifest_filters = {
        "envoy.filters.http.ext_authz": _authz_mode(MODE_JWT),
        "envoy.filters.http.ext_proc": _enable_extproc(),
    }
    return [
        {
            "name": "health",
            "match": {"path": "/health"},
            "route": {"cluster": "authz_http", "timeout": "2s"},
            "typed_per_filter_config": _disable_authz(),
        },
        {
            "name": "health_live",
            "match": {"path": "/health/live"},
            "direct_response": {"status": 200, "body": {"inline_string": '{"status":"ok"}'}},
            "response_headers_to_add": [
                {"header": {"key": "content-type", "value": "application/json"}}
            ],
            "typed_per_filter_config": _disable_authz(),
        },
        {
            "name": "manifest_url_json",
            "request_headers_to_add": manifest_encoding,
            "match": {
                "safe_regex": {"regex": MANIFEST_ROUTE_REGEX},
                "headers": [
                    {
                        "name": "accept",
                        "string_match": {"contains": "application/json"},
                    }
                ],
            },
            # extproc answers with an immediate response at request headers. The route needs a
            # real route entry all the same: the rate limit filter skips direct responses.
            "route": {
                **origin_route,
                "regex_rewrite": {
                    "pattern": {"regex": MANIFEST_ROUTE_REGEX},
                    "substitution": hls_rewrite,
                },
            },
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": _authz_mode(MODE_JWT),
                "envoy.filters.http.ext_proc": _enable_extproc(request_headers=True),
            },
        },
        {
            "name": "manifest_dash",
            "request_headers_to_add": manifest_encoding,
            **manifest_response_headers,
            "match": {
                "safe_regex": {"regex": MANIFEST_ROUTE_REGEX},
                "query_parameters": [{"name": "format", "string_match": {"exact": "dash"}}],
            },
            "route": {
                **origin_route,
                "regex_rewrite": {
                    "pattern": {"regex": MANIFEST_ROUTE_REGEX},
                    "substitution": dash_rewrite,
                },
            },
            "typed_per_filter_config": manifest_filters,
        },
        {
            "name": "manifest_hls",
            "request_headers_to_add": manifest_encoding,
            **manifest_response_headers,
            "match": {"safe_regex": {"regex": MANIFEST_ROUTE_REGEX}},
            "route": {
                **origin_route,
                "regex_rewrite": {
                    "pattern": {"regex": MANIFEST_ROUTE_REGEX},
                    "substitution": hls_rewrite,
                },
            },
            "typed_per_filter_config": manifest_filters,
        },
        {
            "name": "media_manifest",
            "request_headers_to_add": manifest_encoding,
            **manifest_response_headers,
            "match": {"safe_regex": {"regex": MEDIA_MANIFEST_REGEX}},
            "route": {
                **origin_route,
                "regex_rewrite": {"pattern": {"regex": "^/media/"}, "substitution": "/"},
            },
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": _authz_mode(MODE_SIGNED_URL),
                "envoy.filters.http.ext_proc": _enable_extproc(),
            },
        },
        {
            "name": "media",
            "match": {"prefix": "/media/"},
            "route": {**origin_route, "prefix_rewrite": "/"},
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": _authz_mode(MODE_SIGNED_URL)
            },
        },
        {
            "name": "hls_key",
            "match": {"prefix": "/drm/key/"},
            "route": {"cluster": "license_broker", "timeout": "5s"},
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": _authz_mode(MODE_SIGNED_URL)
            },
        },
        {
            "name": "drm_certificate",
            "match": {"prefix": "/drm/certificate/"},
            "route": {"cluster": "license_broker", "timeout": "5s"},
            "typed_per_filter_config": _disable_authz(),
        },
        {
            "name": "license",
            "match": {"prefix": "/drm/license"},
            "route": {"cluster": "license_broker", "timeout": "10s"},
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": _authz_mode(MODE_JWT, with_body=True),
                "envoy.filters.http.rbac": _license_rbac(s),
            },
        },
        {
            "name": "not_found",
            "match": {"prefix": "/"},
            "direct_response": {
                "status": 404,
                "body": {"inline_string": _problem("not_found", 404, "Not found", "no such route")},
            },
            "response_headers_to_add": [
                {"header": {"key": "content-type", "value": PROBLEM_CONTENT_TYPE}}
            ],
            "typed_per_filter_config": _disable_authz(),
        },
    ]


def _per_user_limit_filter(s: EnvoySettings) -> dict[str, Any]:
    action = {
        "actions": [
            {
                "request_headers": {
                    "header_name": "x-playback-user",
                    "descriptor_key": "user",
                    "skip_if_absent": True,
                }
            }
        ]
    }
    if s.use_rate_limit_service:
        return {
            "name": "envoy.filters.http.ratelimit",
            "typed_config": {
                "@type": T_RL,
                "domain": "playback",
                "stage": 0,
                # fails open (availability over a global limit), so give a burst time to be
                # counted: the authz Redis pool queues commands up to 0.2 s
                "timeout": "0.25s",
                "failure_mode_deny": False,
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                "rate_limited_as_resource_exhausted": False,
                "rate_limit_service": {
                    "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}},
                    "transport_api_version": "V3",
                },
                "rate_limits": [action],
            },
        }
    # no x-ratelimit-* headers here: requests without a user would report the catch-all
    # bucket; 429s carry Retry-After (the rate limit service adds the rest)
    return _local_limit("per_user", "user", s.per_user_rps, s.per_user_burst, action)


def _local_limit(
    stat_prefix: str, descriptor_key: str, rps: int, burst: int, action: dict[str, Any]
) -> dict[str, Any]:
    """A local token bucket per descriptor value (dynamic descriptors: one bucket per user or
    address), with a catch-all bucket that never limits."""
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": T_LOCAL_RL,
            "stat_prefix": stat_prefix,
            "token_bucket": {
                "max_tokens": 1_000_000,
                "tokens_per_fill": 1_000_000,
                "fill_interval": "1s",
            },
            "always_consume_default_token_bucket": False,
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "response_headers_to_add": [
                {
                    "header": {"key": "retry-after", "value": "1"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
            "descriptors": [
                {
                    "entries": [{"key": descriptor_key}],
                    "token_bucket": {
                        "max_tokens": burst,
                        "tokens_per_fill": rps,
                        "fill_interval": "1s",
                    },
                }
            ],
            "max_dynamic_descriptors": 100_000,
            "rate_limits": [action],
        },
    }


def _sidecar_filters(s: EnvoySettings) -> list[dict[str, Any]]:
    strip = [{"remove": h} for h in (*IDENTITY_HEADERS, *s.extra_headers_to_strip)]
    return [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": T_HEADER_MUTATION,
                "mutations": {"request_mutations": strip},
            },
        },
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": T_CORS}},
        _local_limit(
            "per_ip",
            "remote_address",
            s.per_ip_rps,
            s.per_ip_burst,
            {"actions": [{"remote_address": {}}]},
        ),
        {
            # Filter-level: allow all; the license route overrides with its strict policy.
            "name": "envoy.filters.http.rbac",
            "typed_config": {"@type": T_RBAC, "rules": {"action": "DENY", "policies": {}}},
        },
        {
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": T_EXT_AUTHZ,
                "transport_api_version": "V3",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": "authz"},
                    "timeout": f"{s.authz_timeout_ms / 1000}s",
                },
                "failure_mode_allow": False,
                "status_on_error": {"code": 503},
                "clear_route_cache": False,
                "include_peer_certificate": False,
                "allowed_headers": {
                    "patterns": [
                        {"exact": "authorization"},
                        {"exact": "content-type"},
                        {"exact": "traceparent"},
                        {"exact": "x-request-id"},
                    ]
                },
                "stat_prefix": "playback",
            },
        },
        _per_user_limit_filter(s),
        {
            "name": "envoy.filters.http.ext_proc",
            "disabled": True,  # enabled per route where there is a manifest to rewrite
            "typed_config": {
                "@type": T_EXT_PROC,
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": "extproc"},
                    "timeout": f"{s.extproc_timeout_ms / 1000}s",
                },
                "failure_mode_allow": False,
                "message_timeout": f"{s.extproc_timeout_ms / 1000}s",
                "processing_mode": dict(EXTPROC_PROCESSING_MODE),
                "response_attributes": list(EXTPROC_ATTRIBUTES),
                "allow_mode_override": False,
                "mutation_rules": {"allow_all_routing": False},
            },
        },
        {"name": "envoy.filters.http.router", "typed_config": {"@type": T_ROUTER}},
    ]


def _cors_policy(s: EnvoySettings) -> dict[str, Any]:
    origins = (
        [{"safe_regex": {"regex": ".*"}}]
        if "*" in s.cors_origins
        else [{"exact": o} for o in s.cors_origins]
    )
    return {
        "@type": T_CORS_POLICY,
        "allow_origin_string_match": origins,
        "allow_methods": "GET, POST, OPTIONS",
        "allow_headers": "authorization, content-type, soapaction, x-request-id",
        "expose_headers": "x-request-id, retry-after, x-ratelimit-limit, x-ratelimit-remaining",
        "max_age": "600",
        "allow_credentials": False,
    }


def _sidecar_listener(s: EnvoySettings) -> dict[str, Any]:
    hcm = _hcm_common("sidecar")
    hcm.update(
        {
            "use_remote_address": True,
            "xff_num_trusted_hops": 1,
            "forward_client_cert_details": "SANITIZE",
            "route_config": {
                "name": "sidecar",
                "virtual_hosts": [
                    {
                        "name": "sidecar",
                        "domains": ["*"],
                        "routes": _sidecar_routes(s),
                        "typed_per_filter_config": {"envoy.filters.http.cors": _cors_policy(s)},
                    }
                ],
            },
            "http_filters": _sidecar_filters(s),
        }
    )
    if s.access_log:
        hcm["access_log"] = _access_log()
    if s.otlp_collector is not None:
        hcm["tracing"] = _tracing(s, "playback-sidecar")
    return {
        "name": "sidecar",
        "address": {"socket_address": {"address": s.listen_host, "port_value": s.sidecar_port}},
        "per_connection_buffer_limit_bytes": 1048576,
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": T_TLS_DOWN,
                        "require_client_certificate": True,
                        "common_tls_context": {
                            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                            "alpn_protocols": ["h2", "http/1.1"],
                            "tls_certificates": [
                                {
                                    "certificate_chain": {"filename": s.sidecar_tls.cert},
                                    "private_key": {"filename": s.sidecar_tls.key},
                                }
                            ],
                            "validation_context": {"trusted_ca": {"filename": s.client_ca}},
                        },
                    },
                },
            }
        ],
    }


def _plain_listener(
    name: str, host: str, port: int, routes: list[dict[str, Any]], *, log: bool
) -> dict[str, Any]:
    hcm = _hcm_common(name)
    hcm.update(
        {
            "use_remote_address": True,
            "route_config": {
                "name": name,
                "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": T_ROUTER}}
            ],
        }
    )
    if log:
        hcm["access_log"] = _access_log()
    return {
        "name": name,
        "address": {"socket_address": {"address": host, "port_value": port}},
        "per_connection_buffer_limit_bytes": 1048576,
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _gateway_listener(s: EnvoySettings) -> dict[str, Any]:
    routes: list[dict[str, Any]] = []
    if s.demo_site is not None:
        routes.append(
            {
                "match": {"prefix": "/demo/"},
                "route": {"cluster": "demo_site", "timeout": "30s", "prefix_rewrite": "/_demo/"},
            }
        )
        routes.append({"match": {"path": "/"}, "redirect": {"path_redirect": "/demo/"}})
    routes.append({"match": {"prefix": "/"}, "route": {"cluster": "sidecar", "timeout": "60s"}})
    listener = _plain_listener("gateway", s.listen_host, s.gateway_port, routes, log=s.access_log)
    if s.otlp_collector is not None:
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["tracing"] = _tracing(s, "playback-gateway")
    return listener


def _cluster(
    name: str,
    ep: Endpoint,
    *,
    http2: bool = False,
    dns: bool = False,
    tls: dict[str, Any] | None = None,
    buffer_limit: int = 1048576,
    max_requests: int = 4096,
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": "0.5s",
        "lb_policy": "ROUND_ROBIN",
        "per_connection_buffer_limit_bytes": buffer_limit,
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 1024,
                    "max_pending_requests": 1024,
                    "max_requests": max_requests,
                }
            ]
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(ep)}}]}],
        },
    }
    if dns:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    options: dict[str, Any] = {"@type": T_HTTP_OPTS}
    if http2:
        options["explicit_http_config"] = {
            "http2_protocol_options": {
                "connection_keepalive": {"interval": "30s", "timeout": "5s"},
            }
        }
    else:
        options["explicit_http_config"] = {"http_protocol_options": {}}
    options["common_http_protocol_options"] = {"idle_timeout": "60s"}
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options
    }
    if tls is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": T_TLS_UP, **tls},
        }
    return cluster


def _clusters(s: EnvoySettings) -> list[dict[str, Any]]:
    dns = s.profile == "k8s"
    clusters = [
        _cluster("authz", s.authz_grpc, http2=True),
        _cluster("authz_http", s.authz_http),
        _cluster("extproc", s.extproc_grpc, http2=True),
        _cluster("license_broker", s.broker, dns=dns),
        _cluster(
            "origin",
            s.origin,
            dns=dns,
            buffer_limit=8 * 1048576,
            tls={"sni": s.origin_host_header or s.origin.host} if s.origin_tls else None,
        ),
    ]
    if s.use_rate_limit_service:
        clusters.append(_cluster("ratelimit", s.rate_limit_service or s.authz_grpc, http2=True))
    if s.otlp_collector is not None:
        clusters.append(_cluster("otel_collector", s.otlp_collector, http2=True, dns=dns))
    if s.profile == "local":
        if s.gateway_client_tls is None:
            raise ValueError("the local profile needs gateway_client_tls")
        gw = s.gateway_client_tls
        clusters.append(
            _cluster(
                "sidecar",
                Endpoint("127.0.0.1", s.sidecar_port),
                tls={
                    "sni": s.sidecar_sni,
                    "common_tls_context": {
                        "tls_certificates": [
                            {
                                "certificate_chain": {"filename": gw.cert},
                                "private_key": {"filename": gw.key},
                            }
                        ],
                        "validation_context": {
                            "trusted_ca": {"filename": gw.ca},
                            "match_typed_subject_alt_names": [
                                {"san_type": "DNS", "matcher": {"exact": s.sidecar_sni}}
                            ],
                        },
                    },
                },
            )
        )
        if s.demo_site is not None:
            clusters.append(_cluster("demo_site", s.demo_site))
    else:
        clusters.append(_cluster("admin", Endpoint("127.0.0.1", s.admin_port)))
    return clusters


def build(s: EnvoySettings) -> dict[str, Any]:
    listeners = [_sidecar_listener(s)]
    if s.profile == "local":
        listeners.insert(0, _gateway_listener(s))
    else:
        listeners.append(
            _plain_listener(
                "probes",
                s.listen_host,
                s.probe_port,
                [
                    {
                        "match": {"path": "/health"},
                        "route": {"cluster": "authz_http", "timeout": "2s"},
                    },
                    {
                        "match": {"path": "/health/live"},
                        "direct_response": {
                            "status": 200,
                            "body": {"inline_string": '{"status":"ok"}'},
                        },
                    },
                ],
                log=False,
            )
        )
        listeners.append(
            _plain_listener(
                "stats",
                s.listen_host,
                s.stats_port,
                [
                    {
                        "match": {"path": "/stats/prometheus"},
                        "route": {"cluster": "admin", "timeout": "5s"},
                    }
                ],
                log=False,
            )
        )
    return {
        "node": {"id": f"playback-drm-{s.profile}", "cluster": "playback-drm"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": s.admin_port}}
        },
        "overload_manager": {
            "refresh_interval": "0.25s",
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.fixed_heap",
                    "typed_config": {
                        "@type": T_HEAP_MONITOR,
                        "max_heap_size_bytes": s.max_heap_bytes,
                    },
                },
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": T_CONN_MONITOR,
                        "max_active_downstream_connections": s.max_connections,
                    },
                },
            ],
            "actions": [
                {
                    "name": "envoy.overload_actions.shrink_heap",
                    "triggers": [
                        {"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.95}}
                    ],
                },
                {
                    "name": "envoy.overload_actions.stop_accepting_requests",
                    "triggers": [
                        {"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.98}}
                    ],
                },
            ],
        },
        "static_resources": {"listeners": listeners, "clusters": _clusters(s)},
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {
                        "overload": {"global_downstream_max_connections": s.max_connections}
                    },
                },
                {"name": "admin", "admin_layer": {}},
            ]
        },
    }


def render(s: EnvoySettings) -> str:
    header = (
        "# Generated by `playback-drm envoy-config --profile "
        f"{s.profile}`; edit playback_drm/envoy_config.py, not this file.\n"
    )
    return header + yaml.safe_dump(build(s), sort_keys=False, width=100)


def local_example_settings() -> EnvoySettings:
    """The local stack's configuration with default ports and ``.local/pki`` certificates
    (what ``playback-drm up`` renders into ``.local/envoy.yaml``)."""
    pki = ".local/pki"
    return EnvoySettings(
        profile="local",
        sidecar_tls=TlsFiles(f"{pki}/sidecar.crt", f"{pki}/sidecar.key", ""),
        client_ca=f"{pki}/ca.crt",
        gateway_client_tls=TlsFiles(f"{pki}/gateway.crt", f"{pki}/gateway.key", f"{pki}/ca.crt"),
    )


RENDERED_FILES = {
    "envoy/sidecar-k8s.yaml": "k8s",
    "envoy/local.yaml": "local",
}


def settings_for(profile: str) -> EnvoySettings:
    return k8s_settings() if profile == "k8s" else local_example_settings()


def k8s_settings() -> EnvoySettings:
    """The pod sidecar: listens on all interfaces; the broker and origin are Services."""
    return EnvoySettings(
        profile="k8s",
        listen_host="0.0.0.0",
        broker=Endpoint("license-broker", 9003),
        origin=Endpoint("origin", 80),
        demo_site=None,
        sidecar_tls=TlsFiles("/etc/envoy/tls/tls.crt", "/etc/envoy/tls/tls.key", ""),
        client_ca="/etc/envoy/tls/ca.crt",
        license_peer_cidrs=("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"),
        use_rate_limit_service=True,
        access_log=True,
    )
