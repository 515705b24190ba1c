"""``ThrottledLog``: a log line that may repeat thousands of times a second, once a second.

Some failures come in floods: ``accept()`` failing with EMFILE while descriptors run out, TLS
handshakes of a scanner, handshakes refused for being too many from one address. A line for
each would fill the disk and hide everything else; no line would hide the flood. So the first
of a kind is logged at once, the next ones within the interval are counted, and the interval
ends with one line that repeats the last of them with the count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

__all__ = ["INTERVAL", "ThrottledLog"]

#: Seconds between two lines of one kind, at most.
INTERVAL = 1.0

# (delay, callback) -> a handle with cancel(): the event loop's call_later, or a test's.
Schedule = Callable[[float, Callable[[], None]], asyncio.TimerHandle]


def _call_later(delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(delay, callback)


class ThrottledLog:
    """One kind of log line, logged at most once per ``interval`` with a count of the others.

    Args:
        logger: Where the lines go.
        level: Their level (``logging.WARNING``...).
        interval: Seconds; the lines of one interval after the first are summed up in one.
        schedule: Books a callback after a delay (the running loop's ``call_later``).
    """

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        interval: float = INTERVAL,
        schedule: Schedule = _call_later,
    ) -> None:
        self.logger = logger
        self.level = level
        self.interval = interval
        self._schedule = schedule
        self._timer: asyncio.TimerHandle | None = None
        self._count = 0
        self._last: tuple[str, tuple[object, ...], Mapping[str, object] | None] = ("", (), None)

    def __call__(
        self, message: str, *args: object, extra: Mapping[str, object] | None = None
    ) -> None:
        """Log ``message % args`` now, or count it if a line of this kind was logged lately."""
        if self._timer is not None:
            self._count += 1
            self._last = (message, args, extra)
            return
        self.logger.log(self.level, message, *args, extra=extra)
        self._timer = self._schedule(self.interval, self._end_interval)

    def _end_interval(self) -> None:
        self._timer = None
        if self._count:
            self._summarize()
            self._timer = self._schedule(self.interval, self._end_interval)

    def _summarize(self) -> None:
        count, self._count = self._count, 0
        message, args, extra = self._last
        self.logger.log(
            self.level,
            f"{message} (and %d more like it in the last %g s)",
            *args,
            count,
            self.interval,
            extra={**(extra or {}), "repeated": count},
        )

    def close(self) -> None:
        """Log what is counted but not yet logged, and book nothing more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._count:
            self._summarize()
