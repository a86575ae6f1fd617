"""Verification and association acceptance against dcmtk's ``echoscu``, the reference peer."""

from __future__ import annotations

import pytest

from tests.support.daemons import log_lines_with as lines_with


def test_echo_is_accepted_and_released(dicomd, echoscu):
    result = echoscu(dicomd, "-aet", "ECHOSCU")

    assert result.returncode == 0, result.stderr
    log = dicomd.wait_for_log(lambda text: bool(lines_with(text, "released")))
    assert lines_with(log, "accepted", "ECHOSCU"), log
    assert lines_with(log, "released"), log


def test_wrong_called_ae_is_rejected_permanently(dicomd, echoscu):
    result = echoscu(dicomd, "-aec", "WRONG")

    assert result.returncode != 0
    assert "Rejected Permanent, Source: Service User" in result.stderr
    assert "Called AE Title Not Recognized" in result.stderr
    log = dicomd.wait_for_log(lambda text: bool(lines_with(text, "reject", "called")))
    assert lines_with(log, "reject", "called"), log


@pytest.mark.parametrize(
    ("allowed", "calling_ae", "accepted"),
    [
        ("ALLOWED", "ALLOWED", True),
        ("ALLOWED", "OTHER", False),
        ("ALLOWED@127.0.0.1", "ALLOWED", True),
        ("ALLOWED@10.9.9.9", "ALLOWED", False),
    ],
)
def test_calling_ae_allow_list(start_dicomd, echoscu, allowed, calling_ae, accepted):
    daemon = start_dicomd(access={"calling_aes": [allowed]})

    result = echoscu(daemon, "-aet", calling_ae)

    if accepted:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert "Rejected Permanent, Source: Service User" in result.stderr
        assert "Calling AE Title Not Recognized" in result.stderr
        log = daemon.wait_for_log(lambda text: bool(lines_with(text, "reject", "calling")))
        assert lines_with(log, "reject", "calling"), log


def test_most_contexts_and_transfer_syntaxes_echoscu_can_propose(dicomd, echoscu):
    """``-ppc 128 -pts 38`` are echoscu's maxima: 128 contexts of 38 syntaxes each."""
    result = echoscu(dicomd, "-v", "-ppc", "128", "-pts", "38")

    assert result.returncode == 0, result.stderr
    assert "Association Accepted" in result.stderr
    assert "Received Echo Response (Success)" in result.stderr
