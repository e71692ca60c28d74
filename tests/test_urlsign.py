"""playback_drm.urlsign: the pdt token format, key rotation, every refusal code, properties."""

from __future__ import annotations

import base64
import hmac
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from playback_drm import urlsign
from playback_drm.problem import PlaybackError
from playback_drm.settings import ConfigError
from playback_drm.urlsign import (
    HmacSha256,
    KeyRing,
    SigningKey,
    UrlTokenBadSignature,
    UrlTokenBindingMismatch,
    UrlTokenError,
    UrlTokenExpired,
    UrlTokenMalformed,
    UrlTokenMissing,
    UrlTokenOutOfScope,
    UrlTokenUnknownKey,
    append_token,
    canonical_path,
    expiry_for,
    sign,
    strip_token,
    verify,
)

SECRET_A = bytes(range(32))
SECRET_B = bytes(range(100, 140))
NOW = 1_700_000_000
EXP = NOW + 300
PATH = "/media/demo/hls/720p/seg_00001.ts"
SCOPE = "/media/demo/"


def b64(secret: bytes) -> str:
    return base64.b64encode(secret).decode()


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.from_spec(f"k2:{b64(SECRET_A)},k1:{b64(SECRET_B)}")


def q(token: str) -> str:
    return "pdt=" + token


# --- format ------------------------------------------------------------------------------------


def test_token_layout_and_signature_are_the_documented_hmac(ring: KeyRing) -> None:
    token = sign(ring, PATH, expires_at=EXP)
    version, exp, kid, scope, binding, sig = token.split(".")
    assert (version, exp, kid, scope, binding) == ("v1", str(EXP), "k2", "", "")
    header = token.rsplit(".", 1)[0]
    expected = hmac.digest(SECRET_A, f"{header}\n{PATH}".encode(), "sha256")
    assert sig == base64.urlsafe_b64encode(expected).rstrip(b"=").decode()


def test_prefix_token_encodes_the_scope_and_ignores_the_path(ring: KeyRing) -> None:
    token = sign(ring, "", expires_at=EXP, scope=SCOPE)
    scope_field = token.split(".")[3]
    assert base64.urlsafe_b64decode(scope_field + "==") == SCOPE.encode()
    assert sign(ring, "/anything", expires_at=EXP, scope=SCOPE) == token
    header = token.rsplit(".", 1)[0]
    expected = hmac.digest(SECRET_A, f"{header}\n".encode(), "sha256")
    assert token.endswith(base64.urlsafe_b64encode(expected).rstrip(b"=").decode())


@given(
    path=st.text(min_size=0, max_size=60).map(lambda s: "/" + s),
    scope=st.sampled_from([None, "/media/demo/", "/a/b c/"]),
    ip=st.sampled_from([None, "203.0.113.9", "2001:db8::1"]),
    session=st.sampled_from([None, "sess-1", "ünï"]),
)
def test_token_is_url_safe_without_dollar_or_ampersand(
    path: str, scope: str | None, ip: str | None, session: str | None
) -> None:
    ring = KeyRing([SigningKey("k", SECRET_A)], active="k")
    if scope is not None:
        scope = canonical_path(scope)
    token = sign(
        ring, path, expires_at=EXP, scope=scope, client_ip=ip, session_id=None if ip else session
    )
    assert set(token) <= set(string.ascii_letters + string.digits + "-_.:")


