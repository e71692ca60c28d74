"""Shared fixtures: real servers (Redis, NATS, OpenBao, Envoy) live in tests/support/servers.py."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["tests.support.servers", "tests.support.stack"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = (REPO_ROOT.parent / "shared" / "corpus").resolve()
