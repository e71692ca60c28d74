"""The CORS policy as configuration (issue 19): origins are a validated setting that reaches Envoy's
configuration from the environment, the rendered policy is what players need, and the
configuration table in docs/DEPLOYMENT.md says what the code does. The matrix through the real
Envoy is tests/integration/test_cors.py; real players on another origin tests/e2e."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import cli
from devstack.stack import Stack, StackPorts, StackSettings
from envoyconf import CorsSettings, build, local_cors, render, settings_for
from envoyconf.cors import (
    ALLOW_HEADERS,
    ALLOW_METHODS,
    DEFAULT_MAX_AGE_S,
    EXPOSE_HEADERS,
    envoy_cors_policy,
    parse_origin,
)
from playback_drm.settings import ConfigError
from tests.conftest import REPO_ROOT
from tests.support.servers import envoy_validate
from tests.test_envoy_config import _certificates_for

DEPLOYMENT = REPO_ROOT / "docs" / "DEPLOYMENT.md"


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("https://www.example.tv", "https://www.example.tv"),
        ("  HTTPS://WWW.Example.TV  ", "https://www.example.tv"),  # what browsers send
        ("https://www.example.tv:443", "https://www.example.tv"),  # the default port is left out
        ("http://127.0.0.1:8099", "http://127.0.0.1:8099"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("https://*.example.tv", "https://*.example.tv"),
        ("https://*.example.tv:8443", "https://*.example.tv:8443"),
    ],
)
def test_origins_are_canonicalised(given: str, canonical: str) -> None:
    assert parse_origin(given) == canonical


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("*", "credentials"),
        ("null", "cannot be trusted"),
        ("www.example.tv", "scheme://host"),
        ("https://www.example.tv/", "did you mean 'https://www.example.tv'"),
        ("https://www.example.tv/player", "no path"),
        ("https://www.example.tv?x=1", "no path"),
        ("ftp://www.example.tv", "http or https"),
        ("https://www.example.tv:0", "1-65535"),
        ("https://www.example.tv:99999", "1-65535"),
        ("https://user@www.example.tv", "user name"),
        ("https://exa mple.tv", "not a host name"),
        ("https://*.tv", "two labels"),
        ("https://www.*.example.tv", "not a host name"),
        ("https://", "not a host name"),
    ],
)
def test_a_malformed_origin_is_an_error_naming_the_setting(given: str, why: str) -> None:
    with pytest.raises(ConfigError, match="CORS_ALLOWED_ORIGINS") as caught:
        parse_origin(given)
    assert why in str(caught.value)


def test_settings_from_the_environment() -> None:
    defaults = local_cors()
    assert CorsSettings.from_env({}, defaults) == defaults
    env = {
        "CORS_ALLOWED_ORIGINS": "https://www.example.tv, https://*.example.tv,",
        "CORS_MAX_AGE": "60",
    }
    assert CorsSettings.from_env(env, defaults) == CorsSettings(
        ("https://www.example.tv", "https://*.example.tv"), 60
    )
    with pytest.raises(ConfigError, match="CORS_ALLOWED_ORIGINS"):
        CorsSettings.from_env({"CORS_ALLOWED_ORIGINS": "https://www.example.tv,*"}, defaults)
    with pytest.raises(ConfigError, match="CORS_MAX_AGE"):
        CorsSettings.from_env({"CORS_MAX_AGE": "a day"}, defaults)
    with pytest.raises(ConfigError, match="CORS_MAX_AGE"):
        CorsSettings(("https://www.example.tv",), max_age_s=90_000)
    with pytest.raises(ConfigError, match="canonical"):
        CorsSettings(("https://WWW.example.tv",))


def test_the_local_stack_allows_the_demo_page_and_the_site() -> None:
    assert local_cors(8080, 8099).origins == (
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "http://127.0.0.1:8099",
        "http://localhost:8099",
    )
    assert settings_for("local").cors == local_cors()
    # the pod's sidecar allows no web origin until the deployment lists its own
    assert settings_for("k8s").cors.origins == ()


def _rendered_policy(config: dict[str, Any]) -> dict[str, Any]:
    sidecar = next(
        listener
        for listener in config["static_resources"]["listeners"]
        if listener["name"] == "sidecar"
    )
    hcm = sidecar["filter_chains"][0]["filters"][0]["typed_config"]
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    policy: dict[str, Any] = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    return policy


def test_cors_allowed_origins_given_to_the_local_stack_reaches_envoys_config(
    tmp_path: Path,
) -> None:
    env = {"CORS_ALLOWED_ORIGINS": "https://www.example.tv,https://*.example.tv"}
    stack = Stack(StackSettings.from_env(env, tmp_path, StackPorts()))
    stack.prepare()  # what `make run` does before it starts Envoy
    policy = _rendered_policy(yaml.safe_load(stack.envoy_config_path.read_text()))
    matchers = policy["allow_origin_string_match"]
    assert matchers[0] == {"exact": "https://www.example.tv"}
    assert "safe_regex" in matchers[1]
    assert len(matchers) == 2  # replaces the defaults

    with pytest.raises(ConfigError, match="CORS_ALLOWED_ORIGINS"):
        StackSettings.from_env({"CORS_ALLOWED_ORIGINS": "https://x.tv/"}, tmp_path)
    default = StackSettings.from_env({}, tmp_path, StackPorts(gateway=18080, site=18099))
    assert default.cors == local_cors(18080, 18099)


def test_envoy_config_command_reads_the_origins_and_names_a_bad_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "https://www.example.tv")
    assert cli.main(["envoy-config", "--profile", "k8s"]) == 0
    policy = _rendered_policy(yaml.safe_load(capsys.readouterr().out))
    assert policy["allow_origin_string_match"] == [{"exact": "https://www.example.tv"}]

    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "*")
    assert cli.main(["envoy-config", "--profile", "k8s"]) == 2
    assert "CORS_ALLOWED_ORIGINS" in capsys.readouterr().err

    # --all renders the committed files from the profiles' defaults, whatever the shell sets
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "https://www.example.tv")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "envoy").mkdir()
    assert cli.main(["envoy-config", "--all"]) == 0
    assert "ignores CORS_ALLOWED_ORIGINS" in capsys.readouterr().err
    for path in ("envoy/local.yaml", "envoy/sidecar-k8s.yaml"):
        assert (tmp_path / path).read_text() == (REPO_ROOT / path).read_text()


def test_the_policy_players_need() -> None:
    policy = envoy_cors_policy(CorsSettings(("https://www.example.tv",)))
    assert policy["allow_credentials"] is True
    assert policy["forward_not_matching_preflights"] is False
    assert policy["max_age"] == str(DEFAULT_MAX_AGE_S)
    headers = {h.strip() for h in policy["allow_headers"].split(",")}
    # what Shaka, dash.js, hls.js and PlayReady clients send
    assert {"authorization", "content-type", "soapaction", "x-requested-with"} <= headers
    assert {"cmcd-object", "cmcd-request", "cmcd-session", "cmcd-status"} <= headers
    exposed = {h.strip() for h in policy["expose_headers"].split(",")}
    assert {"x-playback-license-id", "retry-after", "www-authenticate", "date"} <= exposed
    assert not any(
        m.get("safe_regex", {}).get("regex") == ".*" for m in policy["allow_origin_string_match"]
    )


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://www.example.tv", True),
        ("https://a.b.example.tv", True),
        ("https://example.tv", False),  # the wildcard is for subdomains only
        ("https://evil-example.tv", False),
        ("https://www.example.tv.evil.test", False),
        ("http://www.example.tv", False),  # another scheme is another origin
        ("https://www.example.tv:8443", False),  # and so is another port
        ("https://x.example.tvx", False),
    ],
)
def test_a_subdomain_wildcard_matches_subdomains_only(origin: str, allowed: bool) -> None:
    (matcher,) = envoy_cors_policy(CorsSettings(("https://*.example.tv",)))[
        "allow_origin_string_match"
    ]
    # RE2 (Envoy) and Python agree on this subset: anchors, classes, groups, bounded repeats
    assert bool(re.fullmatch(matcher["safe_regex"]["regex"], origin)) is allowed


def test_a_config_with_wildcard_and_ipv6_origins_passes_envoy_validate(tmp_path: Path) -> None:
    cors = CorsSettings(
        (
            "https://*.example.tv:8443",
            "https://*.players.streaming-platform-with-a-long-name.example.co.uk",
            "http://[::1]:8080",
            "https://www.example.tv",
        )
    )
    settings = dataclasses.replace(settings_for("local"), cors=cors)
    config = tmp_path / "envoy.yaml"
    config.write_text(_certificates_for(render(settings), tmp_path))
    result = envoy_validate(config)
    assert result.returncode == 0, result.stderr[-2000:]


def test_envoy_writes_every_cors_header_itself() -> None:
    hcm = build(settings_for("k8s"))["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"
    ][0]["typed_config"]
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    dropped = set(vhost["response_headers_to_remove"])
    assert {"access-control-allow-origin", "access-control-allow-credentials"} <= dropped
    assert {
        "header": {"key": "vary", "value": "Origin"},
        "append_action": "APPEND_IF_EXISTS_OR_ADD",
    } in vhost["response_headers_to_add"]


# ----------------------------------------------------------------- the documentation says so


def _doc_rows(heading: str) -> dict[str, str]:
    """First column -> second column of the tables under ``heading`` (up to the next heading)."""
    text = DEPLOYMENT.read_text()
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    rows: dict[str, str] = {}
    for line in text[start : end if end > 0 else None].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and not set(cells[0]) <= {"-", " "}:
            rows[cells[0]] = cells[1]
    return rows


def _listed(cell: str) -> list[str]:
    return [item.strip() for item in cell.strip("`").split(",")]


def test_the_configuration_table_documents_the_policy_and_its_defaults() -> None:
    rows = _doc_rows("### Envoy: CORS for players on the platform's web origin")
    assert _listed(rows["methods"]) == list(ALLOW_METHODS)
    assert _listed(rows["request headers"]) == list(ALLOW_HEADERS)
    assert _listed(rows["exposed headers"]) == list(EXPOSE_HEADERS)
    assert rows["`CORS_MAX_AGE`"] == f"`{DEFAULT_MAX_AGE_S}`"
    documented_local = re.search(r"`(http://[^`]+)`", rows["`CORS_ALLOWED_ORIGINS`"])
    assert documented_local is not None
    assert tuple(_listed(documented_local.group(1))) == local_cors().origins
    assert "k8s: none" in rows["`CORS_ALLOWED_ORIGINS`"]
    assert settings_for("k8s").cors.origins == ()
    assert "true" in rows["credentials"]
