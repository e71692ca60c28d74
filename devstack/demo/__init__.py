"""The demo page (index.html, app.js, style.css), served by the demo origin at ``/demo/``.

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
