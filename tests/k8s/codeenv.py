"""Which environment variables the services really read.

Found statically: every ``from_env`` function in the service packages (the one place config is
read, per the house rules) is scanned for calls whose first argument is the ``env`` mapping and
whose second is a literal variable name (``env_str(env, "JWKS_URL")``, ``_hex(env, "X", 32)``),
for ``env["X"]`` / ``env.get("X")``, and for loops feeding literal names to such calls
(``for name, default in (("A", "1"), ("B", "2")): env_str(env, name, default)``). ``envoyconf``
counts too: its settings (``ENVOY_*``, ``CORS_*``, the table ``envoyconf.environment.SETTINGS``)
are read by the edge pod's init container when it renders the Envoy configuration. The emulators,
the demo and the local stack (``playback-drm up``) are not deployed and are left out.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from envoyconf.environment import SETTINGS
from tests.k8s.render import REPO_ROOT

# What the production image runs, and the Envoy configuration it is deployed with; devstack/ (the
# local stack, emulators, demo) is not deployed.
PACKAGES = ("authz", "extproc", "license_broker", "playback_drm", "envoyconf")
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _literal_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and _NAME.match(node.value):
        return node.value
    return None


def _is_env(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "env"


def _reads(function: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(function):
        name: str | None = None
        if isinstance(node, ast.Call):
            if len(node.args) >= 2 and _is_env(node.args[0]):
                name = _literal_name(node.args[1])
            elif (
                isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and _is_env(node.func.value)
                and node.args
            ):
                name = _literal_name(node.args[0])
        elif isinstance(node, ast.Subscript) and _is_env(node.value):
            name = _literal_name(node.slice)
        elif isinstance(node, ast.For):
            names |= _loop_names(node)
        if name:
            names.add(name)
    return names


def _loop_names(loop: ast.For) -> set[str]:
    """Literal names a loop passes to ``reader(env, <loop variable>, ...)``."""
    target = loop.target.elts[0] if isinstance(loop.target, ast.Tuple) else loop.target
    if not isinstance(target, ast.Name) or not isinstance(loop.iter, ast.Tuple | ast.List):
        return set()
    used = any(
        isinstance(n, ast.Call)
        and len(n.args) >= 2
        and _is_env(n.args[0])
        and isinstance(n.args[1], ast.Name)
        and n.args[1].id == target.id
        for statement in loop.body
        for n in ast.walk(statement)
    )
    if not used:
        return set()
    names: set[str] = set()
    for element in loop.iter.elts:
        first = element.elts[0] if isinstance(element, ast.Tuple) and element.elts else element
        name = _literal_name(first)
        if name:
            names.add(name)
    return names


@functools.cache
def env_reads() -> dict[str, tuple[str, ...]]:
    """Variable name -> the modules (repo-relative paths) whose ``from_env`` reads it."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT).as_posix()
            tree = ast.parse(path.read_text(), filename=rel)
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                    and node.name == "from_env"
                ):
                    for name in _reads(node):
                        found.setdefault(name, set()).add(rel)
    for setting in SETTINGS:  # read through the table, not by literal name
        found.setdefault(setting.key, set()).add("envoyconf/environment.py")
    return {name: tuple(sorted(modules)) for name, modules in sorted(found.items())}


_TABLE_ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|")


def documented_variables(*paths: Path) -> set[str]:
    """Variables listed in the first column of Markdown tables (`` | `NAME` | ... ``)."""
    names: set[str] = set()
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                match = _TABLE_ROW.match(line)
                if match:
                    names.add(match.group(1))
    return names
