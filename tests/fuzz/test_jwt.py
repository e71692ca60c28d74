"""Fuzzing the JWT compact serialisation: whatever a client puts in ``Authorization: Bearer`` or
``?token=``, authz answers a typed 401 (or admits a validly signed viewer), never anything else.

Tokens are built from arbitrary JSON headers and payloads, encoded right or in the odd ways clients
get base64 wrong, at sizes around the limit; some are signed with the HS256 secret authz trusts, so
the claims behind a valid signature are fuzzed too (a valid signature is the Auth service's word,
but its claims are still parsed, not trusted to be well formed).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any

from hypothesis import event, example, given
from hypothesis import strategies as st

from authz.decision import Allow, CheckInput, Deny
from authz.entitlement import Entitlement, EntitlementCache
from authz.errors import AuthzError, TokenError
from authz.service import Authorizer
from authz.tokens import Identity, JwksCache, TokenVerifier
from devstack.emulators.auth import AuthEmulator, kid_for
from playback_drm.contract import MODE_JWT, MODE_JWT_ONLY
from tests.fuzz import MemoryBound, b64_variants, fuzz_settings, json_values
from tests.support.authz import memory_sessions

ISS = "https://auth.test"
AUD = "playback"
SECRET = b"fuzz-secret-" + b"x" * 32
NOW = 1_900_000_000
MAX_TOKEN = 8192
AUTH = AuthEmulator(issuer=ISS)
KID = kid_for(AUTH.signing_key)
# every code a token can be refused with (401s, and the 403/400 of the decision after it)
_REFUSING: list[Any] = [*TokenError.__subclasses__(), TokenError, *AuthzError.__subclasses__()]
REFUSALS = {cls.code: cls.status for cls in _REFUSING if cls.status < 500}
MEMORY = MemoryBound(4 << 20)


def verifier() -> TokenVerifier:
    async def fetch() -> dict[str, Any]:
        return AUTH.jwks()

    jwks = JwksCache(fetch, frozenset({"RS256", "ES256", "EdDSA"}), min_refresh=0.0)
    return TokenVerifier(
        jwks,
        issuer=ISS,
        audience=AUD,
        algorithms=("RS256", "ES256", "EdDSA", "HS256"),
        hs256_secret=SECRET,
        max_token_bytes=MAX_TOKEN,
        clock=lambda: NOW,
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verify(token: str) -> Identity | None:
    """The verifier's answer: an Identity, or None for a typed 401; anything else fails."""
    refusal: TokenError | None = None
    try:
        with MEMORY("verify"):
            return asyncio.run(verifier().verify(token))
    except TokenError as exc:
        refusal = exc
    assert (refusal.status, REFUSALS.get(refusal.code)) == (401, 401), refusal
    return None


# --- headers and payloads: dictionaries biased towards the members that matter ---------------

HEADER_MEMBERS: dict[str, st.SearchStrategy[Any]] = {
    "alg": st.sampled_from(["RS256", "HS256", "ES256", "EdDSA", "none", "", "rs256"]) | json_values,
    "kid": st.sampled_from([KID, "unknown", ""]) | json_values,
    "typ": st.sampled_from(["JWT", "at+jwt"]) | json_values,
    "cty": json_values,
    "crit": st.lists(st.sampled_from(["b64", "exp", "kid", "x"]), max_size=3) | json_values,
    "b64": st.booleans(),
    "jku": st.just("https://evil.example/jwks.json"),
    "x": json_values,
}
CLAIMS: dict[str, st.SearchStrategy[Any]] = {
    "iss": st.just(ISS) | json_values,
    "aud": st.sampled_from([AUD, [AUD, "other"]]) | json_values,
    "sub": st.sampled_from(["alice", "a\r\nb", "", "x" * 300]) | json_values,
    "exp": st.sampled_from([NOW + 60, NOW - 3600, 2**63]) | json_values,
    "nbf": st.sampled_from([NOW - 60, NOW + 3600]) | json_values,
    "iat": st.sampled_from([NOW, NOW + 3600]) | json_values,
    "sid": st.sampled_from(["s1", "s\x00"]) | json_values,
    "jti": json_values,
}
VALID_HEADER = {"alg": "HS256", "typ": "JWT"}
VALID_CLAIMS = {"iss": ISS, "aud": AUD, "sub": "alice", "exp": NOW + 60, "sid": "s1"}


@st.composite
def changed(
    draw: st.DrawFn, valid: dict[str, Any], members: dict[str, st.SearchStrategy[Any]]
) -> dict[str, Any]:
    """A valid document with one member set to something else, added, or removed."""
    doc = dict(valid)
    name = draw(st.sampled_from(sorted(members)))
    if draw(st.integers(0, 3)):
        doc[name] = draw(members[name])
    else:
        doc.pop(name, None)
    return doc


def _hs256(head: str, body: str) -> str:
    return b64(hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest())


def signed(header: dict[str, Any], payload: dict[str, Any]) -> str:
    head, body = b64(json.dumps(header).encode()), b64(json.dumps(payload).encode())
    return f"{head}.{body}.{_hs256(head, body)}"


