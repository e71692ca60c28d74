"""CloudFront signed URLs with a canned or a custom policy, and signed cookies; RSA (PKCS#1
v1.5) or ECDSA keys via ``cryptography``; SHA-1 (the classic format) or SHA-256 (adds
``Hash-Algorithm=SHA256``)."""

from __future__ import annotations

import base64
import json
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from extproc.signers.base import (
    BoundedCache,
    SignContext,
    append_query,
    prefix_directory,
    split_fragment,
)
from playback_drm.settings import ConfigError

HashName = Literal["SHA1", "SHA256"]
_CF_B64: Final = bytes.maketrans(b"+=/", b"-_~")
_CF_KEY_TYPES: Final = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)


def cloudfront_b64(data: bytes) -> str:
    """CloudFront's URL-safe base64: ``+`` -> ``-``, ``=`` -> ``_``, ``/`` -> ``~``."""
    return base64.b64encode(data).translate(_CF_B64).decode()


def canned_policy(resource: str, expires_at: int) -> str:
    """The canned policy CloudFront reconstructs from the URL and ``Expires`` (no whitespace)."""
    return (
        '{"Statement":[{"Resource":'
        + json.dumps(resource)
        + ',"Condition":{"DateLessThan":{"AWS:EpochTime":'
        + str(int(expires_at))
        + "}}}]}"
    )


def custom_policy(
    resource: str,
    *,
    date_less_than: int,
    date_greater_than: int | None = None,
    ip_address: str | None = None,
) -> str:
    """A custom policy in botocore's ``build_policy`` layout: ``DateLessThan``, then
    ``IpAddress`` (a bare address gets ``/32``), then ``DateGreaterThan``; no whitespace.
    ``resource`` may use ``*`` and ``?`` wildcards."""
    condition: dict[str, Any] = {"DateLessThan": {"AWS:EpochTime": int(date_less_than)}}
    if ip_address:
        cidr = (
            ip_address
            if "/" in ip_address
            else ip_address + ("/128" if ":" in ip_address else "/32")
        )
        condition["IpAddress"] = {"AWS:SourceIp": cidr}
    if date_greater_than is not None:
        condition["DateGreaterThan"] = {"AWS:EpochTime": int(date_greater_than)}
    statement = {"Resource": resource, "Condition": condition}
    return json.dumps({"Statement": [statement]}, separators=(",", ":"))


class CloudFrontSigner:
    """CloudFront signed URLs and cookies for one key pair (trusted key group public key id).

    RSA signatures (PKCS#1 v1.5) are deterministic; signatures are cached per policy text so a
    burst of manifests within one expiry window costs one private-key operation per policy.
    """

    name = "cloudfront"

    def __init__(
        self,
        key_pair_id: str,
        private_key: bytes | str | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        *,
        hash_algorithm: HashName = "SHA1",
        cache_entries: int = 4096,
        bind_ip: bool = False,
    ) -> None:
        if not key_pair_id:
            raise ConfigError("CloudFront key pair id is empty")
        if hash_algorithm not in ("SHA1", "SHA256"):
            raise ConfigError("CloudFront hash algorithm must be SHA1 or SHA256")
        if isinstance(private_key, str | bytes):
            pem = private_key.encode() if isinstance(private_key, str) else private_key
            try:
                loaded = serialization.load_pem_private_key(pem, password=None)
            except (ValueError, TypeError) as exc:
                raise ConfigError("CloudFront private key is not an unencrypted PEM key") from exc
            if not isinstance(loaded, _CF_KEY_TYPES):
                raise ConfigError("CloudFront private keys are RSA or ECDSA")
            private_key = loaded
        self.key_pair_id = key_pair_id
        self.hash_algorithm: HashName = hash_algorithm
        self.bind_ip = bind_ip
        self._key = private_key
        self._hash = hashes.SHA256() if hash_algorithm == "SHA256" else hashes.SHA1()  # noqa: S303
        self._cache = BoundedCache(cache_entries)
        self._suffix = f"&Key-Pair-Id={key_pair_id}" + (
            "&Hash-Algorithm=SHA256" if hash_algorithm == "SHA256" else ""
        )

    def sign_policy(self, policy: str) -> str:
        """CloudFront-base64 signature of the exact policy bytes."""
        cached = self._cache.get(policy)
        if cached is not None:
            return cached
        data = policy.encode()
        if isinstance(self._key, rsa.RSAPrivateKey):
            raw = self._key.sign(data, padding.PKCS1v15(), self._hash)
        else:
            raw = self._key.sign(data, ec.ECDSA(self._hash))
        signature = cloudfront_b64(raw)
        self._cache.put(policy, signature)
        return signature

    def signed_url(self, url: str, *, expires_at: int) -> str:
        """Canned policy: ``url?..&Expires=E&Signature=S&Key-Pair-Id=K[&Hash-Algorithm=SHA256]``."""
        resource = split_fragment(url)
        signature = self.sign_policy(canned_policy(resource, expires_at))
        return append_query(url, f"Expires={int(expires_at)}&Signature={signature}{self._suffix}")

    def signed_url_with_policy(self, url: str, policy: str) -> str:
        """Custom policy: ``url?...&Policy=P&Signature=S&Key-Pair-Id=K[&Hash-Algorithm=SHA256]``."""
        encoded = cloudfront_b64(policy.encode())
        signature = self.sign_policy(policy)
        return append_query(url, f"Policy={encoded}&Signature={signature}{self._suffix}")

    def signed_cookies(
        self,
        *,
        resource: str | None = None,
        expires_at: int | None = None,
        policy: str | None = None,
    ) -> dict[str, str]:
        """The ``CloudFront-*`` cookie values: canned (``resource`` + ``expires_at``) or custom
        (``policy``). ``CloudFront-Hash-Algorithm`` is added for SHA-256."""
        cookies: dict[str, str] = {}
        if policy is not None:
            if resource is not None or expires_at is not None:
                raise ValueError("give either a custom policy or resource and expires_at")
            cookies["CloudFront-Policy"] = cloudfront_b64(policy.encode())
        elif resource is not None and expires_at is not None:
            policy = canned_policy(resource, expires_at)
            cookies["CloudFront-Expires"] = str(int(expires_at))
        else:
            raise ValueError("give either a custom policy or resource and expires_at")
        cookies["CloudFront-Signature"] = self.sign_policy(policy)
        cookies["CloudFront-Key-Pair-Id"] = self.key_pair_id
        if self.hash_algorithm == "SHA256":
            cookies["CloudFront-Hash-Algorithm"] = "SHA256"
        return cookies

    def sign_url(
        self, url: str, ctx: SignContext, *, prefix: bool = False, template: bool = False
    ) -> str | None:
        ip = ctx.client_ip if self.bind_ip else None
        if not (prefix or template or ip):
            return self.signed_url(url, expires_at=ctx.expires_at)
        parts = urlsplit(url)
        if prefix or template:
            resource = f"{parts.scheme}://{parts.netloc}{prefix_directory(parts.path)}*"
        else:
            resource = split_fragment(url)
        policy = custom_policy(resource, date_less_than=ctx.expires_at, ip_address=ip)
        return self.signed_url_with_policy(url, policy)
