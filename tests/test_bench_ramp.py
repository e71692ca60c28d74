"""The pure parts of the saturation bench (bench/ramp.py) and of the license goals
(bench/edge.py): which rate the ramp tries next, the sizing arithmetic, the ratios printed."""

from __future__ import annotations

from typing import Any

from bench.edge import add_alone_twin, license_goals
from bench.harness import RunResult
from bench.ramp import Ramp, bottleneck, per_replica_at


def _walk(ramp: Ramp, holds_up_to: float) -> list[float]:
    """The rates a ramp tries against a server that holds every rate up to ``holds_up_to``."""
    tried = []
    while (rate := ramp.next_rate()) is not None:
        tried.append(rate)
        ramp.record(rate, rate <= holds_up_to)
    return tried


def test_ramp_doubles_then_bisects_to_the_resolution() -> None:
    ramp = Ramp(start=100, cap=3200, max_steps=20, resolution=0.15)
    assert _walk(ramp, holds_up_to=500) == [100, 200, 400, 800, 600, 500, 550]
    assert ramp.held == 500
    assert ramp.missed == 550
    assert not ramp.capped


def test_ramp_stops_at_the_cap_and_says_so() -> None:
    ramp = Ramp(start=100, cap=1000, max_steps=20)
    assert _walk(ramp, holds_up_to=10_000) == [100, 200, 400, 800, 1000]
    assert ramp.capped


def test_ramp_is_bounded_in_steps() -> None:
    ramp = Ramp(start=100, cap=3200, max_steps=4)
    assert _walk(ramp, holds_up_to=10_000) == [100, 200, 400, 800]
    assert ramp.held == 800


def test_ramp_bisects_down_when_the_first_step_misses_and_gives_up_at_an_eighth() -> None:
    ramp = Ramp(start=100, cap=3200, max_steps=20)
    assert _walk(ramp, holds_up_to=30) == [100, 50, 25, 38, 32, 28]
    assert ramp.held == 28  # within 15% of 32, missed
    ramp = Ramp(start=100, cap=3200, max_steps=20)
    assert _walk(ramp, holds_up_to=0) == [100, 50, 25]  # 12 is under an eighth of 100
    assert ramp.held == 0


def test_requests_per_replica_at_60_percent_of_a_core_and_the_bottleneck() -> None:
    per = per_replica_at({"envoy": 600.0, "authz": 1200.0, "broker": 0.0})
    assert per == {"envoy": 1000.0, "authz": 500.0}  # 0.6 * 1e6 µs/s ÷ µs per request
    assert bottleneck(per) == ("authz", 500.0)


def _run(name: str, p99_ms: float, cpu: dict[str, float], errors: int = 0) -> RunResult:
    # 100 requests: 98 at 1 ms, two at the p99 (the harness's percentile picks the 99th)
    latencies = [0.001] * 98 + [p99_ms / 1e3] * 2
    return RunResult(name, 200.0, 1.0, latencies, {200: 100}, cpu, errors)


def test_license_goals_are_ratios_of_medians_within_one_run() -> None:
    envoy = {"envoy": 0.1}  # 1,000 µs per request over 100 requests
    results = [
        _run("license_direct_0", 4.0, envoy),
        _run("license_up_0", 9.0, {"envoy": 0.1, "authz": 0.1, "broker": 0.05}),
        _run("license_nats_down_0", 60.0, envoy),
        _run("license_direct_1", 5.0, envoy),
        _run("license_up_1", 10.0, {"envoy": 0.1, "authz": 0.1, "broker": 0.05}),
        _run("license_direct_2", 6.0, envoy),
        _run("license_up_2", 30.0, {"envoy": 0.1, "authz": 0.1, "broker": 0.05}),
        _run("license_redis_restart", 20.0, envoy, errors=1),
    ]
    text = license_goals(results)
    assert "10.00 ms (median of 9.00, 10.00, 30.00)" in text
    assert "direct response 5.00 ms" in text
    assert "= 2.00x (goal <= 2x)" in text
    assert "authz + broker 1500 us / Envoy, both hops 1000 us = 1.50x" in text
    assert "license_nats_down_0: p99 60.00 ms, 0 errors (goal < 50 ms, none): MISSED" in text
    assert "license_redis_restart: p99 20.00 ms, 1 errors (goal < 50 ms, none): MISSED" in text


def test_the_alone_twin_keeps_the_hops_and_drops_our_services() -> None:
    broker_route: dict[str, Any] = {"name": "license", "match": {"prefix": "/drm/license"}}
    broker_route["route"] = {"cluster": "license_broker"}
    broker_route["typed_per_filter_config"] = {"envoy.filters.http.rbac": {"rbac": "mtls"}}
    manifest_route: dict[str, Any] = {"name": "manifest", "route": {"cluster": "origin"}}
    manifest_route["typed_per_filter_config"] = {"envoy.filters.http.ext_proc": {}}

    def listener(name: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
        hcm: dict[str, Any] = {"stat_prefix": name, "route_config": {"name": name}}
        hcm["route_config"]["virtual_hosts"] = [{"routes": routes}]
        return {
            "name": name,
            "address": {"socket_address": {"port_value": 1}},
            "filter_chains": [{"filters": [{"typed_config": hcm}], "transport_socket": "mtls"}],
        }

    sidecar_cluster: dict[str, Any] = {"name": "sidecar", "transport_socket": "client-cert"}
    sidecar_cluster["load_assignment"] = {
        "cluster_name": "sidecar",
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {}}}}]}],
    }
    config: dict[str, Any] = {
        "static_resources": {
            "listeners": [
                listener("sidecar", [broker_route, manifest_route]),
                listener("gateway", [{"route": {"cluster": "sidecar"}}]),
            ],
            "clusters": [sidecar_cluster],
        }
    }
    add_alone_twin(config, gateway_port=1001, sidecar_port=1002)
    listeners = {x["name"]: x for x in config["static_resources"]["listeners"]}
    sidecar = listeners["sidecar_alone"]
    assert sidecar["address"]["socket_address"]["port_value"] == 1002
    chain = sidecar["filter_chains"][0]
    assert chain["transport_socket"] == "mtls"
    routes = chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    license, manifest = routes
    assert "route" not in license
    assert license["direct_response"]["status"] == 200
    per_filter = license["typed_per_filter_config"]
    assert per_filter["envoy.filters.http.rbac"] == {"rbac": "mtls"}  # the mTLS check stays
    assert per_filter["envoy.filters.http.ext_authz"]["disabled"] is True
    assert manifest["route"] == {"cluster": "origin"}
    assert "envoy.filters.http.ext_proc" not in manifest["typed_per_filter_config"]
    gateway = listeners["gateway_alone"]
    assert gateway["address"]["socket_address"]["port_value"] == 1001
    gateway_hcm = gateway["filter_chains"][0]["filters"][0]["typed_config"]
    assert gateway_hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"] == {
        "cluster": "sidecar_alone"
    }
    twin = config["static_resources"]["clusters"][-1]
    assert twin["name"] == "sidecar_alone"
    assert twin["transport_socket"] == "client-cert"
    endpoint = twin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == 1002
    # the stack's own listeners are left as they were
    assert listeners["sidecar"]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"
    ][0]["routes"][0]["route"] == {"cluster": "license_broker"}
