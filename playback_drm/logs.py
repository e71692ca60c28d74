"""JSON logs, one object per line, with tokens, keys and signatures scrubbed.

Each line::

    {"timestamp": "2025-01-01T12:00:00.123Z", "level": "INFO", "service": "authz",
     "logger": "authz.server", "message": "...", "userId": "...", "videoId": "...",
     "licenseId": "...", "requestId": "...", "traceId": "...", "spanId": "...", ...}

Context fields come from ``extra={"userId": ..., "videoId": ..., "licenseId": ..., "requestId":
...}``; ``traceId``/``spanId`` are taken from the current OpenTelemetry span when the caller did
not pass them. Other ``extra`` keys are kept as they are (non-JSON values as ``str``); exceptions
go to ``exception`` (the formatted traceback) and ``exceptionType``.

Redaction (:class:`RedactingFilter`, applied to the message, the traceback and every ``extra``
value before anything is formatted):

- JWTs (``eyJ...``, JWS and JWE) and anything made of three long base64url segments;
- query/assignment values of ``pdt``, ``token``, ``access_token``, ``id_token``, ``Signature``,
  ``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``, ``hmac``, ``__token__``,
  ``sig``, ``key``, ``secret``, ``password``;
- ``Bearer``/``Basic`` credentials;
- JSON-ish ``"k": "..."``, ``"key": ...``, ``"secret"``, ``"token"``, ``"license"`` members
  (ClearKey JWKs, license blobs);
- PEM private keys;
- the whole value of any ``extra`` field whose name ends with key, secret, token, license,
  password, signature, authorization, cookie or credential (``contentKey``, ``accessToken``,
  ``clientSecret``, ...); ids such as ``licenseId`` or ``kid`` are not secrets and stay. Bytes
  values are never logged, only their length.

Records are formatted on the calling thread (so trace ids come from the caller's context) and
written by a background thread (``background=True``, the default), so a slow log reader never
blocks the event loop.

Environment (:meth:`LoggingConfig.from_env`): ``LOG_LEVEL`` (default ``INFO``), ``LOG_FORMAT``
(``json`` default, or ``text``).
"""

from __future__ import annotations

import json as jsonlib
import logging
import logging.handlers
import queue
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TextIO

from playback_drm.settings import ConfigError, env_str
from playback_drm.timefmt import rfc3339_millis
from playback_drm.tracing import current_ids

REDACTED: Final = "[REDACTED]"
CONTEXT_FIELDS: Final[tuple[str, ...]] = (
    "userId",
    "videoId",
    "licenseId",
    "requestId",
    "traceId",
    "spanId",
)

_B64URL = r"[A-Za-z0-9_-]"
_VALUE = r"[^&\s\"'<>]+"

# (pattern, replacement), applied in order.
_TEXT_RULES: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
        REDACTED,
    ),
    (re.compile(rf"\beyJ{_B64URL}*(?:\.{_B64URL}*){{2,4}}"), REDACTED),
    (re.compile(rf"\b{_B64URL}{{16,}}\.{_B64URL}{{16,}}\.{_B64URL}{{16,}}\b"), REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {REDACTED}"),
    (
        re.compile(
            r"(?i)(\b(?:pdt|token|access_token|id_token|refresh_token|signature|x-amz-signature|"
            r"x-amz-credential|x-amz-security-token|hmac|__token__|sig|key|secret|password)=)"
            + _VALUE
        ),
        rf"\1{REDACTED}",
    ),
    (
        re.compile(
            r"(?i)([\"']?\b(?:k|key|secret|token|password|signature|license|client_secret)[\"']?"
            r"\s*[:=]\s*[\"'])[^\"']+([\"'])"
        ),
        rf"\1{REDACTED}\2",
    ),
)
_SENSITIVE_NAME: Final = re.compile(
    r"(?i)(?:key|secret|token|license|password|passwd|signature|authorization|cookie|credential)s?$"
)
_QUICK_CHECK: Final = re.compile(r"(?i)eyJ|=|bearer|basic|private key|\.[A-Za-z0-9_-]{16}|:")

