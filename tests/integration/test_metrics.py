"""Every service's /metrics moves as requests pass: counters, cache hit/miss, latency histograms."""

from __future__ import annotations

import base64
import json
import re

import pytest

from devstack.stack import Stack
from tests.support.stack import http

pytestmark = pytest.mark.integration

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN|\+Inf)$")


def scrape(url: str) -> dict[str, float]:
    reply = http(url)
    assert reply.status == 200, url
    samples: dict[str, float] = {}
    for line in reply.body.decode().splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in samples.items()
        if key.split("{", 1)[0] == name and all(w in key for w in wanted)
    )


def test_metrics_move_as_requests_pass(stack: Stack) -> None:
    p = stack.ports
    endpoints = {
        "authz": f"http://127.0.0.1:{p.authz_http}/metrics",
        "extproc": f"http://127.0.0.1:{p.extproc_http}/metrics",
        "broker": f"http://127.0.0.1:{p.broker}/metrics",
        "envoy": f"http://127.0.0.1:{p.admin}/stats/prometheus",
    }
    before = {name: scrape(url) for name, url in endpoints.items()}

    token = stack.token("alice")
    auth = {"Authorization": f"Bearer {token}"}
    master = http(f"{stack.gateway}/playback/demo/manifest", headers=auth)
    assert master.status == 200
    variant = next(line for line in master.body.decode().splitlines() if "pdt=" in line)
    variant = variant.split('URI="')[-1].rstrip('"')
    for _ in range(2):  # one playback session's playlist again: the signed manifest is cached
        assert http(f"{stack.gateway}{variant}").status == 200
    assert http(f"{stack.gateway}/playback/demo/manifest").status == 401
    keys = json.loads((stack.media_dir / "keys.json").read_text())["videos"]["demo"]["keys"]
    kid = base64.urlsafe_b64encode(bytes.fromhex(keys[0]["kid"])).rstrip(b"=").decode()
    challenge = json.dumps({"kids": [kid], "type": "temporary"}).encode()
    lic = http(
        f"{stack.gateway}/drm/license/org.w3.clearkey?videoId=demo",
        method="POST",
        body=challenge,
        headers=auth,
    )
    assert lic.status == 200

    after = {name: scrape(url) for name, url in endpoints.items()}

    def grew(service: str, name: str, **labels: str) -> bool:
        return total(after[service], name, **labels) > total(before[service], name, **labels)

    assert grew("authz", "playback_authz_requests_total", outcome="ok")
    assert grew("authz", "playback_authz_requests_total", outcome="rejected", code="token_missing")
    assert grew("authz", "playback_authz_request_duration_seconds_count")
    assert grew("authz", "playback_cache_requests_total", cache="tokens", result="hit")
    assert grew("authz", "playback_cache_requests_total", cache="entitlements", result="hit")
    assert grew("extproc", "playback_extproc_manifests_total", outcome="signed")
    assert grew("extproc", "playback_extproc_requests_total", route="hls", outcome="ok")
    assert grew("extproc", "playback_extproc_request_duration_seconds_count")
    assert grew("extproc", "playback_cache_requests_total", cache="manifests", result="hit")
    assert grew("broker", "playback_broker_licenses_total", key_system="org.w3.clearkey")
    assert grew("authz", "playback_sessions_started_total")
    assert grew("authz", "playback_stream_slots_total", result="taken")
    assert grew("broker", "playback_broker_requests_total")
    assert grew("broker", "playback_broker_request_duration_seconds_count")
    assert grew("envoy", "envoy_http_downstream_rq_total")
    # histogram buckets resolve 1 ms and 50 ms
    buckets = {
        k for k in after["authz"] if k.startswith("playback_authz_request_duration_seconds_bucket")
    }
    assert any('le="0.001"' in b for b in buckets)
    assert any('le="0.05"' in b for b in buckets)
