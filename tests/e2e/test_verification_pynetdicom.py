"""Verification and presentation context negotiation against pynetdicom, an independent peer."""

from __future__ import annotations

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.support.processes import LOCALHOST

UNKNOWN_SOP_CLASS = "1.2.826.0.1.3680043.9.9999.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


def requestor(*contexts: tuple[str, list[str] | None]) -> AE:
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = 10
    ae.dimse_timeout = 10
    ae.network_timeout = 10
    for abstract_syntax, transfer_syntaxes in contexts:
        if transfer_syntaxes is None:
            ae.add_requested_context(abstract_syntax)
        else:
            ae.add_requested_context(abstract_syntax, transfer_syntaxes)
    return ae


def test_echo(dicomd):
    ae = requestor((Verification, None))

    assoc = ae.associate(LOCALHOST, dicomd.port, ae_title=dicomd.ae_title)
    assert assoc.is_established

    status = assoc.send_c_echo()
    assoc.release()

    assert status.Status == 0x0000
    assert assoc.is_released


def test_unsupported_abstract_syntax_is_rejected_beside_verification(dicomd):
    ae = requestor((Verification, None), (UNKNOWN_SOP_CLASS, None))

    assoc = ae.associate(LOCALHOST, dicomd.port, ae_title=dicomd.ae_title)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()

    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [Verification]
    assert [(cx.abstract_syntax, cx.result) for cx in assoc.rejected_contexts] == [
        (UNKNOWN_SOP_CLASS, ABSTRACT_SYNTAX_NOT_SUPPORTED)
    ]
    assert status.Status == 0x0000


def test_verification_offering_only_an_unsupported_transfer_syntax_is_rejected(dicomd):
    ae = requestor((Verification, [JPEG_BASELINE]), (Verification, None))

    assoc = ae.associate(LOCALHOST, dicomd.port, ae_title=dicomd.ae_title)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()

    rejected = assoc.rejected_contexts
    assert [(cx.context_id, cx.result) for cx in rejected] == [(1, TRANSFER_SYNTAXES_NOT_SUPPORTED)]
    assert [cx.context_id for cx in assoc.accepted_contexts] == [3]
    assert status.Status == 0x0000
