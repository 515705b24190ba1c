"""Tests for server.retry: attempts, linear delays, the cap, logging, what is re-raised."""

from __future__ import annotations

import asyncio
import logging

import pytest

from server.retry import RetryPolicy, retry


class FakeSleep:
    """Record the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Flaky:
    """An operation that raises the given errors, in order, then returns "done"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def retry_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "server.retry"]


async def test_success_at_first_attempt_does_not_sleep() -> None:
    sleep = FakeSleep()
    operation = Flaky()
    result = await retry(operation, policy=RetryPolicy(), retry_on=(OSError,), sleep=sleep)
    assert result == "done"
    assert operation.calls == 1
    assert sleep.delays == []


async def test_succeeds_after_failures_with_linear_delays() -> None:
    sleep = FakeSleep()
    operation = Flaky(OSError("one"), OSError("two"), OSError("three"))
    policy = RetryPolicy(attempts=5, base_delay=0.5)
    result = await retry(operation, policy=policy, retry_on=(OSError,), sleep=sleep)
    assert result == "done"
    assert operation.calls == 4
    assert sleep.delays == [0.5, 1.0, 1.5]


async def test_gives_up_after_all_attempts_and_reraises_the_last_error() -> None:
    sleep = FakeSleep()
    errors = [OSError(f"failure {n}") for n in range(1, 6)]
    operation = Flaky(*errors)
    with pytest.raises(OSError, match="failure 5") as excinfo:
        await retry(operation, policy=RetryPolicy(), retry_on=(OSError,), sleep=sleep)
    assert excinfo.value is errors[-1]
    assert operation.calls == 5
    # The defaults of the original design: attempt n waits n x 1 s; no wait after the last.
    assert sleep.delays == [1.0, 2.0, 3.0, 4.0]


async def test_max_delay_caps_each_wait() -> None:
    sleep = FakeSleep()
    operation = Flaky(*[TimeoutError()] * 6)
    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=2.5)
    with pytest.raises(TimeoutError):
        await retry(operation, policy=policy, retry_on=(TimeoutError,), sleep=sleep)
    assert sleep.delays == [1.0, 2.0, 2.5, 2.5, 2.5]


async def test_single_attempt_never_sleeps() -> None:
    sleep = FakeSleep()
    operation = Flaky(OSError("only"))
    with pytest.raises(OSError, match="only"):
        await retry(operation, policy=RetryPolicy(attempts=1), retry_on=(OSError,), sleep=sleep)
    assert operation.calls == 1
    assert sleep.delays == []


async def test_logs_every_failed_attempt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server.retry")
    operation = Flaky(OSError("disk on fire"), OSError("disk on fire"), OSError("still"))
    policy = RetryPolicy(attempts=3, base_delay=2.0)
    with pytest.raises(OSError, match="still"):
        await retry(
            operation,
            policy=policy,
            retry_on=(OSError,),
            sleep=FakeSleep(),
            description="persisting 7 messages",
        )
    assert retry_records(caplog) == [
        "persisting 7 messages: attempt 1/3 failed: OSError: disk on fire; retrying in 2 s",
        "persisting 7 messages: attempt 2/3 failed: OSError: disk on fire; retrying in 4 s",
        "persisting 7 messages: attempt 3/3 failed: OSError: still; giving up",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


async def test_non_retryable_error_passes_through_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="server.retry")
    sleep = FakeSleep()
    operation = Flaky(ValueError("bug"), OSError("never reached"))
    with pytest.raises(ValueError, match="bug"):
        await retry(operation, policy=RetryPolicy(), retry_on=(OSError,), sleep=sleep)
    assert operation.calls == 1
    assert sleep.delays == []
    assert retry_records(caplog) == []


async def test_cancellation_is_never_retried() -> None:
    sleep = FakeSleep()
    operation = Flaky(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await retry(operation, policy=RetryPolicy(), retry_on=(BaseException,), sleep=sleep)
    assert operation.calls == 1
    assert sleep.delays == []


async def test_on_failure_sees_every_failed_attempt() -> None:
    errors = [OSError("a"), OSError("b")]
    seen: list[tuple[int, BaseException]] = []
    result = await retry(
        Flaky(*errors),
        policy=RetryPolicy(attempts=3),
        retry_on=(OSError,),
        sleep=FakeSleep(),
        on_failure=lambda attempt, error: seen.append((attempt, error)),
    )
    assert result == "done"
    assert seen == [(1, errors[0]), (2, errors[1])]


async def test_default_sleep_is_asyncio_sleep() -> None:
    operation = Flaky(OSError())
    result = await retry(operation, policy=RetryPolicy(base_delay=0.0), retry_on=(OSError,))
    assert result == "done"
    assert operation.calls == 2


def test_policy_defaults_match_the_original_design() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.base_delay, policy.max_delay) == (5, 1.0, None)
    assert [policy.delay(n) for n in range(1, 5)] == [1.0, 2.0, 3.0, 4.0]


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.attempts = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"attempts": -1},
        {"attempts": 2.5},
        {"attempts": True},
        {"base_delay": -0.1},
        {"base_delay": float("inf")},
        {"base_delay": float("nan")},
        {"max_delay": -1.0},
        {"max_delay": float("nan")},
    ],
)
def test_policy_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
