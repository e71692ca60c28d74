"""The translations of the Istio and Envoy Gateway resources: what they produce is a
configuration the real Envoy accepts, the facts the modes differ by are in it, and a field they
do not model is an error rather than silently ignored."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.devpki import ensure_dev_pki
from tests.k8s.render import K8S_DIR, Obj, render
from tests.mesh import gateway, istio
from tests.mesh.envoy import Certificate, Endpoint, Site, Unsupported
from tests.mesh.pki import MeshCa
from tests.support.servers import envoy_validate

SERVICES = {
    ("origin", 80): Endpoint("127.0.0.1", 10080),
    ("license-broker", 9003): Endpoint("127.0.0.1", 19003),
    ("playback-authz", 9001): Endpoint("127.0.0.1", 19001),
    ("playback-extproc", 9002): Endpoint("127.0.0.1", 19002),
    ("envoy-gateway-ratelimit", 8081): Endpoint("127.0.0.1", 19001),
}


def _istio(objs: list[Obj], tmp: Path) -> dict[str, Any]:
    ca = MeshCa(tmp / "mesh")
    accounts = ("playback-gateway", "license-broker", "playback-authz", "playback-extproc")
    certs = {a: ca.workload("playback", a) for a in accounts}
    certs["front"] = ca.workload("istio-system", "istio-ingressgateway-service-account")
    ids = istio.MeshIdentities(
        str(ca.ca_cert), {k: Certificate(str(v.cert), str(v.key)) for k, v in certs.items()}
    )
    listeners = {
        "gateway": 18443,
        "inbound|9003|license-broker": 18903,
        "inbound|9001|playback-authz": 18901,
        "inbound|9002|playback-extproc": 18902,
        "front|trusted": 18080,
    }
    mesh = yaml.safe_load((K8S_DIR / "components" / "istio" / "mesh-config.yaml").read_text())
    site = Site("playback", SERVICES, listeners, 19901, {"fronts": {"trusted": "front"}})
    return istio.translate(objs, mesh, site, ids)


def _gateway(objs: list[Obj], tmp: Path) -> dict[str, Any]:
    pki = ensure_dev_pki(tmp / "pki")
    files = gateway.SecretFiles(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert))
    config = yaml.safe_load(
        (K8S_DIR / "components" / "envoy-gateway" / "envoy-gateway-config.yaml").read_text()
    )
    site = Site("playback", SERVICES, {"https": 28443, "license": 28444}, 29901)
    return gateway.translate(
        objs, config, site, {"playback-public-tls": files, "playback-edge-tls": files}
    )


def _hcm(config: dict[str, Any], listener: str) -> dict[str, Any]:
    [found] = [x for x in config["static_resources"]["listeners"] if x["name"] == listener]
    hcm: dict[str, Any] = found["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


@pytest.mark.parametrize("mode", ["istio", "envoy-gateway"])
def test_the_translation_is_a_configuration_envoy_accepts(mode: str, tmp_path: Path) -> None:
    objs = render(K8S_DIR / "overlays" / f"{mode}-prod")
    config = _istio(objs, tmp_path) if mode == "istio" else _gateway(objs, tmp_path)
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_istio_passes_no_mode_and_runs_ext_authz_only_where_custom_applies(
    tmp_path: Path,
) -> None:
    hcm = _hcm(_istio(render(K8S_DIR / "overlays" / "istio-prod"), tmp_path), "0.0.0.0_8443")
    names = [f["name"] for f in hcm["http_filters"]]
    assert names[:4] == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.cors",
        "envoy.filters.http.rbac",  # the CUSTOM policy's shadow rules
        "envoy.filters.http.ext_authz",
    ]
    ext_authz = hcm["http_filters"][3]["typed_config"]
    assert ext_authz["filter_enabled_metadata"]["filter"] == "envoy.filters.http.rbac"
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        assert "envoy.filters.http.ext_authz" not in route.get("typed_per_filter_config", {})


def test_envoy_gateway_names_the_mode_per_route(tmp_path: Path) -> None:
    config = _gateway(render(K8S_DIR / "overlays" / "envoy-gateway-prod"), tmp_path)
    modes: dict[str, str | None] = {}
    for listener in ("playback/playback/https", "playback/playback/license"):
        for route in _hcm(config, listener)["route_config"]["virtual_hosts"][0]["routes"]:
            per_route = route.get("typed_per_filter_config", {})
            found = [
                v["check_settings"]["context_extensions"]["mode"]
                for k, v in per_route.items()
                if k.startswith("envoy.filters.http.ext_authz/")
            ]
            modes[route["name"].split("/")[2]] = found[0] if found else None
    assert modes == {
        "playback-session-end": "session_end",
        "playback-session-heartbeat": "session_heartbeat",
        "playback-manifest-url": "session_start",
        "playback-manifest": "session_start",
        "playback-media-manifest": "signed_url",
        "playback-media": "signed_url",
        "playback-hls-key": "key",
        "playback-certificates": None,
        "playback-license": "license",
    }


@pytest.mark.parametrize(
    ("mode", "kind", "mutate", "message"),
    [
        (
            "istio",
            "VirtualService",
            lambda o: o["spec"]["http"][0].update(fault={"abort": {"httpStatus": 500}}),
            "fault not translated",
        ),
        (
            "istio",
            "EnvoyFilter",
            lambda o: o["spec"]["configPatches"][0]["patch"].update(operation="REPLACE"),
            "operation REPLACE",
        ),
        (
            "envoy-gateway",
            "SecurityPolicy",
            lambda o: o["spec"].update(jwt={"providers": []}),
            "jwt not translated",
        ),
        (
            "envoy-gateway",
            "ClientTrafficPolicy",
            lambda o: o["spec"].update(timeout={"http": {"idleTimeout": "5s"}}),
            "timeout not translated",
        ),
    ],
)
def test_a_field_the_translation_does_not_model_is_an_error(
    mode: str, kind: str, mutate: Any, message: str, tmp_path: Path
) -> None:
    objs = copy.deepcopy(render(K8S_DIR / "overlays" / f"{mode}-prod"))
    target = next(o for o in objs if o["kind"] == kind)
    mutate(target)
    with pytest.raises(Unsupported, match=message):
        _istio(objs, tmp_path) if mode == "istio" else _gateway(objs, tmp_path)
