"""The sidecar's routes: what each public path checks, where it goes, what it rewrites."""

from __future__ import annotations

import re
from typing import Any

from envoyconf.filters import (
    authz_mode,
    disable_authz,
    enable_extproc,
    license_rbac,
    refuse_unknown_path,
)
from envoyconf.settings import EnvoySettings
from envoyconf.typeurls import T_PREVIOUS_HOSTS
from playback_drm.contract import (
    KEY_PATH_PREFIX,
    LICENSE_PATH,
    MEDIA_MANIFEST_REGEX,
    MODE_KEY,
    MODE_LICENSE,
    MODE_SESSION_END,
    MODE_SESSION_HEARTBEAT,
    MODE_SESSION_START,
    MODE_SIGNED_URL,
    SESSION_END_PATH,
    SESSION_HEARTBEAT_PATH,
)

MANIFEST_ROUTE_REGEX = r"^/playback/([A-Za-z0-9_.-]+)/manifest$"


def template_to_rewrite(template: str) -> str:
    """``{videoId}/master.m3u8`` -> ``/\\1/master.m3u8`` for a regex_rewrite substitution."""
    if "{videoId}" not in template:
        raise ValueError("origin path template must contain {videoId}")
    cleaned = template.lstrip("/")
    if re.search(r"[\\\s?#]", cleaned):
        raise ValueError(f"origin path template has forbidden characters: {template!r}")
    return "/" + cleaned.replace("{videoId}", r"\1")


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g}s"


# A request the upstream never received is retried on another host: a connection that could
# not be opened (a broker or origin pod that died is still in the headless Service's DNS answers
# until its readiness fails and Envoy re-resolves, up to 15 s) or an HTTP/2 stream refused.
# Nothing was sent, so even a license POST is safe to send again.
UNSENT_RETRY: dict[str, Any] = {
    "retry_on": "connect-failure,refused-stream",
    "num_retries": 2,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": T_PREVIOUS_HOSTS},
        }
    ],
    "host_selection_retry_max_attempts": 3,
}


