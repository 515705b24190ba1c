"""ThrottledLog: a fake clock books the intervals; no test sleeps."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from rfc6455.aio.throttle import ThrottledLog


class _Timer:
    def __init__(self, clock: FakeClock, when: float, callback: Callable[[], None]) -> None:
        self.clock, self.when, self.callback = clock, when, callback

    def cancel(self) -> None:
        self.clock.timers.remove(self)


class FakeClock:
    """A time that moves only when told, and the callbacks booked on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[_Timer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self, self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while due := [t for t in self.timers if t.when <= end]:
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = timer.when
            timer.callback()
        self.now = end


LOGGER = logging.getLogger("tests.throttle")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    caplog.set_level(logging.INFO, "tests.throttle")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "tests.throttle"]


def throttled(clock: FakeClock) -> ThrottledLog:
    return ThrottledLog(LOGGER, logging.WARNING, 1.0, clock.call_later)  # type: ignore[arg-type]


def test_the_first_line_is_logged_at_once(clock: FakeClock, lines: Callable[[], list[str]]) -> None:
    log = throttled(clock)
    log("accept failed: %s", "EMFILE")
    assert lines() == ["accept failed: EMFILE"]


def test_a_flood_is_one_line_a_second_with_a_count(
    clock: FakeClock, lines: Callable[[], list[str]]
) -> None:
    log = throttled(clock)
    for n in range(42):
        log("accept failed: %s", n)
        clock.advance(0.01)
    assert lines() == ["accept failed: 0"]
    clock.advance(1.0)
    assert lines() == [
        "accept failed: 0",
        "accept failed: 41 (and 41 more like it in the last 1 s)",
    ]


def test_a_long_flood_stays_at_one_line_a_second(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tests.throttle")
    log = throttled(clock)
    for _ in range(1000):  # ten seconds, a hundred a second
        log("refused")
        clock.advance(0.01)
    clock.advance(1.0)
    _first, *summaries = caplog.records
    assert len(summaries) == 10
    assert 1 + sum(r.repeated for r in summaries) == 1000  # type: ignore[attr-defined]
    assert all(abs(r.repeated - 100) <= 1 for r in summaries)  # type: ignore[attr-defined]


def test_after_a_quiet_interval_the_next_line_is_logged_at_once(
    clock: FakeClock, lines: Callable[[], list[str]]
) -> None:
    log = throttled(clock)
    log("refused %d", 1)
    clock.advance(1.5)
    assert clock.timers == []  # nothing was counted: nothing more is booked
    log("refused %d", 2)
    assert lines() == ["refused 1", "refused 2"]


def test_the_summary_carries_the_count_and_the_last_fields(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tests.throttle")
    log = throttled(clock)
    log("refused %s", "a", extra={"event": "refused", "peer": "a"})
    log("refused %s", "b", extra={"event": "refused", "peer": "b"})
    log("refused %s", "c", extra={"event": "refused", "peer": "c"})
    clock.advance(1.0)
    first, summary = caplog.records
    assert (first.levelno, first.peer) == (logging.WARNING, "a")  # type: ignore[attr-defined]
    assert (summary.event, summary.peer, summary.repeated) == ("refused", "c", 2)  # type: ignore[attr-defined]


def test_closing_logs_what_is_counted_and_books_nothing_more(
    clock: FakeClock, lines: Callable[[], list[str]]
) -> None:
    log = throttled(clock)
    log("refused")
    log("refused")
    log.close()
    assert lines() == ["refused", "refused (and 1 more like it in the last 1 s)"]
    assert clock.timers == []
    log.close()  # twice: nothing more
    assert len(lines()) == 2
