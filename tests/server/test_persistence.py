"""Tests for server.persistence on real SQLite files: batches, outages, dead letters, shutdown."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from server import persistence
from server.persistence import (
    DatabaseInUse,
    PersistenceClosed,
    PersistenceQueue,
    dead_letter_path_for,
    lock_path_for,
)
from server.retry import RetryPolicy
from server.store import MessageRecord, Store
from tests.server.support import locked, wait_until

# Short delays keep the tests fast; many attempts keep them robust on a slow machine.
PATIENT = RetryPolicy(attempts=40, base_delay=0.05, max_delay=0.2)
# Gives up quickly: 3 attempts, 10 ms and 20 ms apart.
IMPATIENT = RetryPolicy(attempts=3, base_delay=0.01)


def records(start: int, stop: int, connection_id: str = "c1") -> list[MessageRecord]:
    """Messages ``start`` to ``stop - 1``; message n has seq n + 1."""
    return [
        MessageRecord.create(connection_id, f"message {n}", seq=n + 1) for n in range(start, stop)
    ]


def stored(db: Path) -> list[MessageRecord]:
    """Read the database through an independent connection."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT * FROM messages ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [MessageRecord(c, m, t, created, seq, *rest) for seq, c, m, t, created, *rest in rows]


def dead_letters(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def as_records(letters: list[dict[str, Any]]) -> list[MessageRecord]:
    fields = (
        "connection_id",
        "message",
        "timestamp",
        "created_at",
        "seq",
        "client_msg_id",
        "user",
        "channel",
        "client_id",
        "name",
    )
    return [MessageRecord(*(letter[f] for f in fields)) for letter in letters]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder / "messages.db"


@pytest.fixture
async def make_queue(db: Path) -> AsyncIterator[Callable[..., PersistenceQueue]]:
    """Build queues on ``db`` and make sure each one is stopped at the end of the test."""
    queues: list[PersistenceQueue] = []

    def make(**kwargs: Any) -> PersistenceQueue:
        kwargs.setdefault("policy", PATIENT)
        queue = PersistenceQueue(db, **kwargs)
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        await queue.stop(timeout=10)


async def test_messages_are_persisted_in_order(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue(batch_size=64)
    await queue.start()
    sent = records(0, 1000)
    for n, record in enumerate(sent):
        queue.put_nowait(record)
        if n % 100 == 0:
            await asyncio.sleep(0)  # let the writer take partial batches too
    await wait_until(lambda: queue.persisted == 1000)
    assert queue.depth == 0
    assert queue.dead_lettered == 0
    assert queue.failed_attempts == 0
    assert stored(db) == sent
    # The read helpers run in the worker thread and see the same rows.
    assert await queue.count() == 1000
    assert (await queue.after(0, 2000)).records == sent
    assert [r.seq for r in (await queue.after(990, 5)).records] == [991, 992, 993, 994, 995]
    assert (await queue.last(3)).records == sent[-3:]
    await queue.stop()
    assert not queue.dead_letter_path.exists()


async def test_any_text_round_trips(make_queue: Callable[..., PersistenceQueue], db: Path) -> None:
    queue = make_queue()
    await queue.start()
    texts = ['"quoted" \\ back', "new\nline", "emoji 🎉👩‍💻", "<script>alert(1)</script>", ""]
    for text in texts:
        queue.accept("c1", text)
    await queue.stop()
    assert [m.message for m in stored(db)] == texts


async def test_locked_database_recovers_without_dead_letters(
    make_queue: Callable[..., PersistenceQueue], db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    queue = make_queue()
    await queue.start()
    sent = records(0, 200)
    with locked(db):
        for record in sent:
            queue.put_nowait(record)
        # Two failed attempts: the lock outlived at least one retry delay.
        await wait_until(lambda: queue.failed_attempts >= 2)
        assert queue.persisted == 0
        assert queue.depth == 200
    await wait_until(lambda: queue.persisted == 200)
    assert queue.dead_lettered == 0
    assert queue.depth == 0
    assert stored(db) == sent
    assert not queue.dead_letter_path.exists()
    retries = [r.getMessage() for r in caplog.records if r.name == "server.retry"]
    assert retries
    assert all("database is locked" in m and "retrying in" in m for m in retries)


async def test_database_failing_past_all_retries_is_dead_lettered(
    make_queue: Callable[..., PersistenceQueue], db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    queue = make_queue(policy=IMPATIENT)
    await queue.start()
    failed = [*records(0, 50, "c1"), MessageRecord.create("c2", 'tricky "json"\n🎉', seq=51)]
    with locked(db):
        for record in failed:
            queue.put_nowait(record)
        await wait_until(lambda: queue.dead_lettered == len(failed))
        assert queue.persisted == 0
        assert queue.failed_attempts == 3  # one batch, three attempts
    later = records(50, 80, "c3")
    for record in later:
        queue.put_nowait(record)
    await wait_until(lambda: queue.persisted == len(later))
    assert queue.depth == 0

    assert queue.dead_letter_path == db.parent / "messages.db.deadletter.jsonl"
    letters = dead_letters(queue.dead_letter_path)
    assert as_records(letters) == failed
    assert all("database is locked" in letter["error"] for letter in letters)
    assert stored(db) == later

    messages = [r.getMessage() for r in caplog.records]
    assert any("attempt 3/3 failed" in m and "giving up" in m for m in messages)
    assert any(
        f"dead-lettered {len(failed)} messages to {queue.dead_letter_path}" in m for m in messages
    )


async def test_unopenable_database_is_dead_lettered_then_resumes(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue(policy=IMPATIENT)
    await queue.start()
    queue.put_nowait(records(0, 1)[0])
    await wait_until(lambda: queue.persisted == 1)
    # A directory where the database was: a failure that even root cannot bypass.
    for path in db.parent.glob("messages.db*"):
        path.unlink()
    os.mkdir(db)
    failed = records(1, 11)
    for record in failed:
        queue.put_nowait(record)
    await wait_until(lambda: queue.dead_lettered == 10)
    assert as_records(dead_letters(queue.dead_letter_path)) == failed
    assert all("unable to open" in d["error"] for d in dead_letters(queue.dead_letter_path))
    # The database comes back: the next batch reopens it (empty: the old file is gone).
    os.rmdir(db)
    later = records(11, 21)
    for record in later:
        queue.put_nowait(record)
    await wait_until(lambda: queue.persisted == 11)
    assert stored(db) == later


async def test_removed_folder_recovers_without_dead_letters(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue()
    await queue.start()
    shutil.rmtree(db.parent)
    sent = records(0, 100)
    for record in sent:
        queue.put_nowait(record)
    await wait_until(lambda: queue.failed_attempts >= 2)
    db.parent.mkdir()
    await wait_until(lambda: queue.persisted == 100)
    assert queue.dead_lettered == 0
    assert stored(db) == sent


async def test_dead_letters_go_to_the_log_when_the_file_cannot_be_written(
    make_queue: Callable[..., PersistenceQueue], db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="server.persistence")
    queue = make_queue(policy=IMPATIENT)
    await queue.start()
    shutil.rmtree(db.parent)  # neither the database nor its dead-letter file can be written
    queue.put_nowait(MessageRecord.create("c1", "keep me", seq=1))
    await wait_until(lambda: queue.dead_lettered == 1)
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not append 1 messages to dead-letter file" in m for m in messages)
    assert any(m.startswith("dead letter: ") and "keep me" in m for m in messages)


async def test_stop_drains_10000_queued_messages(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue()
    await queue.start()
    sent = records(0, 10_000)
    for record in sent:
        queue.put_nowait(record)
    assert queue.depth == 10_000
    await queue.stop(timeout=60)
    assert queue.persisted == 10_000
    assert queue.depth == 0
    assert queue.dead_lettered == 0
    assert stored(db) == sent


async def test_stop_waits_for_an_outage_shorter_than_the_timeout(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue()
    await queue.start()
    sent = records(0, 100)
    with locked(db):
        for record in sent:
            queue.put_nowait(record)
        await wait_until(lambda: queue.failed_attempts >= 1)
        stopping = asyncio.create_task(queue.stop(timeout=30))
        await wait_until(lambda: queue.failed_attempts >= 2)
        assert not stopping.done()
    await stopping
    assert stored(db) == sent
    assert queue.dead_lettered == 0


async def test_stop_dead_letters_what_the_timeout_leaves_unwritten(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue(policy=RetryPolicy(attempts=1000, base_delay=0.05), batch_size=10)
    await queue.start()
    sent = records(0, 100)
    with locked(db):
        for record in sent:
            queue.put_nowait(record)
        await wait_until(lambda: queue.failed_attempts >= 1)
        await queue.stop(timeout=0.2)  # the lock outlives the timeout
    assert queue.persisted == 0
    assert queue.dead_lettered == 100
    assert queue.depth == 0
    assert as_records(dead_letters(queue.dead_letter_path)) == sent
    assert stored(db) == []


async def test_stop_abandons_a_stuck_worker_after_the_grace_period(
    make_queue: Callable[..., PersistenceQueue],
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(persistence, "_STOP_GRACE", 0.1)
    release = threading.Event()
    entered = threading.Event()
    insert_many = Store.insert_many

    def stuck_insert_many(self: Store, batch: list[MessageRecord], **kwargs: Any) -> None:
        if batch:
            entered.set()
            release.wait(10)  # a database call that outlives the shutdown timeout
        insert_many(self, batch, **kwargs)

    monkeypatch.setattr(Store, "insert_many", stuck_insert_many)
    queue = make_queue(capacity=5, batch_size=2)
    await queue.start()
    sent = records(0, 7)
    queue.put_nowait(sent[0])
    queue.put_nowait(sent[1])
    await wait_until(entered.is_set)  # sent[0:2] is in flight
    for record in sent[2:7]:
        queue.put_nowait(record)  # the queue is full
    waiters = [asyncio.create_task(queue.wait_ready()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(waiter.done() for waiter in waiters)
    try:
        await queue.stop(timeout=0)
    finally:
        release.set()
    # The senders waiting for room are refused: their messages were never accepted.
    for result in await asyncio.gather(*waiters, return_exceptions=True):
        assert isinstance(result, PersistenceClosed)
    assert queue.dead_lettered == 7
    assert queue.depth == 0
    assert as_records(dead_letters(queue.dead_letter_path)) == sent
    assert any("abandoning" in r.getMessage() for r in caplog.records)
    # The abandoned call still commits once released: that batch is both in the database and
    # in the dead-letter file (duplicated, never lost). Then the worker closes the store.
    worker_name = f"persistence {db.name}"
    await wait_until(lambda: all(t.name != worker_name for t in threading.enumerate()))
    assert stored(db) == sent[:2]


async def test_reads_are_served_during_an_outage(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue()
    await queue.start()
    first = records(0, 5)
    for record in first:
        queue.put_nowait(record)
    await wait_until(lambda: queue.persisted == 5)
    with locked(db):
        for record in records(5, 10):
            queue.put_nowait(record)
        await wait_until(lambda: queue.failed_attempts >= 1)
        assert (await queue.last(10)).records == first
        assert [r.seq for r in (await queue.after(3, 10)).records] == [4, 5]
    await wait_until(lambda: queue.persisted == 10)
    assert await queue.count() == 10


async def test_stop_before_start_dead_letters_queued_messages(
    make_queue: Callable[..., PersistenceQueue],
) -> None:
    queue = make_queue()
    sent = records(0, 3)
    for record in sent:
        queue.put_nowait(record)
    await queue.stop()
    assert as_records(dead_letters(queue.dead_letter_path)) == sent
    assert queue.dead_lettered == 3


async def test_put_nowait_never_awaits_the_database(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    assert not inspect.iscoroutinefunction(PersistenceQueue.put_nowait)
    queue = make_queue()
    await queue.start()
    sent = records(0, 1001)
    with locked(db):
        queue.put_nowait(sent[0])
        await wait_until(lambda: queue.failed_attempts >= 1)  # the writer is retrying
        for record in sent[1:]:  # no await in this loop: nothing can reach the database
            queue.put_nowait(record)
        assert queue.depth == 1001
        assert queue.persisted == 0
    await wait_until(lambda: queue.persisted == 1001)
    assert stored(db) == sent


async def test_put_nowait_does_not_wait_for_a_busy_worker_thread(
    make_queue: Callable[..., PersistenceQueue], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    entered = threading.Event()
    insert_many = Store.insert_many

    def slow_insert_many(self: Store, batch: list[MessageRecord], **kwargs: Any) -> None:
        if batch:
            entered.set()
            release.wait(10)  # the worker thread is stuck in a database call
        insert_many(self, batch, **kwargs)

    monkeypatch.setattr(Store, "insert_many", slow_insert_many)
    queue = make_queue()
    await queue.start()
    sent = records(0, 1000)
    queue.put_nowait(sent[0])
    await wait_until(entered.is_set)
    for record in sent[1:]:
        queue.put_nowait(record)
    assert queue.depth == 1000
    release.set()
    await wait_until(lambda: queue.persisted == 1000)
    assert stored(db) == sent


async def test_full_queue_is_not_ready_and_wait_ready_waits_for_room(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue(capacity=10)
    assert not queue.ready()  # not started: no seq reserved yet
    with pytest.raises(asyncio.QueueFull):
        queue.accept("c1", "too early")
    await queue.start()
    with locked(db):
        sent = [queue.accept("c1", "message 0")]
        await wait_until(lambda: queue.failed_attempts >= 1)  # the writer holds it in a batch
        while queue.ready():
            sent.append(queue.accept("c1", f"message {len(sent)}"))
        assert len(sent) == 11  # one in flight, ten queued
        with pytest.raises(asyncio.QueueFull):
            queue.accept("c1", "no room")
        with pytest.raises(asyncio.QueueFull):
            queue.put_nowait(MessageRecord.create("c1", "no room", seq=999))
        waiting = asyncio.create_task(queue.wait_ready())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # no room until the writer takes a batch...
    await waiting  # ...which it does once the lock is gone
    sent.append(queue.accept("c1", "room again"))
    assert [r.seq for r in sent] == list(range(1, 13))  # the refused ones took no seq
    await queue.stop()
    assert stored(db) == sent


async def test_put_after_stop_is_refused(make_queue: Callable[..., PersistenceQueue]) -> None:
    queue = make_queue()
    await queue.start()
    await queue.stop()
    await queue.stop()  # idempotent
    record = records(0, 1)[0]
    with pytest.raises(PersistenceClosed):
        queue.put_nowait(record)
    with pytest.raises(PersistenceClosed):
        queue.accept("c1", "late")
    with pytest.raises(PersistenceClosed):
        await queue.wait_ready()
    with pytest.raises(PersistenceClosed):
        await queue.last(1)
    with pytest.raises(RuntimeError, match="once"):
        await queue.start()


async def test_concurrent_stops_wait_for_the_same_drain(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue()
    await queue.start()
    for record in records(0, 2000):
        queue.put_nowait(record)
    await asyncio.gather(queue.stop(timeout=None), queue.stop())
    assert queue.persisted == 2000
    assert len(stored(db)) == 2000


async def test_reads_need_a_started_queue(make_queue: Callable[..., PersistenceQueue]) -> None:
    queue = make_queue()
    with pytest.raises(RuntimeError, match="not started"):
        await queue.count()


async def test_start_fails_when_the_database_cannot_be_opened(tmp_path: Path) -> None:
    queue = PersistenceQueue(tmp_path / "missing" / "messages.db")
    with pytest.raises(sqlite3.OperationalError, match="No such file or directory"):
        await queue.start()


def test_dead_letter_file_is_beside_the_database(tmp_path: Path) -> None:
    assert dead_letter_path_for(tmp_path / "m.db") == tmp_path / "m.db.deadletter.jsonl"
    assert PersistenceQueue(tmp_path / "m.db").dead_letter_path == dead_letter_path_for(
        tmp_path / "m.db"
    )


@pytest.mark.parametrize("kwargs", [{"capacity": 0}, {"batch_size": 0}])
def test_rejects_bad_sizes(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PersistenceQueue(tmp_path / "m.db", **kwargs)


# Sequence numbers, listeners, retention


def reserved_seq(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        (reserved,) = conn.execute("SELECT reserved_seq FROM meta").fetchone()
    finally:
        conn.close()
    assert isinstance(reserved, int)
    return reserved


async def test_seqs_are_handed_out_only_within_a_committed_reservation(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue(seq_block=10, capacity=100)
    await queue.start()
    assert reserved_seq(db) == 10  # reserved before the first seq is handed out
    sent = [queue.accept("c1", f"message {n}") for n in range(6)]
    await wait_until(lambda: queue.persisted == 6)
    assert reserved_seq(db) == 20  # half the block was used: the next one came with a batch
    with locked(db):
        # The database is failing: seqs run out at the reservation, never beyond it.
        while queue.ready():
            sent.append(queue.accept("c1", f"message {len(sent)}"))
        assert sent[-1].seq == queue.last_seq == 20
        waiting = asyncio.create_task(queue.wait_ready())
        await asyncio.sleep(0.05)
        assert not waiting.done()
    await waiting  # the reservation came through once the lock was gone
    assert reserved_seq(db) >= 30
    sent.append(queue.accept("c1", "after"))
    await queue.stop()
    assert [r.seq for r in stored(db)] == list(range(1, 22))
    assert stored(db) == sent
    # A clean stop records the last seq used: the next start continues right after it.
    assert reserved_seq(db) == 21
    again = make_queue(seq_block=10)
    await again.start()
    assert again.accept("c1", "next").seq == 22
    await again.stop()
    assert [r.seq for r in stored(db)][-2:] == [21, 22]


async def test_a_crash_skips_the_unused_reservation(
    make_queue: Callable[..., PersistenceQueue], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue(seq_block=10)
    await queue.start()
    queue.accept("c1", "committed")
    await wait_until(lambda: queue.persisted == 1)
    # As after kill -9: the reservation stays; a seq up to it may have been broadcast.
    assert reserved_seq(db) == 10

    async def crashed(worker: object, store: object) -> None:
        """A crashed process records nothing more (its lock goes with it)."""

    monkeypatch.setattr(queue, "_release_reservation", crashed)
    await queue.stop()
    assert reserved_seq(db) == 10
    again = make_queue(seq_block=10)
    await again.start()
    assert again.accept("c1", "after the crash").seq == 11
    await again.stop()


async def test_listeners_hear_of_each_batch_in_seq_order(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue(policy=IMPATIENT, batch_size=3)
    committed: list[MessageRecord] = []
    dead: list[MessageRecord] = []
    queue.on_committed = committed.extend
    queue.on_dead_lettered = dead.extend
    await queue.start()
    first = [queue.accept("c1", f"ok {n}", f"m{n}") for n in range(7)]
    await wait_until(lambda: len(committed) == 7)
    assert committed == first
    assert committed[0].client_msg_id == "m0"
    with locked(db):
        lost = [queue.accept("c2", f"lost {n}") for n in range(2)]
        await wait_until(lambda: len(dead) == 2)
    assert dead == lost
    assert len(committed) == 7


async def test_a_failing_listener_does_not_stop_the_writer(
    make_queue: Callable[..., PersistenceQueue], db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue()

    def broken(batch: object) -> None:
        raise RuntimeError("listener bug")

    queue.on_committed = broken
    await queue.start()
    queue.accept("c1", "one")
    await wait_until(lambda: queue.persisted == 1)
    queue.accept("c1", "two")
    await wait_until(lambda: queue.persisted == 2)
    assert any("listener" in r.getMessage() for r in caplog.records)


async def test_retention_prunes_in_the_background(
    make_queue: Callable[..., PersistenceQueue], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(persistence, "PRUNE_CHUNK", 4)  # several small deletes
    queue = make_queue(retention_messages=5, prune_interval=0.02)
    pruned: list[int] = []
    queue.on_pruned = lambda channel, seq: pruned.append(seq)
    await queue.start()
    for n in range(23):
        queue.accept("c1", f"message {n}")
    await wait_until(lambda: pruned and pruned[-1] == 18)
    assert [r.seq for r in stored(db)] == [19, 20, 21, 22, 23]
    assert pruned == sorted(pruned)
    assert len(pruned) >= 4  # 18 rows, at most 4 per delete


# A record the database refuses costs only itself (issue 11: one attacker lost half of
# everyone's messages, gathered into the batch its message landed in).


async def test_a_record_sqlite_refuses_is_dead_lettered_alone(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue(policy=PATIENT)
    committed: list[MessageRecord] = []
    dead: list[MessageRecord] = []
    queue.on_committed = committed.extend
    queue.on_dead_lettered = dead.extend
    await queue.start()
    with locked(db):  # all of them gather into one batch while the database is locked
        sent = [
            queue.accept("c1", "lone \ud800 surrogate" if n in (3, 6) else f"ok {n}", f"m{n}")
            for n in range(10)
        ]
        await wait_until(lambda: queue.failed_attempts >= 1)
    await wait_until(lambda: len(committed) + len(dead) == 10)
    assert [r.client_msg_id for r in dead] == ["m3", "m6"]
    assert committed == [r for r in sent if r not in dead]
    # Each record is heard of once, and in seq order overall.
    assert sorted(committed + dead, key=lambda r: r.seq) == sent
    assert [row[0] for row in rows_of(db)] == [r.seq for r in committed]
    lines = [json.loads(line) for line in queue.dead_letter_path.read_text().splitlines()]
    assert [line["client_msg_id"] for line in lines] == ["m3", "m6"]
    assert lines[0]["message"] == "lone \ud800 surrogate"
    assert lines[0]["error"].startswith("UnicodeEncodeError")
    assert (queue.persisted, queue.dead_lettered) == (8, 2)


def rows_of(db: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT seq, message FROM messages ORDER BY seq").fetchall()
    finally:
        conn.close()


# One queue per database (issue 11: two servers on one --db forked the seqs).


async def test_a_second_queue_on_the_same_database_refuses_to_start(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    first = make_queue()
    await first.start()
    second = make_queue()
    with pytest.raises(DatabaseInUse, match=rf"in use by another server \(pid {os.getpid()}\)"):
        await second.start()
    assert lock_path_for(db).read_text() == f"{os.getpid()}\n"
    await first.stop()
    third = make_queue()
    await third.start()  # the lock went with the first one
    assert third.accept("c", "after").seq == first.last_seq + 1
