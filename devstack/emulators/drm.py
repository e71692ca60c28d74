"""DRM provider emulator: the provider side of the wire formats the license broker speaks.

    POST /widevine/getlicense            Widevine license proxy: {"request", "signature", "signer"};
                                         checks AES-256-CBC(SHA-1(message)) and the provider name;
                                         answers {"status": "OK", "license": b64} (or a status such
                                         as SIGNATURE_FAILED); payload 08 04 gets the service cert
    POST /playready/rightsmanager.asmx   PlayReady SOAP AcquireLicense: checks SOAPAction, our
                                         authorization (Bearer header or CustomData query) and the
                                         XML; answers a deterministic SOAP license or a SOAP fault
    GET  /fairplay/certificate           FPS application certificate (DER)
    POST /fairplay/ksm                   KSM: spc=<b64>&assetId=..; Bearer token; <ckc>b64</ckc>
    POST /axinom/{drm}/AcquireLicense    Axinom-style: X-AxDRM-Message HS256 JWT with the
                                         communication key; raw license bytes or
                                         X-AxDRM-ErrorMessage
    GET  /health

Control API (tests, demos) per system ``widevine|playready|fairplay|axinom``:

    POST   /control/{system}            {"delay": seconds, "failStatus": 500|null, "garbage": bool,
                                         "refusal": "INVALID_LICENSE_CHALLENGE"|null (widevine)}
                                        (answers the settings and the warm-up HEADs counted)
    GET    /control/{system}/received   what arrived, byte for byte: [{"method", "path", "query",
                                        "headers", "body" (base64)}]
    DELETE /control                     back to normal, received logs cleared

Licenses are deterministic functions of what was received, so contract tests can recompute them:
Widevine ``b"WVLIC" + SHA-256(message)``; PlayReady ``License`` = b64(``b"PRLIC" + SHA-256(body)``);
FairPlay ``b"CKC1" + SHA-256(spc + assetId)``; Axinom ``b"AXLIC" + SHA-256(body + kid uuids)``.
Credentials are demo values (overridable from the environment); never real ones.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from urllib.parse import parse_qsl
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SYSTEMS: Final = ("widevine", "playready", "fairplay", "axinom")
SOAP_ACTION: Final = "http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense"
SERVICE_CERTIFICATE: Final = b"\x08\x05\x12\x20" + hashlib.sha256(b"demo-service-cert").digest()
FPS_CERTIFICATE: Final = b"\x30\x82\x01\x00" + hashlib.sha256(b"demo-fps-cert").digest() * 8
GARBAGE: Final = b"\x00\xff<garbage{\x01"
MAX_RECEIVED: Final = 200

DEMO_WIDEVINE_SIGNER: Final = "playback_demo"
DEMO_WIDEVINE_KEY: Final = "5d1f7a0c3b9e48a2c6f0d1e2b3a495867788990aabbccddeeff0011223344556"
DEMO_WIDEVINE_IV: Final = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
DEMO_PLAYREADY_TOKEN: Final = "demo-playready-token"  # noqa: S105 - emulator demo credential
DEMO_FAIRPLAY_TOKEN: Final = "demo-fairplay-token"  # noqa: S105 - emulator demo credential
DEMO_AXINOM_COM_KEY_ID: Final = "6e5a1d6e-0d7f-4b4c-9a8e-1c2d3e4f5a6b"
DEMO_AXINOM_COM_KEY: Final = base64.b64encode(
    hashlib.sha256(b"demo-axinom-com-key").digest()
).decode()


@dataclass(frozen=True, slots=True)
class DrmEmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 9103
    widevine_signer: str = DEMO_WIDEVINE_SIGNER
    widevine_key: bytes = field(default=bytes.fromhex(DEMO_WIDEVINE_KEY), repr=False)
    widevine_iv: bytes = field(default=bytes.fromhex(DEMO_WIDEVINE_IV), repr=False)
    playready_token: str = field(default=DEMO_PLAYREADY_TOKEN, repr=False)
    fairplay_token: str = field(default=DEMO_FAIRPLAY_TOKEN, repr=False)
    axinom_com_key_id: str = DEMO_AXINOM_COM_KEY_ID
    axinom_com_key: bytes = field(default=base64.b64decode(DEMO_AXINOM_COM_KEY), repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DrmEmulatorConfig:
        """``DRM_EMULATOR_ADDR`` (host:port); credentials from the broker's variable names."""
        host, _, port = (env.get("DRM_EMULATOR_ADDR") or "127.0.0.1:9103").rpartition(":")
        return cls(
            host=host or "127.0.0.1",
            port=int(port),
            widevine_signer=env.get("WIDEVINE_SIGNER") or DEMO_WIDEVINE_SIGNER,
            widevine_key=bytes.fromhex(env.get("WIDEVINE_SIGNING_KEY") or DEMO_WIDEVINE_KEY),
            widevine_iv=bytes.fromhex(env.get("WIDEVINE_SIGNING_IV") or DEMO_WIDEVINE_IV),
            playready_token=env.get("PLAYREADY_AUTH_TOKEN") or DEMO_PLAYREADY_TOKEN,
            fairplay_token=env.get("FAIRPLAY_AUTH_TOKEN") or DEMO_FAIRPLAY_TOKEN,
            axinom_com_key_id=env.get("AXINOM_COM_KEY_ID") or DEMO_AXINOM_COM_KEY_ID,
            axinom_com_key=base64.b64decode(env.get("AXINOM_COM_KEY") or DEMO_AXINOM_COM_KEY),
        )


