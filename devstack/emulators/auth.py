"""Auth service emulator: publishes a JWKS, signs tokens, rotates keys.

Endpoints:
    GET  /.well-known/jwks.json               RFC 7517 key set (all published keys)
    GET  /.well-known/openid-configuration     issuer + jwks_uri
    POST /admin/rotate                         new signing key; the old one stays published
    POST /admin/retire?kid=K                   stop publishing a key
    GET  /health

Keys are RSA-2048 (RS256). The first key can be loaded from a PEM file so tokens printed by
``playback-drm token`` verify against the running stack.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from devstack.devpki import write_private_key

DEFAULT_ISSUER = "https://auth.playback-drm.local"
DEFAULT_AUDIENCE = "playback"


def kid_for(key: rsa.RSAPrivateKey) -> str:
    """RFC 7638 thumbprint (SHA-256) of the public key: stable across restarts."""
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    canonical = json.dumps(
        {"e": b64(numbers.e), "kty": "RSA", "n": b64(numbers.n)}, separators=(",", ":")
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(canonical.encode())
    return base64.urlsafe_b64encode(digest.finalize()).rstrip(b"=").decode()[:16]


def load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} is not an RSA private key")
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_key(key, path)
    return key


def sign_token(
    key: rsa.RSAPrivateKey,
    sub: str,
    *,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    ttl: int = 3600,
    kid: str | None = None,
    extra: dict[str, Any] | None = None,
    now: float | None = None,
) -> str:
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": sub,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "sid": uuid.uuid4().hex,
    }
    if extra:
        claims.update(extra)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid or kid_for(key)})


@dataclass
class AuthEmulator:
    issuer: str = DEFAULT_ISSUER
    keys: list[rsa.RSAPrivateKey] = field(default_factory=list)
    retired: set[str] = field(default_factory=set)

    @property
    def signing_key(self) -> rsa.RSAPrivateKey:
        if not self.keys:
            self.keys.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return self.keys[-1]

    def rotate(self) -> str:
        self.keys.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return kid_for(self.keys[-1])

    def jwks(self) -> dict[str, Any]:
        published = []
        for key in self.keys:
            kid = kid_for(key)
            if kid in self.retired:
                continue
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
            published.append(jwk)
        return {"keys": published}

    def token(self, sub: str, ttl: int = 3600, **extra: Any) -> str:
        return sign_token(self.signing_key, sub, issuer=self.issuer, ttl=ttl, extra=extra)

    def build_app(self) -> web.Application:
        async def jwks(_: web.Request) -> web.Response:
            return web.json_response(self.jwks(), headers={"Cache-Control": "public, max-age=300"})

        async def discovery(request: web.Request) -> web.Response:
            base = f"{request.scheme}://{request.host}"
            return web.json_response(
                {"issuer": self.issuer, "jwks_uri": base + "/.well-known/jwks.json"}
            )

        async def rotate(_: web.Request) -> web.Response:
            return web.json_response({"kid": self.rotate()})

        async def retire(request: web.Request) -> web.Response:
            kid = request.query.get("kid", "")
            self.retired.add(kid)
            return web.json_response({"retired": kid})

        async def health(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "service": "auth-emulator"})

        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", jwks)
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_post("/admin/rotate", rotate)
        app.router.add_post("/admin/retire", retire)
        app.router.add_get("/health", health)
        return app
