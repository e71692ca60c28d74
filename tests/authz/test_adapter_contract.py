"""The ext_authz adapter's side of the contract every deployment mode relies on: the check mode
comes from the route or, when the proxy cannot name one (Istio's CUSTOM action), from the path;
and an admitted request leaves with exactly the identity headers authz wrote."""

from __future__ import annotations

import pytest
from envoy.service.auth.v3 import external_auth_pb2

from authz.decision import Allow
from authz.server import to_input, to_response
from playback_drm import contract, identity


def _check(path: str, mode: str | None = None) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.method = "GET"
    request.attributes.request.http.path = path
    if mode is not None:
        request.attributes.context_extensions[contract.AUTHZ_MODE_KEY] = mode
    return request


@pytest.mark.parametrize(
    ("path", "mode"),
    [
        ("/playback/demo/manifest?format=dash", contract.MODE_JWT),
        ("/media/demo/hls/720p/seg1.ts?pdt=v1.x", contract.MODE_SIGNED_URL),
        ("/drm/key/demo/0123?pdt=v1.x", contract.MODE_SIGNED_URL),
        ("/drm/license", contract.MODE_JWT),
        ("/drm/license/widevine?videoId=demo", contract.MODE_JWT),
        # nobody mapped it: the strictest check, never an open door
        ("/drm/unknown", contract.MODE_JWT),
        ("/mediafoo/demo/x.ts", contract.MODE_JWT),
    ],
)
def test_without_a_context_extension_the_path_decides(path: str, mode: str) -> None:
    assert to_input(_check(path)).mode == mode
    assert contract.authz_mode_for_path(path.partition("?")[0]) == mode


def test_a_route_that_names_its_mode_wins_over_the_path() -> None:
    inp = to_input(_check("/media/demo/x.ts", contract.MODE_JWT_ONLY))
    assert inp.mode == contract.MODE_JWT_ONLY


def _ok(decision: Allow) -> external_auth_pb2.OkHttpResponse:
    response = to_response(decision)
    assert response.HasField("ok_response")
    return response.ok_response


def test_every_identity_header_authz_does_not_write_is_removed() -> None:
    """A signed media URL admits a video and a session, nothing else: a forged user, plan or
    entitlement must not reach the origin, whatever the proxy in front stripped."""
    ok = _ok(Allow(((identity.VIDEO_HEADER, "demo"), (identity.SESSION_HEADER, "s1")), ("pdt",)))
    assert [h.header.key for h in ok.headers] == [identity.VIDEO_HEADER, identity.SESSION_HEADER]
    assert set(ok.headers_to_remove) == {
        identity.USER_HEADER,
        identity.PLAN_HEADER,
        identity.ENTITLEMENT_HEADER,
        "authorization",  # the viewer's credential stays at the edge
    }
    assert list(ok.query_parameters_to_remove) == ["pdt"]


def test_headers_authz_writes_are_overwritten_not_removed() -> None:
    """(The viewer's Authorization header is removed in every case: it stays at the edge.)"""
    written = tuple((h, "x") for h in identity.IDENTITY_HEADERS)
    ok = _ok(Allow(written))
    assert list(ok.headers_to_remove) == ["authorization"]
    assert {h.header.key for h in ok.headers} == set(identity.IDENTITY_HEADERS)
    assert all(h.append_action == h.OVERWRITE_IF_EXISTS_OR_ADD for h in ok.headers)
