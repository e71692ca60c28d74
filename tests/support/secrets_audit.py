"""Every log a stack wrote must be free of viewer tokens, keys and URL signatures (issue 5)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from devstack.stack import Stack

JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
PDT_VALUE = re.compile(
    rb"pdt=v1\.[0-9]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_~-]*\.[^.&\s\"]*\.[A-Za-z0-9_-]{20,}"
)
PEM = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def _b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def secrets_of(stack: Stack) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for i, token in enumerate(stack.issued_tokens):
        found[f"issued JWT #{i}"] = token.encode()
        found[f"issued JWT #{i} signature"] = token.rsplit(".", 1)[1].encode()
    for entry in stack.url_signing_keys().split(","):
        kid, _, secret = entry.partition(":")
        found[f"URL signing secret {kid}"] = secret.split(":")[0].encode()
    keys_file = stack.media_dir / "keys.json"
    if keys_file.exists():
        for video, doc in json.loads(keys_file.read_text())["videos"].items():
            for key in doc["keys"]:
                raw = bytes.fromhex(key["key"])
                found[f"content key {video}/{key['kid']} (hex)"] = key["key"].encode()
                found[f"content key {video}/{key['kid']} (b64url)"] = _b64url(raw)
    return found


def audit_logs(stack: Stack) -> list[str]:
    """Findings as readable lines; empty when the logs are clean."""
    secrets = secrets_of(stack)
    problems = []
    for log in sorted(Path(stack.logs).rglob("*.log")):
        data = log.read_bytes()
        for label, value in secrets.items():
            if value and value in data:
                problems.append(f"{log.name}: contains {label}")
        for pattern, label in (
            (JWT_SHAPE, "a JWT"),
            (PDT_VALUE, "a pdt URL signature"),
            (PEM, "a private key"),
        ):
            match = pattern.search(data)
            if match:
                problems.append(f"{log.name}: contains {label}: {match.group(0)[:24]!r}...")
    return problems
