"""The CORS matrix through the real Envoy (issue 19): every route family, preflight and actual
requests, from an allowed origin, a disallowed one and none, with and without credentials; and
every kind of error answer (authz's, the upstreams', Envoy's own local replies) readable by a page
on an allowed origin.

"With credentials" is what dash.js sends once its license request carries ``Authorization``
(``withCredentials``): the answer must name the exact origin and say
``Access-Control-Allow-Credentials: true``, never ``*``. "Without" is a player's default (the
token in the manifest URL, signed URLs after that). The browser tests
(tests/e2e/test_cross_origin.py) play the same requests in Chromium.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import ssl
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devstack.stack import Stack, StackSettings
from devstack.supervise import free_port
from envoyconf.cors import ALLOW_HEADERS, ALLOW_METHODS, EXPOSE_HEADERS
from playback_drm.problem import PROBLEM_CONTENT_TYPE
from tests.support.stack import Reply, add_subscriber, http

pytestmark = pytest.mark.integration

DISALLOWED = "https://evil.example"


def _allowed(stack: Stack) -> str:
    return stack.site  # the player pages' origin: allowed by the local stack's defaults


def _csv(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


def _clearkey_body(stack: Stack, video: str = "demo") -> bytes:
    doc = json.loads((stack.media_dir / "keys.json").read_text())
    kid = bytes.fromhex(doc["videos"][video]["keys"][0]["kid"])
    b64 = base64.urlsafe_b64encode(kid).rstrip(b"=").decode()
    return json.dumps({"kids": [b64], "type": "temporary"}).encode()


@dataclass(frozen=True)
class Call:
    """One request of a route family, as a player makes it."""

    method: str
    url: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def send(self, extra: dict[str, str]) -> Reply:
        return http(
            self.url, method=self.method, body=self.body, headers=dict(self.headers) | extra
        )


@pytest.fixture(scope="module")
def families(stack: Stack) -> dict[str, tuple[Call, Call]]:
    """Route family -> (a call with credentials, one without), each answered 200."""
    gw = stack.gateway
    token = stack.token(add_subscriber(stack, "cors-matrix"))
    bearer = (("Authorization", f"Bearer {token}"),)
    master = http(f"{gw}/playback/demo/manifest?token={token}")
    assert master.status == 200, master.body
    variant = urllib.parse.urljoin(
        gw + "/", next(line for line in master.body.decode().splitlines() if "pdt=" in line)
    )
    playlist = http(variant).body.decode()
    key = urllib.parse.urljoin(variant, re.findall(r'URI="([^"]+)"', playlist)[0])
    segment = urllib.parse.urljoin(
        variant, next(line for line in playlist.splitlines() if line and line[0] != "#")
    )
    assert "/drm/key/" in key
    assert "/media/" in segment
    license_url = f"{gw}/drm/license/org.w3.clearkey?videoId=demo"
    body = _clearkey_body(stack)
    manifest = f"{gw}/playback/demo/manifest?format=dash"
    certificate = f"{gw}/drm/certificate/com.widevine.alpha"
    return {
        "manifest": (
            Call("GET", manifest, headers=bearer),
            Call("GET", f"{manifest}&token={token}"),
        ),
        "media playlist": (Call("GET", variant, headers=bearer), Call("GET", variant)),
        "media segment": (Call("GET", segment, headers=bearer), Call("GET", segment)),
        "license": (
            Call("POST", license_url, body, (*bearer, ("Content-Type", "application/json"))),
            Call("POST", license_url, body, bearer),  # a license always needs the JWT
        ),
        "hls key": (Call("GET", key, headers=bearer), Call("GET", key)),
        "certificate": (Call("GET", certificate, headers=bearer), Call("GET", certificate)),
    }


FAMILIES = ("manifest", "media playlist", "media segment", "license", "hls key", "certificate")


def _assert_cors(reply: Reply, origin: str) -> None:
    h = reply.headers
    assert h.get("access-control-allow-origin") == origin, h
    assert h.get("access-control-allow-credentials") == "true", h
    assert _csv(h.get("access-control-expose-headers", "")) == set(EXPOSE_HEADERS), h
    assert "origin" in _csv(h.get("vary", "")), h


def _assert_no_cors(reply: Reply) -> None:
    assert "access-control-allow-origin" not in reply.headers, reply.headers
    assert "access-control-expose-headers" not in reply.headers, reply.headers


# ---------------------------------------------------------------------------------- preflight


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("credentials", [True, False], ids=["with-credentials", "without"])
def test_preflight_from_an_allowed_origin(
    stack: Stack, families: dict[str, tuple[Call, Call]], family: str, credentials: bool
) -> None:
    call = families[family][0 if credentials else 1]
    origin = _allowed(stack)
    asked = "authorization, content-type, cmcd-request" if credentials else "cmcd-request"
    reply = http(
        call.url,
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": call.method,
            "Access-Control-Request-Headers": asked,
        },
    )

    assert reply.status == 200, reply.body
    assert reply.headers["access-control-allow-origin"] == origin
    assert reply.headers["access-control-allow-credentials"] == "true"
    assert _csv(reply.headers["access-control-allow-methods"]) == {m.lower() for m in ALLOW_METHODS}
    assert _csv(reply.headers["access-control-allow-headers"]) == set(ALLOW_HEADERS)
    assert _csv(asked) <= set(ALLOW_HEADERS)
    assert reply.headers["access-control-max-age"] == "7200"


@pytest.mark.parametrize("family", FAMILIES)
def test_preflight_from_a_disallowed_origin_is_answered_without_allowing_it(
    stack: Stack, families: dict[str, tuple[Call, Call]], family: str
) -> None:
    call = families[family][0]
    reply = http(
        call.url,
        method="OPTIONS",
        headers={
            "Origin": DISALLOWED,
            "Access-Control-Request-Method": call.method,
            "Access-Control-Request-Headers": "authorization",
        },
    )

    # Envoy answers it (never forwarded to authz or an upstream), and the browser refuses
    assert reply.status == 200, reply.body
    assert reply.body == b""
    assert "access-control-allow-origin" not in reply.headers, reply.headers


# ---------------------------------------------------------------------------- actual requests


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("credentials", [True, False], ids=["with-credentials", "without"])
@pytest.mark.parametrize("origin_kind", ["allowed", "disallowed", "none"])
def test_actual_request(
    stack: Stack,
    families: dict[str, tuple[Call, Call]],
    family: str,
    credentials: bool,
    origin_kind: str,
) -> None:
    call = families[family][0 if credentials else 1]
    origin = {"allowed": _allowed(stack), "disallowed": DISALLOWED, "none": None}[origin_kind]
    reply = call.send({"Origin": origin} if origin else {})

    assert reply.status == 200, (family, reply.body[:300])
    if origin_kind == "allowed":
        _assert_cors(reply, _allowed(stack))
    else:
        # (the origin server answers media with its own "Access-Control-Allow-Origin: *",
        # which the edge drops: the policy is Envoy's alone)
        _assert_no_cors(reply)


def test_localhost_spelling_of_the_demo_origin_is_allowed_too(stack: Stack) -> None:
    origin = f"http://localhost:{stack.ports.site}"
    reply = http(f"{stack.gateway}/drm/certificate/com.widevine.alpha", headers={"Origin": origin})
    _assert_cors(reply, origin)
    other_port = http(
        f"{stack.gateway}/drm/certificate/com.widevine.alpha",
        headers={"Origin": f"http://127.0.0.1:{stack.ports.origin}"},
    )
    _assert_no_cors(other_port)  # an origin differs by port: only the listed ones pass


# ------------------------------------------------------------------------------ error answers


def _problem(reply: Reply) -> str:
    assert reply.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE), reply.headers
    code = reply.json()["code"]
    assert isinstance(code, str)
    return code


def _tamper(url: str) -> str:
    return re.sub(r"(pdt=v1\.)(\d+)", lambda m: m.group(1) + str(int(m.group(2)) + 60), url)


ErrorCase = Callable[[Stack, dict[str, tuple[Call, Call]], dict[str, str]], Reply]
ERRORS: dict[str, tuple[int, str, ErrorCase]] = {
    "authz: no token": (
        401,
        "token_missing",
        lambda s, f, h: http(f"{s.gateway}/playback/demo/manifest", headers=h),
    ),
    "authz: bad token": (
        401,
        "token_malformed",
        lambda s, f, h: http(f"{s.gateway}/playback/demo/manifest?token=x.y.z", headers=h),
    ),
    "authz: not entitled": (
        403,
        "not_entitled",
        lambda s, f, h: http(
            f"{s.gateway}/playback/demo-uhd/manifest?token={s.token('bob')}", headers=h
        ),
    ),
    "authz: tampered signed URL": (
        403,
        "url_token_bad_signature",
        lambda s, f, h: http(_tamper(f["media segment"][1].url), headers=h),
    ),
    "broker: unknown key id": (
        404,
        "unknown_key_id",
        lambda s, f, h: http(
            f["license"][0].url,
            method="POST",
            body=json.dumps({"kids": ["AAAAAAAAAAAAAAAAAAAAAA"], "type": "temporary"}).encode(),
            headers=dict(f["license"][0].headers) | h,
        ),
    ),
    "envoy: no such route": (
        404,
        "not_found",
        lambda s, f, h: http(f"{s.gateway}/nope", headers=h),
    ),
    "envoy: no such route (not the services' metrics)": (
        404,
        "not_found",
        lambda s, f, h: http(f"{s.gateway}/metrics", headers=h),
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_answers_carry_cors_for_an_allowed_origin(
    stack: Stack, families: dict[str, tuple[Call, Call]], case: str
) -> None:
    status, code, make = ERRORS[case]
    allowed = make(stack, families, {"Origin": _allowed(stack)})
    disallowed = make(stack, families, {"Origin": DISALLOWED})

    assert (allowed.status, _problem(allowed)) == (status, code)
    _assert_cors(allowed, _allowed(stack))
    assert (disallowed.status, _problem(disallowed)) == (status, code)
    _assert_no_cors(disallowed)


def test_envoys_rbac_refusal_carries_cors(stack: Stack) -> None:
    """Straight to the sidecar with a client certificate the license route does not admit."""
    assert stack.pki is not None
    ctx = ssl.create_default_context(cafile=str(stack.pki.ca_cert))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(stack.pki.other_cert), str(stack.pki.other_key))
    reply = http(
        f"{stack.sidecar}/drm/license",
        method="POST",
        body=b"{}",
        headers={"Origin": _allowed(stack)},
        context=ctx,
    )
    assert (reply.status, _problem(reply)) == (403, "client_not_allowed")
    _assert_cors(reply, _allowed(stack))


@pytest.fixture(scope="module")
def other_edge(stack: Stack) -> Iterator[Callable[..., Stack]]:
    """Start another Envoy in front of the session's services, with settings of its own (ports
    replaced by ``ports``): Envoy's own refusals on demand, the shared stack left alone."""
    started: list[Stack] = []

    def start(name: str, ports: dict[str, int] | None = None, **settings: Any) -> Stack:
        edge_ports = dataclasses.replace(
            stack.ports,
            gateway=free_port(),
            sidecar=free_port(),
            admin=free_port(),
            **(ports or {}),
        )
        edge = Stack(
            StackSettings(
                root=stack.root,
                ports=edge_ports,
                media_dir=stack.media_dir,
                instance=name,
                **settings,
            )
        )
        started.append(edge)
        edge.start(["envoy"])
        return edge

    yield start
    for edge in started:
        edge.stop()


