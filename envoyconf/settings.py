"""Everything that differs between deployments, as one typed, frozen object, and the profiles
the repository renders (``envoy/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from envoyconf.cors import CorsSettings

Profile = Literal["local", "k8s"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str
    key: str
    ca: str


def local_cors(gateway_port: int = 8080, site_port: int = 8099) -> CorsSettings:
    """The local stack's origins: the demo page (served through the gateway itself) and the
    player pages on an origin of their own (the local stack's site, which plays the platform's
    web origin)."""
    return CorsSettings(
        origins=tuple(
            f"http://{host}:{port}"
            for port in (gateway_port, site_port)
            for host in ("127.0.0.1", "localhost")
        )
    )


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
    # Envoy reads the TLS material above through SDS (envoyconf.sds): one small file per secret
    # in sds_dir (where the configuration is rendered), and it reads the PEM files again when a
    # file is moved into tls_watch_dir (None: each PEM file's own directory, which for a Secret
    # volume is where the kubelet swaps its `..data` link on every update).
    sds_dir: str = ".local/sds-main"
    tls_watch_dir: str | None = None
    sidecar_sni: str = "sidecar.playback-drm.local"
    license_principals: tuple[str, ...] = ("spiffe://playback-drm.local/ns/edge/sa/gateway",)
    license_peer_cidrs: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    license_client_cidrs: tuple[str, ...] = ("0.0.0.0/0", "::/0")
    per_ip_rps: int = 1000
    per_ip_burst: int = 1000
    per_user_rps: int = 200
    per_user_burst: int = 100
    # Who keeps the per-user limit (x-playback-user, set by authz):
    #   check    authz, inside the ext_authz check it answers anyway (shared across pods through
    #            Redis: RATE_LIMIT_* in authz); no second call per request
    #   service  Envoy's ratelimit filter, asking a rate limit service (rate_limit_service;
    #            None: authz's own, the API a mesh or gateway uses)
    #   local    a token bucket per Envoy (per_user_rps, per_user_burst)
    per_user_limit: str = "local"
    rate_limit_service: Endpoint | None = None  # defaults to authz_grpc
    hls_path_template: str = "{videoId}/master.m3u8"
    dash_path_template: str = "{videoId}/manifest.mpd"
    cors: CorsSettings = field(default_factory=local_cors)
    authz_timeout_ms: int = 500
    extproc_timeout_ms: int = 2000
    origin_timeout_ms: int = 15_000  # a manifest or media request to the origin
    license_timeout_ms: int = 10_000  # a license request to the broker (and its DRM provider)
    max_heap_bytes: int = 512 * 1024 * 1024
    max_connections: int = 50_000
    access_log: bool = True
    otlp_collector: Endpoint | None = None  # OpenTelemetry traces (OTLP/gRPC); None: off
    trace_sampling_percent: float = 100.0
    extra_headers_to_strip: tuple[str, ...] = field(default=())


def local_example_settings() -> EnvoySettings:
    """The local stack's configuration with default ports and ``.local/pki`` certificates
    (what ``playback-drm up`` renders into ``.local/envoy.yaml``)."""
    pki = ".local/pki"
    return EnvoySettings(
        profile="local",
        sidecar_tls=TlsFiles(f"{pki}/sidecar.crt", f"{pki}/sidecar.key", ""),
        client_ca=f"{pki}/ca.crt",
        gateway_client_tls=TlsFiles(f"{pki}/gateway.crt", f"{pki}/gateway.key", f"{pki}/ca.crt"),
        sds_dir=".local/sds-main",
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
        # No page may call the edge cross-origin until the deployment lists its web origins
        # (CORS_ALLOWED_ORIGINS when rendering, see docs/DEPLOYMENT.md).
        cors=CorsSettings(origins=()),
        sidecar_tls=TlsFiles("/etc/envoy/tls/tls.crt", "/etc/envoy/tls/tls.key", ""),
        client_ca="/etc/envoy/tls/ca.crt",
        # next to envoy.yaml, where the init container renders both (envoyconf.entrypoint)
        sds_dir="/etc/envoy/rendered",
        license_peer_cidrs=("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"),
        per_user_limit="check",
        access_log=True,
    )
