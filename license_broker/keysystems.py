"""Key system names, their aliases, and inferring the key system from a challenge.

Inference (``POST /drm/license`` without ``keySystem``) looks at the decoded challenge only, in this
order, and refuses to guess otherwise:

1. a JSON object with ``"kids"`` → ClearKey; with ``"spc"`` → FairPlay;
2. XML (``<`` first, optionally after a BOM or whitespace, UTF-8 or UTF-16) → PlayReady SOAP;
3. the Widevine service-certificate request ``08 04``, or a protobuf ``SignedMessage`` whose first
   field is ``type`` (tag byte ``0x08``) → Widevine;
4. a FairPlay SPC: big-endian version 1 or 2 in the first 4 bytes (``00 00 00 01``/``02``), or an
   ``spc=`` form body → FairPlay.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from license_broker.errors import MalformedChallenge, UnsupportedKeySystem
from playback_drm.untrusted import json_loads


class KeySystem(StrEnum):
    CLEARKEY = "org.w3.clearkey"
    WIDEVINE = "com.widevine.alpha"
    PLAYREADY = "com.microsoft.playready"
    FAIRPLAY = "com.apple.fps"


HLS_AES_128: Final = "hls-aes-128"
"""The ``keySystem`` recorded in events for HLS AES-128 key deliveries."""

_ALIASES: Final[dict[str, KeySystem]] = {
    "org.w3.clearkey": KeySystem.CLEARKEY,
    "clearkey": KeySystem.CLEARKEY,
    "com.widevine.alpha": KeySystem.WIDEVINE,
    "widevine": KeySystem.WIDEVINE,
    "com.microsoft.playready": KeySystem.PLAYREADY,
    "com.microsoft.playready.recommendation": KeySystem.PLAYREADY,
    "com.microsoft.playready.recommendation.3000": KeySystem.PLAYREADY,
    "com.microsoft.playready.hardware": KeySystem.PLAYREADY,
    "com.microsoft.playready.software": KeySystem.PLAYREADY,
    "com.youtube.playready": KeySystem.PLAYREADY,
    "playready": KeySystem.PLAYREADY,
    "com.apple.fps": KeySystem.FAIRPLAY,
    "com.apple.fps.1_0": KeySystem.FAIRPLAY,
    "com.apple.fps.2_0": KeySystem.FAIRPLAY,
    "com.apple.fps.3_0": KeySystem.FAIRPLAY,
    "com.apple.streamingkeydelivery": KeySystem.FAIRPLAY,
    "fairplay": KeySystem.FAIRPLAY,
    "fps": KeySystem.FAIRPLAY,
}

WIDEVINE_CERTIFICATE_REQUEST: Final = b"\x08\x04"


def parse_key_system(name: str) -> KeySystem:
    """Map an EME key system string (or a short alias) to a :class:`KeySystem`."""
    found = _ALIASES.get(name.strip().lower())
    if found is None:
        raise UnsupportedKeySystem(f"unknown key system {name[:64]!r}")
    return found


def _xml_start(challenge: bytes) -> bool:
    head = challenge[:64]
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return True
    stripped = head.lstrip(b" \t\r\n")
    # UTF-16LE XML starts "<\x00"; UTF-8 starts "<".
    return stripped.startswith(b"<")


def infer_key_system(challenge: bytes) -> KeySystem:
    """Infer the key system of a decoded challenge (see the module docstring for the rules)."""
    if not challenge:
        raise MalformedChallenge("empty license challenge")
    first = challenge.lstrip(b" \t\r\n")[:1]
    if first == b"{":
        try:
            doc = json_loads(challenge)
        except ValueError:
            raise MalformedChallenge("license challenge is not valid JSON") from None
        if isinstance(doc, dict):
            if "kids" in doc:
                return KeySystem.CLEARKEY
            if "spc" in doc:
                return KeySystem.FAIRPLAY
        raise MalformedChallenge(
            "JSON challenge has neither 'kids' (ClearKey) nor 'spc' (FairPlay)"
        )
    if _xml_start(challenge):
        return KeySystem.PLAYREADY
    if challenge == WIDEVINE_CERTIFICATE_REQUEST or challenge[0] == 0x08:
        return KeySystem.WIDEVINE
    if challenge[:4] in (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02") or challenge.startswith(b"spc="):
        return KeySystem.FAIRPLAY
    raise MalformedChallenge("cannot infer the key system from the challenge; pass keySystem")
