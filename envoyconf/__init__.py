"""The Envoy configuration, built from typed settings. No service imports it; in the image, only
the edge pod's init container runs it (``python -m envoyconf render``), before Envoy starts.

One builder serves every deployment: ``profile="local"`` (the ``make run`` stack: a gateway
listener that plays the API gateway and forwards over mutual TLS to the sidecar listener) and
``profile="k8s"`` (the pod's sidecar: mTLS listener, plain probe listener, stats listener).
A pod renders its configuration at start from the ``playback-envoy`` ConfigMap's ``ENVOY_*`` /
``CORS_*`` values (``environment``); the files in ``envoy/`` are the profiles' defaults, rendered
by ``playback-drm envoy-config --all`` and checked by the tests (``envoy --mode validate`` and
byte equality with a fresh rendering).

Modules, each building one part of the bootstrap:
    settings   EnvoySettings (what differs between deployments) and the rendered profiles.
    listeners  the sidecar, gateway, probe and stats listeners; access log; tracing.
    filters    the HTTP filter chain and per-route filter settings (authz, ext_proc, RBAC, limits).
    cors       the CORS policy players need: origins, methods, headers (reused by other renderings).
    routes     the public paths.
    clusters   upstreams.
    replies    Envoy's own replies as problem+json.
    bootstrap  the whole document (``build``) and its YAML (``render``).
    sds        the TLS material through SDS from files (renewed certificates without a restart).
    environment  EnvoySettings from ``ENVOY_*`` / ``CORS_*`` keys (a ConfigMap), strictly checked.
    entrypoint ``python -m envoyconf render --out FILE``: what a pod's init container runs.

It imports the core (``playback_drm``: the identity headers, the Envoy/service contract, problem
details) and never a service.
"""

from envoyconf.bootstrap import build, render
from envoyconf.cors import CorsSettings
from envoyconf.environment import (
    SETTINGS,
    Problem,
    Setting,
    SettingsError,
    settings_from_env,
    settings_to_env,
)
from envoyconf.sds import render_sds
from envoyconf.settings import (
    RENDERED_FILES,
    Endpoint,
    EnvoySettings,
    Profile,
    TlsFiles,
    k8s_settings,
    local_cors,
    local_example_settings,
    settings_for,
)

__all__ = [
    "RENDERED_FILES",
    "SETTINGS",
    "CorsSettings",
    "Endpoint",
    "EnvoySettings",
    "Problem",
    "Profile",
    "Setting",
    "SettingsError",
    "TlsFiles",
    "build",
    "k8s_settings",
    "local_cors",
    "local_example_settings",
    "render",
    "render_sds",
    "settings_for",
    "settings_from_env",
    "settings_to_env",
]
