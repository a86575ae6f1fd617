"""A one-line progress bar for a terminal: files done of total, rates and time left.

Plain text redrawn in place with a carriage return, so it works on any
terminal and never scrolls; it is drawn at most a few times a second, so a
fast transfer is not slowed down by its own progress report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, TextIO

REDRAW_INTERVAL: Final = 0.2
BAR_WIDTH: Final = 24
MEGABYTE: Final = 1_000_000


def rates(files: int, size: int, elapsed: float) -> str:
    """``12.0 files/s, 3.4 MB/s``: what the summary and the bar both report."""
    elapsed = max(elapsed, 1e-9)
    return f"{files / elapsed:.1f} files/s, {size / MEGABYTE / elapsed:.1f} MB/s"


def clock_time(seconds: float) -> str:
    """``0:07``, ``12:34``, ``1:02:03``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts files and bytes done, and draws the bar on ``stream`` when ``visible``."""

    def __init__(
        self,
        total_files: int,
        total_size: int,
        stream: TextIO,
        *,
        visible: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_files = total_files
        self.total_size = total_size
        self.files = 0
        self.size = 0
        self._stream = stream
        self._visible = visible
        self._clock = clock
        self.started = clock()
        self._drawn_at: float | None = None
        self._drawn_width = 0

    @property
    def elapsed(self) -> float:
        return self._clock() - self.started

    def advance(self, size: int) -> None:
        """One more file done (sent, whatever its outcome), of ``size`` bytes."""
        self.files += 1
        self.size += size
        now = self._clock()
        if self._drawn_at is None or now - self._drawn_at >= REDRAW_INTERVAL:
            self.draw()

    def line(self) -> str:
        """The bar as text: ``[#####-----]  37/120 files  12.3 files/s, 4.5 MB/s  ETA 0:07``."""
        fraction = self.size / self.total_size if self.total_size else 1.0
        filled = round(fraction * BAR_WIDTH)
        elapsed = self.elapsed
        if self.size and self.size < self.total_size:
            eta = clock_time(elapsed * (self.total_size - self.size) / self.size)
        elif self.size:
            eta = "0:00"
        else:
            eta = "-:--"
        return (
            f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}]"
            f"  {self.files}/{self.total_files} files"
            f"  {rates(self.files, self.size, elapsed)}  ETA {eta}"
        )

    def draw(self) -> None:
        if not self._visible:
            return
        self._drawn_at = self._clock()
        text = self.line()
        self._stream.write("\r" + text.ljust(self._drawn_width))
        self._stream.flush()
        self._drawn_width = len(text)

    def clear(self) -> None:
        """Erase the bar, so that what is written next starts on a clean line."""
        if self._visible and self._drawn_width:
            self._stream.write("\r" + " " * self._drawn_width + "\r")
            self._stream.flush()
            self._drawn_width = 0
