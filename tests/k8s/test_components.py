"""k8s/components/istio and k8s/components/envoy-gateway: each renders with the base (through the
dev and prod overlays), validates strictly against the vendored CRDs and Kubernetes' schemas,
points at objects that exist, and configures what our sidecar configures (envoyconf and
playback_drm.contract are the one source: these tests fail when the copies drift).

tests/mesh/test_modes.py runs the same resources, translated, through a real Envoy.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from envoyconf import k8s_settings
from envoyconf.cors import (
    UPSTREAM_HEADERS_DROPPED,
    envoy_cors_policy,
    envoy_gateway_cors,
    istio_cors_policy,
    vary_on_origin,
)
from envoyconf.filters import enable_extproc, refuse_unknown_path, sidecar_filters
from envoyconf.replies import problem_body
from envoyconf.routes import sidecar_routes
from playback_drm import contract, identity
from tests.k8s.checks import K8S_VERSIONS, Index, reference_errors, schema_errors
from tests.k8s.crd_rules import rule_errors
from tests.k8s.crd_schemas import CRD_SCHEMAS
from tests.k8s.crds import vendored_schema
from tests.k8s.mesh_checks import envoy_gateway_errors, istio_errors, mesh_config_errors
from tests.k8s.render import K8S_DIR, MODE_OVERLAYS, Obj, render_overlay
from tests.mesh import gateway as eg_translation
from tests.mesh.envoy import Endpoint, Site

ISTIO = K8S_DIR / "components" / "istio"
ENVOY_GATEWAY = K8S_DIR / "components" / "envoy-gateway"
BUILT_IN = ("v1", "apps/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1")
SIDECAR = k8s_settings()


def _namespace(objs: list[Obj]) -> str:
    [ns] = [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"]
    return str(ns)


def _get(objs: list[Obj], kind: str, name: str) -> Obj:
    found = Index(objs).get(kind, name)
    assert found is not None, f"{kind}/{name} not rendered"
    return found


def _mesh() -> Obj:
    doc: Obj = yaml.safe_load((ISTIO / "mesh-config.yaml").read_text())
    return doc


def _mode_errors(overlay: str, objs: list[Obj]) -> list[str]:
    index = Index(objs)
    if overlay.startswith("istio"):
        errors = istio_errors(index, _namespace(objs))
        if overlay == "istio-prod":  # the snippet names the prod namespace
            errors += mesh_config_errors(index, _mesh(), _namespace(objs))
        return errors
    return envoy_gateway_errors(index)


# ------------------------------------------------------------------------ rendering and schemas


@pytest.mark.parametrize("overlay", MODE_OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_strictly(overlay: str, version: str) -> None:
    assert schema_errors(render_overlay(overlay), version) == []


@pytest.mark.parametrize("overlay", MODE_OVERLAYS)
def test_every_cel_rule_of_the_crds_holds(overlay: str) -> None:
    assert rule_errors(render_overlay(overlay)) == []


@pytest.mark.parametrize("overlay", MODE_OVERLAYS)
def test_every_custom_resource_has_a_real_schema(overlay: str) -> None:
    kinds = {(o["apiVersion"], o["kind"]) for o in render_overlay(overlay)}
    custom = {k for k in kinds if k[0] not in BUILT_IN}
    unchecked = {k for k in custom if k not in CRD_SCHEMAS and vendored_schema(*k) is None}
    assert unchecked == set()
    mesh_kinds = {k for k in custom if vendored_schema(*k) is not None}
    expected = {
        "istio": {
            "Gateway",
            "VirtualService",
            "AuthorizationPolicy",
            "PeerAuthentication",
            "EnvoyFilter",
        },
        "envoy-gateway": {
            "Gateway",
            "HTTPRoute",
            "HTTPRouteFilter",
            "SecurityPolicy",
            "EnvoyExtensionPolicy",
            "BackendTrafficPolicy",
            "ClientTrafficPolicy",
            "EnvoyProxy",
        },
    }[overlay.rsplit("-", 1)[0]]
    assert {kind for _, kind in mesh_kinds} == expected


@pytest.mark.parametrize("overlay", MODE_OVERLAYS)
def test_objects_agree_on_names_ports_and_keys(overlay: str) -> None:
    objs = render_overlay(overlay)
    assert reference_errors(objs) == []
    assert _mode_errors(overlay, objs) == []


@pytest.mark.parametrize("overlay", MODE_OVERLAYS)
def test_no_envoy_of_ours_and_services_of_their_own(overlay: str) -> None:
    objs = render_overlay(overlay)
    index = Index(objs)
    images = {c["image"] for _, t in index.workloads() for c in t["spec"]["containers"]}
    assert not any("playback-drm-envoy" in image for image in images)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert not {n for n in names if "playback-edge" in n[1] and n[0] != "Certificate"}
    assert not [n for n in names if n[0] == "ConfigMap" and n[1].startswith("playback-envoy")]
    for service in ("playback-authz", "playback-extproc"):
        for kind in (
            "Deployment",
            "Service",
            "ServiceAccount",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceMonitor",
        ):
            assert (kind, service) in names, f"{kind}/{service} missing in {overlay}"
    env = {
        cm["metadata"]["name"].rsplit("-", 1)[0]: cm["data"]
        for cm in index.of("ConfigMap")
        if cm["metadata"]["name"].startswith(("playback-authz-", "playback-extproc-"))
    }
    # the proxy calls them over the network now
    assert env["playback-authz"]["AUTHZ_GRPC_ADDR"] == "0.0.0.0:9001"
    assert env["playback-extproc"]["EXTPROC_GRPC_ADDR"] == "0.0.0.0:9002"


def test_the_namespace_names_every_principal_and_cluster() -> None:
    """kustomize's replacements write the overlay's namespace into SPIFFE principals and Istio
    cluster names: no placeholder is left, and the prod overlay says `playback`."""
    for overlay, namespace in (("istio-dev", "playback-dev"), ("istio-prod", "playback")):
        text = yaml.safe_dump_all(render_overlay(overlay))
        assert "NAMESPACE" not in text
        assert f"cluster.local/ns/{namespace}/sa/playback-gateway" in text
        assert f"outbound|9001||playback-authz.{namespace}.svc.cluster.local" in text
        assert f"outbound|9002||playback-extproc.{namespace}.svc.cluster.local" in text


# --------------------------------------------------------------------- broken manifests caught


def _istio_unknown_field(objs: list[Obj]) -> None:
    _get(objs, "AuthorizationPolicy", "playback-ext-authz")["spec"]["rules"][0]["to"][0][
        "operation"
    ]["path"] = ["/x/*"]


def _istio_route_name(objs: list[Obj]) -> None:
    vs = _get(objs, "VirtualService", "playback")
    [http] = [h for h in vs["spec"]["http"] if h["name"] == "manifest_hls"]
    http["name"] = "manifests"


def _istio_selector(objs: list[Obj]) -> None:
    pol = _get(objs, "AuthorizationPolicy", "license-broker")
    pol["spec"]["selector"]["matchLabels"] = {"app": "license-broker"}


def _istio_destination(objs: list[Obj]) -> None:
    vs = _get(objs, "VirtualService", "playback")
    [routed, *_] = [http for http in vs["spec"]["http"] if "route" in http]
    routed["route"][0]["destination"]["port"]["number"] = 8080


def _eg_backend_port(objs: list[Obj]) -> None:
    _get(objs, "SecurityPolicy", "playback-jwt")["spec"]["extAuth"]["grpc"]["backendRefs"][0][
        "port"
    ] = 9011_0


def _eg_section(objs: list[Obj]) -> None:
    _get(objs, "ClientTrafficPolicy", "playback-license")["spec"]["targetRefs"][0][
        "sectionName"
    ] = "mtls"


def _eg_unknown_field(objs: list[Obj]) -> None:
    _get(objs, "EnvoyExtensionPolicy", "playback-manifests")["spec"]["extProc"][0][
        "processingMode"
    ]["response"]["bodyMode"] = "Buffered"


def _eg_rewrite_needs_a_prefix(objs: list[Obj]) -> None:
    rule = _get(objs, "HTTPRoute", "playback-media")["spec"]["rules"][0]
    rule["matches"][0]["path"] = {"type": "RegularExpression", "value": "^/media/.+"}


def _istio_two_targets(objs: list[Obj]) -> None:
    _get(objs, "AuthorizationPolicy", "playback-ext-authz")["spec"]["targetRefs"] = [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "playback"}
    ]


def _eg_filter_ref(objs: list[Obj]) -> None:
    rule = _get(objs, "HTTPRoute", "playback-manifest")["spec"]["rules"][0]
    rule["filters"][0]["extensionRef"]["name"] = "manifest-mpd"


BROKEN: dict[str, tuple[str, Callable[[list[Obj]], None], tuple[str, ...]]] = {
    "istio unknown field": (
        "istio-dev",
        _istio_unknown_field,
        ("AuthorizationPolicy/playback-ext-authz", "'path' was unexpected", "vendored CRD"),
    ),
    "istio route the EnvoyFilter enables": (
        "istio-dev",
        _istio_route_name,
        ("EnvoyFilter/playback-gateway-extproc", "route 'manifest_hls'"),
    ),
    "istio selector": (
        "istio-dev",
        _istio_selector,
        ("AuthorizationPolicy/license-broker", "selects no pods"),
    ),
    "istio destination port": (
        "istio-dev",
        _istio_destination,
        ("VirtualService/playback", "Service 'origin' has no port 8080"),
    ),
    "envoy gateway backend port": (
        "envoy-gateway-dev",
        _eg_backend_port,
        ("SecurityPolicy/playback-jwt", "Service 'playback-authz' has no port 90110"),
    ),
    "envoy gateway listener": (
        "envoy-gateway-dev",
        _eg_section,
        ("ClientTrafficPolicy/playback-license", "no listener 'mtls'"),
    ),
    "envoy gateway unknown field": (
        "envoy-gateway-dev",
        _eg_unknown_field,
        ("EnvoyExtensionPolicy/playback-manifests", "'bodyMode' was unexpected"),
    ),
    "envoy gateway CEL rule": (
        "envoy-gateway-dev",
        _eg_rewrite_needs_a_prefix,
        ("HTTPRoute/playback-media", "PathPrefix", "CEL rule of the CRD"),
    ),
    "istio CEL rule": (
        "istio-dev",
        _istio_two_targets,
        ("AuthorizationPolicy/playback-ext-authz", "CEL rule of the CRD"),
    ),
    "envoy gateway filter reference": (
        "envoy-gateway-dev",
        _eg_filter_ref,
        ("HTTPRoute/playback-manifest", "HTTPRouteFilter/manifest-mpd is missing"),
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_resource_fails_naming_it(case: str) -> None:
    overlay, mutate, expected = BROKEN[case]
    objs = render_overlay(overlay)
    mutate(objs)
    errors = schema_errors(objs, K8S_VERSIONS[-1]) + _mode_errors(overlay, objs)
    errors += rule_errors(objs)
    assert [e for e in errors if all(part in e for part in expected)], "\n".join(errors)


# -------------------------------------------------------------- the same behaviour: Istio


def _sidecar_filter(name: str) -> dict[str, Any]:
    [found] = [f for f in sidecar_filters(SIDECAR) if f["name"] == name]
    return found


def _rate_limit_filter() -> dict[str, Any]:
    """The sidecar's ratelimit filter when it asks a rate limit service, as a mesh does (the
    sidecar's default keeps the per-user limit inside authz's check: no filter)."""
    assert SIDECAR.per_user_limit == "check"
    service = dataclasses.replace(SIDECAR, per_user_limit="service")
    [found] = [f for f in sidecar_filters(service) if f["name"] == "envoy.filters.http.ratelimit"]
    return found


def _patches(objs: list[Obj], envoy_filter: str) -> list[Obj]:
    patches: list[Obj] = _get(objs, "EnvoyFilter", envoy_filter)["spec"]["configPatches"]
    return patches


def _without(config: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in keys}


def test_istio_envoy_filters_carry_the_sidecars_filters() -> None:
    objs = render_overlay("istio-prod")
    strip = _patches(objs, "playback-gateway-headers")[-1]["patch"]["value"]
    assert strip == _sidecar_filter("envoy.filters.http.header_mutation")

    limit, vhost = _patches(objs, "playback-gateway-ratelimit")
    ours = _rate_limit_filter()["typed_config"]
    theirs = limit["patch"]["value"]["typed_config"]
    assert _without(theirs, "rate_limit_service") == _without(
        ours, "rate_limit_service", "rate_limits"
    )
    assert vhost["patch"]["value"]["rate_limits"] == ours["rate_limits"]
    # as the sidecar's virtual host: CORS headers are the CORS filter's alone; answers vary
    assert vhost["patch"]["value"]["response_headers_to_remove"] == list(UPSTREAM_HEADERS_DROPPED)
    assert vhost["patch"]["value"]["response_headers_to_add"] == vary_on_origin()

    extproc, *routes = _patches(objs, "playback-gateway-extproc")
    ours = _sidecar_filter("envoy.filters.http.ext_proc")
    theirs = extproc["patch"]["value"]
    assert theirs["disabled"] is True
    assert _without(theirs["typed_config"], "grpc_service") == _without(
        ours["typed_config"], "grpc_service"
    )
    assert (
        theirs["typed_config"]["grpc_service"]["timeout"]
        == ours["typed_config"]["grpc_service"]["timeout"]
    )
    enabled = {
        r["match"]["routeConfiguration"]["vhost"]["route"]["name"]: r["patch"]["value"][
            "typed_per_filter_config"
        ]["envoy.filters.http.ext_proc"]
        for r in routes
    }
    sidecar = {
        r["name"]: r["typed_per_filter_config"]["envoy.filters.http.ext_proc"]
        for r in sidecar_routes(SIDECAR)
        if "envoy.filters.http.ext_proc" in r.get("typed_per_filter_config", {})
    }
    assert enabled == sidecar
    assert enabled["manifest_url_json"] == enable_extproc(request_headers=True)


def test_istio_routes_are_the_sidecars() -> None:
    """Same names (EnvoyFilters find routes by them), same order, matches, rewrites, timeouts
    and headers, and every route's CORS policy is the sidecar's."""
    from tests.mesh.istio import _routes  # the translation under test

    vs = _get(render_overlay("istio-prod"), "VirtualService", "playback")
    translated, _ = _routes(vs, "playback")
    ours = [r for r in sidecar_routes(SIDECAR) if r["name"] not in ("health", "health_live")]
    assert [r["name"] for r in translated] == [r["name"] for r in ours]
    for mine, theirs in zip(ours, translated, strict=True):
        where = mine["name"]
        match = dict(mine["match"])
        if "headers" in match:  # the sidecar's `contains` is Istio's regex
            [header] = match.pop("headers")
            [istio_header] = theirs["match"]["headers"]
            assert istio_header["name"] == header["name"]
            if "contains" in header["string_match"]:
                needle = header["string_match"]["contains"]
                assert istio_header["string_match"]["safe_regex"]["regex"] == f".*{needle}.*"
            else:
                assert istio_header["string_match"] == header["string_match"], where
        assert _without(theirs["match"], "headers") == match, where
        if mine["typed_per_filter_config"].get("envoy.filters.http.rbac") == refuse_unknown_path():
            # The sidecar refuses unknown paths with RBAC, which its local reply configuration
            # turns into this 404 problem (so the CORS filter, which skips direct responses,
            # adds its headers); Istio answers the same problem directly, without CORS headers.
            assert theirs["direct_response"] == {
                "status": 404,
                "body": {
                    "inline_string": problem_body("not_found", 404, "Not found", "no such route")
                },
            }, where
            continue
        for key in ("request_headers_to_add", "response_headers_to_add"):
            assert _header_values(theirs.get(key, [])) == _header_values(mine.get(key, [])), (
                where,
                key,
            )
        assert theirs.get("response_headers_to_remove") == mine.get("response_headers_to_remove"), (
            where
        )
        if "direct_response" in mine:
            assert theirs["direct_response"] == mine["direct_response"], where
            continue
        for key in ("timeout", "regex_rewrite", "prefix_rewrite"):
            assert theirs["route"].get(key) == mine["route"].get(key), (where, key)
        cors = theirs["typed_per_filter_config"]["envoy.filters.http.cors"]
        ours_cors = envoy_cors_policy(SIDECAR.cors)
        assert cors["allow_origin_string_match"] == ours_cors["allow_origin_string_match"]
        for key in ("allow_methods", "allow_headers", "expose_headers"):
            assert _items(cors[key]) == _items(ours_cors[key]), (where, key)
        assert (cors["max_age"], cors["allow_credentials"]) == (
            ours_cors["max_age"],
            ours_cors["allow_credentials"],
        )


def _header_values(options: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(o["header"]["key"], o["header"]["value"]) for o in options]


def _items(value: str) -> list[str]:
    return [v.strip() for v in value.split(",")]


def _custom_rule(objs: list[Obj]) -> Obj:
    operation: Obj = _get(objs, "AuthorizationPolicy", "playback-ext-authz")["spec"]["rules"][0][
        "to"
    ][0]["operation"]
    return operation


def _istio_path_matches(pattern: str, path: str) -> bool:
    return path.startswith(pattern[:-1]) if pattern.endswith("*") else path == pattern


def test_istio_sends_to_authz_exactly_the_paths_the_sidecar_checks() -> None:
    from tests.test_envoy_config import ROUTE_SAMPLES

    operation = _custom_rule(render_overlay("istio-prod"))
    assert operation["notMethods"] == ["OPTIONS"]  # preflights are the CORS filter's

    def covered(path: str) -> bool:
        return any(_istio_path_matches(p, path) for p in operation["paths"]) and not any(
            _istio_path_matches(p, path) for p in operation["notPaths"]
        )

    for route, path in ROUTE_SAMPLES.items():
        assert covered(path), route
    for path in ("/drm/certificate/widevine", "/health", "/health/live", "/demo/"):
        assert not covered(path), path


def test_istio_license_rule_is_the_sidecars() -> None:
    objs = render_overlay("istio-prod")
    rules = _get(objs, "AuthorizationPolicy", "playback-license-clients")["spec"]["rules"]
    sources = [rule["from"][0]["source"] for rule in rules]
    assert sources[1]["notRemoteIpBlocks"] == list(SIDECAR.license_client_cidrs)
    broker = _get(objs, "AuthorizationPolicy", "license-broker")["spec"]["rules"]
    assert broker == [
        {"from": [{"source": {"principals": ["cluster.local/ns/playback/sa/playback-gateway"]}}]}
    ]


MESH_CONFIG_SCHEMA: dict[str, Any] = {
    # istio/api mesh/v1alpha1/config.proto, EnvoyExternalAuthorizationGrpcProvider
    "type": "object",
    "additionalProperties": False,
    "required": ["extensionProviders"],
    "properties": {
        "extensionProviders": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "envoyExtAuthzGrpc"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"},
                    "envoyExtAuthzGrpc": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["service", "port"],
                        "properties": {
                            "service": {"type": "string"},
                            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "timeout": {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s)$"},
                            "failOpen": {"type": "boolean"},
                            "statusOnError": {"type": "string", "pattern": r"^\d{3}$"},
                            "includeRequestBodyInCheck": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "maxRequestBytes": {"type": "integer"},
                                    "allowPartialMessage": {"type": "boolean"},
                                    "packAsBytes": {"type": "boolean"},
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def test_the_mesh_config_snippet_is_the_sidecars_ext_authz() -> None:
    mesh = _mesh()
    jsonschema.Draft202012Validator(MESH_CONFIG_SCHEMA).validate(mesh)
    [provider] = mesh["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    ours = _sidecar_filter("envoy.filters.http.ext_authz")["typed_config"]
    assert grpc["timeout"] == ours["grpc_service"]["timeout"]
    assert grpc["failOpen"] is ours["failure_mode_allow"] is False
    assert int(grpc["statusOnError"]) == ours["status_on_error"]["code"]
    body = grpc["includeRequestBodyInCheck"]
    assert body["maxRequestBytes"] == contract.AUTHZ_MAX_BODY_BYTES
    assert (body["allowPartialMessage"], body["packAsBytes"]) == (True, True)


# ------------------------------------------------------------- the same behaviour: Envoy Gateway


HTTPROUTE_SAMPLES = {
    "playback-manifest": "/playback/demo/manifest",
    "playback-manifest-url": "/playback/demo/manifest",
    "playback-media-manifest": "/media/demo/hls/720p/playlist.m3u8",
    "playback-media": "/media/demo/hls/720p/seg1.ts",
    "playback-license": "/drm/license/widevine",
    "playback-hls-key": "/drm/key/demo/k1",
    "playback-session-end": "/playback/sessions/end",
    "playback-session-heartbeat": "/playback/sessions/heartbeat",
}


def _route_accepts(route: Obj, path: str) -> bool:
    for rule in route["spec"]["rules"]:
        for match in rule["matches"]:
            kind, value = match["path"]["type"], match["path"]["value"]
            if kind == "RegularExpression" and re.fullmatch(value, path):
                return True
            if kind == "PathPrefix" and (path + "/").startswith(value.rstrip("/") + "/"):
                return True
            if kind == "Exact" and path == value:
                return True
    return False


def test_envoy_gateway_ext_authz_is_the_sidecars() -> None:
    objs = render_overlay("envoy-gateway-prod")
    ours = _sidecar_filter("envoy.filters.http.ext_authz")["typed_config"]
    checked: set[str] = set()
    for policy in Index(objs).of("SecurityPolicy"):
        ext = policy["spec"].get("extAuth")
        if ext is None:
            continue
        assert ext["headersToExtAuth"] == list(contract.AUTHZ_REQUEST_HEADERS)
        assert ext["failOpen"] is False
        assert ext["statusOnError"] == ours["status_on_error"]["code"]
        assert eg_translation._duration(ext["timeout"]) == ours["grpc_service"]["timeout"]
        [mode] = [e["value"] for e in ext["contextExtensions"] if e["name"] == "mode"]
        for target in policy["spec"]["targetRefs"]:
            route = _get(objs, "HTTPRoute", target["name"])
            path = HTTPROUTE_SAMPLES[target["name"]]
            assert _route_accepts(route, path), target["name"]
            assert mode == contract.authz_mode_for_path(path), target["name"]
            checked.add(target["name"])
        if "bodyToExtAuth" in ext:
            assert ext["bodyToExtAuth"]["maxRequestBytes"] == contract.AUTHZ_MAX_BODY_BYTES
    assert checked == set(HTTPROUTE_SAMPLES)
    public = _get(objs, "SecurityPolicy", "playback-certificates")["spec"]
    assert "extAuth" not in public  # as the sidecar: no authz on /drm/certificate/


def _eg_listeners() -> dict[str, dict[str, Any]]:
    objs = render_overlay("envoy-gateway-prod")
    config = yaml.safe_load((ENVOY_GATEWAY / "envoy-gateway-config.yaml").read_text())
    services = {
        key: Endpoint("127.0.0.1", 1)
        for key in (
            ("origin", 80),
            ("license-broker", 9003),
            ("playback-authz", 9001),
            ("playback-extproc", 9002),
            ("envoy-gateway-ratelimit", 8081),
        )
    }
    files = eg_translation.SecretFiles("cert", "key", "ca")
    site = Site("playback", services, {"https": 1, "license": 2}, 3)
    doc = eg_translation.translate(
        objs, config, site, {"playback-public-tls": files, "playback-edge-tls": files}
    )
    return {
        lst["name"].rsplit("/", 1)[1]: lst["filter_chains"][0]["filters"][0]["typed_config"]
        for lst in doc["static_resources"]["listeners"]
    }


def test_envoy_gateway_runs_the_sidecars_filters_in_the_sidecars_order() -> None:
    listeners = _eg_listeners()
    kinds = {
        name: [f["name"].split("/")[0] for f in hcm["http_filters"]]
        for name, hcm in listeners.items()
    }
    # one ext_authz filter per SecurityPolicy of the listener's routes (Envoy Gateway turns each
    # on per route): manifests, signed URLs, HLS keys, session end, session heartbeat
    assert kinds["https"] == [
        "envoy.filters.http.cors",
        *["envoy.filters.http.ext_authz"] * 5,
        "envoy.filters.http.ratelimit",
        "envoy.filters.http.ratelimit",
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]
    assert kinds["license"][:3] == [
        "envoy.filters.http.cors",
        "envoy.filters.http.rbac",
        "envoy.filters.http.ext_authz",
    ]
    [extproc] = [f for f in listeners["https"]["http_filters"] if "ext_proc" in f["name"]]
    config = extproc["typed_config"]
    assert config["processing_mode"] == contract.EXTPROC_HEADERS_PROCESSING_MODE
    assert tuple(config["response_attributes"]) == contract.EXTPROC_HEADERS_ATTRIBUTES
    assert config["failure_mode_allow"] is False
    # early, before any filter: the identity headers a client sent
    early = listeners["https"]["early_header_mutation_extensions"][0]["typed_config"]
    strip = _sidecar_filter("envoy.filters.http.header_mutation")["typed_config"]["mutations"]
    assert early["mutations"] == strip["request_mutations"]


def test_envoy_gateway_license_rule_is_the_sidecars() -> None:
    objs = render_overlay("envoy-gateway-prod")
    ctp = _get(objs, "ClientTrafficPolicy", "playback-license")["spec"]
    [san] = ctp["tls"]["clientValidation"]["subjectAltNames"]["uris"]
    assert (san["type"], san["value"]) == ("Exact", SIDECAR.license_principals[0])
    assert ctp["clientIPDetection"]["xForwardedFor"]["numTrustedHops"] == 1
    [rule] = _get(objs, "SecurityPolicy", "playback-license")["spec"]["authorization"]["rules"]
    assert rule["principal"]["clientCIDRs"] == list(SIDECAR.license_client_cidrs)
    [route] = _get(objs, "HTTPRoute", "playback-license")["spec"]["parentRefs"]
    assert route["sectionName"] == "license"  # licenses only where the certificate is checked


def test_every_modes_cors_policy_is_rendered_from_envoyconf() -> None:
    """One policy in every deployment mode: the components hold what envoyconf.cors renders for
    the pod's sidecar (its origins: none until the deployment lists its own)."""
    vs = _get(render_overlay("istio-prod"), "VirtualService", "playback")
    routed = [http for http in vs["spec"]["http"] if "directResponse" not in http]
    assert routed
    assert [http["corsPolicy"] for http in routed] == [istio_cors_policy(SIDECAR.cors)] * len(
        routed
    )
    policies = Index(render_overlay("envoy-gateway-prod")).of("SecurityPolicy")
    assert [p["spec"]["cors"] for p in policies] == [envoy_gateway_cors(SIDECAR.cors)] * len(
        policies
    )


