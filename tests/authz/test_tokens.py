"""JWT verification: every attack and malformation ends in a typed 401, never a crash."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authz.decision import CheckInput, Deny
from authz.entitlement import Entitlement, EntitlementCache
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
from authz.service import Authorizer
from authz.tokens import JwksCache, TokenVerifier
from devstack.emulators.auth import AuthEmulator, kid_for, sign_token
from playback_drm.contract import MODE_JWT
from tests.support.authz import memory_sessions

ISS = "https://auth.test"
AUD = "playback"
ALLOWED = ("RS256", "ES256", "EdDSA")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeJwks:
    """Serves the emulator's JWKS document and counts fetches (the Auth service is not ours)."""

    def __init__(self, emulator: AuthEmulator, *, fail: bool = False) -> None:
        self.emulator = emulator
        self.fail = fail
        self.fetches = 0

    async def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        if self.fail:
            raise ConnectionError("auth down")
        return self.emulator.jwks()


@pytest.fixture
def auth() -> AuthEmulator:
    return AuthEmulator(issuer=ISS)


def make_verifier(
    fetch: FakeJwks, *, hs: bytes | None = None, algorithms: tuple[str, ...] = ALLOWED, **kw: Any
) -> TokenVerifier:
    jwks = JwksCache(fetch, frozenset(a for a in algorithms if a != "HS256"), min_refresh=0.0)
    return TokenVerifier(
        jwks, issuer=ISS, audience=AUD, algorithms=algorithms, hs256_secret=hs, leeway=5, **kw
    )


