"""Every overlay renders, validates strictly, and its objects agree on names, ports and keys."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.k8s.checks import (
    K8S_VERSIONS,
    Index,
    all_errors,
    reference_errors,
    schema_errors,
)
from tests.k8s.crd_schemas import CRD_SCHEMAS
from tests.k8s.render import OVERLAYS, Obj, render_overlay

BUILT_IN_GROUPS = ("v1", "apps/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1")


def _by_ref(objs: list[Obj], kind: str, name: str) -> Obj:
    found = Index(objs).get(kind, name)
    assert found is not None, f"{kind}/{name} not rendered"
    return found


def _container(objs: list[Obj], deployment: str, name: str) -> Obj:
    dep = _by_ref(objs, "Deployment", deployment)
    for c in dep["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            assert isinstance(c, dict)
            return c
    raise AssertionError(f"Deployment/{deployment} has no container {name}")


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_strictly(overlay: str, version: str) -> None:
    assert schema_errors(render_overlay(overlay), version) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_agree_on_names_ports_and_keys(overlay: str) -> None:
    assert reference_errors(render_overlay(overlay)) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_listed_custom_resources_use_our_schemas(overlay: str) -> None:
    """No kind escapes validation: built-ins use Kubernetes' schemas, the rest ours, by name."""
    kinds = {(o["apiVersion"], o["kind"]) for o in render_overlay(overlay)}
    custom = {k for k in kinds if k[0] not in BUILT_IN_GROUPS}
    assert custom <= set(CRD_SCHEMAS), (
        f"custom resources without a schema: {custom - set(CRD_SCHEMAS)}"
    )
    assert {
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
    } <= custom


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_and_their_companions_exist(overlay: str) -> None:
    objs = render_overlay(overlay)
    namespace = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
    assert len(namespace) == 1
    ns = namespace.pop()
    assert all(o["metadata"].get("namespace") == ns for o in objs if o["kind"] != "Namespace")
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for workload in ("playback-edge", "license-broker"):
        for kind in (
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Service",
            "ServiceMonitor",
            "NetworkPolicy",
            "ServiceAccount",
        ):
            assert (kind, workload) in names, f"{kind}/{workload} missing in {overlay}"
    assert ("Service", "origin") in names
    edge = _by_ref(objs, "Deployment", "playback-edge")
    # The prod overlay's strategic merge patch moves the patched containers first: order is free.
    assert sorted(c["name"] for c in edge["spec"]["template"]["spec"]["containers"]) == [
        "authz",
        "envoy",
        "extproc",
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_enforces_restricted_pod_security(overlay: str) -> None:
    (namespace,) = [o for o in render_overlay(overlay) if o["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_prod_pins_registry_images_and_spreads_across_nodes() -> None:
    objs = render_overlay("prod")
    for dep, template in Index(objs).workloads():
        for c in template["spec"]["containers"]:
            repo, _, tag = c["image"].rpartition(":")
            assert "/" in repo, f"{dep['metadata']['name']}: {c['image']} has no registry"
            assert tag not in {"", "latest"}, f"{dep['metadata']['name']}: {c['image']} unpinned"
        hostname = [
            t
            for t in template["spec"]["topologySpreadConstraints"]
            if t["topologyKey"] == "kubernetes.io/hostname"
        ]
        assert hostname[0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert _by_ref(objs, "HorizontalPodAutoscaler", "playback-edge")["spec"]["minReplicas"] >= 3
    gateway_rule = _by_ref(objs, "NetworkPolicy", "playback-edge")["spec"]["ingress"][0]
    assert gateway_rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "gateway-system"
    }


def test_prod_secrets_come_from_external_secrets_and_cert_manager() -> None:
    objs = render_overlay("prod")
    assert not [o for o in objs if o["kind"] == "Secret"], "prod must not carry plain Secrets"
    targets = {o["spec"]["target"]["name"] for o in objs if o["kind"] == "ExternalSecret"}
    assert targets == {"playback-url-signing", "playback-redis", "license-broker-credentials"}
    certs = {o["spec"]["secretName"] for o in objs if o["kind"] == "Certificate"}
    assert certs == {"playback-edge-tls"}


def test_generated_config_names_carry_a_content_hash_and_references_follow() -> None:
    """Changing a value renames the ConfigMap, which rolls the pods; references are rewritten."""
    objs = render_overlay("dev")
    maps = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
    (envoy_map,) = [m for m in maps if m.startswith("playback-envoy-")]
    spec = _by_ref(objs, "Deployment", "playback-edge")["spec"]["template"]["spec"]
    (render,) = [c for c in spec["initContainers"] if c["name"] == "render-envoy-config"]
    assert render["envFrom"] == [{"configMapRef": {"name": envoy_map}}]


# ----------------------------------------------------------------- broken manifests are caught


def _wrong_probe_port(objs: list[Obj]) -> None:
    _container(objs, "playback-edge", "authz")["readinessProbe"]["httpGet"]["port"] = 9999


def _unknown_container_field(objs: list[Obj]) -> None:
    _container(objs, "playback-edge", "extproc")["readinesProbe"] = {"tcpSocket": {"port": 9012}}


def _unknown_servicemonitor_field(objs: list[Obj]) -> None:
    _by_ref(objs, "ServiceMonitor", "license-broker")["spec"]["endpoints"][0]["intervall"] = "5s"


def _service_target_port(objs: list[Obj]) -> None:
    _by_ref(objs, "Service", "license-broker")["spec"]["ports"][0]["targetPort"] = "api"


def _network_policy_selector(objs: list[Obj]) -> None:
    rule = _by_ref(objs, "NetworkPolicy", "license-broker")["spec"]["ingress"][0]
    rule["from"][0]["podSelector"]["matchLabels"] = {"app.kubernetes.io/name": "edge"}


def _missing_secret_key(objs: list[Obj]) -> None:
    env = _container(objs, "playback-edge", "extproc")["env"]
    env[0]["valueFrom"]["secretKeyRef"]["key"] = "URL_SIGNING_KEY"


def _app_stops_before_envoy(objs: list[Obj]) -> None:
    _container(objs, "playback-edge", "authz")["lifecycle"]["preStop"]["exec"]["command"] = [
        "sleep",
        "5",
    ]


def _pdb_selects_nothing(objs: list[Obj]) -> None:
    _by_ref(objs, "PodDisruptionBudget", "license-broker")["spec"]["selector"]["matchLabels"] = {
        "app.kubernetes.io/name": "broker"
    }


def _writable_root(objs: list[Obj]) -> None:
    _container(objs, "license-broker", "license-broker")["securityContext"][
        "readOnlyRootFilesystem"
    ] = False


def _envoy_port_without_listener(objs: list[Obj]) -> None:
    _container(objs, "playback-edge", "envoy")["ports"][1]["containerPort"] = 8082


def _tls_mounted_elsewhere(objs: list[Obj]) -> None:
    for mount in _container(objs, "playback-edge", "envoy")["volumeMounts"]:
        if mount["mountPath"] == "/etc/envoy/tls":
            mount["mountPath"] = "/etc/envoy/certs"


def _egress_without_nats(objs: list[Obj]) -> None:
    rule = _by_ref(objs, "NetworkPolicy", "license-broker-egress")["spec"]["egress"][1]
    rule["ports"] = [p for p in rule["ports"] if p["port"] != 4222]


def _egress_without_dns(objs: list[Obj]) -> None:
    del _by_ref(objs, "NetworkPolicy", "playback-edge-egress")["spec"]["egress"][0]


BROKEN: dict[str, tuple[Callable[[list[Obj]], None], tuple[str, ...]]] = {
    "wrong probe port": (
        _wrong_probe_port,
        ("Deployment/playback-edge", "container authz readinessProbe port 9999"),
    ),
    "unknown field": (
        _unknown_container_field,
        ("Deployment/playback-edge", "'readinesProbe' was unexpected", "strict schema"),
    ),
    "unknown field in a custom resource": (
        _unknown_servicemonitor_field,
        ("ServiceMonitor/license-broker", "'intervall' was unexpected"),
    ),
    "service targetPort": (
        _service_target_port,
        ("Service/license-broker", "targetPort 'api'", "Deployment/license-broker"),
    ),
    "network policy selector": (
        _network_policy_selector,
        ("NetworkPolicy/license-broker", "matches no Deployment's pods"),
    ),
    "secret key": (
        _missing_secret_key,
        ("Deployment/playback-edge", "key 'URL_SIGNING_KEY'", "URL_SIGNING_KEYS"),
    ),
    "termination order": (
        _app_stops_before_envoy,
        ("Deployment/playback-edge", "container authz preStop (5s) must outlast envoy's"),
    ),
    "pdb selector": (
        _pdb_selects_nothing,
        ("PodDisruptionBudget/license-broker", "matches 0 Deployments"),
    ),
    "security context": (
        _writable_root,
        ("Deployment/license-broker", "writable root filesystem"),
    ),
    "egress to a dependency": (
        _egress_without_nats,
        ("Deployment/license-broker", "NATS_URL connects to nats.playback-deps", "no egress rule"),
    ),
    "egress without dns": (
        _egress_without_dns,
        ("Deployment/playback-edge", "egress allows no DNS"),
    ),
    "tls files for sds": (
        _tls_mounted_elsewhere,
        ("Deployment/playback-edge", "sds-sidecar-cert.yaml reads /etc/envoy/tls/tls.crt"),
    ),
    "envoy port": (
        _envoy_port_without_listener,
        ("Deployment/playback-edge", "envoy container port 8082 has no listener"),
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_manifest_fails_naming_the_object(case: str) -> None:
    mutate, expected = BROKEN[case]
    objs = render_overlay("dev")
    assert all_errors(objs) == []
    mutate(objs)
    errors = all_errors(objs)
    matching = [e for e in errors if all(part in e for part in expected)]
    assert matching, f"no error mentions {expected}; got:\n" + "\n".join(errors)
