"""Certificates made for a test: a CA, a server certificate for 127.0.0.1 and client
certificates, written as PEM files (the ``cryptography`` package, under Twisted's TLS extra)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as PEM files."""

    certificate: Path
    private_key: Path
    sha256_fingerprint: str


class Authority:
    """A CA that signs the certificates of a test."""

    def __init__(self, folder: Path, name: str, parent: Authority | None = None) -> None:
        self.folder = folder
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(f"{name} test CA")
        self.subject = subject
        issuer, signer = (parent.subject, parent.key) if parent else (subject, self.key)
        self.certificate = (
            _builder(subject, issuer, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )
        pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        # What a certificate this CA issues is sent with: the intermediates, not the root.
        self.chain = pem + parent.chain if parent else b""
        self.path = folder / f"{name}-ca.pem"
        self.path.write_bytes(pem)

    def intermediate(self, name: str) -> Authority:
        """A CA this one signs; what it issues carries it as the chain after the certificate."""
        return Authority(self.folder, name, parent=self)

    def issue(self, common_name: str, *, server: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(_name(common_name), self.subject, key.public_key()).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        else:
            names = [x509.DNSName(f"{common_name.lower()}.example")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        stem = self.folder / f"{self.name}-{common_name}"
        certificate_path, key_path = stem.with_suffix(".pem"), stem.with_suffix(".key")
        certificate_path.write_bytes(
            certificate.public_bytes(serialization.Encoding.PEM) + self.chain
        )
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return Issued(certificate_path, key_path, certificate.fingerprint(hashes.SHA256()).hex())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dicomd tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey):
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
