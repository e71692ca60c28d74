"""A pre-warmed, guarded HTTP client per DRM provider.

Each provider gets its own ``aiohttp.ClientSession`` over a ``TCPConnector`` (pool limit, long
keep-alive, DNS cache). ``start()`` opens ``warm_connections`` connections with a cheap ``HEAD``
request so the first viewer pays no TCP/TLS set-up, and a keep-warm task repeats that while the
pool is idle so keep-alive does not let it go cold.

``call()`` wraps one logical request: the circuit breaker, a deadline covering every attempt
(``provider_timeout``), bounded retries with jittered backoff for failures where the request
surely did not reach the provider or the provider asked for a retry (connection refused/reset,
a stale keep-alive connection, HTTP 503), and a ``parse`` callback run inside the guard so an
unreadable answer counts as a failure while a refusal proves the provider alive. aiohttp errors
never leave this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

import aiohttp
from multidict import CIMultiDictProxy

from license_broker import metrics
from license_broker.breaker import BreakerState, CircuitBreaker, backoff_delay
from license_broker.config import ProviderCallSettings
from license_broker.errors import (
    PROVIDER_FAILURES,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from playback_drm.metrics import OUTCOME_ERROR, OUTCOME_OK, OUTCOME_REJECTED

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES: Final = frozenset({503})
_RETRYABLE_EXC: Final = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError)
_BACKOFF_CAP: Final = 0.5


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class ProviderHTTP:
    """HTTP to one provider (see the module docstring)."""

    def __init__(
        self,
        name: str,
        settings: ProviderCallSettings,
        *,
        warm_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._settings = settings
        self._warm_url = warm_url
        self._clock = clock
        self.breaker = CircuitBreaker(
            failure_threshold=settings.breaker_threshold,
            cooldown=settings.breaker_cooldown,
            on_change=lambda s: metrics.PROVIDERS.set_breaker(name, s == BreakerState.OPEN),
        )
        metrics.PROVIDERS.set_breaker(name, False)
        self._session: aiohttp.ClientSession | None = None
        self._keepwarm: asyncio.Task[None] | None = None
        self._last_used = 0.0

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"provider client {self.name!r} is not started")
        return self._session

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.pool_size,
            limit_per_host=self._settings.pool_size,
            keepalive_timeout=self._settings.keepalive,
            ttl_dns_cache=300,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self._settings.timeout,
                sock_connect=self._settings.connect_timeout,
            ),
            raise_for_status=False,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        await self.warm_up()
        if self._warm_url and self._settings.keepwarm_interval > 0:
            self._keepwarm = asyncio.get_running_loop().create_task(self._keep_warm())

    async def warm_up(self) -> None:
        """Open ``warm_connections`` pooled connections in parallel (best effort)."""
        if not self._warm_url or self._settings.warm_connections <= 0:
            return
        results = await asyncio.gather(
            *(self._ping() for _ in range(self._settings.warm_connections)),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("provider warm-up failed for %s: %s", self.name, type(failed[0]).__name__)
        self._last_used = self._clock()

    async def _ping(self) -> None:
        assert self._warm_url is not None
        async with self.session.head(
            self._warm_url,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=self._settings.timeout),
        ) as resp:
            await resp.read()

    async def _keep_warm(self) -> None:
        interval = self._settings.keepwarm_interval
        while True:
            await asyncio.sleep(interval)
            if self._clock() - self._last_used >= interval:
                with contextlib.suppress(Exception):
                    await self.warm_up()

    async def close(self) -> None:
        if self._keepwarm is not None:
            self._keepwarm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepwarm
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        method: str,
        url: str,
        *,
        parse: Callable[[Reply], T],
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> T:
        """One guarded request; ``parse`` turns the reply into a result or raises a
        :class:`ProviderError` (failures in ``PROVIDER_FAILURES`` feed the breaker)."""
        if not self.breaker.allow():
            exc = ProviderUnavailable(
                f"{self.name} circuit is open",
                retryAfter=round(self.breaker.retry_after, 1),
            )
            metrics.PROVIDERS.observe(self.name, OUTCOME_ERROR, 0.0, exc.code)
            raise exc
        started = self._clock()
        self._last_used = started
        outcome, code = OUTCOME_ERROR, "internal_error"
        try:
            async with asyncio.timeout(self._settings.timeout):
                reply = await self._send(method, url, data, headers, params)
            result = parse(reply)
        except TimeoutError:
            self.breaker.record_failure()
            code = ProviderTimeout.code
            raise ProviderTimeout(
                f"{self.name} did not answer within {self._settings.timeout:g}s"
            ) from None
        except ProviderError as exc:
            if isinstance(exc, PROVIDER_FAILURES):
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
                outcome = OUTCOME_REJECTED
            code = exc.code
            raise
        except BaseException:
            self.breaker.release()
            raise
        else:
            self.breaker.record_success()
            outcome = OUTCOME_OK
            return result
        finally:
            metrics.PROVIDERS.observe(
                self.name,
                outcome,
                self._clock() - started,
                None if outcome == OUTCOME_OK else code,
            )

    async def _send(
        self,
        method: str,
        url: str,
        data: bytes | None,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
    ) -> Reply:
        attempt = 0
        while True:
            try:
                async with self.session.request(
                    method, url, data=data, headers=headers, params=params, allow_redirects=False
                ) as resp:
                    body = await resp.read()
                    reply = Reply(resp.status, resp.headers, body)
            except _RETRYABLE_EXC as exc:
                if attempt >= self._settings.retries:
                    raise ProviderUnavailable(
                        f"{self.name} unreachable ({type(exc).__name__})"
                    ) from None
            except (TimeoutError, aiohttp.ServerTimeoutError):
                raise TimeoutError from None
            except aiohttp.ClientError as exc:
                raise ProviderUnavailable(f"{self.name} failed ({type(exc).__name__})") from None
            else:
                if reply.status not in RETRY_STATUSES or attempt >= self._settings.retries:
                    return reply
            metrics.PROVIDER_RETRIES.labels(self.name).inc()
            await asyncio.sleep(backoff_delay(attempt, self._settings.retry_backoff, _BACKOFF_CAP))
            attempt += 1
