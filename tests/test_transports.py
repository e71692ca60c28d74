"""authz and extproc serve their real servicers on either gRPC transport (GRPC_TRANSPORT): the
lean one (the default) and grpcio's, which stays selectable and must not rot."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from google.protobuf.struct_pb2 import Struct

from authz.config import AuthzConfig
from authz.server import running_authz
from extproc.config import ExtprocConfig
from extproc.server import running_extproc
from playback_drm.h2grpc import LeanGrpcServer, check_transport
from playback_drm.settings import ConfigError
from tests.support.procs import free_port

KEYS = "k1:" + "A" * 43
TRANSPORTS = ("lean", "grpcio")


def test_transport_choice_is_checked() -> None:
    assert check_transport(" GRPCIO ") == "grpcio"
    with pytest.raises(ConfigError, match="GRPC_TRANSPORT"):
        check_transport("h2c")
    assert AuthzConfig.from_env(_authz_env()).grpc_transport == "lean"  # the default


def _authz_env(**extra: str) -> dict[str, str]:
    dead = f"http://127.0.0.1:{free_port()}"
    return {
        "AUTHZ_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "AUTHZ_HTTP_ADDR": f"127.0.0.1:{free_port()}",
        "JWKS_URL": f"{dead}/jwks.json",
        "JWT_ISSUER": "https://auth.test",
        "BILLING_URL": dead,
        "URL_SIGNING_KEYS": KEYS,
        **extra,
    }


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_authz_answers_on_either_transport(transport: str) -> None:
    config = AuthzConfig.from_env(_authz_env(GRPC_TRANSPORT=transport))
    async with running_authz(config) as (server, _):
        assert isinstance(server, LeanGrpcServer) is (transport == "lean")
        request = auth_pb2.CheckRequest()
        http = request.attributes.request.http
        http.method, http.path = "GET", "/playback/demo/manifest"
        target = f"127.0.0.1:{config.grpc_port}"
        async with grpc.aio.insecure_channel(target) as channel:
            reply = await auth_grpc.AuthorizationStub(channel).Check(request, timeout=5)
    assert reply.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert reply.denied_response.status.code == 401
    assert '"code":"token_missing"' in reply.denied_response.body.replace(" ", "")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_extproc_signs_on_either_transport(transport: str) -> None:
    config = ExtprocConfig.from_env(
        {
            "EXTPROC_GRPC_ADDR": f"127.0.0.1:{free_port()}",
            "EXTPROC_HTTP_ADDR": f"127.0.0.1:{free_port()}",
            "URL_SIGNING_KEYS": KEYS,
            "ORIGIN_URL": "http://origin.test/",
            "GRPC_TRANSPORT": transport,
        }
    )
    facts = Struct()
    facts.update(
        {
            "request.path": "/demo/hls/720p/playlist.m3u8",
            "request.headers['x-envoy-original-path']": "/media/demo/hls/720p/playlist.m3u8",
            "request.headers['x-playback-session']": "S" * 22,  # URL_TOKEN_BINDING=session
            "response.code": 200,
        }
    )
    body = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nseg1.ts\n#EXT-X-ENDLIST\n"
    message = ep.ProcessingRequest(response_body=ep.HttpBody(body=body, end_of_stream=True))
    message.attributes["envoy.filters.http.ext_proc"].CopyFrom(facts)
    async with running_extproc(config) as server:
        assert isinstance(server, LeanGrpcServer) is (transport == "lean")
        target = f"127.0.0.1:{config.grpc_port}"
        async with grpc.aio.insecure_channel(target) as channel:
            call = ep_grpc.ExternalProcessorStub(channel).Process(timeout=5)
            await call.write(message)
            reply = await call.read()
            await call.done_writing()
            assert await call.code() is grpc.StatusCode.OK
    signed = reply.response_body.response.body_mutation.body
    assert b"seg1.ts?pdt=" in signed
