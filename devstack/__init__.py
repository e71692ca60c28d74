"""Development tooling, above the services and never imported by them or installed in the image.

Modules:
    cli        the ``playback-drm`` command (up, token, events, serve, envoy-config, check-config).
    checkconfig  ``playback-drm check-config``: the Envoy settings of a rendered overlay, offline.
    stack      the whole local stack as child processes (``make run`` and the integration tests).
    supervise  child processes with readiness waits, free ports, HTTP probes.
    devpki     a development CA and the certificates of the local stack.
    media      the protected demo content (needs the ``dev`` extra: Shaka Packager, ffmpeg).
    emulators  systems we do not own (Auth, Billing, DRM providers) and the demo origin.
    demo       the demo page with the three players.
"""

__all__: list[str] = []
