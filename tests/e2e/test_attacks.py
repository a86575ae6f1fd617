"""Hostile peers attack a real daemon at its default limits, and each attack is held to figures.

For every attack: the peer gets the standard's answer (a failure status with
an Error Comment, an A-ABORT or an A-ASSOCIATE-RJ with the right source and
reason), nothing of a refused instance is kept, the daemon's peak memory
(``VmHWM``) stays under 256 MiB, its lag monitor logs no stall over 200 ms,
dcmtk's echoscu is served right after (and during the long attacks), and the
log holds no traceback.  Only timeouts are changed from the defaults, to keep
the tests short.

Attacks covered elsewhere are not repeated here: a PDU length past the limit,
unknown PDU types, items overrunning their PDU, silent and trickling peers
(``test_raw_peers``, ``test_hostile_peers``), association floods
(``test_association_limit``), and converting large instances for a C-MOVE
(``test_reactor_lag``).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator

import pytest
from pydicom import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet, Verification

from dicomd.dimse.command import NO_DATA_SET, Command, CommandField
from dicomd.dimse.messages import PDV_COMMAND, PDV_LAST
from dicomd.ul.pdu import AAbort, AAssociateAC, AAssociateRJ, PDataTF, encode_pdata
from tests.support.archive import archive_of, archive_plugin
from tests.support.attacks import (
    GIB,
    LARGEST_FRAGMENT,
    MIB,
    Deflated,
    EchoesDuring,
    RawAssociation,
    abort_or_close,
    associate_rq,
    ct_bomb,
    ct_header,
    is_abort,
    low_entropy_block,
    replaced,
    send_until_answered,
    sparse_block,
    study_identifier_around,
    tiny_elements_identifier,
    wait_for_lag_monitor,
    worst_stall_ms,
    zeros,
)
from tests.support.daemons import RunningDaemon
from tests.support.datasets import write_part10
from tests.support.processes import LOCALHOST
from tests.support.pynetdicom_peers import pynetdicom_store
from tests.support.raw_peer import find_command, store_command

MAX_PEAK_MIB = 256
MAX_STALL_MS = 200
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
DEFLATED = DeflatedExplicitVRLittleEndian
CONTEXT = 1
SUCCESS, CANNOT_UNDERSTAND, OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA700
INVALID_OBJECT_INSTANCE = 0x0117
SERVICE_PROVIDER, INVALID_PARAMETER_VALUE = 2, 6
MAX_IDENTIFIER_LENGTH = 1048576
SHORT_TIMEOUTS = {"artim": 2, "dimse": 30}

figures: dict[str, str] = {}
"""What each test measured, printed after it (``pytest -s`` shows them)."""


@pytest.fixture(autouse=True)
def _print_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if request.node.name in figures:
        print(f"\nFIGURES {request.node.name}: {figures[request.node.name]}")


def record(request: pytest.FixtureRequest, daemon: RunningDaemon, **more: object) -> None:
    measured = {
        "VmHWM": f"{daemon.peak_memory_mib():.0f} MiB",
        "worst stall": f"{worst_stall_ms(daemon)} ms",
        **more,
    }
    figures[request.node.name] = ", ".join(f"{key} {value}" for key, value in measured.items())


def attack_daemon(start_dicomd: Callable[..., RunningDaemon], **overrides: object) -> RunningDaemon:
    daemon = start_dicomd(plugins=[archive_plugin()], timeouts=SHORT_TIMEOUTS, **overrides)
    wait_for_lag_monitor(daemon)
    return daemon


def assert_figures(daemon: RunningDaemon, echoscu: Callable[..., object]) -> None:
    """A normal peer served, no traceback, bounded peak memory and no stall over 200 ms."""
    served = echoscu(daemon)
    assert served.returncode == 0, f"echoscu after the attack: {served.stdout}{served.stderr}"
    assert daemon.is_running()
    assert "Traceback" not in daemon.log_text()
    peak = daemon.peak_memory_mib()
    assert peak < MAX_PEAK_MIB, f"the daemon's VmHWM reached {peak:.0f} MiB"
    worst = worst_stall_ms(daemon)
    assert worst <= MAX_STALL_MS, f"the reactor stalled for {worst} ms"


def assert_nothing_kept(daemon: RunningDaemon) -> None:
    archive = archive_of(daemon)
    assert (archive.files(), archive.indexed(), archive.incoming()) == (set(), {}, [])


def associated(daemon: RunningDaemon, abstract_syntax: str, syntax: str) -> RawAssociation:
    peer = RawAssociation(daemon, associate_rq(daemon, [(abstract_syntax, [syntax])]))
    assert isinstance(peer.answer, AAssociateAC), peer.answer
    [context] = peer.answer.presentation_contexts
    assert (context.context_id, context.result, context.transfer_syntax) == (CONTEXT, 0, syntax)
    return peer


def echo_command(sop_class_uid: str = Verification) -> bytes:
    return Command(
        command_field=CommandField.C_ECHO_RQ,
        message_id=1,
        affected_sop_class_uid=sop_class_uid,
        command_data_set_type=NO_DATA_SET,
    ).encode()


def final_find_response(peer: RawAssociation) -> tuple[Command, int]:
    """Read C-FIND responses up to the final one; returns it and how many were pending."""
    pending = 0
    while True:
        pdu = peer.receive()
        assert isinstance(pdu, PDataTF), pdu
        [pdv] = pdu.pdvs
        if not pdv.is_command:
            continue
        response = Command.decode(pdv.data)
        assert response.command_field == CommandField.C_FIND_RSP
        if response.status not in (0xFF00, 0xFF01):
            return response, pending
        pending += 1


def assert_the_association_goes_on(peer: RawAssociation, syntax: str) -> None:
    """A plain C-FIND on the same association gets its final response (the archive is empty)."""
    identifier = b"".join(study_identifier_around(0))
    pieces = Deflated(identifier, b"", 0) if syntax == DEFLATED else [identifier]
    peer.send_fragment(CONTEXT, PDV_COMMAND | PDV_LAST, find_command(9))
    peer.send_stream(CONTEXT, 0, pieces, LARGEST_FRAGMENT)
    response, _ = final_find_response(peer)
    assert (response.message_id_being_responded_to, response.status) == (9, SUCCESS)


def midway(pieces: Iterable[bytes], after: int, action: Callable[[], None]) -> Iterator[bytes]:
    """``pieces``, with ``action`` run once ``after`` bytes of them have gone."""
    done = 0
    acted = False
    for piece in pieces:
        yield piece
        done += len(piece)
        if not acted and done >= after:
            action()
            acted = True


# -- 1, 2: deflate bombs on C-STORE -----------------------------------------------------------

BOMBS = {
    "2 GiB of zeros, past the inflation ratio": (
        zeros(MIB),
        2048,
        "inflates more than 200 times",
    ),
    "1 GiB at 165 to 1, past the inflated length": (
        sparse_block(MIB, 600),
        1088,
        f"inflates past {GIB} bytes",
    ),
}


def store_bomb(peer: RawAssociation, uid: str, pieces: Iterable[bytes]) -> Command:
    peer.send_fragment(CONTEXT, PDV_COMMAND | PDV_LAST, store_command(uid))
    peer.send_stream(CONTEXT, 0, pieces, LARGEST_FRAGMENT)
    return peer.response()


@pytest.mark.parametrize(("filler", "repeats", "comment"), BOMBS.values(), ids=BOMBS)
def test_a_deflate_bomb_is_refused_c000_in_bounded_memory_while_others_are_served(
    request, start_dicomd, echoscu, filler, repeats, comment
):
    daemon = attack_daemon(start_dicomd)
    uid = generate_uid()
    bomb = ct_bomb(uid, filler, repeats)
    assert bomb.inflated_size > GIB and bomb.size < 8 * MIB
    during = []
    peer = associated(daemon, CTImageStorage, DEFLATED)

    response = store_bomb(
        peer, uid, midway(bomb, bomb.size // 2, lambda: during.append(echoscu(daemon)))
    )
    peer.release()

    record(request, daemon, sent=f"{bomb.size} bytes", status=f"{response.status:04X}")
    assert [echo.returncode for echo in during] == [0], "echoscu while the bomb streamed"
    assert response.command_field == CommandField.C_STORE_RSP
    assert response.status == CANNOT_UNDERSTAND, response
    assert response.error_comment.startswith("not whole: ") and comment in response.error_comment
    assert_nothing_kept(daemon)
    assert_figures(daemon, echoscu)


def test_four_deflate_bombs_at_once_stay_in_bounded_memory(request, start_dicomd, echoscu):
    daemon = attack_daemon(start_dicomd)
    filler, repeats, _ = BOMBS["2 GiB of zeros, past the inflation ratio"]
    peers = [associated(daemon, CTImageStorage, DEFLATED) for _ in range(4)]
    start = threading.Barrier(len(peers))
    statuses: dict[int, int] = {}

    def attack(number: int, peer: RawAssociation) -> None:
        uid = generate_uid()
        bomb = ct_bomb(uid, filler, repeats)
        start.wait()
        statuses[number] = store_bomb(peer, uid, bomb).status
        peer.release()

    threads = [threading.Thread(target=attack, args=pair) for pair in enumerate(peers)]
    with EchoesDuring(daemon) as echoes:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    record(request, daemon, statuses=sorted(f"{s:04X}" for s in statuses.values()))
    assert statuses == dict.fromkeys(range(4), CANNOT_UNDERSTAND)
    assert echoes.results and echoes.failures() == [], echoes.results
    assert_nothing_kept(daemon)
    assert_figures(daemon, echoscu)


# -- 3, 4: C-FIND identifiers past max_identifier_length ---------------------------------------


def test_a_deflated_find_identifier_inflating_to_1_gib_is_refused_a700(
    request, start_dicomd, echoscu
):
    """Under max_identifier_length as sent (980 KB), 960 MiB once inflated: A700 as for an
    identifier sent that long, and the association goes on."""
    daemon = attack_daemon(start_dicomd)
    before, after = study_identifier_around(960 * MIB)
    bomb = Deflated(before, zeros(8 * MIB), 120, after)
    assert bomb.size < MAX_IDENTIFIER_LENGTH - 4096, "the bomb must pass as sent"
    peer = associated(daemon, STUDY_ROOT_FIND, DEFLATED)

    peer.send_fragment(CONTEXT, PDV_COMMAND | PDV_LAST, find_command(5))
    peer.send_stream(CONTEXT, 0, bomb, LARGEST_FRAGMENT)
    response, pending = final_find_response(peer)

    record(request, daemon, sent=f"{bomb.size} bytes", status=f"{response.status:04X}")
    assert (pending, response.status) == (0, OUT_OF_RESOURCES), response
    assert f"inflates to more than {MAX_IDENTIFIER_LENGTH} bytes" in response.error_comment
    assert_the_association_goes_on(peer, DEFLATED)
    peer.release()
    assert_figures(daemon, echoscu)


def one_huge_element(length: int) -> Iterator[bytes]:
    before, after = study_identifier_around(length)
    yield before
    block = zeros(MIB)
    for _ in range(length // MIB):
        yield block
    yield after


IDENTIFIERS = {
    "64 MiB in one element": lambda: one_huge_element(64 * MIB),
    "10 MiB of tiny elements": lambda: [tiny_elements_identifier(10 * MIB)],
}


@pytest.mark.parametrize("identifier", IDENTIFIERS.values(), ids=IDENTIFIERS)
def test_a_find_identifier_past_the_limit_is_refused_a700_and_the_association_goes_on(
    request, start_dicomd, echoscu, identifier
):
    daemon = attack_daemon(start_dicomd)
    peer = associated(daemon, STUDY_ROOT_FIND, ExplicitVRLittleEndian)

    with EchoesDuring(daemon) as echoes:
        peer.send_fragment(CONTEXT, PDV_COMMAND | PDV_LAST, find_command(5))
        sent = peer.send_stream(CONTEXT, 0, identifier(), LARGEST_FRAGMENT)
        response, pending = final_find_response(peer)

    record(request, daemon, sent=f"{sent} bytes", status=f"{response.status:04X}")
    assert (pending, response.status) == (0, OUT_OF_RESOURCES), response
    assert str(MAX_IDENTIFIER_LENGTH) in response.error_comment, response
    assert echoes.failures() == [], echoes.results
    assert_the_association_goes_on(peer, ExplicitVRLittleEndian)
    peer.release()
    assert_figures(daemon, echoscu)


def test_an_identifier_of_100_000_keys_under_the_length_limit_is_refused_a700(
    request, start_dicomd, echoscu
):
    """Under max_identifier_length, it is decoded (off the reactor), then refused for
    holding more than limits.max_identifier_keys (1024) keys."""
    daemon = attack_daemon(start_dicomd)
    identifier = tiny_elements_identifier(MAX_IDENTIFIER_LENGTH - 8192)
    assert len(identifier) <= MAX_IDENTIFIER_LENGTH
    peer = associated(daemon, STUDY_ROOT_FIND, ExplicitVRLittleEndian)

    with EchoesDuring(daemon) as echoes:
        peer.send_fragment(CONTEXT, PDV_COMMAND | PDV_LAST, find_command(5))
        peer.send_stream(CONTEXT, 0, [identifier], LARGEST_FRAGMENT)
        response, pending = final_find_response(peer)

    record(request, daemon, sent=f"{len(identifier)} bytes", status=f"{response.status:04X}")
    assert (pending, response.status) == (0, OUT_OF_RESOURCES), response
    assert "more than 1024 keys" in response.error_comment, response
    assert echoes.failures() == [], echoes.results
    assert_the_association_goes_on(peer, ExplicitVRLittleEndian)
    peer.release()
    assert_figures(daemon, echoscu)


# -- 5: a command set that never ends ----------------------------------------------------------


def test_a_command_set_that_never_ends_is_aborted_2_6(request, start_dicomd, echoscu):
    daemon = attack_daemon(start_dicomd)
    peer = associated(daemon, Verification, ExplicitVRLittleEndian)
    fragment = echo_command().ljust(16384, b"\0")
    sent, said = send_until_answered(peer, encode_pdata(CONTEXT, PDV_COMMAND, fragment), 64 * MIB)
    peer.close()

    record(request, daemon, sent=f"{sent} bytes", answer=said[:10].hex())
    assert is_abort(said, SERVICE_PROVIDER, INVALID_PARAMETER_VALUE), said[:64]
    assert sent < 16 * MIB, f"{sent} bytes went before the daemon aborted"
    assert_figures(daemon, echoscu)


# -- 6: C-GET of a large deflated instance to a peer that takes only explicit VR LE -------------

SIDE = 8192  # 8192 x 8192 16-bit pixels: 128 MiB


def test_a_large_deflated_instance_is_converted_for_c_get_without_stalling_the_reactor(
    request, start_dicomd, echoscu, tmp_path
):
    """128 MiB inflated, 27 MB deflated, stored by pynetdicom, then sent by C-GET to a peer
    that takes CT only in explicit VR little endian: the daemon inflates it (in its worker)
    and the echoes on other associations meanwhile are answered."""
    daemon = attack_daemon(start_dicomd)
    uid, study = generate_uid(), generate_uid()
    header = ct_header(uid, SIDE * SIDE * 2, SIDE, SIDE, study)
    block = low_entropy_block(MIB)
    repeats = SIDE * SIDE * 2 // MIB
    instance = Deflated(header, block, repeats)
    source = write_part10(tmp_path / "deflated.dcm", CTImageStorage, uid, DEFLATED, b"")
    with source.open("ab") as file:
        for piece in instance:
            file.write(piece)
        if instance.size % 2:
            file.write(b"\0")
    expected = hashlib.sha256(header)
    for _ in range(repeats):
        expected.update(block)
    stored = pynetdicom_store(daemon, source, CTImageStorage, DEFLATED)
    assert stored.Status == SUCCESS, stored
    source.unlink()
    store_peak = daemon.peak_memory_mib()
    daemon.reset_peak_memory()

    received: list[tuple[str, int, str]] = []

    def on_store(event: evt.Event) -> int:
        data = event.request.DataSet.getvalue()
        received.append(
            (event.context.transfer_syntax, len(data), hashlib.sha256(data).hexdigest())
        )
        return SUCCESS

    ae = AE(ae_title="GETTER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.maximum_pdu_size = 0
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    association = ae.associate(
        LOCALHOST,
        daemon.port,
        ae_title=daemon.ae_title,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert association.is_established
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study
    with EchoesDuring(daemon) as echoes:
        responses = list(association.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    association.release()

    statuses = [int(status.Status) for status, _ in responses if status]
    record(
        request,
        daemon,
        echoes=len(echoes.results),
        status=f"{statuses[-1]:04X}",
        note=f"VmHWM is the C-GET's alone; the store before it peaked at {store_peak:.0f} MiB",
    )
    assert statuses[-1] == SUCCESS, statuses
    assert received == [(ExplicitVRLittleEndian, len(header) + repeats * MIB, expected.hexdigest())]
    assert store_peak < MAX_PEAK_MIB, f"VmHWM {store_peak:.0f} MiB storing it"
    assert daemon.peak_memory_mib() < MAX_PEAK_MIB, "VmHWM sending it inflated"
    assert len(echoes.results) >= 3, "no echo ran alongside the C-GET"
    assert echoes.failures() == [], echoes.results
    worst = worst_stall_ms(daemon)
    assert worst <= MAX_STALL_MS, f"the reactor stalled for {worst} ms"
    served = echoscu(daemon)
    assert served.returncode == 0
    assert "Traceback" not in daemon.log_text()


# -- 7: text from the peer that no answer can carry --------------------------------------------

VERIFICATION_RQ = [(Verification, ["1.2.840.10008.1.2"])]


def rq_calling_ae(daemon: RunningDaemon) -> bytes:
    return replaced(associate_rq(daemon, VERIFICATION_RQ), b"ATTACKER", b"ATTACK\xc9R")


def rq_called_ae(daemon: RunningDaemon) -> bytes:
    request = associate_rq(daemon, VERIFICATION_RQ)
    return replaced(request, daemon.ae_title.ljust(16).encode(), b"DICOM\xff".ljust(16))


REJECTED_TEXT = {
    "calling AE title with 0xC9": (rq_calling_ae, (1, 1, 3)),
    "called AE title with 0xFF": (rq_called_ae, (1, 1, 7)),
}


@pytest.mark.parametrize(("build", "rejection"), REJECTED_TEXT.values(), ids=REJECTED_TEXT)
def test_an_ae_title_that_is_no_ae_title_is_rejected(
    request, start_dicomd, echoscu, build, rejection
):
    daemon = attack_daemon(start_dicomd)
    peer = RawAssociation(daemon, build(daemon))
    record(request, daemon, answer=peer.answer)
    assert isinstance(peer.answer, AAssociateRJ), peer.answer
    assert (peer.answer.result, peer.answer.source, peer.answer.reason) == rejection
    peer.close()
    assert_figures(daemon, echoscu)


def test_a_maximum_length_below_8_is_rejected_1_1_1(request, start_dicomd, echoscu):
    daemon = attack_daemon(start_dicomd)
    answers = {}
    for max_length in range(1, 9):
        peer = RawAssociation(daemon, associate_rq(daemon, VERIFICATION_RQ, max_length=max_length))
        answer = peer.answer
        answers[max_length] = (
            (answer.result, answer.source, answer.reason)
            if isinstance(answer, AAssociateRJ)
            else type(answer).__name__
        )
        if isinstance(answer, AAssociateAC):
            peer.release()
        peer.close()
    record(request, daemon, answers=answers)
    assert answers == {**dict.fromkeys(range(1, 8), (1, 1, 1)), 8: "AAssociateAC"}
    assert_figures(daemon, echoscu)


UNKNOWN_SYNTAX = b"1.2.840.10008.1.2.9999"
BROKEN_CONTEXTS = {
    "a transfer syntax with 0xFF": (
        [(Verification, [UNKNOWN_SYNTAX.decode()]), (Verification, ["1.2.840.10008.1.2"])],
        (UNKNOWN_SYNTAX, b"1.2.840.10008.1.2.99\xff9"),
        4,
    ),
    "an abstract syntax with 0xFF": (
        [("1.2.840.10008.5.1.4.1.1.9999", ["1.2.840.10008.1.2"]), VERIFICATION_RQ[0]],
        (b"1.2.840.10008.5.1.4.1.1.9999", b"1.2.840.10008.5.1.4.1.1.99\xff9"),
        3,
    ),
}


@pytest.mark.parametrize(
    ("contexts", "patch", "result"), BROKEN_CONTEXTS.values(), ids=BROKEN_CONTEXTS
)
def test_a_context_with_a_non_ascii_uid_is_rejected_and_the_association_answered(
    request, start_dicomd, echoscu, contexts, patch, result
):
    daemon = attack_daemon(start_dicomd)
    peer = RawAssociation(daemon, replaced(associate_rq(daemon, contexts), *patch))
    record(request, daemon, answer=peer.answer)
    assert isinstance(peer.answer, AAssociateAC), peer.answer
    assert [(c.context_id, c.result) for c in peer.answer.presentation_contexts] == [
        (1, result),
        (3, 0),
    ]
    peer.send_fragment(3, PDV_COMMAND | PDV_LAST, echo_command())
    peer_response = peer.receive()
    assert isinstance(peer_response, PDataTF)
    assert Command.decode(peer_response.pdvs[0].data).status == SUCCESS
    peer.release()
    assert_figures(daemon, echoscu)


def echo_with_ff(daemon: RunningDaemon) -> tuple[RawAssociation, bytes, bytes]:
    peer = associated(daemon, Verification, "1.2.840.10008.1.2")
    command = replaced(echo_command(), b"1.2.840.10008.1.1", b"1.2.840.10008.1.\xff")
    return peer, command, b""


def store_with_non_ascii_uid(daemon: RunningDaemon) -> tuple[RawAssociation, bytes, bytes]:
    uid = generate_uid()
    peer = associated(daemon, CTImageStorage, ExplicitVRLittleEndian)
    command = replaced(store_command(uid), uid.encode(), uid[:-1].encode() + b"\xe9")
    data_set = ct_header(uid, 64 * 64 * 2, 64, 64) + zeros(64 * 64 * 2)
    return peer, command, data_set


BROKEN_COMMANDS = {
    "C-ECHO-RQ whose SOP Class UID holds 0xFF": echo_with_ff,
    "C-STORE-RQ whose SOP Instance UID holds 0xE9": store_with_non_ascii_uid,
}


@pytest.mark.parametrize("build", BROKEN_COMMANDS.values(), ids=BROKEN_COMMANDS)
def test_a_command_whose_uids_cannot_be_echoed_is_aborted_2_6(
    request, start_dicomd, echoscu, build
):
    daemon = attack_daemon(start_dicomd)
    peer, command, data_set = build(daemon)
    peer.send_fragment(CONTEXT, PDV_COMMAND | PDV_LAST, command)
    if data_set:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            peer.send_stream(CONTEXT, 0, [data_set], LARGEST_FRAGMENT)
    answer = abort_or_close(peer)
    peer.close()
    record(request, daemon, answer=answer)
    assert answer == AAbort(SERVICE_PROVIDER, INVALID_PARAMETER_VALUE), answer
    assert_nothing_kept(daemon)
    assert_figures(daemon, echoscu)


# -- 8: SOP Instance UIDs too long to name an instance -----------------------------------------


@pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length of 64")
def test_two_long_instance_uids_sharing_64_characters_are_each_refused_0117(
    request, start_dicomd, echoscu
):
    daemon = attack_daemon(start_dicomd)
    stem = "1.2.826.0.1.3680043.8.498." + "1" * 38
    assert len(stem) == 64
    peer = associated(daemon, CTImageStorage, ExplicitVRLittleEndian)
    statuses = []
    for uid in (stem + ".1", stem + ".2"):
        peer.send_fragment(CONTEXT, PDV_COMMAND | PDV_LAST, store_command(uid))
        data_set = ct_header(uid, 64 * 64 * 2, 64, 64) + zeros(64 * 64 * 2)
        peer.send_stream(CONTEXT, 0, [data_set], LARGEST_FRAGMENT)
        response = peer.response()
        statuses.append((response.status, response.error_comment))
    peer.release()

    record(request, daemon, statuses=[f"{status:04X}" for status, _ in statuses])
    assert [status for status, _ in statuses] == [INVALID_OBJECT_INSTANCE] * 2, statuses
    assert all("more than 64" in comment for _, comment in statuses), statuses
    assert_nothing_kept(daemon)
    assert_figures(daemon, echoscu)


# -- a deflated instance within both inflation limits ------------------------------------------


def test_a_deflated_instance_within_the_inflation_limits_is_stored_in_bounded_memory(
    request, start_dicomd, echoscu
):
    """900 MiB at some 165 to 1: under max_inflated_length and max_inflation_ratio, 5.6 MB
    on the wire.  The walker lets it pass; what the archive does with it must stay bounded."""
    daemon = attack_daemon(start_dicomd)
    uid = generate_uid()
    instance = ct_bomb(uid, sparse_block(MIB, 600), 900)
    peer = associated(daemon, CTImageStorage, DEFLATED)

    with EchoesDuring(daemon) as echoes:
        response = store_bomb(peer, uid, instance)
    peer.release()

    record(request, daemon, sent=f"{instance.size} bytes", status=f"{response.status:04X}")
    assert echoes.failures() == [], echoes.results
    assert response.status == SUCCESS, response
    assert_figures(daemon, echoscu)
