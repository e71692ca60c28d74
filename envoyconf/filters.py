"""The sidecar's HTTP filter chain and the per-route settings of its filters.

Order: header_mutation (strip forged identity headers) -> cors -> local_ratelimit per IP -> rbac
(per route) -> ext_authz -> per-user limit (ratelimit with a rate limit service, or
local_ratelimit; none when authz keeps it inside the check) -> ext_proc (manifest routes only) ->
router.
"""

from __future__ import annotations

from typing import Any

from envoyconf.settings import EnvoySettings
from envoyconf.typeurls import (
    T_CORS,
    T_EXT_AUTHZ,
    T_EXT_AUTHZ_ROUTE,
    T_EXT_PROC,
    T_EXT_PROC_ROUTE,
    T_FILTER_CONFIG,
    T_HEADER_MUTATION,
    T_LOCAL_RL,
    T_RBAC,
    T_RBAC_ROUTE,
    T_RL,
    T_ROUTER,
)
from playback_drm.contract import (
    AUTHZ_LIMIT_KEY,
    AUTHZ_MAX_BODY_BYTES,
    AUTHZ_MODE_KEY,
    AUTHZ_REQUEST_HEADERS,
    EXTPROC_ATTRIBUTES,
    EXTPROC_JSON_FORM_PROCESSING_MODE,
    EXTPROC_PROCESSING_MODE,
    LIMIT_PER_USER,
)
from playback_drm.identity import IDENTITY_HEADERS, USER_HEADER


def disable_authz() -> dict[str, Any]:
    return {"envoy.filters.http.ext_authz": {"@type": T_EXT_AUTHZ_ROUTE, "disabled": True}}


def authz_mode(mode: str, *, per_user_limit: bool = False) -> dict[str, Any]:
    """The route's check; ``per_user_limit``: authz also counts the viewer's request against
    the per-user limit (EnvoySettings.per_user_limit ``check``)."""
    extensions = {AUTHZ_MODE_KEY: mode}
    if per_user_limit:
        extensions[AUTHZ_LIMIT_KEY] = LIMIT_PER_USER
    return {"@type": T_EXT_AUTHZ_ROUTE, "check_settings": {"context_extensions": extensions}}


def enable_extproc(*, request_headers: bool = False) -> dict[str, Any]:
    # The filter is disabled at the HCM level; FilterConfig{disabled: false} turns it on here.
    overrides: dict[str, Any] = {"failure_mode_allow": False}
    if not request_headers:
        # per-route overrides replace the filter's attribute list: name them here too
        overrides["response_attributes"] = list(EXTPROC_ATTRIBUTES)
    if request_headers:
        # the JSON form is answered at request headers, as an immediate response
        overrides["processing_mode"] = dict(EXTPROC_JSON_FORM_PROCESSING_MODE)
    return {
        "@type": T_FILTER_CONFIG,
        "disabled": False,
        "config": {"@type": T_EXT_PROC_ROUTE, "overrides": overrides},
    }


def license_rbac(s: EnvoySettings) -> dict[str, Any]:
    principal = {
        "and_ids": {
            "ids": [
                {
                    "or_ids": {
                        "ids": [
                            {"authenticated": {"principal_name": {"exact": p}}}
                            for p in s.license_principals
                        ]
                    }
                },
                {"or_ids": {"ids": [{"direct_remote_ip": _cidr(c)} for c in s.license_peer_cidrs]}},
                {"or_ids": {"ids": [{"remote_ip": _cidr(c)} for c in s.license_client_cidrs]}},
            ]
        }
    }
    return {
        "@type": T_RBAC_ROUTE,
        "rbac": {
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "license-clients": {"permissions": [{"any": True}], "principals": [principal]}
                },
            }
        },
    }


NO_SUCH_ROUTE_POLICY = "no_such_route"


def refuse_unknown_path() -> dict[str, Any]:
    """RBAC on the catch-all route: deny everything under a policy name the local reply
    configuration turns into a 404 problem. A direct response would be simpler, but Envoy's CORS
    filter skips routes without a route entry, and a player must be able to read the 404 too."""
    return {
        "@type": T_RBAC_ROUTE,
        "rbac": {
            "rules": {
                "action": "DENY",
                "policies": {
                    NO_SUCH_ROUTE_POLICY: {
                        "permissions": [{"any": True}],
                        "principals": [{"any": True}],
                    }
                },
            }
        },
    }


def _cidr(value: str) -> dict[str, Any]:
    prefix, _, length = value.partition("/")
    if not length:
        length = "128" if ":" in prefix else "32"
    return {"address_prefix": prefix, "prefix_len": int(length)}


