"""The demo origin: serves generated media the way object storage or a packager would, plus the
demo page and its development-only helpers.

    GET /{videoId}/master.m3u8, /{videoId}/manifest.mpd, /{videoId}/...   media (ORIGIN_DIR)
    GET /live-demo/...              the live channel, simulated from ``demo`` (devstack.live)
    GET /_demo/                     the demo page (public at /demo/ through the gateway)
    GET /_demo/player.html?player=  one player alone, set up as a platform's page would
    GET /_demo/vendor/{package}/... player libraries from node_modules
    GET /_demo/api/config           where the page sends playback requests ("": its own origin)
    GET /_demo/api/token?sub=alice  a development JWT for any user name (local stack only)
    GET /_demo/api/events           the most recent analytics events (from the local event log)
    GET /_demo/api/time             the time (ISO 8601, ms): the live MPD's UTCTiming source,
                                    public at /demo/api/time; never needs a token
    GET /health
    GET /_origin/requests           what reached the origin (path, query, identity headers): lets
                                    tests prove tokens and forged headers never get this far

Manifests are served with their registered media types so the sidecar recognises them. Like a
public bucket with a permissive CORS rule, media answers to a request with an ``Origin`` carry
``Access-Control-Allow-Origin: *``: the edge must replace that with its own policy. The same
demo routes serve the pages from an origin of their own (``devstack.emulators.site``).
"""

from __future__ import annotations

import json
import mimetypes
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from devstack import media as demo_media
from devstack.live import LiveChannel, LiveSettings, iso_time

DEMO_PREFIX = "/_demo/"
DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"
VENDOR_PACKAGES = ("shaka-player", "hls.js", "dashjs")

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".vtt": "text/vtt",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".map": "application/json",
}


@dataclass
class DemoSettings:
    node_modules: Path | None = None
    events_log: Path | None = None
    issue_token: Callable[[str, int], str] | None = None
    gateway: str = ""  # the gateway's origin when the page is served from another one


@dataclass(kw_only=True)
class OriginSettings(DemoSettings):
    media_dir: Path
    live: LiveSettings = field(default_factory=LiveSettings)


def live_channels(settings: OriginSettings) -> dict[str, LiveChannel]:
    """The live channels whose source video is in the media directory."""
    return {
        spec.video_id: LiveChannel(spec, settings.media_dir, settings.live)
        for spec in demo_media.LIVE_CHANNELS
        if (settings.media_dir / spec.source).is_dir()
    }


def _safe_file(root: Path, relative: str) -> Path | None:
    if not relative or relative.startswith("/") or "\\" in relative or "\x00" in relative:
        return None
    candidate = (root / relative).resolve()
    try:
        candidate.relative_to(root.resolve())
    except ValueError:
        return None
    return candidate if candidate.is_file() else None


def _file_response(path: Path, *, cache: str) -> web.FileResponse:
    ctype = CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
    headers = {"Cache-Control": cache}
    if ctype:
        headers["Content-Type"] = ctype
    return web.FileResponse(path, headers=headers)


def _not_found() -> web.Response:
    return web.json_response(
        {"type": "about:blank", "title": "Not found", "status": 404, "code": "not_found"},
        status=404,
        content_type="application/problem+json",
    )


def tail_events(path: Path | None, limit: int = 100) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        return []
    lines: deque[str] = deque(maxlen=limit)
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            lines.append(line)
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


USER_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
RECORDED_HEADERS = ("x-playback-user", "x-playback-plan", "x-playback-video", "authorization")


