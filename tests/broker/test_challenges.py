"""Native challenges are checked before a provider sees them (issue 18): garbage is the viewer's
400 ``malformed_challenge``, never a provider's refusal relayed as a 502 (or PlayReady's SOAP
fault as a 500) that counts against our error rate."""

from __future__ import annotations

import pytest

from license_broker.errors import MalformedChallenge
from license_broker.providers import playready, widevine
from license_broker.providers.fairplay import parse_spc
from tests.broker.conftest import BrokerFactory, Client, problem, viewer

SOAP = (
    b'<?xml version="1.0" encoding="utf-8"?><soap:Envelope '
    b'xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    b'<AcquireLicense xmlns="http://schemas.microsoft.com/DRM/2007/03/protocols">'
    b"<challenge><Challenge>opaque</Challenge></challenge></AcquireLicense>"
    b"</soap:Body></soap:Envelope>"
)
ACQUIRE = '"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense"'
SPC = b"\x00\x00\x00\x01" + bytes(4) + bytes(range(16)) + b"spc-payload" * 4


@pytest.mark.parametrize(
    "challenge",
    [
        b"\x08\x01\x12\x04wv-1",  # LICENSE_REQUEST with its message
        b"\x08\x01\x12\x10" + bytes(16) + b"\x1a\x06opaque" + b"\x25\x00\x00\x00\x00",  # fixed32
        b"\x08\x04",  # SERVICE_CERTIFICATE_REQUEST
        b"\x08\x09\x12\x01x",  # EXTERNAL_LICENSE_REQUEST
    ],
)
def test_widevine_signed_messages_pass(challenge: bytes) -> None:
    widevine.check_challenge(challenge)


@pytest.mark.parametrize(
    "challenge",
    [
        b"",
        b"\x08\x01wv",  # 'w' is field 14 with wire type 7: not protobuf
        b"\x08\x01",  # a license request without its message
        b"\x08\x01\x12\x00",  # ... or with an empty one
        b"\x08\x02\x12\x01x",  # LICENSE: what a server sends, not a client
        b"\x12\x04wv-1",  # no type
        b"\x08\x01\x12\x10abc",  # length beyond the end
        b"\x08\x01\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # a varint of 71 bits
        b"\x08\x01\x12\x01x\x0b",  # a group
        b"\x00\x01",  # field number 0
        b"\x08\x01\x12\x01x\x1d\x00",  # fixed32 cut short
        b"<soap/>",
    ],
)
def test_widevine_garbage_is_malformed(challenge: bytes) -> None:
    with pytest.raises(MalformedChallenge):
        widevine.check_challenge(challenge)


@pytest.mark.parametrize(
    ("challenge", "action"),
    [
        (SOAP, None),
        (SOAP, ACQUIRE),
        (SOAP, ACQUIRE.strip('"')),
        (b"\xef\xbb\xbf" + SOAP, ACQUIRE),
        (SOAP.decode().replace('encoding="utf-8"', 'encoding="utf-16"').encode("utf-16"), ACQUIRE),
        ("<AcquireLicense/>".encode("utf-16-le"), None),  # UTF-16 without a BOM
    ],
)
def test_playready_acquire_license_passes(challenge: bytes, action: str | None) -> None:
    playready.check_challenge(challenge, action)


@pytest.mark.parametrize(
    ("challenge", "action"),
    [
        (SOAP, '"http://schemas.microsoft.com/DRM/2007/03/protocols/AcknowledgeLicense"'),
        (SOAP, ""),
        (SOAP[:-10], None),  # truncated
        (SOAP.replace(b"AcquireLicense", b"JoinDomain"), None),
        (b"AcquireLicense, but no XML", None),
        (b'<!DOCTYPE x [<!ENTITY a "aaaa">]><AcquireLicense>&a;</AcquireLicense>', None),
        (b'<!DOCTYPE x SYSTEM "http://evil.example/x.dtd"><AcquireLicense/>', None),
        (b"<AcquireLicense>&undefined;</AcquireLicense>", None),
        (b"<AcquireLicense>", None),
        (b"\x08\x01binary", None),
    ],
)
def test_playready_garbage_is_malformed(challenge: bytes, action: str | None) -> None:
    with pytest.raises(MalformedChallenge):
        playready.check_challenge(challenge, action)


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00\x09" + bytes(40),  # version 9
        b"\x00\x00\x00\x01" + bytes(10),  # too short
        b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # base64 of zeros: no version
        b"spc=" + b"A" * 40,
        b'{"spc": "' + b"A" * 40 + b'"}',
        b" \x00\x00\x00\x01" + bytes(30),  # a version behind a space is not where it belongs
    ],
)
def test_fairplay_spc_without_a_version_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedChallenge):
        parse_spc(body)


async def test_garbage_never_reaches_a_provider(
    make_broker: BrokerFactory, drm_emulator: Client
) -> None:
    broker = await make_broker()
    cases = [
        ("com.widevine.alpha", b"\x08\x01wv", {}),
        ("com.microsoft.playready", b"<Envelope><Body/></Envelope>", {}),
        ("com.microsoft.playready", SOAP, {"SOAPAction": '"urn:other"'}),
        ("com.apple.fps", b"\x00\x00\x00\x09" + bytes(40), {}),
    ]
    for key_system, challenge, headers in cases:
        resp = await broker.post(
            f"/drm/license/{key_system}?videoId=movie",
            data=challenge,
            headers={**viewer(), **headers},
        )
        assert resp.status == 400, key_system
        assert (await problem(resp))["code"] == "malformed_challenge"
    for system in ("widevine", "playready", "fairplay"):
        received = await (await drm_emulator.get(f"/control/{system}/received")).json()
        assert [r for r in received if r["method"] == "POST"] == [], system


async def test_widevine_unreadable_challenge_is_the_clients_400(
    make_broker: BrokerFactory, drm_emulator: Client
) -> None:
    """Widevine says INVALID_LICENSE_CHALLENGE: the player sent something it cannot read (a 400,
    and the provider proved itself alive); any other refusal stays a 502."""
    broker = await make_broker()
    url = "/drm/license/com.widevine.alpha?videoId=movie"
    await drm_emulator.post("/control/widevine", json={"refusal": "INVALID_LICENSE_CHALLENGE"})
    resp = await broker.post(url, data=b"\x08\x01\x12\x04wv-1", headers=viewer())
    assert (resp.status, (await problem(resp))["code"]) == (400, "malformed_challenge")
    await drm_emulator.post("/control/widevine", json={"refusal": "INTERNAL_ERROR"})
    resp = await broker.post(url, data=b"\x08\x01\x12\x04wv-2", headers=viewer())
    assert (resp.status, (await problem(resp))["code"]) == (502, "provider_rejected")
    health = await (await broker.get("/health")).json()
    assert health["providers"]["com.widevine.alpha"] == "closed"
