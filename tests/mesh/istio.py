"""What istiod pushes to the Envoys of k8s/components/istio, for the fields those manifests use.

Written from Istio's documented translation and its sources (istio/istio, read, not copied):

- ``meshConfig.extensionProviders[].envoyExtAuthzGrpc`` + ``AuthorizationPolicy`` ``CUSTOM``
  (pilot/pkg/security/authz/builder): an RBAC filter whose *shadow* rules (DENY, stat prefix
  ``istio_ext_authz_``) name the requests the policy covers, then an ext_authz filter that runs
  only when that shadow rule matched (``filter_enabled_metadata``). No context extension: the
  CUSTOM action has none, so authz derives the check from the path.
- ``DENY`` / ``ALLOW`` policies: RBAC filters after ext_authz; a rule is ``from`` x ``to``, each
  list OR-ed, each field's values OR-ed, fields AND-ed, ``not*`` fields negated; ``/x/*`` is a
  prefix; principals are SPIFFE URIs (``spiffe://`` + the principal) of the peer certificate.
- Gateway HTTP filter order (pilot/pkg/networking/core/listener_builder.go): CUSTOM (rbac shadow,
  ext_authz), authn, rbac (DENY, ALLOW), ..., cors, ..., router. Filters that do nothing for these
  requests (metadata exchange, grpc_stats, alpn, fault, istio.stats) are left out.
- The router does not suppress Envoy's headers (``proxyHeaders.envoyDebugHeaders`` on, the
  default), so a rewriting route adds ``x-envoy-original-path``.
- ``VirtualService`` (pilot/pkg/networking/core/route): one Envoy route per ``http[]`` entry and
  match, named after ``http[].name``; ``uriRegexRewrite`` -> ``regex_rewrite``, ``rewrite.uri``
  on a prefix match -> ``prefix_rewrite``; headers, CORS (per route), timeouts, direct responses.
  Clusters are ``outbound|<port>||<host>``; a Service with mesh pods is reached over mesh mTLS.
- ``Gateway`` server ``tls.mode: ISTIO_MUTUAL``: the gateway's workload certificate, and the
  mesh root verifies the client's. ``gatewayTopology.numTrustedProxies`` (proxy.istio.io/config)
  -> ``xff_num_trusted_hops``.
- ``EnvoyFilter`` patches, in priority order: HTTP_FILTER REMOVE / INSERT_FIRST / INSERT_BEFORE,
  VIRTUAL_HOST and HTTP_ROUTE MERGE.
- ``PeerAuthentication`` STRICT: each in-mesh workload's inbound listener takes mutual TLS only.

Anything else in those objects raises :class:`Unsupported`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from envoyconf.typeurls import (
    T_CORS,
    T_CORS_POLICY,
    T_EXT_AUTHZ,
    T_HCM,
    T_RBAC,
    T_ROUTER,
)
from tests.mesh.envoy import (
    Certificate,
    Endpoint,
    Json,
    Site,
    Unsupported,
    bootstrap,
    cidr,
    cluster,
    downstream_tls,
    header_option,
    listener,
    only,
    upstream_tls,
)

Obj = dict[str, Any]
RBAC = "envoy.filters.http.rbac"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
SHADOW_PREFIX = "istio_ext_authz_"
SHADOW_KEY = SHADOW_PREFIX + "shadow_effective_policy_id"


@dataclass(frozen=True)
class MeshIdentities:
    """The test's mesh root and one workload certificate per service account."""

    ca: str
    workloads: dict[str, Certificate]  # service account -> certificate

    def of(self, account: str) -> Certificate:
        try:
            return self.workloads[account]
        except KeyError:
            raise Unsupported(f"no workload certificate for service account {account}") from None


# --------------------------------------------------------------------------------- the objects


def _of(objs: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o.get("kind") == kind]


def _selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


@dataclass(frozen=True)
class Workload:
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    account: str


def _workloads(objs: list[Obj]) -> list[Workload]:
    out = []
    for dep in _of(objs, "Deployment"):
        meta = dep["spec"]["template"]["metadata"]
        out.append(
            Workload(
                dep["metadata"]["name"],
                dict(meta.get("labels") or {}),
                dict(meta.get("annotations") or {}),
                dep["spec"]["template"]["spec"].get("serviceAccountName", "default"),
            )
        )
    return out


