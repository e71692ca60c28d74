"""Fuzzing the license broker's request bodies, for each key system, on both routes (the JSON API
and the player-native one), against the real app with the DRM provider emulator behind it: an
admitted viewer's garbage is a 4xx with a documented code, never a 5xx (a provider's refusal of
garbage we forwarded is a 502 that counts against the error rate, so garbage must not reach it),
an unhandled exception, or memory beyond a bound.

The emulator stands in for Widevine, PlayReady and FairPlay (systems we do not own) and accepts
what they would: a well-formed challenge of its kind.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from license_broker.errors import BrokerError
from tests.broker.conftest import KID_HD, KID_SD, Client, viewer
from tests.fuzz import MemoryBound, fuzz_settings, json_values
from tests.support.protobuf import varint


def _subclasses(cls: type[BrokerError]) -> list[type[BrokerError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


# every refusal the broker documents as the viewer's (4xx), by code; aiohttp's routing ones
REFUSALS = {cls.code: cls.status for cls in _subclasses(BrokerError) if cls.status < 500}
REFUSALS.update({"not_found": 404, "method_not_allowed": 405})
MEMORY = MemoryBound(8 << 20)
KEY_SYSTEMS = ["org.w3.clearkey", "com.widevine.alpha", "com.microsoft.playready", "com.apple.fps"]
SOAP_ACTION = '"http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense"'


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- challenges, per key system ---------------------------------------------------------------

kid_spellings = (
    st.sampled_from(
        [
            b64url(bytes.fromhex(KID_SD)),
            KID_HD,
            "0x" + KID_SD,
            "00112233-4455-6677-8899-aabbccddeef1",
            b64(bytes.fromhex(KID_HD)),
            "",
            "AAAA",
            "%%%",
            "é" * 22,
        ]
    )
    | json_values
)
clearkey = st.fixed_dictionaries(
    {},
    optional={
        "kids": st.lists(kid_spellings, max_size=5) | json_values,
        "type": st.sampled_from(["temporary", "persistent-license", "bogus", None]) | json_values,
        "x": json_values,
    },
).map(lambda doc: json.dumps(doc).encode()) | st.sampled_from(
    [b"[" * 5000 + b"]" * 5000, b'{"kids":["' + b"A" * 60000 + b'"]}', b"\xef\xbb\xbf{}"]
)


@st.composite
def protobuf(draw: st.DrawFn) -> bytes:
    """Top-level protobuf fields, well formed or not (a Widevine SignedMessage has type 1, msg 2,
    signature 3, session key 4)."""
    out = b""
    for _ in range(draw(st.integers(0, 5))):
        field = draw(st.sampled_from([1, 1, 2, 2, 3, 4, 0, 99, 2**29]))
        wire = draw(st.sampled_from([0, 2, 2, 1, 5, 3, 7]))
        out += varint(field << 3 | wire)
        if wire == 0:
            out += varint(draw(st.sampled_from([1, 4, 2, 7, 9, 0, 2**64 - 1])))
        elif wire == 2:
            payload = draw(st.binary(max_size=40))
            length = draw(st.sampled_from([len(payload), len(payload) + 5, 2**40]))
            out += varint(length) + payload
        elif wire == 1:
            out += draw(st.binary(min_size=0, max_size=8))
        elif wire == 5:
            out += draw(st.binary(min_size=0, max_size=4))
    return out


widevine = (
    protobuf()
    | st.sampled_from([b"\x08\x04", b"\x08\x01\x12\x04wv-1", b"\x08\x01", b"\x08\x02\x12\x01x"])
    | st.binary(max_size=64)
)
SOAP = (
    '<?xml version="1.0" encoding="utf-8"?><soap:Envelope '
    'xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    '<AcquireLicense xmlns="http://schemas.microsoft.com/DRM/2007/03/protocols">'
    "<challenge><Challenge>{}</Challenge></challenge></AcquireLicense></soap:Body></soap:Envelope>"
)
playready = (
    st.builds(
        lambda inner, encoding: SOAP.format(inner).encode(encoding),
        st.sampled_from(["AAAA", "&amp;", "&undefined;", "<x>", "]]>", "", "é"]),
        st.sampled_from(["utf-8", "utf-16"]),
    )
    | st.sampled_from(
        [
            b'<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
            b"<AcquireLicense>&b;</AcquireLicense>",
            b"<AcquireLicense>",
            b"<Envelope><Body><Other/></Body></Envelope>",
            b"AcquireLicense but no XML",
            b"<" * 70000,
            "Acquire".encode("utf-16-le") + b"\x00<",
        ]
    )
    | st.binary(max_size=64)
)
SPC = b"\x00\x00\x00\x01" + bytes(4) + bytes(range(16)) + b"spc-payload" * 4
fairplay = st.sampled_from(
    [
        SPC,
        b64(SPC).encode(),
        f"spc={b64(SPC)}&assetId=a1".encode(),
        json.dumps({"spc": b64(SPC), "assetId": "a1"}).encode(),
        b"\x00\x00\x00\x09" + bytes(40),
        b64(b"x" * 40).encode(),
        b"spc=&assetId=x",
        b"spc=%%%",
        b'{"spc": 5}',
        b"x" * 30,
    ]
) | st.binary(max_size=64)
CHALLENGES = {
    "org.w3.clearkey": clearkey,
    "com.widevine.alpha": widevine,
    "com.microsoft.playready": playready,
    "com.apple.fps": fairplay,
}
any_challenge = st.sampled_from(KEY_SYSTEMS).flatmap(
    lambda ks: st.tuples(st.just(ks), CHALLENGES[ks])
)


async def check(resp: Any, what: str) -> None:
    body = await resp.read()
    if resp.status < 300:
        event(f"{what}: issued")
        return
    problem = json.loads(body) if resp.content_type == "application/problem+json" else {}
    code = problem.get("code")
    event(f"{what}: {resp.status} {code} {problem.get('detail', '')[:40]}")
    assert REFUSALS.get(str(code)) == resp.status, (resp.status, body[:300])


LICENSE_FUZZ = settings(
    fuzz_settings(0.4),
    suppress_health_check=[
        *fuzz_settings().suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ],
)


@LICENSE_FUZZ
@given(case=any_challenge, soap_action=st.sampled_from([SOAP_ACTION, None, '"urn:other"', ""]))
@example(case=("org.w3.clearkey", b"[" * 5000 + b"]" * 5000), soap_action=None)
# found by this property before the challenges were checked: forwarded, the provider's SOAP fault
# came back as a 500 (and a Widevine or FairPlay refusal as a 502)
@example(
    case=(
        "com.microsoft.playready",
        b'<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
        b"<AcquireLicense>&b;</AcquireLicense>",
    ),
    soap_action=SOAP_ACTION,
)
@example(case=("com.microsoft.playready", SOAP.format("AAAA").encode()), soap_action='"urn:other"')
@example(case=("com.widevine.alpha", b"\x08\x01wv"), soap_action=None)
@example(case=("com.apple.fps", b64(b"x" * 40).encode()), soap_action=None)
async def test_native_challenges_are_issued_or_refused_with_a_4xx(
    make_broker: Any, case: tuple[str, bytes], soap_action: str | None
) -> None:
    broker: Client = await _broker(make_broker)
    key_system, challenge = case
    headers = viewer(session="s1")
    if soap_action is not None:
        headers["SOAPAction"] = soap_action
    with MEMORY(key_system):
        resp = await broker.post(
            f"/drm/license/{key_system}?videoId=movie", data=challenge, headers=headers
        )
        await check(resp, key_system)


VIDEOS = st.sampled_from(["movie", "movie", "uhd-movie", "../etc", "", "x" * 200]) | json_values
near_valid = st.builds(
    lambda case, video, named: {
        "videoId": video,
        "licenseRequest": b64(case[1]),
        **({"keySystem": case[0]} if named else {}),
    },
    any_challenge,
    st.sampled_from(["movie"] * 8 + ["uhd-movie", "nope"]),
    st.booleans(),
)
chaos = st.fixed_dictionaries(
    {},
    optional={
        "videoId": VIDEOS,
        "licenseRequest": any_challenge.map(lambda case: b64(case[1])) | json_values,
        "keySystem": st.sampled_from([*KEY_SYSTEMS, "widevine", "com.nope"]) | json_values,
    },
)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """Mostly a well-formed request around a fuzzed challenge; sometimes anything at all."""
    return draw([near_valid, near_valid, near_valid, chaos, json_values][draw(st.integers(0, 4))])


@LICENSE_FUZZ
@given(doc=documents())
async def test_json_api_documents_are_issued_or_refused_with_a_4xx(
    make_broker: Any, doc: Any
) -> None:
    broker: Client = await _broker(make_broker)
    with MEMORY("json api"):
        resp = await broker.post(
            "/drm/license",
            data=json.dumps(doc).encode(),
            headers={**viewer(session="s1"), "Content-Type": "application/json"},
        )
        await check(resp, "json")


@LICENSE_FUZZ
@given(
    video=st.sampled_from(["movie", "uhd-movie", "nope"]) | st.text(max_size=20),
    kid=st.sampled_from([KID_SD, KID_HD, "0x" + KID_SD, "zz"]) | st.text(max_size=40),
    key_system=st.sampled_from([*KEY_SYSTEMS, "fps", "%00", ""]) | st.text(max_size=20),
)
async def test_keys_and_certificates_answer_with_a_documented_status(
    make_broker: Any, video: str, kid: str, key_system: str
) -> None:
    broker: Client = await _broker(make_broker)
    video, kid, key_system = (quote(part, safe="") for part in (video, kid, key_system))
    for path in (f"/drm/key/{video}/{kid}", f"/drm/certificate/{key_system}"):
        resp = await broker.get(path, headers=viewer(), allow_redirects=False)
        await check(resp, path.split("/")[2])


async def _broker(make_broker: Any) -> Client:
    """One broker per test: its examples share it (the factory lives as long as the test)."""
    client: Client | None = getattr(make_broker, "fuzz_client", None)
    if client is None:
        client = await make_broker()
        make_broker.fuzz_client = client
    return client
