"""Playback sessions and concurrent-stream slots: the rules, as plain data. No I/O.

A playback session is one start of playback. authz creates one when it admits an entry manifest
request (``session_start`` mode): an id of 128 random bits, never derived from the JWT, so a
reload is a new session and a JWT cannot be replayed into someone else's. Every URL the manifest
signer signs for that manifest carries the id (the ``s:<sid>`` binding of ``pdt``), so every later
request of the playback names its session, and through it its viewer.

A session *takes a stream slot* on its first request for what decrypts content (a license of any
key system, an HLS AES-128 key) and never again; it *holds* the slot while it shows signs of life
(any request with its URLs: segments, playlists, keys, licenses, heartbeats) and frees it
``stream_idle`` after the last one, or at once when it ends (``/playback/sessions/end``, an EME
license release). A session that wants a slot and holds none (it lost its slot to idleness, a long
pause, or was refused one) competes for one again on each sign of life, and every request of it
is refused while none is free. The session itself dies ``session_idle`` after its last sign of
life.

What a store keeps per viewer (the Redis script: two sorted sets; the memory store: two dicts)::

    live    session id -> instant (ms) the session dies unless it shows a sign of life first
    slots   session id -> instant (ms) its slot is freed unless refreshed. A member whose instant
            has passed marks a session that wants a slot and holds none (it lost its slot to
            idleness, or was refused one); it is dropped once its session must be dead too.

:class:`UserSessions` applies the rules to that state; the Redis script in
``authz.sessionstore`` is the same rules in Lua (a contract test runs both on one table).

The JWT-only license rule: a license request that carries a JWT and no session-bound URL (an app
that configured the license server itself) belongs to the newest live session the same viewer
started on the same video with a JWT of the same login session (its ``sid``, else ``jti``); when
there is none, to a session derived from (viewer, video, that claim), which lives, and holds its
slot, on license requests (renewals) alone.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

SESSION_ID_BYTES: Final = 16
_SESSION_ID: Final = re.compile(r"[A-Za-z0-9_-]{22}")
UNLIMITED: Final = 2**31 - 1  # the limit of a plan without one: slots still count (the gauge)
MAX_SESSIONS_PER_USER: Final = 100  # beyond it the least recently seen session of the viewer goes
NO_LABEL: Final = "-"


def new_session_id() -> str:
    """128 random bits, base64url without padding (22 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(SESSION_ID_BYTES)).rstrip(b"=").decode()


def is_session_id(value: str) -> bool:
    """Whether ``value`` has the shape of an id :func:`new_session_id` makes."""
    return _SESSION_ID.fullmatch(value) is not None


def _digest(*parts: str) -> str:
    raw = hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt_label(claim: str | None) -> str:
    """What links a JWT to the sessions it started: a digest of its ``sid`` (else ``jti``), or
    :data:`NO_LABEL` when it has neither (then: one per viewer and video)."""
    return _digest("jwt", claim)[:16] if claim else NO_LABEL


def derived_session_id(user: str, video: str, label: str) -> str:
    """The session of JWT-only license requests that no live session of the JWT claims."""
    return "j." + _digest("derived", user, video, label)[:22]


# ------------------------------------------------------------------------------------ limits


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """``STREAM_LIMITS``: concurrent streams per plan (``premium=4,basic=2,default=1``); the
    entitlement's ``maxStreams`` wins over it. 0 means no limit."""

    per_plan: Mapping[str, int] = field(default_factory=dict)
    default: int = 1

    @classmethod
    def parse(cls, text: str) -> StreamLimits:
        """Raises ``ValueError`` naming the bad entry."""
        per_plan: dict[str, int] = {}
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                continue
            plan, sep, value = entry.partition("=")
            plan = plan.strip().lower()
            if not sep or not plan:
                raise ValueError(f"{entry!r} is not plan=count")
            try:
                count = int(value.strip())
            except ValueError:
                raise ValueError(f"{entry!r}: the count is not a whole number") from None
            if count < 0:
                raise ValueError(f"{entry!r}: the count must be 0 (no limit) or more")
            per_plan[plan] = count
        default = per_plan.pop("default", 1)
        return cls(per_plan, default)

    def limit_for(self, plan: str | None, max_streams: Any = None) -> int:
        """The viewer's limit (:data:`UNLIMITED` for none): the entitlement's ``maxStreams``,
        else the plan's setting, else ``default``."""
        if isinstance(max_streams, int) and not isinstance(max_streams, bool) and max_streams >= 0:
            count = max_streams
        else:
            count = self.per_plan.get((plan or "").lower(), self.default)
        return count if count > 0 else UNLIMITED

    @property
    def plans(self) -> tuple[str, ...]:
        return tuple(self.per_plan)


