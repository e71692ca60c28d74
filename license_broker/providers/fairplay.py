"""FairPlay Streaming: the FPS certificate, and the SPC forwarded to a provider's KSM for a CKC.

Players post the SPC in one of four encodings; the CKC goes back in the matching one:

| request body | CKC answer |
| --- | --- |
| raw SPC bytes (version ``00 00 00 01``/``02`` first) | raw CKC, application/octet-stream |
| base64 of the SPC | base64 of the CKC, text/plain |
| ``spc=<base64>[&assetId=<id>]`` form | ``<ckc>base64</ckc>`` (Apple's sample server convention) |
| JSON ``{"spc": "<base64>", "assetId": "<id>"}`` | JSON ``{"ckc": "<base64>"}`` |

The KSM is called with ``spc=<base64>&assetId=<id>`` (form encoded), our bearer token and the
license policy header; its answer may be ``<ckc>..</ckc>``, JSON ``{"ckc": ..}``, base64 text or
raw bytes. The certificate is configured inline (FAIRPLAY_CERTIFICATE) or fetched from
FAIRPLAY_CERTIFICATE_URL (raw DER or base64) and cached.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import parse_qsl, urlencode

from license_broker.config import FairPlaySettings
from license_broker.encoding import b64, b64decode_lenient
from license_broker.errors import MalformedChallenge, ProviderBadResponse, UnsupportedKeySystem
from license_broker.http import ProviderHTTP, Reply
from license_broker.keysystems import KeySystem
from license_broker.providers.base import (
    CertificateCache,
    LicenseContext,
    PooledProvider,
    ProviderLicense,
    check_status,
    require_body,
)
from license_broker.providers.playready import POLICY_HEADER, license_policy
from playback_drm.untrusted import json_loads

_SPC_VERSIONS: Final = (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02")
_CKC_TAG: Final = re.compile(rb"<ckc>\s*([A-Za-z0-9+/=_\-\s]+?)\s*</ckc>", re.IGNORECASE)
_ASSET_KEYS: Final = ("assetId", "asset_id", "contentId", "content_id")
MIN_SPC_BYTES: Final = 24


class SpcEncoding(StrEnum):
    RAW = "raw"
    BASE64 = "base64"
    FORM = "form"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class SpcRequest:
    spc: bytes
    asset_id: str | None
    encoding: SpcEncoding


def _check_spc(spc: bytes) -> bytes:
    """An SPC starts with its version (1 or 2, big-endian): anything else would be a KSM's
    refusal (a 502 for us), so it is the client's 400 here."""
    if len(spc) < MIN_SPC_BYTES:
        raise MalformedChallenge("FairPlay SPC is too short")
    if spc[:4] not in _SPC_VERSIONS:
        raise MalformedChallenge("FairPlay SPC has no version 1 or 2 header")
    return spc


def _decode_spc(value: str) -> bytes:
    try:
        spc = b64decode_lenient(value.replace(" ", "+"))
    except ValueError:
        raise MalformedChallenge("FairPlay SPC is not valid base64") from None
    return _check_spc(spc)


