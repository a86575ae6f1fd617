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
