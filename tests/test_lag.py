"""The reactor lag monitor, on a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from dicomd.lag import LagMonitor


def test_ticks_on_time_log_nothing() -> None:
    clock = Clock()
    monitor = LagMonitor(clock, interval=0.05, threshold=0.1)
    with capturedLogs() as started:
        monitor.startService()
    assert [e["log_format"].format(**e) for e in started] == [
        "reactor lag monitor: a warning for each stall over 100 ms"
    ]
    with capturedLogs() as events:
        clock.pump([0.05] * 20)
    assert events == []
    assert monitor.worst == 0.0
    monitor.stopService()


def test_a_late_tick_logs_its_delay_once() -> None:
    clock = Clock()
    monitor = LagMonitor(clock, interval=0.05, threshold=0.1)
    monitor.startService()
    clock.advance(0.05)
    with capturedLogs() as events:
        clock.advance(0.05 + 0.25)  # the reactor was busy for a quarter of a second
        clock.pump([0.05] * 5)
    assert [(e["log_level"], e["log_format"].format(**e)) for e in events] == [
        (LogLevel.warn, "reactor stalled for 250 ms")
    ]
    assert round(monitor.worst, 3) == 0.25
    monitor.stopService()


def test_a_delay_under_the_threshold_is_recorded_but_not_logged() -> None:
    clock = Clock()
    monitor = LagMonitor(clock, interval=0.05, threshold=0.1)
    monitor.startService()
    with capturedLogs() as events:
        clock.advance(0.05 + 0.08)
    assert events == []
    assert round(monitor.worst, 3) == 0.08
    monitor.stopService()
    assert not monitor.running
