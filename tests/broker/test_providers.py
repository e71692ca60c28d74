"""Contract tests: each provider adapter, through the broker, against the DRM provider emulator.

The emulator checks signatures and credentials and records every request byte for byte, so these
tests prove what goes on the wire: Widevine's AES-CBC signature over SHA-1 of the exact message,
PlayReady's SOAP body untouched, FairPlay's SPC in each encoding, Axinom's HS256 message."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from devstack.emulators.drm import (
    FPS_CERTIFICATE,
    SERVICE_CERTIFICATE,
    DrmEmulatorConfig,
    axinom_license,
    axinom_url,
    fairplay_ckc,
    playready_license_text,
)
from license_broker.encoding import uuid_str
from tests.broker.conftest import (
    KEY_HD,
    KID_AUDIO,
    KID_HD,
    KID_SD,
    KID_UHD,
    BrokerFactory,
    Client,
    problem,
    viewer,
)

WV_CHALLENGE = b"\x08\x01\x12\x10" + bytes(range(16)) + b"\x1a\x06opaque"
SOAP_CHALLENGE = (
    b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\r\n'
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
    b'<soap:Body>  <AcquireLicense xmlns="http://schemas.microsoft.com/DRM/2007/03/protocols">'
    b"<challenge><Challenge>  \xc3\xa9 opaque &amp; signed  </Challenge></challenge>"
    b"</AcquireLicense></soap:Body></soap:Envelope>\n"
)
SOAP_ACTION = '"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense"'
SPC = b"\x00\x00\x00\x01" + b"\x00" * 4 + bytes(range(16)) + b"spc-payload" * 4


async def received(emulator: Client, system: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = await (await emulator.get(f"/control/{system}/received")).json()
    return docs


def body_of(entry: dict[str, Any]) -> bytes:
    return base64.b64decode(entry["body"])


# ---------------------------------------------------------------------------------- Widevine


@pytest.mark.parametrize(
    ("user", "plan", "tracks", "allowed"),
    [
        ("alice", "premium", {"SD", "HD", "UHD1", "AUDIO"}, "SD_UHD1"),
        ("bob", "basic", {"SD", "HD", "AUDIO"}, "SD_HD"),
    ],
)
async def test_widevine_request_is_signed_and_carries_the_policy(
    broker: Client,
    drm_emulator: Client,
    emulator_config: DrmEmulatorConfig,
    user: str,
    plan: str,
    tracks: set[str],
    allowed: str,
) -> None:
    resp = await broker.post(
        "/drm/license/com.widevine.alpha?videoId=movie",
        data=WV_CHALLENGE,
        headers=viewer(user, plan),
    )
    assert resp.status == 200, await resp.text()
    [entry] = await received(drm_emulator, "widevine")
    envelope = json.loads(body_of(entry))
    message = base64.b64decode(envelope["request"])
    assert envelope["signer"] == emulator_config.widevine_signer
    # The signature decrypts to SHA-1 of the exact message bytes (PKCS#7 padded).
    decryptor = Cipher(
        algorithms.AES(emulator_config.widevine_key), modes.CBC(emulator_config.widevine_iv)
    ).decryptor()
    padded = decryptor.update(base64.b64decode(envelope["signature"])) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    assert unpadder.update(padded) + unpadder.finalize() == hashlib.sha1(message).digest()  # noqa: S324
    inner = json.loads(message)
    assert base64.b64decode(inner["payload"]) == WV_CHALLENGE
    assert base64.b64decode(inner["content_id"]) == b"movie"
    assert inner["provider"] == emulator_config.widevine_signer
    assert inner["allowed_track_types"] == allowed
    assert {s["track_type"] for s in inner["content_key_specs"]} == tracks
    hd = next(s for s in inner["content_key_specs"] if s["track_type"] == "HD")
    assert base64.b64decode(hd["key"]) == bytes.fromhex(KEY_HD)
    assert base64.b64decode(hd["key_id"]) == bytes.fromhex(KID_HD)
    assert inner["policy_overrides"]["can_persist"] is (plan == "premium")
    # The license is the emulator's, relayed untouched.
    assert await resp.read() == b"WVLIC" + hashlib.sha256(message).digest()


async def test_widevine_wrong_signing_key_is_a_provider_rejection(
    make_broker: BrokerFactory,
) -> None:
    broker = await make_broker({"WIDEVINE_SIGNING_KEY": "11" * 32})
    resp = await broker.post(
        "/drm/license/com.widevine.alpha?videoId=movie", data=WV_CHALLENGE, headers=viewer()
    )
    assert resp.status == 502
    doc = await problem(resp)
    assert doc["code"] == "provider_rejected"
    assert doc["providerStatus"] == "SIGNATURE_FAILED"


async def test_widevine_service_certificate_is_fetched_once(
    broker: Client, drm_emulator: Client
) -> None:
    first = await broker.get("/drm/certificate/com.widevine.alpha")
    assert first.status == 200
    assert await first.read() == SERVICE_CERTIFICATE
    native = await broker.post(
        "/drm/license/com.widevine.alpha?videoId=movie", data=b"\x08\x04", headers=viewer()
    )
    assert await native.read() == SERVICE_CERTIFICATE
    assert len(await received(drm_emulator, "widevine")) == 1


async def test_widevine_inferred_in_the_json_api(broker: Client) -> None:
    doc = {"videoId": "movie", "licenseRequest": base64.b64encode(WV_CHALLENGE).decode()}
    resp = await broker.post("/drm/license", json=doc, headers=viewer())
    out = await resp.json()
    assert out["keySystem"] == "com.widevine.alpha"
    assert base64.b64decode(out["license"]).startswith(b"WVLIC")


# ---------------------------------------------------------------------------------- PlayReady


async def test_playready_soap_is_forwarded_byte_for_byte(
    broker: Client, drm_emulator: Client, emulator_config: DrmEmulatorConfig
) -> None:
    resp = await broker.post(
        "/drm/license/com.microsoft.playready?videoId=movie",
        data=SOAP_CHALLENGE,
        headers={
            **viewer("bob", "basic"),
            "Content-Type": "text/xml; charset=utf-8",
            "SOAPAction": SOAP_ACTION,
        },
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/xml")
    [entry] = await received(drm_emulator, "playready")
    assert body_of(entry) == SOAP_CHALLENGE
    assert entry["headers"]["SOAPAction"] == SOAP_ACTION
    assert entry["headers"]["Authorization"] == f"Bearer {emulator_config.playready_token}"
    policy = json.loads(entry["headers"]["X-Playback-License-Policy"])
    assert policy["contentId"] == "movie"
    assert policy["maxTrack"] == "HD"
    assert uuid_str(bytes.fromhex(KID_UHD)) not in policy["keyIds"]
    assert uuid_str(bytes.fromhex(KID_HD)) in policy["keyIds"]
    text = (await resp.read()).decode()
    assert f"<License>{playready_license_text(SOAP_CHALLENGE)}</License>" in text


async def test_playready_custom_data_mode(
    make_broker: BrokerFactory, drm_emulator: Client, emulator_config: DrmEmulatorConfig
) -> None:
    broker = await make_broker({"PLAYREADY_AUTH_MODE": "customdata"})
    doc = {
        "videoId": "movie",
        "licenseRequest": base64.b64encode(SOAP_CHALLENGE).decode(),
        "keySystem": "com.microsoft.playready.recommendation",
    }
    resp = await broker.post("/drm/license", json=doc, headers=viewer())
    assert resp.status == 200
    [entry] = await received(drm_emulator, "playready")
    assert "Authorization" not in entry["headers"]
    assert f"CustomData={emulator_config.playready_token}" in entry["query"]
    assert body_of(entry) == SOAP_CHALLENGE


async def test_playready_soap_fault_is_relayed_natively(make_broker: BrokerFactory) -> None:
    broker = await make_broker({"PLAYREADY_AUTH_TOKEN": "wrong-token"})
    native = await broker.post(
        "/drm/license/playready?videoId=movie",
        data=SOAP_CHALLENGE,
        headers={**viewer(), "SOAPAction": SOAP_ACTION},
    )
    assert native.status == 500
    assert native.headers["Content-Type"].startswith("text/xml")
    assert b"<faultstring>Unauthorized" in await native.read()
    doc = {"videoId": "movie", "licenseRequest": base64.b64encode(SOAP_CHALLENGE).decode()}
    api = await broker.post("/drm/license", json=doc, headers=viewer())
    assert api.status == 502
    body = await problem(api)
    assert body["code"] == "provider_rejected"
    assert "Unauthorized" in body["detail"]
    health = await (await broker.get("/health")).json()
    assert health["providers"]["com.microsoft.playready"] == "closed"  # a fault is no outage


async def test_playready_rejects_a_non_xml_challenge(broker: Client) -> None:
    resp = await broker.post(
        "/drm/license/playready?videoId=movie", data=b"\x08\x01binary", headers=viewer()
    )
    assert resp.status == 400
    assert (await problem(resp))["code"] == "malformed_challenge"


# ---------------------------------------------------------------------------------- FairPlay


SPC_B64 = base64.b64encode(SPC).decode()


@pytest.mark.parametrize(
    ("body", "content_type", "asset", "decode"),
    [
        (SPC, "application/octet-stream", "movie", lambda b: b),
        (SPC_B64.encode(), "text/plain", "movie", base64.b64decode),
        (
            f"spc={SPC_B64.replace('+', '%2B')}&assetId=asset-7".encode(),
            "application/x-www-form-urlencoded",
            "asset-7",
            lambda b: base64.b64decode(b.removeprefix(b"<ckc>").removesuffix(b"</ckc>")),
        ),
        (
            json.dumps({"spc": SPC_B64, "assetId": "asset-9"}).encode(),
            "application/json",
            "asset-9",
            lambda b: base64.b64decode(json.loads(b)["ckc"]),
        ),
    ],
    ids=["raw", "base64", "form", "json"],
)
async def test_fairplay_spc_encodings(
    broker: Client,
    drm_emulator: Client,
    emulator_config: DrmEmulatorConfig,
    body: bytes,
    content_type: str,
    asset: str,
    decode: Any,
) -> None:
    resp = await broker.post(
        "/drm/license/com.apple.fps.1_0?videoId=movie",
        data=body,
        headers={**viewer(), "Content-Type": content_type},
    )
    assert resp.status == 200, await resp.text()
    assert decode(await resp.read()) == fairplay_ckc(SPC, asset)
    [entry] = await received(drm_emulator, "fairplay")
    assert entry["headers"]["Authorization"] == f"Bearer {emulator_config.fairplay_token}"


async def test_fairplay_certificate(broker: Client) -> None:
    resp = await broker.get("/drm/certificate/com.apple.fps")
    assert resp.status == 200
    assert await resp.read() == FPS_CERTIFICATE


async def test_fairplay_json_api_answers_the_raw_ckc(broker: Client) -> None:
    doc = {"videoId": "movie", "licenseRequest": SPC_B64}  # inferred from the SPC version
    resp = await broker.post("/drm/license", json=doc, headers=viewer())
    out = await resp.json()
    assert out["keySystem"] == "com.apple.fps"
    assert base64.b64decode(out["license"]) == fairplay_ckc(SPC, "movie")


# ---------------------------------------------------------------------------------- Axinom


async def test_axinom_entitlement_message(
    make_broker: BrokerFactory, drm_emulator: Client, emulator_config: DrmEmulatorConfig
) -> None:
    base = str(drm_emulator.make_url("")).rstrip("/")
    broker = await make_broker(
        {"WIDEVINE_PROVIDER": "axinom", "WIDEVINE_LICENSE_URL": axinom_url(base, "widevine")}
    )
    resp = await broker.post(
        "/drm/license/widevine?videoId=movie", data=WV_CHALLENGE, headers=viewer("bob", "basic")
    )
    assert resp.status == 200, await resp.text()
    [entry] = await received(drm_emulator, "axinom")
    assert body_of(entry) == WV_CHALLENGE
    token = entry["headers"]["X-AxDRM-Message"]
    doc = jwt.decode(token, emulator_config.axinom_com_key, algorithms=["HS256"])
    assert doc["com_key_id"] == emulator_config.axinom_com_key_id
    message = doc["message"]
    assert message["type"] == "entitlement_message"
    assert message["version"] == 2
    assert message["license"]["allow_persistence"] is False
    assert message["license"]["duration"] > 0
    inline = {k["id"]: k["usage_policy"] for k in message["content_keys_source"]["inline"]}
    expected = {uuid_str(bytes.fromhex(k)) for k in (KID_SD, KID_HD, KID_AUDIO)}
    assert set(inline) == expected  # the UHD key is not entitled on basic
    policies = {p["name"]: p for p in message["content_key_usage_policies"]}
    assert set(policies) == set(inline.values())
    assert policies["HD"]["widevine"]["device_security_level"] == "SW_SECURE_CRYPTO"
    assert await resp.read() == axinom_license(WV_CHALLENGE, sorted(expected))


async def test_axinom_wrong_communication_key_is_refused(
    make_broker: BrokerFactory, drm_emulator: Client
) -> None:
    base = str(drm_emulator.make_url("")).rstrip("/")
    broker = await make_broker(
        {
            "WIDEVINE_PROVIDER": "axinom",
            "WIDEVINE_LICENSE_URL": axinom_url(base, "widevine"),
            "AXINOM_COM_KEY": base64.b64encode(b"k" * 32).decode(),
        }
    )
    resp = await broker.post(
        "/drm/license/widevine?videoId=movie", data=WV_CHALLENGE, headers=viewer()
    )
    assert resp.status == 502
    doc = await problem(resp)
    assert doc["code"] == "provider_rejected"
    assert "invalid license service message" in doc["detail"]
