"""What Envoy Gateway pushes to its Envoy for k8s/components/envoy-gateway, for the fields those
manifests use.

Written from Envoy Gateway's documented translation and its sources (envoyproxy/gateway,
internal/gatewayapi and internal/xds/translator; read, not copied):

- One Envoy listener per Gateway listener; TLS from its certificate Secrets; a
  ``ClientTrafficPolicy`` on the listener (``sectionName``) adds client-certificate validation
  (``require_client_certificate``, the CA, ``match_typed_subject_alt_names``), early request header
  mutations (before any filter), ``enableEnvoyHeaders`` (the router does not suppress
  ``x-envoy-*``; otherwise it does), path and underscore handling, and X-Forwarded-For trust
  (an ``original_ip_detection`` extension, with ``use_remote_address`` off).
- One route per HTTPRoute rule and match, named ``httproute/<ns>/<name>/rule/<i>/match/<j>/*``,
  sorted by Gateway API precedence (exact, then regular expression, then prefix; longer paths,
  then more header matches, then more query matches first). ``PathPrefix`` is a
  ``path_separated_prefix``; ``ReplacePrefixMatch: /`` becomes a ``regex_rewrite``; an
  ``HTTPRouteFilter``'s ``ReplaceRegexMatch`` too.
- ``SecurityPolicy`` ``extAuth``: one ext_authz filter per policy
  (``envoy.filters.http.ext_authz/securitypolicy/<ns>/<name>``), disabled on the listener and
  enabled on the policy's routes with its ``contextExtensions``; ``headersToExtAuth`` ->
  ``allowed_headers`` (case-insensitive); ``bodyToExtAuth`` -> ``with_request_body``.
  ``authorization`` -> a per-route RBAC matcher (client CIDRs against the source IP); ``cors`` ->
  a per-route CORS policy.
- ``EnvoyExtensionPolicy`` ``extProc``: one ext_proc filter per policy, disabled on the listener
  and enabled per route; a ``processingMode.request``/``response`` entry sends that phase's
  headers (never skipped), ``body`` its body mode, ``attributes`` the attributes; gRPC timeout 10 s.
- ``BackendTrafficPolicy`` global rate limit: a ratelimit filter (domain: the rule's policy for a
  ``shared`` rule) calling Envoy Gateway's rate limit service (``ratelimit_cluster``; the test
  points it at authz's rate limit service), and per-route descriptors (a generic key naming the
  rule, then one entry per ``Distinct`` header).
- Filter order: cors, ext_authz, ext_proc, rbac, ratelimit, router.

Anything else in those objects raises :class:`Unsupported`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from envoyconf.typeurls import (
    T_CORS,
    T_CORS_POLICY,
    T_EXT_AUTHZ,
    T_EXT_AUTHZ_ROUTE,
    T_EXT_PROC,
    T_FILTER_CONFIG,
    T_HCM,
    T_RBAC,
    T_RBAC_ROUTE,
    T_RL,
    T_ROUTER,
)
from tests.mesh.envoy import (
    Certificate,
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
)

Obj = dict[str, Any]
T_RL_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"
T_EARLY_HEADERS = (
    "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3."
    "HeaderMutation"
)
T_XFF = "type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig"
T_SOURCE_IP = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput"
T_IP_MATCHER = "type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip"
T_RBAC_ACTION = "type.googleapis.com/envoy.config.rbac.v3.Action"
EXT_SERVICE_TIMEOUT = "10s"  # Envoy Gateway's defaultExtServiceRequestTimeout
ORDER = {
    "envoy.filters.http.cors": 3,
    "envoy.filters.http.ext_authz": 6,
    "envoy.filters.http.ext_proc": 100,
    "envoy.filters.http.rbac": 301,
    "envoy.filters.http.ratelimit": 303,
    "envoy.filters.http.router": 310,
}


@dataclass(frozen=True)
class SecretFiles:
    """A TLS Secret of the namespace, as files: ``tls.crt``, ``tls.key`` and ``ca.crt``."""

    cert: str
    key: str
    ca: str


@dataclass
class _Route:
    route: Obj  # the HTTPRoute
    rule_index: int
    match_index: int
    envoy: Json  # the Envoy route built so far
    path_kind: str
    path_value: str
    headers: int
    queries: int
    filters: dict[str, Json] = field(default_factory=dict)


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def _ns(obj: Obj) -> str:
    return str(obj["metadata"].get("namespace", ""))


def _of(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o.get("kind") == kind]


def _targets(policy: Obj, kind: str, name: str, section: str | None = None) -> bool:
    for ref in policy["spec"].get("targetRefs") or []:
        only(ref, ("group", "kind", "name", "sectionName"), f"{policy['kind']}/{_name(policy)}")
        if ref["kind"] == kind and ref["name"] == name and ref.get("sectionName") == section:
            return True
    return False


def _duration(value: str) -> str:
    """A Gateway API / Envoy Gateway duration (``500ms``, ``2s``) as an Envoy duration."""
    found = re.fullmatch(r"(\d+)(ms|s|m)", value)
    if not found:
        raise Unsupported(f"duration {value!r}")
    amount, unit = int(found.group(1)), found.group(2)
    seconds = {"ms": amount / 1000, "s": amount, "m": amount * 60}[unit]
    return f"{seconds:g}s"


# -------------------------------------------------------------------------------------- routes


def _string_match(kind: str, value: str) -> Json:
    if kind == "Exact":
        return {"exact": value}
    if kind == "RegularExpression":
        return {"safe_regex": {"regex": value}}
    raise Unsupported(f"match type {kind}")


def _routes(
    objs: list[Obj], gateway: Obj, section: str, site: Site
) -> tuple[list[_Route], list[Json]]:
    routes: list[_Route] = []
    clusters: list[Json] = []
    filters = {_name(f): f for f in _of(objs, "HTTPRouteFilter")}
    for hr in _of(objs, "HTTPRoute"):
        spec = hr["spec"]
        only(spec, ("parentRefs", "rules"), f"HTTPRoute/{_name(hr)}")
        parents = [
            p
            for p in spec["parentRefs"]
            if p["name"] == _name(gateway) and p.get("sectionName") == section
        ]
        if not parents:
            continue
        for i, rule in enumerate(spec["rules"]):
            where = f"HTTPRoute/{_name(hr)}.rules[{i}]"
            only(rule, ("matches", "filters", "backendRefs", "timeouts"), where)
            cluster_name = f"httproute/{_ns(hr)}/{_name(hr)}/rule/{i}"
            # a rule without backends is answered by its HTTPRouteFilter's directResponse
            if rule.get("backendRefs"):
                [backend] = rule["backendRefs"]
                only(backend, ("name", "port"), f"{where}.backendRefs")
                clusters.append(
                    cluster(cluster_name, site.service(backend["name"], backend["port"]))
                )
            for j, match in enumerate(rule["matches"]):
                only(match, ("path", "method", "headers", "queryParams"), f"{where}.matches[{j}]")
                path = match["path"]
                kind, value = path["type"], path["value"]
                envoy_match: Json = {}
                if kind == "Exact":
                    envoy_match["path"] = value
                elif kind == "RegularExpression":
                    envoy_match["safe_regex"] = {"regex": value}
                elif kind == "PathPrefix":
                    if value == "/":
                        envoy_match["prefix"] = "/"
                    else:
                        envoy_match["path_separated_prefix"] = value.rstrip("/")
                else:
                    raise Unsupported(f"{where}: path type {kind}")
                if match.get("headers"):
                    envoy_match["headers"] = [
                        {"name": h["name"], "string_match": _string_match(h["type"], h["value"])}
                        for h in match["headers"]
                    ]
                if match.get("method"):
                    envoy_match.setdefault("headers", []).append(
                        {"name": ":method", "string_match": {"exact": match["method"]}}
                    )
                if match.get("queryParams"):
                    envoy_match["query_parameters"] = [
                        {"name": q["name"], "string_match": _string_match(q["type"], q["value"])}
                        for q in match["queryParams"]
                    ]
                action: Json = {"cluster": cluster_name}
                if "timeouts" in rule:
                    only(rule["timeouts"], ("request",), f"{where}.timeouts")
                    action["timeout"] = _duration(rule["timeouts"]["request"])
                envoy: Json = {
                    "name": f"httproute/{_ns(hr)}/{_name(hr)}/rule/{i}/match/{j}/*",
                    "match": envoy_match,
                    "route": action,
                }
                for k, flt in enumerate(rule.get("filters") or []):
                    _route_filter(envoy, flt, kind, value, filters, f"{where}.filters[{k}]")
                if not rule.get("backendRefs") and "direct_response" not in envoy:
                    raise Unsupported(f"{where}: no backendRefs and no directResponse")
                routes.append(
                    _Route(
                        hr,
                        i,
                        j,
                        envoy,
                        kind,
                        value,
                        len(match.get("headers") or []) + (1 if match.get("method") else 0),
                        len(match.get("queryParams") or []),
                    )
                )
    # Gateway API precedence, as Envoy Gateway sorts (descending, stable)
    rank = {"Exact": 2, "RegularExpression": 1, "PathPrefix": 0}
    routes.sort(
        key=lambda r: (
            rank[r.path_kind],
            0 if r.path_value == "/" else len(r.path_value),
            r.headers,
            r.queries,
        ),
        reverse=True,
    )
    return routes, clusters


def _route_filter(
    envoy: Json, flt: Obj, kind: str, prefix: str, filters: dict[str, Obj], where: str
) -> None:
    action = envoy["route"]
    if flt["type"] == "RequestHeaderModifier":
        mod = flt["requestHeaderModifier"]
        only(mod, ("set",), where)
        envoy["request_headers_to_add"] = [header_option(h["name"], h["value"]) for h in mod["set"]]
    elif flt["type"] == "ResponseHeaderModifier":
        mod = flt["responseHeaderModifier"]
        only(mod, ("set", "add", "remove"), where)
        envoy["response_headers_to_add"] = [
            header_option(h["name"], h["value"]) for h in mod.get("set", [])
        ] + [
            {
                "header": {"key": h["name"], "value": h["value"]},
                "append_action": "APPEND_IF_EXISTS_OR_ADD",
            }
            for h in mod.get("add", [])
        ]
        envoy["response_headers_to_remove"] = list(mod.get("remove", []))
    elif flt["type"] == "URLRewrite":
        path = flt["urlRewrite"]["path"]
        if path["type"] != "ReplacePrefixMatch" or kind != "PathPrefix":
            raise Unsupported(f"{where}: {path}")
        if path["replacePrefixMatch"] in ("", "/"):
            action["regex_rewrite"] = {
                "pattern": {"regex": "^" + re.escape(prefix) + r"\/*"},
                "substitution": "/",
            }
        else:
            action["prefix_rewrite"] = path["replacePrefixMatch"].rstrip("/")
    elif flt["type"] == "ExtensionRef":
        ref = flt["extensionRef"]
        if (ref["group"], ref["kind"]) != ("gateway.envoyproxy.io", "HTTPRouteFilter"):
            raise Unsupported(f"{where}: {ref}")
        spec = filters[ref["name"]]["spec"]
        only(spec, ("urlRewrite", "directResponse"), f"HTTPRouteFilter/{ref['name']}")
        if "directResponse" in spec:
            direct = spec["directResponse"]
            only(direct, ("statusCode",), f"HTTPRouteFilter/{ref['name']}.directResponse")
            del envoy["route"]
            envoy["direct_response"] = {"status": int(direct["statusCode"])}
            return
        rewrite = spec["urlRewrite"]["path"]
        if rewrite["type"] != "ReplaceRegexMatch":
            raise Unsupported(f"HTTPRouteFilter/{ref['name']}: {rewrite['type']}")
        action["regex_rewrite"] = {
            "pattern": {"regex": rewrite["replaceRegexMatch"]["pattern"]},
            "substitution": rewrite["replaceRegexMatch"]["substitution"],
        }
    else:
        raise Unsupported(f"{where}: filter type {flt['type']}")


# ------------------------------------------------------------------------------------ policies


def _cors(cors: Obj, where: str) -> Json:
    only(
        cors,
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
    origins = [
        {"safe_regex": {"regex": re.escape(o).replace(r"\*", ".*")}} if "*" in o else {"exact": o}
        for o in cors["allowOrigins"]
    ]
    return {
        "@type": T_CORS_POLICY,
        "allow_origin_string_match": origins,
        "allow_methods": ", ".join(cors.get("allowMethods", [])),
        "allow_headers": ", ".join(cors.get("allowHeaders", [])),
        "expose_headers": ", ".join(cors.get("exposeHeaders", [])),
        "max_age": _duration(cors["maxAge"]).removesuffix("s"),
        "allow_credentials": bool(cors.get("allowCredentials", False)),
        "forward_not_matching_preflights": False,
    }


def _ext_authz(policy: Obj, site: Site, clusters: list[Json]) -> tuple[str, Json, Json]:
    """(filter name, the listener's filter, the per-route config) of a SecurityPolicy's extAuth."""
    where = f"SecurityPolicy/{_name(policy)}.extAuth"
    ext = policy["spec"]["extAuth"]
    only(
        ext,
        (
            "grpc",
            "headersToExtAuth",
            "timeout",
            "failOpen",
            "statusOnError",
            "contextExtensions",
            "bodyToExtAuth",
        ),
        where,
    )
    only(ext["grpc"], ("backendRefs",), f"{where}.grpc")
    [backend] = ext["grpc"]["backendRefs"]
    name = f"envoy.filters.http.ext_authz/securitypolicy/{_ns(policy)}/{_name(policy)}"
    cluster_name = f"securitypolicy/{_ns(policy)}/{_name(policy)}/{backend['name']}"
    clusters.append(
        cluster(cluster_name, site.service(backend["name"], backend["port"]), http2=True)
    )
    config: Json = {
        "@type": T_EXT_AUTHZ,
        "transport_api_version": "V3",
        "failure_mode_allow": bool(ext.get("failOpen", False)),
        "grpc_service": {
            "envoy_grpc": {
                "cluster_name": cluster_name,
                "authority": f"{backend['name']}.{_ns(policy)}:{backend['port']}",
            },
            "timeout": _duration(ext["timeout"]) if "timeout" in ext else EXT_SERVICE_TIMEOUT,
        },
    }
    if ext.get("headersToExtAuth"):
        config["allowed_headers"] = {
            "patterns": [{"exact": h, "ignore_case": True} for h in ext["headersToExtAuth"]]
        }
    if "bodyToExtAuth" in ext:
        config["with_request_body"] = {"max_request_bytes": ext["bodyToExtAuth"]["maxRequestBytes"]}
    if "statusOnError" in ext:
        config["status_on_error"] = {"code": int(ext["statusOnError"])}
    extensions = {}
    for entry in ext.get("contextExtensions") or []:
        only(entry, ("name", "type", "value"), f"{where}.contextExtensions")
        if entry.get("type", "Value") != "Value":
            raise Unsupported(f"{where}: contextExtensions type {entry['type']}")
        extensions[entry["name"]] = entry["value"]
    per_route: Json = {"@type": T_EXT_AUTHZ_ROUTE, "check_settings": {}}
    if extensions:
        per_route["check_settings"]["context_extensions"] = extensions
    return name, {"name": name, "disabled": True, "typed_config": config}, per_route


def _authorization(policy: Obj) -> Json:
    where = f"SecurityPolicy/{_name(policy)}.authorization"
    auth = policy["spec"]["authorization"]
    only(auth, ("defaultAction", "rules"), where)

    def action(name: str, verdict: str) -> Json:
        return {
            "action": {
                "name": name,
                "typed_config": {
                    "@type": T_RBAC_ACTION,
                    "name": verdict.upper(),
                    "action": verdict.upper(),
                },
            }
        }

    matchers = []
    for i, rule in enumerate(auth["rules"]):
        only(rule, ("name", "action", "principal"), f"{where}.rules[{i}]")
        only(rule["principal"], ("clientCIDRs",), f"{where}.rules[{i}].principal")
        matchers.append(
            {
                "predicate": {
                    "single_predicate": {
                        "input": {"name": "client_ip", "typed_config": {"@type": T_SOURCE_IP}},
                        "custom_match": {
                            "name": "ip_matcher",
                            "typed_config": {
                                "@type": T_IP_MATCHER,
                                "stat_prefix": "client_ip",
                                "cidr_ranges": [cidr(c) for c in rule["principal"]["clientCIDRs"]],
                            },
                        },
                    }
                },
                "on_match": action(rule.get("name", f"rule-{i}"), rule["action"]),
            }
        )
    return {
        "@type": T_RBAC_ROUTE,
        "rbac": {
            "matcher": {
                "matcher_list": {"matchers": matchers},
                "on_no_match": action("default", auth.get("defaultAction", "Deny")),
            }
        },
    }


def _ext_proc(policy: Obj, site: Site, clusters: list[Json]) -> tuple[str, Json, Json]:
    where = f"EnvoyExtensionPolicy/{_name(policy)}"
    only(policy["spec"], ("targetRefs", "extProc"), where)
    [ext] = policy["spec"]["extProc"]
    only(ext, ("backendRefs", "failOpen", "messageTimeout", "processingMode"), f"{where}.extProc")
    [backend] = ext["backendRefs"]
    name = (
        f"envoy.filters.http.ext_proc/envoyextensionpolicy/{_ns(policy)}/{_name(policy)}/extproc/0"
    )
    cluster_name = f"envoyextensionpolicy/{_ns(policy)}/{_name(policy)}/0/{backend['name']}"
    clusters.append(
        cluster(cluster_name, site.service(backend["name"], backend["port"]), http2=True)
    )
    mode: Json = {
        "request_header_mode": "SKIP",
        "response_header_mode": "SKIP",
        "request_body_mode": "NONE",
        "response_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    config: Json = {
        "@type": T_EXT_PROC,
        "grpc_service": {
            "envoy_grpc": {
                "cluster_name": cluster_name,
                "authority": f"{backend['name']}.{_ns(policy)}:{backend['port']}",
            },
            "timeout": EXT_SERVICE_TIMEOUT,
        },
        "failure_mode_allow": bool(ext.get("failOpen", False)),
        "processing_mode": mode,
        "allow_mode_override": False,
    }
    if "messageTimeout" in ext:
        config["message_timeout"] = _duration(ext["messageTimeout"])
    processing = ext.get("processingMode") or {}
    only(processing, ("request", "response"), f"{where}.processingMode")
    bodies = {"Buffered": "BUFFERED", "Streamed": "STREAMED", "BufferedPartial": "BUFFERED_PARTIAL"}
    for phase in ("request", "response"):
        if phase not in processing:
            continue
        part = processing[phase] or {}
        only(part, ("body", "attributes"), f"{where}.processingMode.{phase}")
        mode[f"{phase}_header_mode"] = "SEND"  # a phase named is a phase whose headers are sent
        if "body" in part:
            mode[f"{phase}_body_mode"] = bodies[part["body"]]
        if part.get("attributes"):
            config[f"{phase}_attributes"] = list(part["attributes"])
    per_route: Json = {"@type": T_FILTER_CONFIG, "config": {}}
    return name, {"name": name, "disabled": True, "typed_config": config}, per_route


def _rate_limit(
    policy: Obj, eg_config: Obj, listener_name: str, clusters: list[Json]
) -> tuple[list[Json], dict[str, Json]]:
    """(the listener's ratelimit filters, per-route configs by filter name)."""
    where = f"BackendTrafficPolicy/{_name(policy)}.rateLimit"
    only(policy["spec"], ("targetRefs", "rateLimit"), f"BackendTrafficPolicy/{_name(policy)}")
    rl = policy["spec"]["rateLimit"]
    only(rl, ("type", "global"), where)
    if rl["type"] != "Global":
        raise Unsupported(f"{where}: type {rl['type']}")
    settings = eg_config.get("rateLimit") or {}
    only(settings, ("backend", "timeout", "failClosed"), "EnvoyGateway.rateLimit")
    only(eg_config, ("apiVersion", "kind", "rateLimit"), "EnvoyGateway")
    filters: list[Json] = []
    per_route: dict[str, Json] = {}

    def rl_filter(name: str, domain: str) -> Json:
        config: Json = {
            "@type": T_RL,
            "domain": domain,
            "rate_limit_service": {
                "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit_cluster"}},
                "transport_api_version": "V3",
            },
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            # with enableEnvoyHeaders the x-envoy-ratelimited header stays
            "disable_x_envoy_ratelimited_header": False,
            "failure_mode_deny": bool(settings.get("failClosed", False)),
        }
        if "timeout" in settings:
            config["timeout"] = _duration(settings["timeout"])
        return {"name": name, "typed_config": config}

    filters.append(rl_filter("envoy.filters.http.ratelimit", listener_name))
    for i, rule in enumerate(rl["global"]["rules"]):
        only(rule, ("clientSelectors", "limit", "shared"), f"{where}.global.rules[{i}]")
        rule_name = f"{_ns(policy)}/{_name(policy)}/rule/{i}"
        if not rule.get("shared"):
            raise Unsupported(f"{where}: only shared rules are translated")
        domain = rule_name[: rule_name.rindex("/rule/")]
        name = f"envoy.filters.http.ratelimit/{domain}"
        filters.append(rl_filter(name, domain))
        actions: list[Json] = [
            {"generic_key": {"descriptor_key": rule_name, "descriptor_value": rule_name}}
        ]
        [selector] = rule["clientSelectors"]
        only(selector, ("headers",), f"{where}.global.rules[{i}].clientSelectors")
        for m, header in enumerate(selector["headers"]):
            if header["type"] != "Distinct":
                raise Unsupported(f"{where}: header match {header['type']}")
            actions.append(
                {
                    "request_headers": {
                        "header_name": header["name"],
                        "descriptor_key": f"rule-0-match-{m}",
                    }
                }
            )
        per_route[name] = {
            "@type": T_RL_ROUTE,
            "domain": domain,
            "rate_limits": [{"actions": actions}],
        }
    return filters, per_route


