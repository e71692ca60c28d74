"""The generated demo content is really protected, with the keys that keys.json hands out.

No browser: these parse the MPD, the MP4 boxes and the HLS playlists and decrypt a segment.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import ElementTree

from devstack import media
from license_broker.keys import MemoryKeyStore, VaultKeyStore
from tests.support.servers import VaultServer

MPD_NS = {"mpd": "urn:mpeg:dash:schema:mpd:2011", "cenc": "urn:mpeg:cenc:2013"}
CENC_KID = "{urn:mpeg:cenc:2013}default_KID"
MP4_PROTECTION = "urn:mpeg:dash:mp4protection:2011"
TS_PACKET = 188


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> media.MediaManifest:
    return media.generate(tmp_path_factory.mktemp("media") / "out")


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> dict[bytes, list[int]]:
    """Offsets of every ISO-BMFF box type, descending into the containers we need."""
    containers = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"sinf", b"schi", b"moof", b"traf"}
    found: dict[bytes, list[int]] = {}
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if size < 8:
            break
        found.setdefault(kind, []).append(pos)
        if kind in containers:
            for k, v in _boxes(data, pos + 8, pos + size).items():
                found.setdefault(k, []).extend(v)
        elif kind == b"stsd":  # full box + entry count, then sample entries
            entry = pos + 16
            found.setdefault(data[entry + 4 : entry + 8], []).append(entry)
            # encv/enca: after the visual (78) / audio (28) sample entry header come child boxes
            header = 8 + (78 if data[entry + 4 : entry + 8] == b"encv" else 28)
            entry_size = int.from_bytes(data[entry : entry + 4], "big")
            for k, v in _boxes(data, entry + header, entry + entry_size).items():
                found.setdefault(k, []).extend(v)
        pos += size
    return found


def _tenc_kid(init: bytes) -> bytes:
    at = _boxes(init)[b"tenc"][0]
    # size(4) type(4) version+flags(4) reserved(1) reserved/pattern(1) isProtected(1) ivSize(1)
    return init[at + 16 : at + 32]


def test_mpd_signals_each_key_id_for_clearkey(content: media.MediaManifest) -> None:
    for video in content.videos.values():
        root = ElementTree.parse(video.dash_manifest).getroot()
        sets = root.findall(".//mpd:AdaptationSet", MPD_NS)
        by_type = {a.get("contentType"): a for a in sets}
        expected = {"video": video.video_key, "audio": video.audio_key}
        assert set(by_type) == set(expected)
        for kind, adaptation in by_type.items():
            protections = adaptation.findall("mpd:ContentProtection", MPD_NS)
            cenc = [p for p in protections if p.get("schemeIdUri") == MP4_PROTECTION]
            assert len(cenc) == 1
            assert cenc[0].get("value") == "cenc"
            assert cenc[0].get(CENC_KID) == expected[kind].kid_uuid
            schemes = {p.get("schemeIdUri") for p in protections}
            assert "urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e" in schemes  # DASH-IF ClearKey
        assert root.get("type") == "static"


def test_dash_init_segments_are_encrypted_with_the_announced_key(
    content: media.MediaManifest,
) -> None:
    video = content.videos["demo"]
    base = video.dash_manifest.parent / "dash"
    for rendition, entry, key in (
        ("video_360p", b"encv", video.video_key),
        ("video_180p", b"encv", video.video_key),
        ("audio", b"enca", video.audio_key),
    ):
        init = (base / rendition / "init.mp4").read_bytes()
        boxes = _boxes(init)
        assert entry in boxes, f"{rendition}: no {entry!r} sample entry"
        assert b"avc1" not in boxes
        assert b"mp4a" not in boxes
        assert _tenc_kid(init) == bytes.fromhex(key.kid)
        assert b"pssh" in boxes  # the common-system PSSH stays in the media
        segment = (base / rendition / "1.m4s").read_bytes()
        assert b"senc" in _boxes(segment), f"{rendition}: media segment has no sample encryption"


def _decrypt(segment: bytes, key: bytes, iv: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(segment) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _is_mpeg_ts(data: bytes) -> bool:
    return (
        len(data) >= TS_PACKET
        and len(data) % TS_PACKET == 0
        and all(data[i] == 0x47 for i in range(0, len(data), TS_PACKET))
    )


def test_hls_segments_decrypt_to_mpeg_ts_only_with_the_right_key(
    content: media.MediaManifest,
) -> None:
    video = content.videos["demo"]
    key = video.video_key
    playlist = (video.hls_master.parent / "hls" / "360p" / "playlist.m3u8").read_text()
    tag = re.search(r'#EXT-X-KEY:METHOD=AES-128,URI="([^"]+)",IV=0x([0-9a-fA-F]{32})', playlist)
    assert tag, playlist
    assert tag.group(1) == f"/drm/key/demo/{key.kid}"
    iv = bytes.fromhex(tag.group(2))
    assert key.iv == tag.group(2).lower()
    segment = (video.hls_master.parent / "hls" / "360p" / "seg_000.ts").read_bytes()

    assert not _is_mpeg_ts(segment)  # as stored: ciphertext
    assert _is_mpeg_ts(_decrypt(segment, bytes.fromhex(key.key), iv))
    wrong = bytes.fromhex(content.videos["demo-uhd"].video_key.key)
    try:
        garbage = _decrypt(segment, wrong, iv)
    except ValueError:  # bad padding: the usual outcome
        garbage = b""
    assert not _is_mpeg_ts(garbage)


def test_hls_master_points_at_media_playlists_in_subfolders(
    content: media.MediaManifest,
) -> None:
    master = content.videos["demo"].hls_master
    lines = master.read_text().splitlines()
    uris = [line for line in lines if line and not line.startswith("#")]
    assert uris == ["hls/360p/playlist.m3u8", "hls/180p/playlist.m3u8"]
    for uri in uris:
        playlist = (master.parent / uri).read_text()
        assert "#EXT-X-ENDLIST" in playlist
        assert playlist.count("#EXTINF") == media.DURATION_S // media.SEGMENT_S
    assert all("RESOLUTION=" in line for line in lines if line.startswith("#EXT-X-STREAM-INF"))


async def test_keys_file_is_what_the_license_broker_loads(content: media.MediaManifest) -> None:
    doc = json.loads(content.keys_file.read_text())
    assert doc == media.keys_document(content.videos)
    store = MemoryKeyStore.from_file(content.keys_file)
    for video_id, video in content.videos.items():
        loaded = await store.fetch(video_id)
        assert {k.kid.hex(): (k.key.hex(), k.track.name) for k in loaded.keys} == {
            k.kid: (k.key, k.track) for k in video.keys
        }
    assert {v.tier for v in content.videos.values()} == {"basic", "premium"}
    # Deterministic: the same derivation gives the same keys; videos never share a key.
    assert media.derive_keys(media.SPECS[0]) == content.videos["demo"].keys
    all_keys = [k.key for v in content.videos.values() for k in v.keys]
    assert len(set(all_keys)) == len(all_keys)


def test_generation_is_skipped_while_up_to_date_and_reproducible(
    content: media.MediaManifest,
) -> None:
    before = {p.relative_to(content.root): p.read_bytes() for p in content.root.rglob("*.*")}
    again = media.generate(content.root)
    assert not again.generated
    assert again.stamp == content.stamp

    (content.root / "stamp.json").write_text(json.dumps({"stamp": "an older generator"}))
    redone = media.generate(content.root)
    assert redone.generated
    after = {p.relative_to(content.root): p.read_bytes() for p in content.root.rglob("*.*")}
    assert after.keys() == before.keys()
    assert [p for p in before if before[p] != after[p]] == []  # byte-identical output


async def test_keys_load_into_vault_where_the_broker_reads_them(
    content: media.MediaManifest, vault_server: VaultServer
) -> None:
    written = await asyncio.to_thread(
        media.load_keys_into_vault, content, url=vault_server.url, token=vault_server.token
    )
    assert written == [
        "secret/playback/keys/demo",
        "secret/playback/keys/demo-uhd",
        "secret/playback/keys/live-demo",  # the live channel's rotating AES-128 keys
    ]
    store = VaultKeyStore(
        vault_server.url,
        vault_server.token,
        mount="secret",
        path_template="playback/keys/{videoId}",
        timeout=2.0,
    )
    try:
        loaded = await store.fetch("demo-uhd")
    finally:
        await store.close()
    video = content.videos["demo-uhd"]
    assert {k.kid.hex() for k in loaded.keys} == {k.kid for k in video.keys}
    assert {k.track.name for k in loaded.keys} == {"UHD", "AUDIO"}
