"""The GitHub Actions workflow has the jobs and steps CI relies on, wired to our own scripts."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.k8s.dockerfile import parse_dockerfile
from tests.k8s.render import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yaml"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-image.sh"
PINNED_ACTION = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(doc, dict)
    return doc


def _steps(workflow: dict[Any, Any], job: str) -> list[dict[str, Any]]:
    steps = workflow["jobs"][job]["steps"]
    assert isinstance(steps, list)
    return steps


def _uses(workflow: dict[Any, Any], job: str, action: str) -> dict[str, Any]:
    found = [s for s in _steps(workflow, job) if str(s.get("uses", "")).startswith(action + "@")]
    assert found, f"job {job} does not use {action}"
    return found[0]


def _runs(workflow: dict[Any, Any], job: str) -> list[str]:
    return [str(s["run"]) for s in _steps(workflow, job) if "run" in s]


def test_triggers_cover_pull_requests_main_and_release_tags(workflow: dict[Any, Any]) -> None:
    triggers = workflow.get("on") or workflow[True]  # YAML 1.1 reads a bare `on` as true
    assert isinstance(triggers, dict)
    assert "pull_request" in triggers
    assert triggers["push"]["branches"] == ["main"]
    assert triggers["push"]["tags"] == ["v*"]


def test_every_step_runs_or_uses_a_pinned_action(workflow: dict[Any, Any]) -> None:
    assert set(workflow["jobs"]) == {"lint", "test", "image"}
    for name, job in workflow["jobs"].items():
        assert job.get("timeout-minutes"), f"job {name} has no timeout"
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), (
                f"job {name}: step {step} needs run xor uses"
            )
            if "uses" in step:
                assert PINNED_ACTION.match(step["uses"]), f"job {name}: unpinned {step['uses']}"


def test_lint_and_test_run_the_make_targets_with_a_pip_cache(workflow: dict[Any, Any]) -> None:
    assert "make lint" in _runs(workflow, "lint")
    assert "make test" in _runs(workflow, "test")
    assert _uses(workflow, "lint", "actions/setup-python")["with"]["cache"] == "pip"
    cache = _uses(workflow, "test", "actions/cache")["with"]
    assert cache["path"] == "~/.cache/pip"
    assert "hashFiles('pyproject.toml')" in cache["key"]


def test_scripts_the_workflow_runs_exist_and_are_executable(workflow: dict[Any, Any]) -> None:
    for job in workflow["jobs"]:
        for command in _runs(workflow, job):
            for script in re.findall(r"scripts/[\w.-]+", command):
                path = REPO_ROOT / script
                assert path.exists(), f"job {job} runs {script}, which does not exist"
                if not command.startswith("bash "):
                    assert os.access(path, os.X_OK), f"{script} is not executable"


def test_images_build_with_the_gha_cache_and_push_only_on_tags(workflow: dict[Any, Any]) -> None:
    job = workflow["jobs"]["image"]
    assert set(job["needs"]) == {"lint", "test"}
    assert job["permissions"]["packages"] == "write"
    targets = job["strategy"]["matrix"]["target"]
    dockerfile_stages = {stage.name for stage in parse_dockerfile()}
    assert set(targets) <= dockerfile_stages, f"matrix targets {targets} not in the Dockerfile"
    assert any("scripts/build-image.sh github-outputs" in r for r in _runs(workflow, "image"))
    build = _uses(workflow, "image", "docker/build-push-action")["with"]
    assert build["target"] == "${{ matrix.target }}"
    assert build["cache-from"].startswith("type=gha")
    assert build["cache-to"].startswith("type=gha,mode=max")
    assert build["push"] == "${{ startsWith(github.ref, 'refs/tags/v') }}"
    login = _uses(workflow, "image", "docker/login-action")
    assert login["if"] == "startsWith(github.ref, 'refs/tags/v')"


def test_outputs_the_workflow_reads_are_the_ones_the_script_writes(
    workflow: dict[Any, Any],
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "GITHUB_REF": "refs/tags/v1.2.3",
        "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
        "GITHUB_REPOSITORY": "Example/Playback-DRM",
    }
    out = subprocess.run(
        [str(BUILD_SCRIPT), "github-outputs"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=30,
    ).stdout
    written = set(re.findall(r"^([\w-]+)(?:=|<<)", out, flags=re.MULTILINE))
    text = WORKFLOW.read_text()
    read = set(re.findall(r"steps\.meta\.outputs\.([\w-]+)", text))
    for target in workflow["jobs"]["image"]["strategy"]["matrix"]["target"]:
        if "format('{0}-tags', matrix.target)" in text:
            read.add(f"{target}-tags")
    assert read <= written, f"the workflow reads {read - written}, which the script never writes"
