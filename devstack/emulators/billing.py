"""Billing service emulator: subscriptions, plans and the entitlement API authz asks.

    GET  /v1/entitlements?userId=U&videoId=V  -> 200 {"userId", "videoId", "entitled", "plan",
         "reason", "tier", "maxStreams", "rentalWindowSeconds", "playbackWindowSeconds", "hdcp"}
    PUT  /admin/users/{userId}  {"plan": "premium"|"basic"|null, "maxStreams"?: n}
                                                                    change a subscription (and
                                                                    the viewer's stream limit)
    PUT  /admin/catalog/{videoId}  {"tier": "HD", "plan": "basic"}  add a video
    POST /admin/fail?status=503 | /admin/recover                    simulate an outage
    GET  /health

Local defaults: alice (premium, entitled to all), bob (basic: `demo` yes, `demo-uhd` no),
carol (no subscription). Videos: `demo` (tier HD, basic plan), `demo-uhd` (tier UHD, premium plan),
`live-demo` (the live channel; tier HD, basic plan). Taking a viewer's plan away (``PUT
/admin/users/{userId} {"plan": null}``) revokes their entitlements, mid-playback too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PLAN_RANK = {"basic": 1, "premium": 2}


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
) -> dict[str, Any]:
    """The Billing decision, as plain data (``max_streams``: per-viewer overrides of the plan's
    concurrent streams)."""
    plan = users.get(user)
    doc: dict[str, Any] = {"userId": user, "videoId": video, "plan": plan}
    item = catalog.get(video)
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

    def build_app(self) -> web.Application:
        async def entitlements(request: web.Request) -> web.Response:
            self.requests += 1
            if self.failing_status is not None:
                return web.json_response({"error": "simulated"}, status=self.failing_status)
            user = request.query.get("userId")
            video = request.query.get("videoId")
            if not user or not video:
                return web.json_response({"error": "userId and videoId required"}, status=400)
            return web.json_response(
                decide(self.users, self.catalog, user, video, self.max_streams)
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
            return web.json_response({"userId": user, "plan": plan, "maxStreams": streams})

        async def set_video(request: web.Request) -> web.Response:
            body = await request.json()
            tier, plan = body.get("tier"), body.get("plan")
            if plan not in PLANS or not isinstance(tier, str):
                return web.json_response({"error": "tier and a known plan required"}, status=400)
            self.catalog[request.match_info["video"]] = {"tier": tier, "plan": plan}
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
        app.router.add_get("/v1/entitlements", entitlements)
        app.router.add_put("/admin/users/{user}", set_user)
        app.router.add_put("/admin/catalog/{video}", set_video)
        app.router.add_post("/admin/fail", fail)
        app.router.add_post("/admin/recover", recover)
        app.router.add_get("/health", health)
        return app