def _policies(objs: list[Obj], workload: Workload, action: str) -> list[Obj]:
    found = []
    for pol in _of(objs, "AuthorizationPolicy"):
        spec = pol["spec"]
        only(spec, ("selector", "action", "provider", "rules"), f"AuthorizationPolicy/{_name(pol)}")
        if spec.get("action", "ALLOW") != action:
            continue
        if _selects((spec.get("selector") or {}).get("matchLabels"), workload.labels):
            found.append(pol)
    return sorted(found, key=_name)


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


# -------------------------------------------------------------------------------------- RBAC


def _string_value(value: str) -> Json:
    if value.endswith("*") and value != "*":
        return {"prefix": value[:-1]}
    if value.startswith("*") and value != "*":
        return {"suffix": value[1:]}
    return {"exact": value}


def _any_of(items: list[Json], key: str) -> Json:
    return items[0] if len(items) == 1 else {key: {"rules" if key == "or_rules" else "ids": items}}


def _permission(operation: Obj, where: str, ports: dict[int, int]) -> Json:
    only(operation, ("paths", "notPaths", "methods", "notMethods", "ports"), where)
    rules: list[Json] = []

    def path(value: str) -> Json:
        if value == "*":
            return {"any": True}
        return {"url_path": {"path": _string_value(value)}}

    def method(value: str) -> Json:
        return {"header": {"name": ":method", "string_match": {"exact": value}}}

    def port(value: str) -> Json:
        # the workload's port, where the test's inbound listener stands in for it
        return {"destination_port": ports.get(int(value), int(value))}

    for field, build, negate in (
        ("paths", path, False),
        ("notPaths", path, True),
        ("methods", method, False),
        ("notMethods", method, True),
        ("ports", port, False),
    ):
        values = operation.get(field)
        if not values:
            continue
        rule = _any_of([build(v) for v in values], "or_rules")
        rules.append({"not_rule": rule} if negate else rule)
    return {"and_rules": {"rules": rules}} if rules else {"any": True}


def _principal(source: Obj, where: str) -> Json:
    only(source, ("principals", "notPrincipals", "remoteIpBlocks", "notRemoteIpBlocks"), where)
    ids: list[Json] = []

    def principal(value: str) -> Json:
        if value == "*":
            return {"authenticated": {"principal_name": {"safe_regex": {"regex": ".+"}}}}
        matcher = _string_value(value)
        if "exact" in matcher or "prefix" in matcher:
            matcher = {k: "spiffe://" + v for k, v in matcher.items()}
        return {"authenticated": {"principal_name": matcher}}

    def remote(value: str) -> Json:
        return {"remote_ip": cidr(value)}

    for field, build, negate in (
        ("principals", principal, False),
        ("notPrincipals", principal, True),
        ("remoteIpBlocks", remote, False),
        ("notRemoteIpBlocks", remote, True),
    ):
        values = source.get(field)
        if not values:
            continue
        ident = _any_of([build(v) for v in values], "or_ids")
        ids.append({"not_id": ident} if negate else ident)
    return {"and_ids": {"ids": ids}} if ids else {"any": True}


def _rbac_policy(rule: Obj, where: str, ports: dict[int, int]) -> Json:
    only(rule, ("from", "to"), where)
    permissions = [
        _permission(entry["operation"], f"{where}.to", ports) for entry in rule.get("to") or []
    ] or [{"any": True}]
    principals = [
        _principal(entry["source"], f"{where}.from") for entry in rule.get("from") or []
    ] or [{"any": True}]
    return {"permissions": permissions, "principals": principals}


def _rbac_filter(
    policies: list[Obj], action: str, ports: dict[int, int], *, shadow_provider: str | None = None
) -> Json:
    rules: dict[str, Json] = {}
    for pol in policies:
        ns = pol["metadata"].get("namespace", "")
        for i, rule in enumerate(pol["spec"].get("rules") or []):
            where = f"AuthorizationPolicy/{_name(pol)}.rules[{i}]"
            name = f"ns[{ns}]-policy[{_name(pol)}]-rule[{i}]"
            if shadow_provider is not None:
                name = f"istio-ext-authz-{shadow_provider}-{name}"
            rules[name] = _rbac_policy(rule, where, ports)
    config: Json = {"@type": T_RBAC}
    if shadow_provider is not None:
        config["shadow_rules"] = {"action": "DENY", "policies": rules}
        config["shadow_rules_stat_prefix"] = SHADOW_PREFIX
    else:
        config["rules"] = {"action": action, "policies": rules}
    return {"name": RBAC, "typed_config": config}


