"""S3 SigV4 query-string (presigned) GET URLs."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from extproc.signers.base import SignContext, split_fragment
from playback_drm.settings import ConfigError

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
        parts = urlsplit(split_fragment(url))
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