def test_precomputed_hmac_equals_the_standard_library() -> None:
    for size in (32, 64, 65, 200):
        secret = bytes(range(size % 256)) * (size // 256 + 1)
        secret = secret[:size]
        assert HmacSha256(secret).digest(b"message") == hmac.digest(secret, b"message", "sha256")


# --- round trips --------------------------------------------------------------------------------


def test_per_url_round_trip(ring: KeyRing) -> None:
    verified = verify(ring, PATH, q(sign(ring, PATH, expires_at=EXP)), now=NOW, client_ip=None)
    assert verified == urlsign.VerifiedToken(
        kid="k2", expires_at=EXP, scope=None, binding="none", session_id=None
    )


def test_prefix_round_trip_covers_every_path_under_the_scope(ring: KeyRing) -> None:
    token = sign(ring, "", expires_at=EXP, scope=SCOPE)
    for path in (PATH, "/media/demo/manifest.mpd", "/media/demo/a/b/c.m4s"):
        assert verify(ring, path, q(token), now=NOW, client_ip=None).scope == SCOPE


def test_other_query_parameters_are_not_covered(ring: KeyRing) -> None:
    token = sign(ring, PATH, expires_at=EXP)
    query = f"_HLS_msn=12&pdt={token}&_HLS_part=3&_HLS_skip=YES"
    assert verify(ring, PATH, query, now=NOW, client_ip=None).kid == "k2"


def test_client_reencoding_of_the_path_still_verifies(ring: KeyRing) -> None:
    token = sign(ring, "/media/demo/a b/é~x.ts", expires_at=EXP)
    as_sent = "/media/demo/a%20b/%c3%a9%7Ex.ts"
    assert verify(ring, as_sent, q(token), now=NOW, client_ip=None).kid == "k2"
    # Envoy's merge_slashes (or a player) may collapse "//": the signature covers merged slashes
    doubled = sign(ring, "/media/demo//hls//a.ts", expires_at=EXP)
    assert verify(ring, "/media/demo/hls/a.ts", q(doubled), now=NOW, client_ip=None)


def test_percent_encoded_colon_in_the_token_is_accepted(ring: KeyRing) -> None:
    token = sign(ring, PATH, expires_at=EXP, session_id="s1")
    encoded = token.replace(":", "%3A")
    assert verify(ring, PATH, q(encoded), now=NOW, client_ip=None).session_id == "s1"


def test_ip_binding(ring: KeyRing) -> None:
    token = sign(ring, PATH, expires_at=EXP, client_ip="203.0.113.7")
    assert "203.0.113.7" not in token
    assert verify(ring, PATH, q(token), now=NOW, client_ip="203.0.113.7").binding == "ip"
    # IPv4-mapped IPv6 is the same client
    assert verify(ring, PATH, q(token), now=NOW, client_ip="::ffff:203.0.113.7").binding == "ip"
    for other in ("203.0.113.8", None, "not-an-ip"):
        with pytest.raises(UrlTokenBindingMismatch):
            verify(ring, PATH, q(token), now=NOW, client_ip=other)


def test_session_binding_returns_the_session_and_compares_when_given(ring: KeyRing) -> None:
    token = sign(ring, "", expires_at=EXP, scope=SCOPE, session_id="sess-42")
    verified = verify(ring, PATH, q(token), now=NOW, client_ip=None)
    assert (verified.binding, verified.session_id) == ("session", "sess-42")
    assert verify(ring, PATH, q(token), now=NOW, client_ip=None, session_id="sess-42")
    with pytest.raises(UrlTokenBindingMismatch):
        verify(ring, PATH, q(token), now=NOW, client_ip=None, session_id="sess-43")


def test_sign_refuses_bad_inputs(ring: KeyRing) -> None:
    with pytest.raises(ValueError, match="not both"):
        sign(ring, PATH, expires_at=EXP, client_ip="1.2.3.4", session_id="s")
    with pytest.raises(ValueError, match="IP address"):
        sign(ring, PATH, expires_at=EXP, client_ip="nope")
    with pytest.raises(ValueError, match="start"):
        sign(ring, "relative/path", expires_at=EXP)
    for scope in ("/media/demo", "media/demo/", "/media/../x/", "/media/%2e%2e/", "/m/%7e/"):
        with pytest.raises(ValueError, match="scope"):
            sign(ring, "", expires_at=EXP, scope=scope)


# --- every refusal code -------------------------------------------------------------------------


def test_missing(ring: KeyRing) -> None:
    for query in ("", "a=1", "xpdt=abc", "pdtx=1"):
        with pytest.raises(UrlTokenMissing) as info:
            verify(ring, PATH, query, now=NOW, client_ip=None)
        assert (info.value.code, info.value.status) == ("url_token_missing", 403)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "v1.1.k2...",
        "v2.{exp}.k2...{sig}",
        "v1.-5.k2...{sig}",
        "v1.\uff11\uff12.k2...{sig}",  # full-width digits: isdigit() but not ASCII
        "v1.{exp}.k2...short",
        "v1.{exp}.k2.!!!..{sig}",
        "v1.{exp}.k2..x:abc.{sig}",
        "v1.{exp}.k2..i:short.{sig}",
        "v1.{exp}.k2..s:.{sig}",
        "v1.{exp}.k2..s:***.{sig}",
        "v1.{exp}.k2.{sig}",
    ],
)
def test_malformed(ring: KeyRing, value: str) -> None:
    value = value.format(exp=EXP, sig="A" * 43)
    with pytest.raises(UrlTokenMalformed) as info:
        verify(ring, PATH, q(value), now=NOW, client_ip=None)
    assert info.value.code == "url_token_malformed"


