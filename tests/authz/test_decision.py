"""Pure decision logic: token extraction, video resolution, denial mapping (table-driven)."""

from __future__ import annotations

import json

import pytest

from authz import decision
from authz.decision import Allow, CheckInput, Deny
from authz.entitlement import Entitlement
from authz.errors import (
    BillingUnavailable,
    TokenExpired,
    TokenMalformed,
    TokenMissing,
    VideoNotSpecified,
)
from authz.tokens import Identity


def inp(
    path: str = "/playback/demo/manifest",
    query: str = "",
    auth: str | None = None,
    body: bytes = b"",
    mode: str = "jwt",
) -> CheckInput:
    return CheckInput("GET", path, query, auth, "203.0.113.9", mode, None, body)


@pytest.mark.parametrize(
    ("query", "auth", "expected"),
    [
        ("", None, None),
        ("token=abc", None, "abc"),
        ("format=dash&token=abc", None, "abc"),
        ("token=", None, None),
        ("", "Bearer xyz", "xyz"),
        ("", "bearer   xyz  ", "xyz"),
        ("token=abc", "Bearer xyz", "xyz"),
        ("mytoken=abc", None, None),
    ],
)
def test_extract_token(query: str, auth: str | None, expected: str | None) -> None:
    assert decision.extract_token(inp(query=query, auth=auth)) == expected


@pytest.mark.parametrize("auth", ["Basic dXNlcjpwYXNz", "Bearer", "Token abc"])
def test_non_bearer_authorization_is_malformed(auth: str) -> None:
    with pytest.raises(TokenMalformed):
        decision.extract_token(inp(auth=auth))


def test_duplicate_token_parameters_are_malformed() -> None:
    with pytest.raises(TokenMalformed):
        decision.extract_token(inp(query="token=a&token=b"))


@pytest.mark.parametrize(
    ("path", "query", "body", "video"),
    [
        ("/playback/demo/manifest", "", b"", "demo"),
        ("/playback/demo-uhd/manifest", "format=dash", b"", "demo-uhd"),
        ("/media/demo/hls/720p/seg1.ts", "", b"", "demo"),
        ("/drm/key/demo/00112233", "", b"", "demo"),
        ("/drm/license/org.w3.clearkey", "videoId=demo", b"", "demo"),
        (
            "/drm/license",
            "",
            json.dumps({"videoId": "demo", "licenseRequest": "AA=="}).encode(),
            "demo",
        ),
    ],
)
def test_video_for(path: str, query: str, body: bytes, video: str) -> None:
    assert decision.video_for(inp(path=path, query=query, body=body)) == video


@pytest.mark.parametrize(
    ("path", "query", "body"),
    [
        ("/drm/license", "", b""),
        ("/drm/license", "", b"{not json"),
        ("/drm/license", "", b'{"videoId": 5}'),
        ("/drm/license", "videoId=a&videoId=b", b""),
        ("/playback/..%2Fetc/manifest", "", b""),
        ("/playback/%00/manifest", "", b""),
        ("/drm/license", "videoId=" + "x" * 200, b""),
        # nested deeper than json follows: RecursionError was an authz_internal_error (503)
        ("/drm/license", "", b"[" * 5_000 + b"]" * 5_000),
        ("/drm/license", "", b'{"videoId": NaN}'),
    ],
)
def test_video_missing_or_invalid(path: str, query: str, body: bytes) -> None:
    with pytest.raises(VideoNotSpecified):
        decision.video_for(inp(path=path, query=query, body=body))


def test_entitled_allow_carries_identity_headers_and_removes_token() -> None:
    ident = Identity("alice", 2_000_000_000, "sess1")
    ent = Entitlement("alice", "demo", True, "premium", None, {"tier": "HD", "maxStreams": 4})
    result = decision.entitled(ident, ent, remove_token=True, session="playback-1")
    assert isinstance(result, Allow)
    headers = dict(result.headers)
    assert headers["x-playback-user"] == "alice"
    assert headers["x-playback-plan"] == "premium"
    assert headers["x-playback-video"] == "demo"
    # the playback session, never the JWT's own sid (a JWT cannot name a playback session)
    assert headers["x-playback-session"] == "playback-1"
    without = decision.entitled(ident, ent, remove_token=True)
    assert isinstance(without, Allow)
    assert "x-playback-session" not in dict(without.headers)
    assert json.loads(headers["x-playback-entitlement"]) == {
        "plan": "premium",
        "tier": "HD",
        "maxStreams": 4,
    }
    assert result.remove_query == ("token",)


def test_not_entitled_is_403_with_reason() -> None:
    ident = Identity("bob", 2_000_000_000, None)
    ent = Entitlement("bob", "demo-uhd", False, "basic", "plan_too_low")
    result = decision.entitled(ident, ent, remove_token=False)
    assert isinstance(result, Deny)
    assert (result.status, result.code) == (403, "not_entitled")
    assert "plan_too_low" in result.detail
    assert result.www_authenticate is None
    assert (result.user, result.video) == ("bob", "demo-uhd")  # named in the PlaybackError


@pytest.mark.parametrize(
    ("error", "status", "code", "www"),
    [
        (TokenMissing("x"), 401, "token_missing", 'Bearer realm="playback"'),
        (TokenExpired("token has expired"), 401, "token_expired", 'error="invalid_token"'),
        (BillingUnavailable("down"), 503, "billing_unavailable", None),
        (RuntimeError("boom"), 503, "authz_internal_error", None),
    ],
)
def test_deny_mapping(error: Exception, status: int, code: str, www: str | None) -> None:
    result = decision.deny(error)
    assert (result.status, result.code) == (status, code)
    if www is None:
        assert result.www_authenticate is None
    else:
        assert result.www_authenticate is not None
        assert www in result.www_authenticate
