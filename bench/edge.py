"""Edge benchmarks, each beside Envoy alone in the same run on the same box.

    python bench/edge.py authz      # issue 2: Envoy alone vs Envoy + ext_authz (200 and 500 req/s)
    python bench/edge.py manifest   # issue 3: Envoy alone vs authz + ext_proc, 150-segment HLS
                                    #          media playlist and a 2-period DASH MPD (200 req/s),
                                    #          each request a new playback session (issue 21)
    python bench/edge.py license    # issues 4, 5, 16: license requests through the gateway,
                                    #          mTLS, sidecar, authz, broker (Redis, Vault-cached
                                    #          keys, NATS) vs the same route ending in Envoy's
                                    #          direct response; NATS down, a Redis restart; prints
                                    #          issue 16's ratios
    python bench/edge.py live       # issue 15: 1,000 live sessions each refreshing its HLS media
                                    #          playlist every 2 s (500 req/s): authz (session,
                                    #          entitlement re-check) + ext_proc vs Envoy alone
    python bench/edge.py all        # the four above (several minutes)
    python bench/edge.py saturate   # issue 16: the highest rate the manifest, media and license
                                    #          paths hold (p99 < 50 ms, no errors) vs Envoy alone,
                                    #          CPU per request, requests per replica at 60% CPU
                                    #          (bench/saturate.py; about 5 min)

Options: --seconds N (per run, default 10); saturate: --step-seconds, --cap, --max-steps. Prints
p50/p99 latency, throughput and CPU µs per request of each process (the load generator's own as
``loadgen``: it shares the box), with the difference to Envoy alone at the same rate, and the load
average before and after.

The authz and manifest scenarios use a dedicated bench Envoy (plain HTTP listeners: "alone" routes
straight to the origin, the others add the filters under test); the license and saturate
scenarios use the real local stack (gateway -> mTLS -> sidecar), whose Envoy also serves a twin of
those two listeners (:func:`add_alone_twin`): the same hops and filters without ext_authz and
ext_proc, the broker's routes ending in a direct response.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import dataclasses
import functools
import json
import os
import signal
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Request, RunResult, run_open_loop, table
from bench.ramp import ratio
from devstack import media
from devstack.stack import Stack, StackPorts, StackSettings
from devstack.supervise import ManagedProcess, binary, free_port, port_open
from envoyconf import EnvoySettings
from envoyconf.filters import authz_mode, disable_authz
from playback_drm.contract import (
    EXTPROC_ATTRIBUTES,
    EXTPROC_PROCESSING_MODE,
    MEDIA_MANIFEST_REGEX,
    MODE_SESSION_START,
    MODE_SIGNED_URL,
)

T_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
T_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
T_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
T_EXTPROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
T_HTTP_OPTS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _cluster(name: str, port: int, *, http2: bool = False) -> dict[str, Any]:
    opts: dict[str, Any] = {"@type": T_HTTP_OPTS}
    opts["explicit_http_config"] = (
        {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}
    )
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        "circuit_breakers": {
            "thresholds": [
                {"max_connections": 4096, "max_pending_requests": 4096, "max_requests": 4096}
            ]
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts
        },
    }


def _listener(
    name: str, port: int, routes: list[dict[str, Any]], filters: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": T_HCM,
                            "stat_prefix": name,
                            "route_config": {
                                "virtual_hosts": [
                                    {"name": name, "domains": ["*"], "routes": routes}
                                ]
                            },
                            "http_filters": [
                                *filters,
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": T_ROUTER},
                                },
                            ],
                        },
                    }
                ]
            }
        ],
    }


AUTHZ_FILTER = {
    "name": "envoy.filters.http.ext_authz",
    "typed_config": {
        "@type": T_AUTHZ,
        "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "1s"},
        "failure_mode_allow": False,
        "status_on_error": {"code": 503},
        "allowed_headers": {"patterns": [{"exact": "authorization"}, {"exact": "traceparent"}]},
    },
}


def _authz_filter(cluster: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            **AUTHZ_FILTER["typed_config"],  # type: ignore[dict-item]
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "1s"},
        },
    }


def _extproc_filter(cluster: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            **EXTPROC_FILTER["typed_config"],  # type: ignore[dict-item]
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "2s"},
        },
    }


EXTPROC_FILTER = {
    "name": "envoy.filters.http.ext_proc",
    "typed_config": {
        "@type": T_EXTPROC,
        "grpc_service": {"envoy_grpc": {"cluster_name": "extproc"}, "timeout": "2s"},
        "failure_mode_allow": False,
        "message_timeout": "2s",
        "response_attributes": list(EXTPROC_ATTRIBUTES),
        "processing_mode": dict(EXTPROC_PROCESSING_MODE),  # as the sidecar configures it
    },
}
MANIFEST_REGEX = r"^/playback/([A-Za-z0-9_.-]+)/manifest$"


def _manifest_routes(cluster: str, *, authz: bool = False) -> list[dict[str, Any]]:
    # as the sidecar: an entry manifest starts a playback session, whose signed manifest is its own
    per_filter = (
        {
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": authz_mode(MODE_SESSION_START)
            }
        }
        if authz
        else {}
    )
    return [
        {
            "match": {
                "safe_regex": {"regex": MANIFEST_REGEX},
                "query_parameters": [{"name": "format", "string_match": {"exact": "dash"}}],
            },
            "route": {
                "cluster": cluster,
                "regex_rewrite": {
                    "pattern": {"regex": MANIFEST_REGEX},
                    "substitution": r"/\1/manifest.mpd",
                },
            },
            **per_filter,
        },
        {
            "match": {"safe_regex": {"regex": MANIFEST_REGEX}},
            "route": {
                "cluster": cluster,
                "regex_rewrite": {
                    "pattern": {"regex": MANIFEST_REGEX},
                    "substitution": r"/\1/master.m3u8",
                },
            },
            **per_filter,
        },
    ]


def bench_envoy_config(ports: dict[str, int], stack: Stack) -> dict[str, Any]:
    direct = [
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
        }
    ]
    to_direct = [{"match": {"prefix": "/"}, "route": {"cluster": "direct"}}]
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["admin"]}}
        },
        "static_resources": {
            "listeners": [
                _listener("direct", ports["direct"], direct, []),
                _listener("alone", ports["alone"], to_direct, []),
                _listener("authz", ports["authz"], to_direct, [AUTHZ_FILTER]),
                _listener(
                    "authz_grpcio", ports["authz_grpcio"], to_direct, [_authz_filter("authz_g")]
                ),
                _listener("echo", ports["echo"], to_direct, [_authz_filter("echo_authz")]),
                _listener("echo_lean", ports["echo_lean"], to_direct, [_authz_filter("echo_lean")]),
                _listener(
                    "manifest_alone", ports["manifest_alone"], _manifest_routes("origin"), []
                ),
                _listener(
                    "manifest_full",
                    ports["manifest_full"],
                    _manifest_routes("origin", authz=True),
                    [AUTHZ_FILTER, EXTPROC_FILTER],
                ),
                _listener(
                    "manifest_grpcio",
                    ports["manifest_grpcio"],
                    _manifest_routes("origin", authz=True),
                    [_authz_filter("authz_g"), _extproc_filter("extproc_g")],
                ),
            ],
            "clusters": [
                _cluster("direct", ports["direct"]),
                _cluster("origin", stack.ports.origin),
                _cluster("authz", stack.ports.authz_grpc, http2=True),
                _cluster("echo_authz", ports["echo_authz"], http2=True),
                _cluster("echo_lean", ports["echo_lean_grpc"], http2=True),
                _cluster("extproc", stack.ports.extproc_grpc, http2=True),
                # the same services on grpcio's transport (GRPC_TRANSPORT=grpcio), for comparison
                _cluster("authz_g", ports["authz_g_grpc"], http2=True),
                _cluster("extproc_g", ports["extproc_g_grpc"], http2=True),
            ],
        },
    }


def write_bench_media(origin_dir: Path) -> None:
    """A 150-segment HLS media playlist and a 2-period DASH MPD, as real packagers write them."""
    hls = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        "#EXT-X-TARGETDURATION:4",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
    ]
    for i in range(150):
        hls += ["#EXTINF:4.000,", f"segments/720p/seg_{i:05d}.ts"]
    hls.append("#EXT-X-ENDLIST")
    (origin_dir / "bench-hls").mkdir(parents=True, exist_ok=True)
    (origin_dir / "bench-hls" / "master.m3u8").write_text("\n".join(hls) + "\n")
    periods = []
    for p in range(2):
        reps = "".join(
            f'<Representation id="v{h}" bandwidth="{h * 4000}" width="{h * 16 // 9}" '
            f'height="{h}" codecs="avc1.64001f"/>'
            for h in (360, 720, 1080)
        )
        periods.append(
            f'  <Period id="p{p}" duration="PT300S">\n'
            f'    <AdaptationSet mimeType="video/mp4" segmentAlignment="true">\n'
            f'      <SegmentTemplate timescale="90000" '
            f'initialization="p{p}/$RepresentationID$/init.mp4" '
            f'media="p{p}/$RepresentationID$/$Number%05d$.m4s" startNumber="1" '
            f'duration="360000"/>\n'
            f"      {reps}\n    </AdaptationSet>\n"
            f'    <AdaptationSet mimeType="audio/mp4" lang="en">\n'
            f'      <SegmentTemplate timescale="48000" initialization="p{p}/a/init.mp4" '
            f'media="p{p}/a/$Number%05d$.m4s" startNumber="1" duration="192000"/>\n'
            f'      <Representation id="a" bandwidth="128000" codecs="mp4a.40.2"/>\n'
            f"    </AdaptationSet>\n  </Period>"
        )
    mpd = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        'mediaPresentationDuration="PT600S" '
        'minBufferTime="PT2S" profiles="urn:mpeg:dash:profile:isoff-live:2011">\n'
        + "\n".join(periods)
        + "\n</MPD>\n"
    )
    (origin_dir / "bench-dash").mkdir(parents=True, exist_ok=True)
    (origin_dir / "bench-dash" / "manifest.mpd").write_text(mpd)


def _put_json(url: str, doc: dict[str, Any]) -> None:
    req = urllib.request.Request(
        url,
        data=json.dumps(doc).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=5).read()


def start_bench_stack(root: Path) -> Stack:
    media = root / "media"
    stack = Stack(
        StackSettings(root=root, ports=StackPorts.free(), media_dir=media, envoy_access_log=False)
    )
    write_bench_media(media / "origin")
    stack.start(["auth-emulator", "billing-emulator", "origin", "authz", "extproc"])
    for video in ("bench-hls", "bench-dash"):
        _put_json(
            f"http://127.0.0.1:{stack.ports.billing}/admin/catalog/{video}",
            {"tier": "HD", "plan": "basic"},
        )
    return stack


def start_bench_envoy(root: Path, stack: Stack) -> tuple[ManagedProcess, dict[str, int]]:
    ports = {
        k: free_port()
        for k in (
            "admin",
            "direct",
            "alone",
            "authz",
            "echo",
            "echo_authz",
            "echo_lean",
            "echo_lean_grpc",
            "authz_grpcio",
            "authz_g_grpc",
            "authz_g_http",
            "extproc_g_grpc",
            "extproc_g_http",
            "manifest_alone",
            "manifest_full",
            "manifest_grpcio",
        )
    }
    config = root / "bench-envoy.yaml"
    config.write_text(yaml.safe_dump(bench_envoy_config(ports, stack)))

    def ready() -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{ports['admin']}/ready", timeout=0.5
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    return _start_envoy("bench-envoy", config, root, ports["admin"], ready), ports


def _get(url: str, headers: dict[str, str]) -> Callable[[int], Request]:
    """The same GET every time."""
    return lambda _i: Request("GET", url, headers)


def _round_robin(urls: list[str]) -> Callable[[int], Request]:
    """The i-th request: a GET of ``urls[i % len(urls)]``."""
    return lambda i: Request("GET", urls[i % len(urls)])


def _start_envoy(
    name: str, config: Path, root: Path, admin: int, ready: Callable[[], bool]
) -> ManagedProcess:
    """A bench Envoy on one worker (the base id keeps it apart from the stack's Envoy)."""
    argv = [binary("envoy"), "-c", str(config), "--log-level", "error", "--concurrency", "1"]
    return ManagedProcess(
        name, [*argv, "--base-id", str(admin)], log_dir=root / "logs", ready=ready
    ).start()


def start_grpcio_twins(
    root: Path, stack: Stack, ports: dict[str, int]
) -> dict[str, ManagedProcess]:
    """authz and extproc again, on grpcio's transport (``GRPC_TRANSPORT=grpcio``)."""
    env = {
        **stack.common_env(),
        "GRPC_TRANSPORT": "grpcio",
        "AUTHZ_GRPC_ADDR": f"127.0.0.1:{ports['authz_g_grpc']}",
        "AUTHZ_HTTP_ADDR": f"127.0.0.1:{ports['authz_g_http']}",
        "EXTPROC_GRPC_ADDR": f"127.0.0.1:{ports['extproc_g_grpc']}",
        "EXTPROC_HTTP_ADDR": f"127.0.0.1:{ports['extproc_g_http']}",
    }
    twins = {}
    for name in ("authz", "extproc"):
        http_port = ports[f"{name}_g_http"]
        twins[f"{name}_grpcio"] = ManagedProcess(
            f"{name}-grpcio",
            [sys.executable, "-m", name],
            log_dir=root / "logs",
            env=env,
            ready=lambda port=http_port: port_open(port),  # type: ignore[misc]
        ).start()
    return twins


def start_echo(root: Path, port: int, transport: str) -> ManagedProcess:
    return ManagedProcess(
        f"echo-authz-{transport}",
        [sys.executable, str(Path(__file__).with_name("echo_authz.py")), str(port), transport],
        log_dir=root / "logs",
        ready=lambda: port_open(port),
    ).start()


def pids(stack: Stack, envoy: ManagedProcess, names: tuple[str, ...]) -> dict[str, int]:
    out = {"envoy": envoy.proc.pid if envoy.proc else 0}
    for name in names:
        proc = stack.processes[name].proc
        assert proc is not None
        out[name] = proc.pid
    return out


async def scenario_authz(seconds: float) -> list[RunResult]:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        root = Path(tmp)
        stack = start_bench_stack(root)
        cleanup.callback(stack.stop)
        envoy, ports = start_bench_envoy(root, stack)
        cleanup.callback(envoy.stop)
        helpers = {
            "echo_grpcio": start_echo(root, ports["echo_authz"], "grpcio"),
            "echo_lean": start_echo(root, ports["echo_lean_grpc"], "lean"),
            **start_grpcio_twins(root, stack, ports),
        }
        for proc in helpers.values():
            cleanup.callback(proc.stop)
        token = stack.token("alice")
        headers = {"Authorization": f"Bearer {token}"}
        processes = pids(stack, envoy, ("authz",))
        processes.update(
            {
                k: p.proc.pid
                for k, p in helpers.items()
                if p.proc is not None and k != "extproc_grpcio"
            }
        )
        results = []
        for rate in (200, 500):
            # alone: Envoy to the origin; echo*: + a do-nothing ext_authz on each gRPC transport
            # (the transport floors); authz: the real one (JWT, entitlement, caches) on the lean
            # transport (the default), authz_grpcio: the same on grpc.aio
            for name in ("alone", "echo", "echo_lean", "authz", "authz_grpcio"):
                url = f"http://127.0.0.1:{ports[name]}/playback/demo/manifest"
                results.append(
                    await run_open_loop(
                        f"envoy_{name}",
                        _get(url, headers),
                        rate=rate,
                        seconds=seconds,
                        processes=processes,
                    )
                )
        return results


async def scenario_manifest(seconds: float) -> list[RunResult]:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        root = Path(tmp)
        stack = start_bench_stack(root)
        cleanup.callback(stack.stop)
        envoy, ports = start_bench_envoy(root, stack)
        cleanup.callback(envoy.stop)
        twins = start_grpcio_twins(root, stack, ports)
        for proc in twins.values():
            cleanup.callback(proc.stop)
        token = stack.token("alice")
        headers = {"Authorization": f"Bearer {token}"}
        processes = pids(stack, envoy, ("authz", "extproc", "origin"))
        processes.update({k: p.proc.pid for k, p in twins.items() if p.proc is not None})
        results = []
        for label, path in (
            ("hls150", "/playback/bench-hls/manifest"),
            ("dash2p", "/playback/bench-dash/manifest?format=dash"),
        ):
            # full: authz + ext_proc on the lean transport (the default); grpcio: the same
            # services on grpc.aio
            for name in ("manifest_alone", "manifest_full", "manifest_grpcio"):
                url = f"http://127.0.0.1:{ports[name]}{path}"
                results.append(
                    await run_open_loop(
                        f"{label}_{name.split('_')[1]}",
                        _get(url, headers),
                        rate=200,
                        seconds=seconds,
                        processes=processes,
                    )
                )
        return results


# Stands in for the broker's ClearKey answer on the direct-response twin of the license route:
# a JSON Web Key set of one key, about the size of the real one.
LICENSE_STANDIN = json.dumps(
    {
        "keys": [{"kty": "oct", "kid": "A" * 22, "k": "B" * 22}],
        "type": "temporary",
    }
)


def _alone_route(route: dict[str, Any]) -> dict[str, Any]:
    """A sidecar route as Envoy alone serves it: no ext_authz, no ext_proc, and the broker's
    routes answered by Envoy itself (a direct response). Every other filter (header mutation,
    CORS, per-IP limit, the license route's mTLS RBAC) stays."""
    out = copy.deepcopy(route)
    per_filter = out.setdefault("typed_per_filter_config", {})
    per_filter.update(disable_authz())
    per_filter.pop("envoy.filters.http.ext_proc", None)
    if out.get("route", {}).get("cluster") == "license_broker":
        del out["route"]
        out["direct_response"] = {"status": 200, "body": {"inline_string": LICENSE_STANDIN}}
        out["response_headers_to_add"] = [
            {"header": {"key": "content-type", "value": "application/json"}}
        ]
    return out


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _listener_twin(listener: dict[str, Any], name: str, port: int) -> dict[str, Any]:
    """A copy of ``listener`` named ``name`` on ``port`` (its stats and route table too)."""
    twin = copy.deepcopy(listener)
    twin["name"] = name
    twin["address"]["socket_address"]["port_value"] = port
    hcm = _hcm(twin)
    hcm["stat_prefix"] = name
    hcm["route_config"]["name"] = name
    return twin


def add_alone_twin(config: dict[str, Any], gateway_port: int, sidecar_port: int) -> None:
    """Add to the stack's Envoy configuration a twin of its gateway and sidecar listeners: the
    same hops (gateway -> mTLS -> sidecar, the same filters and TLS), every route as Envoy alone
    serves it (:func:`_alone_route`). Requests identical to the real ones but for the port."""
    resources = config["static_resources"]
    listeners = {item["name"]: item for item in resources["listeners"]}
    clusters = {item["name"]: item for item in resources["clusters"]}
    sidecar = _listener_twin(listeners["sidecar"], "sidecar_alone", sidecar_port)
    for host in _hcm(sidecar)["route_config"]["virtual_hosts"]:
        host["routes"] = [_alone_route(r) for r in host["routes"]]
    gateway = _listener_twin(listeners["gateway"], "gateway_alone", gateway_port)
    for host in _hcm(gateway)["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            if route.get("route", {}).get("cluster") == "sidecar":
                route["route"]["cluster"] = "sidecar_alone"
    upstream = copy.deepcopy(clusters["sidecar"])
    upstream["name"] = "sidecar_alone"
    upstream["load_assignment"]["cluster_name"] = "sidecar_alone"
    for group in upstream["load_assignment"]["endpoints"]:
        for endpoint in group["lb_endpoints"]:
            endpoint["endpoint"]["address"]["socket_address"]["port_value"] = sidecar_port
    resources["listeners"] += [sidecar, gateway]
    resources["clusters"].append(upstream)


class BenchStack(Stack):
    """The local stack, its Envoy also serving :func:`add_alone_twin` on ``alone_gateway``;
    ``per_ip_rps`` raises the sidecar's per-IP limit (every bench request comes from 127.0.0.1)."""

    def __init__(self, settings: StackSettings, *, per_ip_rps: int | None = None) -> None:
        super().__init__(settings)
        self.alone_gateway_port = free_port()
        self.alone_sidecar_port = free_port()
        self.per_ip_rps = per_ip_rps

    @property
    def alone_gateway(self) -> str:
        return f"http://127.0.0.1:{self.alone_gateway_port}"

    def envoy_settings(self) -> EnvoySettings:
        settings = super().envoy_settings()
        if self.per_ip_rps is not None:
            settings = dataclasses.replace(
                settings, per_ip_rps=self.per_ip_rps, per_ip_burst=self.per_ip_rps
            )
        return settings

    def prepare(self) -> None:
        super().prepare()
        config = yaml.safe_load(self.envoy_config_path.read_text())
        add_alone_twin(config, self.alone_gateway_port, self.alone_sidecar_port)
        self.envoy_config_path.write_text(yaml.safe_dump(config, sort_keys=False, width=100))


@dataclass
class LicenseBench:
    """The license scenario's stack on real Redis, OpenBao and NATS."""

    stack: BenchStack
    manifest: media.MediaManifest
    nats: Any  # tests.support.servers.NatsServer
    redis: Any  # tests.support.servers.RedisServer


@contextlib.contextmanager
def license_stack(
    *, per_user_rps: int = 200, per_ip_rps: int | None = None
) -> Iterator[LicenseBench]:
    """The local stack on real Redis, OpenBao and NATS, as the license scenario measures it.
    Every server is stopped on the way out."""
    from tests.support.servers import start_nats, start_redis, start_vault

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        root = Path(tmp)
        redis = start_redis(root)
        servers.callback(redis.process.stop)
        vault = start_vault(root)
        servers.callback(vault.process.stop)
        nats_server = start_nats(root)
        servers.callback(nats_server.process.stop)
        manifest = media.generate(Path(".local/test-media"))
        media.load_keys_into_vault(manifest, url=vault.url, token=vault.token)
        stack = BenchStack(
            StackSettings(
                root=root,
                ports=StackPorts.free(),
                media_dir=manifest.root,
                redis_url=redis.url,
                vault_addr=vault.url,
                vault_token=vault.token,
                nats_url=nats_server.url,
                envoy_access_log=False,
                per_user_rps=per_user_rps,
                extra_env=dict(
                    item.split("=", 1) for item in os.environ.get("BENCH_ENV", "").split() if item
                ),
            ),
            per_ip_rps=per_ip_rps,
        )
        servers.callback(stack.stop)
        stack.start()
        yield LicenseBench(stack, manifest, nats_server, redis)


async def scenario_license(seconds: float) -> list[RunResult]:
    with license_stack() as bench:
        return await _license_runs(bench, seconds)


def license_requests(
    stack: Stack, manifest: media.MediaManifest, base: str | None = None
) -> Callable[[int], Request]:
    """The i-th ClearKey license request of the bench's two viewers, through the gateway (or
    another gateway ``base``, e.g. the stack's Envoy-alone twin)."""
    tokens = [stack.token("alice"), stack.token("bob")]  # 100 req/s each: under the limit
    kid = manifest.videos["demo"].video_key.kid
    kid_b64 = base64.urlsafe_b64encode(bytes.fromhex(kid)).rstrip(b"=").decode()
    challenge = json.dumps({"kids": [kid_b64], "type": "temporary"}).encode()
    viewers = [{"Authorization": f"Bearer {t}", "Content-Type": "application/json"} for t in tokens]
    body = json.dumps(
        {
            "videoId": "demo",
            "licenseRequest": base64.b64encode(challenge).decode(),
            "keySystem": "org.w3.clearkey",
        }
    ).encode()
    lic = f"{base or stack.gateway}/drm/license"

    def license_request(i: int) -> Request:
        return Request("POST", lic, viewers[i % 2], body)

    return license_request


async def _restart_during(
    run: Awaitable[RunResult],
    after: float,
    down: float,
    stop: Callable[[], None],
    start: Callable[[], None],
) -> RunResult:
    """``run`` while a server is stopped ``after`` seconds into it and started again ``down``
    seconds later (in a thread: starting waits for readiness, the load must go on)."""

    async def restart() -> None:
        await asyncio.sleep(after)
        await asyncio.to_thread(stop)
        await asyncio.sleep(down)
        await asyncio.to_thread(start)

    restarting = asyncio.create_task(restart())
    result = await run
    await restarting
    return result


async def _license_runs(bench: LicenseBench, seconds: float) -> list[RunResult]:
    stack = bench.stack
    license_request = license_requests(stack, bench.manifest)
    processes = {
        name: stack.processes[name].proc.pid  # type: ignore[union-attr]
        for name in ("envoy", "authz", "broker")
    }

    direct_request = license_requests(stack, bench.manifest, base=stack.alone_gateway)
    results = []
    # issue 5: the same load with NATS up, then down (events queue and spill, never block),
    # alternated three times so machine noise shows up on both sides of the comparison; each
    # time after the same requests on the same hops (gateway -> mTLS -> sidecar) with Envoy
    # answering itself, the baseline of issue 16's p99 ratio
    for leg in range(3):
        results.append(
            await run_open_loop(
                f"license_direct_{leg}",
                direct_request,
                rate=200,
                seconds=seconds,
                processes=processes,
                warmup=200 if leg == 0 else 0,
            )
        )
        results.append(
            await run_open_loop(
                f"license_up_{leg}",
                license_request,
                rate=200,
                seconds=seconds,
                processes=processes,
                warmup=200 if leg == 0 else 0,
            )
        )
        bench.nats.process.stop()
        results.append(
            await run_open_loop(
                f"license_nats_down_{leg}",
                license_request,
                rate=200,
                seconds=seconds,
                processes=processes,
                warmup=0,
            )
        )
        bench.nats.restart()
    # issue 16: Redis stopped a third into the run, started again (empty) a second later
    results.append(
        await _restart_during(
            run_open_loop(
                "license_redis_restart",
                license_request,
                rate=200,
                seconds=seconds,
                processes=processes,
                warmup=0,
            ),
            after=seconds / 3,
            down=1.0,
            stop=bench.redis.process.stop,
            start=bench.redis.process.start,
        )
    )
    return results


def _median_p99(results: Sequence[RunResult], prefix: str) -> tuple[float, list[float]]:
    p99s = sorted(r.percentile(99) for r in results if r.name.startswith(prefix))
    return statistics.median(p99s), p99s


def _cpu_us(results: Sequence[RunResult], prefix: str, processes: tuple[str, ...]) -> float:
    """CPU µs per request of ``processes`` together, over the runs named ``prefix``*."""
    runs = [r for r in results if r.name.startswith(prefix)]
    count = sum(r.count for r in runs)
    return 1e6 * sum(r.cpu.get(p, 0.0) for r in runs for p in processes) / max(1, count)


def license_goals(results: Sequence[RunResult]) -> str:
    """Issue 16's goals for the license path, as ratios within one run: the license p99 over
    the p99 of the same route ending in Envoy's direct response (medians of the alternated
    legs), Python CPU (authz + broker) over both Envoy hops' CPU per license, and the p99
    through the NATS-down legs and the Redis restart against the seed's 50 ms."""
    p99, p99s = _median_p99(results, "license_up_")
    direct, directs = _median_p99(results, "license_direct_")
    python_us = _cpu_us(results, "license_up_", ("authz", "broker"))
    envoy_us = _cpu_us(results, "license_up_", ("envoy",))
    rate = results[0].rate

    def ms(values: list[float]) -> str:
        return ", ".join(f"{1e3 * v:.2f}" for v in values)

    lines = [
        f"license p99 at {rate:.0f} req/s: {1e3 * p99:.2f} ms (median of {ms(p99s)}) / "
        f"direct response {1e3 * direct:.2f} ms (median of {ms(directs)}) = "
        f"{ratio(p99, direct):.2f}x (goal <= 2x)",
        f"Python CPU per license: authz + broker {python_us:.0f} us / Envoy, both hops "
        f"{envoy_us:.0f} us = {ratio(python_us, envoy_us):.2f}x (goal <= 1x); Envoy on the "
        f"direct-response twin: {_cpu_us(results, 'license_direct_', ('envoy',)):.0f} us",
    ]
    for r in results:
        if "down" in r.name or "restart" in r.name:
            errors = r.errors + sum(v for k, v in r.statuses.items() if k != 200)
            verdict = "ok" if r.percentile(99) < 0.05 and not errors else "MISSED"
            lines.append(
                f"{r.name}: p99 {1e3 * r.percentile(99):.2f} ms, {errors} errors "
                f"(goal < 50 ms, none): {verdict}"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ live

LIVE_SESSIONS = 1000
LIVE_USERS = 50  # 20 sessions each (a viewer keeps at most 100 live sessions)
LIVE_REFRESH_S = 2.0
LIVE_VARIANT = "/media/live-demo/hls/360p/playlist.m3u8"


def _live_routes(*, full: bool) -> list[dict[str, Any]]:
    """Entry manifests (a session start) and /media/ playlists (a session's refresh), as the
    sidecar routes them; ``full`` adds the filters' per-route modes."""
    media: dict[str, Any] = {
        "match": {"safe_regex": {"regex": MEDIA_MANIFEST_REGEX}},
        "route": {
            "cluster": "origin",
            "regex_rewrite": {"pattern": {"regex": "^/media/"}, "substitution": "/"},
        },
    }
    if full:
        media["typed_per_filter_config"] = {
            "envoy.filters.http.ext_authz": authz_mode(MODE_SIGNED_URL)
        }
    return [*_manifest_routes("origin", authz=full), media]


def start_live_envoy(root: Path, stack: Stack) -> tuple[ManagedProcess, dict[str, int]]:
    ports = {k: free_port() for k in ("admin", "live_alone", "live_full")}
    config = {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["admin"]}}
        },
        "static_resources": {
            "listeners": [
                _listener("live_alone", ports["live_alone"], _live_routes(full=False), []),
                _listener(
                    "live_full",
                    ports["live_full"],
                    _live_routes(full=True),
                    [AUTHZ_FILTER, EXTPROC_FILTER],
                ),
            ],
            "clusters": [
                _cluster("origin", stack.ports.origin),
                _cluster("authz", stack.ports.authz_grpc, http2=True),
                _cluster("extproc", stack.ports.extproc_grpc, http2=True),
            ],
        },
    }
    path = root / "live-envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    ready = functools.partial(port_open, ports["live_full"])
    return _start_envoy("live-envoy", path, root, ports["admin"], ready), ports


