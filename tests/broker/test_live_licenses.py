"""Licenses of live videos: short, never persistent, renewed (Widevine's renewal policy), with
the same licenses as before for everything else. (Renewals through authz: tests/integration/
test_long_sessions.py.)"""

from __future__ import annotations

import pytest

from license_broker.config import BrokerConfig
from license_broker.model import parse_video_keys
from license_broker.policy import DEFAULT_PLAN_PROFILES, decide, for_live, parse_entitlement
from license_broker.providers import widevine
from playback_drm.settings import ConfigError

KEY = {"kid": "00112233445566778899aabbccddeeff", "key": "ffeeddccbbaa99887766554433221100"}


def test_a_live_license_is_short_renewed_and_never_persistent() -> None:
    vod = decide(parse_entitlement('{"tier": "UHD"}', "premium"), DEFAULT_PLAN_PROFILES)
    assert vod.can_persist
    assert vod.license_duration_s == 6 * 3600
    live = for_live(vod, 600, 300)
    assert (live.license_duration_s, live.renewal_interval_s, live.can_persist) == (600, 300, False)
    assert live.fingerprint() != vod.fingerprint()  # never answered from a VOD license's cache
    # a rental shorter than the live duration still wins
    rental = decide(
        parse_entitlement('{"rentalWindowSeconds": 120}', "basic"), DEFAULT_PLAN_PROFILES
    )
    assert for_live(rental, 600, 300).license_duration_s == 120


def test_widevine_policy_overrides_ask_for_renewals_only_for_live() -> None:
    vod = decide(parse_entitlement(None, "basic"), DEFAULT_PLAN_PROFILES)
    overrides = widevine.policy_overrides(vod)
    assert overrides["can_renew"] is False
    assert "renewal_delay_seconds" not in overrides
    live = widevine.policy_overrides(for_live(vod, 600, 300))
    assert live["can_renew"] is True
    assert live["license_duration_seconds"] == 600
    assert live["renewal_delay_seconds"] == 300
    assert live["renewal_retry_interval_seconds"] == 30
    assert live["renewal_recovery_duration_seconds"] == 300


def test_the_key_document_marks_live_videos() -> None:
    assert parse_video_keys("ch", {"live": True, "keys": [KEY]}).live
    assert not parse_video_keys("vod", {"keys": [KEY]}).live
    assert not parse_video_keys("odd", {"live": "yes", "keys": [KEY]}).live  # a boolean only
    assert not parse_video_keys("list", [KEY]).live


def test_live_license_settings_are_checked_at_start_up() -> None:
    base = {"KEYS_FILE": "/dev/null"}
    config = BrokerConfig.from_env(
        {**base, "LIVE_LICENSE_DURATION_SECONDS": "120", "LIVE_LICENSE_RENEWAL_SECONDS": "60"}
    )
    assert (config.live_license_duration, config.live_license_renewal) == (120, 60)
    with pytest.raises(ConfigError, match="LIVE_LICENSE_RENEWAL_SECONDS"):
        BrokerConfig.from_env({**base, "LIVE_LICENSE_RENEWAL_SECONDS": "400"})
    with pytest.raises(ConfigError, match="LIVE_LICENSE_DURATION_SECONDS"):
        BrokerConfig.from_env({**base, "LIVE_LICENSE_DURATION_SECONDS": "5"})
