"""What a license request body is, as far as stream slots care. Pure: bytes in, a kind out.

Most bodies are license challenges (ClearKey JSON, PlayReady SOAP, FairPlay SPC, Widevine
protobuf): the first of a session takes a stream slot. Two Widevine messages do not:

- the service-certificate request (``SignedMessage.type = SERVICE_CERTIFICATE_REQUEST``, the two
  bytes ``08 04``): a sign of life, no slot;
- a license *release* (``LicenseRequest.type = RELEASE``): the player says playback stopped, so the
  session ends and its slot is freed at once. (A renewal is a sign of life like any other.)

Widevine messages are recognised by a strict protobuf read of the fields that matter
(``SignedMessage {type = 1; msg = 2}``, ``LicenseRequest {type = 3}``, after Widevine's
``license_protocol.proto``); ClearKey JSON, SOAP XML and SPCs never parse as such (their first byte
is not a valid protobuf key), so nothing else is mistaken for one.
"""

from __future__ import annotations

import base64
import binascii
import enum
from typing import Final
from urllib.parse import unquote

from playback_drm.contract import LICENSE_PATH
from playback_drm.untrusted import json_loads

_LICENSE_REQUEST: Final = 1  # SignedMessage.MessageType
_SERVICE_CERTIFICATE_REQUEST: Final = 4
_RENEWAL: Final = 2  # LicenseRequest.RequestType
_RELEASE: Final = 3
_MAX_BODY: Final = 1 << 20
WIDEVINE_NAMES: Final = frozenset({"com.widevine.alpha", "widevine"})  # the broker's aliases


class LicenseMessage(enum.Enum):
    CHALLENGE = "challenge"  # takes a slot (once per session)
    CERTIFICATE_REQUEST = "certificate_request"  # a sign of life
    RENEWAL = "renewal"  # a sign of life (holds the slot it has)
    RELEASE = "release"  # ends the session


def _varint(data: bytes, at: int) -> tuple[int, int] | None:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    return None


def _fields(data: bytes) -> dict[int, list[int | bytes]] | None:
    """Every field of a protobuf message (varints and length-delimited values; fixed-width
    values skipped), or None when ``data`` is not one."""
    out: dict[int, list[int | bytes]] = {}
    at = 0
    while at < len(data):
        key = _varint(data, at)
        if key is None:
            return None
        tag, at = key
        number, wire = tag >> 3, tag & 7
        if number == 0:
            return None
        value: int | bytes
        if wire == 0:
            read = _varint(data, at)
            if read is None:
                return None
            value, at = read
        elif wire == 2:
            read = _varint(data, at)
            if read is None or read[1] + read[0] > len(data):
                return None
            value, at = data[read[1] : read[1] + read[0]], read[1] + read[0]
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
            if at > len(data):
                return None
            continue
        else:  # groups (3, 4) and reserved wire types: not a Widevine message
            return None
        out.setdefault(number, []).append(value)
    return out


def _single_int(fields: dict[int, list[int | bytes]], number: int) -> int | None:
    values = fields.get(number, [])
    return values[-1] if values and isinstance(values[-1], int) else None


def classify(body: bytes) -> LicenseMessage:
    """The kind of a raw license request body (a challenge unless proven otherwise)."""
    if not body or len(body) > _MAX_BODY:
        return LicenseMessage.CHALLENGE
    signed = _fields(body)
    if signed is None:
        return LicenseMessage.CHALLENGE
    kind = _single_int(signed, 1)
    if kind == _SERVICE_CERTIFICATE_REQUEST:
        return LicenseMessage.CERTIFICATE_REQUEST
    msgs = signed.get(2, [])
    if kind != _LICENSE_REQUEST or not msgs or not isinstance(msgs[-1], bytes):
        return LicenseMessage.CHALLENGE
    request = _fields(msgs[-1])
    request_type = _single_int(request, 3) if request is not None else None
    if request_type == _RELEASE:
        return LicenseMessage.RELEASE
    if request_type == _RENEWAL:
        return LicenseMessage.RENEWAL
    return LicenseMessage.CHALLENGE


def license_message(path: str, body: bytes) -> LicenseMessage:
    """The kind of a license request: ``POST /drm/license/{keySystem}`` (the raw body) or
    ``POST /drm/license`` (``{"licenseRequest": base64, "keySystem"?}``). Only Widevine requests
    are ever anything but a challenge."""
    if path.startswith(LICENSE_PATH + "/"):
        name = unquote(path[len(LICENSE_PATH) + 1 :]).strip().lower()
        return classify(body) if name in WIDEVINE_NAMES else LicenseMessage.CHALLENGE
    try:
        doc = json_loads(body)
    except ValueError:
        return LicenseMessage.CHALLENGE
    if not isinstance(doc, dict):
        return LicenseMessage.CHALLENGE
    named = doc.get("keySystem")
    encoded = doc.get("licenseRequest")
    if named is not None and (not isinstance(named, str) or named.lower() not in WIDEVINE_NAMES):
        return LicenseMessage.CHALLENGE
    if not isinstance(encoded, str) or len(encoded) > _MAX_BODY:
        return LicenseMessage.CHALLENGE
    text = encoded.strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return LicenseMessage.CHALLENGE
    return classify(raw)


__all__ = ["WIDEVINE_NAMES", "LicenseMessage", "classify", "license_message"]
