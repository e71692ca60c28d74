"""podman and the CNCF Distribution registry, as the pods test drives them.

Every podman call runs with the project's containers.conf (``scripts/podman-env.sh``: runc, and
ulimits within the caller's hard limits). Everything the test creates carries its run's prefix, and
only that is removed afterwards: other users of this machine's podman keep theirs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack.supervise import free_port, port_open

REPO_ROOT = Path(__file__).resolve().parents[2]
_HANDED_OUT: set[int] = set()


def host_port() -> int:
    """A loopback port for a pod's published container port, free right now, below the
    kernel's ephemeral range: podman binds it only at ``kube play``, seconds after the pick, and
    a port of the ephemeral range (``free_port``) can be taken meanwhile by any outgoing
    connection on this shared machine (kube play failed with "address already in use")."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(max(1024, low - 12000), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


class PodmanUnavailable(RuntimeError):
    """podman (or the registry) is missing or cannot run containers here."""


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    if not env.get("CONTAINERS_CONF"):
        conf = subprocess.run(
            ["bash", "-c", 'source scripts/podman-env.sh && printf %s "$CONTAINERS_CONF"'],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        env["CONTAINERS_CONF"] = conf
    return env


@dataclass
class Podman:
    env: dict[str, str]

    @classmethod
    def create(cls) -> Podman:
        if shutil.which("podman") is None:
            raise PodmanUnavailable("podman is not installed: run `make setup-podman`")
        return cls(podman_env())

    def run(
        self, *args: str, check: bool = True, timeout: float = 300, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
            input=stdin,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"podman {' '.join(args[:4])} ... failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def out(self, *args: str, timeout: float = 300) -> str:
        return self.run(*args, timeout=timeout).stdout.strip()

    def inspect(self, name: str) -> dict[str, object]:
        doc = json.loads(self.out("inspect", name))
        assert isinstance(doc, list)
        assert doc
        item = doc[0]
        assert isinstance(item, dict)
        return item

    def exec_http(self, container: str, port: int, path: str, timeout: float = 3) -> int:
        """An HTTP GET from inside the container's network namespace, as the kubelet's probes
        reach the pod; the status (0: no answer)."""
        code = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout={timeout})\n"
            "    print(r.status)\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code)\n"
            "except Exception:\n"
            "    print(0)\n"
        )
        result = self.run("exec", container, "python", "-c", code, check=False, timeout=30)
        text = result.stdout.strip()
        return int(text) if text.isdigit() else 0

    def remove_prefixed(self, prefix: str) -> None:
        """Pods, volumes and networks whose name starts with ``prefix``; nothing else."""
        pods = self.run("pod", "ps", "--format", "{{.Name}}", check=False).stdout.split()
        mine = [p for p in pods if p.startswith(prefix)]
        if mine:
            self.run("pod", "rm", "--force", "--time", "2", *mine, check=False, timeout=120)
        volumes = self.run("volume", "ls", "--format", "{{.Name}}", check=False).stdout.split()
        mine = [v for v in volumes if v.startswith(prefix)]
        if mine:
            self.run("volume", "rm", "--force", *mine, check=False)
        networks = self.run("network", "ls", "--format", "{{.Name}}", check=False).stdout.split()
        for net in networks:
            if net.startswith(prefix):
                self.run("network", "rm", "--force", net, check=False)


@dataclass
class Registry:
    """Debian's docker-registry (CNCF Distribution) on a loopback port, storage in a temp dir."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, root: Path) -> Registry:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise PodmanUnavailable("docker-registry is not installed: run `make setup-podman`")
        port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
            f"http: {{addr: 127.0.0.1:{port}}}\n"
        )
        log = (root / "registry.log").open("ab")
        proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 20
        while not port_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise PodmanUnavailable(
                    f"docker-registry did not start: {(root / 'registry.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)
        return cls(proc, port)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def push_and_pull(podman: Podman, registry: Registry, local: str, repo: str, tmp: Path) -> str:
    """Push ``local`` as ``<registry>/<repo>:dev``, pull it back by the digest the registry
    answered, and return that reference (``<registry>/<repo>@sha256:...``)."""
    target = f"{registry.host}/{repo}:dev"
    digest_file = tmp / f"{repo}.digest"
    podman.run(
        "push", "--quiet", "--tls-verify=false", "--digestfile", str(digest_file), local, target
    )
    digest = digest_file.read_text().strip()
    assert digest.startswith("sha256:"), digest
    pinned = f"{registry.host}/{repo}@{digest}"
    podman.run("pull", "--quiet", "--tls-verify=false", pinned)
    return pinned


def kube_play(
    podman: Podman, yaml_text: str, path: Path, network: str, aliases: Sequence[str]
) -> None:
    path.write_text(yaml_text)
    net = network + (":" + ",".join(f"alias={a}" for a in aliases) if aliases else "")
    podman.run("kube", "play", "--quiet", "--network", net, str(path), timeout=300)
