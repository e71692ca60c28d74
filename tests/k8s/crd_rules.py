"""The CEL rules of the vendored CRDs (``x-kubernetes-validations``), evaluated as the API server
does before admitting an object: on each node of the object that has rules, with the schema's
defaults applied first, ``self`` bound to that node.

The rules these CRDs use are standard CEL (macros, ``has``, ``size``, string functions,
``matches``, ``duration``), which cel-python evaluates. A rule that cannot be evaluated is an
error, like a rule that fails: nothing is skipped. ``oldSelf`` transition rules do not apply to a
first apply and are left out (they name ``oldSelf``).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel

from tests.k8s.crds import raw_schema
from tests.k8s.render import Obj, ref

_ENV = celpy.Environment()


@functools.cache
def _program(rule: str) -> Any:
    # Kubernetes escapes property names that are CEL keywords: `namespace` is `__namespace__`
    return _ENV.program(_ENV.compile(rule.replace("__namespace__", "namespace")))


def _defaults(schema: dict[str, Any], node: Any) -> None:
    if isinstance(node, dict):
        properties = schema.get("properties") or {}
        for key, sub in properties.items():
            if key not in node and "default" in sub:
                node[key] = copy.deepcopy(sub["default"])
        for key, value in node.items():
            sub = properties.get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                _defaults(sub, value)
    elif isinstance(node, list) and isinstance(schema.get("items"), dict):
        for item in node:
            _defaults(schema["items"], item)


def _walk(schema: dict[str, Any], node: Any, path: str, errors: list[str]) -> None:
    for rule in schema.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"]:
            continue
        try:
            result = _program(rule["rule"]).evaluate({"self": json_to_cel(node)})
        except Exception as exc:  # a rule we cannot evaluate is not a rule that holds
            errors.append(f"{path}: rule {rule['rule']!r} could not be evaluated: {exc}")
            continue
        if not isinstance(result, celtypes.BoolType):
            errors.append(f"{path}: rule {rule['rule']!r} gave {result!r}, not a boolean")
        elif not result:
            errors.append(f"{path}: {rule.get('message') or rule['rule']}")
    if isinstance(node, dict):
        properties = schema.get("properties") or {}
        for key, value in node.items():
            sub = properties.get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                _walk(sub, value, f"{path}.{key}", errors)
    elif isinstance(node, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(node):
            _walk(schema["items"], item, f"{path}[{i}]", errors)


def rule_errors(objs: list[Obj]) -> list[str]:
    """Every CEL rule failure of the objects that have a vendored CRD, naming the object."""
    errors: list[str] = []
    for obj in objs:
        schema = raw_schema(obj["apiVersion"], obj["kind"])
        if schema is None:
            continue
        node = copy.deepcopy(obj)
        _defaults(schema, node)
        found: list[str] = []
        _walk(schema, node, "", found)
        errors += [f"{ref(obj)}: {e.lstrip('.')} (CEL rule of the CRD)" for e in found]
    return errors


__all__ = ["rule_errors"]
