"""The platform's web site (``https://www.example.tv`` in production): the demo page and the
single-player pages on an origin of their own, so every playback request they make is
cross-origin, as it is for a real platform whose API gateway lives on ``api.example.tv``.

    GET /                            redirect to /demo/
    GET /demo/, /demo/player.html    the pages (same files as the origin's /_demo/)
    GET /demo/api/config             {"gateway": "<the gateway's origin>"}
    GET /demo/api/token?sub=alice    a development JWT (the platform's login would issue one)
    GET /health
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from devstack.emulators.origin import DemoSettings, add_demo_routes

SITE_PREFIX = "/demo/"


@dataclass(kw_only=True)
class SiteSettings(DemoSettings):
    gateway: str  # required here: the pages' playback requests go to another origin


def build_app(settings: SiteSettings) -> web.Application:
    async def home(_: web.Request) -> web.Response:
        raise web.HTTPFound(SITE_PREFIX)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": "site"})

    app = web.Application()
    app.router.add_get("/", home)
    app.router.add_get("/health", health)
    add_demo_routes(app, SITE_PREFIX, settings)
    return app
