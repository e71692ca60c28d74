"""authz's own cost per check, in process: CheckRequest bytes in, CheckResponse bytes out, with
the token and entitlement caches warm, sessions and the per-user window in memory. Everything else
a check costs under load (bench/edge.py license, bench/profile.py) is the transport: the gRPC
call, the Redis round trip, the event loop's wake-ups and the kernel's work for each of them.

    python bench/bench_authz_inprocess.py [--checks N]

Prints µs per check for a manifest (mode ``jwt``) and for a ClearKey license by JWT (mode
``license``, the JSON form's body, a stream slot taken, the per-user limit counted), as the
sidecar asks for them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envoy.service.auth.v3 import external_auth_pb2 as ea

from authz.entitlement import Entitlement, EntitlementCache
from authz.ratelimit import MemorySlidingWindow, UserLimit
from authz.registry import SessionRegistry
from authz.server import AuthorizationService
from authz.service import Authorizer
from authz.sessions import Lifetimes, StreamLimits
from authz.sessionstore import MemorySessionStore
from authz.tokens import JwksCache, TokenVerifier
from devstack.emulators.auth import AuthEmulator
from playback_drm.contract import AUTHZ_LIMIT_KEY, AUTHZ_MODE_KEY, LIMIT_PER_USER
from playback_drm.events import NullSink


class _Billing:
    async def fetch(self, user: str, video: str) -> Entitlement:
        return Entitlement(user, video, True, "premium", None, {"tier": "HD", "maxStreams": 0})


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


def _request(path: str, mode: str, token: str, body: bytes = b"") -> bytes:
    req = ea.CheckRequest()
    http = req.attributes.request.http
    http.path = path
    http.method = "POST" if body else "GET"
    http.headers["authorization"] = "Bearer " + token
    if body:
        http.headers["content-type"] = "application/json"
        http.raw_body = body
    req.attributes.context_extensions[AUTHZ_MODE_KEY] = mode
    req.attributes.context_extensions[AUTHZ_LIMIT_KEY] = LIMIT_PER_USER
    return bytes(req.SerializeToString())


async def main(checks: int) -> None:
    auth = AuthEmulator(issuer="i")
    token = auth.token("alice")

    async def fetch() -> dict[str, Any]:
        return auth.jwks()

    verifier = TokenVerifier(
        JwksCache(fetch, frozenset({"RS256"}), min_refresh=0),
        issuer="i",
        audience="playback",
        algorithms=("RS256",),
    )
    registry = SessionRegistry(
        MemorySessionStore(Lifetimes(1_800_000, 60_000)),
        StreamLimits.parse("default=0"),
        check_interval=5.0,
    )
    authorizer = Authorizer(
        verifier, EntitlementCache(_Billing(), ttl=60, deny_ttl=10), lambda *_: None, registry
    )
    window = MemorySlidingWindow(10**9, 1.0)
    service = AuthorizationService(authorizer, NullSink(), UserLimit(window, 10**9, 1.0))
    challenge = json.dumps({"kids": ["AAAAAAAAAAAAAAAAAAAAAA"], "type": "temporary"}).encode()
    body = json.dumps(
        {
            "videoId": "demo",
            "licenseRequest": base64.b64encode(challenge).decode(),
            "keySystem": "org.w3.clearkey",
        }
    ).encode()
    cases = {
        "manifest (jwt)": _request("/playback/demo/manifest", "jwt", token),
        "license by JWT": _request("/drm/license", "license", token, body),
    }
    for name, raw in cases.items():
        first = await service.Check(ea.CheckRequest.FromString(raw), _Context())
        assert first.status.code == 0, first
        started = time.process_time()
        for _ in range(checks):
            response = await service.Check(ea.CheckRequest.FromString(raw), _Context())
            response.SerializeToString()
        per_check = (time.process_time() - started) / checks * 1e6
        print(f"{name:16s} in-process Check incl. (de)serialization: {per_check:6.1f} µs CPU")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().checks))