def _authorization_filters(
    objs: list[Obj], workload: Workload, mesh: Obj, ports: dict[int, int]
) -> tuple[list[Json], list[Json]]:
    """(CUSTOM filters: shadow rbac + ext_authz, then the DENY and ALLOW rbac filters)."""
    custom = _policies(objs, workload, "CUSTOM")
    custom_filters: list[Json] = []
    providers = {p["spec"]["provider"]["name"] for p in custom}
    if len(providers) > 1:
        raise Unsupported(f"{workload.name}: more than one CUSTOM provider")
    for provider in sorted(providers):
        custom_filters.append(_rbac_filter(custom, "DENY", ports, shadow_provider=provider))
        custom_filters.append(_ext_authz(mesh, provider))
    rbac = [
        _rbac_filter(found, action, ports)
        for action in ("DENY", "ALLOW")
        if (found := _policies(objs, workload, action))
    ]
    return custom_filters, rbac


def _ext_authz(mesh: Obj, provider: str) -> Json:
    only(mesh, ("extensionProviders",), "meshConfig")
    [entry] = [p for p in mesh["extensionProviders"] if p["name"] == provider]
    only(entry, ("name", "envoyExtAuthzGrpc"), f"extensionProviders[{provider}]")
    grpc = entry["envoyExtAuthzGrpc"]
    only(
        grpc,
        ("service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck"),
        f"extensionProviders[{provider}].envoyExtAuthzGrpc",
    )
    config: Json = {
        "@type": T_EXT_AUTHZ,
        "grpc_service": {
            "envoy_grpc": {
                "cluster_name": f"outbound|{grpc['port']}||{grpc['service']}",
                "authority": grpc["service"],
            },
            "timeout": grpc.get("timeout", "600s"),
        },
        "failure_mode_allow": bool(grpc.get("failOpen", False)),
        "transport_api_version": "V3",
        "filter_enabled_metadata": {
            "filter": RBAC,
            "path": [{"key": SHADOW_KEY}],
            "value": {"string_match": {"prefix": f"istio-ext-authz-{provider}"}},
        },
    }
    if "statusOnError" in grpc:
        config["status_on_error"] = {"code": int(grpc["statusOnError"])}
    body = grpc.get("includeRequestBodyInCheck")
    if body is not None:
        only(body, ("maxRequestBytes", "allowPartialMessage", "packAsBytes"), "includeRequestBody")
        config["with_request_body"] = {
            "max_request_bytes": body["maxRequestBytes"],
            "allow_partial_message": bool(body.get("allowPartialMessage", False)),
            "pack_as_bytes": bool(body.get("packAsBytes", False)),
        }
    return {"name": "envoy.filters.http.ext_authz", "typed_config": config}


# -------------------------------------------------------------------------------------- routes


def _fqdn(host: str, namespace: str) -> str:
    return host if "." in host else f"{host}.{namespace}.svc.cluster.local"


def _string_match(match: Obj, where: str) -> Json:
    only(match, ("exact", "prefix", "regex"), where)
    (kind, value), *_ = match.items()
    return {"safe_regex": {"regex": value}} if kind == "regex" else {kind: value}


def _route_match(match: Obj, where: str) -> Json:
    only(match, ("uri", "method", "headers", "queryParams"), where)
    out: Json = {}
    uri = match.get("uri")
    if uri is None:
        out["prefix"] = "/"
    else:
        only(uri, ("exact", "prefix", "regex"), f"{where}.uri")
        if "regex" in uri:
            out["safe_regex"] = {"regex": uri["regex"]}
        elif "prefix" in uri:
            out["prefix"] = uri["prefix"]
        else:
            out["path"] = uri["exact"]
    if match.get("headers"):
        out["headers"] = [
            {"name": name, "string_match": _string_match(m, f"{where}.headers.{name}")}
            for name, m in match["headers"].items()
        ]
    if match.get("method"):  # Istio: a `:method` header matcher after the others
        out.setdefault("headers", []).append(
            {"name": ":method", "string_match": _string_match(match["method"], f"{where}.method")}
        )
    if match.get("queryParams"):
        out["query_parameters"] = [
            {"name": name, "string_match": _string_match(m, f"{where}.queryParams.{name}")}
            for name, m in match["queryParams"].items()
        ]
    return out


