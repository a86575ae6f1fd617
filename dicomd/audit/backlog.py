"""Audit records waiting for a sink that cannot take them yet, up to a bound in bytes.

A collector that is down, slow or never reads, or a disk that stalls, must
cost the node a bounded amount of memory and a few log lines, never its
reactor: past `MOST_WAITING` bytes, new records are dropped and counted.
The log says once when records start to be dropped, and once, with their
count, when the sink takes records again or the node stops.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from twisted.logger import Logger

MOST_WAITING: Final = 8 * 1024 * 1024
"""Some thousands of records of a few KiB: minutes of a busy node's trail."""


class Backlog:
    """Records for ``what`` (a file, a collector's address) that wait, oldest first."""

    log = Logger()

    def __init__(self, what: str, most: int = MOST_WAITING) -> None:
        self.what = what
        self.most = most
        self.size = 0
        self.dropped = 0
        """Records dropped since the log last said how many."""
        self._records: deque[bytes] = deque()

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: bytes) -> None:
        """Keep ``record``, or drop it when the records waiting already fill the bound."""
        if self.size + len(record) > self.most:
            self.lost(f"{self.size} bytes of records wait already")
            return
        self._records.append(record)
        self.size += len(record)

    def lost(self, problem: object, records: int = 1) -> None:
        """Records did not reach the sink: count them, and say so if they are the first."""
        first = not self.dropped
        self.dropped += records
        if first:
            self.log.warn(
                "audit records to {what} are being dropped: {problem}",
                what=self.what,
                problem=problem,
            )

    def take(self) -> list[bytes]:
        """Every record waiting, for a sink that can take them now."""
        taken = list(self._records)
        self._records.clear()
        self.size = 0
        return taken

    def delivered(self) -> None:
        """The sink took records: say how many it lost before, if it lost any."""
        if self.dropped:
            self.log.warn(
                "{dropped} audit records to {what} were dropped",
                dropped=self.dropped,
                what=self.what,
            )
            self.dropped = 0

    def close(self) -> None:
        """The node stops: what still waits, and what was dropped, is lost; say how much."""
        self.dropped += len(self._records)
        self._records.clear()
        self.size = 0
        self.delivered()
