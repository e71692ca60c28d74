"""Issue 4 through the real stack: licenses via the gateway, mTLS sidecar, authz and the broker."""

from __future__ import annotations

import base64
import json

import pytest

from devstack.stack import Stack
from tests.support.stack import http

pytestmark = pytest.mark.integration


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _keys(stack: Stack) -> dict[str, list[dict[str, str]]]:
    doc = json.loads((stack.media_dir / "keys.json").read_text())
    return {video: entry["keys"] for video, entry in doc["videos"].items()}


def _clearkey_request(kids: list[str]) -> bytes:
    return json.dumps(
        {"kids": [_b64url(bytes.fromhex(k)) for k in kids], "type": "temporary"}
    ).encode()


def test_clearkey_license_for_alice_carries_the_content_key(stack: Stack) -> None:
    key = next(k for k in _keys(stack)["demo"] if k["track"] != "AUDIO")
    body = {
        "videoId": "demo",
        "licenseRequest": base64.b64encode(_clearkey_request([key["kid"]])).decode(),
    }
    reply = http(
        f"{stack.gateway}/drm/license",
        method="POST",
        body=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {stack.token('alice')}",
            "Content-Type": "application/json",
        },
    )
    assert reply.status == 200, reply.body
    doc = reply.json()
    assert doc["licenseId"]
    assert doc["expiresAt"]
    jwks = json.loads(base64.b64decode(doc["license"]))
    assert jwks["keys"][0]["kid"] == _b64url(bytes.fromhex(key["kid"]))
    assert jwks["keys"][0]["k"] == _b64url(bytes.fromhex(key["key"]))


def test_player_native_clearkey_endpoint(stack: Stack) -> None:
    key = _keys(stack)["demo"][0]
    reply = http(
        f"{stack.gateway}/drm/license/org.w3.clearkey?videoId=demo",
        method="POST",
        body=_clearkey_request([key["kid"]]),
        headers={
            "Authorization": f"Bearer {stack.token('alice')}",
            "Content-Type": "application/json",
        },
    )
    assert reply.status == 200
    assert reply.json()["keys"][0]["k"] == _b64url(bytes.fromhex(key["key"]))


def test_bob_gets_no_uhd_keys_and_unknown_kids_are_404(stack: Stack) -> None:
    uhd = _keys(stack)["demo-uhd"][0]
    bob = http(
        f"{stack.gateway}/drm/license/org.w3.clearkey?videoId=demo-uhd",
        method="POST",
        body=_clearkey_request([uhd["kid"]]),
        headers={"Authorization": f"Bearer {stack.token('bob')}"},
    )
    assert bob.status == 403
    unknown = http(
        f"{stack.gateway}/drm/license/org.w3.clearkey?videoId=demo",
        method="POST",
        body=_clearkey_request(["00" * 16]),
        headers={"Authorization": f"Bearer {stack.token('alice')}"},
    )
    assert unknown.status == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert unknown.json()["code"] == "unknown_key_id"


def test_widevine_through_the_sidecar_reaches_the_provider(stack: Stack) -> None:
    reply = http(
        f"{stack.gateway}/drm/license/com.widevine.alpha?videoId=demo",
        method="POST",
        body=b"\x08\x04",  # the service-certificate request
        headers={"Authorization": f"Bearer {stack.token('alice')}"},
    )
    assert reply.status == 200, reply.body
    assert reply.body
