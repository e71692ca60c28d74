"""A do-nothing ext_authz server (answers OK) on either gRPC transport: the transport floor that
bench/edge.py reports beside the real authz, so our own cost per check can be read off.

    python bench/echo_authz.py PORT [lean|grpcio]
"""

from __future__ import annotations

import sys
from typing import Any

import uvloop
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import status_pb2

from playback_drm.h2grpc import make_server

OK = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=0), ok_response=external_auth_pb2.OkHttpResponse()
)


class Echo(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: Any) -> Any:
        return OK


async def main(port: int, transport: str) -> None:
    server = make_server(transport, max_receive_bytes=1 << 20, max_send_bytes=1 << 20)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "grpcio"))
