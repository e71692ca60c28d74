"""The CORS policy browser players need, defined once for every rendering of the edge.

Players live on the platform's web origin (``https://www.example.tv``) and call the sidecar behind
the API gateway on another (``https://api.example.tv``), so every answer they read, the errors
included, must pass the browser's CORS check. The policy, for ``/playback/*``, ``/media/*`` and
``/drm/*`` alike (one policy on the sidecar's virtual host):

- **Origins**: an explicit list (``CORS_ALLOWED_ORIGINS``), each ``scheme://host[:port]`` or a
  subdomain wildcard ``https://*.example.tv``. Never ``*``: credentials are allowed, and a
  credentialed answer must name the origin (browsers refuse ``*`` with credentials).
- **Credentials**: allowed for the listed origins. dash.js sends its license request with
  credentials as soon as the page gives it an ``Authorization`` header; Shaka Player and hls.js
  send none by default, and a credentialed answer does not hurt them.
- **Methods and request headers**: what players send (:data:`ALLOW_METHODS`,
  :data:`ALLOW_HEADERS`); **exposed headers**: what players and pages read
  (:data:`EXPOSE_HEADERS`). The same sets render into Envoy's ``CorsPolicy`` here, Istio's
  ``corsPolicy`` and Envoy Gateway's ``SecurityPolicy.cors`` (k8s/components: the tests compare).
- **Preflight cache**: ``Access-Control-Max-Age`` (``CORS_MAX_AGE``, 7200 s: Chromium's cap).

Envoy is the one place CORS is decided: answers from upstreams lose any ``Access-Control-*``
header of their own (an origin bucket configured with ``*`` cannot widen the policy), preflights
from origins not on the list are answered by Envoy without ``Access-Control-Allow-Origin``
instead of being forwarded, and every answer carries ``Vary: Origin`` so a CDN in front never
hands one origin's answer to another.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from envoyconf.typeurls import T_CORS_POLICY
from playback_drm.settings import ConfigError, env_int, env_list

ORIGINS_SETTING: Final = "CORS_ALLOWED_ORIGINS"
MAX_AGE_SETTING: Final = "CORS_MAX_AGE"

ALLOW_METHODS: Final = ("GET", "HEAD", "POST", "OPTIONS")
"""GET manifests, segments, keys and certificates; HEAD for players' clock sync
(``urn:mpeg:dash:utc:http-head``); POST licenses."""

ALLOW_HEADERS: Final = (
    "authorization",  # the viewer's JWT on license requests (Shaka request filter, dash.js)
    "content-type",  # license bodies: application/octet-stream, application/json, text/xml
    "soapaction",  # PlayReady's SOAP AcquireLicense
    "x-requested-with",  # pages and player plugins built on jQuery-style XHR helpers
    "range",  # byte-range segment requests (SegmentBase, EXT-X-BYTERANGE)
    "cmcd-object",  # CMCD in header mode (CTA-5004): dash.js, Shaka, hls.js
    "cmcd-request",
    "cmcd-session",
    "cmcd-status",
    "x-request-id",  # players and pages that correlate their requests with our logs
    "traceparent",  # W3C trace context from instrumented pages
    "tracestate",
)
"""Request headers players send to the edge (lower case; HTTP header names are case-insensitive)."""

EXPOSE_HEADERS: Final = (
    "x-playback-license-id",  # the license broker's native answers
    "x-playback-license-expires",
    "x-request-id",  # for support requests: the id of the refused request
    "retry-after",  # 429 and 503: when to try again
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "www-authenticate",  # 401: why the token was refused
    "content-range",  # byte-range answers
    "content-length",
    "date",  # players' clock sync against the server's Date
)
"""Response headers a page may read besides the CORS-safelisted ones."""

DEFAULT_MAX_AGE_S: Final = 7200
"""Chromium caps a preflight cache at two hours (Firefox at 24 hours)."""

# Answers from upstreams lose these: Envoy's CORS filter is the only author of CORS headers.
UPSTREAM_HEADERS_DROPPED: Final = (
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
)

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_IPV6 = re.compile(r"^\[[0-9a-f:.]+\]$")
_ORIGIN = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[^\]/]*\]|[^:/?#]*)"
    r"(?::(?P<port>[^/?#]*))?(?P<tail>.*)$"
)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class CorsSettings:
    """The deployment's part of the policy: which origins, and how long a preflight is cached."""

    origins: tuple[str, ...]
    max_age_s: int = DEFAULT_MAX_AGE_S

    def __post_init__(self) -> None:
        canonical = parse_origins(self.origins)
        if canonical != self.origins:
            raise ConfigError(
                f"{ORIGINS_SETTING}: origins must be given in canonical form "
                f"{list(canonical)}, got {list(self.origins)}"
            )
        if not 0 <= self.max_age_s <= 86400:
            raise ConfigError(
                f"{MAX_AGE_SETTING} must be between 0 and 86400, got {self.max_age_s}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str], defaults: CorsSettings) -> CorsSettings:
        """``defaults`` with what ``CORS_ALLOWED_ORIGINS`` and ``CORS_MAX_AGE`` override."""
        raw = env_list(env, "CORS_ALLOWED_ORIGINS")
        origins = parse_origins(raw) if raw else defaults.origins
        max_age = env_int(env, "CORS_MAX_AGE", defaults.max_age_s, minimum=0)
        return cls(origins=origins, max_age_s=max_age)


def parse_origins(values: Iterable[str]) -> tuple[str, ...]:
    """Validate and canonicalise origins (lower case, default port dropped, duplicates removed):
    the exact strings browsers send in ``Origin``. Raises :class:`ConfigError` naming the
    setting on anything that is not an origin."""
    out: list[str] = []
    for value in values:
        origin = parse_origin(value)
        if origin not in out:
            out.append(origin)
    return tuple(out)


def parse_origin(value: str) -> str:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{ORIGINS_SETTING}: {value!r} is not an origin: {why}")

    text = value.strip()
    if text == "*":
        raise bad(
            "'*' is not allowed: credentials are, so each origin must be listed "
            "(a subdomain wildcard such as https://*.example.tv is fine)"
        )
    if text.lower() == "null":
        raise bad("the 'null' origin (sandboxed frames, file: pages) cannot be trusted")
    match = _ORIGIN.match(text.lower())
    if match is None:
        raise bad("expected scheme://host[:port], e.g. https://www.example.tv")
    scheme, host, digits, tail = match["scheme"], match["host"], match["port"], match["tail"]
    if scheme not in _DEFAULT_PORTS:
        raise bad(f"scheme must be http or https, got {scheme!r}")
    port: int | None = None
    if digits is not None:
        if not digits.isdigit() or not 0 < int(digits) < 65536:
            raise bad(f"port must be 1-65535, got {digits!r}")
        port = int(digits)
    if tail:
        plain = f"{scheme}://{host}" + (f":{port}" if port else "")
        raise bad(f"an origin has no path, query or fragment: did you mean {plain!r}?")
    if "@" in host:
        raise bad("an origin has no user name or password")
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if _IPV6.match(name):
        if wildcard:
            raise bad("a wildcard needs a domain name")
    elif not _HOST.match(name):
        raise bad(f"{host!r} is not a host name")
    elif wildcard and name.count(".") < 1:
        raise bad("a wildcard needs at least two labels after '*.', e.g. https://*.example.tv")
    if port == _DEFAULT_PORTS[scheme]:
        port = None  # browsers leave the default port out of Origin
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _origin_matcher(origin: str) -> dict[str, Any]:
    scheme, _, authority = origin.partition("://")
    if not authority.startswith("*."):
        return {"exact": origin}
    # one or more DNS labels, then the listed suffix; kept small (Envoy refuses RE2 programs
    # above 100 instructions)
    suffix = re.escape(authority[2:])  # "example.tv[:port]"
    return {"safe_regex": {"regex": rf"^{re.escape(scheme)}://(?:[a-z0-9-]+\.)+{suffix}$"}}


def envoy_cors_policy(cors: CorsSettings) -> dict[str, Any]:
    """Envoy's ``CorsPolicy`` (per-filter config of ``envoy.filters.http.cors``)."""
    return {
        "@type": T_CORS_POLICY,
        "allow_origin_string_match": [_origin_matcher(o) for o in cors.origins],
        "allow_methods": ", ".join(ALLOW_METHODS),
        "allow_headers": ", ".join(ALLOW_HEADERS),
        "expose_headers": ", ".join(EXPOSE_HEADERS),
        "max_age": str(cors.max_age_s),
        "allow_credentials": True,
        # Envoy answers a preflight from an origin not on the list itself (no
        # Access-Control-Allow-Origin) rather than sending it through authz to an upstream.
        "forward_not_matching_preflights": False,
    }


def istio_cors_policy(cors: CorsSettings) -> dict[str, Any]:
    """The same policy as an Istio VirtualService route's ``corsPolicy``."""
    origins: list[dict[str, str]] = []
    for origin in cors.origins:
        matcher = _origin_matcher(origin)
        origins.append(
            {"exact": matcher["exact"]}
            if "exact" in matcher
            else {"regex": matcher["safe_regex"]["regex"]}
        )
    return {
        "allowOrigins": origins,
        "allowMethods": list(ALLOW_METHODS),
        "allowHeaders": list(ALLOW_HEADERS),
        "exposeHeaders": list(EXPOSE_HEADERS),
        "maxAge": f"{cors.max_age_s}s",
        "allowCredentials": True,
    }


def envoy_gateway_cors(cors: CorsSettings) -> dict[str, Any]:
    """The same policy as an Envoy Gateway ``SecurityPolicy``'s ``cors`` (which takes
    ``https://*.example.tv`` as it is)."""
    return {
        "allowOrigins": list(cors.origins),
        "allowMethods": list(ALLOW_METHODS),
        "allowHeaders": list(ALLOW_HEADERS),
        "exposeHeaders": list(EXPOSE_HEADERS),
        "maxAge": f"{cors.max_age_s}s",
        "allowCredentials": True,
    }


def vary_on_origin() -> list[dict[str, Any]]:
    """``response_headers_to_add``: answers differ by ``Origin`` (caches must key on it)."""
    return [
        {
            "header": {"key": "vary", "value": "Origin"},
            "append_action": "APPEND_IF_EXISTS_OR_ADD",
        }
    ]


__all__ = [
    "ALLOW_HEADERS",
    "ALLOW_METHODS",
    "DEFAULT_MAX_AGE_S",
    "EXPOSE_HEADERS",
    "MAX_AGE_SETTING",
    "ORIGINS_SETTING",
    "UPSTREAM_HEADERS_DROPPED",
    "CorsSettings",
    "envoy_cors_policy",
    "envoy_gateway_cors",
    "istio_cors_policy",
    "parse_origin",
    "parse_origins",
    "vary_on_origin",
]
