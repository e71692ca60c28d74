"""Emulators of systems this project does not own, speaking their wire formats.

- ``auth``: the Auth service's JWKS (RFC 7517) and OpenID discovery; signs development tokens;
  rotates keys on request.
- ``billing``: the Billing service's entitlement API (users, plans, catalogue).
- ``drm``: DRM providers (Widevine license proxy, PlayReady SOAP, FairPlay KSM, Axinom).
- ``origin``: a demo origin serving the generated media and the demo page (ours, not emulated:
  it stands in for object storage or a packager).

They are used by the tests and by the local stack (``playback-drm up``).
"""
