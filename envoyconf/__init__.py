"""The Envoy configuration, built from typed settings (build-time tooling: no service imports it).

One builder serves every deployment: ``profile="local"`` (the ``make run`` stack: a gateway
listener that plays the API gateway and forwards over mutual TLS to the sidecar listener) and
``profile="k8s"`` (the pod's sidecar: mTLS listener, plain probe listener, stats listener).
The files in ``envoy/`` are rendered by ``playback-drm envoy-config`` and checked by the tests
(``envoy --mode validate`` and byte equality with a fresh rendering).

Modules, each building one part of the bootstrap:
    settings   EnvoySettings (what differs between deployments) and the rendered profiles.
    listeners  the sidecar, gateway, probe and stats listeners; access log; tracing.
    filters    the HTTP filter chain and per-route filter settings (authz, ext_proc, RBAC, limits).
    cors       the CORS policy players need: origins, methods, headers (reused by other renderings).
    routes     the public paths.
    clusters   upstreams.
    replies    Envoy's own replies as problem+json.
    bootstrap  the whole document (``build``) and its YAML (``render``).

It imports the core (``playback_drm``: the identity headers, the Envoy/service contract, problem
details) and never a service.
"""

from envoyconf.bootstrap import build, render
from envoyconf.cors import CorsSettings
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
    "CorsSettings",
    "Endpoint",
    "EnvoySettings",
    "Profile",
    "TlsFiles",
    "build",
    "k8s_settings",
    "local_cors",
    "local_example_settings",
    "render",
    "settings_for",
]
