"""Browser fixtures: Debian's Chromium driven by the Python ``playwright`` package (no download).

The full local stack comes from the lead's session fixture ``stack`` (tests/support/stack.py).
Chromium is ``/usr/bin/chromium`` (``scripts/setup-browser.sh`` installs it); when it is missing the
browser tests fail loudly under CI (env ``CI`` set) and are skipped locally with the reason.

On a failing test every open demo page is saved to ``test-artifacts/``: a screenshot, the page's
``window.demoState`` and its console log. Artifacts are listed at the end of the run.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS, SAVED, DemoPages

if TYPE_CHECKING:
    from playwright.sync_api import Browser

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: run scripts/setup-browser.sh (apt-get chromium)")
    return str(CHROMIUM)


@pytest.fixture(scope="package")  # playwright's loop must not outlive the browser tests
def browser(chromium_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed (pip install playwright)")
        raise
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path,
            headless=True,
            args=list(CHROMIUM_FLAGS),
            env={**os.environ, "HOME": str(tmp_path_factory.mktemp("chromium-home"))},
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def demo_pages(browser: Browser, stack: Any) -> Iterator[DemoPages]:
    ARTIFACTS.mkdir(exist_ok=True)
    pages = DemoPages(browser, stack.gateway)
    yield pages
    for demo in list(pages.open_pages):
        pages.close(demo)


@pytest.fixture(autouse=True)
def _save_pages_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reports = request.node.stash.get(_REPORTS, {})
    if not any(r.failed for r in reports.values()):
        return
    if "demo_pages" in request.fixturenames:
        pages: DemoPages = request.getfixturevalue("demo_pages")
        pages.save_failure(request.node.name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not SAVED:
        return
    terminalreporter.section("e2e artifacts")
    for path in dict.fromkeys(SAVED):
        terminalreporter.write_line(str(path))
