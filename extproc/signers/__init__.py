"""URL signers for CDNs and object stores, byte-exact with their published formats, one per module,
and :func:`signer_from_spec`, which builds one from a ``CDN_SIGNERS`` entry.

- :class:`CloudFrontSigner`: CloudFront signed URLs with a canned or a custom policy, and signed
  cookies; RSA (PKCS#1 v1.5) or ECDSA keys via ``cryptography``; SHA-1 (the classic format) or
  SHA-256 (adds ``Hash-Algorithm=SHA256``).
- :class:`AkamaiEdgeAuth`: Akamai EdgeAuth (Auth Token 2.0) URL and ACL tokens, field order
  ``ip~st~exp~acl~id~data~hmac`` as in Akamai's reference implementation (EdgeAuth-Token-Python).
- :class:`S3Presigner`: S3 SigV4 query-string (presigned) GET URLs.
- :class:`PdtUrlSigner`: our own ``pdt`` token (:mod:`playback_drm.urlsign`) on a CDN host that
  forwards to the sidecar.

Each has a ``sign_url`` method implementing :class:`UrlSigner`, the seam the signing policy
(:mod:`extproc.policy`) uses for hosts on the CDN allowlist. ``sign_url`` only ever *appends*
query parameters (except S3, which may have to re-encode the path), so the policy can keep a
relative URI relative by appending the same suffix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extproc.signers.akamai import AkamaiEdgeAuth
from extproc.signers.base import SignContext, UrlSigner, append_query, prefix_directory
from extproc.signers.cloudfront import (
    CloudFrontSigner,
    canned_policy,
    cloudfront_b64,
    custom_policy,
)
from extproc.signers.pdt import PdtUrlSigner
from extproc.signers.s3 import S3Presigner
from playback_drm import urlsign
from playback_drm.settings import ConfigError

__all__ = [
    "AkamaiEdgeAuth",
    "CloudFrontSigner",
    "PdtUrlSigner",
    "S3Presigner",
    "SignContext",
    "UrlSigner",
    "append_query",
    "canned_policy",
    "cloudfront_b64",
    "custom_policy",
    "prefix_directory",
    "signer_from_spec",
]


def _secret_from(spec: Mapping[str, Any], key: str, env: Mapping[str, str], what: str) -> str:
    """A secret given by the name of an environment variable (``<key>_env``) or a file
    (``<key>_file``); never inline, so specs can be logged."""
    env_name = spec.get(key + "_env")
    if isinstance(env_name, str) and env_name:
        value = env.get(env_name)
        if not value:
            raise ConfigError(f"{what}: environment variable {env_name} is not set")
        return value
    file_name = spec.get(key + "_file")
    if isinstance(file_name, str) and file_name:
        try:
            with open(file_name, encoding="utf-8") as handle:
                return handle.read()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read {file_name}: {exc.strerror}") from None
    raise ConfigError(f"{what}: set {key}_env or {key}_file")


def signer_from_spec(
    spec: Mapping[str, Any], env: Mapping[str, str], *, ring: urlsign.KeyRing | None = None
) -> UrlSigner:
    """Build a signer from one ``CDN_SIGNERS`` entry (see :mod:`extproc.policy`)::

    {"host": "d111111abcdef8.cloudfront.net", "type": "cloudfront", "key_pair_id": "K2JC...",
     "private_key_file": "/run/secrets/cf.pem", "hash_algorithm": "SHA256"}
    {"host": "media.example.net", "type": "akamai", "key_env": "AKAMAI_KEY",
     "algorithm": "sha256", "token_name": "__token__"}
    {"host": "bucket.s3.eu-west-1.amazonaws.com", "type": "s3", "region": "eu-west-1",
     "access_key_id_env": "S3_KEY_ID", "secret_access_key_env": "S3_SECRET"}
    {"host": "cdn.example.com", "type": "pdt"}
    """
    kind = spec.get("type")
    what = f"CDN_SIGNERS[{spec.get('host', '?')}]"
    if kind == "cloudfront":
        key_pair_id = spec.get("key_pair_id")
        if not isinstance(key_pair_id, str):
            raise ConfigError(f"{what}: key_pair_id is required")
        return CloudFrontSigner(
            key_pair_id,
            _secret_from(spec, "private_key", env, what),
            hash_algorithm=spec.get("hash_algorithm", "SHA1"),
            bind_ip=bool(spec.get("bind_ip", False)),
        )
    if kind == "akamai":
        return AkamaiEdgeAuth(
            _secret_from(spec, "key", env, what).strip(),
            algorithm=spec.get("algorithm", "sha256"),
            token_name=spec.get("token_name", "__token__"),
            escape_early=bool(spec.get("escape_early", False)),
            salt=spec.get("salt"),
            bind_ip=bool(spec.get("bind_ip", False)),
        )
    if kind == "s3":
        region = spec.get("region")
        if not isinstance(region, str):
            raise ConfigError(f"{what}: region is required")
        token_env = spec.get("session_token_env")
        return S3Presigner(
            _secret_from(spec, "access_key_id", env, what).strip(),
            _secret_from(spec, "secret_access_key", env, what).strip(),
            region,
            session_token=env.get(token_env) if isinstance(token_env, str) else None,
        )
    if kind == "pdt":
        if ring is None:
            raise ConfigError(f"{what}: type pdt needs URL_SIGNING_KEYS")
        return PdtUrlSigner(ring)
    raise ConfigError(f"{what}: type must be cloudfront, akamai, s3 or pdt")
