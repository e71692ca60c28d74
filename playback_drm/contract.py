"""What the Envoy configuration and our gRPC services agree on, beyond the identity headers.

* The authz check mode of a route: Envoy passes it as the ext_authz context extension ``mode``
  (per-route ``check_settings``); authz decides by it. A proxy that cannot set a per-route context
  extension (Istio's ``CUSTOM`` action) passes none: authz then derives the mode from the public
  path with :func:`authz_mode_for_path`, the one definition every deployment mode shares.
* The request headers authz reads, and how much of a license request's body it needs.
* What ext_proc receives for a manifest: one response-body message (both header phases skipped),
  with the request's facts as CEL attributes, so extproc needs no header phase at all.

The Envoy configuration builder (``envoyconf``) and the services both import this module; it
imports nothing of either.
"""

from __future__ import annotations

from typing import Final

from playback_drm.identity import REQUEST_ID_HEADER, SESSION_HEADER, USER_HEADER, VIDEO_HEADER

AUTHZ_MODE_KEY: Final = "mode"  # the context extension naming the mode
MODE_JWT: Final = "jwt"  # viewer JWT + entitlement for the video the request names
MODE_JWT_ONLY: Final = "jwt_only"  # viewer JWT, no particular video (e.g. DRM certificates)
MODE_SIGNED_URL: Final = "signed_url"  # a signed media/key URL (``pdt``), no JWT
AUTHZ_MODES: Final = (MODE_JWT, MODE_JWT_ONLY, MODE_SIGNED_URL)

# Paths whose requests carry a signed URL (``pdt``) instead of a viewer JWT.
SIGNED_URL_PREFIXES: Final = ("/media/", "/drm/key/")

# The request headers authz reads (besides the pseudo-headers): what an ext_authz filter that can
# restrict them (our sidecar, Envoy Gateway's ``headersToExtAuth``) sends and nothing more.
AUTHZ_REQUEST_HEADERS: Final = ("authorization", "content-type", "traceparent", "x-request-id")
# A license request names its video in its JSON body: authz sees up to this much of it.
AUTHZ_MAX_BODY_BYTES: Final = 65536


def authz_mode_for_path(path: str) -> str:
    """The check a request gets when the proxy names no mode, from its public path.

    ``/media/...`` and ``/drm/key/...`` carry a signed URL; every other path the proxies send to
    authz (``/playback/{videoId}/manifest``, ``/drm/license``...) needs a viewer JWT and an
    entitlement, the strictest check, so a path nobody mapped fails closed. A route that needs no
    check at all (``/drm/certificate/``, ``/health``) must not be sent to authz. ``path`` is the
    path as the viewer sent it (after the proxy's normalisation), with or without the query.
    """
    if path.startswith(SIGNED_URL_PREFIXES):
        return MODE_SIGNED_URL
    return MODE_JWT


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
# A proxy that cannot name single headers as attributes (Envoy Gateway admits whole attributes
# only, and Envoy sends no header map as one) sends the request headers instead: a request-headers
# phase, which runs before the router rewrites the path, then the response (its headers, which
# such a proxy cannot skip, and the buffered body). extproc reads the same facts from those
# headers: the path the viewer asked for is ``:path`` there.
HEADER_OF_ATTRIBUTE: Final = {
    ORIGINAL_PATH_ATTRIBUTE: ":path",
    USER_ATTRIBUTE: USER_HEADER,
    VIDEO_ATTRIBUTE: VIDEO_HEADER,
    SESSION_ATTRIBUTE: SESSION_HEADER,
    REQUEST_ID_ATTRIBUTE: REQUEST_ID_HEADER,
    TRACEPARENT_ATTRIBUTE: "traceparent",
}
EXTPROC_HEADERS_ATTRIBUTES: Final = (STATUS_ATTRIBUTE, SOURCE_ATTRIBUTE)
EXTPROC_HEADERS_PROCESSING_MODE: Final = {
    "request_header_mode": "SEND",
    "response_header_mode": "SEND",
    "request_body_mode": "NONE",
    "response_body_mode": "BUFFERED",
    "request_trailer_mode": "SKIP",
    "response_trailer_mode": "SKIP",
}
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
    "AUTHZ_MAX_BODY_BYTES",
    "AUTHZ_MODES",
    "AUTHZ_MODE_KEY",
    "AUTHZ_REQUEST_HEADERS",
    "EXTPROC_ATTRIBUTES",
    "EXTPROC_ATTRIBUTE_NAMESPACE",
    "EXTPROC_HEADERS_ATTRIBUTES",
    "EXTPROC_HEADERS_PROCESSING_MODE",
    "EXTPROC_JSON_FORM_PROCESSING_MODE",
    "EXTPROC_PROCESSING_MODE",
    "HEADER_OF_ATTRIBUTE",
    "MODE_JWT",
    "MODE_JWT_ONLY",
    "MODE_SIGNED_URL",
    "ORIGINAL_PATH_ATTRIBUTE",
    "PATH_ATTRIBUTE",
    "REQUEST_ID_ATTRIBUTE",
    "SESSION_ATTRIBUTE",
    "SIGNED_URL_PREFIXES",
    "SOURCE_ATTRIBUTE",
    "STATUS_ATTRIBUTE",
    "TRACEPARENT_ATTRIBUTE",
    "USER_ATTRIBUTE",
    "VIDEO_ATTRIBUTE",
    "authz_mode_for_path",
]
