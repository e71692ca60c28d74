"""The Envoy configuration each overlay's pods render at start (from the playback-envoy ConfigMap,
as their init container does) passes ``envoy --mode validate``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from envoyconf import SETTINGS, k8s_settings, render, settings_from_env, settings_to_env
from tests.k8s.checks import EnvoyPod, Index, envoy_pods
from tests.k8s.render import K8S_DIR, OVERLAYS, REPO_ROOT, render_overlay
from tests.support.servers import envoy_validate

MOUNTED_TLS_FILES = ("tls.crt", "tls.key", "ca.crt")


@pytest.fixture(scope="module")
def throwaway_tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate standing in for the Secret's files (validate opens them)."""
    directory = tmp_path_factory.mktemp("envoy-tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sidecar.playback-drm.local")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "tls.crt").write_bytes(pem)
    (directory / "ca.crt").write_bytes(pem)
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory


def _sidecar(overlay: str) -> EnvoyPod:
    pods, errors = envoy_pods(Index(render_overlay(overlay)))
    assert errors == []
    (pod,) = pods
    return pod


def _with_local_files(pod: EnvoyPod, throwaway_tls: Path, tmp_path: Path) -> Path:
    """The pod's Envoy configuration and the SDS files it reads its certificates through
    (rendered beside it), written to ``tmp_path`` with every path pointing at a local copy: the
    Secret's files (and the directory watched for their renewal) at the throwaway certificate."""
    secret_files = sorted(path for path, content in pod.files.items() if content is None)
    assert sorted(Path(p).name for p in secret_files) == sorted(MOUNTED_TLS_FILES)
    sds_files = {
        path: content
        for path, content in pod.files.items()
        if content is not None and Path(path).name.startswith("sds-")
    }
    assert sds_files, "the Envoy configuration's SDS files are missing"
    texts = {**sds_files, pod.config_path: pod.config_text}
    for path in secret_files:
        assert any(path in text for text in texts.values()), (
            f"{path} is mounted but neither the Envoy config nor its SDS files use it"
        )
    written: dict[str, Path] = {}
    for path, original in texts.items():
        local_text = original
        for secret_path in secret_files:
            local_text = local_text.replace(
                secret_path, str(throwaway_tls / Path(secret_path).name)
            )
        local_text = re.sub(
            r"(watched_directory:\n\s+path: ).*", rf"\g<1>{throwaway_tls}", local_text
        )
        for sds_path, local in written.items():
            local_text = local_text.replace(f"path: {sds_path}\n", f"path: {local}\n")
        written[path] = tmp_path / Path(path).name
        written[path].write_text(local_text)
    return written[pod.config_path]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_envoy_config_passes_envoy_validate(
    overlay: str, throwaway_tls: Path, tmp_path: Path
) -> None:
    pod = _sidecar(overlay)
    config = _with_local_files(pod, throwaway_tls, tmp_path)
    result = envoy_validate(config)
    assert result.returncode == 0, (
        f"Deployment/{pod.deployment['metadata']['name']}: {pod.config_path} from the "
        f"{overlay} overlay fails envoy --mode validate:\n{result.stdout}{result.stderr}"
    )


def test_validation_rejects_a_broken_config(throwaway_tls: Path, tmp_path: Path) -> None:
    """The check above can fail: a config naming a cluster that does not exist is refused."""
    pod = _sidecar("dev")
    text = pod.config_text.replace("cluster: license_broker", "cluster: no_such_cluster", 1)
    assert text != pod.config_text
    config = _with_local_files(dataclasses.replace(pod, config_text=text), throwaway_tls, tmp_path)
    assert envoy_validate(config).returncode != 0


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as kustomize's ``envs`` reads them (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def test_the_base_configmap_lists_every_setting_with_the_k8s_defaults() -> None:
    """k8s/base/config/envoy.env is the complete list a platform engineer reads, with the values
    the k8s profile renders (envoy/sidecar-k8s.yaml is its rendering)."""
    env = _env_file(K8S_DIR / "base" / "config" / "envoy.env")
    assert sorted(env) == sorted(s.key for s in SETTINGS)
    assert env == settings_to_env(k8s_settings())
    assert (
        render(settings_from_env(env, k8s_settings()))
        == (REPO_ROOT / "envoy" / "sidecar-k8s.yaml").read_text()
    )


def test_the_pods_render_what_the_overlay_sets() -> None:
    """The checks above validate the overlay's own values, not the defaults: a value merged by
    an overlay reaches the configuration they validate."""
    pod = _sidecar("prod")
    (envoy_map,) = [
        o
        for o in render_overlay("prod")
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("playback-envoy-")
    ]
    settings = settings_from_env(envoy_map["data"], k8s_settings())
    assert pod.config_text == render(settings)
    for principal in settings.license_principals:
        assert f"exact: {principal}" in pod.config_text
