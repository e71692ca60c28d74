"""Checks over rendered manifests: schemas, and the names and ports objects use to find each other.

Every check returns a list of messages, each starting with the object it is about
(``Deployment/playback-edge: ...``), so a failing test says where to look. The checks know the
conventions of these manifests (an ``envoy`` container whose ``-c`` file an init container
renders from the ``playback-envoy`` ConfigMap, ``*_ADDR`` variables holding listen addresses) and
otherwise follow Kubernetes' semantics: a named ``targetPort`` or probe port must be a container
port of that name, selectors match labels (``matchLabels`` and ``matchExpressions``), ``optional``
references may be missing.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import yaml

from devstack import checkconfig
from envoyconf import render, render_sds
from tests.k8s.crd_schemas import CRD_SCHEMAS
from tests.k8s.crds import vendored_schema
from tests.k8s.render import Obj, ref

# Oldest Kubernetes the manifests support, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "1.37.0")

CERT_MANAGER_KEYS = frozenset({"tls.crt", "tls.key", "ca.crt"})
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
ANY_ADDRESS = frozenset({"0.0.0.0", "::"})
APP_ROOT_CHECKS = ("readinessProbe", "livenessProbe")
ISTIO_INJECTED_IMAGE = "auto"  # Istio's gateway injection fills the container in


# ------------------------------------------------------------------------------------ schemas


def _path(parts: Any) -> str:
    return ".".join(str(p) for p in parts) or "(root)"


def schema_errors(objs: list[Obj], version: str) -> list[str]:
    """Strict validation: Kubernetes' own schemas, or ours (crd_schemas) for custom resources."""
    errors: list[str] = []
    for obj in objs:
        errors.extend(_object_schema_errors(json.dumps(obj, sort_keys=True), version))
    return errors


@functools.lru_cache(maxsize=4096)
def _object_schema_errors(obj_json: str, version: str) -> tuple[str, ...]:
    """Cached by content: an object unchanged since the last run is not validated again."""
    obj = json.loads(obj_json)
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    schema = CRD_SCHEMAS.get(key)
    source = "tests/k8s/crd_schemas.py"
    vendored = vendored_schema(*key)
    if schema is None and vendored is not None:
        schema, crd_file = vendored
        source = f"the vendored CRD tests/k8s/crds/{crd_file}, made strict"
    if schema is not None:
        validator = _validator(key, source, schema)
        return tuple(
            f"{ref(obj)}: {_path(err.absolute_path)}: {err.message} "
            f"(schema for {key[0]} {key[1]} from {source})"
            for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        )
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return (
            f"{ref(obj)}: {_path(err.path)}: {err.message} "
            f"(Kubernetes {err.version} strict schema)",
        )
    except kubernetes_validate.SchemaNotFoundError as err:
        return (
            f"{ref(obj)}: no schema for {key[0]} {key[1]} ({err.message}); a custom resource "
            "needs an entry in tests/k8s/crd_schemas.py",
        )
    return ()


_VALIDATORS: dict[tuple[str, str, str], Any] = {}


def _validator(key: tuple[str, str], source: str, schema: dict[str, Any]) -> Any:
    """One validator per kind and schema source (schemas are dicts: not a cache key)."""
    found = _VALIDATORS.get((*key, source))
    if found is None:
        found = _VALIDATORS[(*key, source)] = jsonschema.Draft202012Validator(schema)
    return found


# ------------------------------------------------------------------------------------ the index


@dataclass(frozen=True)
class Provided:
    """Keys a ConfigMap/Secret has (or will have, when an operator writes it)."""

    keys: frozenset[str]
    values: dict[str, str | None]
    open: bool = False  # more keys may exist (ExternalSecret dataFrom)
    source: str = ""