def per_user_limit_filter(s: EnvoySettings) -> dict[str, Any] | None:
    """The filter keeping the per-user limit; None when authz keeps it inside the check."""
    if s.per_user_limit == "check":
        return None
    action = {
        "actions": [
            {
                "request_headers": {
                    "header_name": USER_HEADER,
                    "descriptor_key": "user",
                    "skip_if_absent": True,
                }
            }
        ]
    }
    if s.per_user_limit == "service":
        return {
            "name": "envoy.filters.http.ratelimit",
            "typed_config": {
                "@type": T_RL,
                "domain": "playback",
                "stage": 0,
                # fails open (availability over a global limit), so give a burst time to be
                # counted: the authz Redis pool queues commands up to 0.2 s
                "timeout": "0.25s",
                "failure_mode_deny": False,
                "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                "rate_limited_as_resource_exhausted": False,
                "rate_limit_service": {
                    "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}},
                    "transport_api_version": "V3",
                },
                "rate_limits": [action],
            },
        }
    # no x-ratelimit-* headers here: requests without a user would report the catch-all
    # bucket; 429s carry Retry-After (the rate limit service adds the rest)
    return _local_limit("per_user", "user", s.per_user_rps, s.per_user_burst, action)


def _local_limit(
    stat_prefix: str, descriptor_key: str, rps: int, burst: int, action: dict[str, Any]
) -> dict[str, Any]:
    """A local token bucket per descriptor value (dynamic descriptors: one bucket per user or
    address), with a catch-all bucket that never limits."""
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": T_LOCAL_RL,
            "stat_prefix": stat_prefix,
            "token_bucket": {
                "max_tokens": 1_000_000,
                "tokens_per_fill": 1_000_000,
                "fill_interval": "1s",
            },
            "always_consume_default_token_bucket": False,
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "response_headers_to_add": [
                {
                    "header": {"key": "retry-after", "value": "1"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
            "descriptors": [
                {
                    "entries": [{"key": descriptor_key}],
                    "token_bucket": {
                        "max_tokens": burst,
                        "tokens_per_fill": rps,
                        "fill_interval": "1s",
                    },
                }
            ],
            "max_dynamic_descriptors": 100_000,
            "rate_limits": [action],
        },
    }


def sidecar_filters(s: EnvoySettings) -> list[dict[str, Any]]:
    strip = [{"remove": h} for h in (*IDENTITY_HEADERS, *s.extra_headers_to_strip)]
    per_user = per_user_limit_filter(s)
    return [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": T_HEADER_MUTATION,
                "mutations": {"request_mutations": strip},
            },
        },
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": T_CORS}},
        _local_limit(
            "per_ip",
            "remote_address",
            s.per_ip_rps,
            s.per_ip_burst,
            {"actions": [{"remote_address": {}}]},
        ),
        {
            # Filter-level: allow all; the license route overrides with its strict policy.
            "name": "envoy.filters.http.rbac",
            "typed_config": {"@type": T_RBAC, "rules": {"action": "DENY", "policies": {}}},
        },
        {
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": T_EXT_AUTHZ,
                "transport_api_version": "V3",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": "authz"},
                    "timeout": f"{s.authz_timeout_ms / 1000}s",
                },
                "failure_mode_allow": False,
                "status_on_error": {"code": 503},
                "clear_route_cache": False,
                "include_peer_certificate": False,
                "allowed_headers": {"patterns": [{"exact": h} for h in AUTHZ_REQUEST_HEADERS]},
                # License bodies (the JSON route's videoId, Widevine's release and certificate
                # requests) reach authz as raw bytes. Only POSTs carry a body (licenses, session
                # ends); it is set here because Envoy ignores a per-route pack_as_bytes
                # (envoyproxy/envoy#35623) and would hand over a UTF-8-"sanitised" copy.
                "with_request_body": {
                    "max_request_bytes": AUTHZ_MAX_BODY_BYTES,
                    "allow_partial_message": True,
                    "pack_as_bytes": True,
                },
                "stat_prefix": "playback",
            },
        },
        *([per_user] if per_user is not None else []),
        {
            "name": "envoy.filters.http.ext_proc",
            "disabled": True,  # enabled per route where there is a manifest to rewrite
            "typed_config": {
                "@type": T_EXT_PROC,
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": "extproc"},
                    "timeout": f"{s.extproc_timeout_ms / 1000}s",
                },
                "failure_mode_allow": False,
                "message_timeout": f"{s.extproc_timeout_ms / 1000}s",
                "processing_mode": dict(EXTPROC_PROCESSING_MODE),
                "response_attributes": list(EXTPROC_ATTRIBUTES),
                "allow_mode_override": False,
                "mutation_rules": {"allow_all_routing": False},
            },
        },
        {"name": "envoy.filters.http.router", "typed_config": {"@type": T_ROUTER}},
    ]
