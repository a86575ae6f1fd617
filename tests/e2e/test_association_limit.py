"""``limits.max_associations``: the association over the limit is turned away, transiently."""

from __future__ import annotations

import time

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from tests.support.daemons import log_lines_with
from tests.support.processes import LOCALHOST

REJECTED_TRANSIENT = 2
SOURCE_PRESENTATION = 3
LOCAL_LIMIT_EXCEEDED = 2


def associate(port: int) -> Association:
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = 10
    ae.add_requested_context(Verification)
    return ae.associate(LOCALHOST, port, ae_title="DICOMD")


def associate_within(port: int, seconds: float) -> Association:
    """Retry briefly: a released slot frees when the daemon sees the transport close."""
    deadline = time.monotonic() + seconds
    while True:
        assoc = associate(port)
        if assoc.is_established or time.monotonic() > deadline:
            return assoc
        time.sleep(0.1)


def test_association_over_the_limit_is_rejected_until_one_is_released(start_dicomd, echoscu):
    daemon = start_dicomd(limits={"max_associations": 2})
    held = [associate(daemon.port) for _ in range(2)]
    assert [assoc.is_established for assoc in held] == [True, True]

    over_limit = associate(daemon.port)
    dcmtk = echoscu(daemon)

    assert over_limit.is_rejected
    rejection = over_limit.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (
        REJECTED_TRANSIENT,
        SOURCE_PRESENTATION,
        LOCAL_LIMIT_EXCEEDED,
    )
    assert dcmtk.returncode != 0
    assert "Rejected Transient, Source: Service Provider (Presentation Related)" in dcmtk.stderr
    assert "Local Limit Exceeded" in dcmtk.stderr
    assert held[0].send_c_echo().Status == 0x0000
    log = daemon.wait_for_log(lambda text: bool(log_lines_with(text, "reject", "limit")))
    assert log_lines_with(log, "reject", "limit"), log

    held[0].release()
    replacement = associate_within(daemon.port, seconds=2.0)
    try:
        assert replacement.is_established
        assert replacement.send_c_echo().Status == 0x0000
    finally:
        for assoc in (replacement, held[1]):
            assoc.release()


def associate_as(port: int, calling: str, source: str) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = 10
    ae.add_requested_context(Verification)
    return ae.associate(LOCALHOST, port, ae_title="DICOMD", bind_address=(source, 0))


def test_a_host_flooding_its_share_leaves_room_for_other_hosts_and_aes(start_dicomd):
    """The defaults: 32 in all, 16 per calling host, 16 per calling AE title."""
    daemon = start_dicomd()
    flood = [associate_as(daemon.port, "FLOOD", "127.0.0.1") for _ in range(16)]
    try:
        assert all(assoc.is_established for assoc in flood)
        same_host = associate_as(daemon.port, "OTHER", "127.0.0.1")
        same_ae = associate_as(daemon.port, "FLOOD", "127.0.0.2")
        other = associate_as(daemon.port, "OTHER", "127.0.0.2")
        # pynetdicom may see the close that follows an A-ASSOCIATE-RJ before the RJ itself,
        # so the answer is read where it is sure: the daemon's own line for each refusal.
        assert not (same_host.is_established or same_ae.is_established)
        assert other.is_established
        assert other.send_c_echo().Status == 0x0000  # served while one host holds its share
        other.release()
        log = daemon.wait_for_log(lambda text: "associations for FLOOD" in text)
        transient_local_limit = "(result 2, source 3, reason 2)"
        assert log_lines_with(log, "from 127.0.0.1", "more than 16 associations from 127.0.0.1",
                              transient_local_limit)  # fmt: skip
        assert log_lines_with(log, "FLOOD at 127.0.0.2", "more than 16 associations for FLOOD",
                              transient_local_limit)  # fmt: skip
    finally:
        for assoc in flood:
            assoc.release()
