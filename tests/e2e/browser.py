"""Demo pages in Debian's Chromium (Python playwright): open, inspect, save on failure."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Request

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# REFERENCE §7: without the background-networking flags Chromium storms the closed network.
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
PLAYERS = ("shaka", "dashjs", "hlsjs")

SAVED: list[Path] = []
"""Artifacts written during this run, listed in the terminal summary."""


@dataclass
class DemoPage:
    """One open demo page, with what it logged to its console."""

    name: str
    page: Page
    console: list[str] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.page.evaluate("() => window.demoState || {}")
        return result

    def player(self, name: str) -> dict[str, Any]:
        return dict(self.state().get(name) or {})

    def wait(self, expression: str, arg: Any = None, timeout_s: float = 45.0) -> None:
        self.page.wait_for_function(expression, arg=arg, timeout=timeout_s * 1000)


@dataclass
class PlayerPage(DemoPage):
    """One player alone (``/demo/player.html``), with every request its browser context made."""

    requests: list[Request] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.page.evaluate("() => window.playerState || {}")
        return result


class DemoPages:
    """Opens demo pages in fresh browser contexts and saves them when a test fails."""

    def __init__(self, browser: Browser, gateway: str) -> None:
        self._browser = browser
        self._gateway = gateway
        self.open_pages: list[DemoPage] = []

    def open(self, user: str, video: str, *, site: str | None = None) -> DemoPage:
        """The demo page through the gateway, or from ``site`` (another origin)."""
        context = self._browser.new_context(viewport={"width": 1400, "height": 1100})
        page = context.new_page()
        demo = DemoPage(f"{user}-{video}", page)
        page.on("console", lambda msg: demo.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: demo.console.append(f"pageerror: {exc}"))
        self.open_pages.append(demo)
        page.goto(f"{site or self._gateway}/demo/?user={user}&video={video}", wait_until="load")
        return demo

    def open_player(self, site: str, player: str, user: str, video: str) -> PlayerPage:
        """``player`` alone on ``site``'s player page (another origin than the gateway's)."""
        context = self._browser.new_context(viewport={"width": 900, "height": 700})
        page = context.new_page()
        demo = PlayerPage(f"{player}-{user}-{video}", page)
        page.on("console", lambda msg: demo.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: demo.console.append(f"pageerror: {exc}"))

        def record(request: Request) -> None:  # (playwright cannot wrap a bound builtin)
            demo.requests.append(request)

        context.on("request", record)
        self.open_pages.append(demo)
        page.goto(f"{site}/demo/player.html?player={player}&user={user}&video={video}")
        return demo

    def close(self, demo: DemoPage) -> None:
        if demo in self.open_pages:
            self.open_pages.remove(demo)
        demo.page.context.close()

    def save_failure(self, test_name: str) -> None:
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", test_name)[:120]
        for demo in self.open_pages:
            shot = artifact(f"{slug}--{demo.name}.png")
            try:
                demo.page.screenshot(path=str(shot), full_page=True)
                state = json.dumps(demo.state(), indent=2, default=str)
            except Exception as exc:  # the page may be the thing that broke
                state = f"(page unavailable: {exc})"
            log = artifact(f"{slug}--{demo.name}.log")
            log.write_text(f"demoState:\n{state}\n\nconsole:\n" + "\n".join(demo.console))


def artifact(name: str) -> Path:
    """A path under test-artifacts/, listed in the run's summary."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    SAVED.append(target)
    return target
