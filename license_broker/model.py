"""Content keys: the plain data the key stores produce and the policy reasons about.

A video has one or more content keys, each for a track type (``AUDIO``, ``SD``, ``HD``, ``UHD``),
optionally with the IV its HLS AES-128 playlists announce. The same document shape is used by the
key file (``KEYS_FILE``) and by each Vault secret::

    {"keys": [{"kid": "<hex|uuid|base64>", "key": "<hex|base64>", "track": "HD", "iv": "<hex>"}]}

A key without ``track`` is an ``HD`` key. ``"live": true`` beside ``keys`` marks a live stream:
its licenses get the live duration and renewals (:func:`license_broker.policy.for_live`). Keys
are never part of a ``repr``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

from license_broker.encoding import parse_key_bytes, parse_key_id


class Track(IntEnum):
    """Track types, ordered by the entitlement they need."""

    AUDIO = 0
    SD = 1
    HD = 2
    UHD = 3


_TRACK_NAMES: Final[dict[str, Track]] = {
    "audio": Track.AUDIO,
    "sd": Track.SD,
    "hd": Track.HD,
    "fhd": Track.HD,
    "uhd": Track.UHD,
    "uhd1": Track.UHD,
    "uhd2": Track.UHD,
    "4k": Track.UHD,
}

DEFAULT_TRACK: Final = Track.HD


def parse_track(value: str) -> Track:
    """``SD``/``HD``/``UHD``/``AUDIO`` (also ``FHD``, ``UHD1``, ``UHD2``, ``4K``), any case."""
    found = _TRACK_NAMES.get(value.strip().lower())
    if found is None:
        raise ValueError(f"unknown track type {value[:20]!r}")
    return found


@dataclass(frozen=True, slots=True)
class ContentKey:
    kid: bytes
    key: bytes = field(repr=False)
    track: Track = DEFAULT_TRACK
    iv: bytes | None = None


@dataclass(frozen=True, slots=True)
class VideoKeys:
    video_id: str
    keys: tuple[ContentKey, ...]
    by_kid: Mapping[bytes, ContentKey] = field(repr=False, compare=False, default_factory=dict)
    live: bool = False

    @staticmethod
    def of(video_id: str, keys: tuple[ContentKey, ...], *, live: bool = False) -> VideoKeys:
        return VideoKeys(video_id, keys, {k.kid: k for k in keys}, live)


def _parse_key(entry: Mapping[str, Any], kid_raw: str, key_raw: str) -> ContentKey:
    kid = parse_key_id(kid_raw)
    key = parse_key_bytes(key_raw)
    track_raw = entry.get("track", entry.get("type"))
    track = parse_track(track_raw) if isinstance(track_raw, str) else DEFAULT_TRACK
    iv_raw = entry.get("iv")
    iv: bytes | None = None
    if isinstance(iv_raw, str) and iv_raw:
        iv = bytes.fromhex(iv_raw.removeprefix("0x").removeprefix("0X"))
        if len(iv) != 16:
            raise ValueError("iv must be 16 bytes")
    return ContentKey(kid, key, track, iv)


def parse_video_keys(video_id: str, doc: Any) -> VideoKeys:
    """Build :class:`VideoKeys` from a key document (see the module docstring).

    Accepts ``{"keys": [...]}``, a bare list, or ``keys`` holding a JSON string (as written by
    ``bao kv put ... keys=@file.json``). Raises ``ValueError`` naming the problem, never the key.
    """
    entries: Any = doc.get("keys") if isinstance(doc, Mapping) else doc
    live = isinstance(doc, Mapping) and doc.get("live") is True
    if isinstance(entries, str):
        entries = json.loads(entries)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"video {video_id!r}: 'keys' must be a non-empty list")
    keys: list[ContentKey] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"video {video_id!r}: key #{index} is not an object")
        kid_raw = entry.get("kid", entry.get("keyId", entry.get("key_id")))
        key_raw = entry.get("key", entry.get("k"))
        if not isinstance(kid_raw, str) or not isinstance(key_raw, str):
            raise ValueError(f"video {video_id!r}: key #{index} needs string 'kid' and 'key'")
        try:
            keys.append(_parse_key(entry, kid_raw, key_raw))
        except ValueError as exc:
            raise ValueError(f"video {video_id!r}: key #{index}: {exc}") from None
    return VideoKeys.of(video_id, tuple(keys), live=live)
