"""A restartable timeout on an injectable clock.

ARTIM, the idle timer, the ACSE and the DIMSE timeouts all start, stop and
sometimes push back one delayed call; this is that, once, so that tests can
drive each of them with `twisted.internet.task.Clock`.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Timer:
    """Calls ``expired`` ``seconds`` after the last `start`, unless stopped first."""

    def __init__(self, clock: IReactorTime, seconds: float, expired: Callable[[], None]) -> None:
        self.clock = clock
        self.seconds = seconds
        self.expired = expired
        self._call: IDelayedCall | None = None

    @property
    def running(self) -> bool:
        return self._call is not None and self._call.active()

    def start(self) -> None:
        """Start, or start over."""
        self.stop()
        self._call = self.clock.callLater(self.seconds, self._fire)

    def stop(self) -> None:
        if self.running:
            self._call.cancel()  # type: ignore[union-attr]
        self._call = None

    def push_back(self) -> None:
        """A running timer starts counting again from now; a stopped one stays stopped."""
        if self.running:
            self._call.reset(self.seconds)  # type: ignore[union-attr]

    def _fire(self) -> None:
        self._call = None
        self.expired()