async def test_valid_rs256_token_verifies_and_is_cached(auth: AuthEmulator) -> None:
    fetch = FakeJwks(auth)
    verifier = make_verifier(fetch)
    token = auth.token("alice")
    ident = await verifier.verify(token)
    assert ident.sub == "alice"
    assert ident.session is not None
    again = await verifier.verify(token)
    assert again is ident
    assert verifier.cache_hits == 1
    assert verifier.cache_misses == 1
    assert fetch.fetches == 1


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        ("alg_none", TokenAlgorithmRejected),
        ("hs256_with_public_key", TokenAlgorithmRejected),
        ("bad_signature", TokenBadSignature),
        ("garbage", TokenMalformed),
        ("two_segments", TokenMalformed),
        ("non_ascii", TokenMalformed),
        ("oversized", TokenMalformed),
        ("header_not_json", TokenMalformed),
    ],
)
async def test_attacks_and_malformed_tokens_are_rejected(
    auth: AuthEmulator, mutate: str, error: type[Exception]
) -> None:
    verifier = make_verifier(FakeJwks(auth))
    good = auth.token("alice")
    header, payload, sig = good.split(".")
    if mutate == "alg_none":
        none_header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        token = f"{none_header}.{payload}."
    elif mutate == "hs256_with_public_key":
        pem = auth.signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        hs_header = b64(json.dumps({"alg": "HS256", "kid": kid_for(auth.signing_key)}).encode())
        import hashlib
        import hmac

        mac = hmac.new(pem, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest()
        token = f"{hs_header}.{payload}.{b64(mac)}"
    elif mutate == "bad_signature":
        token = f"{header}.{payload}.{sig[:-4]}AAAA"
    elif mutate == "garbage":
        token = "not.a.jwt"
    elif mutate == "two_segments":
        token = f"{header}.{payload}"
    elif mutate == "non_ascii":
        token = f"{header}.{payload}.é"
    elif mutate == "oversized":
        token = f"{header}.{'A' * 9000}.{sig}"
    else:
        token = f"{b64(b'{not json')}.{payload}.{sig}"
    with pytest.raises(error):
        await verifier.verify(token)


async def test_expired_not_yet_valid_and_claims(auth: AuthEmulator) -> None:
    verifier = make_verifier(FakeJwks(auth))
    key = auth.signing_key
    now = time.time()
    with pytest.raises(TokenExpired):
        await verifier.verify(sign_token(key, "alice", issuer=ISS, ttl=60, now=now - 3600))
    future = sign_token(key, "alice", issuer=ISS, ttl=600, now=now + 600)
    with pytest.raises(TokenNotYetValid):
        await verifier.verify(future)
    with pytest.raises(TokenClaimsInvalid):
        await verifier.verify(sign_token(key, "alice", issuer=ISS, audience="other"))
    with pytest.raises(TokenClaimsInvalid):
        await verifier.verify(sign_token(key, "alice", issuer="https://evil.test"))


async def test_cached_token_expires_from_cache() -> None:
    auth = AuthEmulator(issuer=ISS)
    clock = [time.time()]
    jwks = JwksCache(FakeJwks(auth), frozenset(ALLOWED), min_refresh=0.0)
    verifier = TokenVerifier(
        jwks, issuer=ISS, audience=AUD, algorithms=ALLOWED, leeway=0, clock=lambda: clock[0]
    )
    token = sign_token(auth.signing_key, "alice", issuer=ISS, ttl=30)
    await verifier.verify(token)
    assert verifier.cached(token) is not None
    clock[0] += 31
    assert verifier.cached(token) is None


async def test_unknown_key_refreshes_jwks_once_then_rejects(auth: AuthEmulator) -> None:
    fetch = FakeJwks(auth)
    verifier = make_verifier(fetch)
    await verifier.verify(auth.token("alice"))
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(TokenUnknownKey):
        await verifier.verify(sign_token(stranger, "alice", issuer=ISS))
    assert fetch.fetches == 2  # one refresh for the unknown kid


async def test_rotation_new_kid_triggers_refresh_and_old_tokens_still_verify(
    auth: AuthEmulator,
) -> None:
    fetch = FakeJwks(auth)
    verifier = make_verifier(fetch)
    old = auth.token("alice")
    await verifier.verify(old)
    auth.rotate()
    new = auth.token("bob")
    assert (await verifier.verify(new)).sub == "bob"
    verifier._cache.clear()  # force crypto again for the old token
    assert (await verifier.verify(old)).sub == "alice"


async def test_unknown_kid_refresh_is_rate_bounded(auth: AuthEmulator) -> None:
    fetch = FakeJwks(auth)
    jwks = JwksCache(fetch, frozenset(ALLOWED), min_refresh=3600)
    verifier = TokenVerifier(jwks, issuer=ISS, audience=AUD, algorithms=ALLOWED)
    await jwks.refresh(force=True)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for _ in range(20):
        with pytest.raises(TokenUnknownKey):
            await verifier.verify(sign_token(stranger, "x", issuer=ISS))
    assert fetch.fetches == 1


async def test_jwks_unreachable_without_keys_is_503_class(auth: AuthEmulator) -> None:
    verifier = make_verifier(FakeJwks(auth, fail=True))
    with pytest.raises(KeySourceUnavailable):
        await verifier.verify(auth.token("alice"))


async def test_jwks_failure_keeps_previous_keys(auth: AuthEmulator) -> None:
    fetch = FakeJwks(auth)
    verifier = make_verifier(fetch)
    token = auth.token("alice")
    await verifier._jwks.refresh(force=True)
    fetch.fail = True
    assert await verifier._jwks.refresh(force=True)  # still usable
    assert (await verifier.verify(token)).sub == "alice"


async def test_es256_and_eddsa_keys_verify_only_their_algorithm() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec1"},
            {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ed_key.public_key())), "kid": "ed1"},
        ]
    }

    async def fetch() -> dict[str, Any]:
        return jwks

    verifier = TokenVerifier(
        JwksCache(fetch, frozenset(ALLOWED), min_refresh=0),
        issuer=ISS,
        audience=AUD,
        algorithms=ALLOWED,
    )
    claims = {"sub": "alice", "iss": ISS, "aud": AUD, "exp": int(time.time()) + 60}
    es = jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "ec1"})
    ed = jwt.encode(claims, ed_key, algorithm="EdDSA", headers={"kid": "ed1"})
    assert (await verifier.verify(es)).sub == "alice"
    assert (await verifier.verify(ed)).sub == "alice"
    # EdDSA header pointed at the EC key: the key type decides, not the header.
    confused = jwt.encode(claims, ed_key, algorithm="EdDSA", headers={"kid": "ec1"})
    with pytest.raises(TokenAlgorithmRejected):
        await verifier.verify(confused)


