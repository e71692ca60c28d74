"""EnvoySettings from environment-style keys: the values a deployment sets in the ``playback-envoy``
ConfigMap (k8s/base/config/envoy.env, merged by overlays), read at pod start by the render init
container (``python -m envoyconf render``) and offline by ``playback-drm check-config``.

Keys are ``ENVOY_*`` plus the CORS pair ``CORS_ALLOWED_ORIGINS`` / ``CORS_MAX_AGE`` (the names the
local stack already uses). Every variable under those prefixes must be one of :data:`SETTINGS`: a
misspelt key is an error, never a value silently ignored. Values are checked strictly (CIDRs,
SPIFFE/URI principals, host:port, absolute paths, bounded numbers), and every problem is
reported, each naming its key, in one :class:`SettingsError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from envoyconf.cors import MAX_AGE_SETTING, ORIGINS_SETTING, parse_origin
from envoyconf.routes import template_to_rewrite
from envoyconf.settings import Endpoint, EnvoySettings
from playback_drm.settings import ConfigError

PREFIXES: Final = ("ENVOY_", "CORS_")
"""Variables under these prefixes belong to the Envoy configuration: unknown ones are errors."""

_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_SPIFFE_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SPIFFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_SIZE_UNITS: Final = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


# ------------------------------------------------------------------------------------ errors


@dataclass(frozen=True, slots=True)
class Problem:
    """One bad setting: its key and what is wrong with the value."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class SettingsError(ConfigError):
    """One or more Envoy settings are malformed or unknown; :attr:`problems` lists each, by key."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class Invalid(ValueError):
    """A value a parser refuses (the caller adds the key)."""


# ------------------------------------------------------------------------------------ kinds


@dataclass(frozen=True, slots=True)
class Kind:
    """How one kind of value is read (``parse``) and written back (``format``)."""

    name: str  # for the documentation: "port", "host:port", "list of CIDRs", ...
    parse: Callable[[str], Any]
    format: Callable[[Any], str] = str


def _int(minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise Invalid(f"{raw!r} is not an integer") from None
        if not minimum <= value <= maximum:
            raise Invalid(f"{value} is outside {minimum}..{maximum}")
        return value

    return parse


def _percent(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise Invalid(f"{raw!r} is not a number") from None
    if not 0.0 <= value <= 100.0:
        raise Invalid(f"{value:g} is outside 0..100")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise Invalid(f"{raw!r} is not a boolean (true or false)")


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise Invalid(f"{raw!r} is not one of {', '.join(choices)}")
        return raw

    return parse


def _size(raw: str) -> int:
    """Bytes: an integer, or with a Kubernetes binary suffix (``512Mi``)."""
    for suffix, factor in _SIZE_UNITS.items():
        if raw.endswith(suffix) and raw[: -len(suffix)].isdigit():
            value = int(raw[: -len(suffix)]) * factor
            break
    else:
        if not raw.isdigit():
            raise Invalid(f"{raw!r} is not a size (bytes, or with Ki, Mi, Gi: 512Mi)")
        value = int(raw)
    if value < 16 * 2**20:
        raise Invalid(f"{raw} is below 16Mi: Envoy would refuse traffic at once")
    return value


def _format_size(value: int) -> str:
    for suffix, factor in reversed(_SIZE_UNITS.items()):
        if value % factor == 0:
            return f"{value // factor}{suffix}"
    return str(value)


def _check_host(host: str) -> str:
    if not host:
        raise Invalid("the host is empty")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.match(host.lower()):
        raise Invalid(f"{host!r} is neither an IP address nor a DNS name")
    return host.lower()


def _endpoint(raw: str) -> Endpoint:
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(f"{raw!r} is not host:port (e.g. license-broker:9003, [::1]:9001)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise Invalid(f"{raw!r}: brackets are for IPv6 addresses only")
    elif ":" in host:
        raise Invalid(f"{raw!r}: write an IPv6 address in brackets, [::1]:9001")
    return Endpoint(_check_host(host), int(port))


def _format_endpoint(ep: Endpoint) -> str:
    host = f"[{ep.host}]" if ":" in ep.host else ep.host
    return f"{host}:{ep.port}"


def _ip(raw: str) -> str:
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise Invalid(f"{raw!r} is not an IP address (0.0.0.0, ::, 127.0.0.1)") from None


def _dns_name(raw: str) -> str:
    if not _HOSTNAME.match(raw.lower()) or raw.endswith("."):
        raise Invalid(f"{raw!r} is not a DNS name")
    return raw.lower()


def _path(raw: str) -> str:
    if not raw.startswith("/"):
        raise Invalid(f"{raw!r} is not an absolute path")
    if any(c.isspace() for c in raw) or "\x00" in raw:
        raise Invalid(f"{raw!r} contains white space")
    return raw


def _template(raw: str) -> str:
    try:
        template_to_rewrite(raw)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return raw


def _items(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _list(item: Callable[[str], str], *, allow_empty: bool) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated list: every bad entry is named, with its position."""

    def parse(raw: str) -> tuple[str, ...]:
        entries = _items(raw)
        if not entries and not allow_empty:
            raise Invalid("the list is empty")
        out: list[str] = []
        bad: list[str] = []
        for position, entry in enumerate(entries, start=1):
            try:
                value = item(entry)
            except Invalid as exc:
                bad.append(f"entry {position}: {exc}")
                continue
            if value not in out:
                out.append(value)
        if bad:
            raise Invalid("; ".join(bad))
        return tuple(out)

    return parse


