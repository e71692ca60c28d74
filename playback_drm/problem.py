"""Problem details (RFC 9457, formerly 7807) and the root of every service's error tree.

Every error a viewer or operator can see carries a stable, machine-readable ``code`` (also used as
a metric label), an HTTP status and a human-readable detail that never contains secrets.

    PlaybackError                    root; never raised directly
    ├── authz.errors.*               token and entitlement failures
    ├── extproc.errors.*             manifest and URL-signature failures
    └── license_broker.errors.*      license, key and provider failures
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://playback-drm.dev/problems/"


class PlaybackError(Exception):
    """Base class: an error with a stable ``code`` and the HTTP ``status`` it maps to."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, **extensions: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extensions = extensions

    def to_problem(self, instance: str | None = None) -> Problem:
        return Problem(
            code=self.code,
            status=self.status,
            title=self.title,
            detail=self.detail,
            instance=instance,
            extensions=dict(self.extensions),
        )


@dataclass(frozen=True, slots=True)
class Problem:
    """A problem+json document. ``code`` is stable; ``detail`` is for humans."""

    code: str
    status: int
    title: str
    detail: str
    instance: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if self.instance is not None:
            doc["instance"] = self.instance
        for key, value in self.extensions.items():
            doc.setdefault(key, value)
        return doc

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


def problem_body(code: str, status: int, title: str, detail: str) -> bytes:
    """Serialize a problem document without constructing an exception (for hot paths)."""
    return Problem(code=code, status=status, title=title, detail=detail).to_json()
