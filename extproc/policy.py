"""Signing policy: the :class:`~extproc.manifest.UriMapper` that decides, URI by URI, what every
URI of a manifest becomes. Pure logic: no gRPC, no I/O.

Each URI the rewriter offers is resolved against the manifest's origin URL and its DASH
``BaseURL`` chain, then:

0. time sources (``UTCTiming@value`` of a DASH MPD) are never signed, wherever they are: a clock
   protects nothing, players fetch it with no token of their own (dash.js and Shaka ask it before
   anything else and again while playing), and a token there would only leak the session's
   binding to whoever serves the time (counted as ``time_source``);
1. kinds configured as unsigned (``URL_TOKEN_UNSIGNED_KINDS``, default none) stay as they are;
2. our origin (relative URIs, absolute URIs on the ``ORIGIN_URL`` host):

   - paths under an in-place prefix (``/drm/key/``: HLS AES-128 keys, ``/drm/license/``: license
     URLs, both served by the license broker) keep their path and get a per-URL ``pdt`` token,
     bound to the playback session whenever the manifest has one (whatever
     ``URL_TOKEN_BINDING`` says: they take the session's concurrent-stream slot; playlist URLs
     are too, since they lead to the next ones); license URLs live as long as playlist URLs
     (renewals);
   - paths under ``ORIGIN_URL`` (``{ORIGIN_URL}{videoId}/{path}``) become the public
     ``/media/{videoId}/{path}`` with a ``pdt`` token. A relative URI stays relative (only the
     token is appended, so :func:`playback_drm.urlsign.strip_token` gives back the original)
     whenever the player resolves it to that same public URL: when the manifest itself is served
     from the mirrored public path, or when it sits below a DASH ``BaseURL`` (which is rewritten
     itself). Otherwise (the master manifest served at ``/playback/{videoId}/manifest``, absolute
     origin URLs) it becomes an absolute path ``/media/{videoId}/...``;
   - anything else on the origin (no ``{videoId}/`` segment) cannot be expressed publicly and is
     left alone (counted as ``unmappable``);
3. absolute URIs on the hosts of ``PUBLIC_BASE_URLS`` under ``/media/`` or an in-place prefix:
   signed in place;
4. absolute URIs on a host of the CDN allowlist (``CDN_SIGNERS``): that host's signer
   (CloudFront, Akamai, S3, or our own token), see :mod:`extproc.signers`;
5. anything else (third-party hosts, other schemes) is left alone: tokens never leak.

Tokens. ``URL_TOKEN_MODE=prefix`` (default): one token scoped to ``/media/{videoId}/`` for every
URI of the video, computed once per manifest; identical URLs within an expiry window are cache
friendly. ``url``: one token per concrete path. DASH templates (``$Number$`` ...) are expanded by
the player, so they always get a prefix token (scope: the video, or in ``url`` mode the template's
directory). Paths outside the video, in-place paths and paths a prefix token could not verify
(encoded separators) get per-URL tokens. Expiry: ``now + URL_TOKEN_TTL`` rounded up to
``URL_TOKEN_WINDOW`` (:func:`playback_drm.urlsign.expiry_for`). URIs a player re-fetches
(playlists, rendition reports, MPD ``Location``/``PatchLocation``, steering) may get a longer
``URL_TOKEN_PLAYLIST_TTL`` for live streams: each refresh of a playlist signs its segments anew;
those URIs then always get per-URL tokens, so a long-lived token never covers segments.
``URL_TOKEN_BINDING``: ``none``, ``ip`` (client address) or ``session`` (the playback session
authz started for the entry manifest; the service's default): with ``session`` every request of a
playback is a sign of life of its session (docs/ARCHITECTURE.md, "Playback sessions").

Within one manifest the same URI always maps to the same output (memoized per rewrite: a
BYTERANGE sub-range and an ``EXT-X-MAP`` naming the same file get one URL).

Configuration: :class:`extproc.config.PolicyConfig`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Final
from urllib.parse import urlsplit

from extproc.config import Binding, PolicyConfig, TokenMode
from extproc.errors import ExtprocError
from extproc.signers import SignContext, UrlSigner, prefix_directory
from extproc.uri import UriKind, UriRef
from extproc.urls import (
    is_relative_path,
    is_simple,
    needs_cleaning,
    normalize_netloc,
    resolve_reference,
)
from playback_drm import urlsign
from playback_drm.contract import (
    LICENSE_KEY_SYSTEMS,
    LICENSE_PATH,
    SESSION_END_PATH,
    SESSION_HEARTBEAT_PATH,
)

__all__ = [
    "NEVER_SIGNED_KINDS",
    "REFRESH_KINDS",
    "ManifestUriMapper",
    "SessionUrls",
    "SigningPolicy",
    "SigningUnavailable",
    "valid_video_id",
]

logger = logging.getLogger(__name__)

REFRESH_KINDS: Final = frozenset(
    {
        UriKind.PLAYLIST,
        UriKind.RENDITION_REPORT,
        UriKind.DASH_LOCATION,
        UriKind.DASH_PATCH_LOCATION,
        UriKind.STEERING,
    }
)
# Time sources: a clock needs no token (rule 0 of the module docstring).
NEVER_SIGNED_KINDS: Final = frozenset({UriKind.DASH_UTC_TIMING})
_VIDEO_ID_FIRST: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_VIDEO_ID_CHARS: Final = _VIDEO_ID_FIRST | frozenset("_.-")
_MISS: Final = object()


class SigningUnavailable(ExtprocError):
    """A manifest cannot be signed as configured (an IP-bound policy without a client address,
    a session-bound one without a session, an invalid video id). Fails closed."""

    code: ClassVar[str] = "url_signing_unavailable"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Manifest URLs cannot be signed"


def valid_video_id(video_id: str) -> bool:
    """Same rule as authz: ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`` and no ``..``."""
    return (
        0 < len(video_id) <= 128
        and video_id[0] in _VIDEO_ID_FIRST
        and set(video_id) <= _VIDEO_ID_CHARS
        and ".." not in video_id
    )


@dataclass(frozen=True, slots=True)
class SessionUrls:
    """``POST`` it to end the session at once (``navigator.sendBeacon`` on ``pagehide``)."""

    end: str
    heartbeat: str  # ``POST`` it while paused to keep the stream slot (a sign of life)
    licenses: dict[str, str]  # EME key system -> the session's license URL
    expires_at: int


@dataclass(frozen=True, slots=True)
class _Base:
    url: str  # absolute URL the references resolve against
    public_dir: str | None  # public directory of ``url`` when it is on our origin, else None
    relative_ok: bool  # a relative URI may stay relative (the player resolves it the same way)
    in_video: bool  # public_dir is inside /media/{videoId}/, without dot segments or encoded
    # separators (what the video-wide token covers; the slow path checks the same)


class SigningPolicy:
    """Built once per process from a :class:`PolicyConfig`; hands out one mapper per rewrite."""

    __slots__ = (
        "_origin_path",
        "_origin_url",
        "config",
        "fast_kinds",
        "origin_netloc",
        "origin_scheme",
        "public_hosts",
        "refresh_ttl",
    )

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        origin = config.origin_url if config.origin_url.endswith("/") else config.origin_url + "/"
        parts = urlsplit(origin)
        self._origin_url = origin
        self.origin_scheme = parts.scheme.lower()
        self.origin_netloc = normalize_netloc(self.origin_scheme, parts.netloc)
        self._origin_path = parts.path
        self.refresh_ttl = config.playlist_ttl or config.ttl
        self.public_hosts = config.public_hosts
        signed = [
            kind
            for kind in UriKind
            if kind not in config.unsigned_kinds and kind not in NEVER_SIGNED_KINDS
        ]
        # [without, with] a separate playlist TTL: the kinds a mapper's fast path may sign.
        self.fast_kinds = (
            tuple(signed),
            tuple(kind for kind in signed if kind not in REFRESH_KINDS),
        )

    def public_base(self, authority: str) -> str:
        """The absolute base (``scheme://host[:port]``) of a public URL handed to a client that
        asked for ``authority`` (its Host): that base when it is one of ``PUBLIC_BASE_URLS``, else
        the first of them; ``""`` when none is configured (the URL stays a path, resolved by the
        client against the URL it asked). Never built from what the client sent: the answer is
        always a configured string."""
        bases = self.config.public_base_urls
        if not bases:
            return ""
        for base in bases:
            scheme, _, netloc = base.partition("://")
            if normalize_netloc(scheme, authority.strip()) == netloc:
                return base
        return bases[0]

    def origin_url_for(self, video_id: str, path: str) -> str:
        """The origin URL of ``/media/{video_id}/{path}`` (``path`` relative to the video)."""
        return f"{self._origin_url}{video_id}/{path.lstrip('/')}"

    def mapper(
        self,
        *,
        video_id: str,
        document_url: str,
        now: float,
        public_path: str | None = None,
        client_ip: str | None = None,
        session_id: str | None = None,
    ) -> ManifestUriMapper:
        """A mapper for one manifest response.

        ``document_url``: the manifest's URL at the origin (absolute), or its path relative to
        the video (``master.m3u8``, ``hls/720p/playlist.m3u8``). ``public_path``: the path the
        player requested (``/playback/demo/manifest`` or ``/media/demo/hls/720p/playlist.m3u8``),
        which decides whether relative URIs may stay relative.
        """
        if not valid_video_id(video_id):
            raise SigningUnavailable("invalid video id")
        config = self.config
        if config.binding is Binding.IP and not client_ip:
            raise SigningUnavailable("IP-bound URL tokens need the client address")
        if config.binding is Binding.SESSION and not session_id:
            raise SigningUnavailable("session-bound URL tokens need a session id")
        if "://" not in document_url:
            document_url = self.origin_url_for(video_id, document_url)
        try:
            return ManifestUriMapper(
                self,
                video_id=video_id,
                document_url=document_url,
                public_path=public_path,
                now=now,
                client_ip=client_ip if config.binding is Binding.IP else None,
                session_id=session_id if config.binding is Binding.SESSION else None,
                key_session_id=session_id,
            )
        except ValueError as exc:  # e.g. a client address that is not an IP address
            raise SigningUnavailable(str(exc)) from None

    def signed_manifest_url(
        self,
        *,
        video_id: str,
        path: str,
        now: float,
        client_ip: str | None = None,
        session_id: str | None = None,
    ) -> tuple[str, int]:
        """``(url, expires_at)`` of ``/media/{video_id}/{path}`` signed as a playlist: the JSON
        form of the manifest route (``{"url", "expiresAt"}``)."""
        mapper = self.mapper(
            video_id=video_id,
            document_url=path,
            now=now,
            client_ip=client_ip,
            session_id=session_id,
        )
        url = mapper(UriRef(self.origin_url_for(video_id, path), UriKind.PLAYLIST))
        if url is None:
            raise SigningUnavailable("the manifest path cannot be expressed as a public URL")
        return url, mapper.refresh_expires_at

    def session_urls(self, *, session_id: str, now: float) -> SessionUrls:
        """The signed URLs of a playback session an app calls itself (the JSON form returns
        them), bound to the session and living as long as playlist URLs (paths on the player's
        host)."""
        keys, expires_at = (
            self.config.keys,
            urlsign.expiry_for(now, self.refresh_ttl, self.config.window),
        )
        minter = urlsign.minter(keys, expires_at=expires_at, session_id=session_id)
        # one token for every key system's license route
        licenses = (
            "?pdt="
            + urlsign.minter(
                keys, expires_at=expires_at, scope=LICENSE_PATH + "/", session_id=session_id
            ).token()
        )
        return SessionUrls(
            end=f"{SESSION_END_PATH}?pdt={minter.token(SESSION_END_PATH)}",
            heartbeat=f"{SESSION_HEARTBEAT_PATH}?pdt={minter.token(SESSION_HEARTBEAT_PATH)}",
            licenses={name: f"{LICENSE_PATH}/{name}{licenses}" for name in LICENSE_KEY_SYSTEMS},
            expires_at=expires_at,
        )

    # -- classification of absolute URLs ------------------------------------------------------

    def public_path_of(self, url: str) -> str | None:
        """``/media/{videoId}/{path}`` (with the URL's query) for an origin URL, else None."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if scheme != self.origin_scheme:
            return None
        if normalize_netloc(scheme, parts.netloc) != self.origin_netloc:
            return None
        return self.public_path(parts.path, parts.query)

    def public_path(self, path: str, query: str) -> str | None:
        """The public path of an origin path, or None when it is not ``{videoId}/...``."""
        if not path.startswith(self._origin_path):
            return None
        for prefix in self.config.in_place_prefixes:
            if path.startswith(prefix):
                return None
        rest = path[len(self._origin_path) :]
        slash = rest.find("/")
        if slash <= 0 or not valid_video_id(rest[:slash]):
            return None
        public = self.config.public_prefix + rest
        return f"{public}?{query}" if query else public

    def public_dir_of(self, url: str) -> str | None:
        """The public directory of an origin URL (what relative references resolve against)."""
        public = self.public_path_of(url.partition("#")[0])
        if public is None:
            return None
        public = public.partition("?")[0]
        return public[: public.rfind("/") + 1]


class ManifestUriMapper:
    """The :class:`~extproc.manifest.UriMapper` for one manifest response (not thread-safe; one
    per rewrite). ``stats`` counts decisions (``signed``, ``in_place``, ``cdn:<name>``,
    ``third_party``, ``unsigned_kind``, ``time_source``, ``unmappable``, ``cdn_refused``) for
    metrics."""

    __slots__ = (
        "_bases",
        "_ctx",
        "_fast_kinds",
        "_fast_signed",
        "_key_binding",
        "_key_minter",
        "_key_refresh_minter",
        "_key_scope_tokens",
        "_memo",
        "_minter",
        "_policy",
        "_prefix_mode",
        "_refresh_ctx",
        "_refresh_minter",
        "_relative_ok_bases",
        "_scope_tokens",
        "_stats",
        "_suffix_amp",
        "_suffix_q",
        "_video_token",
        "client_ip",
        "document_url",
        "expires_at",
        "refresh_expires_at",
        "session_id",
        "video_id",
        "video_prefix",
    )

    def __init__(
        self,
        policy: SigningPolicy,
        *,
        video_id: str,
        document_url: str,
        public_path: str | None,
        now: float,
        client_ip: str | None,
        session_id: str | None,
        key_session_id: str | None = None,
    ) -> None:
        config = policy.config
        self._policy = policy
        self.video_id = video_id
        self.document_url = document_url
        self.video_prefix = f"{config.public_prefix}{video_id}/"
        self.client_ip = client_ip
        self.session_id = session_id
        self.expires_at = urlsign.expiry_for(now, config.ttl, config.window)
        self.refresh_expires_at = urlsign.expiry_for(now, policy.refresh_ttl, config.window)
        # A window-aligned "signed at" no later than now: identical S3 URLs within a window.
        signed_at = max(self.expires_at - config.ttl - max(config.window, 1), 0)
        self._ctx = SignContext(self.expires_at, signed_at, client_ip, session_id)
        self._refresh_ctx = SignContext(
            self.refresh_expires_at,
            max(self.refresh_expires_at - policy.refresh_ttl - max(config.window, 1), 0),
            client_ip,
            session_id,
        )
        self._prefix_mode = config.mode is TokenMode.PREFIX
        binding = {"client_ip": client_ip, "session_id": session_id}
        self._minter = urlsign.minter(config.keys, expires_at=self.expires_at, **binding)
        self._refresh_minter = (
            urlsign.minter(config.keys, expires_at=self.refresh_expires_at, **binding)
            if self.refresh_expires_at != self.expires_at
            else None
        )
        # Our in-place routes (HLS keys, license URLs) take the session's stream slot: they are
        # bound to the playback session whenever there is one, whatever URL_TOKEN_BINDING says;
        # so are playlists, which lead to the next key URLs.
        self._key_binding: dict[str, str | None] = (
            {"client_ip": None, "session_id": key_session_id} if key_session_id else binding
        )
        if self._key_binding == binding:
            self._key_minter, self._key_refresh_minter = self._minter, self._refresh_minter
        else:
            self._key_minter = urlsign.minter(
                config.keys, expires_at=self.expires_at, **self._key_binding
            )
            self._key_refresh_minter = (
                urlsign.minter(config.keys, expires_at=self.refresh_expires_at, **self._key_binding)
                if self._refresh_minter is not None
                else None
            )
        self._key_scope_tokens: dict[str, str] = {}
        self._video_token = urlsign.minter(
            config.keys, expires_at=self.expires_at, scope=self.video_prefix, **binding
        ).token()
        self._scope_tokens: dict[str, str] = {self.video_prefix: self._video_token}
        self._suffix_q = "?pdt=" + self._video_token
        self._suffix_amp = "&pdt=" + self._video_token
        self._memo: dict[UriRef, str | None] = {}
        self._stats: dict[str, int] = {}
        self._fast_signed = 0
        # Kinds the fast path may sign without looking further (compared by identity: hashing
        # an Enum member runs Python code).
        # Playlists carry the session on when their segments do not (URL_TOKEN_BINDING none or
        # ip): they are signed one by one, never by the fast path.
        self._fast_kinds = policy.fast_kinds[
            self._refresh_minter is not None or self._key_minter is not self._minter
        ]
        # Below a DASH BaseURL a relative URI may stay relative: the BaseURL is rewritten itself.
        self._relative_ok_bases = UriKind.DASH_BASE_URL not in config.unsigned_kinds
        doc_dir = policy.public_dir_of(document_url)
        # Without BaseURLs, only when the player resolves against the mirrored public URL of
        # this very document.
        relative_top = False
        if public_path is not None and doc_dir is not None:
            requested = public_path.partition("?")[0]
            relative_top = requested[: requested.rfind("/") + 1] == doc_dir
        self._bases: dict[tuple[str, ...], _Base] = {
            (): self._make_base(document_url, doc_dir, relative_top)
        }

    def _make_base(self, url: str, public_dir: str | None, relative_ok: bool) -> _Base:
        in_video = (
            public_dir is not None
            and public_dir.startswith(self.video_prefix)
            and not urlsign.has_traversal(urlsign.canonical_path(public_dir))
        )
        return _Base(url, public_dir, relative_ok, in_video)

    @property
    def stats(self) -> dict[str, int]:
        """Decisions so far, per URI occurrence (memoized repeats of slow-path URIs count once):
        ``signed``, ``in_place``, ``cdn:<name>``, ``third_party``, ``unsigned_kind``,
        ``unmappable``, ``cdn_refused``, ``invalid``."""
        stats = dict(self._stats)
        if self._fast_signed:
            stats["signed"] = stats.get("signed", 0) + self._fast_signed
        return stats

    def _count(self, what: str) -> None:
        self._stats[what] = self._stats.get(what, 0) + 1

    def __call__(self, ref: UriRef, /) -> str | None:
        raw, kind, is_template, bases = ref
        base = self._bases.get(bases) if bases else self._bases[()]
        if (
            base is not None
            and base.public_dir is not None
            and raw
            and kind in self._fast_kinds
            and raw[0] > " "
            and raw[-1] > " "
            and raw[0] not in "/."
            and raw.isprintable()
            and ":" not in raw
            and "%" not in raw
            and "/." not in raw
            and "#" not in raw
            and "\\" not in raw
        ):
            # Fast path (the bulk of every manifest): a plain relative path below a directory of
            # our origin. Pure function of the input, so no memo is needed for consistency.
            if base.in_video and self._prefix_mode:
                self._fast_signed += 1
                suffix = self._suffix_amp if "?" in raw else self._suffix_q
                return (raw if base.relative_ok else base.public_dir + raw) + suffix
            if not is_template:
                self._fast_signed += 1
                query_at = raw.find("?")
                if query_at < 0:
                    token = self._minter.token(base.public_dir + raw)
                    separator = "?pdt="
                else:
                    token = self._minter.token(base.public_dir + raw[:query_at])
                    separator = "&pdt="
                target = raw if base.relative_ok else base.public_dir + raw
                return target + separator + token
        cached = self._memo.get(ref, _MISS)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        out = self._map(ref)
        self._memo[ref] = out
        return out

    # -- decisions ----------------------------------------------------------------------------

    def _base(self, bases: tuple[str, ...]) -> _Base:
        found = self._bases.get(bases)
        if found is None:
            url = resolve_reference(self._base(bases[:-1]).url, bases[-1])
            found = self._make_base(url, self._policy.public_dir_of(url), self._relative_ok_bases)
            self._bases[bases] = found
        return found

    def _map(self, ref: UriRef) -> str | None:
        raw, kind, is_template, bases = ref
        config = self._policy.config
        if kind in NEVER_SIGNED_KINDS:
            self._count("time_source")
            return None
        if kind in config.unsigned_kinds:
            self._count("unsigned_kind")
            return None
        if not raw:
            return None
        base = self._base(bases)
        if needs_cleaning(raw):
            relative_ok = False
        else:
            relative_ok = base.relative_ok
            if base.public_dir is not None and is_simple(raw):
                # Fast path: a plain relative path below a directory of our origin.
                query_at = raw.find("?")
                path = base.public_dir + (raw if query_at < 0 else raw[:query_at])
                target = raw if relative_ok else base.public_dir + raw
                return self._sign_ours(raw, path, target, ref)

        resolved = resolve_reference(base.url, raw)
        try:
            parts = urlsplit(resolved)
        except ValueError:  # e.g. an unterminated IPv6 literal: not a URL anyone can fetch
            self._count("invalid")
            return None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            self._count("third_party")
            return None
        policy = self._policy
        netloc = normalize_netloc(scheme, parts.netloc)
        path = parts.path or "/"
        ours = netloc == policy.origin_netloc and scheme == policy.origin_scheme
        public_host = netloc in policy.public_hosts
        if ours or public_host:
            for prefix in config.in_place_prefixes:
                if path.startswith(prefix):
                    return self._sign_in_place(raw, resolved, path, parts.query, ref, public_host)
        if ours:
            public = policy.public_path(path, parts.query)
            if public is None:
                self._count("unmappable")
                if self._stats["unmappable"] == 1:  # once per manifest, not once per URI
                    logger.warning(
                        "manifest URI on the origin outside ORIGIN_URL/{videoId}/ left unsigned",
                        extra={"videoId": self.video_id, "uriKind": kind.value},
                    )
                return None
            if is_relative_path(raw) and relative_ok:
                target = raw
            elif (
                is_template
                and base.public_dir is not None
                and is_relative_path(raw)
                and not needs_cleaning(raw)
            ):
                target = base.public_dir + raw  # dot segments left for the player to resolve
            else:
                target = public
            return self._sign_ours(raw, public.partition("?")[0], target, ref)
        if public_host and path.startswith(config.public_prefix):
            return self._sign_in_place(raw, resolved, path, parts.query, ref, public_host)
        signer = config.cdn_signers.get(netloc)
        if signer is not None:
            return self._sign_cdn(signer, raw, resolved, ref, relative_ok)
        self._count("third_party")
        return None

    def _token_for(self, path: str, kind: UriKind, is_template: bool) -> str | None:
        """The pdt value for a public path, following the mode, kind and template rules."""
        if is_template:
            if self._prefix_mode and path.startswith(self.video_prefix):
                return self._video_token
            return self._scope_token(prefix_directory(path))
        if kind in REFRESH_KINDS:
            # a playlist names the session even when its segments are not bound to it: the key
            # and license URLs the next playlist lists must be
            if self._key_refresh_minter is not None:
                return self._key_refresh_minter.token(path)
            if self._key_minter is not self._minter:
                return self._key_minter.token(path)
        if (
            self._prefix_mode
            and path.startswith(self.video_prefix)
            and not urlsign.has_traversal(urlsign.canonical_path(path))
        ):
            return self._video_token
        return self._minter.token(path)

    def _scope_token(self, scope: str, *, in_place: bool = False) -> str | None:
        scope = urlsign.canonical_path(scope)
        tokens = self._key_scope_tokens if in_place else self._scope_tokens
        token = tokens.get(scope)
        if token is None:
            binding: dict[str, str | None] = (
                self._key_binding
                if in_place
                else {"client_ip": self.client_ip, "session_id": self.session_id}
            )
            try:
                token = urlsign.minter(
                    self._policy.config.keys, expires_at=self.expires_at, scope=scope, **binding
                ).token()
            except ValueError:
                return None  # a template directory with dot segments or encoded separators
            tokens[scope] = token
        return token

    def _finish(self, out: str, raw: str, is_template: bool, what: str) -> str | None:
        if is_template and raw not in out:
            # The rewriter escapes every '$' the mapper adds: the template text must survive.
            self._count("unmappable")
            return None
        self._count(what)
        return out

    def _sign_ours(self, raw: str, path: str, target: str, ref: UriRef) -> str | None:
        token = self._token_for(path, ref.kind, ref.is_template)
        if token is None:
            self._count("unmappable")
            return None
        return self._finish(urlsign.append_token(target, token), raw, ref.is_template, "signed")

    def _sign_in_place(
        self, raw: str, resolved: str, path: str, query: str, ref: UriRef, public_host: bool
    ) -> str | None:
        if path.startswith(self._policy.config.public_prefix):
            token = self._token_for(path, ref.kind, ref.is_template)
        elif ref.is_template:
            token = self._scope_token(prefix_directory(path), in_place=True)
        elif (
            ref.kind in REFRESH_KINDS or ref.kind is UriKind.LICENSE_URL
        ) and self._key_refresh_minter is not None:
            # a license URL is used again for renewals: it lives like a playlist URL
            token = self._key_refresh_minter.token(path)
        else:
            token = self._key_minter.token(path)
        if token is None:
            self._count("unmappable")
            return None
        if raw.startswith("/") and not raw.startswith("//"):
            target = raw  # already a path on the player's host
        elif public_host:
            target = resolved
        else:  # an origin URL (or a relative one climbing out of the video): a path on our host
            target = f"{path}?{query}" if query else path
        return self._finish(urlsign.append_token(target, token), raw, ref.is_template, "in_place")

    def _sign_cdn(
        self, signer: UrlSigner, raw: str, resolved: str, ref: UriRef, relative_ok: bool
    ) -> str | None:
        refresh = ref.kind in REFRESH_KINDS
        ctx = self._refresh_ctx if refresh else self._ctx
        prefix = self._prefix_mode and not refresh
        signed = signer.sign_url(resolved, ctx, prefix=prefix, template=ref.is_template)
        if signed is None:
            self._count("cdn_refused")
            return None
        out = signed
        if relative_ok and is_relative_path(raw) and signed.startswith(resolved):
            out = raw + signed[len(resolved) :]
        return self._finish(out, raw, ref.is_template, "cdn:" + signer.name)