def parse_spc(body: bytes, content_type: str = "") -> SpcRequest:
    """Recognize the four SPC encodings (see the module docstring)."""
    stripped = body.strip()
    if not stripped:
        raise MalformedChallenge("empty FairPlay SPC")
    if body[:4] in _SPC_VERSIONS and len(body) >= MIN_SPC_BYTES:
        return SpcRequest(body, None, SpcEncoding.RAW)
    if stripped[:1] == b"{":
        try:
            doc = json_loads(stripped)
        except ValueError:
            raise MalformedChallenge("FairPlay JSON request is not valid JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("spc"), str):
            raise MalformedChallenge("FairPlay JSON request needs a string 'spc'")
        asset = next((doc[k] for k in _ASSET_KEYS if isinstance(doc.get(k), str)), None)
        return SpcRequest(_decode_spc(doc["spc"]), asset, SpcEncoding.JSON)
    if stripped.startswith(b"spc=") or "x-www-form-urlencoded" in content_type:
        try:
            form = dict(parse_qsl(stripped.decode("ascii"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise MalformedChallenge("FairPlay form request is not ASCII") from None
        if not form.get("spc"):
            raise MalformedChallenge("FairPlay form request needs 'spc'")
        asset = next((form[k] for k in _ASSET_KEYS if form.get(k)), None)
        return SpcRequest(_decode_spc(form["spc"]), asset, SpcEncoding.FORM)
    try:
        return SpcRequest(_decode_spc(stripped.decode("ascii")), None, SpcEncoding.BASE64)
    except (MalformedChallenge, UnicodeDecodeError):
        pass
    return SpcRequest(_check_spc(body), None, SpcEncoding.RAW)


def encode_ckc(ckc: bytes, encoding: SpcEncoding) -> ProviderLicense:
    """The CKC in the encoding the player used for its SPC."""
    if encoding == SpcEncoding.RAW:
        return ProviderLicense(ckc, "application/octet-stream")
    if encoding == SpcEncoding.BASE64:
        return ProviderLicense(b64(ckc).encode(), "text/plain")
    if encoding == SpcEncoding.FORM:
        return ProviderLicense(b"<ckc>" + b64(ckc).encode() + b"</ckc>", "application/xml")
    return ProviderLicense(json.dumps({"ckc": b64(ckc)}).encode(), "application/json")


def parse_ckc(body: bytes) -> bytes:
    """A raw CKC from a KSM answer in any of the usual encodings."""
    stripped = body.strip()
    if not stripped:
        raise ProviderBadResponse("KSM answered an empty CKC")
    match = _CKC_TAG.search(stripped[:65536])
    try:
        if match:
            return b64decode_lenient(match.group(1))
        if stripped[:1] == b"{":
            doc = json_loads(stripped)
            value = doc.get("ckc", doc.get("CkcMessage")) if isinstance(doc, dict) else None
            if not isinstance(value, str):
                raise ProviderBadResponse("KSM JSON answer lacks 'ckc'")
            return b64decode_lenient(value)
    except (ValueError, UnicodeDecodeError):
        raise ProviderBadResponse("KSM answered an unreadable CKC") from None
    try:
        return b64decode_lenient(stripped.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return body


def parse_certificate(body: bytes) -> bytes:
    """FPS certificates are DER (``30 82 ..``) or base64 of it."""
    if body[:1] == b"\x30":
        return body
    try:
        return b64decode_lenient(body.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProviderBadResponse("FairPlay certificate is neither DER nor base64") from None


def _parse_ksm(reply: Reply) -> bytes:
    check_status(reply, "fairplay")
    return parse_ckc(require_body(reply, "fairplay"))


def _parse_cert(reply: Reply) -> bytes:
    check_status(reply, "fairplay")
    return parse_certificate(require_body(reply, "fairplay"))


class FairPlayKsm(PooledProvider):
    name = "fairplay"
    key_system = KeySystem.FAIRPLAY

    def __init__(self, settings: FairPlaySettings, http: ProviderHTTP, cert_ttl: float) -> None:
        assert settings.ksm_url is not None
        self._settings = settings
        self._url = settings.ksm_url
        self._http = http
        self._certs = CertificateCache(cert_ttl)

    def _headers(self, ctx: LicenseContext | None = None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._settings.auth_token:
            headers["Authorization"] = f"Bearer {self._settings.auth_token}"
        if ctx is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers[POLICY_HEADER] = license_policy(ctx)
        return headers

    async def acquire(self, challenge: bytes, ctx: LicenseContext) -> ProviderLicense:
        """``challenge`` is the raw SPC (the service decoded the player's encoding)."""
        form = urlencode({"spc": b64(challenge), "assetId": ctx.content_id}).encode()
        ckc = await self._http.call(
            "POST", self._url, data=form, headers=self._headers(ctx), parse=_parse_ksm
        )
        return ProviderLicense(ckc)

    async def certificate(self) -> bytes:
        return await fetch_fps_certificate(self._settings, self._http, self._certs)


async def fetch_fps_certificate(
    settings: FairPlaySettings, http: ProviderHTTP, cache: CertificateCache
) -> bytes:
    if settings.certificate:
        return settings.certificate
    url = settings.certificate_url
    if not url:
        raise UnsupportedKeySystem("no FairPlay certificate configured")
    headers = {"Authorization": f"Bearer {settings.auth_token}"} if settings.auth_token else None

    async def load() -> bytes:
        return await http.call("GET", url, headers=headers, parse=_parse_cert)

    return await cache.get(load)
