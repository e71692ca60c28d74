"""authz's own cost per check, in process: CheckRequest bytes in, CheckResponse bytes out, with
the token and entitlement caches warm. Everything else a check costs (bench/edge.py authz) is the
gRPC transport; compare with the do-nothing server there.

    python bench/bench_authz_inprocess.py
"""

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envoy.service.auth.v3 import external_auth_pb2 as ea

from authz.entitlement import Entitlement, EntitlementCache
from authz.server import AuthorizationService
from authz.service import Authorizer
from authz.tokens import JwksCache, TokenVerifier
from devstack.emulators.auth import AuthEmulator
from playback_drm.events import NullSink


async def main():
    auth = AuthEmulator(issuer="i")
    tok = auth.token("alice")

    async def fetch():
        return auth.jwks()

    v = TokenVerifier(
        JwksCache(fetch, frozenset({"RS256"}), min_refresh=0),
        issuer="i",
        audience="playback",
        algorithms=("RS256",),
    )

    class Src:
        async def fetch(self, u, vid):
            return Entitlement(u, vid, True, "premium", None, {"tier": "HD", "maxStreams": 4})

    a = Authorizer(v, EntitlementCache(Src(), ttl=60, deny_ttl=10), lambda *x: None)
    svc = AuthorizationService(a, NullSink())
    req = ea.CheckRequest()
    req.attributes.request.http.path = "/playback/demo/manifest"
    req.attributes.request.http.method = "GET"
    req.attributes.request.http.headers["authorization"] = "Bearer " + tok
    req.attributes.context_extensions["mode"] = "jwt"
    raw = req.SerializeToString()

    class Ctx:
        def invocation_metadata(self):
            return ()

    await svc.Check(req, Ctx())
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        r = ea.CheckRequest.FromString(raw)
        resp = await svc.Check(r, Ctx())
        resp.SerializeToString()
    dt = (time.perf_counter() - t) / n * 1e6
    print(f"in-process Check incl. (de)serialization: {dt:.1f} us")


if __name__ == "__main__":
    asyncio.run(main())
