"""The Envoy settings a deployment sets as ConfigMap values (envoyconf.environment): each kind of
bad value is refused naming its key, unknown keys are refused, every problem is reported at once,
and ``python -m envoyconf render`` writes nothing when a setting is bad."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import pytest

from envoyconf import SETTINGS, SettingsError, k8s_settings, render, settings_from_env
from envoyconf.entrypoint import main
from envoyconf.environment import BY_KEY, settings_to_env
from tests.conftest import REPO_ROOT

DEFAULTS = k8s_settings()

BAD_VALUES = [
    # (key, value, words the message must contain)
    ("ENVOY_LICENSE_PEER_CIDRS", "10.0.0.0/8,10.0.0.0/33", "entry 2: '10.0.0.0/33' is not a CIDR"),
    ("ENVOY_LICENSE_PEER_CIDRS", "10.1.2.3/8", "host bits set"),
    ("ENVOY_LICENSE_PEER_CIDRS", "10.0.0.0/8, localhost", "'localhost' is not a CIDR"),
    ("ENVOY_LICENSE_PEER_CIDRS", " , ", "the list is empty"),
    ("ENVOY_LICENSE_VIEWER_CIDRS", "0.0.0.0/0,::/129", "'::/129' is not a CIDR"),
    ("ENVOY_LICENSE_PRINCIPALS", "gateway.example.tv", "not a SPIFFE ID or URI SAN"),
    ("ENVOY_LICENSE_PRINCIPALS", "CN=api-gateway,O=Example", "not a SPIFFE ID or URI SAN"),
    ("ENVOY_LICENSE_PRINCIPALS", "spiffe://example.tv", "names a trust domain, not a workload"),
    ("ENVOY_LICENSE_PRINCIPALS", "spiffe://Example.TV/ns/gw", "trust domain must be lower case"),
    ("ENVOY_LICENSE_PRINCIPALS", "spiffe://example.tv/ns//sa", "segment '' is not allowed"),
    ("ENVOY_LICENSE_PRINCIPALS", "spiffe://example.tv/ns/*", "no spaces or wildcards"),
    ("ENVOY_LICENSE_PRINCIPALS", "", "the list is empty"),
    ("CORS_ALLOWED_ORIGINS", "https://www.example.tv,*", "entry 2: '*' is not an origin"),
    ("CORS_ALLOWED_ORIGINS", "https://www.example.tv/player", "no path"),
    ("CORS_MAX_AGE", "a day", "'a day' is not an integer"),
    ("CORS_MAX_AGE", "90000", "outside 0..86400"),
    ("ENVOY_PER_IP_RPS", "0", "outside 1..1000000"),
    ("ENVOY_PER_USER_BURST", "1e3", "not an integer"),
    ("ENVOY_AUTHZ_TIMEOUT_MS", "500ms", "not an integer"),
    ("ENVOY_PER_USER_LIMIT", "redis", "'redis' is not one of check, service, local"),
    ("ENVOY_ACCESS_LOG", "enabled", "not a boolean"),
    ("ENVOY_ORIGIN_ADDR", "origin", "not host:port"),
    ("ENVOY_ORIGIN_ADDR", "origin:0", "not host:port"),
    ("ENVOY_ORIGIN_ADDR", "::1:80", "IPv6 address in brackets"),
    ("ENVOY_ORIGIN_ADDR", "bad_host:80", "neither an IP address nor a DNS name"),
    ("ENVOY_ORIGIN_HOST", "https://cdn.example.tv", "not a DNS name"),
    ("ENVOY_OTLP_COLLECTOR_ADDR", "collector", "not host:port"),
    ("ENVOY_TLS_CERT_PATH", "tls/tls.crt", "not an absolute path"),
    ("ENVOY_CLIENT_CA_PATH", "/etc/envoy/my ca.crt", "white space"),
    ("ENVOY_LISTEN_ADDRESS", "all", "not an IP address"),
    ("ENVOY_SIDECAR_PORT", "70000", "outside 1..65535"),
    ("ENVOY_PROBE_PORT", "8443", "port 8443 is already ENVOY_SIDECAR_PORT's"),
    ("ENVOY_MAX_HEAP", "512MB", "not a size"),
    ("ENVOY_MAX_HEAP", "1Mi", "below 16Mi"),
    ("ENVOY_TRACE_SAMPLING_PERCENT", "150", "outside 0..100"),
    ("ENVOY_MAX_CONNECTIONS", "-1", "outside 1..10000000"),
    ("ENVOY_HLS_PATH_TEMPLATE", "master.m3u8", "{videoId}"),
    ("ENVOY_STRIP_REQUEST_HEADERS", "x-debug,bad header", "not a request header name"),
    ("ENVOY_LICENCE_PRINCIPALS", "spiffe://example.tv/gw", "did you mean ENVOY_LICENSE_PRINCIPALS"),
    ("ENVOY_LOG_LEVEL", "debug", "unknown setting"),
    ("CORS_ALLOW_ORIGINS", "https://www.example.tv", "did you mean CORS_ALLOWED_ORIGINS"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES)
def test_a_bad_value_is_refused_naming_its_key(key: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_from_env({key: value}, DEFAULTS)
    (problem,) = caught.value.problems
    assert problem.key == key
    assert expected in problem.message
    assert str(caught.value).startswith(f"{key}: ")


def test_every_kind_of_setting_has_a_bad_value_case() -> None:
    """The table above covers every key's kind of value (a new kind needs its case)."""
    kinds_covered = {BY_KEY[key].kind.name for key, _, _ in BAD_VALUES if key in BY_KEY}
    assert {s.kind.name for s in SETTINGS} - kinds_covered == set()


