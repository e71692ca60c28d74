"""What the ext_authz adapter records: a denial is a PlaybackError about the video."""

from __future__ import annotations

from envoy.service.auth.v3 import external_auth_pb2

from authz.decision import CheckInput, Decision, Deny
from authz.server import AuthorizationService, to_input
from playback_drm.events import AUTHZ_SOURCE, MemorySink


class Denying:
    async def check(self, inp: CheckInput) -> Decision:
        return Deny(403, "not_entitled", "Not entitled", "the plan does not include this video")


async def test_a_denial_is_a_playback_error_about_the_video() -> None:
    """Built like every PlaybackError (events.playback_error): the video id is the subject,
    absent facts (no trace here) are left out rather than sent as nulls."""
    sink = MemorySink()
    service = AuthorizationService(Denying(), sink)  # type: ignore[arg-type]
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.method = "GET"
    request.attributes.request.http.path = "/playback/demo-uhd/manifest"
    response = await service.Check(request, None)
    assert response.denied_response.status.code == 403
    [event] = sink.events
    assert (event.type, event.source, event.subject) == ("PlaybackError", AUTHZ_SOURCE, "demo-uhd")
    assert event.data == {
        "code": "not_entitled",
        "status": 403,
        "videoId": "demo-uhd",
        "path": "/playback/demo-uhd/manifest",
    }


def test_the_viewers_address_is_the_one_envoy_derived_not_the_gateways() -> None:
    """Behind a gateway the connection's peer is the gateway: IP-bound URLs are verified against
    x-envoy-external-address (Envoy's trusted derivation), which Envoy sets and clients cannot."""
    request = external_auth_pb2.CheckRequest()
    request.attributes.source.address.socket_address.address = "10.0.0.7"  # the gateway pod
    request.attributes.request.http.path = "/media/demo/seg.ts"
    assert to_input(request).client_ip == "10.0.0.7"
    request.attributes.request.http.headers["x-envoy-external-address"] = "203.0.113.9"
    request.attributes.request.http.headers["x-forwarded-for"] = "198.51.100.1, 203.0.113.9"
    assert to_input(request).client_ip == "203.0.113.9"