# -------------------------------------------------------------------------------- the listener


def translate(objs: list[Obj], eg_config: Obj, site: Site, secrets: dict[str, SecretFiles]) -> Json:
    """The bootstrap of the Envoy Envoy Gateway runs for the Gateway of these manifests."""
    [gateway] = _of(objs, "Gateway")
    only(
        gateway["spec"],
        ("gatewayClassName", "listeners", "infrastructure"),
        f"Gateway/{_name(gateway)}",
    )
    filter_order = _filter_order(objs, gateway)
    listeners: list[Json] = []
    clusters: list[Json] = []
    rate_limit_needed = False
    for gl in gateway["spec"]["listeners"]:
        section = gl["name"]
        where = f"Gateway/{_name(gateway)}.listeners[{section}]"
        only(gl, ("name", "protocol", "port", "tls", "allowedRoutes"), where)
        if gl["protocol"] != "HTTPS" or gl["tls"].get("mode") != "Terminate":
            raise Unsupported(f"{where}: {gl['protocol']} {gl['tls']}")
        [cert_ref] = gl["tls"]["certificateRefs"]
        server = secrets[cert_ref["name"]]
        listener_name = f"{_ns(gateway)}/{_name(gateway)}/{section}"
        ctps = [
            p
            for p in _of(objs, "ClientTrafficPolicy")
            if _targets(p, "Gateway", _name(gateway), section)
        ]
        ctp = ctps[0]["spec"] if ctps else {}
        only(
            ctp,
            ("targetRefs", "headers", "path", "clientIPDetection", "tls"),
            f"ClientTrafficPolicy for {section}",
        )
        headers = ctp.get("headers") or {}
        only(
            headers,
            ("earlyRequestHeaders", "enableEnvoyHeaders", "withUnderscoresAction"),
            "headers",
        )
        path = ctp.get("path") or {}
        only(path, ("escapedSlashesAction",), "path")

        tls_kwargs: dict[str, Any] = {}
        validation = (ctp.get("tls") or {}).get("clientValidation")
        if validation is not None:
            only(validation, ("caCertificateRefs", "subjectAltNames"), "tls.clientValidation")
            [ca_ref] = validation["caCertificateRefs"]
            sans = validation.get("subjectAltNames") or {}
            only(sans, ("uris",), "tls.clientValidation.subjectAltNames")
            tls_kwargs = {
                "client_ca": secrets[ca_ref["name"]].ca,
                "require_client": True,
                "client_sans": [
                    {"san_type": "URI", "matcher": _string_match(u["type"], u["value"])}
                    for u in sans.get("uris", [])
                ],
            }
        hcm: Json = {
            "@type": T_HCM,
            "stat_prefix": f"https-{gl['port']}",
            "codec_type": "AUTO",
            "server_header_transformation": "PASS_THROUGH",
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": {
                "RejectRequest": "REJECT_REQUEST",
                None: "UNESCAPE_AND_REDIRECT",
            }[path.get("escapedSlashesAction")],
            "common_http_protocol_options": {
                "headers_with_underscores_action": {
                    "RejectRequest": "REJECT_REQUEST",
                    None: "REJECT_REQUEST",
                }[headers.get("withUnderscoresAction")]
            },
            "use_remote_address": True,
        }
        early = headers.get("earlyRequestHeaders")
        if early:
            only(early, ("remove",), "earlyRequestHeaders")
            hcm["early_header_mutation_extensions"] = [
                {
                    "name": "envoy.http.early_header_mutation.header_mutation",
                    "typed_config": {
                        "@type": T_EARLY_HEADERS,
                        "mutations": [{"remove": h} for h in early["remove"]],
                    },
                }
            ]
        xff = (ctp.get("clientIPDetection") or {}).get("xForwardedFor")
        if xff is not None:
            hcm["use_remote_address"] = False
            hcm["original_ip_detection_extensions"] = [
                {
                    "name": "envoy.extensions.http.original_ip_detection.xff",
                    "typed_config": {"@type": T_XFF, "xff_num_trusted_hops": xff["numTrustedHops"]},
                }
            ]

        routes, route_clusters = _routes(objs, gateway, section, site)
        clusters += route_clusters
        chain: dict[str, Json] = {}
        for r in routes:
            per_route: dict[str, Json] = {}
            hr = r.route
            for sp in _of(objs, "SecurityPolicy"):
                if not _targets(sp, "HTTPRoute", _name(hr)):
                    continue
                only(
                    sp["spec"],
                    ("targetRefs", "extAuth", "authorization", "cors"),
                    f"SecurityPolicy/{_name(sp)}",
                )
                if "cors" in sp["spec"]:
                    chain.setdefault(
                        "envoy.filters.http.cors",
                        {"name": "envoy.filters.http.cors", "typed_config": {"@type": T_CORS}},
                    )
                    per_route["envoy.filters.http.cors"] = _cors(
                        sp["spec"]["cors"], f"SecurityPolicy/{_name(sp)}.cors"
                    )
                if "extAuth" in sp["spec"]:
                    name, flt, cfg = _ext_authz(sp, site, clusters)
                    chain.setdefault(name, flt)
                    per_route[name] = cfg
                if "authorization" in sp["spec"]:
                    chain.setdefault(
                        "envoy.filters.http.rbac",
                        {"name": "envoy.filters.http.rbac", "typed_config": {"@type": T_RBAC}},
                    )
                    per_route["envoy.filters.http.rbac"] = _authorization(sp)
            for ep in _of(objs, "EnvoyExtensionPolicy"):
                if not _targets(ep, "HTTPRoute", _name(hr)):
                    continue
                name, flt, cfg = _ext_proc(ep, site, clusters)
                chain.setdefault(name, flt)
                per_route[name] = cfg
            for btp in _of(objs, "BackendTrafficPolicy"):
                if not (
                    _targets(btp, "Gateway", _name(gateway))
                    or _targets(btp, "HTTPRoute", _name(hr))
                ):
                    continue
                rl_filters, rl_routes = _rate_limit(btp, eg_config, listener_name, clusters)
                for flt in rl_filters:
                    chain.setdefault(flt["name"], flt)
                per_route.update(rl_routes)
                rate_limit_needed = True
            if per_route:
                r.envoy["typed_per_filter_config"] = per_route
        chain["envoy.filters.http.router"] = {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": T_ROUTER,
                "suppress_envoy_headers": not headers.get("enableEnvoyHeaders", False),
            },
        }
        hcm["http_filters"] = _reorder(
            sorted(chain.values(), key=lambda f: (ORDER[f["name"].split("/")[0]], f["name"])),
            filter_order,
        )
        hcm["route_config"] = {
            "name": listener_name,
            "ignore_port_in_host_matching": True,
            "virtual_hosts": [
                {
                    "name": f"{listener_name}/*",
                    "domains": ["*"],
                    "routes": [r.envoy for r in routes],
                }
            ],
        }
        tls = downstream_tls(Certificate(server.cert, server.key), **tls_kwargs)
        listeners.append(listener(listener_name, site.port(section), hcm, tls=tls))
    if rate_limit_needed:
        clusters.append(
            cluster("ratelimit_cluster", site.service("envoy-gateway-ratelimit", 8081), http2=True)
        )
    return bootstrap("envoy-gateway", site.admin_port, listeners, _unique(clusters))


