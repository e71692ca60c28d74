"""Billing service emulator: subscriptions, plans and the entitlement API authz asks.

    GET  /v1/entitlements?userId=U&videoId=V  -> 200 {"userId", "videoId", "entitled", "plan",
         "reason", "tier", "maxStreams", "rentalWindowSeconds", "playbackWindowSeconds", "hdcp"}
    PUT  /admin/users/{userId}  {"plan": "premium"|"basic"|null, "maxStreams"?: n}
                                                                    change a subscription (and
                                                                    the viewer's stream limit)
    PUT  /admin/catalog/{videoId}  {"tier": "HD", "plan": "basic"}  add a video
    POST /admin/fail?status=503 | /admin/recover                    simulate an outage
    GET  /health

What the admin API changes is kept in ``BILLING_STATE_FILE`` when set (the local stack sets it),
and read back when the emulator starts: a restarted Billing keeps its subscribers, as the real
one does with its database (an outage is ``/admin/fail``, or the process stopped).

Local defaults: alice (premium, entitled to all), bob (basic: `demo` yes, `demo-uhd` no),
carol (no subscription). Videos: `demo` (tier HD, basic plan), `demo-uhd` (tier UHD, premium plan),
`live-demo` (the live channel; tier HD, basic plan). Taking a viewer's plan away (``PUT
/admin/users/{userId} {"plan": null}``) revokes their entitlements, mid-playback too.

Premium means premium: a video outside the catalog that the origin has (``ORIGIN_URL``: its HLS
or DASH manifest answers 200) is a premium title (tier UHD), so premium viewers are entitled to
anything the origin serves and basic ones get ``plan_too_low``. A video the origin does not have
is ``unknown_video``. Without an origin to ask, every video exists. ``PUT /admin/catalog`` gives a
video another plan (e.g. ``basic``, so basic viewers may watch it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

PLAN_RANK = {"basic": 1, "premium": 2}
# what a title the origin has, and the catalog does not list, is: premium content
OFF_CATALOG: Final = {"tier": "UHD", "plan": "premium"}
ORIGIN_MANIFESTS: Final = ("master.m3u8", "manifest.mpd")
ORIGIN_TIMEOUT_S: Final = 2.0
_VIDEO_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    max_streams: int
    hdcp: str
    playback_window: int


PLANS = {
    "basic": Plan("basic", max_streams=2, hdcp="HDCP_V1", playback_window=4 * 3600),
    "premium": Plan("premium", max_streams=4, hdcp="HDCP_V2_2", playback_window=8 * 3600),
}


def default_users() -> dict[str, str | None]:
    return {"alice": "premium", "bob": "basic", "carol": None}


def default_catalog() -> dict[str, dict[str, str]]:
    return {
        "demo": {"tier": "HD", "plan": "basic"},
        "demo-uhd": {"tier": "UHD", "plan": "premium"},
        "live-demo": {"tier": "HD", "plan": "basic"},
    }


def decide(
    users: dict[str, str | None],
    catalog: dict[str, dict[str, str]],
    user: str,
    video: str,
    max_streams: dict[str, int] | None = None,
    *,
    at_origin: bool = False,
) -> dict[str, Any]:
    """The Billing decision, as plain data (``max_streams``: per-viewer overrides of the plan's
    concurrent streams; ``at_origin``: the origin has ``video``, so an uncatalogued one is a
    premium title)."""
    plan = users.get(user)
    doc: dict[str, Any] = {"userId": user, "videoId": video, "plan": plan}
    item = catalog.get(video) or (OFF_CATALOG if at_origin else None)
    if plan is None:
        return {**doc, "entitled": False, "reason": "no_subscription"}
    if item is None:
        return {**doc, "entitled": False, "reason": "unknown_video"}
    if PLAN_RANK[plan] < PLAN_RANK[item["plan"]]:
        return {**doc, "entitled": False, "reason": "plan_too_low", "tier": item["tier"]}
    details = PLANS[plan]
    return {
        **doc,
        "entitled": True,
        "reason": None,
        "tier": item["tier"],
        "maxStreams": (max_streams or {}).get(user, details.max_streams),
        "rentalWindowSeconds": None,
        "playbackWindowSeconds": details.playback_window,
        "hdcp": details.hdcp,
    }


@dataclass
class BillingEmulator:
    users: dict[str, str | None] = field(default_factory=default_users)
    catalog: dict[str, dict[str, str]] = field(default_factory=default_catalog)
    max_streams: dict[str, int] = field(default_factory=dict)
    failing_status: int | None = None
    requests: int = 0
    origin_url: str | None = None  # None: every video exists
    state_file: Path | None = None  # where admin changes are kept across restarts
    _at_origin: set[str] = field(default_factory=set, init=False, repr=False)

    def load(self) -> None:
        """The subscribers, stream limits and catalog a previous run of this emulator was told
        (``state_file``); nothing when there is none yet."""
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            doc = json.loads(self.state_file.read_text(encoding="utf-8"))
            users, streams, catalog = doc["users"], doc["maxStreams"], doc["catalog"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"BILLING_STATE_FILE {self.state_file}: not our state ({exc})"
            ) from exc
        self.users, self.max_streams, self.catalog = users, streams, catalog

    def _save(self) -> None:
        if self.state_file is None:
            return
        doc = {"users": self.users, "maxStreams": self.max_streams, "catalog": self.catalog}
        partial = self.state_file.with_name(self.state_file.name + ".partial")
        partial.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(partial, self.state_file)  # a restart reads all of it or the last one

    async def origin_has(self, session: aiohttp.ClientSession | None, video: str) -> bool:
        """Whether the origin serves ``video`` (an HLS or DASH manifest answers 200)."""
        if not _VIDEO_ID.fullmatch(video):
            return False
        if self.origin_url is None or session is None:
            return True
        if video in self._at_origin:
            return True
        for name in ORIGIN_MANIFESTS:
            try:
                async with session.head(f"{self.origin_url}/{video}/{name}") as resp:
                    if resp.status == 200:
                        self._at_origin.add(video)
                        return True
            except (aiohttp.ClientError, TimeoutError):
                return False
        return False

    def build_app(self) -> web.Application:
        session_key = web.AppKey("origin_session", aiohttp.ClientSession)

        async def origin_session(app: web.Application) -> AsyncIterator[None]:
            timeout = aiohttp.ClientTimeout(total=ORIGIN_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                app[session_key] = session
                yield

        async def entitlements(request: web.Request) -> web.Response:
            self.requests += 1
            if self.failing_status is not None:
                return web.json_response({"error": "simulated"}, status=self.failing_status)
            user = request.query.get("userId")
            video = request.query.get("videoId")
            if not user or not video:
                return web.json_response({"error": "userId and videoId required"}, status=400)
            at_origin = video not in self.catalog and await self.origin_has(
                request.app.get(session_key), video
            )
            return web.json_response(
                decide(self.users, self.catalog, user, video, self.max_streams, at_origin=at_origin)
            )

        async def set_user(request: web.Request) -> web.Response:
            body = await request.json()
            plan = body.get("plan")
            if plan is not None and plan not in PLANS:
                return web.json_response({"error": "unknown plan"}, status=400)
            streams = body.get("maxStreams")
            if streams is not None and (not isinstance(streams, int) or streams < 0):
                return web.json_response({"error": "maxStreams: a count"}, status=400)
            user = request.match_info["user"]
            self.users[user] = plan
            if streams is None:
                self.max_streams.pop(user, None)
            else:
                self.max_streams[user] = streams
            self._save()
            return web.json_response({"userId": user, "plan": plan, "maxStreams": streams})

        async def set_video(request: web.Request) -> web.Response:
            body = await request.json()
            tier, plan = body.get("tier"), body.get("plan")
            if plan not in PLANS or not isinstance(tier, str):
                return web.json_response({"error": "tier and a known plan required"}, status=400)
            self.catalog[request.match_info["video"]] = {"tier": tier, "plan": plan}
            self._save()
            return web.json_response({"videoId": request.match_info["video"], "plan": plan})

        async def fail(request: web.Request) -> web.Response:
            self.failing_status = int(request.query.get("status", "503"))
            return web.json_response({"failing": self.failing_status})

        async def recover(_: web.Request) -> web.Response:
            self.failing_status = None
            return web.json_response({"failing": None})

        async def health(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "service": "billing-emulator"})

        app = web.Application()
        if self.origin_url is not None:
            app.cleanup_ctx.append(origin_session)
        app.router.add_get("/v1/entitlements", entitlements)
        app.router.add_put("/admin/users/{user}", set_user)
        app.router.add_put("/admin/catalog/{video}", set_video)
        app.router.add_post("/admin/fail", fail)
        app.router.add_post("/admin/recover", recover)
        app.router.add_get("/health", health)
        return app