def sidecar_routes(s: EnvoySettings) -> list[dict[str, Any]]:
    def check(mode: str) -> dict[str, Any]:
        return authz_mode(mode, per_user_limit=s.per_user_limit == "check")

    hls_rewrite = template_to_rewrite(s.hls_path_template)
    dash_rewrite = template_to_rewrite(s.dash_path_template)
    origin_route: dict[str, Any] = {
        "cluster": "origin",
        "timeout": _seconds(s.origin_timeout_ms),
        "retry_policy": UNSENT_RETRY,
    }
    if s.origin_host_header:
        origin_route["host_rewrite_literal"] = s.origin_host_header
    # The signer handles gzip and deflate (and answers in the same encoding), but identity is
    # cheapest; never let the origin pick br or zstd.
    manifest_encoding = [
        {
            "header": {"key": "accept-encoding", "value": "identity, gzip;q=0.5, deflate;q=0.5"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
    # Signed manifests are per viewer and expire: never cached, never revalidated against the
    # origin's validators (Envoy sends the rewritten body chunked).
    manifest_response_headers = {
        "response_headers_to_add": [
            {
                "header": {"key": "cache-control", "value": "private, no-store"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "response_headers_to_remove": ["etag", "last-modified", "content-length"],
    }
    # An entry manifest starts a playback session (authz), whose id every signed URL carries.
    manifest_filters = {
        "envoy.filters.http.ext_authz": check(MODE_SESSION_START),
        "envoy.filters.http.ext_proc": enable_extproc(),
    }
    return [
        {
            "name": "health",
            "match": {"path": "/health"},
            "route": {"cluster": "authz_http", "timeout": "2s"},
            "typed_per_filter_config": disable_authz(),
        },
        {
            "name": "health_live",
            "match": {"path": "/health/live"},
            "direct_response": {"status": 200, "body": {"inline_string": '{"status":"ok"}'}},
            "response_headers_to_add": [
                {"header": {"key": "content-type", "value": "application/json"}}
            ],
            "typed_per_filter_config": disable_authz(),
        },
        # A playback session's own routes: authz acts on the session its signed URL names
        # (ends it, or counts a sign of life), then Envoy answers 204 itself.
        *(
            {
                "name": name,
                "match": {
                    "path": path,
                    "headers": [{"name": ":method", "string_match": {"exact": "POST"}}],
                },
                "direct_response": {"status": 204},
                "typed_per_filter_config": {"envoy.filters.http.ext_authz": check(mode)},
            }
            for name, path, mode in (
                ("session_end", SESSION_END_PATH, MODE_SESSION_END),
                ("session_heartbeat", SESSION_HEARTBEAT_PATH, MODE_SESSION_HEARTBEAT),
            )
        ),
        {
            "name": "manifest_url_json",
            "request_headers_to_add": manifest_encoding,
            "match": {
                "safe_regex": {"regex": MANIFEST_ROUTE_REGEX},
                "headers": [
                    {
                        "name": "accept",
                        "string_match": {"contains": "application/json"},
                    }
                ],
            },
            # extproc answers with an immediate response at request headers. The route needs a
            # real route entry all the same: the rate limit filter skips direct responses.
            "route": {
                **origin_route,
                "regex_rewrite": {
                    "pattern": {"regex": MANIFEST_ROUTE_REGEX},
                    "substitution": hls_rewrite,
                },
            },
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": check(MODE_SESSION_START),
                "envoy.filters.http.ext_proc": enable_extproc(request_headers=True),
            },
        },
        {
            "name": "manifest_dash",
            "request_headers_to_add": manifest_encoding,
            **manifest_response_headers,
            "match": {
                "safe_regex": {"regex": MANIFEST_ROUTE_REGEX},
                "query_parameters": [{"name": "format", "string_match": {"exact": "dash"}}],
            },
            "route": {
                **origin_route,
                "regex_rewrite": {
                    "pattern": {"regex": MANIFEST_ROUTE_REGEX},
                    "substitution": dash_rewrite,
                },
            },
            "typed_per_filter_config": manifest_filters,
        },
        {
            "name": "manifest_hls",
            "request_headers_to_add": manifest_encoding,
            **manifest_response_headers,
            "match": {"safe_regex": {"regex": MANIFEST_ROUTE_REGEX}},
            "route": {
                **origin_route,
                "regex_rewrite": {
                    "pattern": {"regex": MANIFEST_ROUTE_REGEX},
                    "substitution": hls_rewrite,
                },
            },
            "typed_per_filter_config": manifest_filters,
        },
        {
            "name": "media_manifest",
            "request_headers_to_add": manifest_encoding,
            **manifest_response_headers,
            "match": {"safe_regex": {"regex": MEDIA_MANIFEST_REGEX}},
            "route": {
                **origin_route,
                "regex_rewrite": {"pattern": {"regex": "^/media/"}, "substitution": "/"},
            },
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": check(MODE_SIGNED_URL),
                "envoy.filters.http.ext_proc": enable_extproc(),
            },
        },
        {
            "name": "media",
            "match": {"prefix": "/media/"},
            "route": {**origin_route, "prefix_rewrite": "/"},
            "typed_per_filter_config": {"envoy.filters.http.ext_authz": check(MODE_SIGNED_URL)},
        },
        {
            "name": "hls_key",
            "match": {"prefix": KEY_PATH_PREFIX},
            "route": {"cluster": "license_broker", "timeout": "5s", "retry_policy": UNSENT_RETRY},
            "typed_per_filter_config": {"envoy.filters.http.ext_authz": check(MODE_KEY)},
        },
        {
            "name": "drm_certificate",
            "match": {"prefix": "/drm/certificate/"},
            "route": {"cluster": "license_broker", "timeout": "5s", "retry_policy": UNSENT_RETRY},
            "typed_per_filter_config": disable_authz(),
        },
        {
            "name": "license",
            "match": {"prefix": LICENSE_PATH},
            "route": {
                "cluster": "license_broker",
                "timeout": _seconds(s.license_timeout_ms),
                "retry_policy": UNSENT_RETRY,
            },
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": check(MODE_LICENSE),
                "envoy.filters.http.rbac": license_rbac(s),
            },
        },
        {
            "name": "not_found",
            "match": {"prefix": "/"},
            # Never forwarded: RBAC refuses every request here (404 not_found, with CORS).
            "route": {"cluster": "authz_http", "timeout": "1s"},
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": disable_authz()["envoy.filters.http.ext_authz"],
                "envoy.filters.http.rbac": refuse_unknown_path(),
            },
        },
    ]
