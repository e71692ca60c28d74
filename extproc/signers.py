"""URL signers for CDNs and object stores, byte-exact with their published formats.

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

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol
from urllib.parse import quote, quote_plus, unquote, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

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
    "cloudfront_b64",
    "prefix_directory",
    "signer_from_spec",
]

HashName = Literal["SHA1", "SHA256"]


@dataclass(frozen=True, slots=True)
class SignContext:
    """Per-manifest facts a signer needs. ``signed_at`` is a window-aligned "now" (``<=`` the
    real time) so that URLs signed within one expiry window are identical."""

    expires_at: int
    signed_at: int
    client_ip: str | None = None
    session_id: str | None = None


class UrlSigner(Protocol):
    """Signs an absolute URL on one CDN host.

    ``prefix``: a token covering the URL's directory is preferred (cache friendly), if the
    format has one. ``template``: the URL is a DASH template (``$Number$`` ...) that the player
    expands, so only a directory-wide token can work; return ``None`` if the format has none.
    """

    name: str

    def sign_url(
        self, url: str, ctx: SignContext, *, prefix: bool = False, template: bool = False
    ) -> str | None: ...


def append_query(url: str, params: str) -> str:
    """Append ``params`` (already encoded, ``a=1&b=2``) to ``url``, before any fragment."""
    hash_at = url.find("#")
    base, fragment = (url[:hash_at], url[hash_at:]) if hash_at >= 0 else (url, "")
    return f"{base}{'&' if '?' in base else '?'}{params}{fragment}"


def prefix_directory(path: str) -> str:
    """The directory a prefix token covers: up to the last ``/`` before any ``$`` template."""
    dollar = path.find("$")
    head = path if dollar < 0 else path[:dollar]
    return head[: head.rfind("/") + 1] or "/"


def _split_fragment(url: str) -> str:
    hash_at = url.find("#")
    return url if hash_at < 0 else url[:hash_at]


class _BoundedCache:
    """A small FIFO map (dict order): repeated policies within an expiry window hit it."""

    __slots__ = ("_data", "_max")

    def __init__(self, max_entries: int) -> None:
        self._data: dict[str, str] = {}
        self._max = max_entries

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def put(self, key: str, value: str) -> None:
        if len(self._data) >= self._max:
            try:
                del self._data[next(iter(self._data))]
            except (StopIteration, KeyError, RuntimeError):  # raced with another thread
                self._data.clear()
        self._data[key] = value


# --------------------------------------------------------------------------------------------
# CloudFront

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
        self._cache = _BoundedCache(cache_entries)
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
        resource = _split_fragment(url)
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
            resource = _split_fragment(url)
        policy = custom_policy(resource, date_less_than=ctx.expires_at, ip_address=ip)
        return self.signed_url_with_policy(url, policy)


# --------------------------------------------------------------------------------------------
# Akamai EdgeAuth

_AKAMAI_ALGORITHMS: Final = {"sha256": hashlib.sha256, "sha1": hashlib.sha1, "md5": hashlib.md5}


def _escape_early(text: str) -> str:
    """quote_plus, then the hex digits of every escape in lower case (the reference's rule)."""
    quoted = quote_plus(text)
    if "%" not in quoted:
        return quoted
    pieces = quoted.split("%")
    return pieces[0] + "".join("%" + p[:2].lower() + p[2:] for p in pieces[1:])


class AkamaiEdgeAuth:
    """Akamai EdgeAuth tokens: ``[ip=..~][st=..~]exp=..[~acl=..][~id=..][~data=..]~hmac=HEX``.

    ``key`` is the hex secret from Property Manager. URL tokens sign ``url=<path>`` without
    emitting it; ACL tokens emit ``acl=`` (several ACLs joined by ``!``; ``*`` wildcards).
    """

    name = "akamai"

    def __init__(
        self,
        key: str,
        *,
        algorithm: Literal["sha256", "sha1", "md5"] = "sha256",
        token_name: str = "__token__",  # noqa: S107 - a parameter name
        field_delimiter: str = "~",
        acl_delimiter: str = "!",
        escape_early: bool = False,
        salt: str | None = None,
        bind_ip: bool = False,
    ) -> None:
        try:
            secret = binascii.a2b_hex(key.encode())
        except (binascii.Error, ValueError):
            raise ConfigError("Akamai EdgeAuth key must be an even-length hex string") from None
        if not secret:
            raise ConfigError("Akamai EdgeAuth key is empty")
        digest = _AKAMAI_ALGORITHMS.get(algorithm.lower())
        if digest is None:
            raise ConfigError("Akamai EdgeAuth algorithm must be sha256, sha1 or md5")
        self.token_name = token_name
        self.field_delimiter = field_delimiter
        self.acl_delimiter = acl_delimiter
        self.escape_early = escape_early
        self.salt = salt
        self.bind_ip = bind_ip
        self._hmac = hmac.new(secret, digestmod=digest)

    def _escape(self, text: str) -> str:
        return _escape_early(text) if self.escape_early else text

    def _token(
        self,
        path: str,
        *,
        is_url: bool,
        end_time: int,
        start_time: int | None,
        ip: str | None,
        session_id: str | None,
        payload: str | None,
    ) -> str:
        if end_time <= 0:
            raise ValueError("end_time must be Unix seconds > 0")
        if start_time is not None and end_time <= start_time:
            raise ValueError("the token would already be expired (end_time <= start_time)")
        fields: list[str] = []
        if ip:
            fields.append("ip=" + self._escape(ip))
        if start_time:
            fields.append(f"st={start_time}")
        fields.append(f"exp={end_time}")
        if not is_url:
            fields.append("acl=" + path)
        if session_id:
            fields.append("id=" + self._escape(session_id))
        if payload:
            fields.append("data=" + self._escape(payload))
        signed = list(fields)
        if is_url:
            signed.append("url=" + self._escape(path))
        if self.salt:
            signed.append("salt=" + self.salt)
        mac = self._hmac.copy()
        mac.update(self.field_delimiter.join(signed).encode())
        fields.append("hmac=" + mac.hexdigest())
        return self.field_delimiter.join(fields)

    def url_token(
        self,
        url_path: str,
        *,
        end_time: int,
        start_time: int | None = None,
        ip: str | None = None,
        session_id: str | None = None,
        payload: str | None = None,
    ) -> str:
        """A token valid for exactly ``url_path``."""
        if not url_path:
            raise ValueError("url_path is empty")
        return self._token(
            url_path,
            is_url=True,
            end_time=end_time,
            start_time=start_time,
            ip=ip,
            session_id=session_id,
            payload=payload,
        )

    def acl_token(
        self,
        acl: str | Sequence[str],
        *,
        end_time: int,
        start_time: int | None = None,
        ip: str | None = None,
        session_id: str | None = None,
        payload: str | None = None,
    ) -> str:
        """A token valid for every path the ACL matches (``/videos/demo/*``)."""
        joined = acl if isinstance(acl, str) else self.acl_delimiter.join(acl)
        if not joined:
            raise ValueError("acl is empty")
        return self._token(
            joined,
            is_url=False,
            end_time=end_time,
            start_time=start_time,
            ip=ip,
            session_id=session_id,
            payload=payload,
        )

    def sign_url(
        self, url: str, ctx: SignContext, *, prefix: bool = False, template: bool = False
    ) -> str | None:
        path = urlsplit(url).path or "/"
        ip = ctx.client_ip if self.bind_ip else None
        if prefix or template:
            token = self.acl_token(prefix_directory(path) + "*", end_time=ctx.expires_at, ip=ip)
        else:
            token = self.url_token(path, end_time=ctx.expires_at, ip=ip)
        return append_query(url, f"{self.token_name}={token}")


# --------------------------------------------------------------------------------------------
# S3 SigV4 presigned URLs

S3_MAX_EXPIRES: Final = 604800
_AWS_UNRESERVED: Final = "-_.~"


def _aws_quote(text: str) -> str:
    return quote(text, safe=_AWS_UNRESERVED)


class S3Presigner:
    """S3 SigV4 presigned URLs (``X-Amz-*`` query parameters, ``UNSIGNED-PAYLOAD``).

    The URL keeps its own query first, then ``X-Amz-Algorithm``, ``-Credential``, ``-Date``,
    ``-Expires``, ``-SignedHeaders``, ``-Security-Token`` (temporary credentials) and
    ``-Signature``: the layout botocore produces. One signature per object: no prefixes.
    """

    name = "s3"

    def __init__(
        self,
        access_key_id: str,
        secret_access_key: str,
        region: str,
        *,
        session_token: str | None = None,
        service: str = "s3",
    ) -> None:
        if not access_key_id or not secret_access_key or not region:
            raise ConfigError("S3 presigning needs an access key id, a secret key and a region")
        self.access_key_id = access_key_id
        self.region = region
        self.service = service
        self.session_token = session_token
        self._secret = ("AWS4" + secret_access_key).encode()
        self._keys: dict[str, bytes] = {}

    def _signing_key(self, date_stamp: str) -> bytes:
        key = self._keys.get(date_stamp)
        if key is None:
            key = self._secret
            for part in (date_stamp, self.region, self.service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            if len(self._keys) > 4:
                self._keys.clear()
            self._keys[date_stamp] = key
        return key

    def presign(self, url: str, *, signed_at: int, expires_in: int, method: str = "GET") -> str:
        """Presign ``url`` (``https://bucket.s3.region.amazonaws.com/key`` or path style)."""
        if not 1 <= expires_in <= S3_MAX_EXPIRES:
            raise ValueError(f"S3 presigned URLs expire within 1..{S3_MAX_EXPIRES} seconds")
        parts = urlsplit(_split_fragment(url))
        host = parts.netloc.lower()
        if not host or parts.scheme.lower() not in ("http", "https"):
            raise ValueError("S3 presigning needs an absolute http(s) URL")
        # S3 does not normalize or double-encode the key: encode each byte once.
        canonical_uri = quote(unquote(parts.path or "/"), safe="/~")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed_at))
        date_stamp = stamp[:8]
        scope = f"{date_stamp}/{self.region}/{self.service}/aws4_request"
        amz: list[tuple[str, str]] = [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", f"{self.access_key_id}/{scope}"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(expires_in)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if self.session_token:
            amz.append(("X-Amz-Security-Token", self.session_token))
        pairs: list[tuple[str, str]] = []
        for param in parts.query.split("&") if parts.query else ():
            name, _, value = param.partition("=")
            pairs.append((_aws_quote(unquote(name)), _aws_quote(unquote(value))))
        amz_encoded = [(_aws_quote(name), _aws_quote(value)) for name, value in amz]
        canonical_query = "&".join(f"{n}={v}" for n, v in sorted(pairs + amz_encoded))
        canonical_request = (
            f"{method}\n{canonical_uri}\n{canonical_query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD"
        )
        string_to_sign = (
            f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n"
            + hashlib.sha256(canonical_request.encode()).hexdigest()
        )
        signature = hmac.new(
            self._signing_key(date_stamp), string_to_sign.encode(), hashlib.sha256
        ).hexdigest()
        query = "&".join(f"{n}={v}" for n, v in amz_encoded)
        if parts.query:
            query = parts.query + "&" + query
        return f"{parts.scheme}://{parts.netloc}{canonical_uri}?{query}&X-Amz-Signature={signature}"

    def sign_url(
        self, url: str, ctx: SignContext, *, prefix: bool = False, template: bool = False
    ) -> str | None:
        if template:
            return None  # SigV4 signs one object; a template names many
        expires_in = min(max(ctx.expires_at - ctx.signed_at, 1), S3_MAX_EXPIRES)
        return self.presign(url, signed_at=ctx.signed_at, expires_in=expires_in)


# --------------------------------------------------------------------------------------------
# Our own token on a CDN host


class PdtUrlSigner:
    """Our ``pdt`` token on a CDN host whose origin is the sidecar (which verifies it).

    Prefix tokens cover ``/media/{videoId}/`` when the path is in our public namespace, else the
    URL's directory.
    """

    name = "pdt"

    def __init__(self, ring: urlsign.KeyRing, *, public_prefix: str = "/media/") -> None:
        self.ring = ring
        self.public_prefix = public_prefix

    def _scope(self, path: str) -> str:
        if path.startswith(self.public_prefix):
            slash = path.find("/", len(self.public_prefix))
            if slash > len(self.public_prefix) and "$" not in path[: slash + 1]:
                return path[: slash + 1]
        return prefix_directory(path)

    def sign_url(
        self, url: str, ctx: SignContext, *, prefix: bool = False, template: bool = False
    ) -> str | None:
        path = urlsplit(url).path or "/"
        scope = self._scope(path) if prefix or template else None
        try:
            token = urlsign.sign(
                self.ring,
                path,
                expires_at=ctx.expires_at,
                scope=scope,
                client_ip=ctx.client_ip,
                session_id=ctx.session_id,
            )
        except ValueError:
            return None  # a scope with dot segments or encoded separators: refuse to sign
        return urlsign.append_token(url, token)


# --------------------------------------------------------------------------------------------
# Configuration


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
