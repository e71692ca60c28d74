"""``python -m extproc``: the ext_proc manifest-signing gRPC server (what the image runs)."""

from extproc.config import ExtprocConfig
from extproc.server import serve
from playback_drm.runtime import run_service

raise SystemExit(run_service("extproc", ExtprocConfig.from_env, serve))
