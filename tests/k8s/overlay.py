"""A platform team's overlay of ours, in a temporary directory: written, rendered with kustomize,
checked with ``playback-drm check-config`` (the tests of check-config and of the whole path from
an overlay to a running Envoy use these)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.k8s.render import K8S_DIR, kustomize_command


def write_overlay(
    directory: Path,
    literals: tuple[str, ...],
    base: str = "prod",
    patches: tuple[dict[str, object], ...] = (),
) -> Path:
    """An overlay of ``k8s/overlays/<base>`` in ``directory`` that merges ``literals`` into
    ``playback-envoy`` (and applies ``patches``): what a platform team keeps in its GitOps
    repository."""
    directory.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(K8S_DIR / "overlays" / base, directory)
    kustomization: dict[str, object] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [relative],
        "configMapGenerator": [
            {"name": "playback-envoy", "behavior": "merge", "literals": list(literals)}
        ],
    }
    if patches:
        kustomization["patches"] = list(patches)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return directory


def kustomize(directory: Path) -> str:
    result = subprocess.run(
        [*kustomize_command(), str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def check_config(rendered: str) -> subprocess.CompletedProcess[str]:
    """``... | playback-drm check-config -`` (the console script of the dev CLI)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "playback-drm"), "check-config", "-"],
        input=rendered,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def envoy_configmap(rendered: str) -> dict[str, str]:
    (cm,) = [
        doc
        for doc in yaml.safe_load_all(rendered)
        if doc
        and doc["kind"] == "ConfigMap"
        and doc["metadata"]["name"].startswith("playback-envoy")
    ]
    return dict(cm["data"])
