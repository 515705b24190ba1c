"""Tests for server.ratelimit: token buckets, both limits together, strikes; a fake clock."""

from __future__ import annotations

import pytest

from server.ratelimit import STRIKE_WINDOW, STRIKES, RateLimiter, TokenBucket, retry_after_ms


class Clock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_bucket_starts_full_then_refills_at_its_rate(clock: Clock) -> None:
    bucket = TokenBucket(rate=2, burst=4, clock=clock)
    for _ in range(4):
        assert bucket.wait(1) == 0.0
        bucket.take(1)
    assert bucket.wait(1) == pytest.approx(0.5)  # 1 token at 2 a second
    clock.now += 0.25
    assert bucket.wait(1) == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.wait(1) == 0.0


def test_bucket_never_holds_more_than_its_burst(clock: Clock) -> None:
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    clock.now += 3600
    for _ in range(3):
        assert bucket.wait(1) == 0.0
        bucket.take(1)
    assert bucket.wait(1) == pytest.approx(0.1)


def test_a_cost_over_the_burst_needs_a_full_bucket(clock: Clock) -> None:
    bucket = TokenBucket(rate=100, burst=1000, clock=clock)
    assert bucket.wait(5000) == 0.0
    bucket.take(5000)
    assert bucket.wait(5000) == pytest.approx(10.0)  # empty: 1000 tokens at 100 a second
    clock.now += 10
    assert bucket.wait(5000) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (-1, 5), (float("nan"), 1)])
def test_bucket_refuses_a_rate_or_burst_that_is_not_positive(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        TokenBucket(rate, burst)


def test_limiter_counts_messages(clock: Clock) -> None:
    limiter = RateLimiter(TokenBucket(20, 40, clock), clock=clock)
    assert all(limiter.admit("hi") == 0.0 for _ in range(40))
    wait = limiter.admit("hi")
    assert wait == pytest.approx(0.05)
    # A client that waits retryAfterMs (rounded up) gets through.
    clock.now += retry_after_ms(wait) / 1000
    assert limiter.admit("hi") == 0.0


def test_limiter_counts_utf8_bytes(clock: Clock) -> None:
    limiter = RateLimiter(TokenBucket(1000, 1000, clock), TokenBucket(10, 12, clock), clock=clock)
    assert limiter.admit("é" * 5) == 0.0  # 10 bytes, not 5 characters
    assert limiter.admit("ab") == 0.0
    assert limiter.admit("a") == pytest.approx(0.1)


def test_a_refused_message_takes_nothing_from_either_bucket(clock: Clock) -> None:
    messages = TokenBucket(1, 2, clock)
    size = TokenBucket(100, 100, clock)
    limiter = RateLimiter(messages, size, clock=clock)
    assert limiter.admit("x" * 100) == 0.0
    # The byte bucket is empty: the message bucket keeps its token.
    assert limiter.admit("y") == pytest.approx(0.01)
    assert messages.wait(1) == 0.0
    # Two more empty the message bucket; the third is refused and takes no bytes.
    clock.now += 1
    assert limiter.admit("a") == 0.0
    assert limiter.admit("b") == 0.0
    assert limiter.admit("c") == pytest.approx(1.0)
    assert size.wait(98) == 0.0


def test_strikes_within_the_window_disconnect(clock: Clock) -> None:
    limiter = RateLimiter(TokenBucket(1, 1, clock), clock=clock)
    assert [limiter.strike() for _ in range(STRIKES)] == [False] * (STRIKES - 1) + [True]


def test_strikes_older_than_the_window_are_forgotten(clock: Clock) -> None:
    limiter = RateLimiter(TokenBucket(1, 1, clock), strikes=3, window=STRIKE_WINDOW, clock=clock)
    assert not limiter.strike()
    clock.now += STRIKE_WINDOW / 2
    assert not limiter.strike()
    clock.now += STRIKE_WINDOW / 2  # the first is now out of the window
    assert not limiter.strike()
    clock.now += 1
    assert limiter.strike()


@pytest.mark.parametrize(
    ("wait", "ms"), [(0.0001, 1), (0.05, 50), (0.0501, 51), (1.5, 1500), (10.0, 10000)]
)
def test_retry_after_ms_rounds_up(wait: float, ms: int) -> None:
    assert retry_after_ms(wait) == ms
