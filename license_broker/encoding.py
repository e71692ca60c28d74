"""Lenient decoders for the encodings players and packagers use for ids, keys and challenges.

Players disagree about base64 flavours (standard vs URL-safe, padded vs not) and key id spellings
(hex, UUID with dashes, base64url). Decoders here accept all of them; encoders emit one canonical
form (unpadded base64url for ClearKey, lowercase hex for logs and cache keys).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

_B64_STRIP: Final = str.maketrans(
    {"-": "+", "_": "/", " ": None, "\n": None, "\r": None, "\t": None}
)
_HEX32: Final = re.compile(r"^(?:0x)?[0-9a-fA-F]{32}$")
_UUID: Final = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def b64decode_lenient(value: str | bytes) -> bytes:
    """Decode standard or URL-safe base64, padded or not, ignoring whitespace.

    Raises ``ValueError`` on anything else (including characters outside both alphabets).
    """
    text = value.decode("ascii") if isinstance(value, bytes) else value
    text = text.translate(_B64_STRIP).rstrip("=")
    if len(text) % 4 == 1:
        raise ValueError("invalid base64 length")
    text += "=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64: {exc}") from None


def b64url(data: bytes) -> str:
    """Unpadded base64url (the ClearKey/JWK form)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64(data: bytes) -> str:
    """Standard padded base64."""
    return base64.b64encode(data).decode("ascii")


def parse_key_id(value: str) -> bytes:
    """A 16-byte key id from hex (``0x`` optional), a UUID, or base64/base64url.

    Raises ``ValueError`` when the value is none of those or not 16 bytes long.
    """
    text = value.strip()
    if _HEX32.match(text):
        return bytes.fromhex(text.removeprefix("0x"))
    if _UUID.match(text):
        return bytes.fromhex(text.replace("-", ""))
    raw = b64decode_lenient(text)
    if len(raw) != 16:
        raise ValueError(f"key id must be 16 bytes, got {len(raw)}")
    return raw


def parse_key_bytes(value: str) -> bytes:
    """A 16-byte AES key from hex or base64/base64url (key files and Vault secrets)."""
    text = value.strip()
    if _HEX32.match(text):
        return bytes.fromhex(text.removeprefix("0x"))
    raw = b64decode_lenient(text)
    if len(raw) != 16:
        raise ValueError(f"content key must be 16 bytes, got {len(raw)}")
    return raw


def uuid_str(kid: bytes) -> str:
    """The UUID spelling of a 16-byte key id (Axinom, PlayReady tooling)."""
    h = kid.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
