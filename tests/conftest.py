"""Shared fixtures: real servers (Redis, NATS, OpenBao, Envoy) live in tests/support/servers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.support.servers", "tests.support.stack", "tests.support.otlp"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = (REPO_ROOT.parent / "shared" / "corpus").resolve()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API keeps an event loop running while it is open."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)
