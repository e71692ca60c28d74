"""Content key stores: Vault (KV v2 through hvac), memory, and the bounded cache in front of them.

    KeyStore (protocol)       fetch(video_id) -> VideoKeys; UnknownVideo / KeyStoreUnavailable
    ├── MemoryKeyStore        a fixed mapping (KEYS_FILE, the embedded demo keys, tests)
    ├── VaultKeyStore         one KV v2 secret per video; hvac is blocking, so calls run in a thread
    └── CachedKeyStore        in-process cache with a fresh TTL, stale-while-revalidate up to a
                              maximum stale age, a short negative cache and single-flight loads

A Vault blip does not stop licensing: an entry older than ``ttl`` is served while one background
refresh runs; only entries older than ``max_stale`` need Vault synchronously. A video Vault no
longer has is dropped at the next refresh (revocation within ``ttl`` plus one request). hvac and
requests errors never leave this module. Keys are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import hvac
import hvac.exceptions

from license_broker import metrics
from license_broker.errors import KeyStoreUnavailable, UnknownVideo
from license_broker.model import VideoKeys, parse_video_keys

log = logging.getLogger(__name__)


class KeyStore(Protocol):
    async def fetch(self, video_id: str) -> VideoKeys:
        """The video's keys; raises UnknownVideo or KeyStoreUnavailable."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryKeyStore:
    def __init__(self, videos: Mapping[str, VideoKeys]) -> None:
        self._videos = dict(videos)

    @classmethod
    def from_document(cls, doc: Any) -> MemoryKeyStore:
        """``{"videos": {"<id>": {"keys": [...]}}}`` (or the mapping of videos itself)."""
        videos = doc.get("videos", doc) if isinstance(doc, Mapping) else None
        if not isinstance(videos, Mapping):
            raise ValueError("key document must map video ids to key lists")
        return cls(
            {
                vid: parse_video_keys(vid, spec)
                for vid, spec in videos.items()
                if not vid.startswith("_")
            }
        )

    @classmethod
    def from_file(cls, path: Path) -> MemoryKeyStore:
        return cls.from_document(json.loads(path.read_text(encoding="utf-8")))

    def put(self, keys: VideoKeys) -> None:
        self._videos[keys.video_id] = keys

    async def fetch(self, video_id: str) -> VideoKeys:
        found = self._videos.get(video_id)
        if found is None:
            raise UnknownVideo(f"no keys for video {video_id!r}")
        return found

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


# requests' exceptions (connection refused, timeouts) derive from OSError.
_VAULT_DOWN = (hvac.exceptions.VaultError, OSError)


class VaultKeyStore:
    """Keys in Vault KV v2: ``{mount}/data/{path with videoId}`` holds ``{"keys": [...]}``."""

    def __init__(
        self, addr: str, token: str, *, mount: str, path_template: str, timeout: float
    ) -> None:
        self._client = hvac.Client(url=addr, token=token, timeout=timeout)
        self._mount = mount
        self._template = path_template
        self._timeout = timeout

    async def read_secret(self, path: str) -> dict[str, Any] | None:
        """The data of one KV v2 secret, ``None`` when absent; KeyStoreUnavailable otherwise,
        also when Vault has not answered within ``VAULT_TIMEOUT`` (requests' own timeout counts
        connecting and each read separately: a hung Vault could hold a viewer twice as long)."""
        try:
            async with asyncio.timeout(self._timeout):
                resp = await asyncio.to_thread(
                    self._client.secrets.kv.v2.read_secret_version,
                    path=path,
                    mount_point=self._mount,
                    raise_on_deleted_version=True,
                )
        except hvac.exceptions.InvalidPath:
            return None
        except TimeoutError:
            # the worker thread ends on requests' own timeout; nobody waits for it
            raise KeyStoreUnavailable(f"Vault did not answer within {self._timeout:g}s") from None
        except _VAULT_DOWN as exc:
            raise KeyStoreUnavailable(f"Vault unavailable ({type(exc).__name__})") from exc
        data = resp.get("data", {}).get("data") if isinstance(resp, dict) else None
        if not isinstance(data, dict):
            raise KeyStoreUnavailable("Vault answered an unexpected document")
        return data

    async def fetch(self, video_id: str) -> VideoKeys:
        data = await self.read_secret(self._template.format(videoId=video_id))
        if data is None:
            raise UnknownVideo(f"no keys for video {video_id!r}")
        try:
            return parse_video_keys(video_id, data)
        except ValueError as exc:
            log.error("malformed key secret: %s", exc, extra={"videoId": video_id})
            raise KeyStoreUnavailable(f"keys of video {video_id!r} are malformed") from None

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.to_thread(self._client.is_authenticated))
        except _VAULT_DOWN:
            return False

    async def close(self) -> None:
        await asyncio.to_thread(self._client.adapter.close)