def max_streams_of(entitlement_header: str) -> Any:
    """``maxStreams`` from the compact JSON of ``x-playback-entitlement`` (None when absent)."""
    try:
        doc = json.loads(entitlement_header) if entitlement_header else None
    except ValueError:
        return None
    return doc.get("maxStreams") if isinstance(doc, dict) else None


# ------------------------------------------------------------------------------------- facts


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What a session is, fixed at its start: what authz sets as the identity headers of the
    session's requests. ``entitlement`` is the ``x-playback-entitlement`` value; ``label`` the
    :func:`jwt_label` of the JWT that started it."""

    sid: str
    user: str
    video: str
    plan: str
    entitlement: str
    created: int  # Unix seconds
    label: str = NO_LABEL

    def to_json(self) -> str:
        doc = {
            "u": self.user,
            "v": self.video,
            "p": self.plan,
            "e": self.entitlement,
            "c": self.created,
            "l": self.label,
        }
        return json.dumps(doc, separators=(",", ":"))

    @staticmethod
    def from_json(sid: str, text: str | bytes) -> SessionFacts:
        """Raises ``ValueError`` when ``text`` is not a record :meth:`to_json` wrote."""
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("a session record is a JSON object")
        user, video, plan, ent = doc.get("u"), doc.get("v"), doc.get("p"), doc.get("e")
        created, label = doc.get("c"), doc.get("l", NO_LABEL)
        if not (isinstance(user, str) and user and isinstance(video, str) and video):
            raise ValueError("a session record names its viewer and video")
        if not (isinstance(plan, str) and isinstance(ent, str) and isinstance(label, str)):
            raise ValueError("a session record's plan, entitlement and label are strings")
        if not isinstance(created, int):
            raise ValueError("a session record's creation time is Unix seconds")
        return SessionFacts(sid, user, video, plan, ent, created, label)

    @property
    def max_streams(self) -> Any:
        return max_streams_of(self.entitlement)


# ------------------------------------------------------------------------------------- rules


class Outcome(enum.IntEnum):
    """What a sign of life or a slot request found (the Redis script returns these numbers)."""

    ENDED = 0  # the session is not live: ended, idled out, or never was
    ALIVE = 1  # live, without a slot (nothing decrypted yet)
    HELD = 2  # live, its slot refreshed
    TAKEN = 3  # live, a slot taken now (first key, or again after losing it to idleness)
    REFUSED = 4  # live, but as many other slots are held as the limit allows
    # not looked at: the request's hit on the per-user rate limit, counted by the same script
    # (authz.ratelimit.Charge), found the viewer over the limit
    RATE_LIMITED = 5


@dataclass(frozen=True, slots=True)
class SlotResult:
    outcome: Outcome
    held: int  # slots the viewer holds after this (this session's included)
    sid: str  # the session the result is about (the JWT-only rule may pick another)


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """``SESSION_IDLE_SECONDS`` and ``STREAM_IDLE_SECONDS``, in milliseconds."""

    session_idle_ms: int
    stream_idle_ms: int
    max_sessions: int = MAX_SESSIONS_PER_USER

    def __post_init__(self) -> None:
        if not 0 < self.stream_idle_ms <= self.session_idle_ms:
            raise ValueError("a slot must idle out no later than its session")

    @property
    def key_ttl_ms(self) -> int:
        """How long a viewer's state outlives its last write: everything in it has expired."""
        return self.session_idle_ms + self.stream_idle_ms


