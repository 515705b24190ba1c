"""Per-address limits of the chat endpoint: connections open at once, and new ones a second.

Both are off by default: every client behind one NAT or carrier-grade NAT shares an address,
and so does every client of a reverse proxy unless ``--trusted-proxies`` names it (then the
address is the one the proxy forwards, ``rfc6455.forwarded``). Addresses are counted by
``rfc6455.addresses.address_key`` (IPv6 by its /64).
"""

from __future__ import annotations

import time

from .ratelimit import Clock, KeyedBuckets

__all__ = ["ConnectRate"]


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
        self._buckets = KeyedBuckets(rate, burst, clock)

    def admit(self, key: str) -> float:
        """Count a new connection from ``key``.

        Returns:
            0.0 if it may open (a token is taken); otherwise the seconds until it could.
        """
        bucket = self._buckets.bucket(key)
        wait = bucket.wait(1)
        if not wait:
            bucket.take(1)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)
