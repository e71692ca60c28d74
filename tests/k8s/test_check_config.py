"""``playback-drm check-config`` over rendered overlays: every problem of a broken one is listed
with its object and field, exit 1; the repository's overlays pass with a summary, exit 0."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devstack import checkconfig
from tests.k8s.overlay import check_config, envoy_configmap, kustomize, write_overlay
from tests.k8s.render import render_overlay

BROKEN_LITERALS = (
    "ENVOY_LICENSE_PEER_CIDRS=10.0.0.0/33,192.168.0.0/16",
    "ENVOY_LICENSE_PRINCIPALS=api-gateway.example.tv",
    "ENVOY_LICENCE_PRINCIPALS=spiffe://example.tv/ns/gw/sa/api",
    "CORS_ALLOWED_ORIGINS=*",
    "ENVOY_SIDECAR_PORT=9443",
    "ENVOY_MAX_HEAP=1Gi",
    "LOG_LEVEL=DEBUG",
    "ENVOY_DASH_PATH_TEMPLATE=vod/{videoId}/index.mpd",  # extproc keeps {videoId}/manifest.mpd
)
# The envoy container started from a file nobody renders (the pre-rendered copy's old path).
# Strategic merge: containers are matched by name (their order changes along the overlays).
STALE_CONFIG_PATH: dict[str, object] = {
    "patch": (
        "apiVersion: apps/v1\n"
        "kind: Deployment\n"
        "metadata:\n"
        "  name: playback-edge\n"
        "spec:\n"
        "  template:\n"
        "    spec:\n"
        "      containers:\n"
        "        - name: envoy\n"
        "          args: [-c, /etc/envoy/envoy.yaml, --disable-hot-restart]\n"
    ),
}


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The prod overlay with the bad values and the stale config path, rendered."""
    directory = tmp_path_factory.mktemp("broken")
    return kustomize(write_overlay(directory, BROKEN_LITERALS, patches=(STALE_CONFIG_PATH,)))


def test_a_broken_overlay_is_refused_with_every_problem_named(broken: str) -> None:
    result = check_config(broken)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert result.stderr.splitlines()[0] == f"check-config: {len(lines)} problem(s):"
    located = sorted(line.split(": ", 2)[1] for line in lines)
    assert located == sorted(
        [
            "data.ENVOY_LICENSE_PEER_CIDRS",
            "data.ENVOY_LICENSE_PRINCIPALS",
            "data.ENVOY_LICENCE_PRINCIPALS",
            "data.CORS_ALLOWED_ORIGINS",
            "data.ENVOY_SIDECAR_PORT",
            "data.ENVOY_MAX_HEAP",
            "data.LOG_LEVEL",
            "data.ENVOY_DASH_PATH_TEMPLATE",
            "spec.template.spec.containers[envoy].args",
        ]
    )
    by_field = {line.split(": ", 2)[1]: line for line in lines}
    for field, obj in by_field.items():
        prefix = (
            "Deployment/playback-edge" if field.startswith("spec.") else "ConfigMap/playback-envoy-"
        )
        assert obj.startswith(prefix), obj
    assert "'10.0.0.0/33' is not a CIDR" in by_field["data.ENVOY_LICENSE_PEER_CIDRS"]
    assert "not a SPIFFE ID or URI SAN" in by_field["data.ENVOY_LICENSE_PRINCIPALS"]
    assert "did you mean ENVOY_LICENSE_PRINCIPALS" in by_field["data.ENVOY_LICENCE_PRINCIPALS"]
    assert "9443, which is not a port of container envoy" in by_field["data.ENVOY_SIDECAR_PORT"]
    assert "memory limit (640Mi)" in by_field["data.ENVOY_MAX_HEAP"]
    assert "not an Envoy setting" in by_field["data.LOG_LEVEL"]
    assert "differs from MANIFEST_DASH_TEMPLATE" in by_field["data.ENVOY_DASH_PATH_TEMPLATE"]
    assert (
        "/etc/envoy/envoy.yaml, not the rendered"
        in by_field["spec.template.spec.containers[envoy].args"]
    )