def _filter_order(objs: list[Obj], gateway: Obj) -> list[Obj]:
    """The ``filterOrder`` of the EnvoyProxy the Gateway names (infrastructure.parametersRef)."""
    ref = (gateway["spec"].get("infrastructure") or {}).get("parametersRef")
    if ref is None:
        return []
    only(ref, ("group", "kind", "name"), f"Gateway/{_name(gateway)}.infrastructure.parametersRef")
    [proxy] = [p for p in _of(objs, "EnvoyProxy") if _name(p) == ref["name"]]
    only(proxy["spec"], ("filterOrder",), f"EnvoyProxy/{_name(proxy)}")
    order: list[Obj] = proxy["spec"]["filterOrder"]
    return order


def _is_type(flt: Json, kind: str) -> bool:
    name = str(flt["name"])
    return name == kind or name.startswith(kind + "/")


def _reorder(filters: list[Json], order: list[Obj]) -> list[Json]:
    """Envoy Gateway's custom order: each entry moves every filter of its type before the first
    filter of ``before``, or after the last filter of ``after``."""
    out = list(filters)
    for entry in order:
        only(entry, ("name", "before", "after"), "EnvoyProxy.filterOrder")
        moving = [f for f in out if _is_type(f, entry["name"])]
        if not moving:
            continue
        if "before" in entry:
            anchors = [f for f in out if _is_type(f, entry["before"])]
            if not anchors:
                continue
            rest = [f for f in out if f not in moving]
            at = rest.index(anchors[0])
            out = rest[:at] + moving + rest[at:]
        else:
            anchors = [f for f in out if _is_type(f, entry["after"])]
            if not anchors:
                continue
            rest = [f for f in out if f not in moving]
            at = rest.index(anchors[-1]) + 1
            out = rest[:at] + moving + rest[at:]
    return out


def _unique(clusters: list[Json]) -> list[Json]:
    seen: dict[str, Json] = {}
    for c in clusters:
        seen.setdefault(c["name"], c)
    return list(seen.values())


__all__ = ["SecretFiles", "translate"]
