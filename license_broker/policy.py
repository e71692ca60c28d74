"""License policy: from the entitlement facts authz passes in, to what a license may contain.

Pure: no I/O. Inputs are the headers authz sets on admitted requests (``x-playback-user``,
``x-playback-plan``, ``x-playback-video``, ``x-playback-session``, ``x-playback-entitlement``), the
plan profiles from configuration and the video's content keys. Outputs are a :class:`LicensePolicy`
and the subset of keys the viewer may receive.

Rules:

- The entitlement facts (compact JSON: ``plan``, ``tier``, ``rentalWindowSeconds``,
  ``playbackWindowSeconds``, ``hdcp``, and optionally ``licenseDurationSeconds``, ``persistent``,
  ``securityLevel``) override the plan profile field by field. ``tier`` may name a track type
  (``SD``/``HD``/``UHD``) or a plan whose profile gives the highest track.
- Unknown plans get the ``default`` profile (SD only): a plan we do not know gets the least.
- Keys above the viewer's highest track are withheld. If a request names only withheld keys it is
  refused (403 ``not_entitled_to_track``); if it names some allowed keys, the license carries those
  and players restrict the other tracks (keys missing from a license are unusable).
- A rental window caps the license duration. Security level and HDCP grow with the track:
  ``AUDIO``/``SD`` need nothing, ``HD`` takes the plan's level, ``UHD`` needs at least hardware
  crypto (Widevine level 3) and HDCP 2.2.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Final

from license_broker.errors import MissingIdentity, NotEntitledToTrack, UnknownKeyId
from license_broker.model import ContentKey, Track, VideoKeys, parse_track
from playback_drm import identity
from playback_drm.untrusted import json_loads

HDCP_LEVELS: Final = (
    "HDCP_NONE",
    "HDCP_V1",
    "HDCP_V2",
    "HDCP_V2_1",
    "HDCP_V2_2",
    "HDCP_V2_3",
)
_HDCP_ALIASES: Final[dict[str, str]] = {
    "none": "HDCP_NONE",
    "false": "HDCP_NONE",
    "0": "HDCP_NONE",
    "off": "HDCP_NONE",
    "true": "HDCP_V1",
    "1": "HDCP_V1",
    "1.0": "HDCP_V1",
    "1.4": "HDCP_V1",
    "v1": "HDCP_V1",
    "2": "HDCP_V2",
    "2.0": "HDCP_V2",
    "v2": "HDCP_V2",
    "2.1": "HDCP_V2_1",
    "v2.1": "HDCP_V2_1",
    "2.2": "HDCP_V2_2",
    "v2.2": "HDCP_V2_2",
    "2.3": "HDCP_V2_3",
    "v2.3": "HDCP_V2_3",
}
UHD_MIN_SECURITY_LEVEL: Final = 3
UHD_MIN_HDCP: Final = "HDCP_V2_2"
MAX_FACTS_BYTES: Final = 4096


def normalize_hdcp(value: Any) -> str:
    """Widevine-style HDCP names from ``"2.2"``, ``"v1"``, ``"HDCP_V2_2"``, booleans, ..."""
    if isinstance(value, bool):
        return "HDCP_V1" if value else "HDCP_NONE"
    text = str(value).strip()
    upper = text.upper()
    if upper in HDCP_LEVELS:
        return upper
    found = _HDCP_ALIASES.get(text.lower().removeprefix("hdcp").strip(" _-"))
    if found is None:
        raise ValueError(f"unknown HDCP level {text[:20]!r}")
    return found


def stricter_hdcp(a: str, b: str) -> str:
    return a if HDCP_LEVELS.index(a) >= HDCP_LEVELS.index(b) else b


@dataclass(frozen=True, slots=True)
class PlanProfile:
    """What a plan gets when the entitlement facts do not say otherwise."""

    max_track: Track
    hdcp: str = "HDCP_NONE"
    security_level: int = 1
    can_persist: bool = False
    license_duration_s: int = 6 * 3600


DEFAULT_PLAN_PROFILES: Final[Mapping[str, PlanProfile]] = {
    "premium": PlanProfile(Track.UHD, "HDCP_V1", 1, True, 6 * 3600),
    "standard": PlanProfile(Track.HD, "HDCP_V1", 1, False, 6 * 3600),
    "basic": PlanProfile(Track.HD, "HDCP_NONE", 1, False, 6 * 3600),
    "default": PlanProfile(Track.SD, "HDCP_NONE", 1, False, 3600),
}


def parse_plan_profiles(raw: str, base: Mapping[str, PlanProfile]) -> dict[str, PlanProfile]:
    """Overlay ``PLAN_POLICIES`` JSON (``{"plan": {"maxTrack": "HD", "hdcp": "1.4",
    "securityLevel": 1, "persistent": false, "licenseDurationSeconds": 3600}}``) on ``base``.
    Raises ``ValueError``. (Concurrent streams are authz's: ``STREAM_LIMITS``.)"""
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("PLAN_POLICIES must be a JSON object of plan -> profile")
    out = dict(base)
    for plan, spec in doc.items():
        if not isinstance(spec, dict):
            raise ValueError(f"PLAN_POLICIES[{plan!r}] must be an object")
        prof = out.get(plan, out["default"])
        if "maxTrack" in spec:
            prof = replace(prof, max_track=parse_track(str(spec["maxTrack"])))
        if "hdcp" in spec:
            prof = replace(prof, hdcp=normalize_hdcp(spec["hdcp"]))
        if "securityLevel" in spec:
            prof = replace(prof, security_level=int(spec["securityLevel"]))
        if "persistent" in spec:
            prof = replace(prof, can_persist=bool(spec["persistent"]))
        if "licenseDurationSeconds" in spec:
            prof = replace(prof, license_duration_s=int(spec["licenseDurationSeconds"]))
        if "maxStreams" in spec:
            raise ValueError(
                f"PLAN_POLICIES[{plan!r}].maxStreams: concurrent streams are limited by authz "
                "now; set STREAM_LIMITS there"
            )
        out[plan] = prof
    return out


@dataclass(frozen=True, slots=True)
class Identity:
    """The viewer as authz described it. ``entitlement`` is the raw compact JSON header."""

    user: str | None = None
    plan: str | None = None
    video: str | None = None
    session: str | None = None
    entitlement: str | None = None
    request_id: str | None = None

    @staticmethod
    def from_headers(headers: Mapping[str, str]) -> Identity:
        return Identity(
            user=headers.get(identity.USER_HEADER) or None,
            plan=headers.get(identity.PLAN_HEADER) or None,
            video=headers.get(identity.VIDEO_HEADER) or None,
            session=headers.get(identity.SESSION_HEADER) or None,
            entitlement=headers.get(identity.ENTITLEMENT_HEADER) or None,
            request_id=headers.get(identity.REQUEST_ID_HEADER) or None,
        )

    @property
    def present(self) -> bool:
        """Whether authz marked this request at all (any identity header)."""
        return bool(self.user or self.plan or self.video or self.entitlement)


@dataclass(frozen=True, slots=True)
class Entitlement:
    plan: str | None = None
    tier: str | None = None
    rental_window_s: int | None = None
    playback_window_s: int | None = None
    license_duration_s: int | None = None
    persistent: bool | None = None
    hdcp: str | None = None
    security_level: int | None = None


def _opt_int(doc: Mapping[str, Any], name: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"entitlement fact {name!r} must be a non-negative number")
    return int(value)


@lru_cache(maxsize=4096)
def parse_entitlement(raw: str | None, plan_header: str | None) -> Entitlement:
    """Parse ``x-playback-entitlement`` (cached: the same few documents repeat).

    Raises :class:`MissingIdentity` when the header is not a JSON object of known shapes: a
    malformed header means authz did not describe the viewer, and we fail closed.
    """
    if raw is None:
        return Entitlement(plan=plan_header)
    if len(raw) > MAX_FACTS_BYTES:
        raise MissingIdentity("x-playback-entitlement is too large")
    try:
        doc = json_loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        plan = doc.get("plan")
        tier = doc.get("tier")
        persistent = doc.get("persistent", doc.get("canPersist"))
        hdcp = doc.get("hdcp")
        return Entitlement(
            plan=plan_header or (plan if isinstance(plan, str) else None),
            tier=str(tier) if tier is not None else None,
            rental_window_s=_opt_int(doc, "rentalWindowSeconds"),
            playback_window_s=_opt_int(doc, "playbackWindowSeconds"),
            license_duration_s=_opt_int(doc, "licenseDurationSeconds"),
            persistent=bool(persistent) if persistent is not None else None,
            hdcp=normalize_hdcp(hdcp) if hdcp is not None else None,
            security_level=_opt_int(doc, "securityLevel"),
        )
    except ValueError as exc:
        raise MissingIdentity(f"malformed x-playback-entitlement: {exc}") from None


@dataclass(frozen=True, slots=True)
class LicensePolicy:
    plan: str
    max_track: Track
    can_persist: bool
    license_duration_s: int
    rental_duration_s: int
    playback_duration_s: int
    hdcp: str
    security_level: int
    renewal_interval_s: int = 0  # 0: no renewals (the license lasts license_duration_s)

    def allows(self, track: Track) -> bool:
        return track <= self.max_track

    def requirements(self, track: Track) -> tuple[int, str]:
        """``(minimum Widevine security level, HDCP)`` a track's key needs under this policy."""
        if track <= Track.SD:
            return 1, "HDCP_NONE"
        if track == Track.HD:
            return self.security_level, self.hdcp
        return (
            max(self.security_level, UHD_MIN_SECURITY_LEVEL),
            stricter_hdcp(self.hdcp, UHD_MIN_HDCP),
        )

    def fingerprint(self) -> str:
        """A short stable string that changes whenever the license would differ."""
        return (
            f"{self.plan}/{self.max_track.name}/{int(self.can_persist)}/{self.license_duration_s}"
            f"/{self.rental_duration_s}/{self.playback_duration_s}/{self.hdcp}"
            f"/{self.security_level}/{self.renewal_interval_s}"
        )


def _tier_track(tier: str | None, profiles: Mapping[str, PlanProfile]) -> Track | None:
    if tier is None:
        return None
    try:
        return parse_track(tier)
    except ValueError:
        profile = profiles.get(tier.lower())
        return profile.max_track if profile else None


def decide(ent: Entitlement, profiles: Mapping[str, PlanProfile]) -> LicensePolicy:
    """The license policy for an entitlement (see the module docstring for the rules)."""
    plan = (ent.plan or "default").lower()
    profile = profiles.get(plan) or profiles["default"]
    max_track = _tier_track(ent.tier, profiles)
    duration = ent.license_duration_s or profile.license_duration_s
    rental = ent.rental_window_s or 0
    if rental:
        duration = min(duration, rental)
    return LicensePolicy(
        plan=plan,
        max_track=max_track if max_track is not None else profile.max_track,
        can_persist=ent.persistent if ent.persistent is not None else profile.can_persist,
        license_duration_s=duration,
        rental_duration_s=rental,
        playback_duration_s=ent.playback_window_s or 0,
        hdcp=ent.hdcp or profile.hdcp,
        security_level=ent.security_level or profile.security_level,
    )


def for_live(policy: LicensePolicy, duration_s: int, renewal_s: int) -> LicensePolicy:
    """The policy of a live video's license: at most ``duration_s`` long (never persistent),
    renewed every ``renewal_s``. A renewal is a license request of its own (Widevine's renewal
    message, a new PlayReady acquisition): authz lets it through only while the viewer is
    entitled, so a revoked viewer's keys stop at most ``duration_s`` after the revocation, and
    usually at the next renewal. (``LIVE_LICENSE_DURATION_SECONDS``,
    ``LIVE_LICENSE_RENEWAL_SECONDS``.)"""
    return replace(
        policy,
        can_persist=False,
        license_duration_s=min(policy.license_duration_s, duration_s),
        renewal_interval_s=renewal_s,
    )


def select_keys(
    policy: LicensePolicy, video: VideoKeys, requested: Iterable[bytes] | None = None
) -> tuple[ContentKey, ...]:
    """The keys of ``video`` this policy grants, among ``requested`` (all keys when ``None``).

    Raises :class:`UnknownKeyId` for a requested id the video does not have, and
    :class:`NotEntitledToTrack` when nothing is left after the track filter.
    """
    if requested is None:
        candidates: Iterable[ContentKey] = video.keys
    else:
        picked: list[ContentKey] = []
        for kid in requested:
            key = video.by_kid.get(kid)
            if key is None:
                raise UnknownKeyId(
                    f"key id {kid.hex()} is not a key of video {video.video_id!r}",
                    kid=kid.hex(),
                )
            picked.append(key)
        candidates = picked
    granted = tuple(k for k in candidates if policy.allows(k.track))
    if not granted:
        raise NotEntitledToTrack(
            f"plan {policy.plan!r} allows tracks up to {policy.max_track.name}",
            maxTrack=policy.max_track.name,
        )
    return granted
