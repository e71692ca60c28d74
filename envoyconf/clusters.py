"""Upstream clusters: authz and extproc (HTTP/2 gRPC), the broker, the origin, the rate limit
service, the trace collector, and (local profile) the sidecar behind the gateway."""

from __future__ import annotations

from typing import Any

from envoyconf.sds import GATEWAY_CERT, secret_ref
from envoyconf.settings import Endpoint, EnvoySettings
from envoyconf.typeurls import T_HTTP_OPTS, T_TLS_UP


def _socket(ep: Endpoint) -> dict[str, Any]:
    return {"socket_address": {"address": ep.host, "port_value": ep.port}}


def cluster(
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
                    # Retries in flight (the routes retry only what an upstream never received,
                    # envoyconf.routes.UNSENT_RETRY) in proportion to the traffic, not Envoy's
                    # fixed 3: when a pod behind a name is gone, every request in flight to it
                    # needs its retry at once.
                    "retry_budget": {
                        "budget_percent": {"value": 20.0},
                        "min_retry_concurrency": 16,
                    },
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


def clusters(s: EnvoySettings) -> list[dict[str, Any]]:
    dns = s.profile == "k8s"
    clusters = [
        cluster("authz", s.authz_grpc, http2=True),
        cluster("authz_http", s.authz_http),
        cluster("extproc", s.extproc_grpc, http2=True),
        cluster("license_broker", s.broker, dns=dns),
        cluster(
            "origin",
            s.origin,
            dns=dns,
            buffer_limit=8 * 1048576,
            tls={"sni": s.origin_host_header or s.origin.host} if s.origin_tls else None,
        ),
    ]
    if s.per_user_limit == "service":
        clusters.append(cluster("ratelimit", s.rate_limit_service or s.authz_grpc, http2=True))
    if s.otlp_collector is not None:
        clusters.append(cluster("otel_collector", s.otlp_collector, http2=True, dns=dns))
    if s.profile == "local":
        if s.gateway_client_tls is None:
            raise ValueError("the local profile needs gateway_client_tls")
        gw = s.gateway_client_tls
        clusters.append(
            cluster(
                "sidecar",
                Endpoint("127.0.0.1", s.sidecar_port),
                tls={
                    "sni": s.sidecar_sni,
                    "common_tls_context": {
                        "tls_certificate_sds_secret_configs": [secret_ref(s, GATEWAY_CERT)],
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
            clusters.append(cluster("demo_site", s.demo_site))
    else:
        clusters.append(cluster("admin", Endpoint("127.0.0.1", s.admin_port)))
    return clusters
