"""How events leave a process: :class:`EventsConfig`, read once from the environment.

Configuration (environment variables, read by :meth:`EventsConfig.from_env`)
---------------------------------------------------------------------------

=================================  ========================  ==================================
variable                           default                   meaning
=================================  ========================  ==================================
``NATS_URL``                       (unset)                   NATS URL(s), comma separated
``EVENTS_LOG_PATH``                ``.local/events.jsonl``   JSON-lines log when NATS_URL is unset
``EVENTS_SPILL_DIR``               ``.local/events-spill``   JetStream sink overflow buffer
``EVENTS_QUEUE_SIZE``              ``10000``                 events in memory before spilling
``EVENTS_SPILL_MAX_BYTES``         ``268435456`` (256 MiB)   disk buffer bound, then events drop
``EVENTS_SPILL_SEGMENT_BYTES``     ``8388608`` (8 MiB)       spill segment file rotation size
``EVENTS_SPILL_FSYNC``             ``batch``                 ``batch``, ``segment`` or ``never``
``EVENTS_STREAM``                  ``PLAYBACK_EVENTS``       JetStream stream name
``EVENTS_STREAM_MAX_AGE_S``        ``604800`` (7 days)       stream retention
``EVENTS_DUPLICATE_WINDOW_S``      ``120``                   JetStream dedup window (>= 120 s)
``EVENTS_MAX_INFLIGHT``            ``64``                    unacknowledged publishes at once
``EVENTS_ACK_TIMEOUT_S``           ``2.0``                   wait for an ack before retrying
``EVENTS_DRAIN_TIMEOUT_S``         ``5.0``                   flush deadline on close
``EVENTS_RECONNECT_MAX_WAIT_S``    ``2.0``                   reconnect backoff cap (with jitter)
``EVENTS_LINGER_S``                ``0.1``                   longest wait for a batch to fill
``EVENTS_BACKLOG_RATE``            ``2000``                  events/s a backlog drains at, beyond
                                                            the live rate
=================================  ========================  ==================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

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
        return cls(
            nats_url=env_opt(env, "NATS_URL"),
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
        return [url.strip() for url in (self.nats_url or "").split(",") if url.strip()]
