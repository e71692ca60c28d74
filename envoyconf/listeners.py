"""Listeners: the sidecar (mutual TLS), the local gateway, the pod's probe and stats ports; the
HTTP connection manager settings they share, access logs and tracing."""

from __future__ import annotations

from typing import Any

from envoyconf.cors import UPSTREAM_HEADERS_DROPPED, envoy_cors_policy, vary_on_origin
from envoyconf.filters import sidecar_filters
from envoyconf.replies import local_reply_config
from envoyconf.routes import sidecar_routes
from envoyconf.sds import CLIENT_CA, SIDECAR_CERT, secret_ref
from envoyconf.settings import EnvoySettings
from envoyconf.typeurls import (
    T_HCM,
    T_OTEL,
    T_REQ_WITHOUT_QUERY,
    T_ROUTER,
    T_STDOUT_LOG,
    T_TLS_DOWN,
)
from playback_drm.identity import USER_HEADER, VIDEO_HEADER


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
                        "userId": f"%REQ({USER_HEADER.upper()})%",
                        "videoId": f"%REQ({VIDEO_HEADER.upper()})%",
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


def sidecar_listener(s: EnvoySettings) -> dict[str, Any]:
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
                        "routes": sidecar_routes(s),
                        # One CORS policy for every path, decided here only (envoyconf.cors).
                        "typed_per_filter_config": {
                            "envoy.filters.http.cors": envoy_cors_policy(s.cors)
                        },
                        "response_headers_to_remove": list(UPSTREAM_HEADERS_DROPPED),
                        "response_headers_to_add": vary_on_origin(),
                    }
                ],
            },
            "http_filters": sidecar_filters(s),
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
                            # Through SDS from files: renewed certificates without a restart.
                            "tls_certificate_sds_secret_configs": [secret_ref(s, SIDECAR_CERT)],
                            "validation_context_sds_secret_config": secret_ref(s, CLIENT_CA),
                        },
                    },
                },
            }
        ],
    }


def plain_listener(
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


def gateway_listener(s: EnvoySettings) -> dict[str, Any]:
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
    listener = plain_listener("gateway", s.listen_host, s.gateway_port, routes, log=s.access_log)
    if s.otlp_collector is not None:
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["tracing"] = _tracing(s, "playback-gateway")
    return listener