async def test_hs256_only_when_configured(auth: AuthEmulator) -> None:
    secret = b"s" * 32
    claims = {"sub": "svc", "iss": ISS, "aud": AUD, "exp": int(time.time()) + 60}
    token = jwt.encode(claims, secret, algorithm="HS256")
    with pytest.raises(TokenAlgorithmRejected):
        await make_verifier(FakeJwks(auth)).verify(token)
    enabled = make_verifier(FakeJwks(auth), hs=secret, algorithms=(*ALLOWED, "HS256"))
    assert (await enabled.verify(token)).sub == "svc"


async def test_missing_sub_or_exp_is_rejected(auth: AuthEmulator) -> None:
    verifier = make_verifier(FakeJwks(auth))
    kid = kid_for(auth.signing_key)
    no_exp = jwt.encode(
        {"sub": "a", "iss": ISS, "aud": AUD},
        auth.signing_key,
        algorithm="RS256",
        headers={"kid": kid},
    )
    with pytest.raises(TokenClaimsInvalid):
        await verifier.verify(no_exp)
    no_sub = jwt.encode(
        {"iss": ISS, "aud": AUD, "exp": int(time.time()) + 60},
        auth.signing_key,
        algorithm="RS256",
        headers={"kid": kid},
    )
    with pytest.raises(TokenClaimsInvalid):
        await verifier.verify(no_sub)


async def test_without_any_key_refresh_retries_soon(auth: AuthEmulator) -> None:
    clock = [0.0]
    fetch = FakeJwks(auth, fail=True)
    jwks = JwksCache(fetch, frozenset(ALLOWED), min_refresh=60, clock=lambda: clock[0])
    assert not await jwks.refresh(force=True)  # Auth down at start-up
    fetch.fail = False
    clock[0] = 0.5
    assert not await jwks.refresh()  # bounded: not yet
    clock[0] = 1.5
    assert await jwks.refresh()  # retried well before min_refresh (60 s)
    assert fetch.fetches == 2


# --- the JOSE header's shape (issue 18): any header an outsider writes is a 401, never a 503 ----

HEADER_DEFECTS = {
    "kid_number": {"alg": "RS256", "kid": 123},
    "kid_object": {"alg": "RS256", "kid": {"a": 1}},
    "kid_empty": {"alg": "RS256", "kid": ""},
    "alg_list": {"alg": ["RS256"]},
    "alg_number": {"alg": 256},
    "alg_missing": {"typ": "JWT"},
    "typ_number": {"alg": "RS256", "typ": 1},
    "cty_object": {"alg": "RS256", "cty": {}},
    "crit_unknown_extension": {"alg": "RS256", "crit": ["exp"], "exp": 1},
    "crit_registered_name": {"alg": "RS256", "crit": ["kid"], "kid": "k"},
    "crit_names_absent_parameter": {"alg": "RS256", "crit": ["x-ext"]},
    "crit_not_a_list": {"alg": "RS256", "crit": "x"},
    "crit_empty": {"alg": "RS256", "crit": []},
    "crit_number_entry": {"alg": "RS256", "crit": [1]},
    "crit_duplicates": {"alg": "RS256", "crit": ["e", "e"], "e": 1},
    "b64_unencoded_payload": {"alg": "RS256", "crit": ["b64"], "b64": False},
    "b64_without_crit": {"alg": "RS256", "b64": False},
}


@pytest.mark.parametrize("name", sorted(HEADER_DEFECTS))
async def test_jose_header_shape_is_checked_first(auth: AuthEmulator, name: str) -> None:
    """A header pyjwt would trip over (kid 123, an unknown crit) is our 401 token_malformed,
    before any key is looked up or any signature checked."""
    fetch = FakeJwks(auth)
    verifier = make_verifier(fetch)
    _, payload, sig = auth.token("alice").split(".")
    header = b64(json.dumps(HEADER_DEFECTS[name]).encode())
    with pytest.raises(TokenMalformed):
        await verifier.verify(f"{header}.{payload}.{sig}")
    assert fetch.fetches == 0  # refused before the JWKS was consulted


