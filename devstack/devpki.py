"""Development PKI: a CA, the sidecar's server certificate and client certificates.

Generated on first run under a git-ignored folder (``.local/pki``); production certificates come
from the platform (cert-manager, SPIFFE). Client identities are SPIFFE-style URI SANs, which the
Envoy RBAC rule on ``/drm/license`` matches.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

GATEWAY_SPIFFE_ID = "spiffe://playback-drm.local/ns/edge/sa/gateway"
OTHER_SPIFFE_ID = "spiffe://playback-drm.local/ns/other/sa/intruder"


@dataclass(frozen=True, slots=True)
class DevPki:
    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.dir / "sidecar.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "sidecar.key"

    @property
    def gateway_cert(self) -> Path:
        return self.dir / "gateway.crt"

    @property
    def gateway_key(self) -> Path:
        return self.dir / "gateway.key"

    @property
    def other_cert(self) -> Path:
        """A client certificate from the same CA with an identity RBAC does not admit."""
        return self.dir / "other.crt"

    @property
    def other_key(self) -> Path:
        return self.dir / "other.key"


def write_private_key(key: PrivateKeyTypes, path: Path) -> None:
    """PEM (PKCS#8, unencrypted: development only), readable by the owner alone."""
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    now: dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def ensure_dev_pki(directory: Path, ca_name: str = "playback-drm dev CA") -> DevPki:
    """Create the CA and certificates once; later calls reuse them. Two PKIs trusted side by
    side (a CA bundle during a CA rollover) need CA names of their own."""
    pki = DevPki(directory)
    if pki.other_key.exists():
        return pki
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_x509_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_x509_name)
        .issuer_name(ca_x509_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    issued: dict[str, tuple[str, list[x509.GeneralName], x509.ObjectIdentifier]] = {
        "sidecar": (
            "sidecar",
            [
                x509.DNSName("localhost"),
                x509.DNSName("sidecar.playback-drm.local"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ],
            ExtendedKeyUsageOID.SERVER_AUTH,
        ),
        "gateway": (
            "gateway",
            [x509.UniformResourceIdentifier(GATEWAY_SPIFFE_ID)],
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ),
        "other": (
            "other",
            [x509.UniformResourceIdentifier(OTHER_SPIFFE_ID)],
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ),
    }
    for name, (cn, sans, usage) in issued.items():
        key, cert = _issue(ca_key, ca_x509_name, cn, sans, usage, now)
        (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private_key(key, directory / f"{name}.key")
    return pki