def _cors(policy: Obj, where: str) -> Json:
    only(
        policy,
        (
            "allowOrigins",
            "allowMethods",
            "allowHeaders",
            "exposeHeaders",
            "maxAge",
            "allowCredentials",
        ),
        where,
    )
    max_age = str(policy["maxAge"])
    return {
        "@type": T_CORS_POLICY,
        "allow_origin_string_match": [
            _string_match(o, f"{where}.allowOrigins") for o in policy.get("allowOrigins", [])
        ],
        "allow_methods": ",".join(policy.get("allowMethods", [])),
        "allow_headers": ",".join(policy.get("allowHeaders", [])),
        "expose_headers": ",".join(policy.get("exposeHeaders", [])),
        "max_age": max_age.removesuffix("s"),
        "allow_credentials": bool(policy.get("allowCredentials", False)),
    }


def _header_operations(route: Json, headers: Obj, where: str) -> None:
    only(headers, ("request", "response"), where)
    for side in ("request", "response"):
        ops = headers.get(side)
        if not ops:
            continue
        only(ops, ("set", "remove"), f"{where}.{side}")
        if ops.get("set"):
            route[f"{side}_headers_to_add"] = [
                header_option(k, str(v)) for k, v in ops["set"].items()
            ]
        if ops.get("remove"):
            route[f"{side}_headers_to_remove"] = list(ops["remove"])


def _routes(vs: Obj, namespace: str) -> tuple[list[Json], set[tuple[str, int]]]:
    """Envoy routes of a VirtualService, and the (host, port) destinations they use."""
    spec = vs["spec"]
    only(spec, ("hosts", "gateways", "http"), f"VirtualService/{_name(vs)}")
    routes: list[Json] = []
    destinations: set[tuple[str, int]] = set()
    for i, http in enumerate(spec["http"]):
        where = f"VirtualService/{_name(vs)}.http[{i}]"
        only(
            http,
            (
                "name",
                "match",
                "rewrite",
                "headers",
                "route",
                "timeout",
                "corsPolicy",
                "directResponse",
            ),
            where,
        )
        for match in http.get("match") or [None]:
            route: Json = {
                "name": http["name"],
                "match": _route_match(match or {}, f"{where}.match"),
            }
            if "directResponse" in http:
                direct = http["directResponse"]
                only(direct, ("status", "body"), f"{where}.directResponse")
                route["direct_response"] = {"status": direct["status"]}
                if "body" in direct:
                    route["direct_response"]["body"] = {"inline_string": direct["body"]["string"]}
            else:
                [destination] = http["route"]
                only(destination, ("destination",), f"{where}.route")
                dest = destination["destination"]
                host, port = _fqdn(dest["host"], namespace), int(dest["port"]["number"])
                destinations.add((host, port))
                action: Json = {"cluster": f"outbound|{port}||{host}"}
                if "timeout" in http:
                    action["timeout"] = http["timeout"]
                rewrite = http.get("rewrite")
                if rewrite is not None:
                    only(rewrite, ("uri", "uriRegexRewrite"), f"{where}.rewrite")
                    if "uriRegexRewrite" in rewrite:
                        regex = rewrite["uriRegexRewrite"]
                        action["regex_rewrite"] = {
                            "pattern": {"regex": regex["match"]},
                            "substitution": regex["rewrite"],
                        }
                    else:
                        if "prefix" not in route["match"]:
                            raise Unsupported(f"{where}: rewrite.uri needs a prefix match")
                        action["prefix_rewrite"] = rewrite["uri"]
                route["route"] = action
            if "headers" in http:
                _header_operations(route, http["headers"], f"{where}.headers")
            if "corsPolicy" in http:
                route["typed_per_filter_config"] = {
                    "envoy.filters.http.cors": _cors(http["corsPolicy"], f"{where}.corsPolicy")
                }
            routes.append(route)
    return routes, destinations


