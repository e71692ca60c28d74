"""Fuzzing the ext_authz and ext_proc messages themselves, through the real servicers
(``authz.server.AuthorizationService``, ``extproc.server.ExternalProcessor``): arbitrary header
maps, paths, queries, bodies, modes, addresses and attributes.

Two properties. What an outsider controls (method, path, query, headers, body) is always
answered with a documented status: a denial (401/403/400 with a stable code) or an admission
whose headers are valid field values; for ext_proc an immediate 401 or the JSON form, and for
origin bodies a 502 with a manifest code. What Envoy itself sets (the check mode, the attributes,
the peer address) may be anything at all and every message still gets a well-formed answer,
never an exception (a gRPC error is a 503 at the edge).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf.struct_pb2 import Struct
from google.rpc import code_pb2
from hypothesis import event, example, given
from hypothesis import strategies as st

from authz.decision import valid_video_id
from authz.entitlement import Entitlement, EntitlementCache
from authz.errors import AuthzError
from authz.server import AuthorizationService
from authz.service import Authorizer
from authz.tokens import JwksCache, TokenVerifier
from extproc.config import ExtprocConfig
from extproc.errors import ManifestError
from extproc.server import processor_for
from playback_drm import contract, urlsign
from playback_drm.events import MemorySink
from tests.fuzz import MemoryBound, fuzz_settings, json_values
from tests.support.authz import memory_sessions

NOW = 1_900_000_000
SECRET = b"fuzz-secret-" + b"x" * 32
RING = urlsign.KeyRing.from_spec("k1:" + "A" * 43)
MEMORY = MemoryBound(8 << 20)
ROUTE = re.compile(r"^/playback/([A-Za-z0-9_.-]+)/manifest$")  # envoyconf's manifest route


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(sub: str = "alice", **claims: Any) -> str:
    head = _b64(b'{"alg":"HS256"}')
    body = _b64(
        json.dumps({"iss": "i", "aud": "playback", "sub": sub, "exp": NOW + 60, **claims}).encode()
    )
    mac = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


# --- ext_authz --------------------------------------------------------------------------------


class Billing:
    """Stands in for Billing behind our EntitlementSource protocol: alice yes, others no."""

    async def fetch(self, user: str, video: str) -> Entitlement:
        granted = user == "alice" and video != "demo-uhd"
        return Entitlement(user, video, granted, "premium", None if granted else "no_plan")


def authorization_service() -> AuthorizationService:
    async def no_jwks() -> dict[str, Any]:
        return {"keys": []}

    verifier = TokenVerifier(
        JwksCache(no_jwks, frozenset({"RS256"}), min_refresh=3600.0),
        issuer="i",
        audience="playback",
        algorithms=("RS256", "HS256"),
        hs256_secret=SECRET,
        clock=lambda: NOW,
    )

    def verify_url(path: str, query: str, client_ip: str | None, leeway: int = 0) -> Any:
        return urlsign.verify(RING, path, query, now=NOW, client_ip=client_ip)

    authorizer = Authorizer(
        verifier,
        EntitlementCache(Billing(), ttl=60, deny_ttl=10),
        verify_url,
        memory_sessions(lambda: NOW),
        clock=lambda: NOW,
    )
    return AuthorizationService(authorizer, MemorySink())


AUTHZ = authorization_service()
AUTHZ_ERRORS: list[Any] = [*AuthzError.__subclasses__(), urlsign.UrlTokenError]
AUTHZ_ERRORS += [sub for parent in AUTHZ_ERRORS for sub in parent.__subclasses__()]
AUTHZ_REFUSALS = {cls.code: cls.status for cls in AUTHZ_ERRORS if cls.status < 500}
SIGNED = urlsign.sign(RING, "/media/demo/seg.ts", expires_at=NOW + 300, scope="/media/demo/")
path_pieces = st.sampled_from(
    [
        "/playback/demo/manifest",
        "/playback/demo-uhd/manifest",
        "/media/demo/seg.ts",
        "/drm/license",
        "/drm/key/demo/00112233445566778899aabbccddeeff",
        "/drm/license/org.w3.clearkey",
        "/health",
        "/",
        "%2e%2e/",
        "..",
        "%00",
        "é",
        "//",
        "\\",
    ]
) | st.text(max_size=12)
queries = st.lists(
    st.sampled_from(
        [
            f"token={token()}",
            f"token={token('bob')}",
            "token=",
            "token=a.b.c",
            f"pdt={SIGNED}",
            "pdt=v1.1.k1...x",
            "videoId=demo",
            "videoId=../x",
            "format=dash",
            "%zz",
            "&",
        ]
    )
    | st.text(max_size=20),
    max_size=4,
).map("&".join)
header_values = st.sampled_from(
    [
        f"Bearer {token()}",
        f"Bearer {token('carol')}",
        f"bearer  {token()} ",
        "Bearer",
        "Basic YWxpY2U6cHc=",
        "Bearer " + token("a\r\nx-playback-user: admin"),
        "application/json",
    ]
) | st.text(max_size=40)


@st.composite
def check_requests(draw: st.DrawFn, *, envoy_fuzzed: bool) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method = draw(st.sampled_from(["GET", "POST", "HEAD", "OPTIONS"]) | st.text(max_size=8))
    path = "".join(draw(st.lists(path_pieces, min_size=1, max_size=4)))
    query = draw(queries)
    http.path = f"{path}?{query}" if query or draw(st.booleans()) else path
    if draw(st.booleans()):
        http.query = draw(queries)
    names = st.sampled_from(["authorization", "content-type", "x-request-id", "traceparent"])
    for name, value in draw(
        st.dictionaries(names | st.text(max_size=10), header_values, max_size=4)
    ).items():
        http.headers[name] = value
    body = draw(
        st.sampled_from([b"", b'{"videoId":"demo"}', b'{"videoId":5}', b"[" * 3000])
        | st.binary(max_size=200)
    )
    if draw(st.booleans()):
        http.raw_body = body
    else:
        http.body = body.decode("utf-8", "replace")
    modes = st.sampled_from(contract.AUTHZ_MODES)
    if envoy_fuzzed:
        modes = modes | st.text(max_size=10)
        address = draw(st.sampled_from(["203.0.113.7", "::1", ""]) | st.text(max_size=20))
    else:
        address = draw(st.sampled_from(["203.0.113.7", "2001:db8::1", "127.0.0.1"]))
    request.attributes.context_extensions[contract.AUTHZ_MODE_KEY] = draw(modes)
    request.attributes.source.address.socket_address.address = address
    return request


def check(request: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
    with MEMORY("Check"):
        response: external_auth_pb2.CheckResponse = asyncio.run(AUTHZ.Check(request, None))
    return response


@fuzz_settings(0.5)
@given(request=check_requests(envoy_fuzzed=False))
@example(
    request=external_auth_pb2.CheckRequest(
        attributes={
            "request": {
                "http": {
                    "path": "/drm/license",
                    "headers": {"authorization": f"Bearer {token()}"},
                    "raw_body": b"[" * 5000 + b"]" * 5000,
                }
            },
            "context_extensions": {"mode": "jwt"},
        }
    )
)
def test_any_client_request_gets_a_documented_authz_answer(
    request: external_auth_pb2.CheckRequest,
) -> None:
    response = check(request)
    if response.HasField("ok_response"):
        event("admitted")
        assert response.status.code == code_pb2.OK
        for option in response.ok_response.headers:
            value = option.header.value
            assert value == "" or value.isprintable(), option  # a valid header field value
        return
    status = response.denied_response.status.code
    problem = json.loads(response.denied_response.body)
    event(f"denied {problem['code']}")
    assert AUTHZ_REFUSALS.get(problem["code"]) == status == problem["status"], problem


@fuzz_settings(0.3)
@given(request=check_requests(envoy_fuzzed=True))
def test_whatever_envoy_sends_authz_answers(request: external_auth_pb2.CheckRequest) -> None:
    response = check(request)
    assert response.HasField("ok_response") or response.HasField("denied_response")


# --- ext_proc ---------------------------------------------------------------------------------

PROCESSOR = processor_for(
    ExtprocConfig.from_env(
        {
            "URL_SIGNING_KEYS": "k1:" + "A" * 43,
            "ORIGIN_URL": "http://origin.test/",
            "PUBLIC_BASE_URLS": "https://play.example.com",
            "MANIFEST_MAX_BYTES": str(256 * 1024),
        }
    ),
    MemorySink(),
)
_ORIGIN_ERRORS: list[type[ManifestError]] = [ManifestError, *ManifestError.__subclasses__()]
ORIGIN_CODES = {cls.code for cls in _ORIGIN_ERRORS}


def _header_map(headers: dict[str, str], raw: bool) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=k, raw_value=v.encode("utf-8", "surrogatepass"))
            if raw
            else base_pb2.HeaderValue(key=k, value=v)
            for k, v in headers.items()
        ]
    )


CLIENT_HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "accept",
            "host",
            "x-forwarded-host",
            "x-forwarded-proto",
            "forwarded",
            "x-forwarded-for",
            "x-envoy-external-address",
            "content-type",
        ]
    )
    | st.text(max_size=10),
    st.sampled_from(
        ["application/json", "evil.example", "javascript", "for=1.2.3.4;host=evil", "::1"]
    )
    | st.text(max_size=30),
    max_size=5,
)


@st.composite
def json_form_requests(draw: st.DrawFn) -> ep.ProcessingRequest:
    """What Envoy sends on the JSON-form route after authz admitted the viewer: the path
    matches the route (Envoy), the identity headers are authz's; the rest is the client's."""
    video = draw(
        st.sampled_from(["demo", "demo-uhd"])
        | st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True)
    )
    path = f"/playback/{video}/manifest"
    query = draw(queries)
    headers = {
        **draw(CLIENT_HEADERS),
        ":path": f"{path}?{query}" if query else path,
        ":authority": draw(
            st.sampled_from(["play.example.com", "evil.example"]) | st.text(max_size=20)
        ),
        "accept": draw(st.sampled_from(["application/json", "text/html, application/json"])),
    }
    if valid_video_id(video):
        headers["x-playback-video"] = video
        headers["x-playback-user"] = draw(st.sampled_from(["alice", "bob"]))
        headers["x-playback-session"] = "S" * 22  # authz starts a session on every entry
    return ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(headers=_header_map(headers, draw(st.booleans())))
    )


@st.composite
def body_requests(draw: st.DrawFn, *, envoy_fuzzed: bool) -> ep.ProcessingRequest:
    facts = Struct()
    route = draw(
        st.sampled_from(
            [
                ("/playback/demo/manifest", "/demo/master.m3u8"),
                ("/media/demo/hls/720p/playlist.m3u8", "/demo/hls/720p/playlist.m3u8"),
                ("/playback/demo/manifest", "/demo/manifest.mpd"),
            ]
        )
    )
    attributes: dict[str, Any] = {
        contract.ORIGINAL_PATH_ATTRIBUTE: route[0],
        contract.PATH_ATTRIBUTE: route[1],
        contract.STATUS_ATTRIBUTE: draw(st.sampled_from([200, 200, 404, "200"])),
        contract.USER_ATTRIBUTE: "alice",
        contract.VIDEO_ATTRIBUTE: "demo",
        # authz admits every manifest request with its playback session
        contract.SESSION_ATTRIBUTE: "S" * 22,
        contract.SOURCE_ATTRIBUTE: "203.0.113.7:5000",
    }
    if envoy_fuzzed:
        for name in draw(st.lists(st.sampled_from(contract.EXTPROC_ATTRIBUTES), max_size=4)):
            attributes[name] = draw(json_values)
        attributes.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=2)))
    facts.update(attributes)
    body = draw(
        st.sampled_from(
            [
                b"#EXTM3U\n#EXTINF:4,\nseg.ts\n",
                b"<MPD><BaseURL>dash/</BaseURL></MPD>",
                b'#EXTM3U\n#EXT-X-KEY:URI="a"b"\n',
                b"<!DOCTYPE x><MPD/>",
            ]
        )
        | st.binary(max_size=300)
    )
    request = ep.ProcessingRequest(response_body=ep.HttpBody(body=body, end_of_stream=True))
    if envoy_fuzzed and draw(st.integers(0, 4)) == 0:
        return request  # no attributes at all
    request.attributes[contract.EXTPROC_ATTRIBUTE_NAMESPACE].CopyFrom(facts)
    return request


other_phases = st.sampled_from(
    [
        ep.ProcessingRequest(response_headers=ep.HttpHeaders()),
        ep.ProcessingRequest(request_body=ep.HttpBody(body=b"x")),
        ep.ProcessingRequest(request_trailers=ep.HttpTrailers()),
        ep.ProcessingRequest(response_trailers=ep.HttpTrailers()),
        ep.ProcessingRequest(),
    ]
)


def process(*requests: ep.ProcessingRequest) -> list[ep.ProcessingResponse]:
    async def stream() -> Any:
        for request in requests:
            yield request

    async def run() -> list[ep.ProcessingResponse]:
        return [reply async for reply in PROCESSOR.Process(stream(), None)]

    with MEMORY("Process"):
        return asyncio.run(run())


def assert_documented(reply: ep.ProcessingResponse) -> None:
    if not reply.HasField("immediate_response"):
        event(str(reply.WhichOneof("response")))
        return
    immediate = reply.immediate_response
    status = immediate.status.code
    event(f"immediate {status}")
    if status == 200:
        url = json.loads(immediate.body)["url"]
        assert url.startswith("https://play.example.com/media/"), url  # never the client's host
        return
    code = json.loads(immediate.body)["code"]
    assert (status, code) == (401, "token_missing") or (status == 502 and code in ORIGIN_CODES), (
        status,
        code,
    )


@fuzz_settings(0.5)
@given(
    requests=st.lists(
        json_form_requests() | body_requests(envoy_fuzzed=False) | other_phases,
        min_size=1,
        max_size=3,
    )
)
def test_any_client_request_or_origin_body_gets_a_documented_extproc_answer(
    requests: list[ep.ProcessingRequest],
) -> None:
    replies = process(*requests)
    assert 1 <= len(replies) <= len(requests)
    for reply in replies:
        assert reply.WhichOneof("response") is not None or reply == ep.ProcessingResponse()
        assert_documented(reply)


@fuzz_settings(0.3)
@given(
    requests=st.lists(
        json_form_requests() | body_requests(envoy_fuzzed=True) | other_phases,
        min_size=1,
        max_size=3,
    )
)
def test_whatever_envoy_sends_extproc_answers(requests: list[ep.ProcessingRequest]) -> None:
    replies = process(*requests)
    assert 1 <= len(replies) <= len(requests)
