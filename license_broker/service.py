"""The licensing use cases, independent of HTTP: issue a license, deliver an HLS key, serve a
certificate. The aiohttp layer (``app.py``) only parses requests and renders results.

Order of checks for a license, cheapest and most fundamental first, failing closed:

1. identity: authz's headers must be present (``missing_identity``) and, when authz names a video,
   it must be the requested one (``video_mismatch``, defence in depth);
2. the challenge: key system (given or inferred), challenge syntax (``malformed_challenge``);
3. policy from the entitlement facts, then the video's keys (``unknown_video``, ``unknown_key_id``,
   ``key_store_unavailable``) filtered by the policy (``not_entitled_to_track``);
4. the license cache, then ClearKey from the keys or the provider adapter (``provider_*``).

Concurrent-stream limits are authz's (one rule for every key path, per playback session): a
request that reaches the broker has its slot already.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from license_broker import clearkey, metrics
from license_broker.cache import CachedLicense, LicenseCache, cache_key
from license_broker.config import BrokerConfig
from license_broker.encoding import parse_key_id
from license_broker.errors import (
    BadRequest,
    MalformedChallenge,
    MissingIdentity,
    NotEntitledToTrack,
    PersistenceNotAllowed,
    UnknownKeyId,
    UnsupportedKeySystem,
    VideoMismatch,
)
from license_broker.keys import KeyStore
from license_broker.keysystems import (
    HLS_AES_128,
    WIDEVINE_CERTIFICATE_REQUEST,
    KeySystem,
    infer_key_system,
)
from license_broker.model import ContentKey
from license_broker.policy import (
    Entitlement,
    Identity,
    LicensePolicy,
    decide,
    for_live,
    parse_entitlement,
    select_keys,
)
from license_broker.providers import playready, widevine
from license_broker.providers.base import LicenseContext, LicenseProvider, ProviderLicense
from license_broker.providers.fairplay import SpcRequest, encode_ckc, parse_spc
from playback_drm.events import BROKER_SOURCE, LICENSE_ISSUED, Event, EventSink

log = logging.getLogger(__name__)

VIDEO_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
JSON_TYPE: Final = "application/json"
_POLICY_MEMO_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class IssuedLicense:
    """A license: ``body`` is the license itself (what the JSON API base64-encodes);
    ``native_body``/``native_type`` are what a player-native endpoint answers."""

    license_id: str
    key_system: str
    body: bytes
    content_type: str
    expires_at: float
    cached: bool
    native_body: bytes
    native_type: str


def check_video_id(video_id: str) -> str:
    if not isinstance(video_id, str) or not VIDEO_ID.match(video_id):
        raise BadRequest("videoId must be 1-128 characters of [A-Za-z0-9._-]")
    return video_id


@dataclass(frozen=True, slots=True)
class _Parsed:
    canonical: bytes
    kids: tuple[bytes, ...] | None
    clearkey: clearkey.ClearKeyRequest | None = None
    spc: SpcRequest | None = None


class LicenseService:
    def __init__(
        self,
        config: BrokerConfig,
        *,
        keys: KeyStore,
        cache: LicenseCache,
        providers: Mapping[KeySystem, LicenseProvider],
        events: EventSink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self.keys = keys
        self.cache = cache
        self.providers = dict(providers)
        self._events = events
        self._clock = clock
        self._policies: dict[Entitlement, LicensePolicy] = {}

    # ------------------------------------------------------------------ helpers

    def policy_for(self, identity: Identity) -> LicensePolicy:
        ent = parse_entitlement(identity.entitlement, identity.plan)
        policy = self._policies.get(ent)
        if policy is None:
            if len(self._policies) >= _POLICY_MEMO_MAX:
                self._policies.clear()
            policy = self._policies[ent] = decide(ent, self._config.plan_profiles)
        return policy

    @staticmethod
    def require_viewer(identity: Identity, video_id: str) -> str:
        if not identity.user:
            raise MissingIdentity("x-playback-user is missing: the request did not pass authz")
        if not identity.plan and not identity.entitlement:
            raise MissingIdentity("neither x-playback-plan nor x-playback-entitlement is present")
        if identity.video is not None and identity.video != video_id:
            raise VideoMismatch("the request names another video than the one authorized")
        return identity.user

    def provider(self, key_system: KeySystem) -> LicenseProvider:
        found = self.providers.get(key_system)
        if found is None:
            raise UnsupportedKeySystem(f"{key_system.value} is not configured on this broker")
        return found

    def _emit(self, video_id: str, identity: Identity, data: dict[str, Any]) -> None:
        """A LicenseIssued event (None values dropped, like ``playback_drm.events``)."""
        data = {
            "userId": identity.user,
            "videoId": video_id,
            **data,
            "sessionId": identity.session,
            "requestId": identity.request_id,
        }
        self._events.emit(
            Event(
                LICENSE_ISSUED,
                BROKER_SOURCE,
                video_id,
                {k: v for k, v in data.items() if v is not None},
            )
        )

    # ------------------------------------------------------------------ licenses

    async def issue(
        self,
        identity: Identity,
        video_id: str,
        key_system: KeySystem | None,
        challenge: bytes,
        *,
        request_headers: Mapping[str, str] | None = None,
    ) -> IssuedLicense:
        check_video_id(video_id)
        user = self.require_viewer(identity, video_id)
        headers = request_headers or {}
        ks = key_system or infer_key_system(challenge)
        if not challenge:
            raise MalformedChallenge("empty license challenge")
        if ks == KeySystem.WIDEVINE and challenge == WIDEVINE_CERTIFICATE_REQUEST:
            cert = await self.provider(ks).certificate()
            return IssuedLicense(
                uuid.uuid4().hex,
                ks.value,
                cert,
                "application/octet-stream",
                self._clock() + self._config.certificate_cache_ttl,
                False,
                cert,
                "application/octet-stream",
            )
        parsed = self._parse(ks, challenge, headers)
        policy = self.policy_for(identity)
        video = await self.keys.fetch(video_id)
        if video.live:
            policy = for_live(
                policy, self._config.live_license_duration, self._config.live_license_renewal
            )
        granted = select_keys(policy, video, parsed.kids)
        if parsed.clearkey is not None and parsed.clearkey.persistent and not policy.can_persist:
            raise PersistenceNotAllowed(f"plan {policy.plan!r} does not allow persistent licenses")
        key = cache_key(
            ks.value,
            video_id,
            user,
            policy.fingerprint(),
            parsed.canonical + b"\x00" + b"".join(k.kid for k in granted),
        )
        hit = await self.cache.get(key)
        result = self._from_cache(hit, ks, parsed, granted) if hit is not None else None
        if result is None:
            result = await self._produce(
                ks, parsed, challenge, granted, policy, identity, video_id, headers
            )
            winner = await self.cache.add(
                key,
                CachedLicense(
                    license_id=result.license_id,
                    expires_at=result.expires_at,
                    key_system=ks.value,
                    content_type=result.content_type,
                    body=b"" if ks == KeySystem.CLEARKEY else result.body,
                    kids=tuple(k.kid for k in granted) if ks == KeySystem.CLEARKEY else (),
                    session_type=parsed.clearkey.session_type if parsed.clearkey else "",
                ),
                # Never answer a retry with a license that has expired meanwhile.
                min(self._config.license_cache_ttl, policy.license_duration_s),
            )
            if winner.license_id != result.license_id:
                result = self._from_cache(winner, ks, parsed, granted) or result
        metrics.issued(ks.value, result.cached).inc()
        self._emit(
            video_id,
            identity,
            {
                "licenseId": result.license_id,
                "keySystem": ks.value,
                "plan": policy.plan,
                "cached": result.cached,
            },
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "license issued",
                extra={
                    "userId": user,
                    "videoId": video_id,
                    "licenseId": result.license_id,
                    "keySystem": ks.value,
                    "cached": result.cached,
                },
            )
        return result

    def _parse(self, ks: KeySystem, challenge: bytes, headers: Mapping[str, str]) -> _Parsed:
        if ks == KeySystem.CLEARKEY:
            req = clearkey.parse_request(challenge)
            return _Parsed(req.canonical(), req.kids, clearkey=req)
        self.provider(ks)
        if ks == KeySystem.FAIRPLAY:
            spc = parse_spc(challenge, headers.get("Content-Type", ""))
            canonical = spc.spc + b"\x00" + (spc.asset_id or "").encode() + spc.encoding.encode()
            return _Parsed(canonical, None, spc=spc)
        if ks == KeySystem.PLAYREADY:
            playready.check_challenge(challenge, headers.get("SOAPAction"))
        elif ks == KeySystem.WIDEVINE:
            widevine.check_challenge(challenge)
        return _Parsed(challenge, None)

    def _native(self, ks: KeySystem, parsed: _Parsed, body: bytes, ctype: str) -> tuple[bytes, str]:
        if ks == KeySystem.FAIRPLAY and parsed.spc is not None:
            enc = encode_ckc(body, parsed.spc.encoding)
            return enc.body, enc.content_type
        return body, ctype

    def _from_cache(
        self, hit: CachedLicense, ks: KeySystem, parsed: _Parsed, granted: tuple[ContentKey, ...]
    ) -> IssuedLicense | None:
        if hit.key_system != ks.value:
            return None
        if ks == KeySystem.CLEARKEY:
            by_kid = {k.kid: k for k in granted}
            if any(kid not in by_kid for kid in hit.kids):
                return None  # keys changed since: issue afresh
            body = clearkey.build_response(
                ((kid, by_kid[kid].key) for kid in hit.kids), hit.session_type
            )
        else:
            body = hit.body
        native, ntype = self._native(ks, parsed, body, hit.content_type)
        return IssuedLicense(
            hit.license_id, ks.value, body, hit.content_type, hit.expires_at, True, native, ntype
        )

    async def _produce(
        self,
        ks: KeySystem,
        parsed: _Parsed,
        challenge: bytes,
        granted: tuple[ContentKey, ...],
        policy: LicensePolicy,
        identity: Identity,
        video_id: str,
        headers: Mapping[str, str],
    ) -> IssuedLicense:
        now = self._clock()
        if parsed.clearkey is not None:
            body = clearkey.build_response(
                ((k.kid, k.key) for k in granted), parsed.clearkey.session_type
            )
            lic = ProviderLicense(body, JSON_TYPE)
        else:
            ctx = LicenseContext(
                key_system=ks,
                video_id=video_id,
                user_id=identity.user or "",
                keys=granted,
                policy=policy,
                asset_id=parsed.spc.asset_id if parsed.spc else None,
                request_headers=headers,
            )
            raw = parsed.spc.spc if parsed.spc is not None else challenge
            lic = await self.provider(ks).acquire(raw, ctx)
        native, ntype = self._native(ks, parsed, lic.body, lic.content_type)
        return IssuedLicense(
            uuid.uuid4().hex,
            ks.value,
            lic.body,
            lic.content_type,
            now + policy.license_duration_s,
            False,
            native,
            ntype,
        )

    # ------------------------------------------------------------------ HLS AES-128 keys

    async def hls_key(self, identity: Identity, video_id: str, kid_text: str) -> bytes:
        """The 16-byte AES-128 key. The URL was signed by the manifest signer and verified by
        authz, so a JWT is not needed; authz's mark (any x-playback-* header) still is, plus the
        user when HLS_KEY_REQUIRE_USER is set. Without plan facts, tracks above
        HLS_KEY_ANONYMOUS_MAX_TRACK are refused."""
        check_video_id(video_id)
        try:
            kid = parse_key_id(kid_text)
        except ValueError:
            raise BadRequest("malformed key id in the key URL") from None
        if not identity.present:
            raise MissingIdentity("key request did not pass authz (no x-playback-* headers)")
        if self._config.hls_key_require_user and not identity.user:
            raise MissingIdentity("x-playback-user is required for key delivery")
        if identity.video is not None and identity.video != video_id:
            raise VideoMismatch("the request names another video than the one authorized")
        video = await self.keys.fetch(video_id)
        key = video.by_kid.get(kid)
        if key is None:
            raise UnknownKeyId(
                f"key id {kid.hex()} is not a key of video {video_id!r}", kid=kid.hex()
            )
        if identity.plan or identity.entitlement:
            policy = self.policy_for(identity)
            max_track, plan = policy.max_track, policy.plan
        else:
            max_track, plan = self._config.hls_key_anonymous_max_track, None
        if key.track > max_track:
            raise NotEntitledToTrack(
                f"this key needs {key.track.name}; allowed up to {max_track.name}",
                maxTrack=max_track.name,
            )
        license_id = uuid.uuid4().hex
        metrics.issued(HLS_AES_128, False).inc()
        self._emit(
            video_id,
            identity,
            {"licenseId": license_id, "keySystem": HLS_AES_128, "plan": plan, "cached": False},
        )
        return key.key

    # ------------------------------------------------------------------ certificates

    async def certificate(self, key_system: KeySystem) -> bytes:
        if key_system not in (KeySystem.WIDEVINE, KeySystem.FAIRPLAY):
            raise UnsupportedKeySystem(f"{key_system.value} has no certificate")
        return await self.provider(key_system).certificate()
