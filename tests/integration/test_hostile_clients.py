"""5xx are ours alone (issue 18): a hostile-client matrix through the real Envoy of the local stack.

Malformed tokens, oversized headers and bodies, encoded traversal, forged identity (x-playback-*)
and forwarding headers, Host header games, admin paths, odd methods and broken HTTP, sent byte for
byte to the gateway listener and, with the gateway's client certificate, straight to the sidecar
(a platform's gateway may pass on more than ours does). No answer may be a 5xx, and neither the
services' ``playback_*_requests_total{outcome="error"}`` nor Envoy's 5xx counters (what the
error-rate alerts watch) may move: an outsider cannot page the on-call.

The stack here binds signed URLs to the viewer's address (``URL_TOKEN_BINDING=ip``), so forged
forwarding headers meet the one decision that depends on them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import Stack
from playback_drm import urlsign
from tests.support.stack import http, start_stack, stop_and_audit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The local stack with IP-bound URL tokens (this module's own: its counters are its own)."""
    started = start_stack(tmp_path_factory.mktemp("hostile"), extra_env={"URL_TOKEN_BINDING": "ip"})
    yield started
    stop_and_audit(started)


KID = "00112233445566778899aabbccddeeff"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Hostile:
    """One request, written out byte for byte (``raw``), or built from its parts."""

    name: str
    method: str = "GET"
    target: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    raw: bytes | None = None
    host: str | None = "playback.test"
    extra_raw_headers: bytes = b""

    def bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        lines = [f"{self.method} {self.target} HTTP/1.1".encode("latin-1")]
        if self.host is not None:
            lines.append(b"Host: " + self.host.encode("latin-1"))
        lines += [f"{k}: {v}".encode("latin-1") for k, v in self.headers]
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d" % len(self.body))
        lines.append(b"Connection: close")
        head = b"\r\n".join(lines) + b"\r\n" + self.extra_raw_headers + b"\r\n"
        return head + self.body


@dataclass
class Answer:
    status: int | None  # None: the connection closed without an HTTP answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def send(sock: socket.socket, request: bytes) -> Answer:
    """Write ``request`` and read one answer: until it is complete (by its length or its last
    chunk; Envoy may keep the connection open, or close it only after a delay), or the peer
    closes."""
    sock.settimeout(10)
    with contextlib.suppress(OSError):  # Envoy may answer and close before reading it all
        sock.sendall(request)
    head_only = request.startswith(b"HEAD ")
    data = b""
    try:
        while (answer := _parse(data, head_only)) is None and (chunk := sock.recv(65536)):
            data += chunk
    except (TimeoutError, ConnectionResetError, ssl.SSLError):
        answer = None
    finally:
        sock.close()
    return answer or _parse(data, head_only, complete=True) or Answer(None)


def _parse(data: bytes, head_only: bool, *, complete: bool = False) -> Answer | None:
    """The answer in ``data`` if it is all there (or ``complete``: the peer closed)."""
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return None
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/"):
        return Answer(None)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(lines[0].split()[1])
    if head_only or status in (204, 304):
        return Answer(status, headers, b"")
    if headers.get("transfer-encoding") == "chunked":
        if not complete and not body.endswith(b"0\r\n\r\n"):
            return None
        return Answer(status, headers, _dechunk(body))
    length = headers.get("content-length")
    if length is not None and len(body) >= int(length):
        return Answer(status, headers, body[: int(length)])
    return Answer(status, headers, body) if complete else None


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def gateway(stack: Stack) -> Iterator[socket.socket]:
    while True:
        yield socket.create_connection(("127.0.0.1", stack.ports.gateway))


def sidecar(stack: Stack) -> Iterator[socket.socket]:
    """Straight to the sidecar listener, as the platform's gateway connects (mTLS)."""
    assert stack.pki is not None
    context = ssl.create_default_context(cafile=str(stack.pki.ca_cert))
    context.check_hostname = False
    context.load_cert_chain(str(stack.pki.gateway_cert), str(stack.pki.gateway_key))
    context.set_alpn_protocols(["http/1.1"])
    while True:
        plain = socket.create_connection(("127.0.0.1", stack.ports.sidecar))
        yield context.wrap_socket(plain, server_hostname="sidecar.playback-drm.local")


# --- the matrix ---------------------------------------------------------------------------------


