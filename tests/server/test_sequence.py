"""Tests for server.sequence: seqs only from a committed reservation, blocks asked for early."""

from __future__ import annotations

import pytest

from server.sequence import SequenceAllocator


def test_nothing_is_handed_out_before_a_reservation_is_committed() -> None:
    seqs = SequenceAllocator(reserved=41, block=10)
    assert seqs.last == 41
    assert not seqs.available()
    with pytest.raises(RuntimeError, match="not reserved"):
        seqs.take()
    assert seqs.due() == 51
    seqs.reserved_through(51)
    assert [seqs.take() for _ in range(3)] == [42, 43, 44]
    assert seqs.last == 44


def test_the_next_block_is_due_once_half_is_used() -> None:
    seqs = SequenceAllocator(reserved=0, block=10)
    seqs.reserved_through(10)
    for _ in range(6):
        assert seqs.due() is None  # at least half a block left
        seqs.take()
    assert seqs.due() == 20  # 4 left: less than half a block
    assert seqs.due() == 20  # asked again until committed, not one block more
    for _ in range(4):
        seqs.take()
    assert not seqs.available()  # never beyond the reservation
    seqs.reserved_through(20)
    assert seqs.take() == 11
    assert seqs.reserved == 20


def test_a_lower_reservation_changes_nothing() -> None:
    seqs = SequenceAllocator(reserved=0, block=10)
    seqs.reserved_through(10)
    seqs.reserved_through(5)
    assert seqs.reserved == 10


def test_a_block_needs_two_seqs() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        SequenceAllocator(reserved=0, block=1)
