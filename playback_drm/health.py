"""The HTTP side of a gRPC service: ``/health`` (readiness), ``/health/live`` and ``/metrics``.

authz and extproc each serve one on their HTTP port (kubelet probes, Prometheus); the broker,
an HTTP service itself, mounts the same routes on its own app. Readiness runs the service's
checks (each answers ``"ok"`` or a short reason) and caches the report for a second, so a probe
storm costs one round of checks. Liveness only says the process serves: an outage of a
dependency makes a pod unready, never restarts it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import web

from playback_drm.metrics import add_metrics_route

OK: Final = "ok"
REPORT_CACHE_S: Final = 1.0

Check = Callable[[], Awaitable[str]]


class Readiness:
    """A service's readiness: every check ``"ok"``."""

    def __init__(
        self,
        service: str,
        checks: Mapping[str, Check] | None = None,
        *,
        cache_s: float = REPORT_CACHE_S,
    ) -> None:
        self.service = service
        self._checks = dict(checks or {})
        self._cache_s = cache_s
        self._cached: tuple[float, dict[str, Any]] | None = None

    async def report(self) -> dict[str, Any]:
        if self._cached is not None and time.monotonic() - self._cached[0] < self._cache_s:
            return self._cached[1]
        results = {name: await check() for name, check in self._checks.items()}
        ready = all(value == OK for value in results.values())
        report: dict[str, Any] = {"status": OK if ready else "unavailable", "service": self.service}
        if results:
            report["checks"] = results
        self._cached = (time.monotonic(), report)
        return report


def add_health_routes(app: web.Application, readiness: Readiness) -> None:
    """``/health`` (200 when ready, else 503 with the report) and ``/health/live``."""

    async def ready(_: web.Request) -> web.Response:
        report = await readiness.report()
        return web.json_response(report, status=200 if report["status"] == OK else 503)

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": OK, "service": readiness.service})

    app.router.add_get("/health", ready, allow_head=False)
    app.router.add_get("/health/live", live, allow_head=False)


def health_app(readiness: Readiness) -> web.Application:
    """The HTTP app of a gRPC service: health routes and ``/metrics``."""
    app = web.Application()
    add_health_routes(app, readiness)
    add_metrics_route(app)
    return app


__all__ = ["OK", "Check", "Readiness", "add_health_routes", "health_app"]