def test_duplicate_token_parameters_are_malformed(ring: KeyRing) -> None:
    token = sign(ring, PATH, expires_at=EXP)
    with pytest.raises(UrlTokenMalformed):
        verify(ring, PATH, f"pdt={token}&pdt={token}", now=NOW, client_ip=None)


def test_expired_with_leeway(ring: KeyRing) -> None:
    token = sign(ring, PATH, expires_at=EXP)
    assert verify(ring, PATH, q(token), now=EXP, client_ip=None)
    with pytest.raises(UrlTokenExpired) as info:
        verify(ring, PATH, q(token), now=EXP + 1, client_ip=None)
    assert info.value.code == "url_token_expired"
    assert verify(ring, PATH, q(token), now=EXP + 5, client_ip=None, leeway=5)


def test_unknown_key(ring: KeyRing) -> None:
    other = KeyRing([SigningKey("k9", SECRET_A)], active="k9")
    with pytest.raises(UrlTokenUnknownKey) as info:
        verify(ring, PATH, q(sign(other, PATH, expires_at=EXP)), now=NOW, client_ip=None)
    assert info.value.code == "url_token_unknown_key"


def test_bad_signature_for_a_changed_path_exp_or_signature(ring: KeyRing) -> None:
    token = sign(ring, PATH, expires_at=EXP)
    with pytest.raises(UrlTokenBadSignature) as info:
        verify(ring, PATH.replace("00001", "00002"), q(token), now=NOW, client_ip=None)
    assert info.value.code == "url_token_bad_signature"
    longer = token.replace(f".{EXP}.", f".{EXP + 3600}.")
    with pytest.raises(UrlTokenBadSignature):
        verify(ring, PATH, q(longer), now=NOW, client_ip=None)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(UrlTokenBadSignature):
        verify(ring, PATH, q(flipped), now=NOW, client_ip=None)
    # a per-URL token cannot be turned into a prefix token
    header, sig = token.rsplit(".", 1)
    widened = header.replace("k2..", "k2.L21lZGlhLw.") + "." + sig
    with pytest.raises(UrlTokenBadSignature):
        verify(ring, "/media/other/x.ts", q(widened), now=NOW, client_ip=None)


@pytest.mark.parametrize(
    "path",
    [
        "/media/other/seg.ts",
        "/media/demonstration/seg.ts",
        "/media/demo/../other/seg.ts",
        "/media/demo/%2e%2e/other/seg.ts",
        "/media/demo/%2E./other/seg.ts",
        "/media/demo/a%2f..%2f..%2fother/seg.ts",
        "/media/demo/a%5c..%5cother",
        "/media/demo/a\\..\\other",
        "/media/demo/./seg.ts",
        "/media/demo/..",
    ],
)
def test_out_of_scope_and_traversal(ring: KeyRing, path: str) -> None:
    token = sign(ring, "", expires_at=EXP, scope=SCOPE)
    with pytest.raises(UrlTokenOutOfScope) as info:
        verify(ring, path, q(token), now=NOW, client_ip=None)
    assert info.value.code == "url_token_out_of_scope"


