"""REDIS_URL: the one parser (three shapes, good and bad URLs) and the factory's clients."""

from __future__ import annotations

import io

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from playback_drm.redisconn import (
    RedisOptions,
    RedisTarget,
    env_redis,
    open_redis,
    parse_redis_url,
    redact,
)
from playback_drm.runtime import EXIT_CONFIG, run_service
from playback_drm.settings import ConfigError

GOOD: list[tuple[str, dict[str, object]]] = [
    ("redis://127.0.0.1:6379/0", {"shape": "single", "tls": False}),
    ("rediss://:pw@redis.example:6380/2", {"shape": "single", "tls": True}),
    ("REDIS://localhost", {"shape": "single"}),
    ("unix:///run/redis.sock?db=1", {"shape": "single"}),
    (
        "redis+sentinel://s1:26379,s2:26380,s3/mymaster",
        {
            "shape": "sentinel",
            "hosts": (("s1", 26379), ("s2", 26380), ("s3", 26379)),
            "service": "mymaster",
            "db": 0,
            "password": None,
            "tls": False,
        },
    ),
    (
        "redis+sentinel://:s%40cret@10.0.0.1:26379,[::1]:26380/cache?db=3",
        {
            "hosts": (("10.0.0.1", 26379), ("::1", 26380)),
            "service": "cache",
            "db": 3,
            "password": "s@cret",
            "username": None,
        },
    ),
    (
        "rediss+sentinel://app:pw@s1:26379/mymaster?sentinel_password=sp&ssl_ca_certs=/ca.pem",
        {
            "shape": "sentinel",
            "tls": True,
            "username": "app",
            "password": "pw",
            "sentinel_password": "sp",
            "ssl_ca_certs": "/ca.pem",
        },
    ),
    (
        "redis+cluster://h1:7000,h2:7001,h3:7002",
        {
            "shape": "cluster",
            "hosts": (("h1", 7000), ("h2", 7001), ("h3", 7002)),
            "tls": False,
            "db": 0,
        },
    ),
    ("redis+cluster://node/", {"hosts": (("node", 6379),)}),
    ("rediss+cluster://:pw@h1:7000/0", {"shape": "cluster", "tls": True, "password": "pw"}),
]

BAD: list[tuple[str, str]] = [
    ("localhost:6379", "must start with redis://"),
    ("http://redis:6379", "must start with redis://"),
    ("redis+sentinal://s1:26379/mymaster", "must start with redis://"),
    ("redis://h:notaport/0", "not a Redis URL"),
    ("redis://h:6379/zero", "not a Redis URL"),
    ("redis+sentinel://s1:26379,s2:26379", "names no Sentinel service"),
    ("redis+sentinel://s1:26379/", "names no Sentinel service"),
    ("redis+sentinel://s1:26379/a/b", "names no Sentinel service"),
    ("redis+sentinel://s1:26379,,s2/mymaster", "empty host"),
    ("redis+sentinel://s1:99999/mymaster", "not a TCP port"),
    ("redis+sentinel://s1:port/mymaster", "not a TCP port"),
    ("redis+sentinel://s1/mymaster?db=-1", "db must be a number"),
    ("redis+sentinel://s1/mymaster?db=1&db=2", "given twice"),
    ("redis+sentinel://s1/mymaster?ssl_ca_certs=/ca.pem", "unknown parameter"),
    ("redis+sentinel://s1/mymaster?retry=9", "unknown parameter"),
    ("redis+cluster://h1:7000/1", "database 0 only"),
    ("redis+cluster://h1:7000?db=0", "unknown parameter"),
    ("redis+cluster://", "empty host"),
    ("redis+cluster://h1:7000#x", "fragment"),
    ("redis+cluster://[::1:7000", "not a URL"),
    ("redis+cluster://[::1]x:7000", "unreadable host"),
]


@pytest.mark.parametrize(("url", "expected"), GOOD, ids=[u for u, _ in GOOD])
def test_good_urls(url: str, expected: dict[str, object]) -> None:
    target = parse_redis_url(url)
    for name, value in expected.items():
        assert getattr(target, name) == value, name
    assert target.url == url


@pytest.mark.parametrize(("url", "message"), BAD, ids=[u for u, _ in BAD])
def test_bad_urls_name_the_setting(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_redis_url(url)
    assert str(caught.value).startswith("REDIS_URL")


def test_the_password_never_shows() -> None:
    url = "redis+sentinel://:hunter2@s1:26379/?sentinel_password=topsecret"
    with pytest.raises(ConfigError) as caught:
        parse_redis_url(url)
    assert "hunter2" not in str(caught.value)
    assert "topsecret" not in str(caught.value)
    with pytest.raises(ConfigError) as single:
        parse_redis_url("redis://:hunter2@h:port/0")
    assert "hunter2" not in str(single.value)
    target = parse_redis_url("redis+cluster://u:hunter2@h1:7000")
    assert "hunter2" not in repr(target)
    assert redact("rediss://u:pw@h:1/0") == "rediss://u:***@h:1/0"


def test_env_reader() -> None:
    assert env_redis({}) is None
    assert env_redis({"REDIS_URL": " "}) is None
    target = env_redis({"REDIS_URL": "redis+cluster://h:7000"})
    assert isinstance(target, RedisTarget)
    assert target.shape == "cluster"
    with pytest.raises(ConfigError, match="CACHE_REDIS"):
        env_redis({"CACHE_REDIS": "nope"}, "CACHE_REDIS")


@pytest.mark.parametrize("service", ["authz", "broker"])
def test_both_services_refuse_a_bad_url_at_start_up(service: str) -> None:
    """A bad REDIS_URL stops the process with a configuration error naming it, no traceback."""
    from authz.config import AuthzConfig
    from authz.server import serve as serve_authz
    from license_broker.app import serve as serve_broker
    from license_broker.config import BrokerConfig

    env = {
        "JWKS_URL": "http://127.0.0.1:1/jwks.json",
        "JWT_ISSUER": "https://auth.test",
        "BILLING_URL": "http://127.0.0.1:1",
        "URL_SIGNING_KEYS": "k1:" + "A" * 43,
        "REDIS_URL": "redis+sentinel://:hunter2@s1:26379",
    }
    err = io.StringIO()
    if service == "authz":
        code = run_service("authz", AuthzConfig.from_env, serve_authz, env=env, stderr=err)
    else:
        code = run_service("broker", BrokerConfig.from_env, serve_broker, env=env, stderr=err)
    assert code == EXIT_CONFIG
    message = err.getvalue()
    assert message.startswith(f"{service}: configuration error: REDIS_URL names no Sentinel")
    assert "Traceback" not in message
    assert "hunter2" not in message


async def test_the_factory_builds_redis_py_clients() -> None:
    """No I/O until first use; each shape gets redis-py's own client."""
    opts = RedisOptions(max_connections=8, timeout=0.1)
    single = open_redis(parse_redis_url("redis://127.0.0.1:1/0"), opts)
    sentinel = open_redis(parse_redis_url("redis+sentinel://127.0.0.1:1,127.0.0.1:2/m"), opts)
    cluster = open_redis(parse_redis_url("redis+cluster://127.0.0.1:1"), opts)
    try:
        assert isinstance(single.client, aioredis.Redis)
        assert isinstance(sentinel.client, aioredis.Redis)
        assert isinstance(cluster.client, RedisCluster)
        for shared in (single, sentinel, cluster):
            assert await shared.ping() is False  # nothing listens: a False, not an exception
    finally:
        for shared in (single, sentinel, cluster):
            await shared.aclose()
