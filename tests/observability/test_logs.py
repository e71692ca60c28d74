"""JSON logs: the fields on-call engineers filter on, and no token, key or signature, ever."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from playback_drm import tracing
from playback_drm.logs import (
    REDACTED,
    LoggingConfig,
    LoggingHandle,
    configure_logging,
    redact,
)
from playback_drm.settings import ConfigError

JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImRldi0xIn0"
    ".eyJzdWIiOiJhbGljZSIsImV4cCI6MTcwMDAwMDAwMH0"
    ".c2lnbmF0dXJlLWJ5dGVzLXRoYXQtbG9vay1yZWFsLWVub3VnaA"
)
PDT = "v1.1700000000.k1.%2Fmedia%2Fv1%2F.ip.Zk9yZ2VkU2lnbmF0dXJlVmFsdWU"
HEX_KEY = "00112233445566778899aabbccddeeff"
B64_KEY = "ABEiM0RVZneImaq7zN3u_w"
SECRETS = (
    JWT,
    PDT,
    HEX_KEY,
    B64_KEY,
    "Zk9yZ2VkU2lnbmF0dXJlVmFsdWU",
    "c3VwZXJzZWNyZXQ",
    "deadbeefcafebabe0123",
    "amzsig0123456789abcdef",
    "opaque-bearer-credential",
)


@pytest.fixture
def log_output() -> Iterator[tuple[io.StringIO, LoggingHandle]]:
    out = io.StringIO()
    handle = configure_logging("authz", "DEBUG", json=True, stream=out, background=False)
    yield out, handle
    handle.close()


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_one_json_object_per_line_with_context_fields(
    log_output: tuple[io.StringIO, LoggingHandle],
) -> None:
    out, _ = log_output
    logging.getLogger("authz.server").info(
        "admitted %s",
        "alice",
        extra={
            "userId": "alice",
            "videoId": "v1",
            "licenseId": "lic-1",
            "requestId": "r-1",
            "route": "manifest",
        },
    )
    (doc,) = lines(out)
    assert doc["message"] == "admitted alice"
    assert doc["level"] == "INFO"
    assert doc["service"] == "authz"
    assert doc["logger"] == "authz.server"
    assert doc["userId"] == "alice"
    assert doc["videoId"] == "v1"
    assert doc["licenseId"] == "lic-1"
    assert doc["requestId"] == "r-1"
    assert doc["route"] == "manifest"
    assert "traceId" not in doc  # no span, no trace id
    # RFC 3339 UTC with milliseconds
    assert len(doc["timestamp"]) == len("2025-01-01T00:00:00.000Z")
    assert doc["timestamp"][10] == "T"
    assert doc["timestamp"].endswith("Z")


def test_trace_and_span_ids_come_from_the_current_span(
    log_output: tuple[io.StringIO, LoggingHandle],
) -> None:
    out, _ = log_output
    with (
        tracing.in_memory_tracing("authz") as handle,
        tracing.span(tracing.AUTHZ_CHECK_TOKEN) as span,
    ):
        assert span is not None
        logging.getLogger("authz.server").warning("slow entitlement lookup")
    (doc,) = lines(out)
    (finished,) = handle.finished_spans()
    assert finished.context is not None
    assert doc["traceId"] == format(finished.context.trace_id, "032x")
    assert doc["spanId"] == format(finished.context.span_id, "016x")


def test_exceptions_are_logged_with_type_and_traceback(
    log_output: tuple[io.StringIO, LoggingHandle],
) -> None:
    out, _ = log_output
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        logging.getLogger("authz").exception("check failed", extra={"videoId": "v9"})
    (doc,) = lines(out)
    assert doc["exceptionType"] == "ValueError"
    assert "Traceback" in doc["exception"]
    assert JWT not in doc["exception"]
    assert REDACTED in doc["exception"]


REDACTION_CASES = [
    ("jwt in text", f"token was {JWT} for alice", JWT),
    ("jwt query", f"GET /playback/v1/manifest?token={JWT}", JWT),
    ("pdt", f"/media/v1/seg1.ts?pdt={PDT}&_HLS_msn=3", PDT),
    (
        "cloudfront",
        "seg.ts?Expires=1700000000&Signature=c3VwZXJzZWNyZXQ~&Key-Pair-Id=K1",
        "c3VwZXJzZWNyZXQ",
    ),
    (
        "s3",
        "x?X-Amz-Algorithm=AWS4&X-Amz-Signature=amzsig0123456789abcdef&X-Amz-Date=1",
        "amzsig0123456789abcdef",
    ),
    (
        "akamai",
        "/v/a.ts?__token__=exp=1700000000~acl=/v/*~hmac=deadbeefcafebabe0123",
        "deadbeefcafebabe0123",
    ),
    ("hmac", "hmac=deadbeefcafebabe0123", "deadbeefcafebabe0123"),
    ("bearer", "Authorization: Bearer opaque-bearer-credential", "opaque-bearer-credential"),
    ("clearkey jwk", f'{{"keys":[{{"kty":"oct","kid":"a1","k":"{B64_KEY}"}}]}}', B64_KEY),
    ("key assignment", f"loaded key={HEX_KEY} from vault", HEX_KEY),
    ("pem", "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----", "MIIEvQ"),
]


@pytest.mark.parametrize(
    ("case", "message", "secret"), REDACTION_CASES, ids=[case[0] for case in REDACTION_CASES]
)
def test_secrets_in_messages_are_redacted(
    log_output: tuple[io.StringIO, LoggingHandle],
    case: str,
    message: str,
    secret: str,
) -> None:
    out, _ = log_output
    logging.getLogger("extproc").info("%s", message)
    text = out.getvalue()
    assert secret not in text, case
    assert REDACTED in json.loads(text)["message"]


def test_secret_fields_are_redacted_ids_are_kept(
    log_output: tuple[io.StringIO, LoggingHandle],
) -> None:
    out, _ = log_output
    logging.getLogger("license_broker").info(
        "issued",
        extra={
            "licenseId": "lic-7f3e9a0c5b2d4e6f8a1b3c5d7e9f0a2b",
            "kid": "a1b2",
            "key": HEX_KEY,
            "contentKey": B64_KEY,
            "token": JWT,
            "clientSecret": "c3VwZXJzZWNyZXQ",
            "license": "CAISdGhpcyBpcyBhIGxpY2Vuc2U=",
            "keyBytes": bytes.fromhex(HEX_KEY),
            "provider": {"name": "widevine", "signingKey": HEX_KEY},
            "url": f"https://cdn.example/v/seg.ts?pdt={PDT}",
        },
    )
    text = out.getvalue()
    for secret in (*SECRETS, "CAISdGhpcyBpcyBhIGxpY2Vuc2U="):
        assert secret not in text
    (doc,) = lines(out)
    assert doc["licenseId"] == "lic-7f3e9a0c5b2d4e6f8a1b3c5d7e9f0a2b"
    assert doc["kid"] == "a1b2"
    assert doc["key"] == REDACTED
    assert doc["contentKey"] == REDACTED
    assert doc["token"] == REDACTED
    assert doc["license"] == REDACTED
    assert doc["keyBytes"] == "<16 bytes>"
    assert doc["provider"] == {"name": "widevine", "signingKey": REDACTED}
    assert doc["url"] == f"https://cdn.example/v/seg.ts?pdt={REDACTED}"


def test_ordinary_text_is_left_alone() -> None:
    for text in (
        "served manifest for big-buck-bunny in 3.2 ms",
        "connected to 10.0.0.12:4222",
        "playback_drm.license_broker.providers ready",
        "kid=a1b2 keySystem=widevine",
    ):
        assert redact(text) == text


def test_background_writer_flushes_on_close() -> None:
    out = io.StringIO()
    handle = configure_logging("extproc", "INFO", stream=out)  # background thread by default
    logging.getLogger("extproc").info("rewritten", extra={"videoId": "v2"})
    logging.getLogger("extproc").debug("below the level")
    handle.close()
    (doc,) = lines(out)
    assert doc["videoId"] == "v2"
    assert doc["service"] == "extproc"


def test_text_format_is_redacted_too() -> None:
    out = io.StringIO()
    handle = configure_logging("authz", "INFO", json=False, stream=out, background=False)
    try:
        logging.getLogger("authz").info("token %s", JWT)
    finally:
        handle.close()
    assert JWT not in out.getvalue()
    assert "token [REDACTED]" in out.getvalue()


def test_logging_config_from_env() -> None:
    assert LoggingConfig.from_env({}) == LoggingConfig("INFO", True)
    assert LoggingConfig.from_env({"LOG_LEVEL": "debug", "LOG_FORMAT": "text"}) == LoggingConfig(
        "DEBUG", False
    )
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        LoggingConfig.from_env({"LOG_LEVEL": "loud"})
