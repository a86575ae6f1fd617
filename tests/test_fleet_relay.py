"""What the parent of worker processes logs of its workers' output: each line under the
worker's number, at the level the worker's log observer gave the event, never at one that
text a peer chose claims."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from dicomd.fleet.parent import MOST_LINE, _Worker


def relayed(*chunks: tuple[int, bytes]) -> list[tuple[LogLevel, str]]:
    worker = _Worker(SimpleNamespace(reactor=Clock()), 2, 7)  # type: ignore[arg-type]
    with capturedLogs() as events:
        for descriptor, data in chunks:
            worker.childDataReceived(descriptor, data)
    return [(event["log_level"], formatEvent(event)) for event in events]


def test_each_line_keeps_the_level_its_event_has() -> None:
    assert relayed(
        (1, b"- [dicomd.node.acceptor.Acceptor#warn] one\n- [dicomd.x#info] tw"),
        (1, b"o\n"),
    ) == [
        (LogLevel.warn, "worker 2: [dicomd.node.acceptor.Acceptor#warn] one"),
        (LogLevel.info, "worker 2: [dicomd.x#info] two"),
    ]


def test_an_event_without_a_level_is_relayed_at_info() -> None:
    assert relayed((1, b"- [-] DicomServerFactory starting on 11112\n")) == [
        (LogLevel.info, "worker 2: [-] DicomServerFactory starting on 11112")
    ]


def test_a_level_in_what_a_peer_chose_is_only_text() -> None:
    said = relayed(
        (1, b"- [dicomd.node.acceptor.Acceptor#info] association requested by #critical] \n"),
        (1, b"\t#error] at 127.0.0.1:4000 for DICOMD\n"),  # an AE title's line feed
    )
    assert [level for level, _ in said] == [LogLevel.info, LogLevel.info]


def test_stdout_and_stderr_are_split_into_lines_each_on_its_own() -> None:
    said = relayed((1, b"- [a#error] from std"), (2, b"Fatal Python error\n"), (1, b"out\n"))
    assert said == [
        (LogLevel.info, "worker 2: Fatal Python error"),
        (LogLevel.error, "worker 2: [a#error] from stdout"),
    ]


def test_a_continuation_line_keeps_the_level_of_its_own_stream_s_event() -> None:
    said = relayed(
        (1, b"- [dicomd.x#error] a traceback begins\n"),
        (2, b"- [dicomd.y#info] meanwhile on stderr\n"),
        (1, b"\tand goes on\n"),
    )
    assert [level for level, _ in said] == [LogLevel.error, LogLevel.info, LogLevel.error]


def test_a_line_that_never_ends_is_relayed_in_pieces() -> None:
    said = relayed(*[(1, b"x" * 10_000)] * 30)
    assert [len(line) for _, line in said] == [len("worker 2: ") + MOST_LINE] * 4