def test_envoys_rate_limit_refusal_carries_cors(
    stack: Stack, other_edge: Callable[..., Stack]
) -> None:
    edge = other_edge("cors-limits", per_user_rps=1, per_user_burst=1)
    headers = {
        "Authorization": f"Bearer {stack.token(add_subscriber(stack, 'cors-burst'))}",
        "Origin": _allowed(stack),
    }
    # one request a second per user: of five in a row, all but the first few are refused
    replies = [http(f"{edge.gateway}/playback/demo/manifest", headers=headers) for _ in range(5)]
    refused = [r for r in replies if r.status == 429]

    assert refused, [r.status for r in replies]
    for reply in refused:
        assert _problem(reply) == "rate_limited"
        _assert_cors(reply, _allowed(stack))
        assert reply.headers["retry-after"]


def test_envoys_answer_when_authz_is_down_carries_cors(
    stack: Stack, other_edge: Callable[..., Stack]
) -> None:
    """503 authz_unavailable: Envoy's own reply when the authorization service is unreachable."""
    edge = other_edge("cors-no-authz", ports={"authz_grpc": free_port()})  # nothing listens
    reply = http(
        f"{edge.gateway}/playback/demo/manifest?token={stack.token('alice')}",
        headers={"Origin": _allowed(stack)},
    )
    assert (reply.status, _problem(reply)) == (503, "authz_unavailable")
    _assert_cors(reply, _allowed(stack))
