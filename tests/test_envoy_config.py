"""Every Envoy configuration in the repository is current and passes ``envoy --mode validate``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from devstack.devpki import ensure_dev_pki
from envoyconf import (
    RENDERED_FILES,
    EnvoySettings,
    build,
    render,
    render_sds,
    settings_for,
)
from playback_drm import contract
from tests.conftest import REPO_ROOT
from tests.support.servers import envoy_validate


def _certificates_for(config_text: str, tmp_path: Path) -> str:
    """Point the TLS file references at freshly generated throwaway certificates, and the SDS
    files (envoyconf.sds) the configuration reads them through at copies in ``tmp_path``."""
    pki = ensure_dev_pki(tmp_path / "pki")
    replacements = {
        "/etc/envoy/tls/tls.crt": str(pki.server_cert),
        "/etc/envoy/tls/tls.key": str(pki.server_key),
        "/etc/envoy/tls/ca.crt": str(pki.ca_cert),
        ".local/pki/": str(tmp_path / "pki") + "/",
    }

    def replace(text: str) -> str:
        for old, new in replacements.items():
            text = text.replace(old, new)
        return text

    sds_dir = tmp_path / "sds"
    sds_dir.mkdir(exist_ok=True)
    for settings in (settings_for("k8s"), settings_for("local")):
        for path, text in render_sds(settings).items():
            target = sds_dir / Path(path).name
            # watched directories: the throwaway PKI's
            watched = f"path: {pki.ca_cert.parent}\n"
            target.write_text(replace(text.replace("path: /etc/envoy/tls\n", watched)))
            config_text = config_text.replace(path, str(target))
    return replace(config_text)


@pytest.mark.parametrize("path", sorted(RENDERED_FILES))
def test_committed_config_is_current(path: str) -> None:
    committed = (REPO_ROOT / path).read_text()
    assert committed == render(settings_for(RENDERED_FILES[path])), (
        f"{path} is stale: run `.venv/bin/playback-drm envoy-config --all`"
    )


@pytest.mark.parametrize("path", sorted(RENDERED_FILES))
def test_committed_config_validates(path: str, tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(_certificates_for((REPO_ROOT / path).read_text(), tmp_path))
    result = envoy_validate(config)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_every_yaml_under_envoy_dir_is_rendered_and_checked() -> None:
    on_disk = {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "envoy").glob("*.yaml")}
    assert on_disk == set(RENDERED_FILES)


@pytest.mark.parametrize("per_user_limit", ["service", "check"])
def test_per_user_limit_variants_validate(tmp_path: Path, per_user_limit: str) -> None:
    settings = dataclasses.replace(settings_for("local"), per_user_limit=per_user_limit)
    config = tmp_path / "envoy.yaml"
    config.write_text(_certificates_for(render(settings), tmp_path))
    result = envoy_validate(config)
    assert result.returncode == 0, result.stderr[-2000:]


def test_edge_baseline_settings() -> None:
    doc = build(settings_for("k8s"))
    assert doc["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    sidecar = doc["static_resources"]["listeners"][0]
    hcm = sidecar["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["normalize_path"]
    assert hcm["merge_slashes"]
    assert hcm["use_remote_address"]
    assert (
        hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    )
    names = [f["name"] for f in hcm["http_filters"]]
    assert names.index("envoy.filters.http.header_mutation") == 0
    assert names.index("envoy.filters.http.ext_authz") < names.index("envoy.filters.http.ext_proc")
    authz = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    assert authz["typed_config"]["failure_mode_allow"] is False
    assert authz["typed_config"]["status_on_error"]["code"] != 403
    tls = sidecar["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    routes = {r["name"]: r for r in hcm["route_config"]["virtual_hosts"][0]["routes"]}
    assert "envoy.filters.http.rbac" in routes["license"]["typed_per_filter_config"]
    extproc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    assert extproc["disabled"] is True
    enabled = {
        n
        for n, r in routes.items()
        if "envoy.filters.http.ext_proc" in r.get("typed_per_filter_config", {})
    }
    assert enabled == {"manifest_url_json", "manifest_dash", "manifest_hls", "media_manifest"}


def test_origin_template_is_validated() -> None:
    with pytest.raises(ValueError, match="videoId"):
        build(dataclasses.replace(settings_for("k8s"), hls_path_template="master.m3u8"))
    assert yaml.safe_load(render(EnvoySettings(profile="k8s", demo_site=None)))


# A path each sidecar route serves: what the route names as the check mode must be what authz
# derives from that path when no mode is given (Istio's CUSTOM action), or the modes disagree.
ROUTE_SAMPLES = {
    "manifest_url_json": "/playback/demo/manifest",
    "manifest_dash": "/playback/demo/manifest",
    "manifest_hls": "/playback/demo/manifest",
    "media_manifest": "/media/demo/hls/720p/playlist.m3u8",
    "media": "/media/demo/hls/720p/seg1.ts",
    "hls_key": "/drm/key/demo/0123",
    "license": "/drm/license/widevine",
    "session_end": "/playback/sessions/end",
    "session_heartbeat": "/playback/sessions/heartbeat",
}
UNCHECKED_ROUTES = {"health", "health_live", "drm_certificate", "not_found"}


def test_route_modes_match_the_mode_authz_derives_from_the_path() -> None:
    doc = build(settings_for("k8s"))
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert {r["name"] for r in routes} == set(ROUTE_SAMPLES) | UNCHECKED_ROUTES
    for route in routes:
        authz = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
        if route["name"] in UNCHECKED_ROUTES:
            assert authz.get("disabled") is True, route["name"]
            continue
        mode = authz["check_settings"]["context_extensions"][contract.AUTHZ_MODE_KEY]
        assert mode == contract.authz_mode_for_path(ROUTE_SAMPLES[route["name"]]), route["name"]