def provider_env(base_url: str, config: DrmEmulatorConfig | None = None) -> dict[str, str]:
    """License broker environment pointing every key system at this emulator."""
    cfg = config or DrmEmulatorConfig()
    base = base_url.rstrip("/")
    return {
        "WIDEVINE_PROVIDER": "proxy",
        "WIDEVINE_LICENSE_URL": f"{base}/widevine/getlicense",
        "WIDEVINE_SIGNER": cfg.widevine_signer,
        "WIDEVINE_SIGNING_KEY": cfg.widevine_key.hex(),
        "WIDEVINE_SIGNING_IV": cfg.widevine_iv.hex(),
        "PLAYREADY_PROVIDER": "soap",
        "PLAYREADY_LICENSE_URL": f"{base}/playready/rightsmanager.asmx",
        "PLAYREADY_AUTH_TOKEN": cfg.playready_token,
        "FAIRPLAY_PROVIDER": "ksm",
        "FAIRPLAY_KSM_URL": f"{base}/fairplay/ksm",
        "FAIRPLAY_CERTIFICATE_URL": f"{base}/fairplay/certificate",
        "FAIRPLAY_AUTH_TOKEN": cfg.fairplay_token,
        "AXINOM_COM_KEY_ID": cfg.axinom_com_key_id,
        "AXINOM_COM_KEY": base64.b64encode(cfg.axinom_com_key).decode(),
    }


def axinom_url(base_url: str, drm: str) -> str:
    return f"{base_url.rstrip('/')}/axinom/{drm}/AcquireLicense"


@dataclass
class SystemState:
    """Faults and the received log of one emulated system."""

    delay: float = 0.0
    fail_status: int | None = None
    garbage: bool = False
    refusal: str | None = None  # Widevine: answer {"status": refusal} to license requests
    warmups: int = 0
    received: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_RECEIVED))

    def reset(self) -> None:
        self.delay, self.fail_status, self.garbage, self.refusal = 0.0, None, False, None
        self.warmups = 0
        self.received.clear()