# ------------------------------------------------------------------------------- EnvoyFilter


def _merge(target: Json, value: Json) -> None:
    """Protobuf merge: messages merge, lists append, scalars replace."""
    for key, item in value.items():
        if isinstance(item, dict) and isinstance(target.get(key), dict):
            _merge(target[key], item)
        elif isinstance(item, list) and isinstance(target.get(key), list):
            target[key].extend(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(item)


def _apply_envoy_filters(objs: list[Obj], workload: Workload, hcm: Json) -> None:
    filters = [
        f
        for f in _of(objs, "EnvoyFilter")
        if _selects((f["spec"].get("workloadSelector") or {}).get("labels"), workload.labels)
    ]
    filters.sort(key=lambda f: (f["spec"].get("priority", 0), _name(f)))
    chain: list[Json] = hcm["http_filters"]
    vhosts: list[Json] = hcm["route_config"]["virtual_hosts"]
    for ef in filters:
        only(
            ef["spec"],
            ("workloadSelector", "priority", "configPatches"),
            f"EnvoyFilter/{_name(ef)}",
        )
        for i, patch in enumerate(ef["spec"]["configPatches"]):
            where = f"EnvoyFilter/{_name(ef)}.configPatches[{i}]"
            only(patch, ("applyTo", "match", "patch"), where)
            match, op = patch["match"], patch["patch"]
            if match.get("context") != "GATEWAY":
                raise Unsupported(f"{where}: context {match.get('context')}")
            operation = op["operation"]
            value = op.get("value")
            if patch["applyTo"] == "HTTP_FILTER":
                only(match, ("context", "listener"), where)
                target = match["listener"]["filterChain"]["filter"]
                if target["name"] != HCM_FILTER:
                    raise Unsupported(f"{where}: filter {target['name']}")
                sub = (target.get("subFilter") or {}).get("name")
                names = [f["name"] for f in chain]
                if sub is not None and sub not in names:
                    continue  # Istio applies a patch only where its match holds
                if operation == "REMOVE":
                    chain[:] = [f for f in chain if f["name"] != sub]
                elif operation == "INSERT_FIRST":
                    chain.insert(0, copy.deepcopy(value))
                elif operation == "INSERT_BEFORE":
                    chain.insert(names.index(sub), copy.deepcopy(value))
                else:
                    raise Unsupported(f"{where}: operation {operation}")
            elif patch["applyTo"] in ("VIRTUAL_HOST", "HTTP_ROUTE"):
                only(match, ("context", "routeConfiguration"), where)
                vhost_match = match["routeConfiguration"]["vhost"]
                only(vhost_match, ("name", "route"), f"{where}.vhost")
                route_match = vhost_match.get("route") or {}
                only(route_match, ("name", "action"), f"{where}.route")
                if operation != "MERGE":
                    raise Unsupported(f"{where}: operation {operation}")
                for vhost in vhosts:
                    if vhost_match.get("name") and vhost_match["name"] != vhost["name"]:
                        continue
                    if patch["applyTo"] == "VIRTUAL_HOST":
                        _merge(vhost, value)
                        continue
                    for route in vhost["routes"]:
                        if route_match.get("name") in (None, route["name"]):
                            _merge(route, value)
            else:
                raise Unsupported(f"{where}: applyTo {patch['applyTo']}")


# -------------------------------------------------------------------------------- the gateway


def _proxy_config(workload: Workload) -> Obj:
    raw = workload.annotations.get("proxy.istio.io/config")
    return json.loads(raw) if raw else {}


def translate(objs: list[Obj], mesh: Obj, site: Site, ids: MeshIdentities) -> Json:
    """The bootstrap of one Envoy playing every Istio proxy these manifests configure: the
    gateway (with the test's plain-HTTP "front" listeners before it, each with the mesh identity
    named in ``site.extras['fronts']``) and the inbound sidecars of the in-mesh Services."""
    namespace = site.namespace
    workloads = _workloads(objs)
    [gateway] = _of(objs, "Gateway")
    only(gateway["spec"], ("selector", "servers"), f"Gateway/{_name(gateway)}")
    [gw] = [w for w in workloads if _selects(gateway["spec"]["selector"], w.labels)]
    [server] = gateway["spec"]["servers"]
    only(server, ("port", "hosts", "tls"), f"Gateway/{_name(gateway)}.servers[0]")
    if server["tls"] != {"mode": "ISTIO_MUTUAL"}:
        raise Unsupported(f"Gateway/{_name(gateway)}: tls {server['tls']}")
    topology = _proxy_config(gw).get("gatewayTopology", {})
    only(_proxy_config(gw), ("gatewayTopology",), f"Deployment/{gw.name} proxy config")

    routes: list[Json] = []
    destinations: set[tuple[str, int]] = set()
    for vs in _of(objs, "VirtualService"):
        if _name(gateway) in vs["spec"].get("gateways", []):
            found, used = _routes(vs, namespace)
            routes += found
            destinations |= used

    custom, rbac = _authorization_filters(objs, gw, mesh, {})
    hcm: Json = {
        "@type": T_HCM,
        "stat_prefix": "outbound_0.0.0.0_" + str(server["port"]["number"]),
        "codec_type": "AUTO",
        "use_remote_address": True,
        "xff_num_trusted_hops": int(topology.get("numTrustedProxies", 0)),
        "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True},
        "stream_idle_timeout": "0s",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "route_config": {
            "name": f"https.{server['port']['number']}.{server['port']['name']}.{_name(gateway)}",
            "virtual_hosts": [
                {"name": f"*:{server['port']['number']}", "domains": ["*"], "routes": routes}
            ],
        },
        "http_filters": [
            *custom,
            *rbac,
            {"name": "envoy.filters.http.cors", "typed_config": {"@type": T_CORS}},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": T_ROUTER, "suppress_envoy_headers": False},
            },
        ],
    }
    _apply_envoy_filters(objs, gw, hcm)

    listeners = [
        listener(
            f"0.0.0.0_{server['port']['number']}",
            site.port("gateway"),
            hcm,
            tls=downstream_tls(ids.of(gw.account), client_ca=ids.ca, require_client=True),
        )
    ]
    clusters: list[Json] = []
    mesh_services = _mesh_services(objs, workloads, namespace)
    # the clusters ext_authz, the rate limit service and ext_proc name (outbound|port||host)
    for outbound in _cluster_names(hcm):
        _, number, _, fqdn = outbound.split("|")
        destinations.add((fqdn, int(number)))
    for host, port in sorted(destinations):
        service = host.split(".")[0]
        name = f"outbound|{port}||{host}"
        target = mesh_services.get((host, port))
        if target is None:  # not in the mesh (the origin): plain HTTP
            clusters.append(cluster(name, site.service(service, port)))
            continue
        workload, target_port, http2 = target
        inbound_port = site.port(f"inbound|{target_port}|{service}")
        tls = upstream_tls(
            ids.of(gw.account),
            ids.ca,
            sni=f"outbound_.{port}_._.{host}",
            server_san=f"spiffe://cluster.local/ns/{namespace}/sa/{workload.account}",
        )
        clusters.append(cluster(name, Endpoint("127.0.0.1", inbound_port), http2=http2, tls=tls))
        inbound, app_cluster = _inbound_sidecar(
            objs, workload, target_port, inbound_port, site.service(service, port), http2, ids, mesh
        )
        listeners.append(inbound)
        clusters.append(app_cluster)
    gateway_endpoint = Endpoint("127.0.0.1", site.port("gateway"))
    gateway_id = f"spiffe://cluster.local/ns/{namespace}/sa/{gw.account}"
    listeners += _fronts(site, ids, gateway_endpoint, gateway_id, clusters)
    return bootstrap("istio-gateway", site.admin_port, listeners, clusters)


