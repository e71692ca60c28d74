"""``python -m authz``: the ext_authz and rate limit gRPC server (what the image runs)."""

from authz.config import AuthzConfig
from authz.server import serve
from playback_drm.runtime import run_service

raise SystemExit(run_service("authz", AuthzConfig.from_env, serve))
