"""Configuration of the extproc service (manifest signer), read once from the environment.

| variable | default | meaning |
| --- | --- | --- |
| EXTPROC_GRPC_ADDR | 127.0.0.1:9002 | ext_proc gRPC listen address |
| GRPC_TRANSPORT | lean | `lean` (`playback_drm.h2grpc`, on the event loop) or `grpcio` |
| EXTPROC_HTTP_ADDR | 127.0.0.1:9012 | signed-manifest-URL JSON, /health, /metrics |
| MANIFEST_HLS_TEMPLATE | {videoId}/master.m3u8 | where the HLS manifest lives at the origin |
| MANIFEST_DASH_TEMPLATE | {videoId}/manifest.mpd | where the DASH manifest lives at the origin |
| MANIFEST_MAX_BYTES | 8388608 | larger (decompressed) manifests are refused |
| MANIFEST_CACHE_ENTRIES | 512 | signed manifests kept per process |
| MANIFEST_CACHE_BYTES | 268435456 | bytes they may take (origin and signed bodies) |
| URL_TOKEN_VOD_EXTENSION_MAX | 43200 | cap on VOD segment URL life beyond TTL (0: off) |

The signing policy's settings, read by :meth:`PolicyConfig.from_env` (what they mean:
:mod:`extproc.policy`)::

    ORIGIN_URL                  origin base URL, e.g. http://127.0.0.1:9104/ (required)
    URL_SIGNING_KEYS            kid:base64secret[:retire_after],...; first signs (required)
    URL_TOKEN_MODE              prefix | url                                   (prefix)
    URL_TOKEN_TTL               seconds                                        (300)
    URL_TOKEN_PLAYLIST_TTL      seconds, for re-fetched playlists              (21600)
    URL_TOKEN_WINDOW            seconds; expiries are rounded up to it         (60)
    URL_TOKEN_BINDING           none | ip | session                            (session)
    URL_TOKEN_UNSIGNED_KINDS    comma list of UriKind values left unsigned     (none)
    URL_TOKEN_IN_PLACE_PREFIXES comma list of path prefixes signed in place    (/drm/key/,
                                                                            /drm/license/)
    PUBLIC_BASE_URLS            comma list of our public base URLs, https://host[:port]; the
                                first is the JSON form's default (none: it answers a path)
    CDN_SIGNERS                 JSON list of CDN signer specs, see extproc.signers (none)
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from extproc.signers import UrlSigner, signer_from_spec
from extproc.uri import UriKind
from extproc.urls import normalize_netloc
from playback_drm import urlsign
from playback_drm.contract import KEY_PATH_PREFIX, LICENSE_PATH
from playback_drm.h2grpc import check_transport
from playback_drm.settings import ConfigError, env_addr, env_int, env_list, env_opt, env_str

DEFAULT_PLAYLIST_TTL: Final = 6 * 3600
# Our own routes a manifest may name (HLS keys, license URLs): signed where they are, and always
# bound to the playback session when there is one (they take its stream slot).
IN_PLACE_PREFIXES: Final = (KEY_PATH_PREFIX, LICENSE_PATH + "/")


class TokenMode(enum.Enum):
    PREFIX = "prefix"
    URL = "url"


class Binding(enum.Enum):
    NONE = "none"
    IP = "ip"
    SESSION = "session"


def public_base_url(url: str) -> str:
    """``scheme://host[:port]`` of a public base URL, normalized (lower case, no default port, no
    trailing slash). Raises ``ValueError`` for anything else: a path, a query, user info."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"{url!r} is not a URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} must be an absolute http(s) URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{url!r} must be scheme://host[:port], nothing more")
    return f"{scheme}://{normalize_netloc(scheme, parts.netloc)}"


