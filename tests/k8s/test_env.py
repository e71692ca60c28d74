"""The variables the manifests set are the ones the services read, and the services accept them."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.k8s.checks import Index, container_env
from tests.k8s.codeenv import documented_variables, env_reads
from tests.k8s.render import ALL_OVERLAYS, REPO_ROOT, Obj, render_overlay

# `python -m <module>` -> the config classes that service builds from the env at start-up.
COMMON_CONFIGS = (
    "playback_drm.events:EventsConfig",
    "playback_drm.logs:LoggingConfig",
    "playback_drm.tracing:TracingConfig",
)
COMPONENT_CONFIGS = {
    "authz": ("authz.config:AuthzConfig",),
    "extproc": ("extproc.config:ExtprocConfig",),
    "license_broker": ("license_broker.config:BrokerConfig",),
}
# Values an operator writes at deploy time (ExternalSecret, cert-manager): examples of the
# expected shape, so the prod overlay's configuration can be checked too.
OPERATOR_SAMPLES = {
    "URL_SIGNING_KEYS": "k1:31Jmmk7X6smy2KJJQljz0cLsUU3XPBEE5wx0aKCDg2k=",
    "REDIS_URL": "rediss://:password@redis.example.invalid:6379/0",
    "VAULT_TOKEN": "hvs.example-token",
}
# The table is drafted in docs/DEPLOYMENT.md and merged into README.md: either counts.
DOCS = (REPO_ROOT / "docs" / "DEPLOYMENT.md", REPO_ROOT / "README.md")


def _containers(overlay: str, *, init: bool = False) -> Iterator[tuple[Index, Obj, Obj]]:
    index = Index(render_overlay(overlay))
    for dep, template in index.workloads():
        inits = template["spec"].get("initContainers") or [] if init else []
        for c in inits + template["spec"]["containers"]:
            yield index, dep, c


def _app_containers() -> list[Any]:
    cases = []
    for overlay in ALL_OVERLAYS:
        for _, dep, c in _containers(overlay):
            if c.get("command", [])[:2] == ["python", "-m"]:
                cases.append(
                    pytest.param(
                        overlay,
                        dep["metadata"]["name"],
                        c["name"],
                        id=f"{overlay}-{dep['metadata']['name']}-{c['name']}",
                    )
                )
    return cases


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_every_variable_the_manifests_set_is_read_by_the_code(overlay: str) -> None:
    read = env_reads()
    unknown = []
    for index, dep, c in _containers(overlay, init=True):
        env, errors = container_env(index, c)
        assert errors == []
        unknown += [
            f"Deployment/{dep['metadata']['name']} container {c['name']}: {name}"
            for name in sorted(env)
            if name not in read
        ]
    assert unknown == [], "variables no from_env reads (typo, or stale):\n" + "\n".join(unknown)


@pytest.mark.parametrize(("overlay", "deployment", "container"), _app_containers())
def test_the_service_accepts_its_rendered_configuration(
    overlay: str, deployment: str, container: str
) -> None:
    """Build each config object the component builds at start-up from the pod's environment."""
    index = Index(render_overlay(overlay))
    dep = index.get("Deployment", deployment)
    assert dep is not None
    (c,) = [x for x in dep["spec"]["template"]["spec"]["containers"] if x["name"] == container]
    raw, errors = container_env(index, c)
    assert errors == []
    env: dict[str, str] = {}
    for name, value in raw.items():
        if value is None:
            assert name in OPERATOR_SAMPLES, f"{name}: set by an operator, add a sample value"
        env[name] = OPERATOR_SAMPLES[name] if value is None else value
    component = c["command"][2]
    for spec in COMMON_CONFIGS + COMPONENT_CONFIGS[component]:
        module, _, cls = spec.partition(":")
        config_class = getattr(importlib.import_module(module), cls)
        config_class.from_env(env)  # raises ConfigError naming the variable


def test_the_configuration_table_documents_every_variable() -> None:
    documented = documented_variables(*DOCS)
    read = env_reads()
    missing = sorted(set(read) - documented)
    assert missing == [], (
        f"variables read by the code but not in the configuration table: {missing}"
    )
    stale = sorted(documented - set(read))
    assert stale == [], f"variables in the configuration table that no from_env reads: {stale}"


def test_env_scanner_finds_literal_and_looped_reads() -> None:
    """The scanner behind the two tests above sees the forms the config modules use."""
    read = env_reads()
    assert "authz/config.py" in read["JWKS_URL"]  # env_str(env, "JWKS_URL")
    assert "license_broker/config.py" in read["WIDEVINE_SIGNING_KEY"]  # _hex(env, NAME, 32)
    assert "extproc/config.py" in read["MANIFEST_HLS_TEMPLATE"]  # for name, default in (...)
    assert "X_WIDEVINE_SIGNER" not in read  # outside from_env
