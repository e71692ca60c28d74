"""Pure authorization logic: plain inputs in, an Allow or a Deny out. No gRPC, no I/O.

The adapter (``authz.server``) turns an Envoy CheckRequest into a :class:`CheckInput` and a
decision back into a CheckResponse; ``authz.service`` runs the I/O (JWKS, Billing) around these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from authz.entitlement import Entitlement
from authz.errors import NotEntitled, TokenError, TokenMalformed, VideoNotSpecified
from authz.tokens import Identity
from playback_drm.identity import (
    ENTITLEMENT_HEADER,
    PLAN_HEADER,
    SESSION_HEADER,
    USER_HEADER,
    VIDEO_HEADER,
)
from playback_drm.problem import PlaybackError
from playback_drm.untrusted import json_loads

TOKEN_PARAM = "token"  # noqa: S105 - a parameter name, not a secret
URL_TOKEN_PARAM = "pdt"  # noqa: S105 - playback_drm.urlsign.TOKEN_PARAM
MAX_BODY_FOR_VIDEO = 64 * 1024

_VIDEO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_WWW_AUTH_BASE = 'Bearer realm="playback"'


@dataclass(frozen=True, slots=True)
class CheckInput:
    """What authz needs from one HTTP request, independent of Envoy's types."""

    method: str
    path: str  # without the query string
    query: str  # raw, without '?'
    authorization: str | None
    client_ip: str | None
    mode: str
    content_type: str | None = None
    body: bytes = b""
    limit_user: bool = False  # count the viewer against the per-user limit (the route asks)


@dataclass(frozen=True, slots=True)
class Allow:
    headers: tuple[tuple[str, str], ...]
    remove_query: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Deny:
    status: int
    code: str
    title: str
    detail: str
    www_authenticate: str | None = None
    user: str | None = None  # who was refused, when authz knew (for the PlaybackError event)
    video: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # beside content-type and cache-control


Decision = Allow | Deny


def split_path(raw: str) -> tuple[str, str]:
    path, _, query = raw.partition("?")
    return path, query


def extract_token(inp: CheckInput) -> str | None:
    """The viewer's JWT: ``Authorization: Bearer`` first, else the ``token`` query parameter."""
    auth = inp.authorization
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise TokenMalformed("Authorization header is not a Bearer token")
    if "token=" not in inp.query:
        return None
    values = [v for k, v in parse_qsl(inp.query, keep_blank_values=True) if k == TOKEN_PARAM]
    if not values:
        return None
    if len(values) > 1:
        raise TokenMalformed("more than one token query parameter")
    return values[0] or None


def has_token_param(query: str) -> bool:
    return "token=" in query and any(
        k == TOKEN_PARAM for k, _ in parse_qsl(query, keep_blank_values=True)
    )


def has_url_token(query: str) -> bool:
    """Whether the request carries a signed-URL token (``pdt``), whatever its value."""
    return "pdt=" in query and any(
        k == URL_TOKEN_PARAM for k, _ in parse_qsl(query, keep_blank_values=True)
    )


def valid_video_id(value: str) -> bool:
    return _VIDEO_ID.fullmatch(value) is not None and ".." not in value


def video_for(inp: CheckInput) -> str:
    """The video a JWT-mode request is about: from the path, the query or the JSON body."""
    parts = inp.path.split("/")
    # /playback/{videoId}/manifest   /media/{videoId}/...   /drm/key/{videoId}/{kid}
    candidate: str | None = None
    if len(parts) >= 3 and parts[1] in ("playback", "media"):
        candidate = unquote(parts[2])
    elif len(parts) >= 4 and parts[1] == "drm" and parts[2] == "key":
        candidate = unquote(parts[3])
    else:
        if "videoId=" in inp.query:
            found = [v for k, v in parse_qsl(inp.query) if k == "videoId"]
            candidate = found[0] if len(found) == 1 else None
        if candidate is None and inp.body:
            candidate = _video_from_body(inp.body)
    if candidate is None:
        raise VideoNotSpecified("the request names no videoId (path, query or JSON body)")
    if not valid_video_id(candidate):
        raise VideoNotSpecified("videoId is not a valid identifier")
    return candidate


def _video_from_body(body: bytes) -> str | None:
    if len(body) > MAX_BODY_FOR_VIDEO:
        return None
    try:
        doc = json_loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict):
        value = doc.get("videoId")
        if isinstance(value, str):
            return value
    return None


def require_entitled(ent: Entitlement) -> Entitlement:
    """``ent`` when it grants the video; raises :class:`NotEntitled` with Billing's reason."""
    if not ent.entitled:
        reason = ent.reason or "no entitlement"
        raise NotEntitled(f"user is not entitled to this video: {reason}", reason=reason)
    return ent


def viewer_headers(
    user: str, plan: str, video: str, entitlement: str, session: str | None
) -> tuple[tuple[str, str], ...]:
    """The identity headers of an admitted viewer (``playback_drm.identity``)."""
    headers = [
        (USER_HEADER, user),
        (PLAN_HEADER, plan),
        (VIDEO_HEADER, video),
        (ENTITLEMENT_HEADER, entitlement),
    ]
    if session is not None:
        headers.append((SESSION_HEADER, session))
    return tuple(headers)


def entitled(
    ident: Identity, ent: Entitlement, remove_token: bool, session: str | None = None
) -> Decision:
    """Admit a viewer Billing entitles; ``session`` is the playback session of the request."""
    if not ent.entitled:
        reason = ent.reason or "no entitlement"
        return deny(
            NotEntitled(f"user is not entitled to this video: {reason}", reason=reason),
            user=ident.sub,
            video=ent.video,
        )
    headers = viewer_headers(ident.sub, ent.plan or "", ent.video, ent.facts_header, session)
    return Allow(headers, (TOKEN_PARAM,) if remove_token else ())


def identified(ident: Identity, remove_token: bool) -> Decision:
    return Allow(((USER_HEADER, ident.sub),), (TOKEN_PARAM,) if remove_token else ())


def deny(error: BaseException, *, user: str | None = None, video: str | None = None) -> Deny:
    """Map an error to a denial; anything unexpected fails closed as a 503 with a stable code."""
    if isinstance(error, PlaybackError):
        www = _www_authenticate(error) if isinstance(error, TokenError) else None
        return Deny(error.status, error.code, error.title, error.detail, www, user, video)
    return Deny(
        503,
        "authz_internal_error",
        "Authorization failed",
        "authorization failed",
        None,
        user,
        video,
    )


def _www_authenticate(error: TokenError) -> str:
    if error.code == "token_missing":
        return _WWW_AUTH_BASE
    detail = error.detail.replace('"', "'")
    return f'{_WWW_AUTH_BASE}, error="invalid_token", error_description="{detail}"'