def test_every_error_is_a_403_playback_error_with_a_stable_code() -> None:
    codes = {
        cls.code
        for cls in (
            UrlTokenMissing,
            UrlTokenMalformed,
            UrlTokenExpired,
            UrlTokenUnknownKey,
            UrlTokenBadSignature,
            UrlTokenOutOfScope,
            UrlTokenBindingMismatch,
        )
        if issubclass(cls, UrlTokenError) and issubclass(cls, PlaybackError) and cls.status == 403
    }
    assert codes == {
        "url_token_missing",
        "url_token_malformed",
        "url_token_expired",
        "url_token_unknown_key",
        "url_token_bad_signature",
        "url_token_out_of_scope",
        "url_token_binding_mismatch",
    }
    problem = UrlTokenExpired().to_problem().to_dict()
    assert (problem["status"], problem["code"]) == (403, "url_token_expired")


# --- keys and rotation --------------------------------------------------------------------------


def test_rotation_old_key_verifies_until_retired_new_key_signs() -> None:
    old = KeyRing([SigningKey("old", SECRET_A)], active="old")
    old_token = sign(old, PATH, expires_at=EXP)
    # step 1: pre-publish the new key (verifies, does not sign)
    prepublished = KeyRing([SigningKey("old", SECRET_A), SigningKey("new", SECRET_B)], active="old")
    assert sign(prepublished, PATH, expires_at=EXP).split(".")[2] == "old"
    # step 2: rotate: the new key signs, the old one verifies until it retires
    rotated = prepublished.rotated(SigningKey("new", SECRET_B), retire_previous_after=EXP)
    new_token = sign(rotated, PATH, expires_at=EXP)
    assert new_token.split(".")[2] == "new"
    assert verify(rotated, PATH, q(old_token), now=NOW, client_ip=None).kid == "old"
    assert verify(rotated, PATH, q(new_token), now=NOW, client_ip=None).kid == "new"
    # the old ring (other replicas not yet rotated) accepts the new token thanks to step 1
    assert verify(prepublished, PATH, q(new_token), now=NOW, client_ip=None).kid == "new"
    # after retire_after the old key is gone, even for a token that claims a later expiry
    late = KeyRing([SigningKey("old", SECRET_A)], active="old")
    late_token = sign(late, PATH, expires_at=EXP + 1000)
    with pytest.raises(UrlTokenUnknownKey, match="retired"):
        verify(rotated, PATH, q(late_token), now=EXP + 1, client_ip=None)


def test_key_ring_from_spec_accepts_base64_variants_and_retire_after() -> None:
    url_safe = base64.urlsafe_b64encode(SECRET_B).decode().rstrip("=")
    ring = KeyRing.from_spec(f" a:{b64(SECRET_A)} , b:{url_safe}:{NOW} ,")
    assert ring.active.kid == "a"
    assert ring.kids == ("a", "b")
    key_b = ring.get("b")
    assert key_b is not None
    assert (key_b.secret, key_b.retire_after) == (SECRET_B, NOW)


def test_key_ring_from_mapping_like_vault_kv() -> None:
    ring = KeyRing.from_mapping({"a": b64(SECRET_A), "b": SECRET_B}, active="b")
    assert ring.active.secret == SECRET_B
    assert ring.get("a") is not None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "contains no keys"),
        ("nokey", "kid:base64secret"),
        ("a:" + b64(b"short"), "at least 32"),
        ("a:***", "not base64"),
        ("bad.kid:" + b64(SECRET_A), "key id"),
        (f"a:{b64(SECRET_A)},a:{b64(SECRET_B)}", "twice"),
        (f"a:{b64(SECRET_A)}:soon", "retire_after"),
        (f"a:{b64(SECRET_A)}:{NOW}", "active key"),
    ],
)
def test_key_ring_spec_errors_name_the_variable_not_the_secret(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        KeyRing.from_spec(spec)
    assert b64(SECRET_A) not in str(info.value)
    if "twice" not in message and "active" not in message:
        assert "URL_SIGNING_KEYS" in str(info.value)


def test_repr_never_shows_secrets(ring: KeyRing) -> None:
    assert b64(SECRET_A) not in repr(ring)
    assert repr(SECRET_A) not in repr(ring.active)


# --- helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/a.ts", "/a.ts?pdt=T"),
        ("/a.ts?x=1", "/a.ts?x=1&pdt=T"),
        ("/a.ts?", "/a.ts?&pdt=T"),
        ("/a.ts#t=1", "/a.ts?pdt=T#t=1"),
        ("https://h/a.ts?x=1#f", "https://h/a.ts?x=1&pdt=T#f"),
    ],
)
def test_append_and_strip_are_inverse(url: str, expected: str) -> None:
    assert append_token(url, "T") == expected
    assert strip_token(expected) == url


