"""The rendered manifests as ``podman kube play`` (podman 4.3, Debian bookworm) can run them.

Everything in the pod templates runs as written (images, command, args, env from ConfigMaps,
ports, securityContext, read-only root filesystem, uid/gid, resources, emptyDirs), except the
adaptations below, each for a podman 4.3 limitation or for the parts of a cluster podman does not
have. docs/DEPLOYMENT.md lists them ("Run what we ship"); ``ADAPTATIONS`` is that list.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

Obj = dict[str, Any]

ADAPTATIONS = {
    "replicas": "a Deployment becomes N Pods (N = its HorizontalPodAutoscaler's minReplicas): "
    "kube play runs one pod per Deployment",
    "probes": "readiness and liveness probes are removed and the test calls each one itself "
    "(same port and path, from inside the pod): podman runs probes as systemd timers, and "
    "there is no systemd here",
    "secrets": "env and envFrom from a Secret become literal values of the rendered Secret: "
    "podman 4.3 looks such references up in its own secret store, not in the YAML",
    "secret volumes": "a Secret volume (the sidecar's TLS certificate) becomes a hostPath "
    "directory the test lays out the kubelet's way (a ..data link, swapped on renewal): "
    "podman 4.3 looks Secret volumes up in its own secret store, and the test renews the "
    "certificate through that directory as cert-manager and the kubelet would",
    "emptyDir": "each emptyDir is renamed after its pod: podman 4.3 makes a named volume per "
    "emptyDir name, shared by every pod that uses the name (and ignores medium: Memory)",
    "services": "Services become DNS aliases on the test's podman network (every name form "
    "of the Service, an ExternalName's on the pod it names): there is no kube-proxy or "
    "cluster DNS",
    "published ports": "every container port gets a hostPort on 127.0.0.1 (a free one): podman "
    "4.3 publishes a containerPort without hostPort on every host interface at the same number "
    "(two replicas collide, and nothing of a pod should listen beyond loopback); the test's "
    "client plays the API gateway through the edge's published https port",
    "init containers": "init containers run as podman's `always` kind (pod annotation "
    "io.podman.annotations.init.container.type): its default `once` kind fails the pod's start "
    "in podman 4.3 when it removes an init container that has not finished exiting",
    "restartPolicy": "pods run with restartPolicy OnFailure instead of the Deployment's Always: "
    "podman 4.3 gives init containers the pod's restart policy, and under Always it starts them "
    "again as soon as they exit, in a loop (the edge's render and validate steps ran about once "
    "a second for the pod's whole life, two cores' worth of CPU); under OnFailure an init "
    "container runs once and again only on failure, as in Kubernetes, and the app containers, "
    "which exit only when stopped, restart when they fail",
    "preStop": "podman ignores lifecycle hooks (kept in the pod as written): the restart test "
    "(tests/pods/restart.py) runs each hook with podman exec and stops "
    "each container when its hook returns, within the grace period, as the kubelet does",
}


@dataclass
class Probe:
    container: str
    kind: str  # readinessProbe, livenessProbe
    port: int
    path: str


@dataclass
class PodPlan:
    name: str
    deployment: str
    labels: dict[str, str]
    document: Obj
    config_maps: list[Obj]
    aliases: list[str] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    published: dict[int, int] = field(default_factory=dict)  # container port -> host port
    pre_stop: dict[str, list[str]] = field(default_factory=dict)  # container -> command
    grace_seconds: int = 30

    def yaml(self) -> str:
        return yaml.safe_dump_all([*self.config_maps, self.document], sort_keys=False)


def service_names(name: str, namespace: str) -> list[str]:
    return [
        name,
        f"{name}.{namespace}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}.svc.cluster.local",
    ]


def _matches(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def _secret_values(objs: list[Obj]) -> dict[str, dict[str, str]]:
    values: dict[str, dict[str, str]] = {}
    for obj in objs:
        if obj["kind"] == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
            data.update(obj.get("stringData") or {})
            values[obj["metadata"]["name"]] = data
    return values


def _container_ports(container: Obj) -> dict[str, int]:
    ports: dict[str, int] = {}
    for p in container.get("ports") or []:
        ports[str(p["containerPort"])] = int(p["containerPort"])
        if "name" in p:
            ports[p["name"]] = int(p["containerPort"])
    return ports


def convert(
    objs: list[Obj],
    *,
    prefix: str,
    host_dir: Callable[[str, Obj], str],
    publish: Callable[[str, str, int], int],
) -> list[PodPlan]:
    """One plan per pod: ``host_dir(pod, volume)`` names the directory standing in for a
    Secret (or projected) volume; ``publish(pod, container, port)`` the loopback port a
    container port is published on."""
    namespace = next(o["metadata"]["name"] for o in objs if o["kind"] == "Namespace")
    secrets = _secret_values(objs)
    config_maps = [o for o in objs if o["kind"] == "ConfigMap"]
    replicas = {
        o["spec"]["scaleTargetRef"]["name"]: int(o["spec"].get("minReplicas", 1))
        for o in objs
        if o["kind"] == "HorizontalPodAutoscaler"
    }
    services = [o for o in objs if o["kind"] == "Service"]
    plans: list[PodPlan] = []
    for dep in (o for o in objs if o["kind"] == "Deployment"):
        dep_name = dep["metadata"]["name"]
        template = dep["spec"]["template"]
        for i in range(replicas.get(dep_name, int(dep["spec"].get("replicas", 1)))):
            name = f"{prefix}{dep_name}-{i}"
            labels = dict(template["metadata"].get("labels") or {})
            spec = copy.deepcopy(template["spec"])
            plan = PodPlan(
                name=name,
                deployment=dep_name,
                labels=labels,
                document={},
                config_maps=config_maps,
                grace_seconds=int(spec.get("terminationGracePeriodSeconds", 30)),
            )
            renamed: dict[str, str] = {}
            for volume in spec.get("volumes") or []:
                if "projected" in volume or "secret" in volume:
                    volume_name = volume["name"]
                    path = host_dir(name, volume)
                    volume.clear()
                    volume.update({"name": volume_name, "hostPath": {"path": path}})
                if "emptyDir" in volume:
                    renamed[volume["name"]] = f"{name}-{volume['name']}"
                    volume["name"] = renamed[volume["name"]]
            for c in spec.get("initContainers") or []:
                for mount in c.get("volumeMounts") or []:
                    mount["name"] = renamed.get(mount["name"], mount["name"])
            for c in spec["containers"]:
                ports = _container_ports(c)
                for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                    probe = c.pop(kind, None)
                    if probe and "httpGet" in probe:
                        port = probe["httpGet"]["port"]
                        plan.probes.append(
                            Probe(c["name"], kind, ports[str(port)], probe["httpGet"]["path"])
                        )
                hook = ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec")
                if hook:
                    plan.pre_stop[c["name"]] = list(hook["command"])
                env: list[Obj] = []
                for source in c.pop("envFrom", None) or []:
                    if "secretRef" in source:
                        for k, v in secrets[source["secretRef"]["name"]].items():
                            env.append({"name": source.get("prefix", "") + k, "value": v})
                    else:
                        env.append({"__envFrom": source})
                for var in c.get("env") or []:
                    ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        env.append({"name": var["name"], "value": secrets[ref["name"]][ref["key"]]})
                    else:
                        env.append(var)
                env_from = [e["__envFrom"] for e in env if "__envFrom" in e]
                if env_from:
                    c["envFrom"] = env_from
                c["env"] = [e for e in env if "__envFrom" not in e]
                for mount in c.get("volumeMounts") or []:
                    mount["name"] = renamed.get(mount["name"], mount["name"])
                for p in c.get("ports") or []:
                    host_port = publish(name, c["name"], int(p["containerPort"]))
                    p["hostPort"] = host_port
                    p["hostIP"] = "127.0.0.1"
                    plan.published[int(p["containerPort"])] = host_port
            for svc in services:
                if _matches(svc["spec"].get("selector"), labels):
                    plan.aliases += service_names(svc["metadata"]["name"], namespace)
            plan.document = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "labels": labels,
                    "annotations": {
                        **(template["metadata"].get("annotations") or {}),
                        "io.podman.annotations.init.container.type": "always",
                    },
                },
                "spec": {**spec, "restartPolicy": "OnFailure"},
            }
            plans.append(plan)
    return plans


def external_names(objs: list[Obj]) -> dict[str, list[str]]:
    """ExternalName Services: the host they alias -> the names that alias it."""
    namespace = next(o["metadata"]["name"] for o in objs if o["kind"] == "Namespace")
    out: dict[str, list[str]] = {}
    for svc in objs:
        if svc["kind"] == "Service" and svc["spec"].get("type") == "ExternalName":
            out.setdefault(svc["spec"]["externalName"], []).extend(
                service_names(svc["metadata"]["name"], namespace)
            )
    return out