STATE_KEY: Final = web.AppKey("drm_state", dict[str, SystemState])
CONFIG_KEY: Final = web.AppKey("drm_config", DrmEmulatorConfig)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _system(name: str, handler: Handler) -> Handler:
    """Record the request byte for byte, then apply the system's faults, then answer."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY][name]
        body = await request.read()
        state.received.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": dict(request.headers),
                "body": base64.b64encode(body).decode(),
                "at": time.time(),
            }
        )
        if state.delay > 0:
            await asyncio.sleep(state.delay)
        if state.fail_status is not None:
            return web.Response(status=state.fail_status, text=f"{name} emulator failure")
        if state.garbage:
            return web.Response(body=GARBAGE, content_type="application/octet-stream")
        return await handler(request)

    return wrapped


# ------------------------------------------------------------------------------------ Widevine


def _widevine_signature(message: bytes, key: bytes, iv: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    digest = hashlib.sha1(message).digest()  # noqa: S324 - the Widevine proxy API's choice
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padder.update(digest) + padder.finalize()) + encryptor.finalize()


def _wv_status(status: str) -> web.Response:
    return web.json_response({"status": status})


async def widevine(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    try:
        doc = json.loads(await request.read())
        message = base64.b64decode(doc["request"], validate=True)
        signature = base64.b64decode(doc["signature"], validate=True)
        signer = doc["signer"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        return web.Response(status=400, text="expected {request, signature, signer}")
    if signer != cfg.widevine_signer:
        return _wv_status("SIGNATURE_FAILED")
    expected = _widevine_signature(message, cfg.widevine_key, cfg.widevine_iv)
    if not hmac.compare_digest(expected, signature):
        return _wv_status("SIGNATURE_FAILED")
    try:
        inner = json.loads(message)
        payload = base64.b64decode(inner["payload"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return _wv_status("INVALID_MESSAGE")
    if inner.get("provider", signer) != signer:
        return _wv_status("PROVIDER_MISMATCH")
    if payload == b"\x08\x04":
        return web.json_response(
            {"status": "OK", "license": base64.b64encode(SERVICE_CERTIFICATE).decode()}
        )
    if not payload:
        return _wv_status("INVALID_LICENSE_CHALLENGE")
    refusal = request.app[STATE_KEY]["widevine"].refusal
    if refusal is not None:
        return _wv_status(refusal)
    license_bytes = b"WVLIC" + hashlib.sha256(message).digest()
    return web.json_response(
        {
            "status": "OK",
            "license": base64.b64encode(license_bytes).decode(),
            "content_id": inner.get("content_id", ""),
            "allowed_track_types": inner.get("allowed_track_types"),
        }
    )


# ------------------------------------------------------------------------------------ PlayReady


def soap_fault(reason: str, status: int = 500) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
        "<soap:Fault><faultcode>soap:Server</faultcode>"
        f"<faultstring>{reason}</faultstring></soap:Fault></soap:Body></soap:Envelope>"
    )
    return web.Response(
        status=status, body=body.encode(), headers={"Content-Type": "text/xml; charset=utf-8"}
    )


def playready_license_text(body: bytes) -> str:
    return base64.b64encode(b"PRLIC" + hashlib.sha256(body).digest()).decode()


async def playready(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    body = await request.read()
    action = request.headers.get("SOAPAction", "").strip().strip('"')
    if action != SOAP_ACTION:
        return soap_fault("Invalid SOAPAction")
    auth = request.headers.get("Authorization", "")
    custom = request.query.get("CustomData", "")
    token_ok = hmac.compare_digest(auth, f"Bearer {cfg.playready_token}") or hmac.compare_digest(
        custom, cfg.playready_token
    )
    if not token_ok:
        return soap_fault("Unauthorized: missing or wrong authorization")
    try:
        root = SafeET.fromstring(body)
    except (ParseError, ValueError):
        return soap_fault("Malformed license challenge")
    if not any(el.tag.endswith("AcquireLicense") for el in root.iter()):
        return soap_fault("Not an AcquireLicense request")
    answer = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
        '<AcquireLicenseResponse xmlns="http://schemas.microsoft.com/DRM/2007/03/protocols">'
        "<AcquireLicenseResult><Response><LicenseResponse><Licenses>"
        f"<License>{playready_license_text(body)}</License>"
        "</Licenses></LicenseResponse></Response></AcquireLicenseResult>"
        "</AcquireLicenseResponse></soap:Body></soap:Envelope>"
    )
    return web.Response(body=answer.encode(), headers={"Content-Type": "text/xml; charset=utf-8"})


# ------------------------------------------------------------------------------------ FairPlay


def fairplay_ckc(spc: bytes, asset_id: str) -> bytes:
    return b"CKC1" + hashlib.sha256(spc + asset_id.encode()).digest()


async def fairplay_certificate(request: web.Request) -> web.Response:
    return web.Response(body=FPS_CERTIFICATE, content_type="application/octet-stream")


async def fairplay_ksm(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    if not hmac.compare_digest(
        request.headers.get("Authorization", ""), f"Bearer {cfg.fairplay_token}"
    ):
        return web.Response(status=401, text="unauthorized")
    try:
        form = dict(parse_qsl((await request.read()).decode("ascii"), keep_blank_values=True))
        spc = base64.b64decode(form["spc"], validate=True)
    except (KeyError, ValueError, binascii.Error, UnicodeDecodeError):
        return web.Response(status=400, text="expected spc=<base64>&assetId=<id>")
    if len(spc) < 24 or spc[:4] not in (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"):
        return web.Response(status=400, text="not an SPC")
    ckc = fairplay_ckc(spc, form.get("assetId", ""))
    return web.Response(
        body=b"<ckc>" + base64.b64encode(ckc) + b"</ckc>",
        headers={"Content-Type": "application/xml"},
    )


# ------------------------------------------------------------------------------------ Axinom


def axinom_license(body: bytes, kids: list[str]) -> bytes:
    return b"AXLIC" + hashlib.sha256(body + ",".join(sorted(kids)).encode()).digest()


def _ax_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message, headers={"X-AxDRM-ErrorMessage": message})


def _check_dates(doc: Mapping[str, Any]) -> str | None:
    now = time.time()
    for name, past in (("begin_date", True), ("expiration_date", False)):
        raw = doc.get(name)
        if raw is None:
            continue
        try:
            when = datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
        except ValueError:
            return f"invalid {name}"
        if past and when > now + 60:
            return "message not yet valid"
        if not past and when < now:
            return "message expired"
    return None


async def axinom(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    token = request.headers.get("X-AxDRM-Message")
    if not token:
        return _ax_error(401, "X-AxDRM-Message header missing")
    try:
        doc = jwt.decode(token, cfg.axinom_com_key, algorithms=["HS256"])
    except jwt.PyJWTError as exc:
        return _ax_error(401, f"invalid license service message: {type(exc).__name__}")
    if doc.get("com_key_id") != cfg.axinom_com_key_id:
        return _ax_error(401, "unknown communication key id")
    date_error = _check_dates(doc)
    if date_error:
        return _ax_error(401, date_error)
    message = doc.get("message")
    if not isinstance(message, dict) or message.get("type") != "entitlement_message":
        return _ax_error(400, "message is not an entitlement message")
    inline = (message.get("content_keys_source") or {}).get("inline")
    if not isinstance(inline, list) or not inline:
        return _ax_error(400, "no content keys entitled")
    kids = [str(k.get("id")) for k in inline if isinstance(k, dict)]
    body = await request.read()
    if not body:
        return _ax_error(400, "empty license request")
    return web.Response(body=axinom_license(body, kids), content_type="application/octet-stream")


# ------------------------------------------------------------------------------------ control


def _state(request: web.Request) -> SystemState:
    name = request.match_info["system"]
    if name not in SYSTEMS:
        raise web.HTTPNotFound(text=f"unknown system {name!r}")
    return request.app[STATE_KEY][name]


async def control_set(request: web.Request) -> web.Response:
    state = _state(request)
    doc = await request.json()
    if "delay" in doc:
        state.delay = float(doc["delay"] or 0)
    if "failStatus" in doc:
        state.fail_status = int(doc["failStatus"]) if doc["failStatus"] else None
    if "garbage" in doc:
        state.garbage = bool(doc["garbage"])
    if "refusal" in doc:
        state.refusal = str(doc["refusal"]) if doc["refusal"] else None
    return web.json_response(
        {
            "delay": state.delay,
            "failStatus": state.fail_status,
            "garbage": state.garbage,
            "warmups": state.warmups,
        }
    )


async def control_received(request: web.Request) -> web.Response:
    return web.json_response(list(_state(request).received))


async def control_reset(request: web.Request) -> web.Response:
    for state in request.app[STATE_KEY].values():
        state.reset()
    return web.json_response({"reset": True})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _warm(name: str) -> Handler:
    async def ok(request: web.Request) -> web.Response:
        """HEAD on a license URL: what the broker's connection warm-up sends (counted)."""
        request.app[STATE_KEY][name].warmups += 1
        return web.Response(status=200)

    return ok


