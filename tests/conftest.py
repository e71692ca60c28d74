"""Shared fixtures: real servers (Redis, NATS, OpenBao, Envoy) live in tests/support/servers.py.

Hypothesis profiles: ``HYPOTHESIS_PROFILE=dev`` (the default, what ``make test`` runs: bounded, a
couple of minutes for every property and fuzz suite), ``ci`` (ten times the examples) or
``nightly`` (a hundred times, for a long scheduled run). No per-example deadline in any of them:
this machine is shared and slow examples are not failures (a hang is: pytest-timeout catches it,
and the fuzz suites bound memory themselves). Tests that pin ``max_examples`` keep their number;
the fuzz suites scale with the profile (``tests.fuzz.fuzz_settings``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, max_examples=1_000, print_blob=True)
settings.register_profile("nightly", deadline=None, max_examples=10_000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

pytest_plugins = [
    "tests.support.servers",
    "tests.support.ha",
    "tests.support.stack",
    "tests.support.otlp",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
# tests/pods starts the shipped images' pods with podman (minutes, root, `make images` first):
# `make pods-test` runs it, with PLAYBACK_PODS_TEST=1; a plain pytest run leaves it out.
collect_ignore = [] if os.environ.get("PLAYBACK_PODS_TEST") else ["pods"]
CORPUS_DIR = (REPO_ROOT.parent / "shared" / "corpus").resolve()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API keeps an event loop running while it is open."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)
