"""JWT verification against the Auth service's JWKS, with a verified-token cache.

A repeated token costs a dictionary lookup and an expiry comparison; cryptography runs once per
distinct token. The JWKS is cached, refreshed periodically and on an unknown ``kid`` (at most once
per ``min_refresh`` seconds, single-flight), and kept when a refresh fails.

Algorithm confusion is impossible by construction: the key decides which algorithms it verifies
(RSA -> RS*/PS*, EC P-256 -> ES256, Ed25519 -> EdDSA, our configured secret -> HS256), the header's
``alg`` must be both allowlisted and one of those, and pyjwt is called with exactly that one alg.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import jwt
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from authz.errors import (
    KeySourceUnavailable,
    TokenAlgorithmRejected,
    TokenBadSignature,
    TokenClaimsInvalid,
    TokenExpired,
    TokenMalformed,
    TokenNotYetValid,
    TokenUnknownKey,
)
from authz.jose import JoseHeader, parse_header

log = logging.getLogger(__name__)

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256"})
_EC_ALGS_BY_CURVE = {"P-256": frozenset({"ES256"}), "P-384": frozenset({"ES384"})}
_OKP_ALGS = frozenset({"EdDSA"})
_HS_KID = "\x00hs256"  # internal kid of the configured shared secret, never a JWKS kid

MAX_CLAIM_CHARS = 256

JwksFetcher = Callable[[], Awaitable[Mapping[str, Any]]]


def _header_safe(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_CLAIM_CHARS and value.isprintable()


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified viewer. ``session`` is the token's ``sid`` (or ``jti``) when present."""

    sub: str
    exp: int
    session: str | None


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: str
    key: Any
    algorithms: frozenset[str]


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: Mapping[str, VerifyKey]

    @staticmethod
    def from_jwks(doc: Mapping[str, Any], allowed: frozenset[str]) -> KeySet:
        keys: dict[str, VerifyKey] = {}
        raw_keys = doc.get("keys")
        if not isinstance(raw_keys, list):
            raise ValueError("JWKS document has no 'keys' list")
        for jwk in raw_keys:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            kid = jwk.get("kid")
            if not isinstance(kid, str) or not kid:
                continue
            kty = jwk.get("kty")
            text = json.dumps(jwk)
            key: Any
            try:
                if kty == "RSA":
                    algs, key = _RSA_ALGS, RSAAlgorithm.from_jwk(text)
                elif kty == "EC":
                    algs = _EC_ALGS_BY_CURVE.get(str(jwk.get("crv")), frozenset())
                    key = ECAlgorithm.from_jwk(text)
                elif kty == "OKP" and jwk.get("crv") == "Ed25519":
                    algs, key = _OKP_ALGS, OKPAlgorithm.from_jwk(text)
                else:
                    continue
            except (ValueError, TypeError, KeyError, jwt.InvalidKeyError):
                log.warning("ignoring unusable JWK", extra={"kid": kid})
                continue
            if isinstance(jwk.get("alg"), str):
                algs = algs & {jwk["alg"]}
            algs = algs & allowed
            if algs:
                keys[kid] = VerifyKey(kid, key, frozenset(algs))
        return KeySet(keys)


