"""Fallback content keys, used when neither VAULT_ADDR nor KEYS_FILE is set.

Public test values: never protect real content with them. ``demo`` has one HD key and
``demo-uhd`` one UHD key (premium only). The local stack (``playback-drm up``) normally passes
KEYS_FILE, the key file its media generator wrote; these keep a bare ``serve broker`` usable.
"""

from __future__ import annotations

from typing import Any, Final

DEMO_KID: Final = "da95834e6a143c9d4d98e0e98bbae902"
DEMO_KEY: Final = "3c10c089a20b78607761f06651e82529"
DEMO_IV: Final = "1481b1b0ad3a62f5730f4686852b7462"
DEMO_UHD_KID: Final = "6bfab6e0ddfc0a30559a8ae3aeef624f"
DEMO_UHD_KEY: Final = "e429a71a825c4e5fb1998ce14bbcd7f8"
DEMO_UHD_IV: Final = "bfef8ccdce7827b36a6a4dcde6acde0d"

DEMO_KEYS: Final[dict[str, Any]] = {
    "videos": {
        "demo": {"keys": [{"kid": DEMO_KID, "key": DEMO_KEY, "track": "HD", "iv": DEMO_IV}]},
        "demo-uhd": {
            "keys": [{"kid": DEMO_UHD_KID, "key": DEMO_UHD_KEY, "track": "UHD", "iv": DEMO_UHD_IV}]
        },
    }
}