def _cluster_names(hcm: Json) -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if (
                    key == "cluster_name"
                    and isinstance(value, str)
                    and value.startswith("outbound|")
                ):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(hcm["http_filters"])
    return found


def _mesh_services(
    objs: list[Obj], workloads: list[Workload], namespace: str
) -> dict[tuple[str, int], tuple[Workload, int, bool]]:
    """(host, port) of each Service whose pods carry a sidecar -> (workload, target port, h2)."""
    injected = any(
        (ns["metadata"].get("labels") or {}).get("istio-injection") == "enabled"
        for ns in _of(objs, "Namespace")
        if ns["metadata"]["name"] == namespace
    )
    out: dict[tuple[str, int], tuple[Workload, int, bool]] = {}
    if not injected:
        return out
    for svc in _of(objs, "Service"):
        selector = svc["spec"].get("selector")
        if not selector:
            continue
        pods = [
            w
            for w in workloads
            if _selects(selector, w.labels) and w.labels.get("sidecar.istio.io/inject") != "true"
        ]
        if len(pods) != 1:
            continue
        dep = next(d for d in _of(objs, "Deployment") if _name(d) == pods[0].name)
        container_ports = {
            p.get("name"): p["containerPort"]
            for c in dep["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports") or []
        }
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            number = container_ports.get(target, target) if isinstance(target, str) else target
            http2 = port.get("appProtocol") in ("kubernetes.io/h2c", "http2", "grpc")
            host = f"{_name(svc)}.{namespace}.svc.cluster.local"
            out[(host, int(port["port"]))] = (pods[0], int(number), http2)
    return out


