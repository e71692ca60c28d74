"""Shared code of the playback & DRM sidecar: what two or more services use.

Modules:
    problem      RFC 9457 (7807) problem details and the base error type with stable codes.
    settings     typed, fail-fast readers for environment configuration.
    urlsign      HMAC URL tokens: signed by extproc, verified by authz.
    emulators    emulators of systems we do not own (Auth, Billing, DRM) and the demo origin.
"""

__all__: list[str] = []