def _public_base_url_setting(url: str) -> str:
    try:
        return public_base_url(url)
    except ValueError as exc:
        raise ConfigError(f"PUBLIC_BASE_URLS: {exc}") from None


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """How manifests are signed. Build with :meth:`from_env` (see the module docstring)."""

    origin_url: str
    keys: urlsign.KeyRing
    mode: TokenMode = TokenMode.PREFIX
    ttl: int = 300
    playlist_ttl: int | None = None
    window: int = 60
    # A bare policy binds nothing; the service's default (URL_TOKEN_BINDING) is ``session``.
    binding: Binding = Binding.NONE
    unsigned_kinds: frozenset[UriKind] = frozenset()
    public_prefix: str = "/media/"
    in_place_prefixes: tuple[str, ...] = IN_PLACE_PREFIXES
    public_base_urls: tuple[str, ...] = ()
    cdn_signers: Mapping[str, UrlSigner] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = urlsplit(self.origin_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"ORIGIN_URL must be an absolute http(s) URL, got {self.origin_url!r}"
            )
        if parts.query or parts.fragment:
            raise ConfigError("ORIGIN_URL must not have a query or fragment")
        if self.ttl < 1 or self.window < 0 or (self.playlist_ttl or 1) < 1:
            raise ConfigError("URL_TOKEN_TTL, URL_TOKEN_PLAYLIST_TTL must be >= 1, WINDOW >= 0")
        if not (self.public_prefix.startswith("/") and self.public_prefix.endswith("/")):
            raise ConfigError("the public prefix must start and end with '/'")
        for prefix in self.in_place_prefixes:
            if not prefix.startswith("/"):
                raise ConfigError(f"URL_TOKEN_IN_PLACE_PREFIXES: {prefix!r} must start with '/'")
        for url in self.public_base_urls:
            if public_base_url(url) != url:
                raise ConfigError(f"PUBLIC_BASE_URLS: {url!r} is not in normalized form")

    @property
    def public_hosts(self) -> frozenset[str]:
        """The ``host[:port]`` of every public base URL (what absolute URLs are compared with)."""
        return frozenset(url.partition("://")[2] for url in self.public_base_urls)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PolicyConfig:
        keys = urlsign.KeyRing.from_spec(env_str(env, "URL_SIGNING_KEYS"))
        mode_text = env_str(env, "URL_TOKEN_MODE", "prefix").lower()
        binding_text = env_str(env, "URL_TOKEN_BINDING", "session").lower()
        try:
            mode = TokenMode(mode_text)
        except ValueError:
            raise ConfigError(f"URL_TOKEN_MODE must be prefix or url, got {mode_text!r}") from None
        try:
            binding = Binding(binding_text)
        except ValueError:
            raise ConfigError(
                f"URL_TOKEN_BINDING must be none, ip or session, got {binding_text!r}"
            ) from None
        kinds: set[UriKind] = set()
        for name in env_list(env, "URL_TOKEN_UNSIGNED_KINDS"):
            try:
                kinds.add(UriKind(name.lower()))
            except ValueError:
                raise ConfigError(f"URL_TOKEN_UNSIGNED_KINDS: unknown kind {name!r}") from None
        ttl = env_int(env, "URL_TOKEN_TTL", 300, minimum=1)
        if env.get("PUBLIC_HOSTS"):
            raise ConfigError(
                "PUBLIC_HOSTS was replaced by PUBLIC_BASE_URLS: list our public base URLs "
                "(https://host[:port], comma separated), the first being the default"
            )
        public_base_urls = tuple(
            _public_base_url_setting(url) for url in env_list(env, "PUBLIC_BASE_URLS")
        )
        signers: dict[str, UrlSigner] = {}
        raw_signers = env_opt(env, "CDN_SIGNERS")
        if raw_signers:
            try:
                specs: Any = json.loads(raw_signers)
            except ValueError:
                raise ConfigError("CDN_SIGNERS must be a JSON list of signer objects") from None
            if not isinstance(specs, list):
                raise ConfigError("CDN_SIGNERS must be a JSON list of signer objects")
            for spec in specs:
                if not isinstance(spec, dict) or not isinstance(spec.get("host"), str):
                    raise ConfigError("every CDN_SIGNERS entry needs a host")
                host = normalize_netloc("https", spec["host"])
                signers[host] = signer_from_spec(spec, env, ring=keys)
        return cls(
            origin_url=env_str(env, "ORIGIN_URL"),
            keys=keys,
            mode=mode,
            ttl=ttl,
            # Playlists are fetched again later (live reloads, ABR switches deep into a VOD):
            # their URLs get a session-length per-URL token; segments keep the short one.
            playlist_ttl=env_int(
                env, "URL_TOKEN_PLAYLIST_TTL", max(ttl, DEFAULT_PLAYLIST_TTL), minimum=1
            ),
            window=env_int(env, "URL_TOKEN_WINDOW", 60, minimum=0),
            binding=binding,
            unsigned_kinds=frozenset(kinds),
            in_place_prefixes=env_list(env, "URL_TOKEN_IN_PLACE_PREFIXES", IN_PLACE_PREFIXES),
            public_base_urls=tuple(dict.fromkeys(public_base_urls)),
            cdn_signers=signers,
        )


@dataclass(frozen=True, slots=True)
class ExtprocConfig:
    grpc_host: str
    grpc_port: int
    grpc_transport: str
    http_host: str
    http_port: int
    policy: PolicyConfig
    hls_template: str
    dash_template: str
    max_manifest_bytes: int
    cache_entries: int
    cache_bytes: int = 256 << 20
    vod_extension_max: float = 43200.0
    media_prefix: str = "/media"

    @property
    def ttl(self) -> int:
        return self.policy.ttl

    @property
    def window(self) -> int:
        return self.policy.window

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ExtprocConfig:
        grpc_host, grpc_port = env_addr(env, "EXTPROC_GRPC_ADDR", "127.0.0.1:9002")
        http_host, http_port = env_addr(env, "EXTPROC_HTTP_ADDR", "127.0.0.1:9012")
        templates = {}
        for name, default in (
            ("MANIFEST_HLS_TEMPLATE", "{videoId}/master.m3u8"),
            ("MANIFEST_DASH_TEMPLATE", "{videoId}/manifest.mpd"),
        ):
            value = env_str(env, name, default).lstrip("/")
            if not value.startswith("{videoId}/") or value.count("{videoId}") != 1:
                raise ConfigError(f"{name} must look like {{videoId}}/path, got {value!r}")
            templates[name] = value
        return cls(
            grpc_host=grpc_host,
            grpc_port=grpc_port,
            grpc_transport=check_transport(env_str(env, "GRPC_TRANSPORT", "lean")),
            http_host=http_host,
            http_port=http_port,
            policy=PolicyConfig.from_env(env),
            hls_template=templates["MANIFEST_HLS_TEMPLATE"],
            dash_template=templates["MANIFEST_DASH_TEMPLATE"],
            max_manifest_bytes=env_int(env, "MANIFEST_MAX_BYTES", 8 * 1024 * 1024, minimum=1024),
            cache_entries=env_int(env, "MANIFEST_CACHE_ENTRIES", 512, minimum=0),
            cache_bytes=env_int(env, "MANIFEST_CACHE_BYTES", 256 << 20, minimum=0),
            vod_extension_max=float(env_int(env, "URL_TOKEN_VOD_EXTENSION_MAX", 43200, minimum=0)),
        )
