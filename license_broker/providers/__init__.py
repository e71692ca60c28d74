"""DRM provider adapters behind one interface, :class:`LicenseProvider`.

| key system | adapters |
| --- | --- |
| com.widevine.alpha | ``WidevineProxy`` (AES-signed license proxy), ``AxinomProvider`` |
| com.microsoft.playready | ``PlayReadySoap`` (SOAP forwarded byte for byte), ``AxinomProvider`` |
| com.apple.fps | ``FairPlayKsm`` (SPC to a KSM), ``AxinomProvider`` |

ClearKey and HLS AES-128 need no provider: the broker answers them from the key store.
"""

from __future__ import annotations

from license_broker.config import BrokerConfig
from license_broker.http import ProviderHTTP
from license_broker.keysystems import KeySystem
from license_broker.providers.axinom import AxinomProvider
from license_broker.providers.base import LicenseContext, LicenseProvider, ProviderLicense
from license_broker.providers.fairplay import FairPlayKsm
from license_broker.providers.playready import PlayReadySoap
from license_broker.providers.widevine import WidevineProxy


def build_providers(config: BrokerConfig) -> dict[KeySystem, LicenseProvider]:
    """One adapter per configured key system (not started: call ``start()``)."""
    providers: dict[KeySystem, LicenseProvider] = {}
    calls = config.calls
    ttl = config.certificate_cache_ttl
    wv = config.widevine
    if wv.adapter != "none" and wv.license_url:
        http = ProviderHTTP(f"{wv.adapter}-widevine", calls, warm_url=wv.license_url)
        providers[KeySystem.WIDEVINE] = (
            WidevineProxy(wv, http, ttl)
            if wv.adapter == "proxy"
            else AxinomProvider(
                KeySystem.WIDEVINE, wv.license_url, config.axinom, http, cert_ttl=ttl
            )
        )
    pr = config.playready
    if pr.adapter != "none" and pr.license_url:
        http = ProviderHTTP(f"{pr.adapter}-playready", calls, warm_url=pr.license_url)
        providers[KeySystem.PLAYREADY] = (
            PlayReadySoap(pr, http)
            if pr.adapter == "soap"
            else AxinomProvider(KeySystem.PLAYREADY, pr.license_url, config.axinom, http)
        )
    fp = config.fairplay
    if fp.adapter != "none" and fp.ksm_url:
        http = ProviderHTTP(f"{fp.adapter}-fairplay", calls, warm_url=fp.ksm_url)
        providers[KeySystem.FAIRPLAY] = (
            FairPlayKsm(fp, http, ttl)
            if fp.adapter == "ksm"
            else AxinomProvider(
                KeySystem.FAIRPLAY, fp.ksm_url, config.axinom, http, fairplay=fp, cert_ttl=ttl
            )
        )
    return providers


__all__ = [
    "AxinomProvider",
    "FairPlayKsm",
    "LicenseContext",
    "LicenseProvider",
    "PlayReadySoap",
    "ProviderLicense",
    "WidevineProxy",
    "build_providers",
]
