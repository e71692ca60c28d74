"""A live channel simulated from the generated demo media, the way DASH-IF's livesim does it.

Wall-clock driven and stateless: segment ``n`` of the channel covers ``[AST + n*D, AST + (n+1)*D)``
(``AST`` the fixed :data:`LIVE_EPOCH`, ``D`` the source's segment duration) and is source segment
``n mod S`` of loop ``n div S`` (``S`` segments in the source). Every process computes the same
window from the clock alone, so any number of origins answer alike.

HLS (``{channel}/master.m3u8``, ``{channel}/hls/{rendition}/playlist.m3u8``): the source's
multivariant playlist; media playlists without ``EXT-X-ENDLIST`` listing the last ``window``
available segments, with ``EXT-X-MEDIA-SEQUENCE`` = the first one's number,
``EXT-X-DISCONTINUITY`` where the source loops (its timestamps start again) and
``EXT-X-DISCONTINUITY-SEQUENCE`` counting the loops before the window, ``EXT-X-PROGRAM-DATE-TIME``
on every segment, and AES-128 with key rotation: segment ``n`` is encrypted under rotation key
``(n div rotation) mod K`` (its ``EXT-X-KEY`` URI ``/drm/key/{channel}/{kid}``, answered by the
license broker from ``keys.json``), with the IV the spec implies (the media sequence number). The
segments are the source's, decrypted and encrypted again on the fly.

DASH (``{channel}/manifest.mpd``): a ``type="dynamic"`` MPD with ``availabilityStartTime``,
``publishTime``, ``minimumUpdatePeriod`` (one segment), ``timeShiftBufferDepth`` (the window),
one Period from ``AST`` whose SegmentTemplates (``$Number$``) carry a SegmentTimeline of the
window (players that keep their first template for the whole session, like Shaka with
``@duration``, take the re-signed template of every refresh with a timeline), a ``Location`` (so
refreshes never go back to the entry URL and its JWT), a ``UTCTiming`` (http-iso) at the
configured time source, and the source's CENC ClearKey protection. Media segments are the
source's with their ``tfdt`` moved to the channel's timeline (64-bit) and their ``sidx`` dropped;
init segments lose the source's fragment duration (``mehd``).
"""

from __future__ import annotations

import functools
import math
import re
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from xml.etree.ElementTree import Element, SubElement, register_namespace, tostring

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import ElementTree

from devstack import media
from playback_drm.settings import ConfigError

__all__ = [
    "LIVE_EPOCH",
    "LiveChannel",
    "LiveResponse",
    "LiveSettings",
    "iso_time",
]

LIVE_EPOCH: Final = 1767225600  # 2026-01-01T00:00:00Z: availabilityStartTime, segment 0 starts
MPD_NS: Final = "urn:mpeg:dash:schema:mpd:2011"
CENC_NS: Final = "urn:mpeg:cenc:2013"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
DEFAULT_UTC_TIMING_URL: Final = "/demo/api/time"  # the local stack's time source, on the gateway
UTC_TIMING_SCHEME: Final = "urn:mpeg:dash:utc:http-iso:2014"
# Segments this far past the live edge are still served (clock skew between players and us).
FUTURE_TOLERANCE: Final = 1
_SEGMENT = re.compile(r"seg_(\d{1,12})\.ts")
_NUMBER = re.compile(r"(\d{1,12})\.m4s")
_M = "{" + MPD_NS + "}"

register_namespace("", MPD_NS)
register_namespace("cenc", CENC_NS)
register_namespace("xsi", XSI_NS)


