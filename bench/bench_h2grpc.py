"""The lean gRPC transport's own cost per call, in process and without sockets: HTTP/2 frames as
Envoy sends them are fed to a connection whose transport only collects what it writes.

    python bench/bench_h2grpc.py            # µs of CPU per call: unary ext_authz (do-nothing
                                            # servicer), an ext_proc media playlist (real
                                            # servicer) and an entry manifest (/playback/...:
                                            # viewer facts, PlaybackStarted to the event log)
    python bench/bench_h2grpc.py --profile  # the same under cProfile, top functions

What the numbers leave out is the kernel (socket reads and writes, epoll): bench/edge.py has
the whole path beside Envoy alone.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from google.protobuf.struct_pb2 import Struct
from hpack import Encoder
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple

from bench.bench_extproc_inprocess import BODY, ENV, message
from extproc.config import ExtprocConfig
from extproc.server import processor_for
from playback_drm import h2grpc
from playback_drm.events.jsonlines import JsonLinesSink
from playback_drm.h2grpc import frames as h2
from playback_drm.h2grpc.connection import Connection

CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
PROCESS_PATH = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


class Sink:
    """A transport that keeps what the server writes; wakes the driver when trailers went out."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.writes = 0
        self.waiter: asyncio.Future[None] | None = None

    def write(self, data: bytes) -> None:
        self.out += data
        self.writes += 1
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


class Client:
    """Writes frames the way Envoy's gRPC client does (HPACK state kept, :path never indexed)."""

    def __init__(self) -> None:
        self.encoder = Encoder()
        self.stream_id = 1
        self.blocks: dict[str, tuple[int, bytes]] = {}

    def preface(self) -> bytes:
        settings = h2.SETTING.pack(h2.S_INITIAL_WINDOW_SIZE, h2.MAX_WINDOW)
        return (
            h2.PREFACE
            + h2.frame(h2.SETTINGS, 0, 0, settings)
            + h2.frame(h2.WINDOW_UPDATE, 0, 0, h2.U32.pack((1 << 30) - 65535))
        )

    def call(self, path: str, message: bytes, *, end_stream: bool) -> bytes:
        sid = self.stream_id
        self.stream_id += 2
        block = self._block(path)
        data = b"\x00" + len(message).to_bytes(4, "big") + message
        return h2.frame(h2.HEADERS, h2.END_HEADERS, sid, block) + h2.frame(
            h2.DATA, h2.END_STREAM if end_stream else 0, sid, data
        )

    def _block(self, path: str) -> bytes:
        """After the first call the block repeats byte for byte (as Envoy's do): encoded once
        more, then reused, so the client's HPACK work stays out of the measurement."""
        count, block = self.blocks.get(path, (0, b""))
        if count >= 2:
            return block
        block = self.encoder.encode(
            [
                HeaderTuple(":method", "POST"),
                HeaderTuple(":scheme", "http"),
                NeverIndexedHeaderTuple(":path", path),
                HeaderTuple(":authority", "sidecar"),
                HeaderTuple("content-type", "application/grpc"),
                HeaderTuple("te", "trailers"),
                HeaderTuple("grpc-timeout", "1000m"),
                HeaderTuple("x-envoy-internal", "true"),
            ]
        )
        self.blocks[path] = (count + 1, block)
        return block

    def reset(self) -> bytes:
        return h2.frame(h2.RST_STREAM, 0, self.stream_id - 2, h2.U32.pack(0x2))

    def window(self, size: int) -> bytes:
        return h2.frame(h2.WINDOW_UPDATE, 0, 0, h2.U32.pack(size))


class Echo(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    OK = external_auth_pb2.CheckResponse()

    async def Check(self, request: Any, context: Any) -> Any:
        return self.OK


def entry_messages(n: int) -> list[bytes]:
    """What Envoy sends for ``GET /playback/bench/manifest`` by a viewer: the origin's body and
    the request's facts (a request id of its own each)."""
    out = []
    for i in range(n):
        facts = Struct()
        facts.update(
            {
                "request.path": "/bench/master.m3u8",
                "request.headers['x-envoy-original-path']": "/playback/bench/manifest",
                "request.headers['x-playback-user']": "alice",
                "request.headers['x-playback-video']": "bench",
                "request.headers['x-playback-session']": "3f2a9c1e-session",
                "request.headers['x-request-id']": f"8d7c6b5a-{i:08d}",
                "source.address": "127.0.0.1:41234",
                "response.code": 200,
            }
        )
        request = ep.ProcessingRequest(response_body=ep.HttpBody(body=BODY, end_of_stream=True))
        request.attributes["envoy.filters.http.ext_proc"].CopyFrom(facts)
        out.append(request.SerializeToString())
    return out


async def drive(server: h2grpc.LeanGrpcServer, kind: str, n: int) -> float:
    conn = Connection(server)
    sink = Sink()
    conn.connection_made(sink)  # type: ignore[arg-type]
    client = Client()
    conn.data_received(client.preface())
    loop = asyncio.get_running_loop()
    if kind == "authz":
        requests = [external_auth_pb2.CheckRequest().SerializeToString()] * n
    elif kind == "entry":
        requests = entry_messages(n)
    else:
        requests = [message()] * n
    started = time.process_time()
    for request in requests:
        sink.waiter = loop.create_future()
        before = len(sink.out)
        if kind == "authz":
            conn.data_received(client.call(CHECK_PATH, request, end_stream=True))
        else:
            conn.data_received(client.call(PROCESS_PATH, request, end_stream=False))
        await sink.waiter
        if kind != "authz":  # Envoy resets the stream once it has the body back
            conn.data_received(client.reset())
            await asyncio.sleep(0)
        conn.data_received(client.window(len(sink.out) - before))
        if len(sink.out) > 1 << 20:
            sink.out.clear()
    return (time.process_time() - started) / n * 1e6


async def main(profile: bool) -> None:
    server = h2grpc.LeanGrpcServer(max_message_bytes=16 << 20)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Echo(), server)
    cfg = ExtprocConfig.from_env(ENV)
    tmp = tempfile.TemporaryDirectory()
    # the local stack's event sink: PlaybackStarted encoded and appended by a worker thread
    events = JsonLinesSink(Path(tmp.name) / "events.jsonl")
    await events.start()
    proc = processor_for(cfg, events)
    ep_grpc.add_ExternalProcessorServicer_to_server(proc, server)
    for kind in ("authz", "extproc", "entry"):
        await drive(server, kind, 500)  # warm up
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            await drive(server, kind, 3000)
            prof.disable()
            print(f"== {kind}")
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)
        else:
            us = min([await drive(server, kind, 3000) for _ in range(3)])
            print(f"{kind}: {us:.1f} µs CPU per call (transport + servicer, no sockets)")
    await events.close()
    tmp.cleanup()


if __name__ == "__main__":
    uvloop.run(main("--profile" in sys.argv))
