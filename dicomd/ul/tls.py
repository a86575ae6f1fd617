"""DICOM TLS (PS3.15 B.9, the BCP 195 profile): the listener's TLS options and the peer's
certificate as validators see it.

The listener wraps the node's factory in TLS when the configuration has a
``tls:`` section; Twisted's `CertificateOptions` does the work.  What is
ours: loading the PEM files with one-line errors, the profile (TLS 1.2 at
least, the ciphers BCP 195 recommends), and whether a client certificate is
asked for, checked against the CA bundle, or required.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

# pyOpenSSL, cryptography and Twisted's TLS load in the functions that use them: a
# plain TCP connection, which loads this module for `handshake_failure`, needs none.
if TYPE_CHECKING:
    from OpenSSL import crypto
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
    from twisted.internet.ssl import CertificateOptions
    from twisted.python.failure import Failure

    from dicomd.interfaces import PeerCertificate

    ClientOptions = IOpenSSLClientConnectionCreator | CertificateOptions
    """What a TLS client endpoint takes: Twisted adapts context factories itself."""

BCP195_CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)
"""TLS 1.2 suites of RFC 9325 4.2 (BCP 195); TLS 1.3 suites are all AEAD and OpenSSL's."""


class TLSFileError(ValueError):
    """A certificate, key or CA file that cannot be used; ``key`` names its setting."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


def server_options(
    certificate: Path,
    private_key: Path,
    ca_certificates: Path | None,
    client_certificates: str,
) -> CertificateOptions:
    """The TLS options of the listener: our certificate (and its chain) and key, and the
    peers' certificates checked against ``ca_certificates`` unless ``client_certificates``
    is ``none``; ``required`` refuses a peer that presents none."""
    from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion

    chain = _certificates(certificate, "tls.certificate")
    key = _private_key(private_key)
    authorities = (
        _certificates(ca_certificates, "tls.ca_certificates") if ca_certificates is not None else []
    )
    asks = client_certificates != "none"
    return CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        verify=asks,
        caCerts=authorities if asks else None,
        requireCertificate=client_certificates == "required",
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(BCP195_CIPHERS),
    )


@dataclass(frozen=True, slots=True)
class Identity:
    """A certificate (its chain may follow it) and its private key, as PEM files: what we
    present to a peer that asks for a client certificate."""

    certificate: Path
    private_key: Path


def __getattr__(name: str) -> object:
    """``ClientOptions``, the type of `client_options`, made when first asked for."""
    if name != "ClientOptions":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
    from twisted.internet.ssl import CertificateOptions

    options = IOpenSSLClientConnectionCreator | CertificateOptions
    globals()[name] = options
    return options


def client_options(
    host: str,
    ca_certificates: Path | None,
    identity: Identity | None = None,
    *,
    verify_peer: bool = True,
) -> ClientOptions:
    """TLS options for connecting to ``host``: its certificate checked against
    ``ca_certificates`` (the system's trust store when None) and its name, and
    ``identity`` presented when the peer asks for a client certificate.  Without
    ``verify_peer`` (dcmtk's ``-ic``) the peer's certificate is not checked at all:
    the traffic is encrypted, but anyone in between may be the peer."""
    from twisted.internet.ssl import (
        AcceptableCiphers,
        Certificate,
        CertificateOptions,
        KeyPair,
        PrivateCertificate,
        TLSVersion,
        optionsForClientTLS,
        platformTrust,
        trustRootFromCertificates,
    )

    profile: dict[str, object] = {
        "raiseMinimumTo": TLSVersion.TLSv1_2,
        "acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString(BCP195_CIPHERS),
    }
    own: dict[str, object] = {}
    if identity is not None:
        chain = _certificates(identity.certificate, "certificate")
        key = _private_key(identity.private_key, "private_key")
        # The intermediates after our certificate go with it, or a peer that trusts only
        # the root cannot build the path.
        own = {"privateKey": key, "certificate": chain[0], "extraCertChain": chain[1:]}
    if not verify_peer:
        return CertificateOptions(verify=False, **own, **profile)  # type: ignore[arg-type]
    if ca_certificates is None:
        trust: object = platformTrust()
    else:
        authorities = _certificates(ca_certificates, "ca_certificates")
        trust = trustRootFromCertificates([Certificate(each) for each in authorities])
    client = None
    extra = dict(profile)
    if own:
        client = PrivateCertificate.fromCertificateAndKeyPair(
            Certificate(own["certificate"]),  # type: ignore[arg-type]
            KeyPair(own["privateKey"]),  # type: ignore[arg-type]
        )
        extra["extraCertChain"] = own["extraCertChain"]
    return optionsForClientTLS(
        host, trustRoot=trust, clientCertificate=client, extraCertificateOptions=extra
    )


def peer_certificate(transport: object) -> PeerCertificate | None:
    """The verified certificate of the peer on ``transport``; None without TLS or without one."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        certificate = get()
    except Exception:  # a plain TCP transport may answer that it has no TLS
        return None
    if certificate is None:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from dicomd.interfaces import PeerCertificate

    parsed = certificate.to_cryptography()
    try:
        extension = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(str(name.value) for name in extension.value)
    except x509.ExtensionNotFound:
        names = ()
    return PeerCertificate(
        subject=parsed.subject.rfc4514_string(),
        subject_alternative_names=names,
        sha256_fingerprint=parsed.fingerprint(hashes.SHA256()).hex(),
    )


def handshake_failure(reason: Failure) -> str | None:
    """What went wrong in a TLS handshake that ended a connection, in one line (OpenSSL's
    reasons, such as "certificate verify failed"); None when the connection ended otherwise."""
    # A connection that never loaded pyOpenSSL cannot have failed in it.
    SSL = sys.modules.get("OpenSSL.SSL")
    if SSL is None or not reason.check(SSL.Error):
        return None
    reasons = (
        [str(entry[2]) for entry in reason.value.args[0] if len(entry) > 2]
        if (reason.value.args and isinstance(reason.value.args[0], list))
        else []
    )
    return "; ".join(reasons) or str(reason.value)


def _certificates(path: Path, key: str) -> list[crypto.X509]:
    from cryptography import x509
    from OpenSSL import crypto

    data = _read(path, key)
    try:
        loaded = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSFileError(key, f"{path} holds no PEM certificate") from None
    return [crypto.X509.from_cryptography(certificate) for certificate in loaded]


def _private_key(path: Path, key: str = "tls.private_key") -> crypto.PKey:
    from cryptography.hazmat.primitives import serialization
    from OpenSSL import crypto

    data = _read(path, key)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise TLSFileError(key, f"{path} holds no unencrypted PEM private key") from None
    return crypto.PKey.from_cryptography_key(key)  # type: ignore[arg-type]


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TLSFileError(key, f"cannot read {path}: {error.strerror}") from None
