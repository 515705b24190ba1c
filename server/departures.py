"""Who left: ``user_left`` notices, bounded per second and coalesced.

Every departure is announced, as the original design has it, a reader who never wrote
included: ``totalConnections`` is how the others know how many are there. But one by one,
a loop of connecting and dropping sent every client thousands of notices a second. So at
most ``rate`` notices a second go out one by one (``burst`` at once after a quiet spell: a
browser closing a dozen tabs); the departures beyond are announced together once a second,
in one ``users_left`` that names at most ``MAX_NAMED`` of them and counts the rest.

Each departure is announced exactly once, and in the order they left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from . import messages
from .messages import Departure
from .ratelimit import Clock, TokenBucket

__all__ = ["BURST", "INTERVAL", "MAX_NAMED", "Departures"]

# Notices one by one after a quiet spell: a browser closing a dozen tabs, a reconnect storm's
# first victims.
BURST = 20
# Seconds between two ``users_left``: once a second is as often as a person reads them.
INTERVAL = 1.0
# Departures named in one ``users_left``: a few kilobytes; the rest are counted in ``more``.
MAX_NAMED = 100


class Departures:
    """Announces departures through ``broadcast``, no more than ``rate`` notices a second.

    Args:
        broadcast: Sends a message to every client.
        remaining: How many clients remain, for ``totalConnections``.
        rate: Notices a second sent one by one, on average; None: every one at once.
        burst: Notices sent one by one at once after a quiet spell.
        clock: Seconds from a monotonic clock.
    """

    def __init__(
        self,
        broadcast: Callable[[str], object],
        remaining: Callable[[], int],
        *,
        rate: float | None,
        burst: int = BURST,
        clock: Clock = time.monotonic,
    ) -> None:
        self._broadcast = broadcast
        self._remaining = remaining
        self._bucket = None if rate is None else TokenBucket(rate, burst, clock)
        self._waiting: list[Departure] = []
        self._more = 0
        self._timer: asyncio.TimerHandle | None = None

    def left(self, departure: Departure) -> None:
        """Announce ``departure``: now if the rate allows, else with the next ``users_left``."""
        bucket = self._bucket
        if bucket is None or (self._timer is None and not bucket.wait(1)):
            if bucket is not None:
                bucket.take(1)
            self._broadcast(messages.user_left(departure, self._remaining()))
            return
        if len(self._waiting) < MAX_NAMED:
            self._waiting.append(departure)
        else:
            self._more += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(INTERVAL, self._flush)

    def _flush(self) -> None:
        waiting, more = self._waiting, self._more
        self._waiting, self._more, self._timer = [], 0, None
        if len(waiting) == 1 and not more:
            self._broadcast(messages.user_left(waiting[0], self._remaining()))
        else:
            self._broadcast(messages.users_left(waiting, more, self._remaining()))

    def close(self) -> None:
        """Announce what waits now (the server stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._flush()
