"""The one interface every DRM provider adapter implements, and what they share.

The broker has decided *whether* and *what* (the entitled keys and the policy) before it calls a
provider; the adapter only speaks the provider's wire format: sign or authorize, forward the
challenge, and turn the answer into license bytes or a :mod:`license_broker.errors` error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from license_broker.errors import ProviderBadResponse, ProviderRejected, ProviderUnavailable
from license_broker.http import ProviderHTTP, Reply
from license_broker.keysystems import KeySystem
from license_broker.model import ContentKey
from license_broker.policy import LicensePolicy


@dataclass(frozen=True, slots=True)
class LicenseContext:
    """Everything an adapter may put into its provider request."""

    key_system: KeySystem
    video_id: str
    user_id: str
    keys: tuple[ContentKey, ...] = field(repr=False)
    policy: LicensePolicy
    asset_id: str | None = None
    request_headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def content_id(self) -> str:
        return self.asset_id or self.video_id


@dataclass(frozen=True, slots=True)
class ProviderLicense:
    body: bytes
    content_type: str = "application/octet-stream"


class LicenseProvider(Protocol):
    """A provider adapter for one key system."""

    name: str
    key_system: KeySystem

    async def start(self) -> None:
        """Open and warm the connection pool."""
        ...

    async def close(self) -> None: ...

    async def acquire(self, challenge: bytes, ctx: LicenseContext) -> ProviderLicense:
        """Exchange a challenge for a license; raises ProviderError subclasses."""
        ...

    async def certificate(self) -> bytes:
        """The key system's certificate (Widevine service certificate, FairPlay FPS
        certificate); raises UnsupportedKeySystem when the key system has none."""
        ...

    def breaker_state(self) -> str: ...


def check_status(reply: Reply, provider: str) -> None:
    """Map HTTP statuses: 5xx is a provider failure, other non-2xx a refusal."""
    if 200 <= reply.status < 300:
        return
    if reply.status >= 500:
        raise ProviderUnavailable(f"{provider} answered HTTP {reply.status}")
    raise ProviderRejected(
        f"{provider} refused with HTTP {reply.status}", providerStatus=reply.status
    )


def require_body(reply: Reply, provider: str) -> bytes:
    if not reply.body:
        raise ProviderBadResponse(f"{provider} answered an empty body")
    return reply.body


class PooledProvider:
    """The lifecycle every HTTP provider adapter shares: its pre-warmed pool and breaker."""

    _http: ProviderHTTP

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    def breaker_state(self) -> str:
        return self._http.breaker.state.name.lower()


class CertificateCache:
    """Caches one certificate for ``ttl`` seconds; concurrent misses share one fetch."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._value: bytes | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, load: Callable[[], Awaitable[bytes]]) -> bytes:
        if self._value is not None and self._clock() - self._fetched_at < self._ttl:
            return self._value
        async with self._lock:
            if self._value is not None and self._clock() - self._fetched_at < self._ttl:
                return self._value
            try:
                value = await load()
            except Exception:
                if self._value is not None:
                    return self._value  # a stale certificate beats none
                raise
            self._value, self._fetched_at = value, self._clock()
            return value
