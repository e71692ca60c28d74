"""Errors of the ext_proc service. Every class has a stable ``code`` (a metric label) and a status.

    PlaybackError                         playback_drm.problem
    └── ExtprocError                      root of this package; never raised directly
        ├── ManifestError                 the origin's manifest cannot be rewritten (502)
        │   ├── ManifestTooLarge          body or decompressed body over the size limit
        │   ├── ManifestMalformed         not UTF-8, an over-long line, broken XML, bad nesting
        │   └── ManifestForbiddenXml      DOCTYPE / ENTITY declarations (XML bombs, XXE)
        ├── MapperContractError           a URI mapper returned something unwritable (500)
        └── (URL-signature errors: see the section below)

Manifest errors are the origin's fault, not the viewer's, hence 502 Bad Gateway: the sidecar fails
closed and never passes an unsigned manifest through.
"""

from __future__ import annotations

from typing import ClassVar

from playback_drm.problem import PlaybackError


class ExtprocError(PlaybackError):
    """Root of the ext_proc error tree."""

    code: ClassVar[str] = "extproc_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Manifest processing failed"


# --- Manifest rewriting (extproc.hls, extproc.dash, extproc.manifest) -----------------------------


class ManifestError(ExtprocError):
    """The upstream manifest cannot be rewritten safely; it is refused, never passed on unsigned."""

    code: ClassVar[str] = "manifest_error"
    status: ClassVar[int] = 502
    title: ClassVar[str] = "Manifest cannot be rewritten"


class ManifestTooLarge(ManifestError):
    """Raised when the body or its decompressed form exceeds the size limit (a zip bomb stops
    there)."""

    code: ClassVar[str] = "manifest_too_large"
    title: ClassVar[str] = "Manifest too large"


class ManifestMalformed(ManifestError):
    """Raised for invalid UTF-8, an HLS line over the length limit, text that is no playlist,
    malformed XML (bad tags, mismatched nesting, undefined entities), an unsupported encoding or
    content-coding, and corrupt compressed bodies."""

    code: ClassVar[str] = "manifest_malformed"
    title: ClassVar[str] = "Manifest malformed"


class ManifestForbiddenXml(ManifestError):
    """Raised as soon as a DOCTYPE or ENTITY declaration is seen: nothing is ever expanded."""

    code: ClassVar[str] = "manifest_forbidden_xml"
    title: ClassVar[str] = "Manifest uses forbidden XML constructs"


class MapperContractError(ExtprocError):
    """Raised when a URI mapper returns a URI that cannot be written back (a quote or line break
    inside an HLS attribute, a DASH template it rewrote instead of extending). A bug, not input."""

    code: ClassVar[str] = "manifest_mapper_contract"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "URI mapper broke its contract"


# --- URL signatures (extproc.signers, extproc.policy) ---------------------------------------------