FAULTS = ("none", "header", "payload", "encoding", "signature", "raw_header", "chaos")


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """A token signed with the trusted HS256 secret with one fault (or none), or chaos."""
    fault = draw(st.sampled_from(FAULTS))
    header: Any = VALID_HEADER
    payload: Any = VALID_CLAIMS
    if fault == "header":
        header = draw(changed(VALID_HEADER, HEADER_MEMBERS))
    elif fault == "payload":
        payload = draw(changed(VALID_CLAIMS, CLAIMS))
    elif fault == "chaos":
        header = draw(st.fixed_dictionaries({}, optional=HEADER_MEMBERS) | json_values)
        payload = draw(st.fixed_dictionaries({}, optional=CLAIMS) | json_values)
    raw_header = json.dumps(header).encode()
    if fault == "raw_header":
        raw_header = draw(
            st.sampled_from(
                [b'{"alg":"HS256","alg":"HS256"}', b'{"alg":"HS256"', b"\xef\xbb\xbf{}"]
            )
            | st.binary(max_size=40)
        )
    head, body = b64(raw_header), b64(json.dumps(payload).encode())
    if fault in ("encoding", "chaos"):
        head = draw(b64_variants(raw_header))
        body = draw(b64_variants(json.dumps(payload).encode()))
    signature = _hs256(head, body)
    if fault in ("signature", "chaos") and draw(st.booleans()):
        signature = draw(b64_variants(draw(st.binary(max_size=300))))
    separator = "."
    if fault == "chaos":
        separator = draw(st.sampled_from([".", "..", " ", ""]))
    return f"{head}.{body}{separator}{signature}"


@fuzz_settings(0.6)
@given(token=tokens())
# issue 18's report, then what this property found in main before the fix (pyjwt's
# InvalidTokenError for a crit or kid it rejects escaped as a 503; a NUL in sid was admitted)
@example(token=f"{b64(json.dumps({'alg': 'RS256', 'kid': 123}).encode())}.{b64(b'{}')}.AAAA")
@example(token=f"{b64(json.dumps({'alg': 'RS256', 'kid': {'a': 1}}).encode())}.e30.AAAA")
@example(token=signed({**VALID_HEADER, "crit": ["b64"]}, VALID_CLAIMS))
@example(token=signed({**VALID_HEADER, "crit": []}, VALID_CLAIMS))
@example(token=signed(VALID_HEADER, {**VALID_CLAIMS, "sid": "s\x00"}))
@example(token=f"{b64(b'[' * 4000 + b']' * 4000)}.e30.AAAA")
def test_any_token_is_a_viewer_or_a_typed_401(token: str) -> None:
    ident = verify(token)
    event("admitted" if ident is not None else "refused")
    if ident is not None:
        # admitted: only a token signed with the trusted secret, and what it says is header-safe
        assert ident.sub.isprintable()
        assert ident.session is None or ident.session.isprintable()


@fuzz_settings(0.3)
@given(token=st.text(max_size=MAX_TOKEN + 64) | st.binary(max_size=MAX_TOKEN).map(bytes.hex))
def test_any_text_is_a_typed_401(token: str) -> None:
    assert verify(token) is None


@fuzz_settings(0.3)
@given(
    size=st.integers(MAX_TOKEN - 64, MAX_TOKEN + 64),
    header=st.sampled_from(['{"alg":"HS256"}', json.dumps({"alg": "RS256", "kid": KID})]),
)
def test_tokens_around_the_size_limit(size: int, header: str) -> None:
    head = b64(header.encode())
    body = b64(json.dumps({"sub": "a", "pad": "x" * size}).encode())[: max(size - len(head), 0)]
    assert verify(f"{head}.{body}.AAAA") is None


# --- the same through the authorizer: a denial with a documented code, never a 503 -----------


class Granting:
    async def fetch(self, user: str, video: str) -> Entitlement:
        return Entitlement(user, video, True, "premium", None)


def _no_url(path: str, query: str, client_ip: str | None, leeway: int = 0) -> Any:
    raise AssertionError("JWT modes only")


@fuzz_settings(0.4)
@given(
    token=tokens() | st.text(max_size=200),
    where=st.sampled_from(["bearer", "query", "both", "scheme"]),
    mode=st.sampled_from([MODE_JWT, MODE_JWT_ONLY]),
)
def test_the_authorizer_answers_any_token_with_a_documented_status(
    token: str, where: str, mode: str
) -> None:
    authorizer = Authorizer(
        verifier(),
        EntitlementCache(Granting(), ttl=60, deny_ttl=10),
        _no_url,
        memory_sessions(lambda: NOW),
        clock=lambda: NOW,
    )
    authorization = {
        "bearer": f"Bearer {token}",
        "query": None,
        "both": f"Bearer {token}",
        "scheme": f"Basic {token}",
    }[where]
    query = "" if where in ("bearer", "scheme") else "token=" + token
    decision = asyncio.run(
        authorizer.check(
            CheckInput("GET", "/playback/demo/manifest", query, authorization, None, mode)
        )
    )
    if isinstance(decision, Deny):
        assert REFUSALS.get(decision.code) == decision.status, decision
        if decision.status == 401:
            assert decision.www_authenticate is not None
    else:
        assert isinstance(decision, Allow)
        for name, value in decision.headers:
            assert value.isprintable() or (name == "x-playback-plan" and value == ""), decision


def test_refusal_codes_are_the_documented_ones() -> None:
    """The set the properties above accept: every 4xx code of authz.errors, nothing else."""
    assert REFUSALS["token_malformed"] == 401
    assert "authz_internal_error" not in REFUSALS
    assert all(status < 500 for status in REFUSALS.values())
    assert "key_source_unavailable" not in REFUSALS  # a 503: the Auth service, not input