def hostile_tokens(stack: Stack) -> dict[str, str]:
    """Tokens an outsider can write (no valid signature needed), and one too long to parse."""
    _, payload, signature = stack.token("alice").split(".")

    def with_header(header: bytes) -> str:
        return f"{b64(header)}.{payload}.{signature}"

    return {
        "kid number": with_header(b'{"alg":"RS256","kid":123}'),
        "kid object": with_header(b'{"alg":"RS256","kid":{"a":1}}'),
        "crit unknown": with_header(b'{"alg":"RS256","crit":["exp"],"exp":1}'),
        "crit empty": with_header(b'{"alg":"RS256","crit":[]}'),
        "b64 false": with_header(b'{"alg":"RS256","crit":["b64"],"b64":false}'),
        "alg none": with_header(b'{"alg":"none"}')[: -len(signature)],
        "alg number": with_header(b'{"alg":256}'),
        "header array": with_header(b'["RS256"]'),
        "header NaN": with_header(b'{"alg":"RS256","x":NaN}'),
        "duplicate alg": with_header(b'{"alg":"RS256","alg":"none"}'),
        "deep header": with_header(b"[" * 2500 + b"]" * 2500),
        "padded": with_header(b'{"alg":"RS256"}') + "==",
        "standard alphabet": with_header(b'{"alg":"RS256"}').replace("-", "+").replace("_", "/"),
        "four segments": with_header(b'{"alg":"RS256"}') + ".x",
        "two segments": f"{b64(b'{}')}.{payload}",
        "empty": "",
        "dots": "...",
        "oversized": with_header(b'{"alg":"RS256"}') + "A" * 9000,
    }


