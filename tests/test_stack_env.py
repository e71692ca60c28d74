"""``make run`` (``playback-drm up``): every documented setting given in the environment reaches
the processes of the local stack, over the stack's own defaults, except its wiring."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.stack import WIRING, Stack, StackPorts, StackSettings
from playback_drm.settings import ConfigError
from tests.k8s.codeenv import documented_variables

REPO = Path(__file__).resolve().parents[1]
# values the stack itself parses must have their shape; any other is passed on untouched
SHAPED = {
    "URL_TOKEN_TTL": "10",
    "RATE_LIMIT_PER_USER": "50",
    "CORS_ALLOWED_ORIGINS": "http://127.0.0.1:3000",
    "CORS_MAX_AGE": "60",
    "ORIGIN_URL": "http://127.0.0.1:9999",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "NATS_URL": "nats://127.0.0.1:1",
    "VAULT_ADDR": "http://127.0.0.1:1",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
}


def _env(stack_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    settings = StackSettings.from_env(stack_env, tmp_path, StackPorts())
    return Stack(settings).common_env()


def test_short_lifetimes_reach_the_services(tmp_path: Path) -> None:
    env = _env({"URL_TOKEN_TTL": "10", "URL_TOKEN_PLAYLIST_TTL": "20"}, tmp_path)
    assert env["URL_TOKEN_TTL"] == "10"
    assert env["URL_TOKEN_PLAYLIST_TTL"] == "20"
    # and the stack's defaults stay where nothing was said
    assert _env({}, tmp_path)["URL_TOKEN_TTL"] == "300"


def test_every_documented_setting_given_reaches_the_processes(tmp_path: Path) -> None:
    documented = documented_variables(REPO / "docs" / "DEPLOYMENT.md", REPO / "README.md")
    names = sorted(documented - WIRING)
    assert {"URL_TOKEN_PLAYLIST_TTL", "ENTITLEMENT_TTL_SECONDS", "LOG_LEVEL"} <= set(names)
    given = {name: SHAPED.get(name, f"sample-{name.lower()}") for name in names}
    env = _env(given, tmp_path)
    lost = {name: env.get(name) for name in names if env.get(name) != given[name]}
    assert lost == {}


def test_the_stack_keeps_its_wiring(tmp_path: Path) -> None:
    env = _env({"AUTHZ_GRPC_ADDR": "10.0.0.1:1", "ORIGIN_DIR": "/elsewhere"}, tmp_path)
    assert env["AUTHZ_GRPC_ADDR"] == f"127.0.0.1:{StackPorts().authz_grpc}"
    assert env["ORIGIN_DIR"] != "/elsewhere"


def test_a_malformed_setting_the_stack_reads_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="URL_TOKEN_TTL"):
        StackSettings.from_env({"URL_TOKEN_TTL": "ten"}, tmp_path)
    with pytest.raises(ConfigError, match="RATE_LIMIT_PER_USER"):
        StackSettings.from_env({"RATE_LIMIT_PER_USER": "0"}, tmp_path)