@pytest.mark.parametrize(
    "raw_header",
    [
        b'{"alg":"RS256","alg":"none"}',  # duplicate member: two readers, two headers
        b'{"alg":"RS256","exp":NaN}',  # not JSON
        b'["RS256"]',  # not an object
        b'"RS256"',
        b"null",
        b"\xff\xfe{}",  # not UTF-8
        b"[" * 3000 + b"]" * 3000,  # deeper than the JSON parser follows
    ],
)
async def test_jose_header_json_is_strict(auth: AuthEmulator, raw_header: bytes) -> None:
    verifier = make_verifier(FakeJwks(auth))
    _, payload, sig = auth.token("alice").split(".")
    with pytest.raises(TokenMalformed):
        await verifier.verify(f"{b64(raw_header)}.{payload}.{sig}")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda h, p, s: f"{h}=.{p}.{s}",  # padding
        lambda h, p, s: f"{h.replace('-', '+').replace('_', '/')}+/.{p}.{s}",  # standard alphabet
        lambda h, p, s: f"{h}.{p}A.{s}",  # a length base64 cannot have (4n + 1)
        lambda h, p, s: f".{p}.{s}",  # empty header
        lambda h, p, s: f"{h}.{p}.{s}.{s}",  # four segments
        lambda h, p, s: f"{h} .{p}.{s}",
    ],
)
async def test_segments_are_unpadded_base64url(auth: AuthEmulator, mangle: Any) -> None:
    verifier = make_verifier(FakeJwks(auth))
    header, payload, sig = auth.token("alice").split(".")
    with pytest.raises(TokenMalformed):
        await verifier.verify(mangle(header, payload, sig))


async def test_a_signed_token_with_unprintable_identity_is_refused() -> None:
    """sub and sid become header values: even a validly signed token cannot smuggle a line
    break into x-playback-user."""
    secret = b"s" * 32
    verifier = make_verifier(FakeJwks(AuthEmulator(issuer=ISS)), hs=secret, algorithms=("HS256",))
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "exp": now + 60}
    for bad in ({"sub": "alice\r\nx-playback-plan: premium"}, {"sub": "a", "sid": "s\x00"}):
        with pytest.raises(TokenClaimsInvalid):
            await verifier.verify(jwt.encode({**claims, **bad}, secret, algorithm="HS256"))
    ok = await verifier.verify(jwt.encode({**claims, "sub": "ålice", "sid": "s1"}, secret))
    assert (ok.sub, ok.session) == ("ålice", "s1")


async def test_authorizer_answers_a_hostile_header_with_401_not_503(auth: AuthEmulator) -> None:
    """The defect of issue 18: ``"kid": 123`` made authz answer 503 authz_internal_error."""
    verifier = make_verifier(FakeJwks(auth))
    authorizer = Authorizer(
        verifier, EntitlementCache(Granting(), ttl=60, deny_ttl=10), _no_url, memory_sessions()
    )
    _, payload, sig = auth.token("alice").split(".")
    for header in ({"alg": "RS256", "kid": 123}, {"alg": "RS256", "crit": ["x"], "x": 1}):
        token = f"{b64(json.dumps(header).encode())}.{payload}.{sig}"
        decision = await authorizer.check(
            CheckInput("GET", "/playback/demo/manifest", "", f"Bearer {token}", None, MODE_JWT)
        )
        assert isinstance(decision, Deny)
        assert (decision.status, decision.code) == (401, "token_malformed")
        assert decision.www_authenticate is not None


class Granting:
    async def fetch(self, user: str, video: str) -> Entitlement:
        return Entitlement(user, video, True, "premium", None)


def _no_url(path: str, query: str, client_ip: str | None, leeway: int = 0) -> Any:
    raise AssertionError("no signed URL in these tests")
