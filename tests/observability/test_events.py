"""CloudEvents mapping, subject scheme and events configuration (pure code)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from nats.aio.client import Server

from playback_drm.events import (
    AUTHZ_SOURCE,
    BROKER_SOURCE,
    CLOUDEVENT_TYPES,
    EVENT_TYPES,
    EXTPROC_SOURCE,
    Event,
    EventsConfig,
    EventType,
    MalformedEvent,
    MemorySink,
    NullSink,
    decode_cloudevent,
    encode_cloudevent,
    from_cloudevent,
    license_issued,
    playback_error,
    playback_started,
    subject_for,
    to_cloudevent,
)
from playback_drm.events.config import parse_nats_urls
from playback_drm.events.natsconn import reconnect_delay, stream_config
from playback_drm.settings import ConfigError
from playback_drm.timefmt import rfc3339_micros as rfc3339


def test_license_issued_is_a_structured_cloudevent() -> None:
    event = license_issued(
        BROKER_SOURCE,
        user_id="alice",
        video_id="big-buck-bunny",
        license_id="lic-1",
        key_system="org.w3.clearkey",
        plan="premium",
        request_id="req-9",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )
    doc = json.loads(encode_cloudevent(event))
    assert doc == {
        "specversion": "1.0",
        "id": event.id,
        "source": "/playback-drm/license-broker",
        "type": "dev.playback-drm.license.issued.v1",
        "time": doc["time"],
        "subject": "big-buck-bunny",
        "datacontenttype": "application/json",
        "data": {
            "userId": "alice",
            "videoId": "big-buck-bunny",
            "licenseId": "lic-1",
            "keySystem": "org.w3.clearkey",
            "plan": "premium",
            "requestId": "req-9",
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
        },
    }
    assert doc["time"].endswith("Z")
    assert abs(from_cloudevent(doc).time - event.time) < 1e-5


def test_round_trip_keeps_every_field() -> None:
    event = playback_error(
        AUTHZ_SOURCE,
        code="token_expired",
        status=401,
        user_id="bob",
        video_id="v1",
        request_id="r1",
    )
    back = decode_cloudevent(encode_cloudevent(event))
    assert back.id == event.id
    assert back.type == event.type
    assert back.source == event.source
    assert back.subject == event.subject
    assert back.data == event.data
    assert abs(back.time - event.time) < 1e-5


def test_optional_fields_are_left_out_and_no_video_means_no_subject() -> None:
    event = playback_error(AUTHZ_SOURCE, code="malformed_request")
    assert event.data == {"code": "malformed_request"}
    doc = to_cloudevent(event)
    assert "subject" not in doc
    started = playback_started(EXTPROC_SOURCE, user_id="u", video_id="v")
    assert started.data == {"userId": "u", "videoId": "v"}


@pytest.mark.parametrize(
    ("event_type", "source", "subject"),
    [
        ("LicenseIssued", BROKER_SOURCE, "playback.events.license-issued.license-broker"),
        ("PlaybackStarted", EXTPROC_SOURCE, "playback.events.playback-started.extproc"),
        ("PlaybackError", AUTHZ_SOURCE, "playback.events.playback-error.authz"),
        (
            "PlaybackError",
            "/playback-drm/Odd Service!/",
            "playback.events.playback-error.odd-service",
        ),
        ("PlaybackError", "", "playback.events.playback-error.unknown"),
    ],
)
def test_subjects_follow_the_scheme(event_type: EventType, source: str, subject: str) -> None:
    assert subject_for(event_type, source) == subject


def test_subjects_never_carry_ids() -> None:
    """Subject cardinality is bounded by kinds x services, not by users or videos."""
    subjects = {
        subject_for(
            license_issued(
                BROKER_SOURCE, user_id=f"u{n}", video_id=f"v{n}", license_id=f"l{n}", key_system="k"
            ).type,
            BROKER_SOURCE,
        )
        for n in range(50)
    }
    assert len(subjects) == 1


def test_every_event_type_has_a_versioned_cloudevent_type() -> None:
    assert set(CLOUDEVENT_TYPES) == set(EVENT_TYPES)
    for ce_type in CLOUDEVENT_TYPES.values():
        assert ce_type.startswith("dev.playback-drm.")
        assert ce_type.endswith(".v1")


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1,2]",
        b'{"type":"com.example.other","id":"1","source":"/x","time":"2024"}',
        b'{"type":"dev.playback-drm.license.issued.v1","source":"/x","time":"2024-01-01T00:00:00Z"}',
    ],
)
def test_foreign_or_broken_documents_are_rejected(raw: bytes) -> None:
    with pytest.raises(MalformedEvent):
        decode_cloudevent(raw)


def test_memory_and_null_sinks_keep_the_seam() -> None:
    event = Event("PlaybackStarted", EXTPROC_SOURCE, "v", {"videoId": "v"})
    memory = MemorySink()
    memory.emit(event)
    assert memory.events == [event]
    assert NullSink().emit(event) is None  # type: ignore[func-returns-value]


def test_config_defaults_and_overrides() -> None:
    default = EventsConfig.from_env({})
    assert default.nats_url is None
    assert default.log_path == Path(".local/events.jsonl")
    assert default.duplicate_window_s >= 120
    assert default.spill_fsync == "batch"
    custom = EventsConfig.from_env(
        {
            "NATS_URL": "nats://a:4222, nats://b:4222",
            "EVENTS_QUEUE_SIZE": "50",
            "EVENTS_SPILL_DIR": "/var/spool/events",
            "EVENTS_SPILL_FSYNC": "segment",
            "EVENTS_DUPLICATE_WINDOW_S": "300",
        }
    )
    assert custom.nats_servers == ["nats://a:4222", "nats://b:4222"]
    assert default.stream_replicas == 1
    assert stream_config(default).num_replicas == 1
    cluster = EventsConfig.from_env({"NATS_URL": "nats://a", "EVENTS_STREAM_REPLICAS": "3"})
    assert stream_config(cluster).num_replicas == 3
    assert custom.queue_size == 50
    assert custom.spill_dir == Path("/var/spool/events")
    assert custom.spill_fsync == "segment"
    assert custom.duplicate_window_s == 300


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"EVENTS_SPILL_FSYNC": "sometimes"}, "EVENTS_SPILL_FSYNC"),
        ({"EVENTS_DUPLICATE_WINDOW_S": "30"}, "EVENTS_DUPLICATE_WINDOW_S"),
        ({"EVENTS_QUEUE_SIZE": "0"}, "EVENTS_QUEUE_SIZE"),
        ({"EVENTS_STREAM": "a.b"}, "EVENTS_STREAM"),
        ({"EVENTS_STREAM_REPLICAS": "0"}, "EVENTS_STREAM_REPLICAS"),
        ({"EVENTS_STREAM_REPLICAS": "7"}, "EVENTS_STREAM_REPLICAS"),
        ({"NATS_URL": "http://a:4222"}, "NATS_URL"),
        ({"NATS_URL": "nats://a:4222,nats://b:notaport"}, "NATS_URL"),
        ({"NATS_URL": "nats://:4222"}, "NATS_URL"),
        ({"NATS_URL": "nats://a:4222/path"}, "NATS_URL"),
        ({"NATS_URL": "nats://a:99999"}, "NATS_URL"),
        ({"NATS_URL": "a:4222"}, "NATS_URL"),
        ({"NATS_URL": "nats://a:4222,ws://b:8080"}, "NATS_URL"),
        ({"NATS_URL": " , ,"}, "NATS_URL"),
    ],
)
def test_bad_config_names_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        EventsConfig.from_env(env)


def test_nats_url_lists_servers_and_errors_keep_credentials_out() -> None:
    assert parse_nats_urls(None) == ()
    assert parse_nats_urls("nats://a:4222, tls://u:p@b:4223 ,nats://c") == (
        "nats://a:4222",
        "tls://u:p@b:4223",
        "nats://c",
    )
    with pytest.raises(ConfigError, match="NATS_URL") as caught:
        parse_nats_urls("nats://user:s3cret@a:4222/x")
    assert "s3cret" not in str(caught.value)


def test_reconnects_go_to_the_server_tried_least_never_back_to_a_dead_one() -> None:
    """nats-py's handler hook connects to the first server of its pool unless told otherwise:
    after a node died, that may be the dead node, forever."""
    choose = reconnect_delay(0.5)
    dead = Server(uri=urlparse("nats://127.0.0.1:4001"), reconnects=3)
    others = [
        Server(uri=urlparse("nats://127.0.0.1:4002"), reconnects=0),
        Server(uri=urlparse("nats://127.0.0.1:4003"), reconnects=0),
    ]
    picked = {choose([dead, *others], {})[0].uri.port for _ in range(50)}
    assert picked == {4002, 4003}
    for _ in range(50):
        _server, delay = choose([dead, *others], {})
        assert 0 <= delay <= 0.05  # backoff on the chosen server's attempts (none yet)
    # every server failing: the wait grows with the attempts, up to the cap
    tired = [Server(uri=s.uri, reconnects=8) for s in (dead, *others)]
    assert max(choose(tired, {})[1] for _ in range(50)) <= 0.5


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False))
@example(1795521600.9999996)  # rounds up into the next second
@example(1795521600.0000005)  # half a microsecond: half-even
@example(1234567890.9999995)
def test_rfc3339_formats_what_datetime_formats(timestamp: float) -> None:
    """The fast path (a cached second, microseconds rounded as datetime rounds them) never
    differs from the datetime it replaces, and parses back."""
    expected = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert rfc3339(timestamp) == expected
