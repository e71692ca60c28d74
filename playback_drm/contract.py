"""What the Envoy configuration and our gRPC services agree on, beyond the identity headers.

* The authz check mode of a route: Envoy passes it as the ext_authz context extension ``mode``
  (per-route ``check_settings``); authz decides by it.
* What ext_proc receives for a manifest: one response-body message (both header phases skipped),
  with the request's facts as CEL attributes, so extproc needs no header phase at all.

The Envoy configuration builder (``envoyconf``) and the services both import this module; it
imports nothing of either.
"""

from __future__ import annotations

from typing import Final

from playback_drm.identity import REQUEST_ID_HEADER, SESSION_HEADER, USER_HEADER, VIDEO_HEADER

# The viewer's address as Envoy derived it (the connection's peer, or the entry the trusted hops
# in front of it appended to X-Forwarded-For; use_remote_address + xff_num_trusted_hops). Envoy sets
# it and removes a client's copy: what authz verifies IP-bound URLs against and what extproc binds
# them to. Never X-Forwarded-For itself, whose first entries a client writes.
EXTERNAL_ADDRESS_HEADER: Final = "x-envoy-external-address"
AUTHZ_MODE_KEY: Final = "mode"  # the context extension naming the mode
MODE_JWT: Final = "jwt"  # viewer JWT + entitlement for the video the request names
MODE_JWT_ONLY: Final = "jwt_only"  # viewer JWT, no particular video (e.g. DRM certificates)
MODE_SIGNED_URL: Final = "signed_url"  # a signed media/key URL (``pdt``), no JWT
AUTHZ_MODES: Final = (MODE_JWT, MODE_JWT_ONLY, MODE_SIGNED_URL)

# The ext_proc filter's namespace for the attributes it sends.
EXTPROC_ATTRIBUTE_NAMESPACE: Final = "envoy.filters.http.ext_proc"
# request.path is already rewritten by the route: the path the player asked for is this header.
ORIGINAL_PATH_ATTRIBUTE: Final = "request.headers['x-envoy-original-path']"
PATH_ATTRIBUTE: Final = "request.path"
STATUS_ATTRIBUTE: Final = "response.code"
SOURCE_ATTRIBUTE: Final = "source.address"
USER_ATTRIBUTE: Final = f"request.headers['{USER_HEADER}']"
VIDEO_ATTRIBUTE: Final = f"request.headers['{VIDEO_HEADER}']"
SESSION_ATTRIBUTE: Final = f"request.headers['{SESSION_HEADER}']"
REQUEST_ID_ATTRIBUTE: Final = f"request.headers['{REQUEST_ID_HEADER}']"
TRACEPARENT_ATTRIBUTE: Final = "request.headers['traceparent']"

# What extproc needs to know about a manifest request, sent with the single response-body message.
EXTPROC_ATTRIBUTES: Final = (
    PATH_ATTRIBUTE,
    STATUS_ATTRIBUTE,
    SOURCE_ATTRIBUTE,
    ORIGINAL_PATH_ATTRIBUTE,
    USER_ATTRIBUTE,
    VIDEO_ATTRIBUTE,
    SESSION_ATTRIBUTE,
    REQUEST_ID_ATTRIBUTE,
    TRACEPARENT_ATTRIBUTE,
)
# One message per manifest: the buffered body, with the request's facts as attributes.
EXTPROC_PROCESSING_MODE: Final = {
    "request_header_mode": "SKIP",
    "response_header_mode": "SKIP",
    "request_body_mode": "NONE",
    "response_body_mode": "BUFFERED",
    "request_trailer_mode": "SKIP",
    "response_trailer_mode": "SKIP",
}
# The JSON form (``Accept: application/json``) is answered at request headers, immediately.
EXTPROC_JSON_FORM_PROCESSING_MODE: Final = {
    "request_header_mode": "SEND",
    "response_header_mode": "SKIP",
    "request_body_mode": "NONE",
    "response_body_mode": "NONE",
    "request_trailer_mode": "SKIP",
    "response_trailer_mode": "SKIP",
}

__all__ = [
    "AUTHZ_MODES",
    "AUTHZ_MODE_KEY",
    "EXTERNAL_ADDRESS_HEADER",
    "EXTPROC_ATTRIBUTES",
    "EXTPROC_ATTRIBUTE_NAMESPACE",
    "EXTPROC_JSON_FORM_PROCESSING_MODE",
    "EXTPROC_PROCESSING_MODE",
    "MODE_JWT",
    "MODE_JWT_ONLY",
    "MODE_SIGNED_URL",
    "ORIGINAL_PATH_ATTRIBUTE",
    "PATH_ATTRIBUTE",
    "REQUEST_ID_ATTRIBUTE",
    "SESSION_ATTRIBUTE",
    "SOURCE_ATTRIBUTE",
    "STATUS_ATTRIBUTE",
    "TRACEPARENT_ATTRIBUTE",
    "USER_ATTRIBUTE",
    "VIDEO_ATTRIBUTE",
]
