"""The three ways to run playback-drm's Envoy, side by side on loopback, in front of one local
stack (authz, extproc, the broker, the origin and the emulators): our sidecar (the stack's own
Envoy), Istio's configuration and Envoy Gateway's, each translated from the rendered manifests
(tests.mesh.istio, tests.mesh.gateway) and run by the real Envoy. tests/mesh/test_modes.py drives
its request matrix through them; bench/modes.py measures them.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devstack.stack import Stack
from envoyconf.cors import CorsSettings, envoy_gateway_cors, istio_cors_policy
from tests.k8s.render import K8S_DIR, render
from tests.mesh import gateway, istio
from tests.mesh.envoy import Certificate, Endpoint, Site
from tests.mesh.pki import MeshCa
from tests.support.procs import free_port
from tests.support.servers import EnvoyServer, start_envoy
from tests.support.stack import Reply, http, set_viewer, start_stack

NAMESPACE = "playback"  # the prod overlays' namespace, as the mesh configuration names it
# The player pages' origin every mode lists (the components and the pod's sidecar list none until
# the deployment names its own): the local stack's CORS_ALLOWED_ORIGINS, the operator's patch of
# the Istio and Envoy Gateway policies.
PLAYER_CORS = CorsSettings(("https://player.example",))


def with_player_origins(objs: list[dict[str, Any]], cors: CorsSettings) -> list[dict[str, Any]]:
    """The rendered manifests with the deployment's origins in every CORS policy."""
    for obj in objs:
        spec = obj.get("spec") or {}
        if obj["kind"] == "VirtualService":
            for route in spec.get("http", []):
                if "corsPolicy" in route:
                    route["corsPolicy"] = istio_cors_policy(cors)
        elif obj["kind"] == "SecurityPolicy" and "cors" in spec:
            spec["cors"] = envoy_gateway_cors(cors)
    return objs


@dataclass
class Mode:
    name: str
    base: str  # where viewers' requests go
    license_base: str  # where the trusted front sends license requests
    context: ssl.SSLContext | None = None
    license_context: ssl.SSLContext | None = None
    # a license request from a client the license rule refuses: a reply, or the TLS error
    intruder: Callable[[bytes, dict[str, str]], Reply] = field(default=lambda b, h: _never())

    def get(self, path: str, **headers: str) -> Reply:
        url = path if path.startswith(("http://", "https://")) else self.base + path
        return http(url, headers=headers, context=self.context)

    def license(
        self, path: str, body: bytes, headers: dict[str, str], method: str = "POST"
    ) -> Reply:
        return http(
            self.license_base + path,
            method=method,
            body=body if method == "POST" else None,
            headers=headers,
            context=self.license_context,
        )


def _never() -> Reply:
    raise AssertionError("no intruder configured")


def _client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # the test certificates name localhost and 127.0.0.1
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


# --------------------------------------------------------------------------------- the modes


def _services(stack: Stack) -> dict[tuple[str, int], Endpoint]:
    p = stack.ports
    return {
        ("origin", 80): Endpoint("127.0.0.1", p.origin),
        ("license-broker", 9003): Endpoint("127.0.0.1", p.broker),
        ("playback-authz", 9001): Endpoint("127.0.0.1", p.authz_grpc),
        ("playback-extproc", 9002): Endpoint("127.0.0.1", p.extproc_grpc),
        # Envoy Gateway's rate limit service: authz's speaks the same API
        ("envoy-gateway-ratelimit", 8081): Endpoint("127.0.0.1", p.authz_grpc),
    }


def _istio_config(
    objs: list[dict[str, Any]], stack: Stack, pki_dir: Path, front_port: int | None = None
) -> tuple[dict[str, Any], MeshCa]:
    mesh = yaml.safe_load((K8S_DIR / "components" / "istio" / "mesh-config.yaml").read_text())
    ca = MeshCa(pki_dir)
    workloads = {a: ca.workload(NAMESPACE, a) for a in _accounts(objs)}
    # the platform's front, with the identity the license rule admits, and one it does not
    [rule] = [o for o in objs if o["metadata"]["name"] == "playback-license-clients"]
    front = rule["spec"]["rules"][0]["from"][0]["source"]["notPrincipals"][0]
    front_ns, front_sa = front.split("/")[2], front.split("/")[4]
    workloads["front"] = ca.workload(front_ns, front_sa)
    workloads["intruder"] = ca.workload("tenant-b", "curious-app")
    ids = istio.MeshIdentities(
        str(ca.ca_cert), {k: Certificate(str(w.cert), str(w.key)) for k, w in workloads.items()}
    )
    listeners = {
        "gateway": free_port(),
        "inbound|9003|license-broker": free_port(),
        "inbound|9001|playback-authz": free_port(),
        "inbound|9002|playback-extproc": free_port(),
        "front|trusted": front_port or free_port(),
        "front|intruder": free_port(),
    }
    site = Site(
        NAMESPACE,
        _services(stack),
        listeners,
        free_port(),
        {"fronts": {"trusted": "front", "intruder": "intruder"}},
    )
    return istio.translate(objs, mesh, site, ids), ca


