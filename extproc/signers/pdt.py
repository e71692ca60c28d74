"""Our own ``pdt`` token (:mod:`playback_drm.urlsign`) on a CDN host that forwards to the
sidecar."""

from __future__ import annotations

from urllib.parse import urlsplit

from extproc.signers.base import SignContext, prefix_directory
from playback_drm import urlsign


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
