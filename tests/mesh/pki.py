"""A mesh certificate authority for the tests: workload certificates whose only identity is a
SPIFFE URI SAN (``spiffe://cluster.local/ns/<ns>/sa/<account>``), as Istio's CA issues them, usable
as client and server certificates."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devstack.devpki import write_private_key


@dataclass(frozen=True, slots=True)
class Workload:
    spiffe_id: str
    cert: Path
    key: Path


class MeshCa:
    """Issues workload certificates into ``directory``; ``ca_cert`` is the mesh's root."""

    def __init__(self, directory: Path, trust_domain: str = "cluster.local") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.trust_domain = trust_domain
        self._now = dt.datetime.now(dt.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - dt.timedelta(minutes=5))
            .not_valid_after(self._now + dt.timedelta(days=1))
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
            .sign(self._key, hashes.SHA256())
        )
        self.ca_cert = directory / "mesh-ca.crt"
        self.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def principal(self, namespace: str, account: str) -> str:
        """The principal as AuthorizationPolicies write it (no ``spiffe://``)."""
        return f"{self.trust_domain}/ns/{namespace}/sa/{account}"

    def workload(self, namespace: str, account: str) -> Workload:
        spiffe_id = "spiffe://" + self.principal(namespace, account)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - dt.timedelta(minutes=5))
            .not_valid_after(self._now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        stem = f"{namespace}.{account}"
        cert_path, key_path = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private_key(key, key_path)
        return Workload(spiffe_id, cert_path, key_path)


__all__ = ["MeshCa", "Workload"]
