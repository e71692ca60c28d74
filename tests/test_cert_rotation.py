"""Certificates renewed under a running Envoy are served without a restart (envoyconf/sds.py).

The real Envoy runs the k8s profile's sidecar listener (mutual TLS, the certificates through SDS
from files) on loopback. Its TLS files sit in a directory laid out the way the kubelet lays out a
Secret volume, and are renewed the way the kubelet renews them when cert-manager updates the
Secret: a new versioned directory, a ``..data_tmp`` link to it renamed over ``..data``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import shutil
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from devstack.devpki import DevPki, ensure_dev_pki
from devstack.supervise import free_port
from envoyconf import Endpoint, TlsFiles, k8s_settings, render, render_sds
from tests.support.servers import EnvoyServer, start_envoy

TLS_FILES = ("tls.crt", "tls.key", "ca.crt")


class SecretVolume:
    """A Secret volume as the kubelet writes it: ``tls.crt`` -> ``..data/tls.crt``, ``..data`` ->
    ``..<version>``; :meth:`write` replaces every file at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        root.mkdir()
        for name in TLS_FILES:
            (root / name).symlink_to(f"..data/{name}")

    def write(self, files: dict[str, bytes]) -> None:
        self.version += 1
        version_dir = self.root / f"..{self.version:04d}"
        version_dir.mkdir()
        for name, content in files.items():
            (version_dir / name).write_bytes(content)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(version_dir.name)
        os.replace(tmp_link, self.root / "..data")  # the one atomic step
        if old is not None:
            shutil.rmtree(self.root / old)


def secret_files(server: DevPki, *trusted: DevPki) -> dict[str, bytes]:
    """cert-manager's Secret keys: the server certificate and key, the CA bundle."""
    return {
        "tls.crt": server.server_cert.read_bytes(),
        "tls.key": server.server_key.read_bytes(),
        "ca.crt": b"".join(p.ca_cert.read_bytes() for p in trusted),
    }


def client_context(client: DevPki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test reads whichever certificate Envoy presents
    ctx.load_cert_chain(client.gateway_cert, client.gateway_key)
    return ctx


def serial(cert_der: bytes | None) -> int:
    assert cert_der is not None
    return x509.load_der_x509_certificate(cert_der).serial_number


def cert_serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@dataclasses.dataclass
class Sidecar:
    envoy: EnvoyServer
    port: int
    volume: SecretVolume

    def connect(self, client: DevPki) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=client_context(client), timeout=5
        )
        conn.connect()
        return conn

    def handshake_serial(self, client: DevPki) -> int:
        """A new TLS handshake: the serial number of the certificate Envoy presents."""
        conn = self.connect(client)
        try:
            assert conn.sock is not None
            return serial(conn.sock.getpeercert(binary_form=True))
        finally:
            conn.close()


def sds_stats(envoy: EnvoyServer) -> dict[str, int]:
    """Envoy's counters of its SDS subscriptions (``sds.<secret>.*``)."""
    url = f"http://127.0.0.1:{envoy.admin_port}/stats?filter=%5Esds%5C."
    with urllib.request.urlopen(url, timeout=2) as resp:
        lines = resp.read().decode().splitlines()
    pairs = (line.split(": ", 1) for line in lines)
    return {name: int(value) for name, value in pairs if value.isdigit()}  # counters, gauges