async def start_live_sessions(stack: Stack, port: int) -> list[str]:
    """:data:`LIVE_SESSIONS` playback sessions of the live channel (entry manifest with a JWT,
    as a player starts), each one's signed media playlist URL."""
    users = [f"live-bench-{i}" for i in range(LIVE_USERS)]
    for user in users:
        _put_json(
            f"http://127.0.0.1:{stack.ports.billing}/admin/users/{user}",
            {"plan": "basic", "maxStreams": 0},
        )
    tokens = [stack.token(user) for user in users]
    gate = asyncio.Semaphore(16)

    async def start(client: aiohttp.ClientSession, i: int) -> str:
        url = f"http://127.0.0.1:{port}/playback/live-demo/manifest"
        headers = {"Authorization": f"Bearer {tokens[i % LIVE_USERS]}"}
        async with gate, client.get(url, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"session start: HTTP {resp.status}: {body[:200]}")
        variant = next(line for line in body.splitlines() if line and not line.startswith("#"))
        return f"http://127.0.0.1:{port}{variant}"

    async with aiohttp.ClientSession() as client:
        return list(await asyncio.gather(*(start(client, i) for i in range(LIVE_SESSIONS))))


async def scenario_live(seconds: float) -> list[RunResult]:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        root = Path(tmp)
        generated = media.generate(Path(".local/test-media"))
        stack = Stack(
            StackSettings(
                root=root,
                ports=StackPorts.free(),
                media_dir=generated.root,
                envoy_access_log=False,
            )
        )
        stack.start(["auth-emulator", "billing-emulator", "origin", "authz", "extproc"])
        cleanup.callback(stack.stop)
        envoy, ports = start_live_envoy(root, stack)
        cleanup.callback(envoy.stop)
        sessions = await start_live_sessions(stack, ports["live_full"])
        processes = pids(stack, envoy, ("authz", "extproc", "origin"))
        alone = f"http://127.0.0.1:{ports['live_alone']}{LIVE_VARIANT}"
        results = []
        # 400 sessions (200 req/s), then all 1,000 (500 req/s), each refreshing every 2 s
        for rate in (200.0, LIVE_SESSIONS / LIVE_REFRESH_S):
            count = int(rate * LIVE_REFRESH_S)
            results.append(
                await run_open_loop(
                    "live_alone",
                    lambda _i: Request("GET", alone),
                    rate=rate,
                    seconds=seconds,
                    processes=processes,
                )
            )
            # session i's signed playlist URL: authz (a sign of life of the session, the
            # entitlement re-check), extproc (the rewrite of a document new every segment)
            results.append(
                await run_open_loop(
                    "live_full",
                    _round_robin(sessions[:count]),
                    rate=rate,
                    seconds=seconds,
                    processes=processes,
                )
            )
        return results


