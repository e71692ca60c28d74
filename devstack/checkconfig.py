"""``playback-drm check-config``: the checks a pod runs at start, offline, over a rendered overlay.

    kubectl kustomize k8s/overlays/prod | playback-drm check-config -
    kubectl kustomize k8s/overlays/prod | playback-drm check-config --validate -

For every workload whose init container renders Envoy's configuration (``python -m envoyconf
render``), this reads the settings that container would get (its ``envFrom`` ConfigMaps and
``env``), checks them exactly as the init container does (envoyconf.environment), and checks what
the settings must agree with in the pod: the file Envoy and the validating init container read
is the rendered one, the listener ports are the envoy container's ports, the TLS files are
mounted, the admin port is the one the preStop hook drains, the heap bound fits the memory
limit, the origin path templates are extproc's. With ``--validate``, each rendered configuration
also goes through ``envoy --mode validate`` (the pod's second init container), with throwaway
certificates standing in for the Secret's files. Every problem is reported, each with the object
and field to change (``ConfigMap/playback-envoy-7k2f...: data.ENVOY_LICENSE_PEER_CIDRS: ...``);
exit 1 on any.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import yaml

from devstack.devpki import ensure_dev_pki
from devstack.supervise import binary
from envoyconf.bootstrap import render
from envoyconf.environment import (
    BY_KEY,
    PREFIXES,
    Problem,
    SettingsError,
    lenient_settings,
    settings_from_env,
)
from envoyconf.sds import render_sds
from envoyconf.settings import EnvoySettings, TlsFiles, k8s_settings

Obj = dict[str, Any]
RENDER_MODULE = "envoyconf"
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod"})
_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6}
_ADMIN_URL = re.compile(r"(?:127\.0\.0\.1|localhost|\[::1\]):(\d+)/drain_listeners")


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: the object and field to change, and what is wrong."""

    obj: str  # Kind/name
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.obj}: {self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a setting's value comes from."""

    obj: str
    field: str


@dataclass
class EnvoyPod:
    """One workload's Envoy: the settings its render init container gets, where each comes from,
    and (when they are good) the settings it renders."""

    workload: Obj
    render_container: Obj
    render_index: int
    out_path: str
    env: dict[str, str] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    settings: EnvoySettings | None = None  # None: a setting is bad (see the findings)

    @property
    def ref(self) -> str:
        return ref(self.workload)


# ------------------------------------------------------------------------------------ reading


def ref(obj: Obj) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def load_objects(text: str) -> list[Obj]:
    """The objects of a multi-document YAML stream (``kind: List`` items are unpacked)."""
    objs: list[Obj] = []
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == "List":
            objs.extend(item for item in doc.get("items") or [] if isinstance(item, dict))
        else:
            objs.append(doc)
    return objs


def _find(objs: Sequence[Obj], kind: str, name: str) -> Obj | None:
    for obj in objs:
        if obj.get("kind") == kind and (obj.get("metadata") or {}).get("name") == name:
            return obj
    return None


def _pod_spec(workload: Obj) -> tuple[Obj, str]:
    if workload.get("kind") == "Pod":
        return workload.get("spec") or {}, "spec"
    return ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}, (
        "spec.template.spec"
    )


def _runs_renderer(container: Obj) -> bool:
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    return "-m" in argv and RENDER_MODULE in argv and "render" in argv


def _arg(argv: Sequence[str], *flags: str) -> str | None:
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def _argv(container: Obj) -> list[str]:
    return [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]


def envoy_pods(objs: Sequence[Obj]) -> tuple[list[EnvoyPod], list[Finding]]:
    """Every workload that renders an Envoy configuration, with the settings it would get."""
    pods: list[EnvoyPod] = []
    findings: list[Finding] = []
    for workload in objs:
        if workload.get("kind") not in WORKLOAD_KINDS:
            continue
        spec, spec_path = _pod_spec(workload)
        for i, container in enumerate(spec.get("initContainers") or []):
            if not _runs_renderer(container):
                continue
            where = f"{spec_path}.initContainers[{container.get('name', i)}]"
            out = _arg(_argv(container), "--out")
            if out is None:
                findings.append(Finding(ref(workload), where, "envoyconf render has no --out"))
                continue
            pod = EnvoyPod(workload, container, i, out)
            findings += _collect_env(objs, pod, where)
            pods.append(pod)
    return pods, findings


