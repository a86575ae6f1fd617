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
from dicomd.dimse.command import Command, CommandField
from dicomd.dimse.datasets import encode_dataset
from dicomd.dimse.messages import fragment
from dicomd.interfaces import FindQuery, IFindHandler, IStoreHandler, ReceivedInstance
from dicomd.ul.pdu import AAbort, AReleaseRQ, PresentationContextRQ
from tests.wire import EXPLICIT, IMPLICIT, Peer, bare_config, request

CT = "1.2.840.10008.5.1.4.1.1.2"
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


def message(context_id: int, command: Command, data: bytes | None = None) -> bytes:
    return b"".join(fragment(context_id, command.encode(), data, 16384))


def sessions() -> list[bytes]:
    """Real sessions as a peer sends them, each a run of whole PDUs."""
    contexts = (
        PresentationContextRQ(1, uids.VERIFICATION, (IMPLICIT,)),
        PresentationContextRQ(3, CT, (EXPLICIT, IMPLICIT)),
        PresentationContextRQ(5, uids.STUDY_ROOT_FIND, (EXPLICIT,)),
    )
    associate = request(contexts=contexts).encode()
    echo = message(1, Command(command_field=CommandField.C_ECHO_RQ, message_id=1,
                              affected_sop_class_uid=uids.VERIFICATION))  # fmt: skip
    instance = Dataset()
    instance.SOPClassUID, instance.SOPInstanceUID = CT, "1.2.3.4"
    instance.PatientID = "FUZZ"
    store = message(
        3,
        Command(command_field=CommandField.C_STORE_RQ, message_id=2, affected_sop_class_uid=CT,
                affected_sop_instance_uid="1.2.3.4", priority=0, command_data_set_type=1),
        encode_dataset(instance, EXPLICIT),
    )  # fmt: skip
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = ""
    find = message(
        5,
        Command(command_field=CommandField.C_FIND_RQ, message_id=3,
                affected_sop_class_uid=uids.STUDY_ROOT_FIND, priority=0, command_data_set_type=1),
        encode_dataset(query, EXPLICIT),
    )  # fmt: skip
    release, abort = AReleaseRQ().encode(), AAbort(0, 0).encode()
    return [
        associate + echo + release,
        associate + store + release,
        associate + find + echo + release,
        associate + echo + abort,
    ]


def mutated(session: bytes, generator: random.Random) -> bytes:
    data = bytearray(session)
    for _ in range(generator.randint(1, 3)):
        at = generator.randrange(len(data))
        kind = generator.randrange(6)
        if kind == 0:  # a byte flipped
            data[at] = generator.randrange(256)
        elif kind == 1:  # a length field (any 4 bytes) changed
            data[at : at + 4] = generator.randrange(1 << 32).to_bytes(4, "big")
        elif kind == 2:  # an item or PDU type changed
            data[at] = generator.choice([0x01, 0x02, 0x04, 0x07, 0x10, 0x20, 0x30, 0x50, 0x51])
        elif kind == 3:  # cut short
            del data[at:]
            if not data:
                data = bytearray(session[:1])
        elif kind == 4:  # extended
            data[at:at] = generator.randbytes(generator.randint(1, 32))
        else:  # a stretch repeated
            data[at:at] = data[at : at + generator.randint(1, 64)]
    return bytes(data)


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