def get(conn: http.client.HTTPSConnection) -> int:
    """One request on an open connection; unknown paths are answered by Envoy itself (404)."""
    conn.request("GET", "/not-a-route", headers={"Connection": "keep-alive"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


@pytest.fixture
def generations(tmp_path: Path) -> tuple[DevPki, DevPki]:
    """Two certificate generations, each with its own CA (a renewal that also rolls the CA)."""
    return (
        ensure_dev_pki(tmp_path / "pki-1", "rotation test CA 1"),
        ensure_dev_pki(tmp_path / "pki-2", "rotation test CA 2"),
    )


@pytest.fixture
def sidecar(tmp_path: Path, generations: tuple[DevPki, DevPki]) -> Iterator[Sidecar]:
    old, _ = generations
    volume = SecretVolume(tmp_path / "tls")
    volume.write(secret_files(old, old))
    port, admin = free_port(), free_port()
    loopback = Endpoint("127.0.0.1", free_port())  # nothing listens: no request gets that far
    tls = volume.root
    settings = dataclasses.replace(
        k8s_settings(),
        listen_host="127.0.0.1",
        sidecar_port=port,
        probe_port=free_port(),
        stats_port=free_port(),
        admin_port=admin,
        authz_grpc=loopback,
        authz_http=loopback,
        extproc_grpc=loopback,
        broker=loopback,
        origin=loopback,
        sidecar_tls=TlsFiles(str(tls / "tls.crt"), str(tls / "tls.key"), ""),
        client_ca=str(tls / "ca.crt"),
        sds_dir=str(tmp_path / "sds"),
        access_log=False,
    )
    (tmp_path / "sds").mkdir()
    for path, text in render_sds(settings).items():
        Path(path).write_text(text)
    config = tmp_path / "envoy.yaml"
    config.write_text(render(settings))
    envoy = start_envoy(config, admin, tmp_path, name="envoy-rotation")
    try:
        yield Sidecar(envoy, port, volume)
    finally:
        envoy.process.stop()


def test_a_renewed_certificate_is_served_without_a_restart(
    sidecar: Sidecar, generations: tuple[DevPki, DevPki]
) -> None:
    old, new = generations
    assert sidecar.handshake_serial(old) == cert_serial(old.server_cert)
    # the new CA is not trusted yet: a client certificate it issued is refused
    refused = http.client.HTTPSConnection(
        "127.0.0.1", sidecar.port, context=client_context(new), timeout=5
    )
    with contextlib.closing(refused), pytest.raises((ssl.SSLError, ConnectionError)):
        get(refused)  # TLS 1.3: the server's refusal arrives with the first read
    open_conn = sidecar.connect(old)
    assert get(open_conn) == 404
    started = time.monotonic()
    assert sidecar.envoy.process.proc is not None
    pid = sidecar.envoy.process.proc.pid

    # cert-manager renews: new certificate from the new CA, both CAs trusted during the overlap
    sidecar.volume.write(secret_files(new, old, new))

    deadline = started + 10
    while sidecar.handshake_serial(old) != cert_serial(new.server_cert):
        assert time.monotonic() < deadline, "Envoy still serves the old certificate after 10 s"
        time.sleep(0.1)
    took = time.monotonic() - started
    print(f"new certificate served {took:.2f} s after the renewal")
    assert took < 5
    # the validation context was read again too: the new CA's client certificates are admitted
    with contextlib.closing(sidecar.connect(new)) as conn:
        assert get(conn) == 404
    # the connection opened before the renewal is still served, on its old certificate
    assert get(open_conn) == 404
    assert open_conn.sock is not None
    assert serial(open_conn.sock.getpeercert(binary_form=True)) == cert_serial(old.server_cert)
    open_conn.close()
    assert sidecar.envoy.process.proc.poll() is None  # the same process, never restarted
    assert sidecar.envoy.process.proc.pid == pid
    stats = sds_stats(sidecar.envoy)
    assert stats["sds.sidecar-cert.key_rotation_failed"] == 0


def test_a_broken_renewal_keeps_the_last_good_certificate(
    sidecar: Sidecar, generations: tuple[DevPki, DevPki]
) -> None:
    old, new = generations
    broken = secret_files(new, old)
    broken["tls.key"] = old.server_key.read_bytes()  # the key does not match the certificate
    sidecar.volume.write(broken)
    deadline = time.monotonic() + 10
    while sds_stats(sidecar.envoy)["sds.sidecar-cert.key_rotation_failed"] == 0:
        assert time.monotonic() < deadline, "Envoy never noticed the renewal"
        time.sleep(0.1)
    assert sidecar.handshake_serial(old) == cert_serial(old.server_cert)
