"""What the Envoy configuration and our gRPC services agree on, beyond the identity headers.

* The authz check mode of a route: Envoy passes it as the ext_authz context extension ``mode``
  (per-route ``check_settings``); authz decides by it. A proxy that cannot set a per-route context
  extension (Istio's ``CUSTOM`` action) passes none: authz then derives the mode from the public
  path with :func:`authz_mode_for_path`, the one definition every deployment mode shares.
* The request headers authz reads, and how much of a license request's body it needs.
* The playback session paths (explicit end, heartbeat) and the key systems whose license URLs a
  session carries.
* What ext_proc receives for a manifest: one response-body message (both header phases skipped),
  with the request's facts as CEL attributes, so extproc needs no header phase at all.

The Envoy configuration builder (``envoyconf``) and the services both import this module; it
imports nothing of either.
"""

from __future__ import annotations

import re
from typing import Final

from playback_drm.identity import REQUEST_ID_HEADER, SESSION_HEADER, USER_HEADER, VIDEO_HEADER

# The viewer's address as Envoy derived it (the connection's peer, or the entry the trusted hops
# in front of it appended to X-Forwarded-For; use_remote_address + xff_num_trusted_hops). Envoy sets
# it and removes a client's copy: what authz verifies IP-bound URLs against and what extproc binds
# them to. Never X-Forwarded-For itself, whose first entries a client writes.
EXTERNAL_ADDRESS_HEADER: Final = "x-envoy-external-address"
AUTHZ_MODE_KEY: Final = "mode"  # the context extension naming the mode
# The context extension asking authz to keep the per-user limit inside the check (its value:
# LIMIT_PER_USER), instead of Envoy asking a rate limit service in a second call.
AUTHZ_LIMIT_KEY: Final = "limit"
LIMIT_PER_USER: Final = "user"
MODE_JWT: Final = "jwt"  # viewer JWT + entitlement for the video the request names
MODE_JWT_ONLY: Final = "jwt_only"  # viewer JWT, no particular video (e.g. DRM certificates)
MODE_SIGNED_URL: Final = "signed_url"  # a signed media URL (``pdt``), no JWT: a sign of life
# Entry manifests: viewer JWT + entitlement, and a new playback session (docs/ARCHITECTURE.md).
MODE_SESSION_START: Final = "session_start"
# A license request: the session's signed license URL, or a viewer JWT; takes a stream slot.
MODE_LICENSE: Final = "license"
MODE_KEY: Final = "key"  # a session's signed HLS key URL; takes a stream slot
MODE_SESSION_END: Final = "session_end"  # the session's signed end URL: frees its slot at once
MODE_SESSION_HEARTBEAT: Final = "session_heartbeat"  # the session's signed heartbeat URL
AUTHZ_MODES: Final = (
    MODE_JWT,
    MODE_JWT_ONLY,
    MODE_SIGNED_URL,
    MODE_SESSION_START,
    MODE_LICENSE,
    MODE_KEY,
    MODE_SESSION_END,
    MODE_SESSION_HEARTBEAT,
)

# Playback sessions: ``POST`` with the session's signed URL (what the JSON form of the manifest
# returns); Envoy answers 204 once authz admitted (and acted on) the request.
SESSION_END_PATH: Final = "/playback/sessions/end"
SESSION_HEARTBEAT_PATH: Final = "/playback/sessions/heartbeat"
LICENSE_PATH: Final = "/drm/license"  # JSON route; the native one is LICENSE_PATH/{keySystem}
KEY_PATH_PREFIX: Final = "/drm/key/"
# The EME names the JSON form signs a session-bound license URL for.
LICENSE_KEY_SYSTEMS: Final = (
    "org.w3.clearkey",
    "com.widevine.alpha",
    "com.microsoft.playready",
    "com.apple.fps",
)

MEDIA_PATH_PREFIX: Final = "/media/"
_ENTRY_MANIFEST: Final = re.compile(r"/playback/[^/]+/manifest")
# A manifest under /media/ (a child playlist, a refreshed MPD): extproc rewrites it, and authz
# re-checks the viewer's entitlement on it (envoyconf's media_manifest route is the same rule).
MEDIA_MANIFEST_REGEX: Final = r"^/media/[^/]+/.+[.](m3u8|mpd)$"
_MEDIA_MANIFEST: Final = re.compile(MEDIA_MANIFEST_REGEX)


