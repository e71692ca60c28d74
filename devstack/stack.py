"""The whole local stack: Envoy (gateway + sidecar listeners), authz, extproc, the license broker,
the demo origin and the emulators, each a child process; what ``playback-drm up`` runs and what the
integration tests start on free ports.

Embedded defaults: in-memory caches and key store, events to a local JSON-lines log. Set
``REDIS_URL``, ``NATS_URL``, ``VAULT_ADDR``/``VAULT_TOKEN`` or ``ORIGIN_URL`` to use real ones.
Every other setting in the environment ``playback-drm up`` runs in reaches the processes, over
the stack's own defaults (``URL_TOKEN_TTL=10 URL_TOKEN_PLAYLIST_TTL=20 make run``), except the
addresses and paths the processes and Envoy's configuration must agree on (:data:`WIRING`).
``CORS_ALLOWED_ORIGINS`` (and ``CORS_MAX_AGE``) replace the origins Envoy allows, by default the
demo page's (the gateway's) and the site's (the player pages on an origin of their own).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devstack import media
from devstack.devpki import DevPki, ensure_dev_pki
from devstack.emulators.auth import (
    DEFAULT_AUDIENCE,
    DEFAULT_ISSUER,
    load_or_create_key,
    sign_token,
)
from devstack.emulators.drm import provider_env
from devstack.supervise import ManagedProcess, binary, free_port, http_probe
from envoyconf import (
    CorsSettings,
    Endpoint,
    EnvoySettings,
    TlsFiles,
    local_cors,
    render,
    render_sds,
)
from playback_drm.settings import ConfigError

# the services start the way the production image starts them
SERVICE_MODULES = {"authz": "authz", "extproc": "extproc", "broker": "license_broker"}
EMULATORS = frozenset({"auth-emulator", "billing-emulator", "drm-emulator", "origin", "site"})
COMPONENTS = (
    "auth-emulator",
    "billing-emulator",
    "drm-emulator",
    "origin",
    "site",
    "authz",
    "extproc",
    "broker",
    "envoy",
)


# What the stack decides itself, whatever the environment says: where each process listens and
# finds the others (Envoy's configuration is rendered from the same ports), and its files.
WIRING = frozenset(
    {
        "AUTHZ_GRPC_ADDR",
        "AUTHZ_HTTP_ADDR",
        "EXTPROC_GRPC_ADDR",
        "EXTPROC_HTTP_ADDR",
        "BROKER_HOST",
        "BROKER_PORT",
        "AUTH_EMULATOR_ADDR",
        "BILLING_EMULATOR_ADDR",
        "DRM_EMULATOR_ADDR",
        "DRM_EMULATOR_URL",
        "ORIGIN_ADDR",
        "ORIGIN_DIR",
        "SITE_ADDR",
        "SITE_GATEWAY_URL",
        "NODE_MODULES_DIR",
        "JWT_SIGNING_KEY_FILE",
        "PYTHONUNBUFFERED",
    }
)


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {raw!r}")
    return int(raw)


@dataclass(frozen=True, slots=True)
class StackPorts:
    gateway: int = 8080
    sidecar: int = 8443
    admin: int = 9901
    authz_grpc: int = 9001
    authz_http: int = 9011
    extproc_grpc: int = 9002
    extproc_http: int = 9012
    broker: int = 9003
    auth: int = 9101
    billing: int = 9102
    drm: int = 9103
    origin: int = 9104
    site: int = 8099  # the player pages on an origin of their own (cross-origin to the gateway)

    @classmethod
    def free(cls) -> StackPorts:
        return cls(**{f.name: free_port() for f in dataclasses.fields(cls)})


@dataclass(frozen=True, slots=True)
class StackSettings:
    root: Path
    ports: StackPorts = field(default_factory=StackPorts)
    redis_url: str | None = None
    nats_url: str | None = None
    vault_addr: str | None = None
    vault_token: str | None = None
    origin_url: str | None = None
    media_dir: Path | None = None
    url_token_ttl: int = 300
    per_user_rps: int = 200
    per_user_burst: int = 100
    # who keeps the per-user limit (EnvoySettings.per_user_limit); None: authz inside its check
    # with Redis, else a bucket in Envoy
    per_user_limit: str | None = None
    envoy_access_log: bool = True
    otlp_endpoint: str | None = None  # OTLP/gRPC collector for Envoy and the services
    instance: str = "main"  # a second replica in the same root gets its own logs and config
    cors: CorsSettings | None = None  # None: the demo page's and the site's origins
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # more public base URLs of the same services (another proxy in front of them, as in tests/mesh)
    extra_public_base_urls: tuple[str, ...] = ()
    # the environment the stack was started from: its settings win over the stack's defaults
    environment: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], root: Path, ports: StackPorts | None = None
    ) -> StackSettings:
        """Raises :class:`~playback_drm.settings.ConfigError` naming a malformed setting the
        stack itself reads."""
        ports = ports or StackPorts()
        return cls(
            environment={k: v for k, v in env.items() if k not in WIRING},
            url_token_ttl=_positive_int(env, "URL_TOKEN_TTL", 300),
            per_user_rps=_positive_int(env, "RATE_LIMIT_PER_USER", 200),
            root=root,
            ports=ports,
            redis_url=env.get("REDIS_URL") or None,
            nats_url=env.get("NATS_URL") or None,
            vault_addr=env.get("VAULT_ADDR") or None,
            vault_token=env.get("VAULT_TOKEN") or None,
            origin_url=env.get("ORIGIN_URL") or None,
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
            cors=CorsSettings.from_env(env, local_cors(ports.gateway, ports.site)),
        )


class Stack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.root = settings.root
        self.ports = settings.ports
        self.logs = self.root / "logs" / settings.instance
        self.processes: dict[str, ManagedProcess] = {}
        self.pki: DevPki | None = None
        self.issued_tokens: list[str] = []  # lets tests prove none of them reaches a log

    # ------------------------------------------------------------------ paths and generated files

    @property
    def jwt_key_path(self) -> Path:
        return self.root / "secrets" / "jwt-signing.pem"

    @property
    def url_keys_path(self) -> Path:
        return self.root / "secrets" / "url-signing-keys"

    @property
    def events_log(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def envoy_config_path(self) -> Path:
        return self.root / f"envoy-{self.settings.instance}.yaml"

    @property
    def media_dir(self) -> Path:
        return self.settings.media_dir or (self.root / "media")

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    @property
    def site(self) -> str:
        """The player pages' own origin (plays the platform's web site)."""
        return f"http://127.0.0.1:{self.ports.site}"

    @property
    def sidecar(self) -> str:
        return f"https://127.0.0.1:{self.ports.sidecar}"

    def _per_instance(self, name: str) -> str:
        instance = self.settings.instance
        return name if instance == "main" else f"{name}-{instance}"

    def url_signing_keys(self) -> str:
        path = self.url_keys_path
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
            path.write_text(f"k{secrets.token_hex(2)}:{secret}\n")
            path.chmod(0o600)
        return path.read_text().strip()

    def prepare(self) -> None:
        """Create certificates, keys and the Envoy configuration (idempotent)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pki = ensure_dev_pki(self.root / "pki")
        load_or_create_key(self.jwt_key_path)
        self.url_signing_keys()
        settings = self.envoy_settings()
        # TLS material through SDS (envoyconf.sds): the files naming the PEM files, beside the
        # configuration; Envoy reads the certificates again when dev_pki renews them.
        Path(settings.sds_dir).mkdir(parents=True, exist_ok=True)
        for path, text in render_sds(settings).items():
            Path(path).write_text(text)
        self.envoy_config_path.write_text(render(settings))

    def ensure_media(self) -> None:
        media.generate(self.media_dir)

    def envoy_settings(self) -> EnvoySettings:
        assert self.pki is not None
        p = self.ports
        origin = Endpoint("127.0.0.1", p.origin)
        origin_tls = False
        host_header = None
        if self.settings.origin_url:
            parts = urlsplit(self.settings.origin_url)
            origin_tls = parts.scheme == "https"
            origin = Endpoint(
                parts.hostname or "127.0.0.1", parts.port or (443 if origin_tls else 80)
            )
            host_header = parts.hostname
        return EnvoySettings(
            profile="local",
            gateway_port=p.gateway,
            sidecar_port=p.sidecar,
            admin_port=p.admin,
            authz_grpc=Endpoint("127.0.0.1", p.authz_grpc),
            authz_http=Endpoint("127.0.0.1", p.authz_http),
            extproc_grpc=Endpoint("127.0.0.1", p.extproc_grpc),
            broker=Endpoint("127.0.0.1", p.broker),
            origin=origin,
            origin_tls=origin_tls,
            origin_host_header=host_header,
            demo_site=Endpoint("127.0.0.1", p.origin),
            sidecar_tls=TlsFiles(str(self.pki.server_cert), str(self.pki.server_key), ""),
            client_ca=str(self.pki.ca_cert),
            gateway_client_tls=TlsFiles(
                str(self.pki.gateway_cert), str(self.pki.gateway_key), str(self.pki.ca_cert)
            ),
            sds_dir=str(self.root / f"sds-{self.settings.instance}"),
            per_user_rps=self.settings.per_user_rps,
            per_user_burst=self.settings.per_user_burst,
            per_user_limit=self.settings.per_user_limit
            or ("check" if self.settings.redis_url is not None else "local"),
            otlp_collector=self._otlp_endpoint(),
            access_log=self.settings.envoy_access_log,
            cors=self.settings.cors or local_cors(p.gateway, p.site),
        )

    def _otlp_endpoint(self) -> Endpoint | None:
        url = (
            self.settings.extra_env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or self.settings.otlp_endpoint
        )
        if not url:
            return None
        parts = urlsplit(url)
        return Endpoint(parts.hostname or "127.0.0.1", parts.port or 4317)

    # ------------------------------------------------------------------------------ environment

    def common_env(self) -> dict[str, str]:
        p = self.ports
        env = {
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
            "JWKS_URL": f"http://127.0.0.1:{p.auth}/.well-known/jwks.json",
            "JWT_ISSUER": DEFAULT_ISSUER,
            "JWT_AUDIENCE": DEFAULT_AUDIENCE,
            "JWT_SIGNING_KEY_FILE": str(self.jwt_key_path),
            "BILLING_URL": f"http://127.0.0.1:{p.billing}",
            "URL_SIGNING_KEYS": self.url_signing_keys(),
            "URL_TOKEN_TTL": str(self.settings.url_token_ttl),
            "ORIGIN_URL": self.settings.origin_url or f"http://127.0.0.1:{p.origin}",
            "ORIGIN_DIR": str(self.media_dir / "origin"),
            "KEYS_FILE": str(self.media_dir / "keys.json"),
            "EVENTS_LOG_PATH": str(self.events_log),
            # one spill buffer per process (each locks its own): a replica has folders of its own
            "EVENTS_SPILL_DIR": str(self.root / self._per_instance("events-spill")),
            "AUTHZ_GRPC_ADDR": f"127.0.0.1:{p.authz_grpc}",
            "AUTHZ_HTTP_ADDR": f"127.0.0.1:{p.authz_http}",
            "EXTPROC_GRPC_ADDR": f"127.0.0.1:{p.extproc_grpc}",
            "EXTPROC_HTTP_ADDR": f"127.0.0.1:{p.extproc_http}",
            # where the JSON form's signed manifest URLs point: the gateway (first: the default),
            # the same under its other name, and the sidecar; never the Host a client sent
            "PUBLIC_BASE_URLS": ",".join(
                (
                    self.gateway,
                    f"http://localhost:{p.gateway}",
                    self.sidecar,
                    *self.settings.extra_public_base_urls,
                )
            ),
            "BROKER_HOST": "127.0.0.1",
            "BROKER_PORT": str(p.broker),
            "AUTH_EMULATOR_ADDR": f"127.0.0.1:{p.auth}",
            "BILLING_EMULATOR_ADDR": f"127.0.0.1:{p.billing}",
            "BILLING_STATE_FILE": str(self.billing_state),
            "DRM_EMULATOR_ADDR": f"127.0.0.1:{p.drm}",
            "DRM_EMULATOR_URL": f"http://127.0.0.1:{p.drm}",
            "ORIGIN_ADDR": f"127.0.0.1:{p.origin}",
            "SITE_ADDR": f"127.0.0.1:{p.site}",
            "SITE_GATEWAY_URL": self.gateway,
            "NODE_MODULES_DIR": str(Path.cwd() / "node_modules"),
            "RATE_LIMIT_PER_USER": str(self.settings.per_user_rps),
        }
        # the DRM provider emulator stands in for Widevine, PlayReady, FairPlay (and Axinom)
        env.update(provider_env(f"http://127.0.0.1:{p.drm}"))
        optional = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.settings.otlp_endpoint,
            "REDIS_URL": self.settings.redis_url,
            "NATS_URL": self.settings.nats_url,
            "VAULT_ADDR": self.settings.vault_addr,
            "VAULT_TOKEN": self.settings.vault_token,
        }
        env.update({k: v for k, v in optional.items() if v})
        env.update(self.settings.environment)
        env.update(self.settings.extra_env)
        return env

    # -------------------------------------------------------------------------------- processes

    def _process(self, name: str) -> ManagedProcess:
        p = self.ports
        env = self.common_env()
        if name == "envoy":
            argv = [
                binary("envoy"),
                "-c",
                str(self.envoy_config_path),
                "--log-level",
                "warn",
                "--base-id",
                str(p.admin),
                "--concurrency",
                "2",
                "--drain-time-s",
                "2",
            ]
            ready = http_probe(f"http://127.0.0.1:{p.admin}/ready")
            timeout = 60.0
        else:
            if name in SERVICE_MODULES:  # what the image runs
                argv = [sys.executable, "-m", SERVICE_MODULES[name]]
            else:
                argv = [sys.executable, "-m", "devstack.cli", "serve", name]
            health = {
                "auth-emulator": f"http://127.0.0.1:{p.auth}/health",
                "billing-emulator": f"http://127.0.0.1:{p.billing}/health",
                "drm-emulator": f"http://127.0.0.1:{p.drm}/health",
                "origin": f"http://127.0.0.1:{p.origin}/health",
                "site": f"http://127.0.0.1:{p.site}/health",
                "authz": f"http://127.0.0.1:{p.authz_http}/health/live",
                "extproc": f"http://127.0.0.1:{p.extproc_http}/health/live",
                "broker": f"http://127.0.0.1:{p.broker}/health/live",
            }[name]
            ready = http_probe(health)
            timeout = 30.0
        return ManagedProcess(
            name, argv, log_dir=self.logs, env=env, ready=ready, ready_timeout=timeout
        )

    def start(self, components: Iterable[str] = COMPONENTS) -> None:
        self.prepare()
        wanted = list(components)
        for name in wanted:
            if name not in COMPONENTS:
                raise ValueError(f"unknown component {name!r}")
        if "billing-emulator" in wanted:
            self.billing_state.unlink(missing_ok=True)
        # Dependencies first (the emulators and the origin), then our services, Envoy last: each
        # finds what it needs ready. Within a group, processes start in parallel.
        groups = [
            [n for n in wanted if n in EMULATORS],
            [n for n in wanted if n not in EMULATORS and n != "envoy"],
        ]
        for group in groups:
            started = [self._process(n) for n in group]
            for proc in started:  # launch all, then wait: they import in parallel
                self.processes[proc.name] = proc
                proc.start(wait=False)
            for proc in started:
                proc.wait_ready()
        if "envoy" in wanted:
            proc = self._process("envoy")
            self.processes["envoy"] = proc
            proc.start()

    @property
    def billing_state(self) -> Path:
        """Where the Billing emulator keeps what its admin API was told: a restarted emulator
        (:meth:`start_component`) keeps its viewers; a stack that starts begins afresh."""
        return self.root / self._per_instance("billing-state.json")

    def start_component(self, name: str) -> None:
        proc = self._process(name)
        self.processes[name] = proc
        proc.start()

    def stop_component(self, name: str) -> None:
        proc = self.processes.get(name)
        if proc is not None:
            proc.stop()

    def stop(self) -> None:
        # Envoy first (stop taking traffic), then the services, then the emulators.
        order = [
            "envoy",
            "authz",
            "extproc",
            "broker",
            "site",
            "origin",
            "drm-emulator",
            "billing-emulator",
            "auth-emulator",
        ]
        for name in order:
            self.stop_component(name)

    def token(self, sub: str, ttl: int = 3600) -> str:
        key = load_or_create_key(self.jwt_key_path)
        token = sign_token(key, sub, ttl=ttl)
        self.issued_tokens.append(token)
        return token

    def events(self) -> list[dict[str, Any]]:
        """The events the services logged (CloudEvents JSON documents), oldest first."""
        if not self.events_log.exists():
            return []
        out: list[dict[str, Any]] = []
        for line in self.events_log.read_text(encoding="utf-8").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out