def build_app(settings: OriginSettings) -> web.Application:
    media_root = settings.media_dir
    seen: deque[dict[str, Any]] = deque(maxlen=500)

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/_origin/"):
            seen.append(
                {
                    "path": request.path,
                    "query": request.query_string,
                    "headers": {
                        h: request.headers[h] for h in RECORDED_HEADERS if h in request.headers
                    },
                }
            )
        response: web.StreamResponse = await handler(request)
        return response

    async def recorded(_: web.Request) -> web.Response:
        return web.json_response(list(seen))

    channels = live_channels(settings)

    async def media(request: web.Request) -> web.StreamResponse:
        relative = request.match_info["path"]
        video, _, rest = relative.partition("/")
        channel = channels.get(video)
        response: web.StreamResponse
        if channel is not None:
            answer = channel.respond(rest)
            if answer is None:
                return _not_found()
            headers = {"Content-Type": answer.content_type, "Cache-Control": answer.cache_control}
            response = web.Response(body=answer.body, headers=headers)
        else:
            path = _safe_file(media_root, relative)
            if path is None:
                return _not_found()
            manifest = path.suffix in (".m3u8", ".mpd")
            cache = "no-cache" if manifest else "public, max-age=86400"
            response = _file_response(path, cache=cache)
        if "Origin" in request.headers:
            response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": "origin"})

    app = web.Application(middlewares=[record])
    app.router.add_get("/health", health)
    app.router.add_get("/_origin/requests", recorded)
    # The demo page lives under an internal prefix (a video may well be called "demo"); the
    # gateway maps the public /demo/ onto it.
    add_demo_routes(app, DEMO_PREFIX, settings)
    app.router.add_get("/{path:.+}", media)
    return app


def add_demo_routes(app: web.Application, prefix: str, settings: DemoSettings) -> None:
    """The demo pages and their helpers under ``prefix`` (``/_demo/`` here, ``/demo/`` on the
    site)."""

    async def demo(request: web.Request) -> web.StreamResponse:
        rel = request.match_info.get("path") or "index.html"
        path = _safe_file(DEMO_DIR, rel)
        if path is None or path.suffix == ".py":
            return _not_found()
        return _file_response(path, cache="no-cache")

    async def vendor(request: web.Request) -> web.StreamResponse:
        package = request.match_info["package"]
        if settings.node_modules is None or package not in VENDOR_PACKAGES:
            return _not_found()
        path = _safe_file(settings.node_modules / package, request.match_info["path"])
        if path is None:
            return _not_found()
        return _file_response(path, cache="public, max-age=3600")

    async def config(_: web.Request) -> web.Response:
        return web.json_response(
            {"gateway": settings.gateway}, headers={"Cache-Control": "no-store"}
        )

    async def token(request: web.Request) -> web.Response:
        if settings.issue_token is None:
            return _not_found()
        sub = request.query.get("sub", "")
        # any well-formed user: Billing decides what they may watch (alice, bob, carol by
        # default; tests add subscribers of their own)
        if not USER_PATTERN.fullmatch(sub):
            return web.json_response(
                {"error": "sub must match " + USER_PATTERN.pattern}, status=400
            )
        ttl = min(int(request.query.get("ttl", "3600") or 3600), 86400)
        return web.json_response(
            {"token": settings.issue_token(sub, ttl), "sub": sub, "ttl": ttl},
            headers={"Cache-Control": "no-store"},
        )

    async def events(_: web.Request) -> web.Response:
        return web.json_response(
            tail_events(settings.events_log), headers={"Cache-Control": "no-store"}
        )

    async def now(_: web.Request) -> web.Response:
        # a public time source (like time.akamai.com): any page may read it, nothing to protect
        return web.Response(
            text=iso_time(time.time()),
            content_type="text/plain",
            headers={"Cache-Control": "no-store", "Access-Control-Allow-Origin": "*"},
        )

    app.router.add_get(f"{prefix}api/config", config)
    app.router.add_get(f"{prefix}api/time", now)
    app.router.add_get(f"{prefix}api/token", token)
    app.router.add_get(f"{prefix}api/events", events)
    app.router.add_get(prefix + "vendor/{package}/{path:.+}", vendor)
    app.router.add_get(prefix, demo)
    app.router.add_get(prefix + "{path:.+}", demo)
