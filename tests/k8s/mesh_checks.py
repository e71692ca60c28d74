"""How the Istio and Envoy Gateway resources find each other and the workloads: every selector
selects pods, every reference names an object (and port, and listener) that exists.

Like tests/k8s/checks.py, each message starts with the object it is about. The schemas say a
field is well formed; these say it points somewhere.
"""

from __future__ import annotations

import re
from typing import Any

from tests.k8s.checks import Index, pod_labels, selector_matches
from tests.k8s.render import Obj, ref


def _service_port(index: Index, name: str, port: int) -> str | None:
    """None when Service ``name`` has ``port``, else why not."""
    svc = index.get("Service", name)
    if svc is None:
        return f"Service {name!r} does not exist"
    ports = {int(p["port"]) for p in svc["spec"].get("ports") or []}
    if port not in ports:
        return f"Service {name!r} has no port {port} ({', '.join(map(str, sorted(ports)))})"
    return None


def _selects_pods(index: Index, labels: dict[str, str] | None) -> bool:
    return any(
        selector_matches({"matchLabels": labels or {}}, pod_labels(t)) for _, t in index.workloads()
    )


def _secret_provided(index: Index, name: str) -> bool:
    return index.provided("Secret", name) is not None


def _walk(node: Any) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((key, value))
            found += _walk(value)
    elif isinstance(node, list):
        for item in node:
            found += _walk(item)
    return found


# ------------------------------------------------------------------------------------- Istio


def istio_errors(index: Index, namespace: str) -> list[str]:
    errors: list[str] = []
    for gw in index.of("Gateway"):
        istio = gw["apiVersion"].startswith("networking.istio.io/")
        if istio and not _selects_pods(index, gw["spec"].get("selector")):
            errors.append(f"{ref(gw)}: selector {gw['spec'].get('selector')} selects no pods")
    gateways = {
        g["metadata"]["name"]
        for g in index.of("Gateway")
        if g["apiVersion"].startswith("networking.istio.io/")
    }
    route_names: set[str] = set()
    for vs in index.of("VirtualService"):
        for name in vs["spec"].get("gateways") or []:
            if name not in gateways:
                errors.append(f"{ref(vs)}: gateway {name!r} does not exist")
        for http in vs["spec"].get("http") or []:
            route_names.add(http["name"])
            for dest in http.get("route") or []:
                d = dest["destination"]
                problem = _service_port(index, d["host"].split(".")[0], int(d["port"]["number"]))
                if problem:
                    errors.append(f"{ref(vs)}: route {http['name']}: {problem}")
    for kind in ("AuthorizationPolicy", "PeerAuthentication"):
        for pol in index.of(kind):
            selector = (pol["spec"].get("selector") or {}).get("matchLabels")
            if selector is not None and not _selects_pods(index, selector):
                errors.append(f"{ref(pol)}: selector {selector} selects no pods")
    accounts = {sa["metadata"]["name"] for sa in index.of("ServiceAccount")}
    for pol in index.of("AuthorizationPolicy"):
        for key, value in _walk(pol["spec"].get("rules") or []):
            if key not in ("principals", "notPrincipals"):
                continue
            for principal in value:
                found = re.fullmatch(r"cluster\.local/ns/([^/]+)/sa/([^/]+)", principal)
                if found and found.group(1) == namespace and found.group(2) not in accounts:
                    errors.append(f"{ref(pol)}: principal {principal}: no such ServiceAccount")
    for ef in index.of("EnvoyFilter"):
        labels = (ef["spec"].get("workloadSelector") or {}).get("labels")
        if not _selects_pods(index, labels):
            errors.append(f"{ref(ef)}: workloadSelector {labels} selects no pods")
        for i, patch in enumerate(ef["spec"].get("configPatches") or []):
            route = ((patch.get("match") or {}).get("routeConfiguration", {}).get("vhost", {})).get(
                "route", {}
            )
            if route.get("name") and route["name"] not in route_names:
                errors.append(
                    f"{ref(ef)}: configPatches[{i}] matches route {route['name']!r}, which no "
                    "VirtualService names"
                )
            for key, value in _walk(patch.get("patch") or {}):
                if key == "cluster_name" and isinstance(value, str):
                    found = re.fullmatch(r"outbound\|(\d+)\|\|([^.]+)\.([^.]+)\.svc\..*", value)
                    if not found:
                        errors.append(f"{ref(ef)}: cluster {value!r} is not an outbound cluster")
                        continue
                    if found.group(3) != namespace:
                        errors.append(f"{ref(ef)}: cluster {value!r} is not in {namespace}")
                    problem = _service_port(index, found.group(2), int(found.group(1)))
                    if problem:
                        errors.append(f"{ref(ef)}: cluster {value!r}: {problem}")
    return errors


