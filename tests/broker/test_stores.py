"""The broker against real OpenBao (Vault API) and real Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import redis.asyncio as aioredis

from devstack.emulators.drm import DrmEmulatorConfig
from license_broker.errors import UnknownVideo
from license_broker.keys import VaultKeyStore
from playback_drm.events import LICENSE_ISSUED, MemorySink
from tests.broker.conftest import (
    KEYS_DOC,
    KID_HD,
    BrokerFactory,
    problem,
    viewer,
)
from tests.broker.test_app import ck_request, json_api, jwk_keys
from tests.support.procs import free_port
from tests.support.servers import VaultServer, start_vault

WV_CHALLENGE = b"\x08\x01\x12\x04wv-1"


def write_keys(server: VaultServer, prefix: str, videos: dict[str, object]) -> None:
    client = hvac.Client(url=server.url, token=server.token)
    try:
        for video_id, spec in videos.items():
            client.secrets.kv.v2.create_or_update_secret(
                path=f"{prefix}/{video_id}", secret=spec, mount_point="secret"
            )
    finally:
        client.adapter.close()


def vault_env(server: VaultServer, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "VAULT_ADDR": server.url,
        "VAULT_TOKEN": server.token,
        "VAULT_KEY_PATH": prefix + "/{videoId}",
        "VAULT_PROVIDER_PATH": prefix + "-providers",
        "VAULT_TIMEOUT": "1",
        **extra,
    }


async def test_vault_key_store_reads_kv_v2(vault_server: VaultServer) -> None:
    write_keys(vault_server, "t-store", {"movie": KEYS_DOC["videos"]["movie"]})
    store = VaultKeyStore(
        vault_server.url,
        vault_server.token,
        mount="secret",
        path_template="t-store/{videoId}",
        timeout=2,
    )
    try:
        keys = await store.fetch("movie")
        assert bytes.fromhex(KID_HD) in keys.by_kid
        assert "key=" not in repr(keys.keys[0])  # key material never in a repr
        with pytest.raises(UnknownVideo):
            await store.fetch("missing")
        assert await store.ping()
    finally:
        await store.close()


async def test_provider_credentials_come_from_vault(
    vault_server: VaultServer, make_broker: BrokerFactory, emulator_config: DrmEmulatorConfig
) -> None:
    write_keys(vault_server, "t-creds", {"movie": KEYS_DOC["videos"]["movie"]})
    client = hvac.Client(url=vault_server.url, token=vault_server.token)
    try:
        client.secrets.kv.v2.create_or_update_secret(
            path="t-creds-providers",
            secret={"widevine_signing_key": emulator_config.widevine_key.hex()},
            mount_point="secret",
        )
    finally:
        client.adapter.close()
    # The environment holds a wrong key; the one in Vault wins.
    env = vault_env(vault_server, "t-creds", WIDEVINE_SIGNING_KEY="22" * 32)
    broker = await make_broker(env, memory_keys=False)
    resp = await broker.post(
        "/drm/license/com.widevine.alpha?videoId=movie", data=WV_CHALLENGE, headers=viewer()
    )
    assert resp.status == 200, await resp.text()


@pytest.fixture
def own_vault(tmp_path: Path) -> Iterator[VaultServer]:
    """A Vault this test may stop (the session one is shared)."""
    server = start_vault(tmp_path)
    yield server
    server.process.stop()


async def test_vault_outage_serves_cached_keys_and_fails_new_videos(
    own_vault: VaultServer, make_broker: BrokerFactory
) -> None:
    movie = KEYS_DOC["videos"]["movie"]
    write_keys(own_vault, "t-outage", {"movie": movie, "other": movie})
    # KEY_CACHE_TTL=0: every later lookup is stale and refreshes from Vault in the background,
    # so this exercises the stale path, not just a fresh cache.
    env = vault_env(own_vault, "t-outage", KEY_CACHE_TTL="0", KEY_CACHE_MAX_STALE="600")
    broker = await make_broker(env, memory_keys=False)
    first = await broker.post(
        "/drm/license/org.w3.clearkey?videoId=movie", data=ck_request(KID_HD), headers=viewer()
    )
    assert first.status == 200

    own_vault.process.stop()

    for user in ("alice", "erin", "frank"):  # new users: no license cache hit, keys from memory
        resp = await broker.post(
            "/drm/license/org.w3.clearkey?videoId=movie",
            data=ck_request(KID_HD),
            headers=viewer(user),
        )
        assert resp.status == 200, await resp.text()
        assert KID_HD in jwk_keys(await resp.json())
    new = await broker.post(
        "/drm/license/org.w3.clearkey?videoId=other", data=ck_request(KID_HD), headers=viewer()
    )
    assert new.status == 503
    assert (await problem(new))["code"] == "key_store_unavailable"
    health = await (await broker.get("/health")).json()
    assert health["keyStore"]["reachable"] is False
    assert health["keyStore"]["cachedVideos"] == 1


async def test_a_hung_vault_fails_a_new_video_fast_with_the_default_timeout(
    own_vault: VaultServer, make_broker: BrokerFactory
) -> None:
    """OpenBao stopped mid-flight (SIGSTOP: connections open, nothing answers): a video whose
    keys are not cached is a 503 ``key_store_unavailable`` within ``VAULT_TIMEOUT`` (0.5 s by
    default), while a cached one keeps licensing."""
    movie = KEYS_DOC["videos"]["movie"]
    write_keys(own_vault, "t-hung", {"movie": movie, "other": movie})
    env = vault_env(own_vault, "t-hung")
    del env["VAULT_TIMEOUT"]  # the default
    broker = await make_broker(env, memory_keys=False)
    cached = await broker.post(
        "/drm/license/org.w3.clearkey?videoId=movie", data=ck_request(KID_HD), headers=viewer()
    )
    assert cached.status == 200
    assert own_vault.process.proc is not None
    os.kill(own_vault.process.proc.pid, signal.SIGSTOP)
    try:
        loop = asyncio.get_running_loop()
        for attempt in range(2):  # a fresh connection, then the pooled one
            started = loop.time()
            new = await broker.post(
                "/drm/license/org.w3.clearkey?videoId=other",
                data=ck_request(KID_HD),
                headers=viewer(f"user-{attempt}"),
            )
            elapsed = loop.time() - started
            assert new.status == 503
            assert (await problem(new))["code"] == "key_store_unavailable"
            # 0.5 s; a hung OpenBao never answers, so anything bounded is the timeout (room for
            # a busy box)
            assert elapsed < 3.0, f"{elapsed:.2f}s to fail"
        again = await broker.post(
            "/drm/license/org.w3.clearkey?videoId=movie",
            data=ck_request(KID_HD),
            headers=viewer("someone-new"),
        )
        assert again.status == 200
    finally:
        os.kill(own_vault.process.proc.pid, signal.SIGCONT)


# ---------------------------------------------------------------------------------- Redis


async def test_redis_license_cache_answers_a_retry_with_the_same_license(
    any_redis_url: str, make_broker: BrokerFactory
) -> None:
    """Each shape of REDIS_URL: one primary, Sentinel, Cluster."""
    redis_url = any_redis_url
    sink = MemorySink()
    broker = await make_broker({"REDIS_URL": redis_url}, events=sink)
    request = json_api("movie", ck_request(KID_HD))
    first = await (await broker.post("/drm/license", json=request, headers=viewer())).json()
    # A second broker replica shares the cache through Redis.
    replica = await make_broker({"REDIS_URL": redis_url}, events=sink)
    again = await (await replica.post("/drm/license", json=request, headers=viewer())).json()
    assert again["licenseId"] == first["licenseId"]
    assert base64.b64decode(again["license"]) == base64.b64decode(first["license"])
    assert [e.data["cached"] for e in sink.events if e.type == LICENSE_ISSUED] == [False, True]
    health = await (await replica.get("/health")).json()
    assert health["licenseCache"] == {"reachable": True, "backend": "redis"}


async def test_redis_cache_never_stores_clearkey_key_material(
    redis_url: str, make_broker: BrokerFactory
) -> None:
    broker = await make_broker({"REDIS_URL": redis_url})
    resp = await broker.post(
        "/drm/license/org.w3.clearkey?videoId=movie", data=ck_request(KID_HD), headers=viewer()
    )
    assert resp.status == 200
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter("pdrm:lic:*")]
        assert len(keys) == 1
        stored = await client.get(keys[0])
    finally:
        await client.aclose()
    assert isinstance(stored, bytes)
    assert KEYS_DOC["videos"]["movie"]["keys"][1]["key"] not in stored.decode()
    assert json.loads(stored)["kids"] == [KID_HD]


async def test_unreachable_redis_does_not_stop_licensing(make_broker: BrokerFactory) -> None:
    broker = await make_broker({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    for user in ("hank", "hank", "ivy", "jo"):
        resp = await broker.post(
            "/drm/license/org.w3.clearkey?videoId=movie",
            data=ck_request(KID_HD),
            headers=viewer(user, "basic", entitlement='{"maxStreams":1}'),
        )
        assert resp.status == 200
    health = await (await broker.get("/health")).json()
    assert health["status"] == "degraded"
    assert health["licenseCache"]["reachable"] is False


async def test_tiered_license_cache_answers_repeats_in_process(redis_url: str) -> None:
    """The in-process copy answers a repeat without Redis, is filled by both get and add, and
    never outlives the license; first writer wins across replicas as before."""
    from license_broker.cache import (
        CachedLicense,
        MemoryLicenseCache,
        RedisLicenseCache,
        TieredLicenseCache,
    )

    client = aioredis.Redis.from_url(redis_url)
    now = [1_000_000.0]
    try:
        shared = RedisLicenseCache(client)
        one = TieredLicenseCache(MemoryLicenseCache(10), shared, 10.0, wall_clock=lambda: now[0])
        two = TieredLicenseCache(MemoryLicenseCache(10), shared, 10.0, wall_clock=lambda: now[0])
        lic = CachedLicense("lic-1", now[0] + 3600, "org.w3.clearkey", "application/json")
        other = CachedLicense("lic-2", now[0] + 3600, "org.w3.clearkey", "application/json")
        assert await one.add("pdrm:lic:t1", lic, 300) == lic
        assert await two.add("pdrm:lic:t1", other, 300) == lic  # first writer wins
        await client.delete("pdrm:lic:t1")
        # both replicas kept a copy: they answer without Redis
        assert await one.get("pdrm:lic:t1") == lic
        assert await two.get("pdrm:lic:t1") == lic
        # a copy never outlives the license itself
        short = CachedLicense("lic-3", now[0] + 1, "org.w3.clearkey", "application/json")
        await client.set("pdrm:lic:t3", short.to_bytes(), ex=300)
        fresh = TieredLicenseCache(MemoryLicenseCache(10), shared, 10.0, wall_clock=lambda: now[0])
        assert await fresh.get("pdrm:lic:t3") == short
        await client.delete("pdrm:lic:t3")
        assert await fresh.get("pdrm:lic:t3") == short  # from the copy
        expired = TieredLicenseCache(
            MemoryLicenseCache(10), shared, 10.0, wall_clock=lambda: now[0] + 2
        )
        await client.set("pdrm:lic:t3", short.to_bytes(), ex=300)
        assert await expired.get("pdrm:lic:t3") == short
        await client.delete("pdrm:lic:t3")
        assert await expired.get("pdrm:lic:t3") is None  # expired license: no copy was kept
    finally:
        await client.aclose()
