"""Hostile and broken peers against a real daemon: nothing broken is acknowledged, nothing
is kept, a trickle does not hold an association, and the log has no traceback."""

from __future__ import annotations

import struct
import time

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomd.dimse.command import CommandField
from dicomd.dimse.messages import PDV_COMMAND
from dicomd.ul.pdu import AAbort, PresentationDataValue, encode_pdata
from tests.support.archive import archive_of, archive_plugin
from tests.support.raw_peer import CONTEXT_ID, RawPeer, as_pdvs, ct_instance, store_command

BROKEN = {
    "a truncated last element": lambda data: data[:-3],
    "truncated pixel data": lambda data: data[:-5000],
    "3 stray bytes after the last element": lambda data: data + b"abc",
    "a private OB claiming 0xFFFFFFF0 bytes": lambda data: (
        data + struct.pack("<HH2sxxL", 0x7FE1, 0x0010, b"OB", 0xFFFFFFF0) + b"tiny"
    ),
}


@pytest.mark.parametrize("breaking", BROKEN.values(), ids=BROKEN)
def test_a_broken_data_set_is_refused_and_nothing_is_kept(start_dicomd, tmp_path, breaking):
    daemon = start_dicomd(plugins=[archive_plugin()])
    archive = archive_of(daemon)
    uid, data_set = ct_instance(tmp_path)
    peer = RawPeer(daemon)
    peer.send(*as_pdvs([store_command(uid)], PDV_COMMAND))
    peer.send(*as_pdvs([breaking(data_set)], kind=0))
    response = peer.response()
    peer.release()

    assert response.command_field == CommandField.C_STORE_RSP
    assert response.status == 0xC000
    assert response.error_comment.startswith("not whole: ")
    assert archive.files() == set() and archive.indexed() == {} and archive.incoming() == []
    assert "Traceback" not in daemon.log_text()


def test_a_trickled_pdu_is_aborted_when_the_dimse_timeout_runs_out(start_dicomd, tmp_path):
    daemon = start_dicomd(plugins=[archive_plugin()], timeouts={"dimse": 2, "network_idle": 30})
    peer = RawPeer(daemon)
    pdu = encode_pdata(CONTEXT_ID, 0x03, b"\x00" * 4000)
    peer.socket.sendall(pdu[:12])
    started = time.monotonic()
    answer = None
    peer.socket.settimeout(0.5)
    for byte in pdu[12:30]:  # a byte every half second: each one pushes the idle timer back
        try:
            peer.socket.sendall(bytes([byte]))
            answer = peer.socket.recv(10)
        except TimeoutError:
            continue
        except OSError:
            break
        if answer is not None:
            break
    elapsed = time.monotonic() - started
    assert answer == AAbort(2, 0).encode()
    assert 1.5 < elapsed < 6
    assert "began a PDU" in daemon.wait_for_log(lambda text: "began a PDU" in text)
    assert "Traceback" not in daemon.log_text()


def test_a_store_of_an_implicit_data_set_on_an_explicit_context_is_refused(start_dicomd, tmp_path):
    daemon = start_dicomd(plugins=[archive_plugin()])
    uid, _ = ct_instance(tmp_path)
    (path,) = tmp_path.glob("*.dcm")
    implicit = DicomBytesIO()
    implicit.is_little_endian, implicit.is_implicit_VR = True, True
    write_dataset(implicit, dcmread(path))
    peer = RawPeer(daemon)
    peer.send(*as_pdvs([store_command(uid)], PDV_COMMAND))
    for start in range(0, len(implicit.getvalue()), 16000):
        piece = implicit.getvalue()[start : start + 16000]
        last = start + 16000 >= len(implicit.getvalue())
        peer.send(PresentationDataValue(CONTEXT_ID, 0x02 if last else 0, piece))
    response = peer.response()
    peer.release()
    assert response.status == 0xC000
    assert "no VR" in response.error_comment
    assert archive_of(daemon).files() == set()
