"""The texts that explain status codes, rejections and aborts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomd.describe import describe_abort, describe_rejection, describe_status, status_meaning
from dicomd.uids import Status


@pytest.mark.parametrize(
    ("code", "service", "text"),
    [
        (0x0000, None, "0x0000 success"),
        (0xA700, "store", "0xA700 out of resources"),
        (0xA7FF, "store", "0xA7FF out of resources"),
        (0xA900, "store", "0xA900 data set does not match SOP class"),
        (0xA900, "find", "0xA900 identifier does not match SOP class"),
        (0xC000, "store", "0xC000 cannot understand"),
        (0xC123, "store", "0xC123 cannot understand"),
        (0xC001, "find", "0xC001 unable to process"),
        (0xB000, "store", "0xB000 coercion of data elements"),
        (0xB000, "move", "0xB000 sub-operations complete, some failed"),
        (0xB007, "store", "0xB007 data set does not match SOP class"),
        (0xB006, "store", "0xB006 elements discarded"),
        (0xFE00, "find", "0xFE00 matching terminated due to cancel"),
        (0xFE00, "move", "0xFE00 sub-operations terminated due to cancel"),
        (0xFF00, "find", "0xFF00 pending"),
        (0xFF01, "find", "0xFF01 pending, some optional keys are not supported"),
        (0xA701, "move", "0xA701 out of resources, unable to calculate the number of matches"),
        (0xA801, "move", "0xA801 move destination unknown"),
        (0x0122, "store", "0x0122 SOP class not supported"),
        (0x0124, None, "0x0124 not authorized"),
        (0x0211, "echo", "0x0211 unrecognized operation"),
        (0x0110, None, "0x0110 processing failure"),
    ],
)
def test_status_codes_read_as_the_standard_names_them(code, service, text) -> None:
    assert describe_status(code, service) == text


def test_unassigned_codes_say_what_category_they_fall_in() -> None:
    assert status_meaning(0xB123) == "unknown warning status"
    assert status_meaning(0x1234) == "unknown failure status"


def test_every_named_status_has_a_meaning_of_its_own() -> None:
    for status in Status:
        assert not status_meaning(status).startswith("unknown"), status


@given(st.integers(min_value=0, max_value=0xFFFF), st.sampled_from([None, "store", "find", "move"]))
def test_any_code_is_described_on_one_line_with_its_number(code, service) -> None:
    text = describe_status(code, service)
    assert text.startswith(f"0x{code:04X} ")
    assert "\n" not in text


@pytest.mark.parametrize(
    ("result", "source", "reason", "text"),
    [
        (1, 1, 7, "called AE title not recognized (permanent, service user, reason 7)"),
        (1, 1, 3, "calling AE title not recognized (permanent, service user, reason 3)"),
        (1, 1, 1, "no reason given (permanent, service user, reason 1)"),
        (1, 1, 2, "application context name not supported (permanent, service user, reason 2)"),
        (
            1,
            2,
            2,
            "protocol version not supported (permanent, service provider (ACSE), reason 2)",
        ),
        (2, 3, 1, "temporary congestion (transient, service provider (presentation), reason 1)"),
        (2, 3, 2, "local limit exceeded (transient, service provider (presentation), reason 2)"),
        (1, 1, 5, "reserved reason (permanent, service user, reason 5)"),
        (3, 9, 9, "reserved reason (result 3, source 9, reason 9)"),
    ],
)
def test_rejections_follow_table_9_21(result, source, reason, text) -> None:
    assert describe_rejection(result, source, reason) == text


@pytest.mark.parametrize(
    ("source", "reason", "text"),
    [
        (0, 0, "aborted by the service user (source 0)"),
        (0, 5, "aborted by the service user (source 0)"),
        (2, 0, "aborted by the service provider: reason not specified (source 2, reason 0)"),
        (2, 1, "aborted by the service provider: unrecognized PDU (source 2, reason 1)"),
        (2, 2, "aborted by the service provider: unexpected PDU (source 2, reason 2)"),
        (2, 3, "aborted by the service provider: reserved reason (source 2, reason 3)"),
        (
            2,
            6,
            "aborted by the service provider: invalid PDU parameter value (source 2, reason 6)",
        ),
        (1, 0, "aborted (reserved source 1, reason 0)"),
    ],
)
def test_aborts_follow_table_9_26(source, reason, text) -> None:
    assert describe_abort(source, reason) == text
