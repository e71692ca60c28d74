"""Widevine through a license proxy that signs requests with the provider's AES key.

Wire format (Widevine cloud license service, proxy integration)::

    message   = JSON {"payload": b64(challenge), "content_id": b64(content id), "provider": P,
                      "allowed_track_types": "SD_HD", "policy_overrides": {...},
                      "content_key_specs": [{"track_type", "security_level",
                                             "required_output_protection": {"hdcp"},
                                             "key_id", "key"}]}
    signature = AES-256-CBC(signing key, signing IV, PKCS#7)(SHA-1(message bytes))
    POST url    {"request": b64(message), "signature": b64(signature), "signer": P}
    answer      {"status": "OK", "license": b64(license), ...}   (other status: a refusal)

The signature covers the exact message bytes that are base64-encoded into ``request``; the
message is serialized once. The service-certificate request (the 2-byte challenge ``08 04``) is
sent as ``{"payload": "CAQ="}`` and its answer cached (or WIDEVINE_SERVICE_CERTIFICATE served).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from license_broker.config import WidevineSettings
from license_broker.encoding import b64, b64decode_lenient
from license_broker.errors import MalformedChallenge, ProviderBadResponse, ProviderRejected
from license_broker.http import ProviderHTTP, Reply
from license_broker.keysystems import WIDEVINE_CERTIFICATE_REQUEST, KeySystem
from license_broker.model import Track
from license_broker.policy import LicensePolicy
from license_broker.providers.base import (
    CertificateCache,
    LicenseContext,
    PooledProvider,
    ProviderLicense,
    check_status,
)
from playback_drm.untrusted import json_loads

ALLOWED_TRACK_TYPES: Final[dict[Track, str]] = {
    Track.AUDIO: "SD_ONLY",
    Track.SD: "SD_ONLY",
    Track.HD: "SD_HD",
    Track.UHD: "SD_UHD1",
}
_TRACK_TYPE_NAMES: Final[dict[Track, str]] = {
    Track.AUDIO: "AUDIO",
    Track.SD: "SD",
    Track.HD: "HD",
    Track.UHD: "UHD1",
}


# SignedMessage.MessageType values a client sends (Widevine's license_protocol.proto):
# LICENSE_REQUEST, SERVICE_CERTIFICATE_REQUEST, CAS_LICENSE_REQUEST, EXTERNAL_LICENSE_REQUEST.
LICENSE_REQUEST: Final = 1
INVALID_CHALLENGE: Final = "INVALID_LICENSE_CHALLENGE"  # the service's status for unreadable ones
CLIENT_MESSAGE_TYPES: Final = frozenset({LICENSE_REQUEST, 4, 7, 9})
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_FIXED_SIZE: Final = {_FIXED64: 8, _FIXED32: 4}


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7
    raise MalformedChallenge("Widevine challenge is not a protobuf message")


def check_challenge(challenge: bytes) -> None:
    """A Widevine challenge is a protobuf ``SignedMessage``: its top-level fields must parse, its
    ``type`` (field 1) must be one a client sends and a license request must carry its ``msg``
    (field 2). Garbage never reaches the provider: its refusal would be a 502 counted against our
    error rate, while this is the client's 400. What is inside ``msg`` is the provider's to check.
    """
    fields: dict[int, int | bytes] = {}
    at = 0
    while at < len(challenge):
        key, at = _varint(challenge, at)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise MalformedChallenge("Widevine challenge is not a protobuf message")
        value: int | bytes
        if wire == _VARINT:
            value, at = _varint(challenge, at)
        elif wire == _LENGTH:
            length, at = _varint(challenge, at)
            if length > len(challenge) - at:
                raise MalformedChallenge("Widevine challenge is truncated")
            value, at = challenge[at : at + length], at + length
        elif wire in _FIXED_SIZE:
            at += _FIXED_SIZE[wire]
            if at > len(challenge):
                raise MalformedChallenge("Widevine challenge is truncated")
            continue
        else:  # groups (3, 4) and the undefined wire types: not in a SignedMessage
            raise MalformedChallenge("Widevine challenge is not a protobuf message")
        fields.setdefault(number, value)
    kind = fields.get(1)
    if not isinstance(kind, int) or kind not in CLIENT_MESSAGE_TYPES:
        raise MalformedChallenge("Widevine challenge is not a client request (SignedMessage.type)")
    message = fields.get(2)
    if kind == LICENSE_REQUEST and (not isinstance(message, bytes) or not message):
        raise MalformedChallenge("Widevine license request without its message")


def sign(message: bytes, key: bytes, iv: bytes) -> bytes:
    """AES-256-CBC with PKCS#7 padding over the SHA-1 digest of ``message``."""
    digest = hashlib.sha1(message).digest()  # noqa: S324 - mandated by the Widevine proxy API
    padder = padding.PKCS7(128).padder()
    padded = padder.update(digest) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def policy_overrides(policy: LicensePolicy) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "can_play": True,
        "can_persist": policy.can_persist,
        "can_renew": policy.renewal_interval_s > 0,
        "license_duration_seconds": policy.license_duration_s,
    }
    if policy.renewal_interval_s:  # a live license: the CDM asks again before it runs out
        overrides["renewal_delay_seconds"] = policy.renewal_interval_s
        overrides["renewal_retry_interval_seconds"] = min(30, policy.renewal_interval_s)
        overrides["renewal_recovery_duration_seconds"] = max(
            policy.license_duration_s - policy.renewal_interval_s, 0
        )
    if policy.rental_duration_s:
        overrides["rental_duration_seconds"] = policy.rental_duration_s
    if policy.playback_duration_s:
        overrides["playback_duration_seconds"] = policy.playback_duration_s
    return overrides


