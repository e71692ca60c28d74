"""extproc's own cost per manifest, in process: the ext_proc message bytes in, the response bytes
out, for a 150-segment HLS media playlist (signed-manifest cache warm and cold). What else a
manifest costs (bench/edge.py manifest) is the gRPC stream.

    python bench/bench_extproc_inprocess.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf.struct_pb2 import Struct

from extproc.config import ExtprocConfig
from extproc.server import ExternalProcessor, processor_for
from playback_drm.events import NullSink

ENV = {"URL_SIGNING_KEYS": "k1:" + "A" * 43, "ORIGIN_URL": "http://origin.test/"}
BODY = (
    b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-PLAYLIST-TYPE:VOD\n"
    + b"".join(b"#EXTINF:4.000,\nsegments/720p/seg_%05d.ts\n" % i for i in range(150))
    + b"#EXT-X-ENDLIST\n"
)


def message() -> bytes:
    facts = Struct()
    facts.update(
        {
            "request.path": "/bench/hls/720p/playlist.m3u8",
            "request.headers['x-envoy-original-path']": "/media/bench/hls/720p/playlist.m3u8",
            "request.headers['x-playback-video']": "bench",
            "request.headers['x-playback-session']": "S" * 22,  # URL_TOKEN_BINDING=session
            "response.code": 200,
        }
    )
    request = ep.ProcessingRequest(response_body=ep.HttpBody(body=BODY, end_of_stream=True))
    request.attributes["envoy.filters.http.ext_proc"].CopyFrom(facts)
    return bytes(request.SerializeToString())


async def one(proc: ExternalProcessor, raw: bytes) -> bytes:
    async def stream() -> AsyncIterator[ep.ProcessingRequest]:
        yield ep.ProcessingRequest.FromString(raw)

    out = b""
    async for reply in proc.Process(stream(), None):
        out = reply.SerializeToString()
    return out


async def main() -> None:
    raw = message()
    for label, entries in (("cache warm", "512"), ("cache off", "0")):
        cfg = ExtprocConfig.from_env({**ENV, "MANIFEST_CACHE_ENTRIES": entries})
        proc = processor_for(cfg, NullSink())
        assert b"pdt=" in await one(proc, raw)
        n = 2000
        started = time.perf_counter()
        for _ in range(n):
            await one(proc, raw)
        print(
            f"{label}: {(time.perf_counter() - started) / n * 1e6:.1f} us per 150-segment manifest"
        )


if __name__ == "__main__":
    asyncio.run(main())