def _inbound_sidecar(
    objs: list[Obj],
    workload: Workload,
    target_port: int,
    inbound_port: int,
    app: Endpoint,
    http2: bool,
    ids: MeshIdentities,
    mesh: Obj,
) -> tuple[Json, Json]:
    """A workload's inbound listener for one port (mutual TLS only: PeerAuthentication STRICT,
    then its AuthorizationPolicies, then the app) and the cluster of the app behind it."""
    strict = [
        p
        for p in _of(objs, "PeerAuthentication")
        if not p["spec"].get("selector") and p["spec"]["mtls"]["mode"] == "STRICT"
    ]
    if not strict:
        raise Unsupported("the namespace has no STRICT PeerAuthentication")
    for pa in _of(objs, "PeerAuthentication"):
        only(pa["spec"], ("selector", "mtls", "portLevelMtls"), f"PeerAuthentication/{_name(pa)}")
        selector = (pa["spec"].get("selector") or {}).get("matchLabels")
        levels = pa["spec"].get("portLevelMtls") or {}
        if selector and _selects(selector, workload.labels) and str(target_port) in levels:
            raise Unsupported(f"port {target_port} of {workload.name} is not STRICT")
    custom, rbac = _authorization_filters(objs, workload, mesh, {target_port: inbound_port})
    app_cluster = f"inbound|{target_port}||{workload.name}"
    hcm: Json = {
        "@type": T_HCM,
        "stat_prefix": f"inbound_0.0.0.0_{target_port}",
        "codec_type": "AUTO",
        "route_config": {
            "name": app_cluster,
            "virtual_hosts": [
                {
                    "name": f"inbound|http|{target_port}",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": app_cluster, "timeout": "0s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            *custom,
            *rbac,
            {"name": "envoy.filters.http.router", "typed_config": {"@type": T_ROUTER}},
        ],
    }
    inbound = listener(
        f"inbound|{target_port}|{workload.name}",
        inbound_port,
        hcm,
        tls=downstream_tls(ids.of(workload.account), client_ca=ids.ca, require_client=True),
    )
    return inbound, cluster(app_cluster, app, http2=http2)


def _fronts(
    site: Site, ids: MeshIdentities, gateway: Endpoint, gateway_id: str, clusters: list[Json]
) -> list[Json]:
    """The platform's front (its ingress gateway, in the mesh) as plain-HTTP listeners of the
    test, one per identity (``site.extras['fronts']``: listener name -> service account
    principal): each forwards to the gateway over mesh mTLS as that workload."""
    out: list[Json] = []
    for name, account in site.extras["fronts"].items():
        target = f"front|{name}"
        clusters.append(
            cluster(
                target,
                gateway,
                tls=upstream_tls(
                    ids.of(account), ids.ca, sni="playback-gateway", server_san=gateway_id
                ),
            )
        )
        hcm: Json = {
            "@type": T_HCM,
            "stat_prefix": target.replace("|", "_"),
            "use_remote_address": True,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": target,
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "route": {"cluster": target, "timeout": "30s"},
                            }
                        ],
                    }
                ]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": T_ROUTER}}
            ],
        }
        out.append(listener(target, site.port(target), hcm))
    return out


__all__ = ["MeshIdentities", "translate"]