def mesh_config_errors(index: Index, mesh: Obj, namespace: str) -> list[str]:
    """The meshConfig snippet names the authz Service of this namespace, and the CUSTOM
    policies name its provider."""
    errors: list[str] = []
    providers = {p["name"]: p for p in mesh.get("extensionProviders") or []}
    for pol in index.of("AuthorizationPolicy"):
        if pol["spec"].get("action") != "CUSTOM":
            continue
        name = pol["spec"]["provider"]["name"]
        provider = providers.get(name)
        if provider is None:
            errors.append(f"{ref(pol)}: provider {name!r} is not in mesh-config.yaml")
            continue
        grpc = provider["envoyExtAuthzGrpc"]
        host, _, ns_and_rest = grpc["service"].partition(".")
        if not ns_and_rest.startswith(namespace + "."):
            errors.append(f"mesh-config.yaml: {grpc['service']} is not in namespace {namespace}")
        problem = _service_port(index, host, int(grpc["port"]))
        if problem:
            errors.append(f"mesh-config.yaml: provider {name}: {problem}")
    return errors


# ----------------------------------------------------------------------------- Envoy Gateway


def _target_errors(index: Index, policy: Obj, listeners: dict[str, set[str]]) -> list[str]:
    errors = []
    for target in policy["spec"].get("targetRefs") or []:
        kind, name = target["kind"], target["name"]
        obj = index.get(kind, name)
        if obj is None:
            errors.append(f"{ref(policy)}: target {kind}/{name} does not exist")
        elif target.get("sectionName") and target["sectionName"] not in listeners.get(name, set()):
            errors.append(f"{ref(policy)}: {kind}/{name} has no listener {target['sectionName']!r}")
    return errors


def envoy_gateway_errors(index: Index) -> list[str]:
    errors: list[str] = []
    listeners: dict[str, set[str]] = {}
    for gw in index.of("Gateway"):
        if not gw["apiVersion"].startswith("gateway.networking.k8s.io/"):
            continue
        listeners[gw["metadata"]["name"]] = {li["name"] for li in gw["spec"]["listeners"]}
        params = (gw["spec"].get("infrastructure") or {}).get("parametersRef")
        if params and index.get(params["kind"], params["name"]) is None:
            errors.append(f"{ref(gw)}: parametersRef {params['kind']}/{params['name']} is missing")
        for li in gw["spec"]["listeners"]:
            for cert in (li.get("tls") or {}).get("certificateRefs") or []:
                if not _secret_provided(index, cert["name"]):
                    errors.append(
                        f"{ref(gw)}: listener {li['name']}: certificate Secret {cert['name']!r} "
                        "is neither rendered nor issued by a Certificate"
                    )
    for hr in index.of("HTTPRoute"):
        for parent in hr["spec"]["parentRefs"]:
            if parent["name"] not in listeners:
                errors.append(f"{ref(hr)}: parent Gateway {parent['name']!r} does not exist")
            elif parent.get("sectionName") not in listeners[parent["name"]]:
                errors.append(f"{ref(hr)}: Gateway has no listener {parent.get('sectionName')!r}")
        for i, rule in enumerate(hr["spec"]["rules"]):
            for backend in rule.get("backendRefs") or []:
                problem = _service_port(index, backend["name"], int(backend["port"]))
                if problem:
                    errors.append(f"{ref(hr)}: rules[{i}]: {problem}")
            for flt in rule.get("filters") or []:
                ext = flt.get("extensionRef")
                if ext and index.get(ext["kind"], ext["name"]) is None:
                    errors.append(f"{ref(hr)}: rules[{i}]: {ext['kind']}/{ext['name']} is missing")
    for kind in (
        "SecurityPolicy",
        "EnvoyExtensionPolicy",
        "BackendTrafficPolicy",
        "ClientTrafficPolicy",
    ):
        for pol in index.of(kind):
            errors += _target_errors(index, pol, listeners)
            for key, value in _walk(pol["spec"]):
                if key == "backendRefs":
                    for backend in value:
                        problem = _service_port(index, backend["name"], int(backend["port"]))
                        if problem:
                            errors.append(f"{ref(pol)}: {problem}")
                if key == "caCertificateRefs":
                    for cert in value:
                        if cert["kind"] == "Secret" and not _secret_provided(index, cert["name"]):
                            errors.append(f"{ref(pol)}: CA Secret {cert['name']!r} is missing")
    return errors


__all__ = ["envoy_gateway_errors", "istio_errors", "mesh_config_errors"]
