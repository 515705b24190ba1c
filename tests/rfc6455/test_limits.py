"""Tests for rfc6455.limits: every default has a value, and nonsense is refused."""

from __future__ import annotations

import dataclasses
import math

import pytest

from rfc6455 import Limits


@pytest.mark.parametrize("name", [field.name for field in dataclasses.fields(Limits)])
def test_a_negative_value_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"Limits.{name} must be >= 0 or None"):
        Limits(**{name: -1})


def test_nan_is_refused() -> None:
    with pytest.raises(ValueError, match="open_timeout"):
        Limits(open_timeout=math.nan)


def test_zero_none_and_the_defaults_are_accepted() -> None:
    assert Limits(open_timeout=0, max_size=0, max_send_buffer=None).max_size == 0
    limits = Limits()
    assert (limits.max_head_size, limits.max_handshakes) == (16 * 1024, 1000)
    assert limits.max_handshakes_per_address == 100


def test_max_frame_size_may_not_be_zero() -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        Limits(max_frame_size=0)