def test_strip_keeps_parameters_a_player_added_after_the_token() -> None:
    assert strip_token("/p.m3u8?pdt=T&_HLS_msn=4&_HLS_part=1") == "/p.m3u8?_HLS_msn=4&_HLS_part=1"
    assert strip_token("/p.m3u8?x=1&pdt=T&_HLS_msn=4") == "/p.m3u8?x=1&_HLS_msn=4"
    assert strip_token("/p.m3u8?x=1") == "/p.m3u8?x=1"


def test_expiry_windows_are_stable_and_at_least_ttl() -> None:
    assert expiry_for(1000, 300, 60) == 1320
    assert expiry_for(1019.5, 300, 60) == 1320
    assert expiry_for(1020, 300, 60) == 1320
    assert expiry_for(1020.1, 300, 60) == 1380
    assert expiry_for(1000.2, 300, 0) == 1301


@given(now=st.floats(0, 2e9), ttl=st.integers(1, 86400), window=st.integers(0, 3600))
def test_expiry_property(now: float, ttl: int, window: int) -> None:
    expiry = expiry_for(now, ttl, window)
    assert now + ttl <= expiry < now + ttl + max(window, 1) + 1
    if window > 1:
        assert expiry % window == 0


@given(st.text(max_size=40))
def test_canonical_path_is_idempotent(path: str) -> None:
    once = canonical_path(path)
    assert canonical_path(once) == once


# --- properties ---------------------------------------------------------------------------------

PROPERTY_RING = KeyRing([SigningKey("k", SECRET_A), SigningKey("j", SECRET_B)], active="k")
paths = st.text(max_size=80).map(lambda s: "/" + s)


@given(path=paths, exp=st.integers(NOW, NOW + 10**6), ip=st.ip_addresses().map(str))
def test_property_sign_then_verify(path: str, exp: int, ip: str) -> None:
    token = sign(PROPERTY_RING, path, expires_at=exp, client_ip=ip)
    verified = verify(PROPERTY_RING, path, "pdt=" + token, now=NOW, client_ip=ip)
    assert verified.expires_at == exp


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    scope_mode=st.booleans(),
    data=st.data(),
)
def test_property_any_single_character_change_fails(scope_mode: bool, data: st.DataObject) -> None:
    token = sign(
        PROPERTY_RING, PATH, expires_at=EXP, scope=SCOPE if scope_mode else None, session_id="s"
    )
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from(string.ascii_letters + string.digits + "-_.:"))
    assume(replacement != token[index])
    mutated = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(UrlTokenError):
        verify(PROPERTY_RING, PATH, "pdt=" + mutated, now=NOW, client_ip=None)


@given(garbage=st.text(max_size=200), path=st.text(max_size=30))
def test_property_garbage_only_raises_typed_errors(garbage: str, path: str) -> None:
    with pytest.raises(UrlTokenError):
        verify(PROPERTY_RING, "/" + path, "pdt=" + garbage, now=NOW, client_ip="1.2.3.4")


@given(
    fields=st.lists(
        st.text(alphabet=string.ascii_letters + string.digits + "-_:%", max_size=50),
        min_size=6,
        max_size=6,
    )
)
def test_property_well_shaped_garbage_only_raises_typed_errors(fields: list[str]) -> None:
    fields[0] = "v1"
    with pytest.raises(UrlTokenError):
        verify(PROPERTY_RING, PATH, "pdt=" + ".".join(fields), now=NOW, client_ip=None)
