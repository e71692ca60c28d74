"""Fixtures of the license broker tests: the DRM provider emulator, a test key store, and a
factory of broker clients (aiohttp TestClient on a real loopback port)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from devstack.emulators.drm import DrmEmulatorConfig, provider_env
from devstack.emulators.drm import build_app as build_emulator
from license_broker.app import build_app
from license_broker.config import BrokerConfig
from license_broker.keys import KeyStore, MemoryKeyStore
from playback_drm.events import EventSink, MemorySink

Client = TestClient[web.Request, web.Application]

# Test content: one video with a key per track type, one UHD-only video.
KID_SD = "00112233445566778899aabbccddeef1"
KID_HD = "00112233445566778899aabbccddeef2"
KID_UHD = "00112233445566778899aabbccddeef3"
KID_AUDIO = "00112233445566778899aabbccddeef4"
KEY_SD = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
KEY_HD = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
KEY_UHD = "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
KEY_AUDIO = "d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
IV_HD = "0f0e0d0c0b0a09080706050403020100"
KID_UHD_ONLY = "ffeeddccbbaa99887766554433221100"
KEY_UHD_ONLY = "e0e1e2e3e4e5e6e7e8e9eaebecedeeef"

KEYS_DOC: dict[str, Any] = {
    "videos": {
        "movie": {
            "keys": [
                {"kid": KID_SD, "key": KEY_SD, "track": "SD"},
                {"kid": KID_HD, "key": KEY_HD, "track": "HD", "iv": IV_HD},
                {"kid": KID_UHD, "key": KEY_UHD, "track": "UHD"},
                {"kid": KID_AUDIO, "key": KEY_AUDIO, "track": "AUDIO"},
            ]
        },
        "uhd-movie": {"keys": [{"kid": KID_UHD_ONLY, "key": KEY_UHD_ONLY, "track": "UHD"}]},
    }
}


def viewer(
    user: str = "alice",
    plan: str | None = "premium",
    *,
    video: str | None = None,
    session: str | None = None,
    entitlement: str | None = None,
) -> dict[str, str]:
    """The headers authz sets on an admitted request."""
    headers = {"x-playback-user": user}
    if plan is not None:
        headers["x-playback-plan"] = plan
    if video is not None:
        headers["x-playback-video"] = video
    if session is not None:
        headers["x-playback-session"] = session
    if entitlement is not None:
        headers["x-playback-entitlement"] = entitlement
    return headers


async def problem(resp: ClientResponse) -> dict[str, Any]:
    assert resp.content_type == "application/problem+json", await resp.text()
    doc: dict[str, Any] = await resp.json(content_type=None)
    assert doc["status"] == resp.status
    return doc


@pytest.fixture
def emulator_config() -> DrmEmulatorConfig:
    return DrmEmulatorConfig()


@pytest.fixture
async def drm_emulator(emulator_config: DrmEmulatorConfig) -> AsyncIterator[Client]:
    """The emulator on a loopback port; its client drives the control API."""
    client = TestClient(TestServer(build_emulator(emulator_config)))
    await client.start_server()
    yield client
    await client.close()


BrokerFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_broker(
    drm_emulator: Client, emulator_config: DrmEmulatorConfig
) -> AsyncIterator[BrokerFactory]:
    clients: list[Client] = []
    base = str(drm_emulator.make_url("")).rstrip("/")

    async def make(
        env: Mapping[str, str] | None = None,
        *,
        key_store: KeyStore | None = None,
        events: EventSink | None = None,
        memory_keys: bool = True,
    ) -> Client:
        full = {
            **provider_env(base, emulator_config),
            "PROVIDER_TIMEOUT": "1.0",
            "PROVIDER_WARM_CONNECTIONS": "1",
            "PROVIDER_KEEPWARM_INTERVAL": "0",
            "PROVIDER_RETRY_BACKOFF": "0.001",
            **(env or {}),
        }
        store = key_store
        if store is None and memory_keys:
            store = MemoryKeyStore.from_document(KEYS_DOC)
        config = BrokerConfig.from_env(full)
        client = TestClient(TestServer(build_app(config, events=events, key_store=store)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def events() -> MemorySink:
    return MemorySink()


@pytest.fixture
async def broker(make_broker: BrokerFactory, events: MemorySink) -> Client:
    """A broker with the test keys, in-memory caches and every provider on the emulator."""
    return await make_broker(events=events)