def test_envoy_gateway_routes_leave_cors_to_the_cors_filter() -> None:
    """Every rule that reaches an upstream drops the upstream's own CORS headers and varies by
    Origin, as the sidecar's virtual host does."""
    rules = [
        rule
        for route in Index(render_overlay("envoy-gateway-prod")).of("HTTPRoute")
        for rule in route["spec"]["rules"]
        if rule.get("backendRefs")
    ]
    assert rules
    for rule in rules:
        [mod] = [
            f["responseHeaderModifier"]
            for f in rule.get("filters", [])
            if f["type"] == "ResponseHeaderModifier"
        ]
        assert set(UPSTREAM_HEADERS_DROPPED) <= set(mod["remove"]), rule["matches"]
        assert {"name": "vary", "value": "Origin"} in mod["add"], rule["matches"]


def test_envoy_gateway_cors_is_the_sidecars() -> None:
    ours = envoy_cors_policy(SIDECAR.cors)
    for policy in Index(render_overlay("envoy-gateway-prod")).of("SecurityPolicy"):
        cors = eg_translation._cors(policy["spec"]["cors"], "cors")
        assert cors["allow_origin_string_match"] == ours["allow_origin_string_match"]
        for key in ("allow_methods", "allow_headers", "expose_headers"):
            assert _items(cors[key]) == _items(ours[key]), key
        assert (cors["max_age"], cors["allow_credentials"]) == (
            ours["max_age"],
            ours["allow_credentials"],
        )


def test_the_per_user_limit_is_the_sidecars() -> None:
    objs = render_overlay("envoy-gateway-prod")
    [rule] = _get(objs, "BackendTrafficPolicy", "playback-per-user")["spec"]["rateLimit"]["global"][
        "rules"
    ]
    assert rule["limit"] == {"requests": SIDECAR.per_user_rps, "unit": "Second"}
    assert rule["clientSelectors"] == [
        {"headers": [{"type": "Distinct", "name": identity.USER_HEADER}]}
    ]
    assert rule["shared"] is True  # one budget per viewer across routes, as the sidecar
    config = yaml.safe_load((ENVOY_GATEWAY / "envoy-gateway-config.yaml").read_text())
    ours = _rate_limit_filter()["typed_config"]
    assert eg_translation._duration(config["rateLimit"]["timeout"]) == ours["timeout"]
    assert config["rateLimit"]["failClosed"] is ours["failure_mode_deny"] is False