def _cidr(raw: str) -> str:
    try:
        return str(ipaddress.ip_network(raw, strict=True))
    except ValueError as exc:
        raise Invalid(f"{raw!r} is not a CIDR range ({exc})") from None


def _principal(raw: str) -> str:
    """A URI SAN the client certificate carries: a SPIFFE ID (checked by the SPIFFE rules) or
    another absolute URI. DNS names and subjects are refused: Envoy would compare them against
    other certificate fields, and a URI SAN is what workload identities carry."""
    if any(c.isspace() for c in raw) or "*" in raw:
        raise Invalid(f"{raw!r} is not a URI SAN (no spaces or wildcards)")
    if raw.lower().startswith("spiffe://"):
        return _spiffe_id(raw)
    if not _URI_SCHEME.match(raw) or "=" in raw.split(":", 1)[0]:
        raise Invalid(
            f"{raw!r} is not a SPIFFE ID or URI SAN "
            "(e.g. spiffe://cluster.local/ns/gateway/sa/api-gateway)"
        )
    return raw


def _spiffe_id(raw: str) -> str:
    rest = raw[len("spiffe://") :]
    if not raw.startswith("spiffe://"):
        raise Invalid(f"{raw!r}: the scheme of a SPIFFE ID is lower case spiffe://")
    trust_domain, _, path = rest.partition("/")
    if not trust_domain or not _SPIFFE_TRUST_DOMAIN.match(trust_domain):
        raise Invalid(
            f"{raw!r}: the trust domain must be lower case letters, digits, '.', '-', '_'"
        )
    if not path:
        raise Invalid(f"{raw!r} names a trust domain, not a workload (add its path)")
    for segment in path.split("/"):
        if segment in {"", ".", ".."} or not _SPIFFE_SEGMENT.match(segment):
            raise Invalid(f"{raw!r}: path segment {segment!r} is not allowed in a SPIFFE ID")
    return raw


def _origin(raw: str) -> str:
    try:
        return parse_origin(raw)
    except ConfigError as exc:
        raise Invalid(str(exc).removeprefix(f"{ORIGINS_SETTING}: ")) from None


def _header(raw: str) -> str:
    name = raw.lower()
    if not _HEADER_NAME.match(name) or name == "host":
        raise Invalid(f"{raw!r} is not a request header name that can be removed")
    return name


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def read(raw: str) -> Any:
        return parse(raw) if raw else None

    return read


def _format_optional(fmt: Callable[[Any], str]) -> Callable[[Any], str]:
    return lambda value: "" if value is None else fmt(value)


def _format_list(values: Iterable[str]) -> str:
    return ",".join(values)


def _format_bool(value: bool) -> str:
    return "true" if value else "false"


