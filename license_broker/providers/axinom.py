"""Axinom DRM: a multi-DRM license service authorized per request by an entitlement message.

The challenge is forwarded unchanged to the Axinom license URL of its DRM (Widevine, PlayReady
or FairPlay) with ``X-AxDRM-Message``: an HS256 JWT, signed with the communication key, of the
License Service Message::

    {"version": 1, "com_key_id": "<uuid>", "begin_date": .., "expiration_date": ..,
     "message": {"type": "entitlement_message", "version": 2,
                 "license": {"duration": s, "allow_persistence": bool, ...},
                 "content_keys_source": {"inline": [{"id": "<kid uuid>", "usage_policy": "HD"}]},
                 "content_key_usage_policies": [{"name": "HD", "widevine": {..},
                                                 "playready": {..}}]}}

Only the keys the viewer is entitled to are listed (Axinom fetches them by key id); each track
type gets a usage policy with its security level and HDCP requirement. Errors come back as a
non-2xx status with ``X-AxDRM-ErrorMessage``.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any, Final

import jwt

from license_broker.config import AxinomSettings, FairPlaySettings
from license_broker.encoding import uuid_str
from license_broker.errors import ProviderRejected, ProviderUnavailable, UnsupportedKeySystem
from license_broker.http import ProviderHTTP, Reply
from license_broker.keysystems import WIDEVINE_CERTIFICATE_REQUEST, KeySystem
from license_broker.model import Track
from license_broker.providers.base import (
    CertificateCache,
    LicenseContext,
    PooledProvider,
    ProviderLicense,
    require_body,
)
from license_broker.providers.fairplay import fetch_fps_certificate

MESSAGE_HEADER: Final = "X-AxDRM-Message"
ERROR_HEADER: Final = "X-AxDRM-ErrorMessage"
_WIDEVINE_LEVELS: Final = {
    1: "SW_SECURE_CRYPTO",
    2: "SW_SECURE_DECODE",
    3: "HW_SECURE_CRYPTO",
    4: "HW_SECURE_DECODE",
    5: "HW_SECURE_ALL",
}
_PLAYREADY_LEVELS: Final = {Track.AUDIO: 150, Track.SD: 150, Track.HD: 2000, Track.UHD: 3000}
_CONTENT_TYPES: Final = {
    KeySystem.WIDEVINE: "application/octet-stream",
    KeySystem.PLAYREADY: "text/xml; charset=utf-8",
    KeySystem.FAIRPLAY: "application/octet-stream",
}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entitlement_message(
    ctx: LicenseContext, settings: AxinomSettings, now: float, message_id: str
) -> dict[str, Any]:
    """The License Service Message (pure; the caller signs it)."""
    policies: dict[str, dict[str, Any]] = {}
    inline: list[dict[str, Any]] = []
    for key in ctx.keys:
        level, hdcp = ctx.policy.requirements(key.track)
        name = key.track.name
        if name not in policies:
            policies[name] = {
                "name": name,
                "widevine": {"device_security_level": _WIDEVINE_LEVELS[level], "hdcp": hdcp},
                "playready": {"min_device_security_level": _PLAYREADY_LEVELS[key.track]},
            }
        inline.append({"id": uuid_str(key.kid), "usage_policy": name})
    lic: dict[str, Any] = {
        "duration": ctx.policy.license_duration_s,
        "allow_persistence": ctx.policy.can_persist,
    }
    if ctx.policy.playback_duration_s:
        for drm in ("widevine", "playready", "fairplay"):
            lic[drm] = {"playback_duration": ctx.policy.playback_duration_s}
    return {
        "version": 1,
        "id": message_id,
        "com_key_id": settings.com_key_id,
        "begin_date": _iso(now - 60),
        "expiration_date": _iso(now + settings.message_ttl_s),
        "message": {
            "type": "entitlement_message",
            "version": 2,
            "license": lic,
            "content_keys_source": {"inline": inline},
            "content_key_usage_policies": list(policies.values()),
        },
    }


def sign_message(message: dict[str, Any], com_key: bytes) -> str:
    return jwt.encode(message, com_key, algorithm="HS256")


def _parse(reply: Reply) -> bytes:
    if 200 <= reply.status < 300:
        return require_body(reply, "axinom")
    reason = reply.headers.get(ERROR_HEADER, "")[:200]
    if reply.status >= 500:
        raise ProviderUnavailable(f"axinom answered HTTP {reply.status}")
    raise ProviderRejected(
        f"axinom refused: {reason or 'HTTP ' + str(reply.status)}", providerStatus=reply.status
    )


class AxinomProvider(PooledProvider):
    """Axinom for one key system (``<KS>_PROVIDER=axinom``, URL from ``<KS>_LICENSE_URL``)."""

    def __init__(
        self,
        key_system: KeySystem,
        license_url: str,
        settings: AxinomSettings,
        http: ProviderHTTP,
        *,
        fairplay: FairPlaySettings | None = None,
        cert_ttl: float = 3600.0,
    ) -> None:
        self.key_system = key_system
        self.name = f"axinom-{key_system.name.lower()}"
        self._url = license_url
        self._settings = settings
        self._http = http
        self._fairplay = fairplay
        self._certs = CertificateCache(cert_ttl)

    def token(self, ctx: LicenseContext) -> str:
        message = entitlement_message(ctx, self._settings, time.time(), str(uuid.uuid4()))
        return sign_message(message, self._settings.com_key)

    async def acquire(self, challenge: bytes, ctx: LicenseContext) -> ProviderLicense:
        headers = {
            MESSAGE_HEADER: self.token(ctx),
            "Content-Type": _CONTENT_TYPES[self.key_system],
        }
        soap_action = ctx.request_headers.get("SOAPAction")
        if self.key_system == KeySystem.PLAYREADY and soap_action:
            headers["SOAPAction"] = soap_action
        body = await self._http.call(
            "POST", self._url, data=challenge, headers=headers, parse=_parse
        )
        return ProviderLicense(body, _CONTENT_TYPES[self.key_system])

    async def certificate(self) -> bytes:
        if self.key_system == KeySystem.FAIRPLAY and self._fairplay is not None:
            return await fetch_fps_certificate(self._fairplay, self._http, self._certs)
        if self.key_system == KeySystem.WIDEVINE:

            async def load() -> bytes:
                return await self._http.call(
                    "POST",
                    self._url,
                    data=WIDEVINE_CERTIFICATE_REQUEST,
                    headers={"Content-Type": "application/octet-stream"},
                    parse=_parse,
                )

            return await self._certs.get(load)
        raise UnsupportedKeySystem(f"no certificate for {self.key_system.value} via Axinom")
