"""The listener's TLS options from PEM files, and what a failed handshake is logged as."""

from __future__ import annotations

from pathlib import Path

import pytest
from OpenSSL import SSL
from twisted.python.failure import Failure

from dicomd.ul.tls import TLSFileError, handshake_failure, server_options
from tests.support.certificates import Authority


def test_options_from_a_certificate_its_key_and_a_ca(tmp_path: Path) -> None:
    ca = Authority(tmp_path, "hospital")
    server = ca.issue("dicomd", server=True)

    options = server_options(server.certificate, server.private_key, ca.path, "required")

    assert options.verify and options.requireCertificate
    assert options.getContext() is not None  # OpenSSL accepts the key, the chain and the CAs


def test_none_asks_for_no_client_certificate(tmp_path: Path) -> None:
    server = Authority(tmp_path, "hospital").issue("dicomd", server=True)
    options = server_options(server.certificate, server.private_key, None, "none")
    assert not options.verify and not options.requireCertificate


@pytest.mark.parametrize(
    ("broken", "key", "problem"),
    [
        ("certificate", "tls.certificate", "holds no PEM certificate"),
        ("private_key", "tls.private_key", "holds no unencrypted PEM private key"),
        ("ca", "tls.ca_certificates", "holds no PEM certificate"),
    ],
)
def test_a_file_that_is_not_what_it_should_be_is_named(
    tmp_path: Path, broken: str, key: str, problem: str
) -> None:
    ca = Authority(tmp_path, "hospital")
    server = ca.issue("dicomd", server=True)
    paths = {"certificate": server.certificate, "private_key": server.private_key, "ca": ca.path}
    paths[broken] = tmp_path / "junk.pem"
    paths[broken].write_text("not PEM at all")

    with pytest.raises(TLSFileError) as raised:
        server_options(paths["certificate"], paths["private_key"], paths["ca"], "optional")

    assert raised.value.key == key and problem in str(raised.value)


def test_a_handshake_failure_is_openssl_s_reason_and_anything_else_is_none() -> None:
    error = SSL.Error([("SSL routines", "", "certificate verify failed")])
    assert handshake_failure(Failure(error)) == "certificate verify failed"
    assert handshake_failure(Failure(ConnectionResetError())) is None
