"""The identity headers: what authz tells the services behind Envoy about an admitted request.

authz sets them on every request it admits (``ext_authz`` OK response) and removes the ones it
does not set. Envoy also removes any copy a client sent before authz runs (the first filter of
the chain, ``header_mutation``; Envoy Gateway's early header mutation), so a service behind Envoy
can trust them: authz writes them, extproc and the license broker read them, the Envoy
configuration strips them. This module is their one definition.

=========================  ========================================================================
``x-playback-user``        the viewer: the JWT's ``sub``
``x-playback-plan``        the plan Billing reported (``premium``, ``basic``, ...)
``x-playback-video``       the video the decision was made for
``x-playback-entitlement`` compact JSON of the entitlement facts (tier, maxStreams, windows, hdcp)
``x-playback-session``     the playback session (JWT ``sid``, else ``jti``), when there is one
=========================  ========================================================================
"""

from __future__ import annotations

from typing import Final

USER_HEADER: Final = "x-playback-user"
PLAN_HEADER: Final = "x-playback-plan"
VIDEO_HEADER: Final = "x-playback-video"
ENTITLEMENT_HEADER: Final = "x-playback-entitlement"
SESSION_HEADER: Final = "x-playback-session"
# Every header above: what the edge strips from clients and what only authz may set.
IDENTITY_HEADERS: Final = (
    USER_HEADER,
    PLAN_HEADER,
    VIDEO_HEADER,
    ENTITLEMENT_HEADER,
    SESSION_HEADER,
)
# Envoy's own request id (``generate_request_id``), carried into logs and events.
REQUEST_ID_HEADER: Final = "x-request-id"

__all__ = [
    "ENTITLEMENT_HEADER",
    "IDENTITY_HEADERS",
    "PLAN_HEADER",
    "REQUEST_ID_HEADER",
    "SESSION_HEADER",
    "USER_HEADER",
    "VIDEO_HEADER",
]