@dataclass(slots=True)
class _Entry:
    fetched_at: float
    keys: VideoKeys


class CachedKeyStore:
    """Bounded in-memory cache in front of a :class:`KeyStore` (see the module docstring)."""

    def __init__(
        self,
        source: KeyStore,
        *,
        ttl: float,
        max_stale: float,
        negative_ttl: float,
        max_videos: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._ttl = ttl
        self._max_stale = max(max_stale, ttl)
        self._negative_ttl = negative_ttl
        self._max = max_videos
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._negative: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Future[VideoKeys]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self.last_refresh_error: str | None = None

    @property
    def source(self) -> KeyStore:
        return self._source

    def __len__(self) -> int:
        return len(self._entries)

    async def fetch(self, video_id: str) -> VideoKeys:
        now = self._clock()
        entry = self._entries.get(video_id)
        if entry is not None:
            age = now - entry.fetched_at
            if age <= self._ttl:
                metrics.KEY_LOOKUP["hit"].inc()
                metrics.key_cache(True)
                return entry.keys
            if age <= self._max_stale:
                metrics.KEY_LOOKUP["stale"].inc()
                metrics.key_cache(True)
                self._refresh_in_background(video_id)
                return entry.keys
        expires = self._negative.get(video_id)
        if expires is not None:
            if expires > now:
                metrics.KEY_LOOKUP["unknown"].inc()
                metrics.key_cache(True)
                raise UnknownVideo(f"no keys for video {video_id!r}")
            del self._negative[video_id]
        metrics.KEY_LOOKUP["miss"].inc()
        metrics.key_cache(False)
        return await self._load(video_id)

    async def _load(self, video_id: str) -> VideoKeys:
        pending = self._inflight.get(video_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[VideoKeys] = asyncio.get_running_loop().create_future()
        self._inflight[video_id] = future
        try:
            keys = await self._source.fetch(video_id)
        except UnknownVideo as exc:
            self._forget(video_id)
            future.set_exception(exc)
            future.exception()
            raise
        except KeyStoreUnavailable as exc:
            metrics.KEY_LOOKUP["error"].inc()
            future.set_exception(exc)
            future.exception()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        else:
            self._store(video_id, keys)
            future.set_result(keys)
            return keys
        finally:
            del self._inflight[video_id]

    def _store(self, video_id: str, keys: VideoKeys) -> None:
        self._negative.pop(video_id, None)
        self._entries[video_id] = _Entry(self._clock(), keys)
        self._entries.move_to_end(video_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def _forget(self, video_id: str) -> None:
        self._entries.pop(video_id, None)
        if self._negative_ttl > 0:
            if len(self._negative) >= self._max:
                self._negative.clear()
            self._negative[video_id] = self._clock() + self._negative_ttl

    def _refresh_in_background(self, video_id: str) -> None:
        if video_id in self._refreshing or video_id in self._inflight:
            return
        task = asyncio.get_running_loop().create_task(self._refresh(video_id))
        self._refreshing[video_id] = task

    async def _refresh(self, video_id: str) -> None:
        try:
            await self._load(video_id)
            self.last_refresh_error = None
        except UnknownVideo:
            log.warning(
                "video no longer in the key store; keys dropped", extra={"videoId": video_id}
            )
        except KeyStoreUnavailable as exc:
            self.last_refresh_error = exc.detail
            log.warning(
                "key store refresh failed, serving cached keys: %s",
                exc.detail,
                extra={"videoId": video_id},
            )
        finally:
            self._refreshing.pop(video_id, None)

    async def ping(self) -> bool:
        return await self._source.ping()

    async def close(self) -> None:
        for task in list(self._refreshing.values()):
            task.cancel()
        if self._refreshing:
            await asyncio.gather(*self._refreshing.values(), return_exceptions=True)
        await self._source.close()
