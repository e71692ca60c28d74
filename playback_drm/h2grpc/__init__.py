"""A lean gRPC server over HTTP/2 on the asyncio event loop, for Envoy's side-channel calls.

Why: grpcio's server (``grpc.aio``) hands every call across three threads (the C core's event
engine, the completion-queue poller, the event loop), which costs about 350 µs of CPU per unary
call on this kind of machine even when the handler does nothing. ext_authz is asked once per
viewer request, so that floor alone was over the 250 µs budget. This server parses HTTP/2 frames
in the event loop's thread: one wake-up, one read and one write per call.

It is a drop-in for the part of ``grpc.aio.Server`` the generated ``add_*Servicer_to_server``
functions use, so the servicers, their message types (xds-protos, upb) and their tests are the same
under either transport; ``grpc.aio`` stays selectable (``GRPC_TRANSPORT=grpcio``).

Scope, on purpose: cleartext HTTP/2 with prior knowledge (Envoy's ``http2_protocol_options``
clusters; pod-local or loopback), identity encoding only, the four call shapes. Not done: TLS,
compression, server push, priorities (ignored, as RFC 9113 allows), deadlines (Envoy cancels a call
it gave up on with RST_STREAM, which cancels the handler). Flow control is complete both ways.
Anything outside the protocol gets GOAWAY and a closed connection, never a crash.

Modules, bottom up:
    frames      HTTP/2 frame constants and encoding, HPACK blocks (pure).
    calls       one call: its stream's buffers and window, CallContext, the request iterator.
    connection  one connection: frame parsing, settings, flow control, dispatch to handlers.
    server      LeanGrpcServer (registration, ports, lifecycle) and the transport choice.
"""

from playback_drm.h2grpc.calls import AbortError, CallContext
from playback_drm.h2grpc.server import TRANSPORTS, LeanGrpcServer, check_transport, make_server

__all__ = [
    "TRANSPORTS",
    "AbortError",
    "CallContext",
    "LeanGrpcServer",
    "check_transport",
    "make_server",
]