def build_app(config: DrmEmulatorConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app[CONFIG_KEY] = config or DrmEmulatorConfig()
    app[STATE_KEY] = {name: SystemState() for name in SYSTEMS}
    r = app.router
    r.add_post("/widevine/getlicense", _system("widevine", widevine))
    r.add_post("/playready/rightsmanager.asmx", _system("playready", playready))
    r.add_get("/fairplay/certificate", _system("fairplay", fairplay_certificate), allow_head=False)
    r.add_post("/fairplay/ksm", _system("fairplay", fairplay_ksm))
    r.add_post("/axinom/{drm}/AcquireLicense", _system("axinom", axinom))
    for name, path in (
        ("widevine", "/widevine/getlicense"),
        ("playready", "/playready/rightsmanager.asmx"),
        ("fairplay", "/fairplay/ksm"),
        ("axinom", "/axinom/{drm}/AcquireLicense"),
    ):
        r.add_route("HEAD", path, _warm(name))
    r.add_post("/control/{system}", control_set)
    r.add_get("/control/{system}/received", control_received, allow_head=False)
    r.add_delete("/control", control_reset)
    r.add_get("/health", health, allow_head=False)
    return app


async def serve(config: DrmEmulatorConfig) -> None:
    """Run until cancelled."""
    runner = web.AppRunner(build_app(config), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def serve_from_env(env: Mapping[str, str]) -> None:
    await serve(DrmEmulatorConfig.from_env(env))