def _collect_env(objs: Sequence[Obj], pod: EnvoyPod, where: str) -> list[Finding]:
    """The render container's Envoy settings, where each comes from; strict about ConfigMaps:
    a key of a ConfigMap the renderer reads whole must be an Envoy setting."""
    findings: list[Finding] = []
    container = pod.render_container
    for j, source in enumerate(container.get("envFrom") or []):
        prefix = str(source.get("prefix") or "")
        if "configMapRef" not in source:
            continue  # Secrets hold no Envoy settings; their keys are not ours to judge
        selector = source["configMapRef"]
        cm = _find(objs, "ConfigMap", str(selector.get("name")))
        if cm is None:
            if not selector.get("optional"):
                findings.append(
                    Finding(
                        ref(pod.workload),
                        f"{where}.envFrom[{j}].configMapRef.name",
                        f"ConfigMap {selector.get('name')!r} is not in the rendered objects",
                    )
                )
            continue
        for key, value in sorted((cm.get("data") or {}).items()):
            name = prefix + key
            if not name.startswith(PREFIXES):
                findings.append(
                    Finding(
                        ref(cm),
                        f"data.{key}",
                        "not an Envoy setting: the render container reads ENVOY_* and CORS_* keys "
                        "only, so this value would be ignored",
                    )
                )
                continue
            pod.env[name] = str(value)
            pod.sources[name] = Source(ref(cm), f"data.{key}")
    for var in container.get("env") or []:
        name = str(var.get("name"))
        if not name.startswith(PREFIXES):
            continue
        var_where = f"{where}.env[{name}]"
        value_from = var.get("valueFrom")
        if value_from is None:
            pod.env[name] = str(var.get("value", ""))
            pod.sources[name] = Source(ref(pod.workload), f"{var_where}.value")
            continue
        selector = value_from.get("configMapKeyRef")
        cm = _find(objs, "ConfigMap", str(selector.get("name"))) if selector else None
        data = (cm or {}).get("data") or {}
        if selector is None or cm is None or selector.get("key") not in data:
            findings.append(
                Finding(
                    ref(pod.workload),
                    f"{var_where}.valueFrom",
                    "an Envoy setting must come from a value or a ConfigMap key in the overlay "
                    "(this one cannot be checked)",
                )
            )
            continue
        pod.env[name] = str(data[selector["key"]])
        pod.sources[name] = Source(ref(cm), f"data.{selector['key']}")
    return findings


# ------------------------------------------------------------------------------------ checks


def _setting_findings(pod: EnvoyPod) -> list[Finding]:
    try:
        pod.settings = settings_from_env(pod.env, k8s_settings())
    except SettingsError as exc:
        return [_at(pod, problem) for problem in exc.problems]
    return []


def _at(pod: EnvoyPod, problem: Problem) -> Finding:
    source = pod.sources.get(problem.key)
    if source is None:  # a default: blame the render container
        where = f"initContainers[{pod.render_container.get('name')}]"
        return Finding(pod.ref, where, str(problem))
    return Finding(source.obj, source.field, problem.message)


def _setting_source(pod: EnvoyPod, key: str) -> tuple[str, str]:
    source = pod.sources.get(key)
    if source is None:
        return pod.ref, f"initContainers[{pod.render_container.get('name')}] (default {key})"
    return source.obj, source.field


def _mounts_path(spec: Obj, container: Obj, path: str) -> bool:
    """A volume mounted into ``container`` provides ``path`` (a file of a Secret/ConfigMap volume
    with ``items``, or anything under an emptyDir or a volume without ``items``)."""
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        base = str(mount.get("mountPath", "")).rstrip("/")
        if not path.startswith(base + "/"):
            continue
        relative = path[len(base) + 1 :]
        volume = volumes.get(mount.get("name")) or {}
        items: list[Obj] | None = None
        for kind in ("secret", "configMap"):
            if kind in volume and volume[kind].get("items"):
                items = volume[kind]["items"]
        projected = (volume.get("projected") or {}).get("sources")
        if projected:
            items = []
            for src in projected:
                for kind in ("secret", "configMap"):
                    if kind in src:
                        if not src[kind].get("items"):
                            return True
                        items += src[kind]["items"]
        if items is None or any(str(i.get("path")) == relative for i in items):
            return True
    return False