def iso_time(seconds: float) -> str:
    """``2026-12-04T08:00:00.123Z`` (milliseconds, UTC): what http-iso time sources answer."""
    stamp = datetime.fromtimestamp(seconds, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class LiveSettings:
    """``LIVE_WINDOW_SEGMENTS`` (6), ``LIVE_KEY_ROTATION_SEGMENTS`` (3: a new HLS key every 3
    segments), ``LIVE_UTC_TIMING_URL`` (``/demo/api/time``: the local stack's time source, a
    path on the gateway)."""

    window: int = 6
    rotation: int = 3
    utc_timing_url: str = DEFAULT_UTC_TIMING_URL

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LiveSettings:
        """Raises :class:`~playback_drm.settings.ConfigError` naming the setting that is
        wrong."""
        values: dict[str, int] = {}
        for name, attr, default in (
            ("LIVE_WINDOW_SEGMENTS", "window", 6),
            ("LIVE_KEY_ROTATION_SEGMENTS", "rotation", 3),
        ):
            raw = env.get(name, "").strip() or str(default)
            if not raw.isdigit() or not 1 <= int(raw) <= 1000:
                raise ConfigError(f"{name} must be a whole number from 1 to 1000, got {raw!r}")
            values[attr] = int(raw)
        return cls(
            window=values["window"],
            rotation=values["rotation"],
            utc_timing_url=env.get("LIVE_UTC_TIMING_URL", "").strip() or DEFAULT_UTC_TIMING_URL,
        )


@dataclass(frozen=True, slots=True)
class LiveResponse:
    body: bytes
    content_type: str
    cache_control: str


@dataclass(frozen=True, slots=True)
class _Timeline:
    """One DASH Representation of the source: its SegmentTimeline, expanded."""

    timescale: int
    starts: tuple[int, ...]
    durations: tuple[int, ...]

    @property
    def loop(self) -> int:
        return self.starts[-1] + self.durations[-1] - self.starts[0]


@dataclass
class LiveChannel:
    """One live channel over one generated source video (see the module docstring)."""

    spec: media.LiveSpec
    origin_dir: Path
    settings: LiveSettings = field(default_factory=LiveSettings)
    segment_seconds: int = media.SEGMENT_S
    source_segments: int = media.DURATION_S // media.SEGMENT_S

    def __post_init__(self) -> None:
        source = next(s for s in media.SPECS if s.video_id == self.spec.source)
        video = media.derive_keys(source)[0]
        assert video.iv is not None
        self._source_key = (bytes.fromhex(video.key), bytes.fromhex(video.iv))
        self.rotation_keys = media.live_rotation_keys(self.spec)
        self._source = self.origin_dir / self.spec.source
        self._files: dict[str, bytes] = {}
        self._plain: dict[str, bytes] = {}

    @property
    def video_id(self) -> str:
        return self.spec.video_id

    # --------------------------------------------------------------------------- the clock

    def live_edge(self, now: float) -> int:
        """The number of the newest segment complete at ``now`` (-1 before the first)."""
        return math.floor((now - LIVE_EPOCH) / self.segment_seconds) - 1

    def window(self, now: float) -> range:
        last = self.live_edge(now)
        return range(max(0, last - self.settings.window + 1), last + 1)

    def key_index(self, number: int) -> int:
        return (number // self.settings.rotation) % len(self.rotation_keys)

    def key_uri(self, number: int) -> str:
        kid = self.rotation_keys[self.key_index(number)].kid
        return media.KEY_URI_TEMPLATE.format(video_id=self.video_id, kid=kid)

    def _servable(self, number: int, now: float) -> bool:
        return 0 <= number <= self.live_edge(now) + FUTURE_TOLERANCE

    # ------------------------------------------------------------------------------ routing

    def respond(self, path: str, now: float | None = None) -> LiveResponse | None:
        """The answer to ``{channel}/...`` at the origin (``path`` without the channel), or None
        for a 404."""
        now = time.time() if now is None else now
        if path == "master.m3u8":
            return _playlist(self._read("master.m3u8"))
        if path == "manifest.mpd":
            return LiveResponse(self.mpd(now), "application/dash+xml", "no-cache")
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == "hls" and self._has_dir(f"hls/{parts[1]}"):
            if parts[2] == "playlist.m3u8":
                return _playlist(self.media_playlist(parts[1], now))
            found = _SEGMENT.fullmatch(parts[2])
            if found and self._servable(int(found.group(1)), now):
                body = self.hls_segment(parts[1], int(found.group(1)))
                return LiveResponse(body, "video/mp2t", "public, max-age=60")
        if len(parts) == 3 and parts[0] == "dash" and self._has_dir(f"dash/{parts[1]}"):
            if parts[2] == "init.mp4":
                body = self.dash_init(parts[1])
                return LiveResponse(body, "video/mp4", "public, max-age=3600")
            found = _NUMBER.fullmatch(parts[2])
            if found and self._servable(int(found.group(1)), now):
                body = self.dash_segment(parts[1], int(found.group(1)))
                return LiveResponse(body, "video/iso.segment", "public, max-age=60")
        return None

    def _has_dir(self, relative: str) -> bool:
        name = relative.rsplit("/", maxsplit=1)[-1]
        return bool(name) and not name.startswith(".") and (self._source / relative).is_dir()

    def _read(self, relative: str) -> bytes:
        cached = self._files.get(relative)
        if cached is None:
            cached = self._files[relative] = (self._source / relative).read_bytes()
        return cached

    # ---------------------------------------------------------------------------------- HLS

    def media_playlist(self, rendition: str, now: float) -> bytes:
        numbers = self.window(now)
        first = numbers.start
        d = self.segment_seconds
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:3",
            f"#EXT-X-TARGETDURATION:{d}",
            f"#EXT-X-MEDIA-SEQUENCE:{first}",
            f"#EXT-X-DISCONTINUITY-SEQUENCE:{first // self.source_segments}",
            "#EXT-X-INDEPENDENT-SEGMENTS",
        ]
        key_uri = None
        for n in numbers:
            if n != first and n % self.source_segments == 0:
                lines.append("#EXT-X-DISCONTINUITY")
            uri = self.key_uri(n)
            if uri != key_uri:
                # no IV attribute: the IV is the media sequence number (RFC 8216, 5.2)
                lines.append(f'#EXT-X-KEY:METHOD=AES-128,URI="{uri}"')
                key_uri = uri
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{iso_time(LIVE_EPOCH + n * d)}")
            lines.append(f"#EXTINF:{d:.3f},")
            lines.append(f"seg_{n}.ts")
        del rendition  # every rendition has the same segment numbers
        return ("\n".join(lines) + "\n").encode()

    def hls_segment(self, rendition: str, number: int) -> bytes:
        plain = self._plain_ts(rendition, number % self.source_segments)
        key = self.rotation_keys[self.key_index(number)]
        encryptor = Cipher(
            algorithms.AES(bytes.fromhex(key.key)), modes.CBC(number.to_bytes(16, "big"))
        ).encryptor()
        padder = padding.PKCS7(128).padder()
        return encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()

    def _plain_ts(self, rendition: str, index: int) -> bytes:
        """A source segment, decrypted (kept: a handful of them for the channel's lifetime)."""
        relative = f"hls/{rendition}/seg_{index:03d}.ts"
        plain = self._plain.get(relative)
        if plain is None:
            key, iv = self._source_key
            decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
            unpadder = padding.PKCS7(128).unpadder()
            padded = decryptor.update(self._read(relative)) + decryptor.finalize()
            plain = self._plain[relative] = unpadder.update(padded) + unpadder.finalize()
        return plain

    # --------------------------------------------------------------------------------- DASH

    @functools.cached_property
    def _timelines(self) -> dict[str, _Timeline]:
        """Per source media directory (``dash/video_360p``): its expanded SegmentTimeline."""
        root = ElementTree.fromstring(self._read("manifest.mpd"))
        found: dict[str, _Timeline] = {}
        for template in root.iter(_M + "SegmentTemplate"):
            media_attr = template.get("media", "")
            starts: list[int] = []
            durations: list[int] = []
            t = 0
            for s in template.iter(_M + "S"):
                t = int(s.get("t", t))
                d = int(s.get("d", "0"))
                for _ in range(int(s.get("r", "0")) + 1):
                    starts.append(t)
                    durations.append(d)
                    t += d
            if len(starts) != self.source_segments:
                raise ValueError(f"{media_attr}: expected {self.source_segments} segments")
            found[media_attr.rsplit("/", 1)[0]] = _Timeline(
                int(template.get("timescale", "1")), tuple(starts), tuple(durations)
            )
        return found

    def _start(self, timeline: _Timeline, number: int) -> int:
        loop, index = divmod(number, self.source_segments)
        return loop * timeline.loop + timeline.starts[index]

    def mpd(self, now: float) -> bytes:
        numbers = self.window(now)
        d = self.segment_seconds
        root = ElementTree.fromstring(self._read("manifest.mpd"))
        for name in ("mediaPresentationDuration",):
            root.attrib.pop(name, None)
        root.set("type", "dynamic")
        root.set("availabilityStartTime", iso_time(LIVE_EPOCH))
        root.set("publishTime", iso_time(LIVE_EPOCH + (numbers.stop) * d))
        root.set("minimumUpdatePeriod", f"PT{d}S")
        root.set("timeShiftBufferDepth", f"PT{self.settings.window * d}S")
        root.set("suggestedPresentationDelay", f"PT{3 * d}S")
        root.set("minBufferTime", f"PT{d}S")
        location = Element(_M + "Location")
        location.text = "manifest.mpd"  # relative: the signer makes it the session's signed URL
        root.insert(0, location)
        for period in root.iter(_M + "Period"):
            period.set("id", "live")
            period.set("start", "PT0S")
        for template in root.iter(_M + "SegmentTemplate"):
            timeline = self._timelines[template.get("media", "").rsplit("/", 1)[0]]
            for old in list(template):
                template.remove(old)
            template.set("startNumber", str(numbers.start))
            template.set("presentationTimeOffset", "0")
            if len(numbers):
                segments = SubElement(template, _M + "SegmentTimeline")
                for n in numbers:
                    s = SubElement(segments, _M + "S")
                    if n == numbers.start:
                        s.set("t", str(self._start(timeline, n)))
                    s.set("d", str(timeline.durations[n % self.source_segments]))
        timing = SubElement(root, _M + "UTCTiming")
        timing.set("schemeIdUri", UTC_TIMING_SCHEME)
        timing.set("value", self.settings.utc_timing_url)
        return bytes(tostring(root, encoding="utf-8", xml_declaration=True))

    def dash_init(self, representation: str) -> bytes:
        return _zero_fragment_duration(self._read(f"dash/{representation}/init.mp4"))

    def dash_segment(self, representation: str, number: int) -> bytes:
        timeline = self._timelines[f"dash/{representation}"]
        index = number % self.source_segments
        data = self._read(f"dash/{representation}/{index + 1}.m4s")
        return retime_segment(data, (number // self.source_segments) * timeline.loop)


def _playlist(body: bytes) -> LiveResponse:
    return LiveResponse(body, "application/vnd.apple.mpegurl", "no-cache")


# ----------------------------------------------------------------------------- ISO-BMFF edits


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the boxes in ``data[start:end]`` (32-bit sizes only)."""
    out = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        if size < 8 or pos + size > end:
            raise ValueError(f"malformed box at {pos}")
        out.append((kind, pos, size))
        pos += size
    return out


def _zero_fragment_duration(init: bytes) -> bytes:
    """The init segment with ``mvex/mehd`` saying nothing about a duration (live has none)."""
    out = bytearray(init)
    for kind, pos, size in _boxes(init, 0, len(init)):
        if kind != b"moov":
            continue
        for inner, ipos, isize in _boxes(init, pos + 8, pos + size):
            if inner != b"mvex":
                continue
            for leaf, lpos, lsize in _boxes(init, ipos + 8, ipos + isize):
                if leaf == b"mehd":
                    out[lpos + 12 : lpos + lsize] = bytes(lsize - 12)
    return bytes(out)


def retime_segment(data: bytes, shift: int) -> bytes:
    """A CMAF media segment moved ``shift`` timescale units later: every ``tfdt`` becomes a
    64-bit one with the new decode time; the sizes of ``moof``/``traf``, ``trun`` data offsets
    and ``saio`` offsets (relative to the ``moof``) follow the boxes that grew. ``sidx`` boxes
    are dropped (players of SegmentTemplate content do not need them, and their times would be
    stale)."""
    out = bytearray()
    for kind, pos, size in _boxes(data, 0, len(data)):
        if kind == b"sidx":
            continue
        if kind == b"moof":
            out += _retime_moof(data, pos, size, shift)
        else:
            out += data[pos : pos + size]
    return bytes(out)


def _retime_moof(data: bytes, pos: int, size: int, shift: int) -> bytes:
    children = _boxes(data, pos + 8, pos + size)
    grown = sum(4 for kind, _p, _s in _trafs_tfdt(data, children) if kind == 0)
    body = bytearray()
    before = 0  # bytes the moof grew before the current traf's sample auxiliary data
    for kind, cpos, csize in children:
        if kind != b"traf":
            body += data[cpos : cpos + csize]
            continue
        traf = bytearray()
        for inner, ipos, isize in _boxes(data, cpos + 8, cpos + csize):
            box = bytearray(data[ipos : ipos + isize])
            if inner == b"tfdt":
                version = box[8]
                value = struct.unpack_from(">Q" if version else ">I", box, 12)[0] + shift
                if version == 0:
                    before += 4
                box = bytearray(struct.pack(">I4sB3sQ", 20, b"tfdt", 1, bytes(box[9:12]), value))
            elif inner == b"trun" and box[11] & 0x01:  # data-offset-present
                offset = struct.unpack_from(">i", box, 16)[0]
                struct.pack_into(">i", box, 16, offset + grown)
            elif inner == b"saio":
                version, flags = box[8], int.from_bytes(box[9:12], "big")
                at = 12 + (8 if flags & 0x01 else 0)
                count = struct.unpack_from(">I", box, at)[0]
                at += 4
                for _ in range(count):
                    fmt = ">I" if version == 0 else ">Q"
                    struct.pack_into(fmt, box, at, struct.unpack_from(fmt, box, at)[0] + before)
                    at += struct.calcsize(fmt)
            traf += box
        body += struct.pack(">I4s", len(traf) + 8, b"traf") + traf
    return struct.pack(">I4s", len(body) + 8, b"moof") + bytes(body)


def _trafs_tfdt(data: bytes, children: list[tuple[bytes, int, int]]) -> list[tuple[int, int, int]]:
    """(version, offset, size) of every traf's tfdt."""
    found = []
    for kind, cpos, csize in children:
        if kind == b"traf":
            for inner, ipos, isize in _boxes(data, cpos + 8, cpos + csize):
                if inner == b"tfdt":
                    found.append((data[ipos + 8], ipos, isize))
    return found
