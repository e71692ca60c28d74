"""Configuration of the license broker, read once from the environment.

Service

| variable | default | meaning |
| --- | --- | --- |
| BROKER_HOST | 127.0.0.1 | listen address (API, /health, /metrics) |
| BROKER_PORT | 9003 | listen port |
| MAX_BODY_BYTES | 65536 | larger request bodies get 413 |
| SHUTDOWN_GRACE | 5 | seconds in-flight requests get on shutdown |

Keys (Vault KV v2 when VAULT_ADDR is set, else a JSON key file)

| variable | default | meaning |
| --- | --- | --- |
| VAULT_ADDR | (unset) | Vault/OpenBao address; unset: keys from KEYS_FILE |
| VAULT_TOKEN | (required with VAULT_ADDR) | token with read access to the key paths |
| VAULT_KV_MOUNT | secret | KV v2 mount point |
| VAULT_KEY_PATH | playback/keys/{videoId} | secret path of a video's keys (``{"keys": [...]}``) |
| VAULT_PROVIDER_PATH | playback/providers | optional secret with provider credentials (see below) |
| VAULT_TIMEOUT | 0.5 | seconds a Vault call may take (then `key_store_unavailable`, 503) |
| KEYS_FILE | (demo keys, `demo_keys.py`) | JSON ``{"videos": {"<videoId>": {"keys": [..]}}}`` |
| KEY_CACHE_TTL | 60 | seconds keys are served from memory before a refresh |
| KEY_CACHE_MAX_STALE | 3600 | seconds stale keys may still be served while Vault fails |
| KEY_CACHE_NEGATIVE_TTL | 5 | seconds an unknown video is remembered |
| KEY_CACHE_MAX_VIDEOS | 10000 | videos kept in the key cache |

Licenses and policy

| variable | default | meaning |
| --- | --- | --- |
| REDIS_URL | (unset) | license cache; in-memory when unset; any shape of playback_drm.redisconn |
| REDIS_MAX_CONNECTIONS | 64 | connection pool size |
| REDIS_TIMEOUT | 0.25 | seconds per Redis command (a slow Redis is a cache miss) |
| LICENSE_CACHE_TTL | 300 | seconds an issued license answers identical retries |
| LICENSE_CACHE_MAX_ENTRIES | 10000 | in-memory cache size |
| LICENSE_CACHE_L1_TTL | 10 | with Redis: seconds an in-process copy answers first (0: off) |
| PLAN_POLICIES | (built-in) | JSON overlay on plan profiles (``policy.parse_plan_profiles``) |
| LIVE_LICENSE_DURATION_SECONDS | 600 | longest license of a live video (``"live": true``) |
| LIVE_LICENSE_RENEWAL_SECONDS | 300 | a live license is renewed this long after it was issued |
| HLS_KEY_REQUIRE_USER | false | /drm/key/* also needs x-playback-user (not just authz's mark) |
| HLS_KEY_ANONYMOUS_MAX_TRACK | HD | highest track a /drm/key/* request without plan facts gets |

DRM providers (one adapter per key system; ``none`` disables it)

| variable | default | meaning |
| --- | --- | --- |
| WIDEVINE_PROVIDER | proxy if WIDEVINE_LICENSE_URL | ``proxy`` (signing), ``axinom``, ``none`` |
| WIDEVINE_LICENSE_URL | (unset) | license endpoint |
| WIDEVINE_SIGNER | (required for proxy) | provider name |
| WIDEVINE_SIGNING_KEY | (required for proxy) | AES-256 key, hex (64 digits) |
| WIDEVINE_SIGNING_IV | (required for proxy) | AES IV, hex (32 digits) |
| WIDEVINE_SEND_KEYS | true | include our content keys in ``content_key_specs`` |
| WIDEVINE_SERVICE_CERTIFICATE | (unset) | base64 service certificate served locally |
| PLAYREADY_PROVIDER | soap if PLAYREADY_LICENSE_URL | ``soap``, ``axinom``, ``none`` |
| PLAYREADY_LICENSE_URL | (unset) | SOAP AcquireLicense endpoint |
| PLAYREADY_AUTH_MODE | header | ``header`` or ``customdata`` (``CustomData`` query parameter) |
| PLAYREADY_AUTH_HEADER | Authorization | header carrying ``Bearer <token>`` in header mode |
| PLAYREADY_AUTH_TOKEN | (unset) | our credential at the PlayReady server |
| FAIRPLAY_PROVIDER | ksm if FAIRPLAY_KSM_URL | ``ksm``, ``axinom``, ``none`` |
| FAIRPLAY_KSM_URL | (unset) | KSM endpoint taking ``spc=...&assetId=...`` |
| FAIRPLAY_CERTIFICATE_URL | (unset) | where the FPS application certificate is fetched |
| FAIRPLAY_CERTIFICATE | (unset) | base64 FPS certificate served locally instead |
| FAIRPLAY_AUTH_TOKEN | (unset) | our credential at the KSM |
| AXINOM_COM_KEY_ID | (required for axinom) | communication key id (UUID) |
| AXINOM_COM_KEY | (required for axinom) | communication key, base64 |
| AXINOM_MESSAGE_TTL | 300 | seconds an entitlement message is valid |
| CERTIFICATE_CACHE_TTL | 3600 | seconds a fetched certificate is reused |

Credentials found in the Vault secret ``VAULT_PROVIDER_PATH`` (keys ``widevine_signer``,
``widevine_signing_key``, ``widevine_signing_iv``, ``playready_auth_token``,
``fairplay_auth_token``, ``axinom_com_key_id``, ``axinom_com_key``) override the environment
at start-up.

Provider calls

| variable | default | meaning |
| --- | --- | --- |
| PROVIDER_TIMEOUT | 0.75 | seconds for a whole provider call, retries included |
| PROVIDER_CONNECT_TIMEOUT | 0.25 | seconds to open a connection |
| PROVIDER_RETRIES | 1 | extra attempts after a connection failure or a 503 |
| PROVIDER_RETRY_BACKOFF | 0.05 | base seconds of the jittered exponential backoff |
| PROVIDER_POOL_SIZE | 32 | connections per provider |
| PROVIDER_KEEPALIVE | 60 | seconds an idle connection is kept |
| PROVIDER_WARM_CONNECTIONS | 2 | connections opened at start-up |
| PROVIDER_KEEPWARM_INTERVAL | 30 | seconds between keep-warm requests (0: off) |
| BREAKER_FAILURE_THRESHOLD | 5 | consecutive failures that open a provider's circuit |
| BREAKER_COOLDOWN | 10 | seconds an open circuit waits before one trial request |
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from license_broker.encoding import b64decode_lenient
from license_broker.model import Track, parse_track
from license_broker.policy import DEFAULT_PLAN_PROFILES, PlanProfile, parse_plan_profiles
from playback_drm.redisconn import RedisTarget, env_redis
from playback_drm.settings import (
    ConfigError,
    env_bool,
    env_float,
    env_int,
    env_opt,
    env_str,
)

# Fail fast (seconds): a request that cannot be served is a 503/504 problem in well under 1 s.
DEFAULT_VAULT_TIMEOUT: Final = 0.5
DEFAULT_PROVIDER_TIMEOUT: Final = 0.75
DEFAULT_PROVIDER_CONNECT_TIMEOUT: Final = 0.25
PLAYREADY_SOAP_ACTION: Final = '"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense"'


def _hex_value(raw: str, name: str, length: int) -> bytes:
    try:
        value = bytes.fromhex(raw)
    except ValueError:
        raise ConfigError(f"{name} must be hex") from None
    if len(value) != length:
        raise ConfigError(f"{name} must be {length} bytes ({length * 2} hex digits)")
    return value


def _b64_value(raw: str, name: str) -> bytes:
    try:
        return b64decode_lenient(raw)
    except (ValueError, binascii.Error):
        raise ConfigError(f"{name} must be base64") from None


def _hex(env: Mapping[str, str], name: str, length: int) -> bytes:
    raw = env_opt(env, name)
    return b"" if raw is None else _hex_value(raw, name, length)


def _b64(env: Mapping[str, str], name: str) -> bytes | None:
    raw = env_opt(env, name)
    return None if raw is None else _b64_value(raw, name)


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env_str(env, name, default).lower()
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class WidevineSettings:
    adapter: str = "none"
    license_url: str | None = None
    signer: str = ""
    signing_key: bytes = field(default=b"", repr=False)
    signing_iv: bytes = field(default=b"", repr=False)
    send_keys: bool = True
    service_certificate: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class PlayReadySettings:
    adapter: str = "none"
    license_url: str | None = None
    auth_mode: str = "header"
    auth_header: str = "Authorization"
    auth_token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class FairPlaySettings:
    adapter: str = "none"
    ksm_url: str | None = None
    certificate_url: str | None = None
    certificate: bytes | None = field(default=None, repr=False)
    auth_token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class AxinomSettings:
    com_key_id: str = ""
    com_key: bytes = field(default=b"", repr=False)
    message_ttl_s: int = 300


@dataclass(frozen=True, slots=True)
class ProviderCallSettings:
    # A license that cannot be issued fails in well under a second (Envoy, authz and the broker
    # add milliseconds): a viewer waits less, and retries sooner, than behind a hung provider.
    timeout: float = DEFAULT_PROVIDER_TIMEOUT
    connect_timeout: float = DEFAULT_PROVIDER_CONNECT_TIMEOUT
    retries: int = 1
    retry_backoff: float = 0.05
    pool_size: int = 32
    keepalive: float = 60.0
    warm_connections: int = 2
    keepwarm_interval: float = 30.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 10.0


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 9003
    max_body_bytes: int = 65536
    shutdown_grace: float = 5.0

    vault_addr: str | None = None
    vault_token: str = field(default="", repr=False)
    vault_mount: str = "secret"
    vault_key_path: str = "playback/keys/{videoId}"
    vault_provider_path: str | None = "playback/providers"
    vault_timeout: float = DEFAULT_VAULT_TIMEOUT
    keys_file: Path | None = None
    key_cache_ttl: float = 60.0
    key_cache_max_stale: float = 3600.0
    key_cache_negative_ttl: float = 5.0
    key_cache_max_videos: int = 10000

    redis: RedisTarget | None = None
    redis_max_connections: int = 64
    redis_timeout: float = 0.25
    license_cache_ttl: int = 300
    license_cache_max_entries: int = 10000
    license_cache_l1_ttl: float = 10.0
    plan_profiles: Mapping[str, PlanProfile] = field(
        default_factory=lambda: dict(DEFAULT_PLAN_PROFILES)
    )
    hls_key_require_user: bool = False
    hls_key_anonymous_max_track: Track = Track.HD

    widevine: WidevineSettings = field(default_factory=WidevineSettings)
    playready: PlayReadySettings = field(default_factory=PlayReadySettings)
    fairplay: FairPlaySettings = field(default_factory=FairPlaySettings)
    axinom: AxinomSettings = field(default_factory=AxinomSettings)
    calls: ProviderCallSettings = field(default_factory=ProviderCallSettings)
    certificate_cache_ttl: float = 3600.0
    live_license_duration: int = 600
    live_license_renewal: int = 300

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BrokerConfig:
        vault_addr = env_opt(env, "VAULT_ADDR")
        vault_token = env_opt(env, "VAULT_TOKEN") or ""
        if vault_addr and not vault_token:
            raise ConfigError("VAULT_TOKEN is required when VAULT_ADDR is set")
        key_path = env_str(env, "VAULT_KEY_PATH", "playback/keys/{videoId}")
        if "{videoId}" not in key_path:
            raise ConfigError("VAULT_KEY_PATH must contain {videoId}")
        profiles: Mapping[str, PlanProfile] = dict(DEFAULT_PLAN_PROFILES)
        plan_raw = env_opt(env, "PLAN_POLICIES")
        if plan_raw:
            try:
                profiles = parse_plan_profiles(plan_raw, profiles)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"PLAN_POLICIES: {exc}") from None
        try:
            anon_track = parse_track(env_str(env, "HLS_KEY_ANONYMOUS_MAX_TRACK", "HD"))
        except ValueError as exc:
            raise ConfigError(f"HLS_KEY_ANONYMOUS_MAX_TRACK: {exc}") from None

        wv_url = env_opt(env, "WIDEVINE_LICENSE_URL")
        widevine = WidevineSettings(
            adapter=_choice(
                env, "WIDEVINE_PROVIDER", "proxy" if wv_url else "none", ("proxy", "axinom", "none")
            ),
            license_url=wv_url,
            signer=env_opt(env, "WIDEVINE_SIGNER") or "",
            signing_key=_hex(env, "WIDEVINE_SIGNING_KEY", 32),
            signing_iv=_hex(env, "WIDEVINE_SIGNING_IV", 16),
            send_keys=env_bool(env, "WIDEVINE_SEND_KEYS", True),
            service_certificate=_b64(env, "WIDEVINE_SERVICE_CERTIFICATE"),
        )
        pr_url = env_opt(env, "PLAYREADY_LICENSE_URL")
        playready = PlayReadySettings(
            adapter=_choice(
                env, "PLAYREADY_PROVIDER", "soap" if pr_url else "none", ("soap", "axinom", "none")
            ),
            license_url=pr_url,
            auth_mode=_choice(env, "PLAYREADY_AUTH_MODE", "header", ("header", "customdata")),
            auth_header=env_str(env, "PLAYREADY_AUTH_HEADER", "Authorization"),
            auth_token=env_opt(env, "PLAYREADY_AUTH_TOKEN") or "",
        )
        fp_url = env_opt(env, "FAIRPLAY_KSM_URL")
        fairplay = FairPlaySettings(
            adapter=_choice(
                env, "FAIRPLAY_PROVIDER", "ksm" if fp_url else "none", ("ksm", "axinom", "none")
            ),
            ksm_url=fp_url,
            certificate_url=env_opt(env, "FAIRPLAY_CERTIFICATE_URL"),
            certificate=_b64(env, "FAIRPLAY_CERTIFICATE"),
            auth_token=env_opt(env, "FAIRPLAY_AUTH_TOKEN") or "",
        )
        axinom = AxinomSettings(
            com_key_id=env_opt(env, "AXINOM_COM_KEY_ID") or "",
            com_key=_b64(env, "AXINOM_COM_KEY") or b"",
            message_ttl_s=env_int(env, "AXINOM_MESSAGE_TTL", 300, minimum=10),
        )
        calls = ProviderCallSettings(
            timeout=env_float(env, "PROVIDER_TIMEOUT", DEFAULT_PROVIDER_TIMEOUT, minimum=0.01),
            connect_timeout=env_float(
                env, "PROVIDER_CONNECT_TIMEOUT", DEFAULT_PROVIDER_CONNECT_TIMEOUT, minimum=0.01
            ),
            retries=env_int(env, "PROVIDER_RETRIES", 1, minimum=0),
            retry_backoff=env_float(env, "PROVIDER_RETRY_BACKOFF", 0.05, minimum=0.0),
            pool_size=env_int(env, "PROVIDER_POOL_SIZE", 32, minimum=1),
            keepalive=env_float(env, "PROVIDER_KEEPALIVE", 60.0, minimum=1.0),
            warm_connections=env_int(env, "PROVIDER_WARM_CONNECTIONS", 2, minimum=0),
            keepwarm_interval=env_float(env, "PROVIDER_KEEPWARM_INTERVAL", 30.0, minimum=0.0),
            breaker_threshold=env_int(env, "BREAKER_FAILURE_THRESHOLD", 5, minimum=1),
            breaker_cooldown=env_float(env, "BREAKER_COOLDOWN", 10.0, minimum=0.01),
        )
        keys_file = env_opt(env, "KEYS_FILE")
        config = cls(
            host=env_str(env, "BROKER_HOST", "127.0.0.1"),
            port=env_int(env, "BROKER_PORT", 9003, minimum=0),
            max_body_bytes=env_int(env, "MAX_BODY_BYTES", 65536, minimum=1024),
            shutdown_grace=env_float(env, "SHUTDOWN_GRACE", 5.0, minimum=0.0),
            vault_addr=vault_addr,
            vault_token=vault_token,
            vault_mount=env_str(env, "VAULT_KV_MOUNT", "secret"),
            vault_key_path=key_path,
            vault_provider_path=env_str(env, "VAULT_PROVIDER_PATH", "playback/providers"),
            vault_timeout=env_float(env, "VAULT_TIMEOUT", DEFAULT_VAULT_TIMEOUT, minimum=0.05),
            keys_file=Path(keys_file) if keys_file else None,
            key_cache_ttl=env_float(env, "KEY_CACHE_TTL", 60.0, minimum=0.0),
            key_cache_max_stale=env_float(env, "KEY_CACHE_MAX_STALE", 3600.0, minimum=0.0),
            key_cache_negative_ttl=env_float(env, "KEY_CACHE_NEGATIVE_TTL", 5.0, minimum=0.0),
            key_cache_max_videos=env_int(env, "KEY_CACHE_MAX_VIDEOS", 10000, minimum=1),
            redis=env_redis(env, "REDIS_URL"),
            redis_max_connections=env_int(env, "REDIS_MAX_CONNECTIONS", 64, minimum=1),
            redis_timeout=env_float(env, "REDIS_TIMEOUT", 0.25, minimum=0.01),
            license_cache_ttl=env_int(env, "LICENSE_CACHE_TTL", 300, minimum=0),
            license_cache_max_entries=env_int(env, "LICENSE_CACHE_MAX_ENTRIES", 10000, minimum=1),
            license_cache_l1_ttl=env_float(env, "LICENSE_CACHE_L1_TTL", 10.0, minimum=0.0),
            plan_profiles=profiles,
            hls_key_require_user=env_bool(env, "HLS_KEY_REQUIRE_USER", False),
            hls_key_anonymous_max_track=anon_track,
            widevine=widevine,
            playready=playready,
            fairplay=fairplay,
            axinom=axinom,
            calls=calls,
            certificate_cache_ttl=env_float(env, "CERTIFICATE_CACHE_TTL", 3600.0, minimum=0.0),
            live_license_duration=env_int(env, "LIVE_LICENSE_DURATION_SECONDS", 600, minimum=60),
            live_license_renewal=env_int(env, "LIVE_LICENSE_RENEWAL_SECONDS", 300, minimum=10),
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Fail fast on adapters configured without what they need (names the variable)."""
        if self.live_license_renewal * 2 > self.live_license_duration:
            raise ConfigError(
                "LIVE_LICENSE_RENEWAL_SECONDS must be at most half of LIVE_LICENSE_DURATION_SECONDS"
                " (a renewal that fails once must have time to be retried)"
            )
        wv = self.widevine
        if wv.adapter != "none" and not wv.license_url:
            raise ConfigError("WIDEVINE_LICENSE_URL is required when WIDEVINE_PROVIDER is set")
        if wv.adapter == "proxy":
            for name, value in (
                ("WIDEVINE_SIGNER", wv.signer),
                ("WIDEVINE_SIGNING_KEY", wv.signing_key),
                ("WIDEVINE_SIGNING_IV", wv.signing_iv),
            ):
                if not value:
                    raise ConfigError(f"{name} is required when WIDEVINE_PROVIDER=proxy")
        if self.playready.adapter != "none" and not self.playready.license_url:
            raise ConfigError("PLAYREADY_LICENSE_URL is required when PLAYREADY_PROVIDER is set")
        if self.fairplay.adapter != "none" and not self.fairplay.ksm_url:
            raise ConfigError("FAIRPLAY_KSM_URL is required when FAIRPLAY_PROVIDER is set")
        if "axinom" in (wv.adapter, self.playready.adapter, self.fairplay.adapter) and (
            not self.axinom.com_key_id or not self.axinom.com_key
        ):
            raise ConfigError("AXINOM_COM_KEY_ID and AXINOM_COM_KEY are required for axinom")

    def with_credentials(self, secret: Mapping[str, str]) -> BrokerConfig:
        """A copy with provider credentials from a Vault secret (keys in the module docstring).

        Errors name the secret's key (``vault:widevine_signing_key``), never its value."""
        got = {k: str(v) for k, v in secret.items() if v is not None and str(v) != ""}
        widevine = self.widevine
        if "widevine_signer" in got:
            widevine = replace(widevine, signer=got["widevine_signer"])
        if "widevine_signing_key" in got:
            key = _hex_value(got["widevine_signing_key"], "vault:widevine_signing_key", 32)
            widevine = replace(widevine, signing_key=key)
        if "widevine_signing_iv" in got:
            iv = _hex_value(got["widevine_signing_iv"], "vault:widevine_signing_iv", 16)
            widevine = replace(widevine, signing_iv=iv)
        playready = self.playready
        if "playready_auth_token" in got:
            playready = replace(playready, auth_token=got["playready_auth_token"])
        fairplay = self.fairplay
        if "fairplay_auth_token" in got:
            fairplay = replace(fairplay, auth_token=got["fairplay_auth_token"])
        axinom = self.axinom
        if "axinom_com_key_id" in got:
            axinom = replace(axinom, com_key_id=got["axinom_com_key_id"])
        if "axinom_com_key" in got:
            com_key = _b64_value(got["axinom_com_key"], "vault:axinom_com_key")
            axinom = replace(axinom, com_key=com_key)
        updated = replace(
            self, widevine=widevine, playready=playready, fairplay=fairplay, axinom=axinom
        )
        updated.validate()
        return updated