class JwksCache:
    """Holds the current key set; refreshes on demand (rate-bounded) and periodically."""

    def __init__(
        self,
        fetch: JwksFetcher,
        allowed: frozenset[str],
        *,
        min_refresh: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._allowed = allowed
        self._min_refresh = min_refresh
        self._clock = clock
        self._keys: KeySet | None = None
        self._last_attempt = float("-inf")
        self._inflight: asyncio.Task[bool] | None = None
        self.refreshes = 0

    @property
    def loaded(self) -> bool:
        return self._keys is not None

    @property
    def keys(self) -> KeySet | None:
        return self._keys

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the JWKS now (single-flight). Returns whether the key set is usable."""
        # Without any key yet (Auth was down at start-up) retry soon; single-flight bounds load.
        interval = self._min_refresh if self._keys is not None else min(self._min_refresh, 1.0)
        if not force and self._clock() - self._last_attempt < interval:
            return self._keys is not None
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._do_refresh())
        task = self._inflight
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._inflight is task:
                self._inflight = None

    async def _do_refresh(self) -> bool:
        self._last_attempt = self._clock()
        self.refreshes += 1
        try:
            doc = await self._fetch()
            self._keys = KeySet.from_jwks(doc, self._allowed)
        except Exception as exc:  # any transport/parse failure keeps the previous keys
            log.warning("JWKS refresh failed: %s", type(exc).__name__)
            return self._keys is not None
        return True


class TokenVerifier:
    """Verifies compact JWS tokens; caches verified identities until their expiry."""

    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str,
        algorithms: tuple[str, ...],
        hs256_secret: bytes | None = None,
        leeway: int = 30,
        max_token_bytes: int = 8192,
        cache_size: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._allowed = frozenset(algorithms)
        self._hs_key = (
            VerifyKey(_HS_KID, hs256_secret, frozenset({"HS256"}))
            if hs256_secret is not None and "HS256" in self._allowed
            else None
        )
        self._leeway = leeway
        self._max = max_token_bytes
        self._cache: dict[str, Identity] = {}
        self._cache_size = cache_size
        self._clock = clock
        self._options = {"require": ["exp", "sub", "iss", "aud"]}
        self.cache_hits = 0
        self.cache_misses = 0

    def cached(self, token: str) -> Identity | None:
        """The hot path: a verified, unexpired token costs one dict lookup."""
        ident = self._cache.get(token)
        if ident is None:
            return None
        if ident.exp + self._leeway <= self._clock():
            del self._cache[token]
            return None
        return ident

    async def verify(self, token: str) -> Identity:
        ident = self.cached(token)
        if ident is not None:
            self.cache_hits += 1
            return ident
        self.cache_misses += 1
        header = self._header(token)
        key = await self._key_for(header)
        ident = self._decode(token, key, header.alg)
        self._remember(token, ident)
        return ident

    def _header(self, token: str) -> JoseHeader:
        """The JOSE header, validated before anything looks at it (``authz.jose``)."""
        if len(token) > self._max:
            raise TokenMalformed(f"token longer than {self._max} bytes")
        header = parse_header(token)
        if header.alg not in self._allowed:
            raise TokenAlgorithmRejected(f"algorithm {header.alg[:20]!r} is not allowed")
        return header

    async def _key_for(self, header: JoseHeader) -> VerifyKey:
        alg = header.alg
        if alg == "HS256":
            if self._hs_key is None:
                raise TokenAlgorithmRejected("HS256 is not enabled")
            return self._hs_key
        kid = header.kid
        key = self._lookup(kid, alg)
        if key is None:
            usable = await self._jwks.refresh()
            if not usable:
                raise KeySourceUnavailable("the Auth service's JWKS could not be fetched")
            key = self._lookup(kid, alg)
        if key is None:
            raise TokenUnknownKey("token signed by a key the Auth service does not publish")
        if alg not in key.algorithms:
            raise TokenAlgorithmRejected(f"algorithm {alg} does not match the key type")
        return key

    def _lookup(self, kid: str | None, alg: str) -> VerifyKey | None:
        keyset = self._jwks.keys
        if keyset is None:
            return None
        if kid is not None:
            return keyset.keys.get(kid)
        candidates = [k for k in keyset.keys.values() if alg in k.algorithms]
        return candidates[0] if len(candidates) == 1 else None

    def _decode(self, token: str, key: VerifyKey, alg: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenNotYetValid("token is not valid yet") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError) as exc:
            raise TokenClaimsInvalid(str(exc)) from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenClaimsInvalid(str(exc)) from None
        except jwt.InvalidSignatureError:
            raise TokenBadSignature("token signature does not verify") from None
        except jwt.InvalidAlgorithmError:
            raise TokenAlgorithmRejected("algorithm not allowed for this key") from None
        except jwt.InvalidTokenError as exc:
            raise TokenMalformed(type(exc).__name__) from None
        sub = claims.get("sub")
        exp = claims.get("exp")
        # sub and the session travel on as header values (x-playback-user, -session) and into
        # signed URLs: printable text of bounded length, whoever signed the token.
        if not _header_safe(sub):
            raise TokenClaimsInvalid(f"sub must be 1 to {MAX_CLAIM_CHARS} printable characters")
        if not isinstance(exp, int):
            raise TokenClaimsInvalid("exp must be an integer")
        session = claims.get("sid") or claims.get("jti")
        if session is not None and not isinstance(session, str):
            session = None
        if session is not None and not _header_safe(session):
            raise TokenClaimsInvalid(f"sid/jti must be 1 to {MAX_CLAIM_CHARS} printable characters")
        return Identity(sub=sub, exp=exp, session=session)

    def _remember(self, token: str, ident: Identity) -> None:
        cache = self._cache
        if len(cache) >= self._cache_size:
            now = self._clock()
            for stale in [t for t, i in cache.items() if i.exp + self._leeway <= now]:
                del cache[stale]
            if len(cache) >= self._cache_size:
                for oldest in list(cache)[: self._cache_size // 2]:
                    del cache[oldest]
        cache[token] = ident
