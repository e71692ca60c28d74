"""W3C ClearKey (``org.w3.clearkey``) license request parsing and JWK-set responses.

Request (EME "keyids" init data / license request)::

    {"kids": ["<base64url key id>", ...], "type": "temporary"}

Response::

    {"keys": [{"kty": "oct", "kid": "<base64url>", "k": "<base64url>"}], "type": "temporary"}

Lenient on input, as players differ: ``type`` may be missing (old clients: temporary), key ids may
be padded or unpadded base64url, standard base64, or even hex. Output is always unpadded base64url.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from license_broker.encoding import b64url, parse_key_id
from license_broker.errors import MalformedChallenge
from playback_drm.untrusted import json_loads

TEMPORARY: Final = "temporary"
PERSISTENT_LICENSE: Final = "persistent-license"
SESSION_TYPES: Final = frozenset({TEMPORARY, PERSISTENT_LICENSE, "persistent-release-message"})
MAX_KIDS: Final = 64


@dataclass(frozen=True, slots=True)
class ClearKeyRequest:
    kids: tuple[bytes, ...]
    session_type: str = TEMPORARY

    @property
    def persistent(self) -> bool:
        return self.session_type != TEMPORARY

    def canonical(self) -> bytes:
        """A stable byte form (sorted key ids + type) for cache keys."""
        return b"|".join(sorted(self.kids)) + b"#" + self.session_type.encode()


def parse_request(body: bytes, *, max_kids: int = MAX_KIDS) -> ClearKeyRequest:
    """Parse a ClearKey license request. Duplicate key ids are dropped, order kept."""
    try:
        doc = json_loads(body)
    except ValueError:
        raise MalformedChallenge("ClearKey request is not valid JSON") from None
    if not isinstance(doc, dict):
        raise MalformedChallenge("ClearKey request must be a JSON object")
    kids_raw = doc.get("kids")
    if not isinstance(kids_raw, list) or not kids_raw:
        raise MalformedChallenge("ClearKey request needs a non-empty 'kids' array")
    if len(kids_raw) > max_kids:
        raise MalformedChallenge(f"ClearKey request lists more than {max_kids} key ids")
    session_type = doc.get("type", TEMPORARY)
    if session_type is None:
        session_type = TEMPORARY
    if not isinstance(session_type, str) or session_type not in SESSION_TYPES:
        raise MalformedChallenge(f"unknown ClearKey session type {str(session_type)[:40]!r}")
    kids: list[bytes] = []
    seen: set[bytes] = set()
    for item in kids_raw:
        if not isinstance(item, str):
            raise MalformedChallenge("ClearKey key ids must be strings")
        try:
            kid = parse_key_id(item)
        except ValueError:
            raise MalformedChallenge(f"invalid ClearKey key id {item[:48]!r}") from None
        if kid not in seen:
            seen.add(kid)
            kids.append(kid)
    return ClearKeyRequest(tuple(kids), session_type)


def build_response(keys: Iterable[tuple[bytes, bytes]], session_type: str = TEMPORARY) -> bytes:
    """The JWK set for ``(kid, key)`` pairs, compact JSON bytes."""
    doc = {
        "keys": [{"kty": "oct", "kid": b64url(kid), "k": b64url(key)} for kid, key in keys],
        "type": session_type,
    }
    return json.dumps(doc, separators=(",", ":")).encode()
