"""PlayReady: the SOAP ``AcquireLicense`` challenge forwarded byte for byte.

The body is never re-encoded (PlayReady challenges are signed by the client); it is parsed once to
refuse what is not an AcquireLicense SOAP request (:func:`check_challenge`). We add:

- our authorization: ``Authorization: Bearer <token>`` (header mode, the header name is
  configurable) or a ``CustomData`` query parameter (customdata mode);
- the ``SOAPAction`` the player sent (or the standard AcquireLicense action);
- ``X-Playback-License-Policy``: compact JSON of what the license may contain (content id, key
  ids, highest track, persistence, duration, minimum security level, HDCP).

A SOAP answer is relayed as is. A SOAP fault (HTTP 500 with a ``Fault`` element) is a refusal,
not an outage: it is relayed verbatim to native clients and does not trip the breaker.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final
from xml.parsers import expat

from license_broker.config import PLAYREADY_SOAP_ACTION, PlayReadySettings
from license_broker.encoding import uuid_str
from license_broker.errors import (
    MalformedChallenge,
    ProviderBadResponse,
    ProviderRejected,
    UnsupportedKeySystem,
)
from license_broker.http import ProviderHTTP, Reply
from license_broker.keysystems import KeySystem
from license_broker.model import Track
from license_broker.providers.base import (
    LicenseContext,
    PooledProvider,
    ProviderLicense,
    check_status,
)

POLICY_HEADER: Final = "X-Playback-License-Policy"
DEFAULT_CONTENT_TYPE: Final = "text/xml; charset=utf-8"
_ACQUIRE_ACTION: Final = PLAYREADY_SOAP_ACTION.strip('"')
_FAULT: Final = re.compile(rb"<(?:[A-Za-z0-9_]+:)?Fault[\s>]")
_FAULTSTRING: Final = re.compile(rb"<faultstring[^>]*>([^<]{0,200})</faultstring>")
_SECURITY_LEVEL: Final[dict[Track, int]] = {
    Track.AUDIO: 150,
    Track.SD: 150,
    Track.HD: 2000,
    Track.UHD: 3000,
}


def _forbid_doctype(*_: object) -> None:
    raise MalformedChallenge("PlayReady challenge declares a DOCTYPE")


def check_challenge(challenge: bytes, soap_action: str | None = None) -> None:
    """Refuse what no PlayReady server would accept before it reaches one: its answer to garbage
    is a SOAP fault (HTTP 500), relayed to the player and counted against our error rate.

    The challenge must be well-formed XML (UTF-8 or UTF-16, no DOCTYPE: nothing is expanded or
    fetched) with an ``AcquireLicense`` element, and the player's ``SOAPAction``, when it sent
    one, must be AcquireLicense: the only operation this broker serves. The challenge is still
    forwarded byte for byte; the provider checks what is inside (the client's signature)."""
    if soap_action is not None and soap_action.strip().strip('"') != _ACQUIRE_ACTION:
        raise MalformedChallenge("SOAPAction must be AcquireLicense, the operation served here")
    found = False

    def start(name: str, _attributes: object) -> None:
        nonlocal found
        found = found or name.rpartition(":")[2] == "AcquireLicense"

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    parser.StartDoctypeDeclHandler = _forbid_doctype
    parser.EntityDeclHandler = _forbid_doctype
    try:
        parser.Parse(challenge, True)
    except expat.ExpatError:
        raise MalformedChallenge("PlayReady challenge is not well-formed XML") from None
    if not found:
        raise MalformedChallenge("PlayReady challenge has no AcquireLicense element")


def license_policy(ctx: LicenseContext) -> str:
    doc: dict[str, Any] = {
        "contentId": ctx.content_id,
        "keyIds": [uuid_str(k.kid) for k in ctx.keys],
        "maxTrack": ctx.policy.max_track.name,
        "persistent": ctx.policy.can_persist,
        "licenseDurationSeconds": ctx.policy.license_duration_s,
        "minSecurityLevel": max(_SECURITY_LEVEL[k.track] for k in ctx.keys),
        "hdcp": max((ctx.policy.requirements(k.track)[1] for k in ctx.keys), default="HDCP_NONE"),
    }
    if ctx.policy.playback_duration_s:
        doc["playbackDurationSeconds"] = ctx.policy.playback_duration_s
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def parse_answer(reply: Reply) -> ProviderLicense:
    content_type = reply.headers.get("Content-Type", DEFAULT_CONTENT_TYPE)
    if reply.status >= 400 and _FAULT.search(reply.body[:4096]):
        match = _FAULTSTRING.search(reply.body)
        fault = match.group(1).decode("utf-8", "replace").strip() if match else "SOAP fault"
        raise ProviderRejected(
            f"playready SOAP fault: {fault}",
            relay=(reply.status, content_type, reply.body),
            providerStatus=reply.status,
        )
    check_status(reply, "playready")
    if b"AcquireLicenseResponse" not in reply.body and b"<" not in reply.body[:64]:
        raise ProviderBadResponse("playready answered something other than SOAP")
    return ProviderLicense(reply.body, content_type)


class PlayReadySoap(PooledProvider):
    name = "playready"
    key_system = KeySystem.PLAYREADY

    def __init__(self, settings: PlayReadySettings, http: ProviderHTTP) -> None:
        assert settings.license_url is not None
        self._settings = settings
        self._url = settings.license_url
        self._http = http

    async def acquire(self, challenge: bytes, ctx: LicenseContext) -> ProviderLicense:
        check_challenge(challenge, ctx.request_headers.get("SOAPAction"))
        content_type = ctx.request_headers.get("Content-Type", "")
        headers = {
            "Content-Type": content_type if "xml" in content_type else DEFAULT_CONTENT_TYPE,
            "SOAPAction": ctx.request_headers.get("SOAPAction") or PLAYREADY_SOAP_ACTION,
            POLICY_HEADER: license_policy(ctx),
        }
        params: dict[str, str] | None = None
        if self._settings.auth_token:
            if self._settings.auth_mode == "header":
                headers[self._settings.auth_header] = f"Bearer {self._settings.auth_token}"
            else:
                params = {"CustomData": self._settings.auth_token}
        return await self._http.call(
            "POST", self._url, data=challenge, headers=headers, params=params, parse=parse_answer
        )

    async def certificate(self) -> bytes:
        raise UnsupportedKeySystem("PlayReady has no certificate endpoint here")
