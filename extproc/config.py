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

The signing policy (ORIGIN_URL, URL_SIGNING_KEYS, URL_TOKEN_MODE, URL_TOKEN_TTL,
URL_TOKEN_WINDOW, URL_TOKEN_BINDING, CDN_SIGNERS, ...) is read by
:meth:`extproc.policy.PolicyConfig.from_env`; see that module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from extproc.policy import PolicyConfig
from playback_drm.h2grpc import check_transport
from playback_drm.settings import ConfigError, env_addr, env_int, env_str


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
