"""Bounds on the password checks of ``--auth basic``: failures per address, checks at once.

A check runs scrypt (``users.py``: 16 MiB and about 40 ms of a core), so unbounded, a flood of
guesses queues checks without end and every real login waits behind all of them. Three bounds,
each answered at once and without running scrypt, with addresses counted by
``rfc6455.addresses.address_key`` (an IPv6 client by its /64):

1. Failed logins per address: a token bucket of ``failures`` a minute and as many at once
   (``--max-login-failures``). A check takes a token when it starts, so that parallel attempts
   cannot all start before the first one has failed, and gives it back when the password was
   right: real users' logins cost nothing. An empty bucket: 429.
2. Checks in flight (queued or running) per address: ``MAX_CHECKS_PER_ADDRESS``; more: 429.
3. Checks in flight in all: ``MAX_CHECKS_PER_WORKER`` per worker thread; more: 503. A real
   user's check therefore waits behind at most a few others.

Checks run in a pool of their own, ``WORKERS`` threads, not in the default executor, which
``asyncio.to_thread`` and the resolver share. A check counts until its thread is done with it,
even when its client has left meanwhile: the bounds count the work, not the waiting clients.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Callable

from .ratelimit import Clock, KeyedBuckets

__all__ = [
    "MAX_CHECKS_PER_ADDRESS",
    "MAX_CHECKS_PER_WORKER",
    "RETRY_CHECKS",
    "WORKERS",
    "LoginGuard",
    "LoginRefused",
]


def _cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where there is one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover (not Linux)


# hashlib.scrypt releases the GIL, so one thread per CPU checks that many passwords at once;
# more threads than CPUs would only make every check slower. Four at most: 64 MiB of scrypt
# buffers, and the event loop keeps some of the machine.
WORKERS = min(4, _cpus())
# Checks queued or running per worker thread: a real user's check waits behind at most three
# others per thread, about 3 x 40 ms (the login then takes some 160 ms, under half a second
# with room for a slower CPU), while the rest of a flood is told 503 at once.
MAX_CHECKS_PER_WORKER = 4
# Per address: one person logs in once at a time, twice with a second tab or device behind the
# same NAT. One address thus holds at most two places of the global bound, and 150 parallel
# guesses from it start two checks, not 150.
MAX_CHECKS_PER_ADDRESS = 2
# Retry-After (RFC 9110 §10.2.3) of a refusal for checks in flight: a check is over in tens of
# milliseconds, and a second is the least a header of whole seconds can say.
RETRY_CHECKS = 1


class LoginRefused(Exception):
    """A check that may not start now: the status to answer, why, and when to come back."""

    def __init__(self, status: int, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class LoginGuard:
    """Starts password checks in its own threads, within the bounds of the module docstring.

    Args:
        failures: Failed logins a minute per address, and at once after a quiet minute;
            0: no limit on failures (the bounds on checks in flight still hold).
        per_address: Checks in flight per address.
        workers: Threads of the pool.
        total: Checks in flight in all; ``MAX_CHECKS_PER_WORKER`` per worker by default.
        clock: Seconds from a monotonic clock, for the buckets.
    """

    def __init__(
        self,
        failures: int = 0,
        *,
        per_address: int = MAX_CHECKS_PER_ADDRESS,
        workers: int = WORKERS,
        total: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.failures = failures
        self.per_address = per_address
        self.total = total if total is not None else MAX_CHECKS_PER_WORKER * workers
        # Threads start with the first checks: a guard that never checks costs none.
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="login")
        # As many at once as a minute: a person who mistypes gets several tries in a row, then
        # one more every 60/failures seconds. A bucket is made only when a check starts, so
        # there are about as many as checks started in the last minute, which the pool paces.
        self._buckets = KeyedBuckets(failures / 60, failures, clock) if failures else None
        self._in_flight: Counter[str] = Counter()

    @property
    def in_flight(self) -> int:
        """Checks queued or running, in all."""
        return self._in_flight.total()

    def __len__(self) -> int:
        """Addresses whose failures are remembered."""
        return 0 if self._buckets is None else len(self._buckets)

    def check(self, key: str, verify: Callable[[], bool]) -> asyncio.Future[bool]:
        """Start ``verify`` in a worker thread for a client at address ``key``.

        Args:
            key: The client's ``address_key``.
            verify: Runs the check; True if the login succeeded, which gives its token back.

        Returns:
            A future of what ``verify`` returns.

        Raises:
            LoginRefused: 429 if ``key`` is out of failures or has its most checks in flight,
                503 if the server has; nothing was started.
        """
        buckets = self._buckets
        bucket = None if buckets is None else buckets.get(key)
        if bucket is not None and (wait := bucket.wait(1)):
            seconds = math.ceil(wait)
            reason = f"too many failed logins from {key}: retry in {seconds} s"
            raise LoginRefused(429, reason, seconds)
        if self._in_flight[key] >= self.per_address:
            reason = f"{self.per_address} logins from {key} are being checked: retry later"
            raise LoginRefused(429, reason, RETRY_CHECKS)
        if self.in_flight >= self.total:
            reason = f"{self.total} logins are being checked: retry later"
            raise LoginRefused(503, reason, RETRY_CHECKS)
        if buckets is not None:
            buckets.bucket(key).take(1)
        loop = asyncio.get_running_loop()
        self._in_flight[key] += 1
        work = self._pool.submit(verify)
        # Before wrap_future's own callback: the counts are right once the result is seen.
        work.add_done_callback(lambda done: _call_soon(loop, self._done, key, done))
        return asyncio.wrap_future(work, loop=loop)

    def _done(self, key: str, work: concurrent.futures.Future[bool]) -> None:
        """A check is over (or was cancelled before it ran): count it out."""
        self._in_flight[key] -= 1
        if not self._in_flight[key]:
            del self._in_flight[key]
        succeeded = not work.cancelled() and work.exception() is None and work.result()
        bucket = None if self._buckets is None else self._buckets.get(key)
        if succeeded and bucket is not None:
            bucket.give_back(1)

    def close(self) -> None:
        """Drop the checks not started yet; the threads end once their check is over."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _call_soon(
    loop: asyncio.AbstractEventLoop,
    callback: Callable[[str, concurrent.futures.Future[bool]], None],
    key: str,
    work: concurrent.futures.Future[bool],
) -> None:
    # From the worker thread. A loop that is closed already has no one left to count for.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, key, work)
