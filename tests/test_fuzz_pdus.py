"""A seeded mutational fuzzer of whole sessions of PDUs against an in-memory node.

Each case takes a real session (echo, store, find, release, abort, as our
encoder and the standard's tables produce them), mutates its bytes (lengths,
item types, flips, cuts, extensions), feeds it to a fresh node in random
pieces and lets every timer run out.  Whatever the bytes, the node must never
raise out of the protocol nor log a traceback: a peer gets an answer, an
A-ABORT or a closed connection.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydicom import Dataset
from twisted.logger import capturedLogs
from zope.interface import implementer

from dicomd import uids
from dicomd.interfaces import FindQuery, IFindHandler, IStoreHandler, ReceivedInstance
from tests.support.fuzzing import mutated, sessions
from tests.wire import Peer, bare_config

CASES = 300
SEED = 20261130


@implementer(IStoreHandler)
class Keep:
    def store(self, instance: ReceivedInstance) -> int:
        return 0x0000


@implementer(IFindHandler)
class Answers:
    find_models = (uids.STUDY_ROOT_FIND,)

    def find(self, query: FindQuery) -> list[Dataset]:
        match = Dataset()
        match.PatientID = "P1"
        return [match]


@pytest.mark.parametrize("chunk", range(3))
def test_mutated_sessions_never_raise_nor_log_a_traceback(tmp_path: Path, chunk: int) -> None:
    generator = random.Random(SEED + chunk)
    bases = sessions()
    timeouts = bare_config().timeouts
    for case in range(CASES // 3):
        data = mutated(generator.choice(bases), generator)
        config = bare_config(storage_path=tmp_path / f"case{chunk}-{case}")
        with capturedLogs() as events:
            peer = Peer(config, plugins=(Keep(), Answers()))
            position = 0
            while position < len(data):
                step = generator.randint(1, 4096)
                peer.protocol.dataReceived(data[position : position + step])
                position += step
            for seconds in (timeouts.dimse, timeouts.artim, timeouts.network_idle):
                peer.clock.advance(seconds + 1)
            peer.protocol.connectionLost()
        tracebacks = [event for event in events if "log_failure" in event]
        assert not tracebacks, (
            f"case {chunk}-{case}: {tracebacks[0]['log_failure'].getTraceback()}"
            f"\nbytes: {data.hex()}"
        )


def test_the_sessions_unmutated_are_served_whole(tmp_path: Path) -> None:
    """The fuzzer starts from sessions the node serves: associated, answered, ended."""
    answered = []
    for number, session in enumerate(sessions()):
        peer = Peer(bare_config(storage_path=tmp_path / str(number)), plugins=(Keep(), Answers()))
        peer.protocol.dataReceived(session)
        peer.clock.advance(0)
        answered.append([type(pdu).__name__ for pdu in peer.received()])
    assert [kinds[0] for kinds in answered] == ["AAssociateAC"] * 4
    assert [kinds[-1] for kinds in answered[:3]] == ["AReleaseRP"] * 3
    assert all("PDataTF" in kinds for kinds in answered)