PORT = Kind("port", _int(1, 65535))
ENDPOINT = Kind("host:port", _endpoint, _format_endpoint)
OPTIONAL_ENDPOINT = Kind(
    "host:port, or empty", _optional(_endpoint), _format_optional(_format_endpoint)
)
BOOL = Kind("true or false", _bool, _format_bool)
PATH = Kind("absolute path", _path)
MILLISECONDS = Kind("milliseconds", _int(1, 60_000))
RATE = Kind("requests per second", _int(1, 1_000_000))
BURST = Kind("requests", _int(1, 1_000_000))
PER_USER_LIMITS = ("check", "service", "local")
PER_USER_LIMIT = Kind(" or ".join(PER_USER_LIMITS), _one_of(PER_USER_LIMITS))


# ------------------------------------------------------------------------------------ the table


@dataclass(frozen=True, slots=True)
class Setting:
    """One key: the EnvoySettings field it sets (``a.b`` for a nested field) and its meaning."""

    key: str
    field: str
    kind: Kind
    doc: str


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "ENVOY_LICENSE_PRINCIPALS",
        "license_principals",
        Kind("list of SPIFFE IDs / URI SANs", _list(_principal, allow_empty=False), _format_list),
        "client-certificate URI SANs admitted on /drm/license* (your API gateway's identity)",
    ),
    Setting(
        "ENVOY_LICENSE_PEER_CIDRS",
        "license_peer_cidrs",
        Kind("list of CIDRs", _list(_cidr, allow_empty=False), _format_list),
        "addresses the gateway connects from, admitted on /drm/license* (the TCP peer)",
    ),
    Setting(
        "ENVOY_LICENSE_VIEWER_CIDRS",
        "license_client_cidrs",
        Kind("list of CIDRs", _list(_cidr, allow_empty=False), _format_list),
        "viewer addresses admitted on /drm/license* (from X-Forwarded-For, one trusted hop)",
    ),
    Setting(
        ORIGINS_SETTING,
        "cors.origins",
        Kind("list of origins", _list(_origin, allow_empty=True), _format_list),
        "web origins whose pages may call the edge (scheme://host[:port], https://*.example.tv)",
    ),
    Setting(
        MAX_AGE_SETTING,
        "cors.max_age_s",
        Kind("seconds", _int(0, 86400)),
        "how long browsers cache a preflight answer",
    ),
    Setting("ENVOY_PER_IP_RPS", "per_ip_rps", RATE, "per-address limit, refilled each second"),
    Setting("ENVOY_PER_IP_BURST", "per_ip_burst", BURST, "per-address bucket size"),
    Setting(
        "ENVOY_PER_USER_LIMIT",
        "per_user_limit",
        PER_USER_LIMIT,
        "who keeps the per-user limit: check (authz, inside its ext_authz check, shared across "
        "pods: RATE_LIMIT_* settings), service (Envoy asks ENVOY_RATE_LIMIT_SERVICE_ADDR), local "
        "(a bucket per pod: ENVOY_PER_USER_*)",
    ),
    Setting(
        "ENVOY_RATE_LIMIT_SERVICE_ADDR",
        "rate_limit_service",
        OPTIONAL_ENDPOINT,
        "the rate limit service (ENVOY_PER_USER_LIMIT=service); empty: authz "
        "(ENVOY_AUTHZ_GRPC_ADDR)",
    ),
    Setting(
        "ENVOY_PER_USER_RPS",
        "per_user_rps",
        RATE,
        "per-user local limit (only with ENVOY_PER_USER_LIMIT=local)",
    ),
    Setting(
        "ENVOY_PER_USER_BURST",
        "per_user_burst",
        BURST,
        "per-user local bucket size (only with ENVOY_PER_USER_LIMIT=local)",
    ),
    Setting("ENVOY_AUTHZ_TIMEOUT_MS", "authz_timeout_ms", MILLISECONDS, "ext_authz call timeout"),
    Setting(
        "ENVOY_EXTPROC_TIMEOUT_MS",
        "extproc_timeout_ms",
        MILLISECONDS,
        "ext_proc (manifest signing) timeout",
    ),
    Setting(
        "ENVOY_ORIGIN_TIMEOUT_MS",
        "origin_timeout_ms",
        MILLISECONDS,
        "route timeout of manifest and media requests to the origin",
    ),
    Setting(
        "ENVOY_LICENSE_TIMEOUT_MS",
        "license_timeout_ms",
        MILLISECONDS,
        "route timeout of /drm/license* (the broker and its DRM provider)",
    ),
    Setting("ENVOY_ORIGIN_ADDR", "origin", ENDPOINT, "the origin (manifests and media)"),
    Setting("ENVOY_ORIGIN_TLS", "origin_tls", BOOL, "TLS to the origin"),
    Setting(
        "ENVOY_ORIGIN_HOST",
        "origin_host_header",
        Kind("DNS name, or empty", _optional(_dns_name), _format_optional(str)),
        "Host header (and TLS SNI) sent to the origin; empty: the address's host",
    ),
    Setting(
        "ENVOY_HLS_PATH_TEMPLATE",
        "hls_path_template",
        Kind("path with {videoId}", _template),
        "origin path of a video's HLS entry manifest",
    ),
    Setting(
        "ENVOY_DASH_PATH_TEMPLATE",
        "dash_path_template",
        Kind("path with {videoId}", _template),
        "origin path of a video's DASH manifest",
    ),
    Setting("ENVOY_LICENSE_BROKER_ADDR", "broker", ENDPOINT, "the license broker (/drm/*, keys)"),
    Setting("ENVOY_AUTHZ_GRPC_ADDR", "authz_grpc", ENDPOINT, "authz gRPC (ext_authz)"),
    Setting("ENVOY_AUTHZ_HTTP_ADDR", "authz_http", ENDPOINT, "authz HTTP (readiness: /health)"),
    Setting("ENVOY_EXTPROC_GRPC_ADDR", "extproc_grpc", ENDPOINT, "extproc gRPC (ext_proc)"),
    Setting(
        "ENVOY_TLS_CERT_PATH",
        "sidecar_tls.cert",
        PATH,
        "the sidecar's server certificate chain (PEM)",
    ),
    Setting("ENVOY_TLS_KEY_PATH", "sidecar_tls.key", PATH, "its private key (PEM)"),
    Setting(
        "ENVOY_CLIENT_CA_PATH",
        "client_ca",
        PATH,
        "CA bundle the gateway's client certificate is verified against",
    ),
    Setting(
        "ENVOY_LISTEN_ADDRESS",
        "listen_host",
        Kind("IP address", _ip),
        "address the sidecar, probe and stats listeners bind",
    ),
    Setting("ENVOY_SIDECAR_PORT", "sidecar_port", PORT, "mTLS listener the gateway calls"),
    Setting("ENVOY_PROBE_PORT", "probe_port", PORT, "plain listener: /health, /health/live"),
    Setting("ENVOY_STATS_PORT", "stats_port", PORT, "plain listener: /stats/prometheus"),
    Setting("ENVOY_ADMIN_PORT", "admin_port", PORT, "admin interface, on 127.0.0.1 only"),
    Setting(
        "ENVOY_MAX_HEAP",
        "max_heap_bytes",
        Kind("bytes (Ki, Mi, Gi)", _size, _format_size),
        "overload manager heap bound (keep it below the container's memory limit)",
    ),
    Setting(
        "ENVOY_MAX_CONNECTIONS",
        "max_connections",
        Kind("connections", _int(1, 10_000_000)),
        "downstream connections before Envoy stops accepting",
    ),
    Setting("ENVOY_ACCESS_LOG", "access_log", BOOL, "JSON access log on stdout"),
    Setting(
        "ENVOY_OTLP_COLLECTOR_ADDR",
        "otlp_collector",
        OPTIONAL_ENDPOINT,
        "OpenTelemetry collector (OTLP/gRPC) for traces; empty: no tracing",
    ),
    Setting(
        "ENVOY_TRACE_SAMPLING_PERCENT",
        "trace_sampling_percent",
        Kind("percent", _percent, lambda v: f"{v:g}"),
        "share of requests traced",
    ),
    Setting(
        "ENVOY_STRIP_REQUEST_HEADERS",
        "extra_headers_to_strip",
        Kind("list of header names", _list(_header, allow_empty=True), _format_list),
        "request headers removed at the edge besides the x-playback-* ones",
    ),
)

