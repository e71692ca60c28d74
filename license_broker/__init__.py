"""The license broker: DRM licenses (ClearKey, Widevine, PlayReady, FairPlay) and HLS AES-128 keys.

It trusts the identity headers authz sets (``playback_drm.identity``); authz also enforces the
concurrent-stream limits (per playback session, on every key path) before a request gets here.

Layout, from the edge inwards::

    app.py          aiohttp routes, problem+json, lifecycle; ``serve(config, events)``
    service.py      the use cases: issue a license, deliver an HLS key, serve a certificate
    policy.py       entitlement facts -> license policy and granted keys (pure)
    clearkey.py     W3C ClearKey requests and JWK sets (pure)
    keysystems.py   key system names and inference from a challenge (pure)
    keys.py         content key stores: Vault KV v2, memory, and the bounded cache in front
    cache.py        issued-license cache: Redis or in-memory TTL LRU
    providers/      Widevine proxy, PlayReady SOAP, FairPlay KSM, Axinom adapters
    http.py         pre-warmed aiohttp pools per provider, deadline, retries, circuit breaker
    breaker.py      circuit breaker and backoff (pure)
    config.py       ``BrokerConfig.from_env`` (every environment variable is documented there)
    errors.py       the error tree and its stable codes
"""

from __future__ import annotations

from license_broker.config import BrokerConfig
from license_broker.errors import BrokerError

__all__ = ["BrokerConfig", "BrokerError"]
