"""``python -m license_broker``: the license and key HTTP service (what the image runs)."""

from license_broker.app import serve
from license_broker.config import BrokerConfig
from playback_drm.runtime import run_service

raise SystemExit(run_service("broker", BrokerConfig.from_env, serve))
