"""The manifest signer: given the request context and an origin response, produce the signed body.

Pure apart from the clock: no gRPC, no aiohttp. ``extproc.server`` adapts it to Envoy's ext_proc
stream and to the JSON endpoint. Signed manifests are cached per (requested path, public path,
video, binding, expiry window, origin document), bounded in entries and bytes, so a burst of
players in one window costs one rewrite.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape as xml_escape

from extproc.config import Binding, ExtprocConfig
from extproc.manifest import ManifestKind, decode_body, detect, rewrite
from extproc.policy import SigningPolicy
from extproc.uri import ManifestLimits, UriKind, UriMapper, UriRef
from playback_drm import contract, identity, urlsign


@dataclass(frozen=True, slots=True)
class ManifestContext:
    """What the signer needs to know about one viewer request."""

    public_path: str  # the manifest's own public path, e.g. /media/demo/master.m3u8
    request_path: str  # what the player asked for, e.g. /playback/demo/manifest
    video: str
    user: str | None
    session: str | None
    client_ip: str | None
    entry: bool  # the player's entry point (/playback/...): a PlaybackStarted
    format: str  # "hls" or "dash" (a hint; detection decides)


@dataclass(frozen=True, slots=True)
class SignedManifest:
    body: bytes
    kind: ManifestKind
    expires_at: int
    cached: bool
    decoded: bool  # the origin's content-encoding was removed


MapperFactory = Callable[[ManifestContext, float], UriMapper]


def mapper_factory(config: ExtprocConfig, policy: SigningPolicy) -> MapperFactory:
    """Bind the signing policy to a request: document URL, public path, binding."""
    prefix = config.media_prefix + "/"

    def factory(ctx: ManifestContext, now: float) -> UriMapper:
        video_prefix = f"{prefix}{ctx.video}/"
        document = (
            ctx.public_path[len(video_prefix) :]
            if ctx.public_path.startswith(video_prefix)
            else ctx.public_path
        )
        return policy.mapper(
            video_id=ctx.video,
            document_url=document,
            now=now,
            public_path=ctx.request_path,
            client_ip=ctx.client_ip,
            session_id=ctx.session,
        )

    return factory


def _iso_duration_seconds(text: str) -> float:
    """``PT1H2M3.5S`` / ``P1DT2H`` -> seconds; 0.0 when it is not a duration we understand."""
    if not text.startswith("P"):
        return 0.0
    total, number, in_time = 0.0, "", False
    units_date = {"D": 86400.0, "W": 604800.0}
    units_time = {"H": 3600.0, "M": 60.0, "S": 1.0}
    for ch in text[1:]:
        if ch == "T":
            in_time = True
        elif ch.isdigit() or ch == ".":
            number += ch
        else:
            table = units_time if in_time else units_date
            if ch not in table or not number:
                return 0.0
            try:
                total += float(number) * table[ch]
            except ValueError:
                return 0.0
            number = ""
    return total


_EXTINF = re.compile(rb"#EXTINF:([0-9.]+)")


def presentation_seconds(kind: ManifestKind, body: bytes) -> float:
    """How long a VOD document plays (0.0 for live documents and multivariant playlists).

    HLS: the sum of ``#EXTINF`` durations of a playlist that has ``#EXT-X-ENDLIST``. DASH: the
    ``mediaPresentationDuration`` of a ``type="static"`` MPD. One linear scan; computed on cache
    misses only.
    """
    if kind is ManifestKind.HLS:
        if b"#EXT-X-ENDLIST" not in body:
            return 0.0
        total = 0.0
        for value in _EXTINF.findall(body):  # one pass in C over the whole document
            with contextlib.suppress(ValueError):  # "1.2.3" is malformed: count nothing
                total += float(value)
        return total
    head = body[:8192]
    root = head.find(b"<MPD")
    if root < 0:
        return 0.0
    tag_end = head.find(b">", root)
    tag = head[root : tag_end if tag_end > 0 else len(head)].decode("utf-8", "replace")
    if 'type="dynamic"' in tag or "type='dynamic'" in tag:
        return 0.0
    for quote in ('"', "'"):
        marker = f"mediaPresentationDuration={quote}"
        at = tag.find(marker)
        if at >= 0:
            value_end = tag.find(quote, at + len(marker))
            return _iso_duration_seconds(tag[at + len(marker) : value_end])
    return 0.0


_MPD_TAG = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?MPD[\s>]")
_LOCATION_TAG = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?Location[\s>]")


def with_location(body: bytes, public_path: str, mapper: UriMapper) -> bytes:
    """A dynamic MPD served at the entry route (``/playback/{id}/manifest?format=dash``, the URL
    that carries the viewer's JWT) without a ``Location`` of its own gets one: the MPD's own
    signed ``/media/`` URL, per URL and bound to the playback session like a playlist. Players
    (Shaka, dash.js) refresh from ``Location``, so the JWT travels on the first request only and
    each refresh does not start a session of its own. The element goes first inside ``MPD``
    (players read it by name; the MPD is otherwise byte for byte what the rewriter made)."""
    head = body[:8192]
    tag = _MPD_TAG.search(head)
    if tag is None:
        return body
    tag_end = head.find(b">", tag.start())
    if tag_end < 0 or head[tag_end - 1 : tag_end] == b"/":
        return body
    root = head[tag.start() : tag_end]
    if b'type="dynamic"' not in root and b"type='dynamic'" not in root:
        return body
    if _LOCATION_TAG.search(body) is not None:
        return body
    prefix = root[1 : root.find(b"MPD")]  # a namespace prefix on the root, if any
    document = public_path.rsplit("/", 1)[-1]
    url = mapper(UriRef(document, UriKind.DASH_LOCATION))
    if not url:
        return body
    element = b"<%bLocation>%b</%bLocation>" % (
        prefix,
        xml_escape(url).encode(),
        prefix,
    )
    return body[: tag_end + 1] + element + body[tag_end + 1 :]


def context_from_request(
    config: ExtprocConfig, path_and_query: str, headers: Mapping[str, str]
) -> ManifestContext | None:
    """Map the viewer's request path to the manifest's public path; None if not a manifest route."""
    path, _, query = path_and_query.partition("?")
    parts = path.split("/")
    prefix = config.media_prefix
    video: str | None = None
    entry = False
    fmt = "hls"
    if len(parts) == 4 and parts[1] == "playback" and parts[3] == "manifest":
        video = unquote(parts[2])
        entry = True
        if "format=" in query and ("format", "dash") in parse_qsl(query):
            fmt = "dash"
        template = config.dash_template if fmt == "dash" else config.hls_template
        public_path = f"{prefix}/{template.replace('{videoId}', video)}"
    elif path.startswith(prefix + "/") and len(parts) >= 4:
        video = unquote(path[len(prefix) + 1 :].split("/", 1)[0])
        public_path = path
        fmt = "dash" if path.endswith(".mpd") else "hls"
    else:
        return None
    if not video or "/" in video or ".." in video:
        return None
    return ManifestContext(
        public_path=public_path,
        request_path=path,
        video=headers.get(identity.VIDEO_HEADER) or video,
        user=headers.get(identity.USER_HEADER) or None,
        session=headers.get(identity.SESSION_HEADER) or None,
        client_ip=_client_ip(headers),
        entry=entry,
        format=fmt,
    )


def _client_ip(headers: Mapping[str, str]) -> str | None:
    """The viewer's address as Envoy derived it; never X-Forwarded-For, which a client writes."""
    external = headers.get(contract.EXTERNAL_ADDRESS_HEADER, "").strip()
    return external or None


class ManifestSigner:
    def __init__(
        self,
        config: ExtprocConfig,
        mapper_factory: MapperFactory,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._factory = mapper_factory
        self._clock = clock
        self._limits = ManifestLimits(max_bytes=config.max_manifest_bytes)
        # (request path, public path, video, binding, expiry window, content type, origin
        # document) -> (signed body, kind, expiry, bytes held)
        self._cache: OrderedDict[
            tuple[str, str, str, str, int, str | None, bytes],
            tuple[bytes, ManifestKind, int, int],
        ] = OrderedDict()
        self._cache_entries = config.cache_entries
        self._cache_budget = config.cache_bytes
        self._cache_bytes = 0
        self.hits = 0
        self.misses = 0

    def expires_at(self, now: float | None = None) -> int:
        now = self._clock() if now is None else now
        return urlsign.expiry_for(now, self._config.ttl, self._config.window)

    def binding_value(self, ctx: ManifestContext) -> str:
        """What the signed body depends on besides the document: the configured binding, and
        the playback session in any case (key and license URLs are always bound to it)."""
        binding = self._config.policy.binding
        if binding is Binding.IP:
            return f"{ctx.client_ip or ''}|{ctx.session or ''}"
        return ctx.session or ""

    def sign(
        self,
        ctx: ManifestContext,
        content_type: str | None,
        content_encoding: str | None,
        body: bytes,
    ) -> SignedManifest | None:
        """The signed manifest, or None when the body is not a manifest (passed through as is).

        Raises the typed errors of ``extproc.errors`` for malformed, oversized or forbidden input.
        """
        encoding = (content_encoding or "").strip().lower()
        decoded = decode_body(body, encoding or None, self._limits)
        now = self._clock()
        # The rewrite depends on the path the player asked for (relative URIs are written
        # against it), not only on the origin document: /playback/{id}/manifest and the
        # manifest's own signed /media/ URL share a public path but not a base. The origin
        # document itself is part of the key (hashing it costs less than a digest, and equal
        # keys mean equal documents, not a collision).
        key = (
            ctx.request_path,
            ctx.public_path,
            ctx.video,
            self.binding_value(ctx),
            self.expires_at(now),  # the expiry window; the VOD extension follows from the body
            content_type,
            decoded,
        )
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return SignedManifest(hit[0], hit[1], hit[2], True, decoded is not body)
        kind = detect(content_type, decoded)
        if kind is None:
            return None  # never cached: a hit is always a manifest
        self.misses += 1
        # A VOD player fetches a media playlist once and plays it to the end: its segment URLs
        # must outlive the presentation, so they expire TTL after it could have been played.
        if self._config.vod_extension_max:
            now += min(presentation_seconds(kind, decoded), self._config.vod_extension_max)
        expires_at = self.expires_at(now)
        mapper = self._factory(ctx, now)
        signed = rewrite(kind, decoded, mapper, self._limits)
        if kind is ManifestKind.DASH and ctx.entry:
            signed = with_location(signed, ctx.public_path, mapper)
        size = len(decoded) + len(signed)
        if self._cache_entries and size <= self._cache_budget // 4:
            self._cache[key] = (signed, kind, expires_at, size)
            self._cache_bytes += size
            while len(self._cache) > self._cache_entries or self._cache_bytes > self._cache_budget:
                self._cache_bytes -= self._cache.popitem(last=False)[1][3]
        return SignedManifest(signed, kind, expires_at, False, decoded is not body)
