"""A watch on the reactor thread: how late a regular tick runs tells how long it was blocked.

Every association of the node shares one reactor thread; work that holds it
for long (parsing a huge data set, converting an instance) delays them all.
`LagMonitor` ticks every ``interval`` seconds and logs one warning line for
each tick that ran more than ``threshold`` seconds late, so that a stall in
production is seen with its size, and the end-to-end tests can hold the
node to a bound.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


class LagMonitor(Service):
    """Logs ``reactor stalled for N ms`` when a tick is late by more than ``threshold``."""

    log = Logger()

    def __init__(self, clock: IReactorTime, interval: float = 0.05, threshold: float = 0.1) -> None:
        self.clock = clock
        self.interval = interval
        self.threshold = threshold
        self.worst = 0.0
        """The longest delay seen so far, in seconds."""
        self._expected = 0.0
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "reactor lag monitor: a warning for each stall over {milliseconds:.0f} ms",
            milliseconds=self.threshold * 1000,
        )
        self._expected = self.clock.seconds() + self.interval
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        if self._loop.running:
            self._loop.stop()
        super().stopService()

    def _tick(self) -> None:
        now = self.clock.seconds()
        late = max(0.0, now - self._expected)
        self._expected = now + self.interval
        self.worst = max(self.worst, late)
        if late > self.threshold:
            self.log.warn("reactor stalled for {milliseconds:.0f} ms", milliseconds=late * 1000)
