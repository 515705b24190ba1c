"""Tests for server.recent: the ids a channel remembers, bounded in count and in time."""

from __future__ import annotations

from server.recent import RecentIds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_id_is_remembered_for_the_window_only() -> None:
    clock = Clock()
    recent = RecentIds(window=10, most=100, clock=clock)
    recent.add("user:a", "m1", 1)
    entry = recent.get("user:a", "m1")
    assert entry is not None
    assert (entry.seq, entry.settled) == (1, False)
    assert recent.get("user:b", "m1") is None  # another sender's id is its own
    clock.now = 9.9
    assert recent.get("user:a", "m1") is not None
    clock.now = 10.0
    assert recent.get("user:a", "m1") is None
    assert len(recent) == 0


def test_at_most_most_ids_the_oldest_go_first() -> None:
    recent = RecentIds(window=10, most=3, clock=Clock())
    for n in range(5):
        recent.add("user:a", f"m{n}", n)
    assert len(recent) == 3
    assert recent.get("user:a", "m1") is None
    assert recent.get("user:a", "m4") is not None


def test_one_loaded_from_the_database_is_settled_and_ages() -> None:
    clock = Clock()
    recent = RecentIds(window=10, most=3, clock=clock)
    recent.add("client:c", "m", 7, age=8)
    entry = recent.get("client:c", "m")
    assert entry is not None
    assert entry.settled
    clock.now = 2.0
    assert recent.get("client:c", "m") is None


def test_a_message_that_could_not_be_stored_is_forgotten() -> None:
    recent = RecentIds(clock=Clock())
    recent.add("user:a", "m", 5)
    recent.discard("user:a", "m", 4)  # not this one
    assert recent.get("user:a", "m") is not None
    recent.discard("user:a", "m", 5)
    assert recent.get("user:a", "m") is None