SCENARIOS = {
    "authz": (scenario_authz, "envoy_alone"),
    "manifest": (scenario_manifest, None),
    "license": (scenario_license, "license_direct_0"),
    "live": (scenario_live, "live_alone"),
}


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages (the box is shared: say how busy it was)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "saturate", "all"])
    parser.add_argument("--seconds", type=float, default=10.0, help="per run (not saturate)")
    parser.add_argument("--step-seconds", type=float, default=3.0, help="saturate: per step")
    parser.add_argument("--cap", type=float, default=3200.0, help="saturate: highest rate")
    parser.add_argument("--max-steps", type=int, default=9, help="saturate: steps per ramp")
    args = parser.parse_args()
    # `timeout` or a CI runner ends a run with SIGTERM: unwind like Ctrl-C, so that every
    # server the scenario started is stopped on the way out instead of left running
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.scenario == "saturate":
        from bench.saturate import saturate

        print(f"load average at start: {load_average()}")
        print(saturate(args.step_seconds, args.cap, args.max_steps))
        print(f"load average at end: {load_average()}")
        return 0
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for name in names:
        run, baseline = SCENARIOS[name]
        before = load_average()
        results = asyncio.run(run(args.seconds))
        print(
            f"\n== {name} ({args.seconds:.0f}s per run; load average {before} -> {load_average()})"
        )
        if name == "manifest":
            for label in ("hls150", "dash2p"):
                subset = [r for r in results if r.name.startswith(label)]
                print(table(subset, baseline=f"{label}_alone"))
        else:
            print(table(results, baseline=baseline))
        if name == "license":
            print(license_goals(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
