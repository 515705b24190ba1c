"""The descriptor limit at start-up (server/descriptors.py)."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from server.descriptors import RESERVE, raise_descriptor_limit


@pytest.fixture
def limits() -> Iterator[tuple[int, int]]:
    """The process's limits, restored afterwards."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield saved
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_the_soft_limit_is_raised_to_the_hard_one(
    limits: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    soft, hard = limits
    low = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    now = raise_descriptor_limit(100, 10)
    expected = hard if hard != resource.RLIM_INFINITY else max(low, 100 + 10 + RESERVE)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (expected, hard)
    assert now == expected
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_warning_when_the_hard_limit_is_too_low(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (256, 1024))
    monkeypatch.setattr(resource, "setrlimit", lambda kind, value: set_to.append(value))
    assert raise_descriptor_limit(10_000, 1000) == 1024
    assert set_to == [(1024, 1024)]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"--max-connections 10000 needs about {11_000 + RESERVE}")
    assert "may open 1024 (ulimit -n, hard limit 1024)" in warning


def test_no_cap_means_no_warning(limits: tuple[int, int], caplog: pytest.LogCaptureFixture) -> None:
    raise_descriptor_limit(0, 0)
    assert caplog.records == []