BY_KEY: Final = {s.key: s for s in SETTINGS}
_LISTENER_PORTS: Final = (
    "ENVOY_SIDECAR_PORT",
    "ENVOY_PROBE_PORT",
    "ENVOY_STATS_PORT",
    "ENVOY_ADMIN_PORT",
)


# ------------------------------------------------------------------------------------ reading


def is_envoy_key(name: str) -> bool:
    return name.startswith(PREFIXES)


def unknown_key_problem(key: str) -> Problem:
    close = difflib.get_close_matches(key, list(BY_KEY), n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]}?" if close else " (docs/DEPLOYMENT.md lists the settings)"
    return Problem(key, f"unknown setting{hint}")


def _get(settings: Any, field: str) -> Any:
    for part in field.split("."):
        settings = getattr(settings, part)
    return settings


def _replace(settings: Any, values: Mapping[str, Any]) -> Any:
    """``dataclasses.replace`` that also sets nested fields named ``a.b``."""
    direct = {k: v for k, v in values.items() if "." not in k}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if "." in key:
            head, tail = key.split(".", 1)
            nested.setdefault(head, {})[tail] = value
    for head, inner in nested.items():
        direct[head] = _replace(getattr(settings, head), inner)
    return dataclasses.replace(settings, **direct)


def problems_in(env: Mapping[str, str], defaults: EnvoySettings) -> list[Problem]:
    """Every problem with the Envoy settings in ``env`` (empty: they render)."""
    try:
        settings_from_env(env, defaults)
    except SettingsError as exc:
        return list(exc.problems)
    return []


