"""The demo pages, served by the demo origin at ``/demo/`` (same origin as the gateway) and by the
local stack's site on an origin of its own (cross-origin, as a platform's pages are):

- ``index.html`` + ``app.js``: the three players side by side, with requests and events;
- ``player.html`` + ``player.js``: one player alone (``?player=shaka|dashjs|hlsjs``), with its
  default request settings: what the cross-origin browser tests drive;
- ``errors.js``: how each player reports a failed request, shared by both; ``style.css``.

The page loads the players from ``/demo/vendor/<path>``, which the origin maps to
``node_modules/<path>`` at the repository root (``npm ci`` installs them from package-lock.json).
Only the files in :data:`VENDOR_FILES` are referenced; serving just those is enough.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

DEMO_DIR: Final = Path(__file__).resolve().parent
"""Directory holding the static files; serve it at ``/demo/``."""

VENDOR_FILES: Final = (
    "shaka-player/dist/shaka-player.compiled.js",
    "dashjs/dist/modern/umd/dash.all.min.js",
    "hls.js/dist/hls.min.js",
)
"""Player scripts, relative to ``node_modules/``, requested as ``/demo/vendor/<path>``."""

__all__ = ["DEMO_DIR", "VENDOR_FILES"]
