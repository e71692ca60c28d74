"""What a playback session start costs, in process: extproc signing a session's manifests, and
authz starting and checking a session (memory store; Redis adds its round trips).

With ``URL_TOKEN_BINDING=session`` (the default) every URL names the session, so the signed-manifest
cache keys on it: each session start signs its manifests afresh, where before sessions in one
expiry window shared one signed copy. A session's own repeats (live playlist reloads, a second
player of the page) still hit. Printed: µs per session start (HLS: the multivariant playlist and
the first variant a player loads; every variant for an ABR ladder walked at once; DASH: the MPD),
for sessions sharing the cache (no binding, no session: what a start cost before) and for sessions
of their own.

    python bench/bench_sessions.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from authz.registry import SessionRegistry
from authz.sessions import Kind, Lifetimes, StreamLimits
from authz.sessionstore import MemorySessionStore
from extproc.config import ExtprocConfig
from extproc.policy import SigningPolicy
from extproc.signer import ManifestSigner, context_from_request, mapper_factory
from playback_drm.identity import SESSION_HEADER, USER_HEADER, VIDEO_HEADER

ENV = {"URL_SIGNING_KEYS": "k1:" + "A" * 43, "ORIGIN_URL": "http://origin.test/"}
RUNGS = ("1080p", "720p", "480p", "360p", "240p")


def master() -> bytes:
    lines = [b"#EXTM3U", b"#EXT-X-INDEPENDENT-SEGMENTS"]
    for rung in RUNGS:
        lines.append(b'#EXT-X-STREAM-INF:BANDWIDTH=2000000,CODECS="avc1.4d401f,mp4a.40.2"')
        lines.append(b"hls/%s/playlist.m3u8" % rung.encode())
    return b"\n".join(lines) + b"\n"


def media(segments: int) -> bytes:
    return (
        b"#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXT-X-PLAYLIST-TYPE:VOD\n"
        b'#EXT-X-KEY:METHOD=AES-128,URI="/drm/key/bench/00112233445566778899aabbccddeeff"\n'
        + b"".join(b"#EXTINF:6.000,\nseg_%05d.ts\n" % i for i in range(segments))
        + b"#EXT-X-ENDLIST\n"
    )


MPD = b"""<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT2H">
<Period><AdaptationSet contentType="video"><SegmentTemplate timescale="1000" duration="6000"
 initialization="dash/$RepresentationID$/init.mp4" media="dash/$RepresentationID$/$Number$.m4s"/>
<Representation id="1080p" bandwidth="5000000"/><Representation id="720p" bandwidth="3000000"/>
<Representation id="480p" bandwidth="1500000"/><Representation id="360p" bandwidth="800000"/>
</AdaptationSet><AdaptationSet contentType="audio"><SegmentTemplate timescale="1000"
 duration="6000" initialization="dash/audio/init.mp4" media="dash/audio/$Number$.m4s"/>
<Representation id="audio" bandwidth="128000"/></AdaptationSet></Period></MPD>
"""


def signer_for(binding: str) -> tuple[ExtprocConfig, ManifestSigner]:
    config = ExtprocConfig.from_env({**ENV, "URL_TOKEN_BINDING": binding})
    return config, ManifestSigner(config, mapper_factory(config, SigningPolicy(config.policy)))


def per_start(
    binding: str, session_of: Callable[[int], str | None], plan: list[tuple[str, bytes]]
) -> float:
    """µs per session start: sign each (requested path, origin document) of ``plan``."""
    config, signer = signer_for(binding)
    starts = 400

    def start(i: int) -> None:
        headers = {USER_HEADER: "alice", VIDEO_HEADER: "bench"}
        session = session_of(i)
        if session is not None:
            headers[SESSION_HEADER] = session
        for path, body in plan:
            ctx = context_from_request(config, path, headers)
            assert ctx is not None
            assert signer.sign(ctx, None, None, body) is not None

    start(-1)  # warm: a start of another session (its cache entries stay)
    began = time.perf_counter()
    for i in range(starts):
        start(i)
    return (time.perf_counter() - began) / starts * 1e6


async def authz_costs() -> tuple[float, float]:
    """µs per session start and per coalesced sign of life (memory store)."""
    registry = SessionRegistry(
        MemorySessionStore(Lifetimes(1_800_000, 60_000)),
        StreamLimits.parse("basic=2"),
        check_interval=5.0,
    )
    n = 5000
    began = time.perf_counter()
    made = [
        await registry.start(user=f"u{i}", video="v", plan="basic", entitlement="{}", label="-")
        for i in range(n)
    ]
    start = (time.perf_counter() - began) / n * 1e6
    await asyncio.gather(*(registry.check(f, 2, Kind.SLOT) for f in made))
    began = time.perf_counter()
    for facts in made:
        await registry.check(facts, 2, Kind.LIFE)  # answered from the process's view
    life = (time.perf_counter() - began) / n * 1e6
    return start, life


def main() -> None:
    print(f"HLS ladder of {len(RUNGS)} variants, one AES-128 key URI per playlist")
    for segments in (150, 1200):
        first = [
            ("/playback/bench/manifest", master()),
            ("/media/bench/hls/720p/playlist.m3u8", media(segments)),
        ]
        ladder = first[:1] + [
            (f"/media/bench/hls/{r}/playlist.m3u8", media(segments)) for r in RUNGS
        ]
        for label, plan in (("master + first variant", first), ("master + every variant", ladder)):
            shared = per_start("none", lambda i: None, plan)
            own = per_start("session", lambda i: f"{i:022d}", plan)
            print(
                f"  {segments:5d} segments, {label}: {shared:7.1f} us shared cache, "
                f"{own:7.1f} us per session (+{own - shared:.1f} us per start)"
            )
    dash = [("/playback/bench/manifest?format=dash", MPD)]
    shared = per_start("none", lambda i: None, dash)
    own = per_start("session", lambda i: f"{i:022d}", dash)
    print(f"DASH MPD (SegmentTemplate, 5 representations): {shared:.1f} us shared, {own:.1f} own")
    start, life = asyncio.run(authz_costs())
    print(f"authz, memory store: {start:.1f} us per session start, {life:.1f} us per sign of life")


if __name__ == "__main__":
    main()
