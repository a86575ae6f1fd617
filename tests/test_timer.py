"""The restartable timeout every timer of dicomd is made of."""

from __future__ import annotations

from twisted.internet.task import Clock

from dicomd.ul.timer import Timer


def test_start_stop_restart_and_push_back() -> None:
    clock = Clock()
    fired: list[float] = []
    timer = Timer(clock, 10, lambda: fired.append(clock.seconds()))
    timer.push_back()  # a stopped timer stays stopped
    clock.advance(20)
    assert fired == [] and not timer.running

    timer.start()  # at 20: due at 30
    clock.advance(6)
    timer.push_back()  # at 26, counting from now: due at 36
    clock.advance(9)
    assert fired == []
    clock.advance(1)
    assert fired == [36] and not timer.running

    timer.start()
    clock.advance(5)
    timer.start()  # at 41, starting over: due at 51
    clock.advance(9)
    timer.stop()
    clock.advance(100)
    assert fired == [36]
