"""Retry an async operation with linear backoff: failed attempt n is followed by n * base_delay.

The sleep function is a parameter, so tests record the delays instead of waiting them out.
There is no jitter: the only caller is the single persistence writer, so there is no herd of
clients to spread out, and deterministic delays keep the logs and the tests readable.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["RetryPolicy", "retry"]

logger = logging.getLogger("server.retry")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often to try an operation and how long to wait between tries.

    Args:
        attempts: Total number of attempts, the first one included (at least 1).
        base_delay: Seconds to wait after the first failed attempt; after attempt *n* the wait is
            n * base_delay (linear backoff, as the original ``RetryHelper``).
        max_delay: Upper bound for any single wait; ``None`` means no bound.

    Raises:
        ValueError: If a value is out of range.
    """

    # The original design's defaults: 5 attempts, starting at 1 second.
    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ValueError(f"attempts must be an integer, not {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if not math.isfinite(self.base_delay) or self.base_delay < 0:
            raise ValueError(f"base_delay must be a finite number >= 0, not {self.base_delay}")
        if self.max_delay is not None and (math.isnan(self.max_delay) or self.max_delay < 0):
            raise ValueError(f"max_delay must be >= 0 or None, not {self.max_delay}")

    def delay(self, attempt: int) -> float:
        """Return the wait after failed attempt number ``attempt`` (1-based).

        Args:
            attempt: The attempt that just failed, from 1 to ``attempts - 1``.

        Returns:
            ``attempt * base_delay``, capped by ``max_delay``.
        """
        delay = attempt * self.base_delay
        if self.max_delay is not None:
            delay = min(delay, self.max_delay)
        return delay


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    retry_on: tuple[type[BaseException], ...],
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    on_failure: Callable[[int, BaseException], object] | None = None,
    description: str = "operation",
) -> T:
    """Await ``operation()`` until it succeeds or ``policy.attempts`` attempts have failed.

    Each failed attempt is logged as one warning on the ``server.retry`` logger: the attempt
    number, the error and the next delay (or "giving up" after the last one).

    Args:
        operation: Called with no arguments for each attempt; returns the awaitable to await.
        policy: Number of attempts and delays.
        retry_on: Exception types that mean "try again". Any other exception propagates at
            once, without a log line. ``asyncio.CancelledError`` is never retried.
        sleep: Awaited with the delay in seconds between attempts.
        on_failure: Called as ``on_failure(attempt, error)`` after every failed attempt,
            the last one included, before sleeping.
        description: What the operation does, for the log lines.

    Returns:
        What the first successful attempt returned.

    Raises:
        BaseException: The error of the last attempt once all attempts failed, or a
            non-retryable error as soon as it happens.
    """
    attempts = policy.attempts
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except retry_on as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            error = f"{type(exc).__name__}: {exc}"
            if attempt == attempts:
                logger.warning(
                    "%s: attempt %d/%d failed: %s; giving up", description, attempt, attempts, error
                )
            else:
                delay = policy.delay(attempt)
                logger.warning(
                    "%s: attempt %d/%d failed: %s; retrying in %g s",
                    description,
                    attempt,
                    attempts,
                    error,
                    delay,
                )
            if on_failure is not None:
                on_failure(attempt, exc)
            if attempt == attempts:
                raise
            await sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")