def matrix(stack: Stack) -> list[Hostile]:
    alice, carol = stack.token("alice"), stack.token("carol")
    signed = urlsign.sign(
        urlsign.KeyRing.from_spec(stack.url_signing_keys()),
        "/media/demo/",
        expires_at=2_000_000_000,
        scope="/media/demo/",
    )
    cases: list[Hostile] = []
    # malformed tokens, in each place a token is read
    for name, token in hostile_tokens(stack).items():
        cases += [
            Hostile(
                f"token {name} (bearer)",
                target="/playback/demo/manifest",
                headers=(("Authorization", f"Bearer {token}"),),
            ),
            Hostile(f"token {name} (query)", target=f"/playback/demo/manifest?token={token}"),
            Hostile(
                f"token {name} (json form)",
                target="/playback/demo/manifest",
                headers=(("Authorization", f"Bearer {token}"), ("Accept", "application/json")),
            ),
            Hostile(
                f"token {name} (license)",
                "POST",
                "/drm/license",
                headers=(
                    ("Authorization", f"Bearer {token}"),
                    ("Content-Type", "application/json"),
                ),
                body=b'{"videoId":"demo","licenseRequest":"e30"}',
            ),
        ]
    cases += [
        Hostile("token twice in the query", target="/playback/demo/manifest?token=a&token=b"),
        Hostile(
            "authorization not bearer",
            target="/playback/demo/manifest",
            headers=(("Authorization", "Basic YWxpY2U6c2VjcmV0"),),
        ),
        Hostile(
            "authorization twice",
            target="/playback/demo/manifest",
            headers=(("Authorization", f"Bearer {alice}"), ("Authorization", "Bearer x")),
        ),
        Hostile(
            "authorization with a raw high byte",
            target="/playback/demo/manifest",
            extra_raw_headers=b"Authorization: Bearer \xff\xfe.\xc3\x28.x\r\n",
        ),
    ]
    # oversized headers, URLs and bodies
    cases += [
        Hostile(
            "header of 40 KiB", target="/playback/demo/manifest", headers=(("X-Big", "a" * 40_000),)
        ),
        Hostile(
            "150 headers",
            target="/playback/demo/manifest",
            headers=tuple((f"X-H{i}", "v") for i in range(150)),
        ),
        Hostile("URL of 40 KiB", target="/playback/demo/manifest?token=" + "a" * 40_000),
        Hostile(
            "license body of 70 KB",
            "POST",
            "/drm/license",
            headers=(("Authorization", f"Bearer {alice}"), ("Content-Type", "application/json")),
            body=b'{"videoId":"demo","licenseRequest":"' + b"A" * 70_000 + b'"}',
        ),
        Hostile(
            "license body of 2 MB",
            "POST",
            "/drm/license/org.w3.clearkey?videoId=demo",
            headers=(("Authorization", f"Bearer {alice}"),),
            body=b"x" * 2_000_000,
        ),
        Hostile(
            "license body nested 5000 deep",
            "POST",
            "/drm/license",
            headers=(("Authorization", f"Bearer {carol}"), ("Content-Type", "application/json")),
            body=b"[" * 5000 + b"]" * 5000,
        ),
        Hostile(
            "native license garbage",
            "POST",
            "/drm/license/com.widevine.alpha?videoId=demo",
            headers=(("Authorization", f"Bearer {alice}"),),
            body=b"\x08\x01garbage",
        ),
        Hostile(
            "native playready garbage",
            "POST",
            "/drm/license/com.microsoft.playready?videoId=demo",
            headers=(("Authorization", f"Bearer {alice}"), ("SOAPAction", '"urn:x"')),
            body=b'<!DOCTYPE x [<!ENTITY a "a">]><AcquireLicense>&a;</AcquireLicense>',
        ),
    ]
    # encoded traversal
    for target in (
        "/media/demo/%2e%2e/%2e%2e/health",
        "/media/demo/..%2f..%2fsecret",
        "/media/demo/..%5c..%5csecret",
        "/media/%2e%2e/demo/x.ts",
        "/media/demo/%252e%252e/%252e%252e/x",
        "/media/demo/%00/x.ts",
        "/media/demo/%c0%ae%c0%ae/x.ts",
        "/media/demo/.%2e/.%2e/x.ts",
        "//media//demo//hls//x.ts",
        "/media/demo/x.ts%3Fpdt=forged",
        f"/media/demo/../other/x.ts?pdt={signed}",
        f"/media/demo/%2e%2e/other/x.ts?pdt={signed}",
        f"/media/demo%2fother/x.ts?pdt={signed}",
        "/playback/..%2Fdemo/manifest",
        "/playback/../../etc/passwd",
        f"/drm/key/demo/..%2f..%2f{KID}",
        "/drm/key/../../health",
        "/drm/certificate/..%2f..%2fkey",
        "/%2e%2e/%2e%2e/etc/passwd",
    ):
        cases.append(Hostile(f"traversal {target[:60]}", target=target))
    cases.append(
        Hostile(
            "raw high byte in the path",
            raw=(b"GET /media/demo/\xff\xfe/x.ts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    )
    # forged identity: only authz writes these, so they are stripped at the edge
    forged = (
        ("X-Playback-User", "alice"),
        ("X-Playback-Plan", "premium"),
        ("X-Playback-Video", "demo"),
        ("X-Playback-Session", "s1"),
        ("X-Playback-Entitlement", '{"tier":"UHD","maxStreams":99'),
    )
    cases += [
        Hostile(
            "forged identity, key without signature", target=f"/drm/key/demo/{KID}", headers=forged
        ),
        Hostile(
            "forged identity, media without signature", target="/media/demo/x.ts", headers=forged
        ),
        Hostile(
            "forged identity, carol's license",
            "POST",
            "/drm/license",
            headers=(
                ("Authorization", f"Bearer {carol}"),
                ("Content-Type", "application/json"),
                *forged,
            ),
            body=b'{"videoId":"demo","licenseRequest":"e30"}',
        ),
        Hostile(
            "forged identity, carol's manifest",
            target="/playback/demo-uhd/manifest",
            headers=(("Authorization", f"Bearer {carol}"), *forged),
        ),
        Hostile(
            "forged identity, certificate",
            target="/drm/certificate/com.widevine.alpha",
            headers=forged,
        ),
        Hostile(
            "forged entitlement 4 KiB",
            target=f"/media/demo/x.ts?pdt={signed}",
            headers=(("X-Playback-Entitlement", "{" * 4096),),
        ),
    ]
    # forwarding headers and Host games
    forwarding = (
        ("X-Forwarded-For", "203.0.113.9, evil, 999.1.1.1"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "javascript"),
        ("Forwarded", "for=203.0.113.9;host=evil.example;proto=https"),
        ("X-Envoy-External-Address", "203.0.113.9"),
        ("X-Envoy-Original-Path", "/media/other/master.m3u8"),
        ("X-Envoy-Internal", "true"),
        ("X-Envoy-Upstream-Rq-Timeout-Ms", "1"),
        ("X-Envoy-Max-Retries", "100"),
        ("X-Envoy-Retry-On", "5xx,reset"),
        ("X-Request-Id", "\u00e9" * 3),
        ("Traceparent", "00-zz-zz-zz"),
    )
    json_form = (("Authorization", f"Bearer {alice}"), ("Accept", "application/json"))
    cases += [
        Hostile(
            "forwarding headers, manifest",
            target="/playback/demo/manifest",
            headers=(("Authorization", f"Bearer {alice}"), *forwarding),
        ),
        Hostile(
            "forwarding headers, json form",
            target="/playback/demo/manifest",
            headers=(*json_form, *forwarding),
            host="evil.example",
        ),
        Hostile(
            "forwarding headers, media",
            target=f"/media/demo/master.m3u8?pdt={signed}",
            headers=forwarding,
        ),
        Hostile(
            "host evil, json form",
            target="/playback/demo/manifest",
            headers=json_form,
            host="evil.example",
        ),
        Hostile(
            "host with user info",
            target="/playback/demo/manifest",
            headers=json_form,
            host="alice@evil.example",
        ),
        Hostile(
            "host 300 characters",
            target="/playback/demo/manifest",
            headers=json_form,
            host="a" * 300 + ".example",
        ),
        Hostile(
            "host with a port",
            target="/playback/demo/manifest",
            headers=json_form,
            host="evil.example:1",
        ),
        Hostile("no host", target="/health", host=None),
        Hostile(
            "two hosts",
            target="/playback/demo/manifest",
            headers=json_form,
            extra_raw_headers=b"Host: evil.example\r\n",
        ),
        Hostile(
            "absolute form to another host",
            raw=(
                b"GET http://evil.example/playback/demo/manifest HTTP/1.1\r\n"
                b"Host: playback.test\r\nAuthorization: Bearer "
                + alice.encode()
                + b"\r\nAccept: application/json\r\n"
                b"Connection: close\r\n\r\n"
            ),
        ),
        Hostile(
            "host with a raw high byte",
            raw=(
                b"GET /playback/demo/manifest HTTP/1.1\r\nHost: \xe9vil\r\nAuthorization: Bearer "
                + alice.encode()
                + b"\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
            ),
        ),
    ]
    # admin paths (Envoy's admin listens on loopback only, not on these listeners)
    for method, target in (
        ("GET", "/stats"),
        ("GET", "/stats/prometheus"),
        ("GET", "/config_dump"),
        ("GET", "/clusters"),
        ("GET", "/server_info"),
        ("GET", "/ready"),
        ("GET", "/certs"),
        ("POST", "/quitquitquit"),
        ("POST", "/logging?level=trace"),
        ("POST", "/runtime_modify?x=y"),
        ("POST", "/healthcheck/fail"),
        ("POST", "/drain_listeners"),
        ("GET", "/metrics"),
        ("GET", "/_origin/requests"),
        ("GET", "/media/_origin/requests"),
        ("GET", "/health/../stats"),
        ("GET", "/demo/../../etc/passwd"),
        ("GET", "/_demo/"),
    ):
        cases.append(Hostile(f"admin {method} {target}", method, target))
    # methods
    for method, target in (
        ("TRACE", "/playback/demo/manifest"),
        ("PUT", "/playback/demo/manifest"),
        ("DELETE", "/drm/license"),
        ("PATCH", "/drm/license"),
        ("PROPFIND", "/media/demo/"),
        ("FOO", "/health"),
        ("OPTIONS", "/playback/demo/manifest"),
        ("GET", "/drm/license"),
        ("PUT", f"/media/demo/x.ts?pdt={signed}"),
        ("DELETE", f"/media/demo/x.ts?pdt={signed}"),
        ("POST", "/playback/demo/manifest"),
        ("POST", f"/drm/key/demo/{KID}"),
    ):
        cases.append(
            Hostile(
                f"method {method} {target[:40]}",
                method,
                target,
                headers=(("Authorization", f"Bearer {alice}"),),
            )
        )
    cases += [
        Hostile(
            "HEAD manifest",
            "HEAD",
            "/playback/demo/manifest",
            headers=(("Authorization", f"Bearer {alice}"),),
        ),
        Hostile("HEAD json form", "HEAD", "/playback/demo/manifest", headers=json_form),
        Hostile(
            "preflight from anywhere",
            "OPTIONS",
            "/drm/license",
            headers=(
                ("Origin", "https://evil.example"),
                ("Access-Control-Request-Method", "DELETE"),
                ("Access-Control-Request-Headers", "x-playback-user, authorization"),
            ),
        ),
        Hostile(
            "CONNECT", raw=b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
        ),
    ]
    # broken HTTP
    for name, raw in (
        (
            "content-length and chunked",
            b"POST /drm/license HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "bad chunk size",
            b"POST /drm/license HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "two content lengths",
            b"POST /drm/license HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
        ("header without colon", b"GET /health HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n"),
        ("space before colon", b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n"),
        ("NUL in a header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
        ("underscore header", b"GET /health HTTP/1.1\r\nHost: x\r\nX_Playback_User: a\r\n\r\n"),
        ("bare LF", b"GET /health HTTP/1.1\nHost: x\n\n"),
        ("HTTP/1.0", b"GET /health HTTP/1.0\r\n\r\n"),
        ("HTTP/0.9", b"GET /health\r\n\r\n"),
        ("HTTP/9.9", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n"),
        ("method of 10 KiB", b"A" * 10_000 + b" / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("garbage", bytes(range(256))),
    ):
        cases.append(Hostile(f"http {name}", raw=raw))
    return cases


# --- the services' and Envoy's error counters ---------------------------------------------

SERVICE_COUNTERS = {
    "authz": "playback_authz_requests",
    "extproc": "playback_extproc_requests",
    "broker": "playback_broker_requests",
}


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text: str = resp.read().decode()
        return text


def error_counts(stack: Stack) -> dict[str, float]:
    """What the error-rate alerts count: outcome="error" per service, 5xx per Envoy listener
    and per cluster."""
    p = stack.ports
    counts: dict[str, float] = {}
    for service, port in (
        ("authz", p.authz_http),
        ("extproc", p.extproc_http),
        ("broker", p.broker),
    ):
        for family in text_string_to_metric_families(_scrape(f"http://127.0.0.1:{port}/metrics")):
            if family.name == SERVICE_COUNTERS[service]:
                counts[service] = sum(
                    s.value
                    for s in family.samples
                    if s.name.endswith("_total") and s.labels.get("outcome") == "error"
                )
    envoy = _scrape(f"http://127.0.0.1:{p.admin}/stats/prometheus")
    for family in text_string_to_metric_families(envoy):
        if family.name in ("envoy_http_downstream_rq_xx", "envoy_cluster_upstream_rq_xx"):
            for s in family.samples:
                if s.labels.get("envoy_response_code_class") == "5":
                    where = s.labels.get("envoy_http_conn_manager_prefix") or s.labels.get(
                        "envoy_cluster_name", "?"
                    )
                    counts[f"envoy {family.name} {where}"] = s.value
    return counts


def run(cases: list[Hostile], connections: Iterator[socket.socket]) -> dict[str, Answer]:
    return {case.name: send(next(connections), case.bytes()) for case in cases}


def test_no_hostile_request_gets_a_5xx_or_counts_as_our_error(stack: Stack) -> None:
    cases = matrix(stack)
    assert len({c.name for c in cases}) == len(cases)
    before = error_counts(stack)
    answers = {f"gateway: {k}": v for k, v in run(cases, gateway(stack)).items()}
    answers |= {f"sidecar: {k}": v for k, v in run(cases, sidecar(stack)).items()}
    after = error_counts(stack)

    server_errors = {
        name: (a.status, a.body[:200]) for name, a in answers.items() if (a.status or 0) >= 500
    }
    assert server_errors == {}, "\n".join(f"{k}: {v}" for k, v in server_errors.items())
    # nearly everything is answered; a connection Envoy drops without a word is no 5xx either
    unanswered = [name for name, a in answers.items() if a.status is None]
    assert len(unanswered) <= 8, unanswered
    moved = {k: (before.get(k, 0.0), v) for k, v in after.items() if v != before.get(k, 0.0)}
    assert moved == {}, f"error counters moved: {moved}"
    assert {"authz", "extproc", "broker"} <= set(after)  # the counters were really read

    # and what each family of attack gets, spot-checked (both listeners agree)
    for where in ("gateway", "sidecar"):
        for name in ("kid number", "kid object", "crit unknown", "crit empty", "b64 false"):
            answer = answers[f"{where}: token {name} (bearer)"]
            problem = json.loads(answer.body)
            assert (answer.status, problem["code"]) == (401, "token_malformed"), (where, name)
        assert answers[f"{where}: forged identity, key without signature"].status == 403
        assert answers[f"{where}: header of 40 KiB"].status == 431
        assert answers[f"{where}: admin GET /stats"].status == 404


def test_signed_manifest_url_ignores_the_host_a_client_sent(stack: Stack) -> None:
    """Issue 18: ``Host: evil.example`` steered the JSON form's URL. It comes from
    PUBLIC_BASE_URLS now: the gateway's own URL for any other Host, forwarding headers or not."""
    alice = stack.token("alice")
    hostile = [
        Hostile(
            "evil",
            target="/playback/demo/manifest",
            host="evil.example",
            headers=(
                ("Authorization", f"Bearer {alice}"),
                ("Accept", "application/json"),
                ("X-Forwarded-Host", "evil.example"),
                ("X-Forwarded-Proto", "https"),
                ("Forwarded", "host=evil.example;proto=https"),
            ),
        ),
        Hostile(
            "absolute form",
            raw=(
                b"GET http://evil.example/playback/demo/manifest HTTP/1.1\r\nHost: evil.example\r\n"
                b"Authorization: Bearer " + alice.encode() + b"\r\nAccept: application/json\r\n"
                b"Connection: close\r\n\r\n"
            ),
        ),
    ]
    for name, answer in run(hostile, gateway(stack)).items():
        assert answer.status == 200, name
        url = json.loads(answer.body)["url"]
        assert url.startswith(f"{stack.gateway}/media/demo/master.m3u8?pdt="), (name, url)
        assert http(url).status == 200  # and it works


def test_forwarding_headers_cannot_choose_the_address_a_url_is_bound_to(stack: Stack) -> None:
    """IP-bound URLs: extproc binds them to, and authz verifies them against, the address Envoy
    derived past the trusted gateway hop (x-envoy-external-address), never what a client wrote
    into X-Forwarded-For. authz used the connection's peer (the gateway) before, so every
    IP-bound URL behind a gateway answered 403, and the JSON form took X-Forwarded-For's first
    entry when Envoy's header was missing."""
    alice = stack.token("alice")
    ring = urlsign.KeyRing.from_spec(stack.url_signing_keys())
    forged = {"X-Forwarded-For": "198.51.100.9", "X-Envoy-External-Address": "198.51.100.9"}
    reply = http(
        f"{stack.gateway}/playback/demo/manifest",
        headers={"Authorization": f"Bearer {alice}", "Accept": "application/json", **forged},
    )
    assert reply.status == 200
    # playlists are bound to the playback session; segments follow URL_TOKEN_BINDING (ip here)
    master = http(reply.json()["url"], headers=forged)
    assert master.status == 200, master.body
    variant = next(line for line in master.body.decode().splitlines() if "pdt=" in line)
    playlist_url = urllib.parse.urljoin(reply.json()["url"], variant)
    playlist = http(playlist_url, headers=forged)
    assert playlist.status == 200, playlist.body
    segment = next(
        line for line in playlist.body.decode().splitlines() if line and not line.startswith("#")
    )
    url = urllib.parse.urljoin(playlist_url, segment)
    path, _, query = url.removeprefix(stack.gateway).partition("?")
    assert ".i:" in query  # bound to an address
    with pytest.raises(urlsign.UrlTokenBindingMismatch):
        urlsign.verify(ring, path, query, now=0, client_ip="198.51.100.9")
    # the viewer who asked can use it, forged headers or not
    assert http(url).status == 200
    assert http(url, headers=forged).status == 200


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_clients_cannot_set_envoys_timeouts_or_retries(stack: Stack) -> None:
    """x-envoy-upstream-rq-timeout-ms from a client would turn any slow answer into our 504
    (upstream_timeout). Envoy sanitises x-envoy-* from external requests: nothing the gateway or
    the sidecar sees is internal here, and this keeps it so."""
    drm = f"http://127.0.0.1:{stack.ports.drm}"
    http(
        f"{drm}/control/widevine",
        method="POST",
        body=b'{"delay": 0.3}',
        headers={"Content-Type": "application/json"},
    )
    try:
        reply = http(
            f"{stack.gateway}/drm/license/com.widevine.alpha?videoId=demo",
            method="POST",
            body=b"\x08\x01\x12\x06wv-rq1",  # a challenge no other test sent: not cached
            headers={
                **bearer(stack.token("alice")),
                "X-Envoy-Upstream-Rq-Timeout-Ms": "50",
                "X-Envoy-Upstream-Rq-Per-Try-Timeout-Ms": "50",
                "X-Envoy-Internal": "true",
            },
        )
    finally:
        http(f"{drm}/control", method="DELETE")
    assert reply.status == 200, reply.body[:200]