def _mount_volume(container: Obj, directory: str) -> Obj | None:
    for mount in container.get("volumeMounts") or []:
        if str(mount.get("mountPath", "")).rstrip("/") == directory.rstrip("/"):
            return dict(mount)
    return None


def _quantity(value: Any) -> int | None:
    text = str(value)
    for suffix, factor in _MEMORY_UNITS.items():
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return int(float(text[: -len(suffix)]) * factor)
    return int(text) if text.isdigit() else None


def _pipeline_findings(pod: EnvoyPod) -> list[Finding]:
    """The rendered file is the one validated and the one Envoy runs; the settings fit the pod."""
    findings: list[Finding] = []
    spec, spec_path = _pod_spec(pod.workload)
    inits = list(spec.get("initContainers") or [])
    directory = posixpath.dirname(pod.out_path)
    render_mount = _mount_volume(pod.render_container, directory)
    render_where = f"{spec_path}.initContainers[{pod.render_container.get('name')}]"
    if render_mount is None or render_mount.get("readOnly"):
        findings.append(
            Finding(
                pod.ref,
                f"{render_where}.volumeMounts",
                f"no writable volume is mounted at {directory}, where --out writes",
            )
        )
    envoys = [c for c in spec.get("containers") or [] if c.get("name") == "envoy"]
    if not envoys:
        findings.append(
            Finding(pod.ref, f"{spec_path}.containers", "no envoy container runs the rendering")
        )
        return findings
    envoy = envoys[0]
    envoy_where = f"{spec_path}.containers[envoy]"
    readers: list[tuple[Obj, str]] = [(envoy, envoy_where)]
    config = _arg(_argv(envoy), "-c", "--config-path")
    if config != pod.out_path:
        findings.append(
            Finding(
                pod.ref,
                f"{envoy_where}.args",
                f"envoy runs -c {config}, not the rendered {pod.out_path}",
            )
        )
    validators = [
        (i, c)
        for i, c in enumerate(inits)
        if "validate" in _argv(c) and _arg(_argv(c), "--mode") == "validate"
    ]
    validated = [
        (i, c) for i, c in validators if _arg(_argv(c), "-c", "--config-path") == pod.out_path
    ]
    if not validated or validated[0][0] < pod.render_index:
        findings.append(
            Finding(
                pod.ref,
                f"{spec_path}.initContainers",
                f"no init container runs `envoy --mode validate -c {pod.out_path}` after "
                f"{pod.render_container.get('name')}",
            )
        )
    else:
        validator = validated[0][1]
        readers.append((validator, f"{spec_path}.initContainers[{validator.get('name')}]"))
    for container, where in readers:
        if render_mount is not None:
            mount = _mount_volume(container, directory)
            if mount is None or mount.get("name") != render_mount.get("name"):
                findings.append(
                    Finding(
                        pod.ref,
                        f"{where}.volumeMounts",
                        f"volume {render_mount.get('name')!r} (the rendered configuration) is "
                        f"not mounted at {directory}",
                    )
                )
    # the good values, so that a bad one elsewhere hides none of these problems
    s = pod.settings or lenient_settings(pod.env, k8s_settings())
    for key, path in (
        ("ENVOY_TLS_CERT_PATH", s.sidecar_tls.cert),
        ("ENVOY_TLS_KEY_PATH", s.sidecar_tls.key),
        ("ENVOY_CLIENT_CA_PATH", s.client_ca),
    ):
        missing = [str(c.get("name")) for c, _ in readers if not _mounts_path(spec, c, path)]
        if missing:
            obj, fld = _setting_source(pod, key)
            findings.append(
                Finding(
                    obj,
                    fld,
                    f"{path} is not a file of any volume mounted into container(s) "
                    f"{', '.join(missing)} of {pod.ref}",
                )
            )
    declared = {int(p["containerPort"]) for p in envoy.get("ports") or [] if "containerPort" in p}
    for key in ("ENVOY_SIDECAR_PORT", "ENVOY_PROBE_PORT", "ENVOY_STATS_PORT"):
        port = getattr(s, BY_KEY[key].field)
        if port not in declared:
            obj, fld = _setting_source(pod, key)
            findings.append(
                Finding(
                    obj,
                    fld,
                    f"Envoy would listen on {port}, which is not a port of container envoy of "
                    f"{pod.ref} ({', '.join(str(p) for p in sorted(declared)) or 'none'})",
                )
            )
    pre_stop = " ".join(
        str(a)
        for a in ((envoy.get("lifecycle") or {}).get("preStop") or {})
        .get("exec", {})
        .get("command")
        or []
    )
    for match in _ADMIN_URL.finditer(pre_stop):
        if int(match[1]) != s.admin_port:
            obj, fld = _setting_source(pod, "ENVOY_ADMIN_PORT")
            findings.append(
                Finding(
                    obj,
                    fld,
                    f"admin port {s.admin_port}, but the envoy preStop hook of {pod.ref} drains "
                    f"through port {match[1]}",
                )
            )
    limit = _quantity(((envoy.get("resources") or {}).get("limits") or {}).get("memory", ""))
    if limit is not None and s.max_heap_bytes >= limit:
        obj, fld = _setting_source(pod, "ENVOY_MAX_HEAP")
        findings.append(
            Finding(
                obj,
                fld,
                f"heap bound {s.max_heap_bytes} bytes is not below the envoy container's memory "
                f"limit ({envoy['resources']['limits']['memory']}): the kernel would kill Envoy "
                "before its overload manager acts",
            )
        )
    return findings