def build_message(
    challenge: bytes, ctx: LicenseContext, provider: str, *, send_keys: bool
) -> bytes:
    """The exact JSON bytes that are signed and sent (compact, keys in a fixed order)."""
    specs: list[dict[str, Any]] = []
    for key in ctx.keys:
        level, hdcp = ctx.policy.requirements(key.track)
        spec: dict[str, Any] = {
            "track_type": _TRACK_TYPE_NAMES[key.track],
            "security_level": level,
            "required_output_protection": {"hdcp": hdcp},
            "key_id": b64(key.kid),
        }
        if send_keys:
            spec["key"] = b64(key.key)
        specs.append(spec)
    doc = {
        "payload": b64(challenge),
        "content_id": b64(ctx.content_id.encode()),
        "provider": provider,
        "allowed_track_types": ALLOWED_TRACK_TYPES[ctx.policy.max_track],
        "policy_overrides": policy_overrides(ctx.policy),
        "content_key_specs": specs,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def envelope(message: bytes, settings: WidevineSettings) -> bytes:
    signature = sign(message, settings.signing_key, settings.signing_iv)
    doc = {"request": b64(message), "signature": b64(signature), "signer": settings.signer}
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_answer(reply: Reply) -> bytes:
    check_status(reply, "widevine")
    try:
        doc = json_loads(reply.body)
    except ValueError:
        raise ProviderBadResponse("widevine answered non-JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
        raise ProviderBadResponse("widevine answer lacks 'status'")
    if doc["status"] != "OK":
        raise ProviderRejected(
            f"widevine refused: {doc['status'][:64]}", providerStatus=doc["status"][:64]
        )
    raw = doc.get("license")
    if not isinstance(raw, str) or not raw:
        raise ProviderBadResponse("widevine answer lacks 'license'")
    try:
        return b64decode_lenient(raw)
    except ValueError:
        raise ProviderBadResponse("widevine license is not base64") from None


class WidevineProxy(PooledProvider):
    name = "widevine"
    key_system = KeySystem.WIDEVINE

    def __init__(self, settings: WidevineSettings, http: ProviderHTTP, cert_ttl: float) -> None:
        assert settings.license_url is not None
        self._settings = settings
        self._url = settings.license_url
        self._http = http
        self._certs = CertificateCache(cert_ttl)

    async def acquire(self, challenge: bytes, ctx: LicenseContext) -> ProviderLicense:
        if challenge == WIDEVINE_CERTIFICATE_REQUEST:
            return ProviderLicense(await self.certificate())
        message = build_message(
            challenge, ctx, self._settings.signer, send_keys=self._settings.send_keys
        )
        try:
            body = await self._http.call(
                "POST",
                self._url,
                data=envelope(message, self._settings),
                headers={"Content-Type": "application/json"},
                parse=parse_answer,
            )
        except ProviderRejected as exc:
            if exc.extensions.get("providerStatus") == INVALID_CHALLENGE:
                # the service could not read what the player sent: the client's fault, not ours
                raise MalformedChallenge(
                    "the Widevine service could not read the license challenge"
                ) from None
            raise
        return ProviderLicense(body)

    async def certificate(self) -> bytes:
        if self._settings.service_certificate:
            return self._settings.service_certificate
        return await self._certs.get(self._fetch_certificate)

    async def _fetch_certificate(self) -> bytes:
        message = json.dumps(
            {"payload": b64(WIDEVINE_CERTIFICATE_REQUEST)}, separators=(",", ":")
        ).encode()
        return await self._http.call(
            "POST",
            self._url,
            data=envelope(message, self._settings),
            headers={"Content-Type": "application/json"},
            parse=parse_answer,
        )
