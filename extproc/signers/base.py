"""What every URL signer shares: the request facts it may bind to (:class:`SignContext`), the
:class:`UrlSigner` protocol the signing policy calls, and small URL helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SignContext:
    """Per-manifest facts a signer needs. ``signed_at`` is a window-aligned "now" (``<=`` the
    real time) so that URLs signed within one expiry window are identical."""

    expires_at: int
    signed_at: int
    client_ip: str | None = None
    session_id: str | None = None


class UrlSigner(Protocol):
    """Signs an absolute URL on one CDN host.

    ``prefix``: a token covering the URL's directory is preferred (cache friendly), if the
    format has one. ``template``: the URL is a DASH template (``$Number$`` ...) that the player
    expands, so only a directory-wide token can work; return ``None`` if the format has none.
    """

    name: str

    def sign_url(
        self, url: str, ctx: SignContext, *, prefix: bool = False, template: bool = False
    ) -> str | None: ...


def append_query(url: str, params: str) -> str:
    """Append ``params`` (already encoded, ``a=1&b=2``) to ``url``, before any fragment."""
    hash_at = url.find("#")
    base, fragment = (url[:hash_at], url[hash_at:]) if hash_at >= 0 else (url, "")
    return f"{base}{'&' if '?' in base else '?'}{params}{fragment}"


def prefix_directory(path: str) -> str:
    """The directory a prefix token covers: up to the last ``/`` before any ``$`` template."""
    dollar = path.find("$")
    head = path if dollar < 0 else path[:dollar]
    return head[: head.rfind("/") + 1] or "/"


def split_fragment(url: str) -> str:
    hash_at = url.find("#")
    return url if hash_at < 0 else url[:hash_at]


class BoundedCache:
    """A small FIFO map (dict order): repeated policies within an expiry window hit it."""

    __slots__ = ("_data", "_max")

    def __init__(self, max_entries: int) -> None:
        self._data: dict[str, str] = {}
        self._max = max_entries

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def put(self, key: str, value: str) -> None:
        if len(self._data) >= self._max:
            try:
                del self._data[next(iter(self._data))]
            except (StopIteration, KeyError, RuntimeError):  # raced with another thread
                self._data.clear()
        self._data[key] = value
