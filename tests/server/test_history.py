"""Tests for server.history: the ring's bounds and what each kind of client gets."""

from __future__ import annotations

import pytest

from server.history import History, Plan, Resume

EPOCH = "e-1"


def item(seq: int, size: int = 10) -> bytes:
    return f"{seq:0{size}d}".encode()


def ring(*, max_messages: int = 100, max_bytes: int = 10_000, finished: int = 0) -> History:
    return History(
        EPOCH, max_messages=max_messages, max_bytes=max_bytes, finished=finished, pruned=0
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("since=5&epoch=abc", Resume(5, "abc")),
        ("epoch=a%20b&since=0&x=1", Resume(0, "a b")),
        ("since=5", None),
        ("epoch=abc", None),
        ("since=-1&epoch=abc", None),
        ("since=1.5&epoch=abc", None),
        ("since=%C2%B2&epoch=abc", None),  # a superscript two is a digit, but not ASCII
        ("since=" + "9" * 20 + "&epoch=abc", None),
        ("since=1&since=2&epoch=abc", None),
        ("", None),
    ],
)
def test_resume_from_query(query: str, expected: Resume | None) -> None:
    assert Resume.from_query(query) == expected


def test_bounded_by_count_and_by_bytes_once_finished() -> None:
    history = ring(max_messages=3, max_bytes=35)
    for seq in range(1, 6):
        history.append(seq, item(seq))
    assert len(history) == 5  # nothing is finished: nothing may go yet
    history.finished(4)
    assert history.last(10) == [item(3), item(4), item(5)]  # the count binds
    history.append(6, item(6, size=20))
    assert history.last(10) == [item(5), item(6, size=20)]  # the bytes bind


def test_last_n() -> None:
    history = ring()
    for seq in range(1, 8):
        history.append(seq, item(seq))
    assert history.last(3) == [item(5), item(6), item(7)]
    assert history.last(0) == []
    assert history.last(100) == [item(seq) for seq in range(1, 8)]


def test_plans() -> None:
    history = ring(max_messages=3, finished=10)
    for seq in range(1, 8):
        history.append(seq, item(seq))  # holds 5, 6, 7: 1 to 4 were evicted
    assert history.plan(None, last=7, count=2, resume_max=100) == Plan([item(6), item(7)], False)
    assert history.plan(None, last=7, count=0, resume_max=100) is None
    # Everything after since=4 is in memory.
    resume = Resume(4, EPOCH)
    assert history.plan(resume, last=7, count=2, resume_max=100) == Plan(
        [item(5), item(6), item(7)], True
    )
    # After since=2, seqs 3 and 4 must be read from the database.
    assert history.plan(Resume(2, EPOCH), last=7, count=2, resume_max=100) == Plan(
        [item(5), item(6), item(7)],
        True,
        read_after=2,
        read_through=4,
        read_count=97,
        fallback=[item(6), item(7)],
    )
    last_two = Plan([item(6), item(7)], False)
    for impossible in (Resume(4, "other"), Resume(8, EPOCH)):
        assert history.plan(impossible, last=7, count=2, resume_max=100) == last_two
    assert history.plan(Resume(4, EPOCH), last=7, count=2, resume_max=2) == last_two
    assert history.plan(Resume(7, EPOCH), last=7, count=2, resume_max=0) == Plan([], True)


def test_pruned_messages_are_forgotten_and_cannot_be_recovered() -> None:
    history = ring(finished=10)
    for seq in range(1, 6):
        history.append(seq, item(seq))
    history.pruned_through(3)
    assert history.pruned == 3
    assert history.last(10) == [item(4), item(5)]
    assert history.plan(Resume(2, EPOCH), last=5, count=5, resume_max=100) == Plan(
        [item(4), item(5)], False
    )
    assert history.plan(Resume(3, EPOCH), last=5, count=5, resume_max=100) == Plan(
        [item(4), item(5)], True
    )


def test_load_marks_older_stored_messages_as_not_in_memory() -> None:
    history = ring(finished=10)
    history.load([(8, item(8)), (9, item(9))], complete=False, through=0)
    plan = history.plan(Resume(3, EPOCH), last=9, count=5, resume_max=100)
    assert plan is not None
    assert (plan.read_after, plan.read_through) == (3, 7)
    complete = ring(finished=10)
    complete.load([(8, item(8)), (9, item(9))], complete=True, through=0)
    assert complete.plan(Resume(3, EPOCH), last=9, count=5, resume_max=100) == Plan(
        [item(8), item(9)], True
    )


def test_a_history_holds_the_latest_messages_that_fit_in_its_bytes() -> None:
    history = ring()
    for seq in range(1, 8):
        history.append(seq, item(seq))  # 10 bytes each, 11 with its comma
    assert history.last(5, max_bytes=33) == [item(5), item(6), item(7)]
    assert history.last(5, max_bytes=32) == [item(6), item(7)]
    assert history.last(5, max_bytes=5) == []
    plan = history.plan(None, last=7, count=50, resume_max=100, max_bytes=44)
    assert plan == Plan([item(4), item(5), item(6), item(7)], False)


def test_a_resume_that_does_not_fit_gets_the_latest_that_do() -> None:
    history = ring(finished=10)
    for seq in range(1, 8):
        history.append(seq, item(seq))
    latest_that_fit = Plan([item(6), item(7)], False)
    # Seqs 3 to 7 are 55 bytes: over 22; seqs 6 and 7 fit.
    assert history.plan(Resume(2, EPOCH), last=7, count=5, resume_max=100, max_bytes=22) == (
        latest_that_fit
    )
    assert history.plan(Resume(5, EPOCH), last=7, count=5, resume_max=100, max_bytes=22) == (
        Plan([item(6), item(7)], True)
    )


def test_a_resume_reading_the_database_gets_the_room_left() -> None:
    history = ring(max_messages=3, finished=10)
    for seq in range(1, 8):
        history.append(seq, item(seq))  # holds 5, 6, 7
    plan = history.plan(Resume(1, EPOCH), last=7, count=2, resume_max=10, max_bytes=100)
    assert plan is not None
    assert (plan.read_after, plan.read_through) == (1, 4)
    assert (plan.read_count, plan.read_bytes) == (7, 100 - 33)


def test_seqs_skipped_after_a_crash_are_not_missed_messages() -> None:
    # The issue: after kill -9 the next seq starts above the reservation (20,001 after 2
    # messages), and comparing seqs made every resume fail, even one that missed nothing.
    history = ring(finished=20_010)
    history.load([(1, item(1)), (2, item(2))], complete=True, through=0)
    for seq in (20_001, 20_002):
        history.append(seq, item(seq))
    for since, expected in ((2, [item(20_001), item(20_002)]), (20_002, []), (0, None)):
        plan = history.plan(Resume(since, EPOCH), last=20_002, count=5, resume_max=3)
        assert plan is not None
        if expected is None:  # from the start: 4 messages, over resume_max
            assert not plan.recovered
        else:
            assert plan == Plan(expected, True)
