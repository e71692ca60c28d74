"""The live channel (devstack.live): the playlists and the MPD at given instants, the segments they
name, and what extproc's rewriter makes of them (every URI signed, the time source left alone).

No servers: the channel is a pure function of the clock over the generated demo media.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import ElementTree

from devstack import media
from devstack.live import LIVE_EPOCH, LiveChannel, LiveSettings, iso_time, retime_segment
from extproc import manifest
from extproc.config import PolicyConfig
from extproc.manifest import ManifestKind
from extproc.policy import SigningPolicy
from playback_drm import urlsign
from playback_drm.settings import ConfigError
from tests.support.stack import TEST_MEDIA

NS = {"mpd": "urn:mpeg:dash:schema:mpd:2011", "cenc": "urn:mpeg:cenc:2013"}
# 2 s segments: an instant 0.5 s into segment 10_000_003 (a loop of 4 starts at 10_000_000)
NOW = LIVE_EPOCH + 10_000_003 * 2 + 0.5
KEYS = f"k1:{base64.b64encode(bytes(range(32))).decode()}"
ORIGIN = "http://origin.internal:9104/"


@pytest.fixture(scope="module")
def generated() -> media.MediaManifest:
    return media.generate(TEST_MEDIA)


@pytest.fixture(scope="module")
def channel(generated: media.MediaManifest) -> LiveChannel:
    return LiveChannel(media.LIVE_CHANNELS[0], generated.origin_dir, LiveSettings(rotation=3))


def _hls(channel: LiveChannel, now: float, rendition: str = "360p") -> list[str]:
    answer = channel.respond(f"hls/{rendition}/playlist.m3u8", now)
    assert answer is not None
    assert answer.content_type == "application/vnd.apple.mpegurl"
    return answer.body.decode().splitlines()


def _tag(lines: list[str], name: str) -> str:
    return next(line.split(":", 1)[1] for line in lines if line.startswith(name + ":"))


def _segments(lines: list[str]) -> list[int]:
    return [int(line[4:-3]) for line in lines if line.startswith("seg_")]


def test_hls_window_slides_with_the_clock(channel: LiveChannel) -> None:
    lines = _hls(channel, NOW)
    assert "#EXT-X-ENDLIST" not in lines
    # the newest complete segment is 10_000_002 (10_000_003 is still being "recorded")
    assert _segments(lines) == list(range(9_999_997, 10_000_003))
    assert _tag(lines, "#EXT-X-MEDIA-SEQUENCE") == "9999997"
    assert _tag(lines, "#EXT-X-TARGETDURATION") == "2"
    later = _hls(channel, NOW + 2)
    assert _segments(later) == list(range(9_999_998, 10_000_004))
    assert _tag(later, "#EXT-X-MEDIA-SEQUENCE") == "9999998"
    # stateless: another instance over the same files says the same, byte for byte
    other = LiveChannel(channel.spec, channel.origin_dir, channel.settings)
    assert _hls(other, NOW) == lines


def test_hls_discontinuities_follow_the_source_loop(channel: LiveChannel) -> None:
    lines = _hls(channel, NOW)
    # 9_999_997 is in loop 2_499_999; the loop starting at 10_000_000 is announced in place
    assert _tag(lines, "#EXT-X-DISCONTINUITY-SEQUENCE") == "2499999"
    before = lines.index("seg_10000000.ts")
    assert "#EXT-X-DISCONTINUITY" in lines[before - 4 : before]
    assert lines.count("#EXT-X-DISCONTINUITY") == 1
    # once 9_999_999 left the window, the first segment is the loop's and the counter moved on
    later = _hls(channel, NOW + 6)
    assert _segments(later)[0] == 10_000_000
    assert _tag(later, "#EXT-X-DISCONTINUITY-SEQUENCE") == "2500000"
    assert later.count("#EXT-X-DISCONTINUITY") == 1  # only before 10_000_004, the next loop
    assert "#EXT-X-DISCONTINUITY" in later[later.index("seg_10000004.ts") - 4 :]


def test_hls_program_date_time_is_the_wall_clock_of_each_segment(channel: LiveChannel) -> None:
    lines = _hls(channel, NOW)
    stamps = [line.split(":", 1)[1] for line in lines if line.startswith("#EXT-X-PROGRAM-DATE")]
    assert stamps == [iso_time(LIVE_EPOCH + n * 2) for n in range(9_999_997, 10_000_003)]
    assert stamps[-1] == iso_time(NOW - 2.5)


def test_hls_keys_rotate_every_n_segments_and_decrypt_the_segments(
    channel: LiveChannel, generated: media.MediaManifest
) -> None:
    keys = json.loads(generated.keys_file.read_text())["videos"]["live-demo"]["keys"]
    by_kid = {k["kid"]: bytes.fromhex(k["key"]) for k in keys}
    lines = _hls(channel, NOW)
    current = None
    seen: dict[int, str] = {}
    for line in lines:
        if line.startswith("#EXT-X-KEY:"):
            found = re.fullmatch(r'#EXT-X-KEY:METHOD=AES-128,URI="/drm/key/live-demo/(\w+)"', line)
            assert found, line  # no IV: the media sequence number is the IV
            current = found.group(1)
        elif line.startswith("seg_"):
            assert current is not None
            seen[int(line[4:-3])] = current
    # a key per 3 segments (9_999_996..998, 9_999_999..10_000_001, 10_000_002..)
    groups = [seen[n] for n in sorted(seen)]
    assert groups[0:2] == [groups[0]] * 2
    assert len(set(groups[2:5])) == 1
    assert groups[2] != groups[1]
    assert groups[5] != groups[4]
    for n, kid in seen.items():
        answer = channel.respond(f"hls/360p/seg_{n}.ts", NOW)
        assert answer is not None
        decryptor = Cipher(
            algorithms.AES(by_kid[kid]), modes.CBC(n.to_bytes(16, "big"))
        ).decryptor()
        unpadder = padding.PKCS7(128).unpadder()
        plain = unpadder.update(decryptor.update(answer.body) + decryptor.finalize())
        plain += unpadder.finalize()
        assert plain[0::188][:20] == b"\x47" * 20  # MPEG-TS packets
    # the rotation setting decides the period
    every_other = LiveChannel(channel.spec, channel.origin_dir, LiveSettings(rotation=1))
    assert sum(line.startswith("#EXT-X-KEY") for line in _hls(every_other, NOW)) == 6


def test_future_and_unknown_paths_are_not_found(channel: LiveChannel) -> None:
    assert channel.respond("hls/360p/seg_10000005.ts", NOW) is None  # not recorded yet
    assert channel.respond("dash/video_360p/10000005.m4s", NOW) is None
    assert channel.respond("hls/360p/seg_-1.ts", NOW) is None
    assert channel.respond("hls/nope/playlist.m3u8", NOW) is None
    assert channel.respond("hls/../playlist.m3u8", NOW) is None
    assert channel.respond("dash/video_360p/init.mp4", NOW) is not None


def test_settings_are_checked_at_start_up() -> None:
    assert LiveSettings.from_env({"LIVE_KEY_ROTATION_SEGMENTS": "5"}).rotation == 5
    with pytest.raises(ConfigError, match="LIVE_KEY_ROTATION_SEGMENTS"):
        LiveSettings.from_env({"LIVE_KEY_ROTATION_SEGMENTS": "0"})
    with pytest.raises(ConfigError, match="LIVE_WINDOW_SEGMENTS"):
        LiveSettings.from_env({"LIVE_WINDOW_SEGMENTS": "six"})


def _mpd(channel: LiveChannel, now: float) -> ElementTree.Element:
    answer = channel.respond("manifest.mpd", now)
    assert answer is not None
    assert answer.content_type == "application/dash+xml"
    return ElementTree.fromstring(answer.body)


def test_mpd_is_dynamic_with_a_sliding_timeline(channel: LiveChannel) -> None:
    mpd = _mpd(channel, NOW)
    assert mpd.get("type") == "dynamic"
    assert mpd.get("availabilityStartTime") == "2026-01-01T00:00:00.000Z"
    assert mpd.get("timeShiftBufferDepth") == "PT12S"
    assert mpd.get("minimumUpdatePeriod") == "PT2S"
    assert mpd.get("mediaPresentationDuration") is None
    assert mpd.findtext("mpd:Location", namespaces=NS) == "manifest.mpd"
    timing = mpd.findall("mpd:UTCTiming", NS)
    assert [(t.get("schemeIdUri"), t.get("value")) for t in timing] == [
        ("urn:mpeg:dash:utc:http-iso:2014", "/demo/api/time")
    ]
    kids = {
        cp.get("{urn:mpeg:cenc:2013}default_KID")
        for cp in mpd.iter("{urn:mpeg:dash:schema:mpd:2011}ContentProtection")
    }
    assert len(kids - {None}) == 2  # video and audio keys, CENC, as in the source
    templates = list(mpd.iter("{urn:mpeg:dash:schema:mpd:2011}SegmentTemplate"))
    assert len(templates) == 3
    for template in templates:
        assert "$Number$" in template.get("media", "")
        assert template.get("startNumber") == "9999997"
        s = template.findall("mpd:SegmentTimeline/mpd:S", NS)
        assert len(s) == 6
        scale = int(template.get("timescale", "0"))
        # segment 9_999_997 starts 19_999_994 s after availabilityStartTime (audio: the
        # source's own segment starts, at most one AAC frame away)
        assert abs(int(s[0].get("t", "0")) / scale - 19_999_994) < 0.05
    later = _mpd(channel, NOW + 2)
    template = next(later.iter("{urn:mpeg:dash:schema:mpd:2011}SegmentTemplate"))
    assert template.get("startNumber") == "9999998"


def _tfdt(segment: bytes) -> int:
    at = segment.index(b"tfdt") - 4
    version = segment[at + 8]
    return int(struct.unpack_from(">Q" if version else ">I", segment, at + 12)[0])


def test_dash_segments_carry_the_channel_timeline(
    channel: LiveChannel, generated: media.MediaManifest
) -> None:
    source = generated.origin_dir / "demo" / "dash"
    for rep, scale, loop in (("video_360p", 12288, 8 * 12288), ("audio", 48000, 8 * 48000)):
        for n in (9_999_999, 10_000_000, 10_000_002):
            answer = channel.respond(f"dash/{rep}/{n}.m4s", NOW)
            assert answer is not None
            original = (source / rep / f"{n % 4 + 1}.m4s").read_bytes()
            assert _tfdt(answer.body) == _tfdt(original) + (n // 4) * loop
            assert abs(_tfdt(answer.body) / scale - n * 2) < 0.1
            assert b"sidx" not in answer.body[:200]
            # the samples are the source's, and trun's data offset still points at them
            assert answer.body.endswith(original[original.index(b"mdat") - 4 :])
            moof = answer.body.index(b"moof") - 4
            trun = answer.body.index(b"trun") - 4
            offset = struct.unpack_from(">i", answer.body, trun + 16)[0]
            mdat = answer.body.index(b"mdat") - 4
            assert moof + offset == mdat + 8


def test_retime_keeps_a_64_bit_tfdt_in_place() -> None:
    # a segment whose tfdt is already 64-bit: only the value changes
    tfdt = struct.pack(">I4sB3sQ", 20, b"tfdt", 1, b"\0\0\0", 5)
    traf = struct.pack(">I4s", 8 + len(tfdt), b"traf") + tfdt
    moof = struct.pack(">I4s", 8 + len(traf), b"moof") + traf
    mdat = struct.pack(">I4s", 12, b"mdat") + b"data"
    out = retime_segment(moof + mdat, 10)
    assert len(out) == len(moof + mdat)
    assert _tfdt(out) == 15


# ------------------------------------------------------------------ through extproc's rewriter


def _policy() -> SigningPolicy:
    env = {
        "ORIGIN_URL": ORIGIN,
        "URL_SIGNING_KEYS": KEYS,
        "URL_TOKEN_TTL": "6",
        "URL_TOKEN_PLAYLIST_TTL": "10",
        "URL_TOKEN_WINDOW": "1",
    }
    return SigningPolicy(PolicyConfig.from_env(env))


def _verify(policy: SigningPolicy, url: str, *, session: str, now: float = NOW) -> None:
    parts = urlsplit(url)
    verified = urlsign.verify(policy.config.keys, parts.path, parts.query, now=now, client_ip=None)
    assert verified.session_id == session


def test_extproc_signs_every_uri_of_the_live_hls_playlists(channel: LiveChannel) -> None:
    policy = _policy()
    session = "AAAAAAAAAAAAAAAAAAAAAA"
    master = channel.respond("master.m3u8", NOW)
    assert master is not None
    mapper = policy.mapper(
        video_id="live-demo",
        document_url="master.m3u8",
        public_path="/playback/live-demo/manifest",
        now=NOW,
        session_id=session,
    )
    signed = manifest.rewrite(ManifestKind.HLS, master.body, mapper).decode()
    variants = [line for line in signed.splitlines() if line and not line.startswith("#")]
    assert len(variants) == 2
    for url in variants:
        assert url.startswith("/media/live-demo/hls/")
        _verify(policy, url, session=session)
    playlist = urlsplit(variants[0]).path
    body = channel.respond(playlist.removeprefix("/media/live-demo/"), NOW)
    assert body is not None
    mapper = policy.mapper(
        video_id="live-demo",
        document_url=playlist.removeprefix("/media/live-demo/"),
        public_path=playlist,
        now=NOW,
        session_id=session,
    )
    signed = manifest.rewrite(ManifestKind.HLS, body.body, mapper).decode()
    uris = [line for line in signed.splitlines() if line and not line.startswith("#")]
    keys = re.findall(r'URI="([^"]+)"', signed)
    assert len(uris) == 6
    assert len(keys) >= 2
    for uri in uris + keys:
        assert "pdt=" in uri, uri
        _verify(policy, urljoin(playlist, uri), session=session)
    assert all(k.startswith("/drm/key/live-demo/") for k in keys)
    # the next refresh signs the segments again, with tokens that outlive the old ones
    later_mapper = policy.mapper(
        video_id="live-demo",
        document_url=playlist.removeprefix("/media/live-demo/"),
        public_path=playlist,
        now=NOW + 8,
        session_id=session,
    )
    later = channel.respond(playlist.removeprefix("/media/live-demo/"), NOW + 8)
    assert later is not None
    resigned = manifest.rewrite(ManifestKind.HLS, later.body, later_mapper).decode()
    newest = [line for line in resigned.splitlines() if line.startswith("seg_")][-1]
    _verify(policy, urljoin(playlist, newest), session=session, now=NOW + 13)


def test_extproc_signs_the_live_mpd_and_leaves_its_time_source_alone(
    channel: LiveChannel,
) -> None:
    policy = _policy()
    session = "BBBBBBBBBBBBBBBBBBBBBB"
    answer = channel.respond("manifest.mpd", NOW)
    assert answer is not None
    mapper = policy.mapper(
        video_id="live-demo",
        document_url="manifest.mpd",
        public_path="/playback/live-demo/manifest",
        now=NOW,
        session_id=session,
    )
    signed = manifest.rewrite(ManifestKind.DASH, answer.body, mapper)
    assert mapper.stats.get("time_source") == 1
    assert mapper.stats.get("unmappable", 0) == 0
    mpd = ElementTree.fromstring(signed)
    timing = mpd.find("mpd:UTCTiming", NS)
    assert timing is not None
    assert timing.get("value") == "/demo/api/time"
    location = mpd.findtext("mpd:Location", namespaces=NS)
    assert location is not None
    assert location.startswith("/media/live-demo/manifest.mpd?pdt=")
    verified = urlsign.verify(
        policy.config.keys,
        "/media/live-demo/manifest.mpd",
        urlsplit(location).query,
        now=NOW + 9,  # a refresh URL: the playlist lifetime, per URL
        client_ip=None,
    )
    assert verified.scope is None
    assert verified.session_id == session
    templates = list(mpd.iter("{urn:mpeg:dash:schema:mpd:2011}SegmentTemplate"))
    for template in templates:
        for attr in ("media", "initialization"):
            url = template.get(attr, "")
            assert url.startswith("/media/live-demo/dash/")
            assert "pdt=" in url
            concrete = url.replace("$Number$", "10000002")
            _verify(policy, concrete, session=session)


def test_generated_keys_file_lists_the_live_channel(generated: media.MediaManifest) -> None:
    doc = json.loads(generated.keys_file.read_text())["videos"]
    live = doc["live-demo"]
    assert live["tier"] == doc["demo"]["tier"]
    kids = [k["kid"] for k in live["keys"]]
    assert {k["kid"] for k in doc["demo"]["keys"]} <= set(kids)  # the DASH segments' keys
    rotation = media.live_rotation_keys(media.LIVE_CHANNELS[0])
    assert [k.kid for k in rotation] == kids[-len(rotation) :]
    assert len(set(kids)) == len(kids)
    assert Path(generated.keys_file).stat().st_mode & 0o777 == 0o600
