"""REDIS_URL's credentials and database reach the nodes they are for, on real Sentinel and Cluster
deployments that require passwords (the sentinels one of their own): what production runs, since
``REDIS_URL`` is a Secret for its password."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from authz.entitlement import redis_client
from authz.ratelimit import RateLimitBackendUnavailable, RedisSlidingWindow
from tests.support.ha import start_cluster, start_sentinel_set

DATA_SECRET = "data-s3cret"
SENTINEL_SECRET = "watch-s3cret"


async def _works(url: str) -> bool:
    shared = redis_client(url)
    try:
        if not await shared.ping():
            return False
        window = RedisSlidingWindow(shared.client, 5, 1.0)
        try:
            return (await window.hit("user=cred")).allowed
        except RateLimitBackendUnavailable:
            return False
    finally:
        await shared.aclose()


async def test_sentinel_passwords_and_database(tmp_path: Path) -> None:
    found = start_sentinel_set(
        tmp_path, replicas=1, sentinels=2, password=DATA_SECRET, sentinel_password=SENTINEL_SECRET
    )
    try:
        url = found.url + "&db=2"
        assert f":{DATA_SECRET}@" in url
        assert f"sentinel_password={SENTINEL_SECRET}" in url
        assert await _works(url)
        with redis.Redis(port=found.primary_port(), password=DATA_SECRET, db=2) as primary:
            assert primary.exists("playback:rl:user=cred")  # in the database the URL names
        assert not await _works(url.replace(DATA_SECRET, "wrong"))
        assert not await _works(url.replace(SENTINEL_SECRET, "wrong"))
        assert not await _works(url.replace(f"?sentinel_password={SENTINEL_SECRET}&", "?"))
    finally:
        found.stop()


async def test_cluster_password(tmp_path: Path) -> None:
    found = start_cluster(tmp_path, masters=3, replicas_each=0, password=DATA_SECRET)
    try:
        assert await _works(found.url)
        assert not await _works(found.url.replace(DATA_SECRET, "wrong"))
        with (  # the nodes do require it
            redis.Redis(port=found.masters[0].port) as anonymous,
            pytest.raises(redis.AuthenticationError),
        ):
            anonymous.ping()
    finally:
        found.stop()
