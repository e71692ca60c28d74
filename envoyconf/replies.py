"""Replies Envoy makes itself (denials it decides, upstream failures, no route), as problem+json
with the same stable codes the services use."""

from __future__ import annotations

from typing import Any

from envoyconf.filters import NO_SUCH_ROUTE_POLICY
from envoyconf.typeurls import T_CEL_FILTER
from playback_drm.problem import PROBLEM_CONTENT_TYPE, Problem


def problem_body(code: str, status: int, title: str, detail: str) -> str:
    return Problem(code=code, status=status, title=title, detail=detail).to_json().decode()


def _mapper(
    filter_: dict[str, Any], status: int, code: str, title: str, detail: str, **headers: str
) -> dict[str, Any]:
    add = [
        {
            "header": {"key": "content-type", "value": PROBLEM_CONTENT_TYPE},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        },
        {
            "header": {"key": "cache-control", "value": "no-store"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        },
    ]
    for key, value in headers.items():
        add.append(
            {
                "header": {"key": key.replace("_", "-"), "value": value},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        )
    return {
        "filter": filter_,
        "status_code": status,
        "body": {"inline_string": problem_body(code, status, title, detail)},
        "headers_to_add": add,
    }


def _cel(expression: str) -> dict[str, Any]:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {"@type": T_CEL_FILTER, "expression": expression},
        }
    }


def local_reply_config() -> dict[str, Any]:
    """Every reply Envoy makes itself becomes problem+json with a stable code.

    Denials from authz already carry their own problem body and are left untouched (no mapper
    matches ``ext_authz_denied``).
    """
    return {
        "mappers": [
            _mapper(
                _cel("response.code_details.startsWith('ext_authz_error')"),
                503,
                "authz_unavailable",
                "Authorization service unavailable",
                "the authorization service did not answer; access is denied until it does",
            ),
            _mapper(
                # the catch-all route's refusal (envoyconf.filters.refuse_unknown_path)
                _cel(
                    "response.code_details == "
                    f"'rbac_access_denied_matched_policy[{NO_SUCH_ROUTE_POLICY}]'"
                ),
                404,
                "not_found",
                "Not found",
                "no such route",
            ),
            _mapper(
                _cel("response.code_details.startsWith('rbac_access_denied')"),
                403,
                "client_not_allowed",
                "Client not allowed",
                "this route requires an allowed client certificate and source address",
            ),
            _mapper(
                # The rate limit filter flags RL before its reply; the local rate limit filter
                # flags it only after, so its reply is matched by its details.
                {
                    "or_filter": {
                        "filters": [
                            {"response_flag_filter": {"flags": ["RL"]}},
                            _cel("response.code_details == 'local_rate_limited'"),
                        ]
                    }
                },
                429,
                "rate_limited",
                "Too many requests",
                "request rate limit reached; retry later",
                retry_after="1",
            ),
            _mapper(
                _cel("response.code_details.startsWith('ext_proc_error')"),
                503,
                "manifest_signer_unavailable",
                "Manifest signer unavailable",
                "the manifest could not be signed; it is not served unsigned",
            ),
            _mapper(
                {"response_flag_filter": {"flags": ["UT"]}},
                504,
                "upstream_timeout",
                "Upstream timeout",
                "the upstream did not answer in time",
            ),
            _mapper(
                {"response_flag_filter": {"flags": ["UF", "UH", "URX", "UO", "UC", "NC"]}},
                503,
                "upstream_unavailable",
                "Upstream unavailable",
                "the upstream is unavailable",
            ),
            _mapper(
                {"response_flag_filter": {"flags": ["NR"]}},
                404,
                "not_found",
                "Not found",
                "no such route",
            ),
        ]
    }
