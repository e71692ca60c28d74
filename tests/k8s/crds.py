"""Strict JSON Schemas from the vendored CustomResourceDefinitions (tests/k8s/crds/).

Each CRD version's ``openAPIV3Schema`` is a structural schema in which an object's unknown fields
are pruned silently by the API server (unless ``x-kubernetes-preserve-unknown-fields``). For
the tests an unknown field is an error, as it is for a Deployment under kubernetes-validate's
strict mode: every object schema that lists its ``properties`` (or lists none and preserves
nothing) gets ``additionalProperties: false``. ``metadata`` gets the ObjectMeta fields the
manifests may use. ``nullable`` and ``x-kubernetes-int-or-string`` become JSON Schema types.
``x-kubernetes-validations`` (CEL) rules are evaluated apart, by tests/k8s/crd_rules.py.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(__file__).resolve().parent / "crds"

Schema = dict[str, Any]
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
    "required": ["name"],
    "additionalProperties": False,
}


def _strict(node: Any) -> Any:
    """A copy of ``node`` in which unknown object fields are errors."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = out.get("x-kubernetes-preserve-unknown-fields") is True
    if out.get("type") == "object" and not preserve and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _schema_for(crd: dict[str, Any], version: dict[str, Any]) -> Schema:
    schema: Schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"const": f"{group}/{version['name']}"}
    props["kind"] = {"const": kind}
    props["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return schema


@dataclass(frozen=True)
class _Served:
    crd: dict[str, Any]
    version: dict[str, Any]
    source: str  # the file under tests/k8s/crds/


@functools.cache
def _served() -> dict[tuple[str, str], _Served]:
    """``(apiVersion, kind)`` -> the CRD and version serving it, for every vendored CRD."""
    found: dict[tuple[str, str], _Served] = {}
    for path in sorted(CRD_DIR.rglob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                found[key] = _Served(crd, version, str(path.relative_to(CRD_DIR)))
    return found


def raw_schema(api_version: str, kind: str) -> Schema | None:
    """The CRD's openAPIV3Schema as published (with its defaults and CEL rules)."""
    served = _served().get((api_version, kind))
    if served is None:
        return None
    schema: Schema = served.version["schema"]["openAPIV3Schema"]
    return schema


@functools.cache
def vendored_schemas() -> dict[tuple[str, str], tuple[Schema, str]]:
    """``(apiVersion, kind)`` -> (strict schema, the CRD file it comes from), for every served
    version of every vendored CRD."""
    return {
        key: (_schema_for(served.crd, served.version), served.source)
        for key, served in _served().items()
    }


def vendored_schema(api_version: str, kind: str) -> tuple[Schema, str] | None:
    return vendored_schemas().get((api_version, kind))


__all__ = ["CRD_DIR", "OBJECT_META", "raw_schema", "vendored_schema", "vendored_schemas"]
