"""C-FIND answers wait for a peer that does not read them.

A site's find handler answers 200 matches of 1 MiB each, made one at a time
as they are asked for, and writes down how many it has made.  A raw peer
asks, then reads nothing for a while: the daemon must stop asking the
handler for matches once the transport is full, instead of queueing 200 MiB
of answers, and serve everyone else meanwhile.  Once the peer reads, every
match arrives, then success.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomd import uids
from dicomd.dimse.command import Command
from dicomd.dimse.datasets import encode_dataset
from dicomd.dimse.messages import PDV_COMMAND, PDV_LAST
from dicomd.ul.pdu import AAssociateAC, PDataTF
from tests.support.attacks import (
    EchoesDuring,
    RawAssociation,
    associate_rq,
    wait_for_lag_monitor,
    worst_stall_ms,
)
from tests.support.raw_peer import find_command

MATCHES = 200
MATCH_TEXT = 1 << 20

SITE_LARGE = f'''
"""Study Root matches of 1 MiB each, made one at a time, counted in a file."""

from pathlib import Path

from pydicom import Dataset
from zope.interface import implementer

from dicomd.interfaces import IFindHandler


@implementer(IFindHandler)
class LargeMatches:
    find_models = ("{uids.STUDY_ROOT_FIND}",)

    def __init__(self, made):
        self.made = Path(made)

    def find(self, query):
        for number in range({MATCHES}):
            match = Dataset()
            match.StudyInstanceUID = f"1.2.3.{{number}}"
            match.TextValue = "x" * {MATCH_TEXT}
            self.made.write_text(str(number + 1))
            yield match
'''


def ask(peer: RawAssociation) -> None:
    identifier = encode_dataset(_identifier(), ExplicitVRLittleEndian)
    peer.send_fragment(1, PDV_COMMAND | PDV_LAST, find_command(3))
    peer.send_fragment(1, PDV_LAST, identifier)


def _identifier() -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.TextValue = ""
    return identifier


def read_answers(peer: RawAssociation) -> tuple[list[int], list[int]]:
    """(status of every response, length of every answer's data set) up to the final one."""
    statuses: list[int] = []
    lengths: list[int] = []
    command = b""
    data = 0
    while not statuses or statuses[-1] in (0xFF00, 0xFF01):
        pdu = peer.receive()
        assert isinstance(pdu, PDataTF), pdu
        for pdv in pdu.pdvs:
            if pdv.control & PDV_COMMAND:
                command += pdv.data
                if pdv.control & PDV_LAST:
                    statuses.append(Command.decode(command).status)
                    command = b""
            else:
                data += len(pdv.data)
                if pdv.control & PDV_LAST:
                    lengths.append(data)
                    data = 0
    return statuses, lengths


def test_answers_wait_for_a_peer_that_does_not_read(start_dicomd, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "site_large.py").write_text(SITE_LARGE)
    made = tmp_path / "made"
    daemon = start_dicomd(
        plugins=[{"plugin": "site_large.LargeMatches", "options": {"made": str(made)}}],
        pythonpath=[site],
    )
    wait_for_lag_monitor(daemon)
    request = associate_rq(daemon, [(uids.STUDY_ROOT_FIND, [ExplicitVRLittleEndian])])
    peer = RawAssociation(daemon, request)
    assert isinstance(peer.answer, AAssociateAC)

    with EchoesDuring(daemon) as echoes:
        ask(peer)
        time.sleep(4)  # the peer reads nothing
        made_while_unread = int(made.read_text())
        peak_while_unread = daemon.peak_memory_mib()
    statuses, lengths = read_answers(peer)
    peer.release()

    assert made_while_unread < 20, f"{made_while_unread} matches made for a peer that reads none"
    assert peak_while_unread < 256, f"VmHWM {peak_while_unread:.0f} MiB"  # 272 unbounded
    assert echoes.results and not echoes.failures(), echoes.results
    assert statuses == [0xFF00] * MATCHES + [0x0000]
    assert len(lengths) == MATCHES and min(lengths) > MATCH_TEXT
    assert daemon.peak_memory_mib() < 256
    assert worst_stall_ms(daemon) <= 200
    assert "Traceback" not in daemon.log_text()
