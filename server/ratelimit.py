"""Per-connection rate limiting: token buckets on messages and bytes, and strikes.

A chat client may send ``rate`` messages a second on average, and ``burst`` at once after a
quiet spell; the same holds for bytes. A message over either limit is refused (the client is
told how long to wait), and a client refused ``STRIKES`` times within ``STRIKE_WINDOW`` seconds
is disconnected. Times come from a monotonic clock, so a change of the wall clock neither
refills nor drains a bucket.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .messages import utf8_size

__all__ = [
    "STRIKES",
    "STRIKE_WINDOW",
    "KeyedBuckets",
    "RateLimiter",
    "TokenBucket",
    "retry_after_ms",
]

Clock = Callable[[], float]

# Refusals that get a client disconnected, and the seconds they are counted over. One refusal
# is a client that misjudged a burst, and it is told how long to wait; a third within ten
# seconds is one that ignores what it is told (a script, a stuck key, a flood).
STRIKES = 3
STRIKE_WINDOW = 10.0

# Differences of clock readings are not exact (1000.05 - 1000 < 0.05): a client that waited
# the time it was told must not be refused for a shortfall of a billionth of a token.
_ROUNDING = 1e-9


class TokenBucket:
    """Up to ``burst`` tokens, refilled at ``rate`` a second; it starts full.

    Args:
        rate: Tokens added per second.
        burst: The most tokens held.
        clock: Seconds from a monotonic clock; ``time.monotonic`` by default.

    Raises:
        ValueError: If ``rate`` or ``burst`` is not positive.
    """

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        if not rate > 0 or not burst > 0:
            raise ValueError(f"rate and burst must be positive, not {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def wait(self, cost: float) -> float:
        """Seconds until ``cost`` tokens are there, 0.0 if they are now.

        A cost above ``burst`` costs ``burst``: such a message needs a full bucket, not one
        that can never fill.
        """
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        missing = min(cost, self.burst) - self._tokens
        return missing / self.rate if missing > _ROUNDING else 0.0

    def take(self, cost: float) -> None:
        """Remove ``cost`` tokens (at most ``burst``); call it once ``wait(cost)`` returned 0."""
        self._tokens -= min(cost, self.burst)

    def give_back(self, cost: float) -> None:
        """Return ``cost`` tokens taken for what turned out not to count; ``burst`` at most."""
        self._tokens = min(self.burst, self._tokens + cost)


# Buckets kept before the full ones (idle for burst/rate seconds, so no different from new
# ones) are dropped: the memory of a KeyedBuckets stays in proportion to the recent clients.
_PRUNE_ABOVE = 1024


class KeyedBuckets:
    """A token bucket per key (a client's address), made when first needed.

    Full buckets, no different from new ones, are forgotten once there are many: a pass over
    them when their number doubles, so the cost is amortised and the memory bounded.

    Args:
        rate: Tokens added per second to each bucket.
        burst: The most tokens a bucket holds.
        clock: Seconds from a monotonic clock.
    """

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_at = _PRUNE_ABOVE

    def __len__(self) -> int:
        return len(self._buckets)

    def get(self, key: str) -> TokenBucket | None:
        """The bucket of ``key``, if it has one."""
        return self._buckets.get(key)

    def bucket(self, key: str) -> TokenBucket:
        """The bucket of ``key``, made (full) if it has none."""
        bucket = self._buckets.get(key)
        if bucket is None:
            self._prune()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
        return bucket

    def _prune(self) -> None:
        if len(self._buckets) < self._prune_at:
            return
        self._buckets = {
            key: bucket for key, bucket in self._buckets.items() if bucket.wait(bucket.burst)
        }
        # Amortised: the next pass waits until as many buckets again were added.
        self._prune_at = max(_PRUNE_ABOVE, 2 * len(self._buckets))


class RateLimiter:
    """One chat connection's limits: messages, optionally bytes, and strikes for refusals.

    Args:
        messages: The bucket of messages (one token each).
        size: The bucket of bytes (a message costs its UTF-8 length), or None for no limit.
        strikes: Refusals within ``window`` seconds that make ``strike()`` true.
        window: Seconds over which refusals are counted.
        clock: The clock the buckets use too.
    """

    __slots__ = ("_clock", "_refusals", "messages", "size", "strikes", "window")

    def __init__(
        self,
        messages: TokenBucket,
        size: TokenBucket | None = None,
        *,
        strikes: int = STRIKES,
        window: float = STRIKE_WINDOW,
        clock: Clock = time.monotonic,
    ) -> None:
        self.messages = messages
        self.size = size
        self.strikes = strikes
        self.window = window
        self._clock = clock
        # At most ``strikes`` times: a list costs less per connection than a deque.
        self._refusals: list[float] = []

    def admit(self, text: str) -> float:
        """Count ``text`` against both buckets if both have room.

        Returns:
            0.0 if it may go through (its tokens are taken); otherwise the seconds until it
            could, and nothing is taken.
        """
        wait = self.messages.wait(1)
        size = self.size
        if size is None:
            if not wait:
                self.messages.take(1)
            return wait
        cost = utf8_size(text)
        wait = max(wait, size.wait(cost))
        if not wait:
            self.messages.take(1)
            size.take(cost)
        return wait

    def strike(self) -> bool:
        """Count a refusal; True if there were ``strikes`` within the last ``window`` seconds."""
        now = self._clock()
        refusals = [t for t in self._refusals if now - t < self.window]
        refusals.append(now)
        self._refusals = refusals
        return len(refusals) >= self.strikes


def retry_after_ms(wait: float) -> int:
    """``wait`` seconds as the whole milliseconds a client should wait (at least 1)."""
    return max(1, math.ceil(wait * 1000))
