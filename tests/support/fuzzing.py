"""Whole sessions of PDUs as a peer sends them, and a seeded mutator of their bytes.

The unit fuzzer (tests/test_fuzz_pdus.py) feeds them to an in-memory node;
bench/fuzz.py sends thousands to a real daemon.
"""

from __future__ import annotations

import random

from pydicom import Dataset

from dicomd import uids
from dicomd.dimse.command import Command, CommandField
from dicomd.dimse.datasets import encode_dataset
from dicomd.ul.pdu import AAbort, AReleaseRQ, PresentationContextRQ
from tests.wire import EXPLICIT, IMPLICIT, fragment, request

CT = "1.2.840.10008.5.1.4.1.1.2"


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