@dataclass(slots=True)
class UserSessions:
    """One viewer's sessions and slots (see the module docstring), in milliseconds."""

    live: dict[str, int] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)

    def prune(self, now: int, life: Lifetimes) -> None:
        for sid in [s for s, until in self.live.items() if until <= now]:
            del self.live[sid]
        horizon = now - life.session_idle_ms
        for sid in [s for s, until in self.slots.items() if until <= horizon]:
            del self.slots[sid]

    def held(self, now: int) -> int:
        return sum(1 for until in self.slots.values() if until > now)

    @property
    def empty(self) -> bool:
        return not self.live and not self.slots

    def create(self, sid: str, now: int, life: Lifetimes) -> list[str]:
        """A new live session; returns the sessions evicted to stay within ``max_sessions``."""
        self.prune(now, life)
        self.live[sid] = now + life.session_idle_ms
        evicted: list[str] = []
        excess = len(self.live) - life.max_sessions
        if excess > 0:  # the least recently seen go first (ties: the smaller id, like ZPOPMIN)
            for gone, _ in sorted(self.live.items(), key=lambda item: (item[1], item[0]))[:excess]:
                del self.live[gone]
                self.slots.pop(gone, None)
                evicted.append(gone)
        return evicted

    def touch(self, sid: str, now: int, limit: int, life: Lifetimes, *, take: bool) -> SlotResult:
        """A sign of life (``take=False``) or a request for what decrypts (``take=True``)."""
        self.prune(now, life)
        if sid not in self.live:
            return SlotResult(Outcome.ENDED, self.held(now), sid)
        self.live[sid] = now + life.session_idle_ms
        slot = self.slots.get(sid)
        if slot is not None and slot > now:
            outcome = Outcome.HELD
        elif slot is not None or take:
            outcome = Outcome.TAKEN if self.held(now) < limit else Outcome.REFUSED
        else:
            outcome = Outcome.ALIVE
        if outcome in (Outcome.HELD, Outcome.TAKEN):
            self.slots[sid] = now + life.stream_idle_ms
        elif outcome is Outcome.REFUSED and slot is None:
            self.slots[sid] = now  # it wants a slot: its next signs of life ask again
        return SlotResult(outcome, self.held(now), sid)

    def license(
        self, linked: str | None, fallback: str, now: int, limit: int, life: Lifetimes
    ) -> SlotResult:
        """The JWT-only rule: the linked session when it is live, else ``fallback`` (made live
        when it is not), then a slot request for it."""
        self.prune(now, life)
        sid = linked if linked is not None and linked in self.live else fallback
        if sid not in self.live:
            self.create(sid, now, life)
        return self.touch(sid, now, limit, life, take=True)

    def end(self, sid: str) -> bool:
        """End a session at once; whether it was live."""
        self.slots.pop(sid, None)
        return self.live.pop(sid, None) is not None

    def release(
        self, linked: str | None, fallback: str, now: int, life: Lifetimes
    ) -> tuple[bool, str]:
        """A license release under the JWT-only rule: end the session :meth:`license` would
        pick; whether it was live, and which it was."""
        self.prune(now, life)
        sid = linked if linked is not None and linked in self.live else fallback
        return self.end(sid), sid


# ------------------------------------------------------------------------------ coalescing


class Kind(enum.Enum):
    """What a session-bound request asks the registry for."""

    LIFE = "life"  # a sign of life (segment, playlist, certificate, heartbeat)
    SLOT = "slot"  # what decrypts content (key, license): takes a slot


@dataclass(frozen=True, slots=True)
class View:
    """A process's last word from the store about one session, and when it got it."""

    outcome: Outcome | None  # None: the store could not be asked (the request went unchecked)
    checked_at: float  # monotonic seconds


def needs_check(view: View | None, now: float, interval: float, kind: Kind) -> bool:
    """Whether a request must ask the store, or the process's last view answers it: at most one
    store call per session every ``interval`` seconds, except a first slot request."""
    if view is None or now - view.checked_at >= interval:
        return True
    return kind is Kind.SLOT and view.outcome is Outcome.ALIVE


__all__ = [
    "MAX_SESSIONS_PER_USER",
    "NO_LABEL",
    "UNLIMITED",
    "Kind",
    "Lifetimes",
    "Outcome",
    "SessionFacts",
    "SlotResult",
    "StreamLimits",
    "UserSessions",
    "View",
    "derived_session_id",
    "is_session_id",
    "jwt_label",
    "max_streams_of",
    "needs_check",
    "new_session_id",
]
