"""Per-address limits of the chat endpoint: connections open at once, and new ones a second.

Both are off by default: every client behind one NAT, carrier-grade NAT or reverse proxy shares
an address. Addresses are counted by ``rfc6455.addresses.address_key`` (IPv6 by its /64).
"""

from __future__ import annotations

import time

from .ratelimit import Clock, TokenBucket

__all__ = ["ConnectRate"]

# Buckets kept before the full ones (idle for burst/rate seconds, so no different from new ones)
# are dropped: the memory of the limiter stays in proportion to the recent clients.
_PRUNE_ABOVE = 1024


class ConnectRate:
    """New connections a second per address: a token bucket each.

    Args:
        rate: Connections a second, on average.
        burst: Connections at once after a quiet spell.
        clock: Seconds from a monotonic clock.
    """

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_at = _PRUNE_ABOVE

    def admit(self, key: str) -> float:
        """Count a new connection from ``key``.

        Returns:
            0.0 if it may open (a token is taken); otherwise the seconds until it could.
        """
        bucket = self._buckets.get(key)
        if bucket is None:
            self._prune()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
        wait = bucket.wait(1)
        if not wait:
            bucket.take(1)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self) -> None:
        if len(self._buckets) < self._prune_at:
            return
        self._buckets = {
            key: bucket for key, bucket in self._buckets.items() if bucket.wait(bucket.burst)
        }
        # Amortised: the next pass waits until as many buckets again were added.
        self._prune_at = max(_PRUNE_ABOVE, 2 * len(self._buckets))