def test_a_changed_port_needs_the_container_port_too(tmp_path: Path) -> None:
    """Changed together, the port is fine: check-config follows the pod, not the base values."""
    port_patch: dict[str, object] = {
        "patch": (
            "apiVersion: apps/v1\n"
            "kind: Deployment\n"
            "metadata:\n"
            "  name: playback-edge\n"
            "spec:\n"
            "  template:\n"
            "    spec:\n"
            "      containers:\n"
            "        - name: envoy\n"
            "          ports:\n"
            "            - {name: https-9443, containerPort: 9443}\n"
        ),
    }
    rendered = kustomize(
        write_overlay(tmp_path / "port", ("ENVOY_SIDECAR_PORT=9443",), patches=(port_patch,))
    )
    result = check_config(rendered)
    assert result.returncode == 0, result.stderr
    assert "listeners 9443 (mTLS)" in result.stdout


@pytest.mark.parametrize("overlay", ["dev", "prod", "istio-prod", "envoy-gateway-prod"])
def test_the_repositorys_overlays_pass(overlay: str) -> None:
    """(tests/k8s/checks.py runs the same checks on every overlay; this is the command.)"""
    result = check_config(yaml.safe_dump_all(render_overlay(overlay)))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout or "no Envoy of ours" in result.stdout


def test_empty_or_unreadable_input_is_an_error(tmp_path: Path) -> None:
    err = io.StringIO()
    assert checkconfig.run("", io.StringIO(), err) == 1
    assert "no Kubernetes objects" in err.getvalue()
    err = io.StringIO()
    assert checkconfig.run("kind: [unclosed", io.StringIO(), err) == 1
    assert "not YAML" in err.getvalue()
    err = io.StringIO()
    assert checkconfig.main(str(tmp_path / "missing.yaml"), io.StringIO(), err) == 1
    assert "cannot read" in err.getvalue()


def test_the_pod_refuses_the_same_values_at_start(broken: str, tmp_path: Path) -> None:
    """The broken overlay's ConfigMap as the render init container's environment: it stops
    (exit 2) naming every bad setting check-config named, and writes nothing. (LOG_LEVEL is not
    under the Envoy prefixes: the pod ignores it, only the offline check sees the stray key.)"""
    out = tmp_path / "rendered" / "envoy.yaml"
    out.parent.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "envoyconf", "render", "--out", str(out)],
        env={**envoy_configmap(broken), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    named = {line.strip().split(":", 1)[0] for line in result.stderr.splitlines()[1:]}
    assert named == {
        "ENVOY_LICENSE_PEER_CIDRS",
        "ENVOY_LICENSE_PRINCIPALS",
        "ENVOY_LICENCE_PRINCIPALS",
        "CORS_ALLOWED_ORIGINS",
    }
    assert not out.exists()


def test_validate_runs_envoy_on_each_rendering() -> None:
    """``--validate``: the pod's second init container, offline (the real Envoy)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "playback-drm"), "check-config", "--validate", "-"],
        input=yaml.safe_dump_all(render_overlay("prod")),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OK, validated by envoy --mode validate" in result.stdout


def test_envoys_refusal_is_reported_against_the_workload(tmp_path: Path) -> None:
    """What Envoy's validation says reaches the report (an Envoy that refuses everything)."""
    refusing = tmp_path / "envoy"
    refusing.write_text("#!/bin/sh\necho 'error initializing configuration: no way' >&2\nexit 1\n")
    refusing.chmod(0o755)
    pods, findings = checkconfig.check(render_overlay("prod"))
    assert findings == []
    (finding,) = checkconfig.envoy_validate_findings(pods, str(refusing), tmp_path)
    assert (finding.obj, finding.field) == ("Deployment/playback-edge", "envoy --mode validate")
    assert "no way" in finding.message
