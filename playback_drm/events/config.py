"""How events leave a process: :class:`EventsConfig`, read once from the environment.

Configuration (environment variables, read by :meth:`EventsConfig.from_env`)
---------------------------------------------------------------------------

=================================  ========================  ==================================
variable                           default                   meaning
=================================  ========================  ==================================
``NATS_URL``                       (unset)                   NATS server URL(s), comma separated:
                                                            ``nats://a:4222,nats://b:4222,...``
``EVENTS_LOG_PATH``                ``.local/events.jsonl``   JSON-lines log when NATS_URL is unset
``EVENTS_SPILL_DIR``               ``.local/events-spill``   JetStream sink overflow buffer
``EVENTS_QUEUE_SIZE``              ``10000``                 events in memory before spilling
``EVENTS_SPILL_MAX_BYTES``         ``268435456`` (256 MiB)   disk buffer bound, then events drop
``EVENTS_SPILL_SEGMENT_BYTES``     ``8388608`` (8 MiB)       spill segment file rotation size
``EVENTS_SPILL_FSYNC``             ``batch``                 ``batch``, ``segment`` or ``never``
``EVENTS_STREAM``                  ``PLAYBACK_EVENTS``       JetStream stream name
``EVENTS_STREAM_MAX_AGE_S``        ``604800`` (7 days)       stream retention
``EVENTS_STREAM_REPLICAS``         ``1``                     stream replicas when the services
                                                            create it (1 to 5; 3 on a cluster)
``EVENTS_DUPLICATE_WINDOW_S``      ``120``                   JetStream dedup window (>= 120 s)
``EVENTS_MAX_INFLIGHT``            ``64``                    unacknowledged publishes at once
``EVENTS_ACK_TIMEOUT_S``           ``2.0``                   wait for an ack before retrying
``EVENTS_DRAIN_TIMEOUT_S``         ``5.0``                   flush deadline on close
``EVENTS_RECONNECT_MAX_WAIT_S``    ``2.0``                   reconnect backoff cap (with jitter)
``EVENTS_LINGER_S``                ``0.1``                   longest wait for a batch to fill
``EVENTS_BACKLOG_RATE``            ``2000``                  events/s a backlog drains at, beyond
                                                            the live rate
=================================  ========================  ==================================

``NATS_URL`` is read by :func:`parse_nats_urls`, the one parser of it: every entry a
``nats://`` or ``tls://`` (or, all of them, ``ws://``/``wss://``) URL with a host and at most a
port and credentials. A bad value stops the service at start-up with an error naming
``NATS_URL`` (credentials left out of the message).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args
from urllib.parse import urlsplit

from playback_drm.events.model import DEFAULT_STREAM
from playback_drm.settings import ConfigError, env_float, env_int, env_opt, env_str

FsyncPolicy = Literal["batch", "segment", "never"]
_FSYNC_POLICIES: Final[tuple[FsyncPolicy, ...]] = get_args(FsyncPolicy)

DEFAULT_LOG_PATH: Final = Path(".local/events.jsonl")
DEFAULT_SPILL_DIR: Final = Path(".local/events-spill")
DEFAULT_QUEUE_SIZE: Final = 10_000
DEFAULT_SPILL_MAX_BYTES: Final = 256 * 1024 * 1024
DEFAULT_SPILL_SEGMENT_BYTES: Final = 8 * 1024 * 1024
DEFAULT_STREAM_MAX_AGE_S: Final = 7 * 24 * 3600.0
MIN_DUPLICATE_WINDOW_S: Final = 120.0
DEFAULT_MAX_INFLIGHT: Final = 64
DEFAULT_ACK_TIMEOUT_S: Final = 2.0
DEFAULT_DRAIN_TIMEOUT_S: Final = 5.0
DEFAULT_RECONNECT_MAX_WAIT_S: Final = 2.0
DEFAULT_LINGER_S: Final = 0.1
DEFAULT_BACKLOG_RATE: Final = 2000.0
DEFAULT_STREAM_REPLICAS: Final = 1
MAX_STREAM_REPLICAS: Final = 5  # JetStream's own limit
_TCP_SCHEMES: Final = frozenset({"nats", "tls"})
_WS_SCHEMES: Final = frozenset({"ws", "wss"})


def _shown(entry: str) -> str:
    """``entry`` for an error message: the credentials, if any, left out."""
    scheme, sep, rest = entry.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return entry


def parse_nats_urls(raw: str | None) -> tuple[str, ...]:
    """The NATS servers ``NATS_URL`` lists (comma separated, blanks ignored); ``()`` when unset.

    Raises :class:`ConfigError` naming ``NATS_URL`` for an entry nats-py could not use.
    """
    servers: list[str] = []
    for entry in (raw or "").split(","):
        url = entry.strip()
        if not url:
            continue
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ConfigError(f"NATS_URL: bad port or host in {_shown(url)!r}") from None
        if parts.scheme not in _TCP_SCHEMES | _WS_SCHEMES:
            raise ConfigError(
                f"NATS_URL: {_shown(url)!r} must start with nats://, tls://, ws:// or wss://"
            )
        if not parts.hostname:
            raise ConfigError(f"NATS_URL: {_shown(url)!r} names no host")
        if port == 0:
            raise ConfigError(f"NATS_URL: {_shown(url)!r} has port 0")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"NATS_URL: {_shown(url)!r} must be scheme://[user:pass@]host[:port]")
        servers.append(url)
    schemes = {urlsplit(url).scheme for url in servers}
    if schemes & _TCP_SCHEMES and schemes & _WS_SCHEMES:
        raise ConfigError("NATS_URL: websocket and plain URLs cannot be mixed")
    if raw is not None and raw.strip() and not servers:
        raise ConfigError(f"NATS_URL lists no server: {raw!r}")
    return tuple(servers)


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """How events leave the process. Built once by :meth:`from_env` (variables in the docstring)."""

    nats_url: str | None = None
    log_path: Path = DEFAULT_LOG_PATH
    spill_dir: Path = DEFAULT_SPILL_DIR
    queue_size: int = DEFAULT_QUEUE_SIZE
    spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES
    spill_segment_bytes: int = DEFAULT_SPILL_SEGMENT_BYTES
    spill_fsync: FsyncPolicy = "batch"
    stream: str = DEFAULT_STREAM
    stream_max_age_s: float = DEFAULT_STREAM_MAX_AGE_S
    stream_replicas: int = DEFAULT_STREAM_REPLICAS
    duplicate_window_s: float = MIN_DUPLICATE_WINDOW_S
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    reconnect_max_wait_s: float = DEFAULT_RECONNECT_MAX_WAIT_S
    linger_s: float = DEFAULT_LINGER_S
    backlog_rate: float = DEFAULT_BACKLOG_RATE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EventsConfig:
        fsync = env_str(env, "EVENTS_SPILL_FSYNC", "batch").lower()
        if fsync not in _FSYNC_POLICIES:
            raise ConfigError(f"EVENTS_SPILL_FSYNC must be one of {_FSYNC_POLICIES}, got {fsync!r}")
        stream = env_str(env, "EVENTS_STREAM", DEFAULT_STREAM)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", stream):
            raise ConfigError(f"EVENTS_STREAM must be a plain stream name, got {stream!r}")
        nats_url = env_opt(env, "NATS_URL")
        parse_nats_urls(nats_url)
        replicas = env_int(env, "EVENTS_STREAM_REPLICAS", DEFAULT_STREAM_REPLICAS, minimum=1)
        if replicas > MAX_STREAM_REPLICAS:
            raise ConfigError(
                f"EVENTS_STREAM_REPLICAS must be at most {MAX_STREAM_REPLICAS}, got {replicas}"
            )
        return cls(
            nats_url=nats_url,
            log_path=Path(env_str(env, "EVENTS_LOG_PATH", str(DEFAULT_LOG_PATH))),
            spill_dir=Path(env_str(env, "EVENTS_SPILL_DIR", str(DEFAULT_SPILL_DIR))),
            queue_size=env_int(env, "EVENTS_QUEUE_SIZE", DEFAULT_QUEUE_SIZE, minimum=1),
            spill_max_bytes=env_int(
                env, "EVENTS_SPILL_MAX_BYTES", DEFAULT_SPILL_MAX_BYTES, minimum=0
            ),
            spill_segment_bytes=env_int(
                env, "EVENTS_SPILL_SEGMENT_BYTES", DEFAULT_SPILL_SEGMENT_BYTES, minimum=1024
            ),
            spill_fsync=fsync,
            stream=stream,
            stream_max_age_s=env_float(
                env, "EVENTS_STREAM_MAX_AGE_S", DEFAULT_STREAM_MAX_AGE_S, minimum=0
            ),
            stream_replicas=replicas,
            duplicate_window_s=env_float(
                env,
                "EVENTS_DUPLICATE_WINDOW_S",
                MIN_DUPLICATE_WINDOW_S,
                minimum=MIN_DUPLICATE_WINDOW_S,
            ),
            max_inflight=env_int(env, "EVENTS_MAX_INFLIGHT", DEFAULT_MAX_INFLIGHT, minimum=1),
            ack_timeout_s=env_float(
                env, "EVENTS_ACK_TIMEOUT_S", DEFAULT_ACK_TIMEOUT_S, minimum=0.01
            ),
            drain_timeout_s=env_float(
                env, "EVENTS_DRAIN_TIMEOUT_S", DEFAULT_DRAIN_TIMEOUT_S, minimum=0
            ),
            reconnect_max_wait_s=env_float(
                env, "EVENTS_RECONNECT_MAX_WAIT_S", DEFAULT_RECONNECT_MAX_WAIT_S, minimum=0.01
            ),
            linger_s=env_float(env, "EVENTS_LINGER_S", DEFAULT_LINGER_S, minimum=0),
            backlog_rate=env_float(env, "EVENTS_BACKLOG_RATE", DEFAULT_BACKLOG_RATE, minimum=0),
        )

    @property
    def nats_servers(self) -> list[str]:
        """The servers ``NATS_URL`` lists (:func:`parse_nats_urls`)."""
        return list(parse_nats_urls(self.nats_url))