def _accounts(objs: list[dict[str, Any]]) -> set[str]:
    return {
        o["spec"]["template"]["spec"]["serviceAccountName"]
        for o in objs
        if o["kind"] == "Deployment"
    }


def _start(config: dict[str, Any], directory: Path, name: str) -> EnvoyServer:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return start_envoy(
        path, config["admin"]["address"]["socket_address"]["port_value"], directory, name
    )


def _front_port(config: dict[str, Any], name: str) -> int:
    for lst in config["static_resources"]["listeners"]:
        if lst["name"] == name:
            return int(lst["address"]["socket_address"]["port_value"])
    raise KeyError(name)


@dataclass
class Modes:
    stack: Stack
    by_name: dict[str, Mode]
    envoys: list[EnvoyServer]

    def stop(self) -> None:
        """The Envoys; the caller stops (and audits) the stack."""
        for envoy in self.envoys:
            envoy.process.stop()


def start_modes(root: Path, redis_url: str | None, per_user_rps: int) -> Modes:
    """The local stack and the Envoys of the three modes (plus Istio without its header filter)."""
    # Each mode's public address is one of extproc's PUBLIC_BASE_URLS, as a deployment lists its
    # own: the signed manifest URLs of the JSON form point back where the viewer asked.
    istio_front, gateway_https = free_port(), free_port()
    stack = start_stack(
        root,
        redis_url=redis_url,
        per_user_rps=per_user_rps,
        per_user_burst=per_user_rps,
        cors=PLAYER_CORS,
        extra_public_base_urls=(
            f"http://127.0.0.1:{istio_front}",
            f"https://127.0.0.1:{gateway_https}",
        ),
    )
    envoys: list[EnvoyServer] = []
    try:
        # every mode plays as alice, each manifest a playback session of its own: no stream limit
        # for her here (the limits have tests of their own, tests/integration/test_stream_limits.py)
        set_viewer(stack, "alice", "premium", max_streams=0)
        assert stack.pki is not None
        pki = stack.pki
        out = {
            "sidecar": Mode(
                "sidecar",
                stack.gateway,
                stack.gateway,
                intruder=lambda body, headers: http(
                    f"{stack.sidecar}/drm/license",
                    method="POST",
                    body=body,
                    headers=headers,
                    context=_client_context(pki.ca_cert, pki.other_cert, pki.other_key),
                ),
            )
        }

        objs = with_player_origins(render(K8S_DIR / "overlays" / "istio-prod"), PLAYER_CORS)
        config, _ = _istio_config(objs, stack, root / "mesh-pki", istio_front)
        envoys.append(_start(config, root, "envoy-istio"))
        front = f"http://127.0.0.1:{_front_port(config, 'front|trusted')}"
        intruder = f"http://127.0.0.1:{_front_port(config, 'front|intruder')}"
        out["istio"] = Mode(
            "istio",
            front,
            front,
            intruder=lambda body, headers: http(
                f"{intruder}/drm/license", method="POST", body=body, headers=headers
            ),
        )
        # the same without the header-stripping EnvoyFilter: authz alone keeps forgeries out
        bare = [o for o in objs if o["metadata"]["name"] != "playback-gateway-headers"]
        config, _ = _istio_config(bare, stack, root / "mesh-pki-bare")
        envoys.append(_start(config, root, "envoy-istio-bare"))
        bare_front = f"http://127.0.0.1:{_front_port(config, 'front|trusted')}"
        out["istio-without-header-filter"] = Mode(
            "istio-without-header-filter", bare_front, bare_front
        )

        objs = with_player_origins(render(K8S_DIR / "overlays" / "envoy-gateway-prod"), PLAYER_CORS)
        eg_config = yaml.safe_load(
            (K8S_DIR / "components" / "envoy-gateway" / "envoy-gateway-config.yaml").read_text()
        )
        tls = gateway.SecretFiles(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert))
        ports = {"https": gateway_https, "license": free_port()}
        site = Site(NAMESPACE, _services(stack), ports, free_port())
        config = gateway.translate(
            objs, eg_config, site, {"playback-public-tls": tls, "playback-edge-tls": tls}
        )
        envoys.append(_start(config, root, "envoy-gateway"))
        viewer = _client_context(pki.ca_cert)
        front_ctx = _client_context(pki.ca_cert, pki.gateway_cert, pki.gateway_key)
        other_ctx = _client_context(pki.ca_cert, pki.other_cert, pki.other_key)
        license_base = f"https://127.0.0.1:{ports['license']}"
        out["envoy-gateway"] = Mode(
            "envoy-gateway",
            f"https://127.0.0.1:{ports['https']}",
            license_base,
            context=viewer,
            license_context=front_ctx,
            intruder=lambda body, headers: http(
                f"{license_base}/drm/license",
                method="POST",
                body=body,
                headers=headers,
                context=other_ctx,
            ),
        )
        return Modes(stack, out, envoys)
    except BaseException:
        for envoy in envoys:
            envoy.process.stop()
        stack.stop()
        raise
