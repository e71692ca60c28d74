"""Akamai EdgeAuth (Auth Token 2.0) URL and ACL tokens, field order ``ip~st~exp~acl~id~data~hmac``
as in Akamai's reference implementation (EdgeAuth-Token-Python)."""

from __future__ import annotations

import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import Final, Literal
from urllib.parse import quote_plus, urlsplit

from extproc.signers.base import SignContext, append_query, prefix_directory
from playback_drm.settings import ConfigError

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
