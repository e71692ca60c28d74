"""The fuzz suites' time limit grows with the Hypothesis profile (a ``nightly`` run of ten
thousand examples a test is not a hang), and the license fuzzer uses the broker's fixtures."""

from __future__ import annotations

import pytest
from hypothesis import settings

from tests.broker.conftest import (  # noqa: F401 - fixtures, for tests/fuzz/test_licenses.py
    drm_emulator,
    emulator_config,
    make_broker,
)

DEV_EXAMPLES = 100
DEV_TIMEOUT_S = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    scale = max(1.0, settings().max_examples / DEV_EXAMPLES)
    for item in items:
        if item.nodeid.startswith("tests/fuzz/") and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEV_TIMEOUT_S * scale))