# Envoy rewrites /playback/{id}/manifest to the origin path with its template; extproc resolves the
# manifest's relative URIs against the path it builds with its own: the two must agree.
TEMPLATE_PAIRS: Final = (
    ("ENVOY_HLS_PATH_TEMPLATE", "MANIFEST_HLS_TEMPLATE"),
    ("ENVOY_DASH_PATH_TEMPLATE", "MANIFEST_DASH_TEMPLATE"),
)


def _literal_env(objs: Sequence[Obj], container: Obj) -> dict[str, tuple[str, Source]]:
    """The values a container gets from ConfigMaps (``envFrom``) and literal ``env`` entries."""
    found: dict[str, tuple[str, Source]] = {}
    for source in container.get("envFrom") or []:
        selector = source.get("configMapRef")
        cm = _find(objs, "ConfigMap", str(selector.get("name"))) if selector else None
        if cm is None:
            continue
        prefix = str(source.get("prefix") or "")
        for key, value in (cm.get("data") or {}).items():
            found[prefix + key] = (str(value), Source(ref(cm), f"data.{key}"))
    for var in container.get("env") or []:
        if "value" in var:
            found[str(var["name"])] = (str(var["value"]), Source("", f"env[{var['name']}]"))
    return found


def _template_findings(objs: Sequence[Obj], pod: EnvoyPod, s: EnvoySettings) -> list[Finding]:
    findings: list[Finding] = []
    spec, _ = _pod_spec(pod.workload)
    for container in spec.get("containers") or []:
        env = _literal_env(objs, container)
        for envoy_key, app_key in TEMPLATE_PAIRS:
            if app_key not in env:
                continue
            theirs, where = env[app_key]
            ours = getattr(s, BY_KEY[envoy_key].field)
            if theirs.lstrip("/") != ours.lstrip("/"):
                obj, fld = _setting_source(pod, envoy_key)
                origin = f"{where.obj} {where.field}" if where.obj else where.field
                findings.append(
                    Finding(
                        obj,
                        fld,
                        f"{ours!r} differs from {app_key} {theirs!r} ({origin}), with which "
                        f"container {container.get('name')} resolves the manifest's URLs",
                    )
                )
    return findings


def check(objs: Sequence[Obj]) -> tuple[list[EnvoyPod], list[Finding]]:
    """Every problem with the Envoy settings of the rendered objects."""
    pods, findings = envoy_pods(objs)
    for pod in pods:
        findings += _setting_findings(pod)
        findings += _pipeline_findings(pod)
        findings += _template_findings(
            objs, pod, pod.settings or lenient_settings(pod.env, k8s_settings())
        )
    return pods, _unique(findings)