_STANDARD_ATTRS: Final[frozenset[str]] = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    """``text`` with every token, signature and key it contains replaced by ``[REDACTED]``."""
    if not _QUICK_CHECK.search(text):
        return text
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


def is_sensitive_name(name: str) -> bool:
    return _SENSITIVE_NAME.search(name) is not None


def redact_value(name: str, value: Any) -> Any:
    """``value`` of the field ``name``, safe to log (see the module docstring)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if is_sensitive_name(name):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(name, item) for item in value]
    return redact(str(value))


class RedactingFilter(logging.Filter):
    """Scrubs secrets from a record in place (message, args, traceback, extras)."""

    _exc_formatter: Final = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, redact_value(key, value))
        return True


class TraceContextFilter(logging.Filter):
    """Adds ``traceId``/``spanId`` of the current OpenTelemetry span unless already set."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "traceId", None) is None:
            trace_id, span_id = current_ids()
            if trace_id is not None:
                record.traceId = trace_id
                record.spanId = span_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "timestamp": rfc3339_millis(record.created),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        attrs = vars(record)
        for name in CONTEXT_FIELDS:
            value = attrs.get(name)
            if value is not None:
                doc[name] = value
        for key, value in attrs.items():
            if key not in _STANDARD_ATTRS and key not in doc:
                doc[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
            if record.exc_info and record.exc_info[0] is not None:
                doc["exceptionType"] = record.exc_info[0].__name__
        if record.stack_info:
            doc["stack"] = record.stack_info
        return jsonlib.dumps(doc, default=str, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "INFO"
    json: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LoggingConfig:
        level = env_str(env, "LOG_LEVEL", "INFO").upper()
        if level not in logging.getLevelNamesMapping():
            raise ConfigError(f"LOG_LEVEL must be a logging level name, got {level!r}")
        fmt = env_str(env, "LOG_FORMAT", "json").lower()
        if fmt not in {"json", "text"}:
            raise ConfigError(f"LOG_FORMAT must be json or text, got {fmt!r}")
        return cls(level=level, json=fmt == "json")


class LoggingHandle:
    """What :func:`configure_logging` installed; :meth:`close` flushes and removes it."""

    def __init__(
        self, handler: logging.Handler, listener: logging.handlers.QueueListener | None
    ) -> None:
        self.handler = handler
        self.listener = listener

    def flush(self) -> None:
        """Wait until every record logged so far is written."""
        if self.listener is not None:
            self.listener.stop()
            self.listener.start()
        self.handler.flush()

    def close(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        self.handler.close()
        if _installed.get("handle") is self:
            del _installed["handle"]


_installed: dict[str, LoggingHandle] = {}


def configure_logging(
    service: str,
    level: str = "INFO",
    json: bool = True,
    *,
    stream: TextIO | None = None,
    background: bool = True,
) -> LoggingHandle:
    """Route every logger to ``stream`` (stderr) as JSON lines (or text) with redaction.

    Idempotent: a second call replaces what the first installed.
    """
    previous = _installed.get("handle")
    if previous is not None:
        previous.close()
    out = stream if stream is not None else sys.stderr
    formatter: logging.Formatter = (
        JsonFormatter(service)
        if json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    listener: logging.handlers.QueueListener | None = None
    handler: logging.Handler
    if background:
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        handler = logging.handlers.QueueHandler(records)
        writer = logging.StreamHandler(out)
        writer.setFormatter(logging.Formatter("%(message)s"))
        listener = logging.handlers.QueueListener(records, writer)
        listener.start()
    else:
        handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(TraceContextFilter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    handle = _installed["handle"] = LoggingHandle(handler, listener)
    return handle


__all__ = [
    "CONTEXT_FIELDS",
    "REDACTED",
    "JsonFormatter",
    "LoggingConfig",
    "LoggingHandle",
    "RedactingFilter",
    "TraceContextFilter",
    "configure_logging",
    "is_sensitive_name",
    "redact",
    "redact_value",
]
