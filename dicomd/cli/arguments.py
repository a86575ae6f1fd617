"""Types of command-line values: each turns the text into the value, or says what is wrong.

argparse calls them while it parses, so a bad value is a usage error (exit
status 2) naming the option.  They need nothing but the standard library:
a subcommand's parser can use them without loading what the subcommand runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", int, float)


def port_number(text: str) -> int:
    port = _converted(text, int, "a port number")
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not between 1 and 65535")
    return port


def max_pdu_length(text: str) -> int:
    """The largest PDU we accept: at least 4096 (as dcmtk), at most what 4 length bytes hold."""
    length = _converted(text, int, "a number of bytes")
    if not 4096 <= length <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{length} is not between 4096 and 4294967295")
    return length


def timeout_seconds(text: str) -> float:
    value = _converted(text, float, "a number of seconds")
    if not value > 0:
        raise argparse.ArgumentTypeError("a timeout must be more than 0 seconds")
    return value


def positive_integer(text: str) -> int:
    value = _converted(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def _converted(text: str, convert: Callable[[str], T], what: str) -> T:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