@dataclass
class Index:
    objs: list[Obj]
    by_kind: dict[str, list[Obj]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for obj in self.objs:
            self.by_kind.setdefault(obj.get("kind", ""), []).append(obj)

    def of(self, kind: str) -> list[Obj]:
        return self.by_kind.get(kind, [])

    def get(self, kind: str, name: str) -> Obj | None:
        for obj in self.of(kind):
            if obj.get("metadata", {}).get("name") == name:
                return obj
        return None

    def workloads(self) -> Iterator[tuple[Obj, Obj]]:
        """(Deployment, pod template) pairs."""
        for dep in self.of("Deployment"):
            yield dep, dep.get("spec", {}).get("template", {})

    def provided(self, kind: str, name: str) -> Provided | None:
        if kind == "ConfigMap":
            cm = self.get("ConfigMap", name)
            if cm is None:
                return None
            data = dict(cm.get("data") or {})
            keys = frozenset(data) | frozenset(cm.get("binaryData") or {})
            return Provided(keys, {k: data.get(k) for k in keys}, source=ref(cm))
        secret = self.get("Secret", name)
        if secret is not None:
            values: dict[str, str | None] = {
                k: base64.b64decode(v).decode(errors="replace")
                for k, v in (secret.get("data") or {}).items()
            }
            values.update(secret.get("stringData") or {})
            return Provided(frozenset(values), values, source=ref(secret))
        for es in self.of("ExternalSecret"):
            spec = es.get("spec", {})
            target = spec.get("target", {}).get("name") or es["metadata"]["name"]
            if target == name:
                keys = frozenset(d["secretKey"] for d in spec.get("data") or [])
                return Provided(
                    keys, dict.fromkeys(keys), open=bool(spec.get("dataFrom")), source=ref(es)
                )
        for cert in self.of("Certificate"):
            if cert.get("spec", {}).get("secretName") == name:
                return Provided(
                    CERT_MANAGER_KEYS, dict.fromkeys(CERT_MANAGER_KEYS), source=ref(cert)
                )
        return None


# ------------------------------------------------------------------------------------ helpers


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics; an empty selector matches everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_labels(template: Obj) -> dict[str, str]:
    return dict(template.get("metadata", {}).get("labels") or {})


def containers(template: Obj) -> list[Obj]:
    spec = template.get("spec", {})
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def container_ports(container: Obj) -> dict[str, int]:
    """Named ports by name, every port also by its number as a string."""
    ports: dict[str, int] = {}
    for port in container.get("ports") or []:
        number = int(port["containerPort"])
        ports[str(number)] = number
        if port.get("name"):
            ports[port["name"]] = number
    return ports


def resolve_port(port: int | str, ports: dict[str, int]) -> int | None:
    return ports.get(str(port))


def quantity_bytes(value: str | int) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    text = str(value)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


_SLEEP_RE = re.compile(r"sleep\(\s*(\d+(?:\.\d+)?)\s*\)")


def prestop_seconds(container: Obj) -> float:
    """How long a container's preStop hook keeps it alive (0 when it has none)."""
    pre = container.get("lifecycle", {}).get("preStop") or {}
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command") or []
    if command[:1] == ["sleep"] and len(command) == 2:
        return float(command[1])
    return sum(float(m) for m in _SLEEP_RE.findall(" ".join(command)))


def arg_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def container_env(index: Index, container: Obj) -> tuple[dict[str, str | None], list[str]]:
    """The variables a container gets (value None: written by an operator, unknown here), and
    the reference errors found on the way."""
    errors: list[str] = []
    env: dict[str, str | None] = {}
    name = container.get("name", "?")
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key not in source:
                continue
            ref_name = source[key]["name"]
            provided = index.provided(kind, ref_name)
            if provided is None:
                if not source[key].get("optional"):
                    errors.append(f"container {name}: envFrom {kind} {ref_name!r} does not exist")
                continue
            for k, v in provided.values.items():
                env[prefix + k] = v
    for var in container.get("env") or []:
        value_from = var.get("valueFrom")
        if value_from is None:
            env[var["name"]] = var.get("value", "")
            continue
        for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            if key not in value_from:
                continue
            sel = value_from[key]
            provided = index.provided(kind, sel["name"])
            what = f"container {name}: env {var['name']} refers to {kind} {sel['name']!r}"
            if provided is None:
                if not sel.get("optional"):
                    errors.append(f"{what}, which does not exist")
            elif sel["key"] not in provided.keys and not provided.open:
                if not sel.get("optional"):
                    errors.append(
                        f"{what} key {sel['key']!r}, which {provided.source} does not have "
                        f"(keys: {', '.join(sorted(provided.keys)) or 'none'})"
                    )
            else:
                env[var["name"]] = provided.values.get(sel["key"])
        if "fieldRef" in value_from or "resourceFieldRef" in value_from:
            env[var["name"]] = None
    return env, errors


def mounted_files(
    index: Index, template: Obj, container: Obj
) -> tuple[dict[str, str | None], list[str]]:
    """Absolute path -> content (None: a Secret's content, unknown) of ConfigMap/Secret files."""
    errors: list[str] = []
    files: dict[str, str | None] = {}
    volumes = {v["name"]: v for v in template.get("spec", {}).get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            errors.append(
                f"container {container['name']}: volumeMount {mount['name']!r} has no volume"
            )
            continue
        sources: list[tuple[str, Obj]] = []
        if "configMap" in volume:
            sources.append(("ConfigMap", volume["configMap"]))
        if "secret" in volume:
            sources.append(("Secret", {**volume["secret"], "name": volume["secret"]["secretName"]}))
        for src in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in src:
                sources.append(("ConfigMap", src["configMap"]))
            if "secret" in src:
                sources.append(("Secret", src["secret"]))
        for kind, src in sources:
            provided = index.provided(kind, src["name"])
            if provided is None:
                if not src.get("optional"):
                    errors.append(f"volume {volume['name']}: {kind} {src['name']!r} does not exist")
                continue
            items = src.get("items") or [{"key": k, "path": k} for k in sorted(provided.keys)]
            for item in items:
                if item["key"] not in provided.keys and not provided.open:
                    errors.append(
                        f"volume {volume['name']}: {kind} {src['name']!r} ({provided.source}) has "
                        f"no key {item['key']!r}"
                    )
                    continue
                path = str(PurePosixPath(mount["mountPath"]) / item["path"])
                files[path] = provided.values.get(item["key"])
    return files, errors


# ------------------------------------------------------------------------------------ checks


def workload_errors(index: Index) -> list[str]:
    """Pod hardening, probes, resources, spreading, references to ConfigMaps/Secrets/accounts."""
    errors: list[str] = []
    for dep, template in index.workloads():
        where = ref(dep)
        spec = template.get("spec", {})
        labels = pod_labels(template)
        if not selector_matches(dep["spec"].get("selector"), labels):
            errors.append(f"{where}: spec.selector does not match the pod template labels")
        pod_sc = spec.get("securityContext") or {}
        if (
            spec.get("serviceAccountName")
            and index.get("ServiceAccount", spec["serviceAccountName"]) is None
        ):
            errors.append(f"{where}: ServiceAccount {spec['serviceAccountName']!r} does not exist")
        if not spec.get("topologySpreadConstraints"):
            errors.append(f"{where}: no topologySpreadConstraints")
        for tsc in spec.get("topologySpreadConstraints") or []:
            if not selector_matches(tsc.get("labelSelector"), labels) or not tsc.get(
                "labelSelector"
            ):
                errors.append(
                    f"{where}: topologySpreadConstraint on {tsc.get('topologyKey')} does not "
                    "select the Deployment's own pods"
                )
        init_names = {c["name"] for c in spec.get("initContainers") or []}
        for c in containers(template):
            cname = f"container {c['name']}"
            sc = c.get("securityContext") or {}
            if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
                errors.append(f"{where}: {cname} may run as root (runAsNonRoot is not true)")
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{where}: {cname} allows privilege escalation")
            if sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{where}: {cname} has a writable root filesystem")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                errors.append(f"{where}: {cname} does not drop ALL capabilities")
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            if seccomp != "RuntimeDefault":
                errors.append(f"{where}: {cname} seccompProfile is {seccomp!r}, not RuntimeDefault")
            resources = c.get("resources") or {}
            for section in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in (resources.get(section) or {}):
                        errors.append(f"{where}: {cname} has no {section}.{res}")
            ports = container_ports(c)
            for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(probe_name)
                if c["name"] in init_names:
                    if probe is not None:  # the API server refuses probes on init containers
                        errors.append(f"{where}: init {cname} has a {probe_name}")
                    continue
                if probe is None:
                    # Istio's injected gateway proxy (`image: auto`) has no liveness endpoint
                    # that ignores istiod: an istiod outage must not restart gateways.
                    injected = c.get("image") == ISTIO_INJECTED_IMAGE
                    if probe_name in APP_ROOT_CHECKS and not (
                        injected and probe_name == "livenessProbe"
                    ):
                        errors.append(f"{where}: {cname} has no {probe_name}")
                    continue
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    if handler in probe:
                        port = probe[handler]["port"]
                        if resolve_port(port, ports) is None:
                            errors.append(
                                f"{where}: {cname} {probe_name} port {port!r} is not one of its "
                                f"container ports ({', '.join(sorted(ports)) or 'none'})"
                            )
            _, env_errors = container_env(index, c)
            _, file_errors = mounted_files(index, template, c)
            errors.extend(f"{where}: {e}" for e in env_errors + file_errors)
    return errors


def termination_errors(index: Index) -> list[str]:
    """Envoy drains before the apps stop; everything fits in terminationGracePeriodSeconds."""
    errors: list[str] = []
    for dep, template in index.workloads():
        where = ref(dep)
        spec = template.get("spec", {})
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        by_name = {c["name"]: c for c in spec.get("containers") or []}
        for c in by_name.values():
            if prestop_seconds(c) >= grace:
                errors.append(
                    f"{where}: container {c['name']} preStop ({prestop_seconds(c):g}s) does not "
                    f"fit in terminationGracePeriodSeconds ({grace:g}s)"
                )
        envoy = by_name.get("envoy")
        if envoy is None:
            continue
        pre = envoy.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command") or []
        if "drain_listeners?graceful" not in " ".join(pre):
            errors.append(f"{where}: envoy preStop does not call /drain_listeners?graceful")
        envoy_wait = prestop_seconds(envoy)
        drain = arg_value([str(a) for a in envoy.get("args") or []], "--drain-time-s")
        if drain is None or float(drain) >= envoy_wait:
            errors.append(
                f"{where}: envoy --drain-time-s ({drain}) must be shorter than its preStop "
                f"({envoy_wait:g}s), or Envoy is killed while still draining"
            )
        for c in by_name.values():
            if c is not envoy and prestop_seconds(c) <= envoy_wait:
                errors.append(
                    f"{where}: container {c['name']} preStop ({prestop_seconds(c):g}s) must "
                    f"outlast envoy's ({envoy_wait:g}s): it would stop while Envoy still sends "
                    "it requests"
                )
    return errors


def scaling_errors(index: Index) -> list[str]:
    errors: list[str] = []
    hpa_targets: dict[str, Obj] = {}
    for hpa in index.of("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if target.get("kind") != "Deployment" or index.get("Deployment", target["name"]) is None:
            errors.append(
                f"{ref(hpa)}: scaleTargetRef {target.get('kind')}/{target['name']} does not exist"
            )
            continue
        hpa_targets[target["name"]] = hpa
        if int(hpa["spec"].get("minReplicas", 1)) < 2:
            errors.append(f"{ref(hpa)}: minReplicas below 2")
        resources = {
            m["resource"]["name"]
            for m in hpa["spec"].get("metrics") or []
            if m["type"] == "Resource"
        }
        for needed in ("cpu", "memory"):
            if needed not in resources:
                errors.append(f"{ref(hpa)}: does not scale on {needed}")
    for dep, template in index.workloads():
        replicas = dep["spec"].get("replicas")
        if dep["metadata"]["name"] in hpa_targets:
            if replicas is not None:
                errors.append(
                    f"{ref(dep)}: sets spec.replicas although "
                    f"{ref(hpa_targets[dep['metadata']['name']])} owns it"
                )
        elif replicas is None or int(replicas) < 2:
            errors.append(f"{ref(dep)}: fewer than 2 replicas and no HorizontalPodAutoscaler")
        labels = pod_labels(template)
        pdbs = [
            p
            for p in index.of("PodDisruptionBudget")
            if selector_matches(p["spec"].get("selector"), labels)
        ]
        if not pdbs:
            errors.append(f"{ref(dep)}: no PodDisruptionBudget selects its pods")
    for pdb in index.of("PodDisruptionBudget"):
        matched = [
            d
            for d, t in index.workloads()
            if selector_matches(pdb["spec"].get("selector"), pod_labels(t))
        ]
        if len(matched) != 1:
            errors.append(
                f"{ref(pdb)}: selector matches {len(matched)} Deployments "
                f"({', '.join(ref(d) for d in matched) or 'none'}); expected exactly one"
            )
    return errors


def _selected_pods(index: Index, selector: dict[str, Any] | None) -> list[tuple[Obj, Obj]]:
    return [(d, t) for d, t in index.workloads() if selector_matches(selector, pod_labels(t))]


def _pod_ports(template: Obj) -> dict[str, int]:
    ports: dict[str, int] = {}
    for c in template.get("spec", {}).get("containers") or []:
        ports.update(container_ports(c))
    return ports


def service_errors(index: Index) -> list[str]:
    errors: list[str] = []
    for svc in index.of("Service"):
        spec = svc.get("spec", {})
        if spec.get("type") == "ExternalName":
            if not spec.get("externalName"):
                errors.append(f"{ref(svc)}: ExternalName Service without spec.externalName")
            continue
        selector = spec.get("selector")
        if not selector:
            errors.append(f"{ref(svc)}: no selector")
            continue
        pods = _selected_pods(index, {"matchLabels": selector})
        if not pods:
            errors.append(f"{ref(svc)}: selector {selector} matches no Deployment's pods")
        headless = spec.get("clusterIP") == "None"
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port["port"])
            for dep, template in pods:
                number = resolve_port(target, _pod_ports(template))
                if number is None:
                    errors.append(
                        f"{ref(svc)}: port {port.get('name', port['port'])} targetPort {target!r} "
                        f"is not a container port of {ref(dep)}"
                    )
                elif headless and number != int(port["port"]):
                    errors.append(
                        f"{ref(svc)}: headless Service port {port['port']} maps to container port "
                        f"{number}: clients resolve pod IPs and connect to {port['port']} directly"
                    )
    return errors


def network_policy_errors(index: Index) -> list[str]:
    errors: list[str] = []
    covered: set[str] = set()
    for pol in index.of("NetworkPolicy"):
        spec = pol["spec"]
        selector = spec.get("podSelector") or {}
        if not selector:
            continue  # namespace-wide (default deny)
        pods = _selected_pods(index, selector)
        if not pods:
            errors.append(f"{ref(pol)}: podSelector {selector} matches no Deployment's pods")
        covered.update(d["metadata"]["name"] for d, _ in pods)
        for i, rule in enumerate(spec.get("ingress") or []):
            for peer in rule.get("from") or []:
                same_namespace = "podSelector" in peer and "namespaceSelector" not in peer
                if same_namespace and not _selected_pods(index, peer["podSelector"]):
                    errors.append(
                        f"{ref(pol)}: ingress[{i}] from podSelector {peer['podSelector']} "
                        "matches no Deployment's pods in this namespace"
                    )
            for port in rule.get("ports") or []:
                for dep, template in pods:
                    if "port" in port and resolve_port(port["port"], _pod_ports(template)) is None:
                        errors.append(
                            f"{ref(pol)}: ingress[{i}] port {port['port']!r} is not a container "
                            f"port of {ref(dep)}"
                        )
    for dep, _ in index.workloads():
        if dep["metadata"]["name"] not in covered:
            errors.append(f"{ref(dep)}: no NetworkPolicy selects its pods")
    return errors


# The settings that name a service the container connects to (a URL or host:port; lists are
# comma-separated). JWT_ISSUER, ORIGIN_URL and PUBLIC_BASE_URLS name hosts nobody connects to.
CONNECTION_SETTINGS = (
    "NATS_URL",
    "REDIS_URL",
    "JWKS_URL",
    "BILLING_URL",
    "VAULT_ADDR",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "WIDEVINE_LICENSE_URL",
    "PLAYREADY_LICENSE_URL",
    "FAIRPLAY_KSM_URL",
    "FAIRPLAY_CERTIFICATE_URL",
)
DEFAULT_PORTS = {"http": 80, "https": 443, "nats": 4222, "tls": 4222, "redis": 6379, "rediss": 6379}


def _destinations(value: str) -> list[tuple[str, int]]:
    """host, port of each URL (or host:port) in a setting's value."""
    found: list[tuple[str, int]] = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        parts = urlsplit(item if "://" in item else f"tcp://{item}")
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        if parts.hostname and port:
            found.append((parts.hostname, port))
    return found


def _peer_allows(peer: Obj, namespace: str | None, index: Index, pods: list[str]) -> bool:
    """Whether a NetworkPolicy peer admits a destination: a namespace's pods (namespace set),
    our own pods (``pods``: Deployment names) or an address outside the cluster (neither)."""
    if namespace is not None:
        return "namespaceSelector" in peer and selector_matches(
            peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}
        )
    if pods:
        if "podSelector" not in peer or "namespaceSelector" in peer:
            return False
        selected = {d["metadata"]["name"] for d, _ in _selected_pods(index, peer["podSelector"])}
        return set(pods) <= selected
    return "ipBlock" in peer


def _rule_allows(rule: Obj, port: int, protocol: str = "TCP") -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    return any(
        p.get("protocol", "TCP") == protocol and str(p.get("port")) == str(port) for p in ports
    )


def egress_errors(index: Index) -> list[str]:
    """Every workload's egress is restricted, DNS is allowed, and so is each destination its
    containers are configured with (settings and Envoy clusters)."""
    errors: list[str] = []
    policies = [
        p for p in index.of("NetworkPolicy") if "Egress" in p["spec"].get("policyTypes", [])
    ]
    envoy = {ref(p.deployment): p for p in envoy_pods(index)[0]}
    for dep, template in index.workloads():
        where = ref(dep)
        labels = pod_labels(template)
        rules = [
            rule
            for pol in policies
            if selector_matches(pol["spec"].get("podSelector"), labels)
            for rule in pol["spec"].get("egress") or []
        ]
        if not any(selector_matches(p["spec"].get("podSelector"), labels) for p in policies):
            if not _mesh_gateway(template):
                errors.append(f"{where}: no egress NetworkPolicy selects its pods")
            continue
        dns = [
            r
            for r in rules
            if _rule_allows(r, 53, "UDP")
            and any(_peer_allows(peer, "kube-system", index, []) for peer in r.get("to") or [])
        ]
        if not dns:
            errors.append(f"{where}: egress allows no DNS (UDP 53 to kube-system)")
        wanted: list[tuple[str, str, int]] = []
        for c in template["spec"]["containers"]:
            env, _ = container_env(index, c)
            for name in CONNECTION_SETTINGS:
                if env.get(name):
                    wanted += [(name, h, p) for h, p in _destinations(str(env[name]))]
        if where in envoy:
            config = yaml.safe_load(envoy[where].config_text)
            for cluster in config.get("static_resources", {}).get("clusters") or []:
                for key, value in _walk(cluster.get("load_assignment", {})):
                    if key == "socket_address" and value["address"] not in LOOPBACK:
                        what = f"Envoy cluster {cluster['name']}"
                        wanted.append((what, value["address"], int(value["port_value"])))
        for what, host, port in wanted:
            if host in LOOPBACK:
                continue
            namespace, pods, target = _where_is(index, host, port)
            allowed = any(
                _rule_allows(rule, target)
                and any(_peer_allows(peer, namespace, index, pods) for peer in rule.get("to") or [])
                for rule in rules
            )
            if not allowed:
                errors.append(
                    f"{where}: {what} connects to {host}:{port}, which no egress rule allows"
                )
    return errors


def _mesh_gateway(template: Obj) -> bool:
    """Istio's injected gateway: its proxy's destinations are istiod's to decide."""
    return any(c.get("image") == ISTIO_INJECTED_IMAGE for c in template["spec"]["containers"])


def _where_is(index: Index, host: str, port: int) -> tuple[str | None, list[str], int]:
    """A destination as NetworkPolicy sees it: (namespace of a cluster Service, our Deployments
    behind a Service of our own, the port the pods listen on); (None, [], port) outside."""
    labels = host.split(".")
    if len(labels) == 1:
        svc = index.get("Service", host)
        if svc is None:
            return None, [], port
        spec = svc["spec"]
        if spec.get("type") == "ExternalName":
            return _where_is(index, spec["externalName"], port)
        if not spec.get("selector"):
            return None, [], port
        pods = _selected_pods(index, {"matchLabels": spec["selector"]})
        target = port
        for p in spec.get("ports") or []:
            if int(p["port"]) == port:
                for _, tmpl in pods:
                    resolved = resolve_port(p.get("targetPort", port), _pod_ports(tmpl))
                    target = resolved if resolved is not None else target
        return None, [d["metadata"]["name"] for d, _ in pods], target
    if "svc" in labels:
        return labels[labels.index("svc") - 1], [], port
    return None, [], port


def monitoring_errors(index: Index) -> list[str]:
    errors: list[str] = []
    for sm in index.of("ServiceMonitor"):
        services = [
            s
            for s in index.of("Service")
            if selector_matches(sm["spec"].get("selector"), s["metadata"].get("labels") or {})
        ]
        if not services:
            errors.append(f"{ref(sm)}: selector matches no Service")
        for endpoint in sm["spec"].get("endpoints") or []:
            for svc in services:
                names = {p.get("name") for p in svc["spec"].get("ports") or []}
                if endpoint.get("port") not in names:
                    errors.append(
                        f"{ref(sm)}: endpoint port {endpoint.get('port')!r} is not a port name of "
                        f"{ref(svc)} ({', '.join(sorted(n for n in names if n))})"
                    )
    if index.of("Deployment") and not index.of("PrometheusRule"):
        errors.append("PrometheusRule: none rendered")
    return errors


# ------------------------------------------------------------------------------------ Envoy


@dataclass(frozen=True)
class EnvoyPod:
    deployment: Obj
    template: Obj
    container: Obj
    config_path: str
    config_text: str
    files: dict[str, str | None]


def envoy_pods(index: Index) -> tuple[list[EnvoyPod], list[str]]:
    """The Envoy configuration each pod with an ``envoy`` container really gets: rendered from its
    render init container's settings, as that container does (``python -m envoyconf render``),
    after every check ``playback-drm check-config`` makes."""
    pods: list[EnvoyPod] = []
    rendered, findings = checkconfig.check(index.objs)
    errors = [str(f) for f in findings]
    by_workload = {id(p.workload): p for p in rendered}
    for dep, template in index.workloads():
        for c in template.get("spec", {}).get("containers") or []:
            if c["name"] != "envoy":
                continue
            pod = by_workload.get(id(dep))
            if pod is None:
                errors.append(
                    f"{ref(dep)}: envoy container, but no init container renders its "
                    "configuration (python -m envoyconf render)"
                )
                continue
            if pod.settings is None:
                continue  # the findings name the bad settings
            # as the init container renders it: the SDS files next to the configuration
            settings = dataclasses.replace(
                pod.settings, sds_dir=str(PurePosixPath(pod.out_path).parent)
            )
            text = render(settings)
            files, _ = mounted_files(index, template, c)
            files.update(render_sds(settings))
            files[pod.out_path] = text
            pods.append(EnvoyPod(dep, template, c, pod.out_path, text, files))
    return pods, errors


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _listen_ports(env: dict[str, str | None]) -> set[int]:
    """Ports the app listens on, from its *_ADDR (host:port) and *_PORT variables."""
    ports: set[int] = set()
    for name, value in env.items():
        if value is None:
            continue
        if name.endswith("_ADDR") and re.fullmatch(r".*:\d+", value):
            ports.add(int(value.rsplit(":", 1)[1]))
        elif name.endswith("_PORT") and value.isdigit():
            ports.add(int(value))
    return ports


def envoy_errors(index: Index) -> list[str]:
    pods, errors = envoy_pods(index)
    for pod in pods:
        where = ref(pod.deployment)
        config = yaml.safe_load(pod.config_text)
        admin = config.get("admin", {}).get("address", {}).get("socket_address", {})
        if admin and admin.get("address") not in LOOPBACK:
            errors.append(f"{where}: Envoy admin listens on {admin.get('address')}, not loopback")
        sockets = [
            listener["address"]["socket_address"]
            for listener in config.get("static_resources", {}).get("listeners") or []
        ]
        listeners = {int(s["port_value"]): s["address"] for s in sockets}
        declared = {int(p["containerPort"]) for p in pod.container.get("ports") or []}
        for port in sorted(declared - set(listeners)):
            errors.append(
                f"{where}: envoy container port {port} has no listener in {pod.config_path}"
            )
        for port, address in sorted(listeners.items()):
            if address in ANY_ADDRESS and port not in declared:
                errors.append(
                    f"{where}: Envoy listener on port {port} is not declared as an envoy "
                    "container port"
                )
        # The TLS material comes through SDS files (envoyconf/sds.py), themselves mounted
        # ConfigMap files; each watches a directory for the kubelet's swap of `..data`.
        documents: list[tuple[str, Any]] = [(pod.config_path, config)]
        mount_paths = {m["mountPath"] for m in pod.container.get("volumeMounts") or []}
        for key, value in _walk(config):
            if key != "path_config_source":
                continue
            sds_path = value.get("path")
            sds_text = pod.files.get(sds_path)
            if sds_text is None:
                errors.append(
                    f"{where}: {pod.config_path} reads secrets from {sds_path}, which is not a "
                    "file of the pod (rendered or mounted)"
                )
                continue
            sds_doc = yaml.safe_load(sds_text)
            documents.append((sds_path, sds_doc))
            for secret in sds_doc.get("resources") or []:
                for body in (secret.get("tls_certificate"), secret.get("validation_context")):
                    if not body:
                        continue
                    watched = (body.get("watched_directory") or {}).get("path")
                    files = [v for k, v in _walk(body) if k == "filename"]
                    if watched not in mount_paths or not all(
                        f.startswith(f"{watched}/") for f in files
                    ):
                        errors.append(
                            f"{where}: {sds_path} watches {watched} for renewals of {files}: not "
                            "the root of the volume they are mounted from (a renewed Secret "
                            "would go unnoticed)"
                        )
        for name, document in documents:
            for key, value in _walk(document):
                if key == "filename" and isinstance(value, str) and value not in pod.files:
                    errors.append(
                        f"{where}: {name} reads {value}, which no volume mounts into the "
                        "envoy container"
                    )
        app_ports: set[int] = set()
        for c in pod.template["spec"]["containers"]:
            env, _ = container_env(index, c)
            app_ports |= _listen_ports(env) | set(container_ports(c).values())
        for cluster in config.get("static_resources", {}).get("clusters") or []:
            for _, value in _walk(cluster.get("load_assignment", {})):
                if not (isinstance(value, dict) and "port_value" in value and "address" in value):
                    continue
                host, port = value["address"], int(value["port_value"])
                if host in LOOPBACK:
                    if port not in app_ports and port != int(admin.get("port_value", -1)):
                        errors.append(
                            f"{where}: Envoy cluster {cluster['name']} calls 127.0.0.1:{port}, "
                            "which no container of the pod listens on"
                        )
                    continue
                svc = index.get("Service", host.split(".")[0])
                if svc is None:
                    errors.append(
                        f"{where}: Envoy cluster {cluster['name']} calls {host}:{port}, "
                        "no such Service"
                    )
                elif port not in {int(p["port"]) for p in svc["spec"].get("ports") or []}:
                    errors.append(
                        f"{where}: Envoy cluster {cluster['name']} calls {host}:{port}, but "
                        f"{ref(svc)} has no port {port}"
                    )
        limit = (pod.container.get("resources") or {}).get("limits", {}).get("memory")
        for key, value in _walk(config.get("overload_manager", {})):
            if key == "max_heap_size_bytes" and limit and int(value) >= quantity_bytes(limit):
                errors.append(
                    f"{where}: envoy memory limit {limit} is not above the overload manager's "
                    f"heap bound ({int(value)} bytes): the kernel would kill Envoy first"
                )
    return errors


# ------------------------------------------------------------------------------------ all


def reference_errors(objs: list[Obj]) -> list[str]:
    """Every cross-object check (not the schemas)."""
    index = Index(objs)
    return (
        workload_errors(index)
        + termination_errors(index)
        + scaling_errors(index)
        + service_errors(index)
        + network_policy_errors(index)
        + egress_errors(index)
        + monitoring_errors(index)
        + envoy_errors(index)
    )


def all_errors(objs: list[Obj]) -> list[str]:
    errors: list[str] = []
    for version in K8S_VERSIONS:
        errors += schema_errors(objs, version)
    return errors + reference_errors(objs)