def is_media_manifest(path: str) -> bool:
    """Whether ``path`` (without the query) is a manifest under ``/media/``: what a player
    fetches again and again during a live session."""
    return _MEDIA_MANIFEST.match(path) is not None


# The request headers authz reads (besides the pseudo-headers): what an ext_authz filter that can
# restrict them (our sidecar, Envoy Gateway's ``headersToExtAuth``) sends and nothing more.
AUTHZ_REQUEST_HEADERS: Final = (
    "authorization",
    "content-type",
    "traceparent",
    "x-request-id",
    EXTERNAL_ADDRESS_HEADER,  # the viewer's address as Envoy derived it (IP-bound URLs)
)
# A license request names its video in its JSON body: authz sees up to this much of it.
AUTHZ_MAX_BODY_BYTES: Final = 65536


def authz_mode_for_path(path: str) -> str:
    """The check a request gets when the proxy names no mode, from its public path: the same
    mode our sidecar's routes name (envoyconf/routes.py; tests/mesh checks they agree).

    Entry manifests start a session; ``/media/...`` carries a signed URL; keys, licenses and the
    session paths have their own modes. Any other path the proxies send to authz needs a viewer
    JWT and an entitlement, the strictest check, so a path nobody mapped fails closed. A route
    that needs no check at all (``/drm/certificate/``, ``/health``) must not be sent to authz.
    ``path`` is the path as the viewer sent it (after the proxy's normalisation), with or without
    the query.
    """
    path = path.partition("?")[0]
    if path.startswith(MEDIA_PATH_PREFIX):
        return MODE_SIGNED_URL
    if path.startswith(KEY_PATH_PREFIX):
        return MODE_KEY
    if path == LICENSE_PATH or path.startswith(LICENSE_PATH + "/"):
        return MODE_LICENSE
    if path == SESSION_END_PATH:
        return MODE_SESSION_END
    if path == SESSION_HEARTBEAT_PATH:
        return MODE_SESSION_HEARTBEAT
    if _ENTRY_MANIFEST.fullmatch(path):
        return MODE_SESSION_START
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
    "AUTHZ_LIMIT_KEY",
    "AUTHZ_MAX_BODY_BYTES",
    "AUTHZ_MODES",
    "AUTHZ_MODE_KEY",
    "AUTHZ_REQUEST_HEADERS",
    "EXTERNAL_ADDRESS_HEADER",
    "EXTPROC_ATTRIBUTES",
    "EXTPROC_ATTRIBUTE_NAMESPACE",
    "EXTPROC_HEADERS_ATTRIBUTES",
    "EXTPROC_HEADERS_PROCESSING_MODE",
    "EXTPROC_JSON_FORM_PROCESSING_MODE",
    "EXTPROC_PROCESSING_MODE",
    "HEADER_OF_ATTRIBUTE",
    "KEY_PATH_PREFIX",
    "LICENSE_KEY_SYSTEMS",
    "LICENSE_PATH",
    "LIMIT_PER_USER",
    "MEDIA_MANIFEST_REGEX",
    "MEDIA_PATH_PREFIX",
    "MODE_JWT",
    "MODE_JWT_ONLY",
    "MODE_KEY",
    "MODE_LICENSE",
    "MODE_SESSION_END",
    "MODE_SESSION_HEARTBEAT",
    "MODE_SESSION_START",
    "MODE_SIGNED_URL",
    "ORIGINAL_PATH_ATTRIBUTE",
    "PATH_ATTRIBUTE",
    "REQUEST_ID_ATTRIBUTE",
    "SESSION_ATTRIBUTE",
    "SESSION_END_PATH",
    "SESSION_HEARTBEAT_PATH",
    "SOURCE_ATTRIBUTE",
    "STATUS_ATTRIBUTE",
    "TRACEPARENT_ATTRIBUTE",
    "USER_ATTRIBUTE",
    "VIDEO_ATTRIBUTE",
    "authz_mode_for_path",
    "is_media_manifest",
]