def settings_from_env(env: Mapping[str, str], defaults: EnvoySettings) -> EnvoySettings:
    """``defaults`` with what the ``ENVOY_*`` / ``CORS_*`` variables in ``env`` set.

    Raises :class:`SettingsError` listing every unknown key and every bad value."""
    problems = [unknown_key_problem(k) for k in sorted(env) if is_envoy_key(k) and k not in BY_KEY]
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.key)
        if raw is None:
            continue
        try:
            values[setting.field] = setting.kind.parse(raw.strip())
        except Invalid as exc:
            problems.append(Problem(setting.key, str(exc)))
    if problems:
        raise SettingsError(problems)
    try:
        settings: EnvoySettings = _replace(defaults, values)
    except ConfigError as exc:  # CorsSettings' own checks; parse_origin ran already
        raise SettingsError([Problem(ORIGINS_SETTING, str(exc))]) from None
    problems = _port_clashes(settings)
    if problems:
        raise SettingsError(problems)
    return settings


def lenient_settings(env: Mapping[str, str], defaults: EnvoySettings) -> EnvoySettings:
    """``defaults`` with every good value in ``env``, bad and unknown ones skipped: what an
    offline check compares with the rest of the pod, so one bad value hides no other problem."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.key)
        if raw is None:
            continue
        try:
            values[setting.field] = setting.kind.parse(raw.strip())
        except Invalid:
            continue
    settings: EnvoySettings = _replace(defaults, values)
    return settings


def _port_clashes(settings: EnvoySettings) -> list[Problem]:
    seen: dict[int, str] = {}
    problems = []
    for key in _LISTENER_PORTS:
        port = _get(settings, BY_KEY[key].field)
        if port in seen:
            problems.append(Problem(key, f"port {port} is already {seen[port]}'s"))
        else:
            seen[port] = key
    return problems


def settings_to_env(settings: EnvoySettings) -> dict[str, str]:
    """The keys and values that render ``settings`` (every key; the inverse of reading)."""
    return {s.key: s.kind.format(_get(settings, s.field)) for s in SETTINGS}


__all__ = [
    "BY_KEY",
    "PREFIXES",
    "SETTINGS",
    "Invalid",
    "Kind",
    "Problem",
    "Setting",
    "SettingsError",
    "is_envoy_key",
    "lenient_settings",
    "problems_in",
    "settings_from_env",
    "settings_to_env",
    "unknown_key_problem",
]
