"""Fuzzing signed-URL tokens and paths (``pdt``, :mod:`playback_drm.urlsign`): whatever path and
query a client sends to ``/media/...`` or ``/drm/key/...``, verification answers a typed 403
(``url_token_*``) or proves the token, and what it proves holds: the path is inside the scope,
without traversal, and the token is one we minted for it.

Inputs start from tokens we really mint and are then re-encoded, duplicated, re-separated and
spliced the ways clients, proxies and attackers do.
"""

from __future__ import annotations

import string
from urllib.parse import quote

from hypothesis import event, example, given
from hypothesis import strategies as st

from playback_drm import urlsign
from playback_drm.urlsign import KeyRing, SigningKey, UrlTokenError, VerifiedToken
from tests.fuzz import MemoryBound, fuzz_settings

NOW = 1_900_000_000
RING = KeyRing(
    [SigningKey("k1", b"a" * 32), SigningKey("k0", b"b" * 32, retire_after=NOW - 1)],
    active="k1",
)
SCOPE = "/media/demo/"
IP = "203.0.113.7"
MEMORY = MemoryBound(1 << 20)

path_pieces = st.sampled_from(
    [
        "/media/demo/",
        "/media/other/",
        "/drm/key/demo/",
        "seg.ts",
        "hls/720p/",
        "..",
        ".",
        "%2e%2e",
        "%2E",
        "%2f",
        "%2F",
        "%5c",
        "\\",
        "//",
        "%00",
        "%",
        "%zz",
        "é",
        "%C3%A9",
        "%c0%ae",
        ";x=1",
        "?",
        "#",
        " ",
        "\t",
        "~",
        "%7E",
    ]
)
paths = (
    st.lists(path_pieces | st.text(max_size=8), max_size=8)
    .map("".join)
    .map(lambda p: p if p.startswith("/") else "/" + p)
)


@st.composite
def minted(draw: st.DrawFn) -> tuple[str, str]:
    """(path it was minted for, token): per-URL or prefix, bound or not, expired or not."""
    path = draw(st.sampled_from(["/media/demo/hls/720p/seg.ts", "/drm/key/demo/00112233"]))
    expires = draw(st.sampled_from([NOW + 300, NOW - 1, 10**12 - 1]))
    binding = draw(st.sampled_from(["none", "ip", "session"]))
    scope = SCOPE if draw(st.booleans()) and path.startswith(SCOPE) else None
    token = urlsign.sign(
        RING,
        path,
        expires_at=expires,
        scope=scope,
        client_ip=IP if binding == "ip" else None,
        session_id=draw(st.text(min_size=1, max_size=20)) if binding == "session" else None,
    )
    return path, token


@st.composite
def queries(draw: st.DrawFn, token: str) -> str:
    """``pdt=<token>`` as sent, or re-encoded, duplicated, re-separated, spliced."""
    value = token
    how = draw(st.integers(0, 9))
    if how == 1:
        value = quote(token, safe="")  # a client that encodes ':' and '.'
    elif how == 2:
        at = draw(st.integers(0, len(token)))
        value = token[:at] + draw(st.sampled_from(["%", "%2", "%zz", "%2e", ".", "&", "=", "é"]))
        value += token[at:]
    elif how == 3:
        value = token.upper()
    elif how == 4:
        value = draw(st.text(max_size=60))
    elif how == 5:
        value = ".".join(draw(st.permutations(token.split("."))))
    param = draw(st.sampled_from(["pdt=", "pdt=", "pdt=", "PDT=", "pdt%3D", "pdt ="]))
    parts = [param + value]
    extra = draw(
        st.lists(
            st.sampled_from(["pdt=", "pdt=" + token, "_HLS_msn=3", "a=b", "", "pdt", "=x"]),
            max_size=3,
        )
    )
    parts += extra
    order = draw(st.permutations(parts))
    return draw(st.sampled_from(["&", "&", ";", "&&"])).join(order)


def check(path: str, query: str, ip: str | None, session: str | None) -> VerifiedToken | None:
    try:
        with MEMORY("verify"):
            verified = urlsign.verify(RING, path, query, now=NOW, client_ip=ip, session_id=session)
    except UrlTokenError as exc:
        refusal = exc
    else:
        return _holds(path, verified)
    assert (refusal.status, refusal.code.startswith("url_token_")) == (403, True), refusal
    return None


def _holds(path: str, verified: VerifiedToken) -> VerifiedToken:
    """What a verified token proves."""
    canonical = urlsign.canonical_path(path)
    assert not urlsign.has_traversal(canonical) or verified.scope is None
    if verified.scope is not None:
        assert canonical.startswith(verified.scope)
    assert verified.expires_at >= NOW
    return verified


def _near(path: str) -> st.SearchStrategy[str]:
    """The path itself, or spelled differently: encoded, dotted, doubled slashes, elsewhere."""
    return st.sampled_from(
        [
            path,
            path.replace("/", "//"),
            path.replace("seg", "%73eg"),
            path.replace("720p/", "720p/./"),
            path.replace("720p/", "720p/../../other/"),
            path.replace("/hls/", "/hls%2F"),
            path + "/",
            path.upper(),
        ]
    )


@fuzz_settings(0.5)
@given(data=st.data(), mint=minted())
@example(data=None, mint=("/media/demo/a.ts", "v1.1.k1..."))
def test_any_path_and_query_is_a_typed_403_or_a_token_we_minted(
    data: st.DataObject | None, mint: tuple[str, str]
) -> None:
    minted_for, token = mint
    ip: str | None
    if data is None:
        path, query, ip = "/media/demo/%2e%2e/x", "pdt=" + token, IP
    else:
        path = data.draw(_near(minted_for) | paths)
        query = data.draw(st.just("pdt=" + token) | queries(token))
        ip = data.draw(st.sampled_from([IP, IP, None, "::ffff:" + IP, "bogus"]))
    verified = check(path, query, ip, None)
    event("proved" if verified is not None else "refused")
    if verified is not None and verified.scope is None:
        # a per-URL token proves exactly the path it was minted for (canonical form)
        assert urlsign.canonical_path(path) == urlsign.canonical_path(minted_for)


@fuzz_settings(0.3)
@given(path=st.text(max_size=200), query=st.text(max_size=300))
@example(path="/media/demo/x", query="pdt=%ff")
@example(path="/media/demo/x", query="pdt=%")
def test_any_text_is_a_typed_403(path: str, query: str) -> None:
    assert check(path, query, IP, "s") is None or "pdt=v1." in query


@fuzz_settings(0.3)
@given(
    url=st.text(alphabet=string.printable + "é", max_size=80),
    token=st.from_regex(r"[A-Za-z0-9_.:-]{1,40}", fullmatch=True),
)
def test_stripping_the_token_restores_the_url(url: str, token: str) -> None:
    """What authz removes before the origin sees the request is exactly what extproc added."""
    assert urlsign.strip_token(urlsign.append_token(url, token)) == url


@fuzz_settings(0.3)
@given(path=st.text(max_size=100))
def test_canonical_path_is_total_and_idempotent(path: str) -> None:
    with MEMORY("canonical_path"):
        once = urlsign.canonical_path(path)
    assert urlsign.canonical_path(once) == once
    assert once.isascii()