def test_every_problem_is_reported_at_once() -> None:
    env = {
        "ENVOY_LICENSE_PEER_CIDRS": "10.0.0.0/33",
        "ENVOY_LICENSE_PRINCIPALS": "gateway.example.tv",
        "ENVOY_PER_IP_RPS": "fast",
        "ENVOY_TYPO": "1",
    }
    with pytest.raises(SettingsError) as caught:
        settings_from_env(env, DEFAULTS)
    assert sorted(p.key for p in caught.value.problems) == sorted(env)


def test_variables_outside_the_prefixes_are_not_envoy_settings() -> None:
    env = {"PATH": "/usr/bin", "HOSTNAME": "playback-edge-1", "PYTHON_VERSION": "3.11"}
    assert settings_from_env(env, DEFAULTS) == DEFAULTS


def test_good_values_are_canonicalised() -> None:
    settings = settings_from_env(
        {
            "ENVOY_LICENSE_PRINCIPALS": " spiffe://example.tv/ns/gw/sa/api, urn:example:gw ",
            "ENVOY_LICENSE_PEER_CIDRS": "10.20.0.0/16,10.20.0.0/16,2001:DB8::/32,192.0.2.7",
            "CORS_ALLOWED_ORIGINS": "HTTPS://WWW.Example.TV:443,https://*.example.tv",
            "ENVOY_ORIGIN_ADDR": "[2001:db8::1]:8443",
            "ENVOY_MAX_HEAP": "1Gi",
            "ENVOY_PER_USER_LIMIT": "service",
            "ENVOY_STRIP_REQUEST_HEADERS": "X-Debug",
        },
        DEFAULTS,
    )
    assert settings.license_principals == ("spiffe://example.tv/ns/gw/sa/api", "urn:example:gw")
    assert settings.license_peer_cidrs == ("10.20.0.0/16", "2001:db8::/32", "192.0.2.7/32")
    assert settings.cors.origins == ("https://www.example.tv", "https://*.example.tv")
    assert settings.origin.host == "2001:db8::1"
    assert settings.max_heap_bytes == 2**30
    assert settings.per_user_limit == "service"
    assert settings.extra_headers_to_strip == ("x-debug",)


def test_writing_and_reading_back_gives_the_same_settings() -> None:
    assert settings_from_env(settings_to_env(DEFAULTS), DEFAULTS) == DEFAULTS
    assert set(settings_to_env(DEFAULTS)) == {s.key for s in SETTINGS}


# ------------------------------------------------------------------------ python -m envoyconf


def test_render_writes_the_configuration_the_settings_ask_for(tmp_path: Path) -> None:
    out = tmp_path / "envoy.yaml"
    err = io.StringIO()
    env = {"ENVOY_LICENSE_PRINCIPALS": "spiffe://example.tv/ns/gw/sa/api"}
    assert main(["render", "--out", str(out)], env=env, stderr=err) == 0
    # the SDS files the certificates come through are rendered beside it (envoyconf.sds)
    settings = dataclasses.replace(settings_from_env(env, DEFAULTS), sds_dir=str(tmp_path))
    assert out.read_text() == render(settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "envoy.yaml",
        "sds-client-ca.yaml",
        "sds-sidecar-cert.yaml",
    ]
    assert "spiffe://example.tv/ns/gw/sa/api" in out.read_text()
    assert "principals spiffe://example.tv/ns/gw/sa/api" in err.getvalue()


def test_render_stops_on_a_bad_setting_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "envoy.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "envoyconf", "render", "--out", str(out)],
        env={"ENVOY_LICENSE_PEER_CIDRS": "10.0.0.0/33", "ENVOY_TYPO": "x"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "ENVOY_LICENSE_PEER_CIDRS: entry 1: '10.0.0.0/33' is not a CIDR" in result.stderr
    assert "ENVOY_TYPO: unknown setting" in result.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ the documentation


def _table_values(path: Path) -> dict[str, str]:
    """`` | `KEY` | second cell | ...`` rows whose key is an Envoy setting."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `ENVOY_") and len(cells) >= 2:
            rows[cells[0].strip("`")] = cells[1]
    return rows


@pytest.mark.parametrize("doc", ["README.md", "docs/DEPLOYMENT.md"])
def test_the_docs_list_every_setting_with_its_base_value(doc: str) -> None:
    documented = _table_values(REPO_ROOT / doc)
    expected = {
        key: f"`{value}`" if value else "empty"
        for key, value in settings_to_env(DEFAULTS).items()
        if key.startswith("ENVOY_")
    }
    assert documented == expected


def test_render_names_an_unwritable_destination(tmp_path: Path) -> None:
    err = io.StringIO()
    out = tmp_path / "no-such-dir" / "envoy.yaml"
    assert main(["render", "--out", str(out)], env={}, stderr=err) == 1
    assert f"cannot write {out}" in err.getvalue()