def _unique(findings: list[Finding]) -> list[Finding]:
    seen: set[Finding] = set()
    out = []
    for finding in findings:
        if finding not in seen:
            seen.add(finding)
            out.append(finding)
    return out


def envoy_validate_findings(pods: Sequence[EnvoyPod], envoy: str, work: Path) -> list[Finding]:
    """``envoy --mode validate`` on each pod's rendered configuration, as its second init
    container runs it; throwaway certificates stand in for the Secret's files."""
    pki = ensure_dev_pki(work / "pki")
    findings: list[Finding] = []
    for number, pod in enumerate(pods):
        if pod.settings is None:
            continue  # already refused by name
        sds_dir = work / f"sds-{number}"
        sds_dir.mkdir(exist_ok=True)
        settings = dataclasses.replace(
            pod.settings,
            sidecar_tls=TlsFiles(str(pki.server_cert), str(pki.server_key), ""),
            client_ca=str(pki.ca_cert),
            sds_dir=str(sds_dir),
        )
        for path, sds_text in render_sds(settings).items():
            Path(path).write_text(sds_text)
        config = work / f"envoy-{number}.yaml"
        config.write_text(render(settings))
        result = subprocess.run(
            [envoy, "--mode", "validate", "-c", str(config), "--log-level", "error"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip().splitlines()[-3:]
            findings.append(
                Finding(
                    pod.ref,
                    "envoy --mode validate",
                    "Envoy refuses the rendered configuration: " + " / ".join(output),
                )
            )
    return findings


# ------------------------------------------------------------------------------------ command


def run(text: str, out: TextIO, err: TextIO, *, envoy: str | None = None) -> int:
    """Check the rendered manifests ``text``; ``envoy``: also run Envoy's own validation."""
    try:
        objs = load_objects(text)
    except yaml.YAMLError as exc:
        print(f"check-config: the input is not YAML: {exc}", file=err)
        return 1
    if not objs:
        print("check-config: no Kubernetes objects in the input (did kustomize fail?)", file=err)
        return 1
    pods, findings = check(objs)
    if envoy is not None:
        with tempfile.TemporaryDirectory(prefix="check-config-") as work:
            findings += envoy_validate_findings(pods, envoy, Path(work))
    if findings:
        print(f"check-config: {len(findings)} problem(s):", file=err)
        for finding in findings:
            print(f"  {finding}", file=err)
        return 1
    if not pods:
        print(
            f"check-config: {len(objs)} objects, no Envoy of ours (no init container runs "
            "`python -m envoyconf render`): nothing to check",
            file=out,
        )
        return 0
    for pod in pods:
        assert pod.settings is not None
        s = pod.settings
        maps = sorted({src.obj for src in pod.sources.values()})
        validated = ", validated by envoy --mode validate" if envoy is not None else ""
        print(
            f"check-config: {pod.ref}: {len(pod.env)} Envoy settings from "
            f"{', '.join(maps) or 'defaults'}: OK{validated}\n"
            f"  license principals {', '.join(s.license_principals)}\n"
            f"  license peer CIDRs {', '.join(s.license_peer_cidrs)}; viewer CIDRs "
            f"{', '.join(s.license_client_cidrs)}\n"
            f"  CORS origins {', '.join(s.cors.origins) or 'none'}; per-IP {s.per_ip_rps}/s; "
            f"listeners {s.sidecar_port} (mTLS), {s.probe_port}, {s.stats_port}",
            file=out,
        )
    return 0


def main(
    source: str,
    out: TextIO | None = None,
    err: TextIO | None = None,
    *,
    validate: bool = False,
) -> int:
    """``source``: a file, or ``-`` for standard input; ``validate``: run Envoy on the result."""
    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    envoy: str | None = None
    if validate:
        try:
            envoy = binary("envoy")
        except RuntimeError as exc:
            print(f"check-config: --validate: {exc}", file=stderr)
            return 1
    if source == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            print(f"check-config: cannot read {source}: {exc.strerror}", file=stderr)
            return 1
    return run(text, stdout, stderr, envoy=envoy)
