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
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from server import persistence
from server.persistence import (
    PersistenceClosed,
    PersistenceQueue,
    dead_letter_path_for,
)
from server.retry import RetryPolicy
from server.store import MessageRecord, Store

# Short delays keep the tests fast; many attempts keep them robust on a slow machine.
PATIENT = RetryPolicy(attempts=40, base_delay=0.05, max_delay=0.2)
# Gives up quickly: 3 attempts, 10 ms and 20 ms apart.
IMPATIENT = RetryPolicy(attempts=3, base_delay=0.01)


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``predicate`` until it is true; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.005)


def records(start: int, stop: int, connection_id: str = "c1") -> list[MessageRecord]:
    return [MessageRecord.create(connection_id, f"message {n}") for n in range(start, stop)]


def stored(db: Path) -> list[MessageRecord]:
    """Read the database through an independent connection."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT * FROM messages ORDER BY id").fetchall()
    finally:
        conn.close()
    return [MessageRecord(c, m, t, created, message_id) for message_id, c, m, t, created in rows]


def without_ids(messages: list[MessageRecord]) -> list[MessageRecord]:
    return [MessageRecord(m.connection_id, m.message, m.timestamp, m.created_at) for m in messages]


def dead_letters(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def as_records(letters: list[dict[str, Any]]) -> list[MessageRecord]:
    fields = ("connection_id", "message", "timestamp", "created_at")
    return [MessageRecord(*(letter[f] for f in fields)) for letter in letters]


@contextmanager
def locked(db: Path) -> Iterator[None]:
    """Hold the database's write lock from another connection, as another process would."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


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
    assert without_ids(stored(db)) == sent
    # The read helpers run in the worker thread and see the same rows.
    assert await queue.count() == 1000
    assert without_ids(await queue.after(0, 2000)) == sent
    assert [r.id for r in await queue.after(990, 5)] == [991, 992, 993, 994, 995]
    assert without_ids(await queue.last(3)) == sent[-3:]
    await queue.stop()
    assert not queue.dead_letter_path.exists()


async def test_any_text_round_trips(make_queue: Callable[..., PersistenceQueue], db: Path) -> None:
    queue = make_queue()
    await queue.start()
    texts = ['"quoted" \\ back', "new\nline", "emoji 🎉👩‍💻", "<script>alert(1)</script>", ""]
    for text in texts:
        queue.put_nowait(MessageRecord.create("c1", text))
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
    assert without_ids(stored(db)) == sent
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
    failed = [*records(0, 50, "c1"), MessageRecord.create("c2", 'tricky "json"\n🎉')]
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
    assert without_ids(stored(db)) == later

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
    assert without_ids(stored(db)) == later


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
    assert without_ids(stored(db)) == sent


async def test_dead_letters_go_to_the_log_when_the_file_cannot_be_written(
    make_queue: Callable[..., PersistenceQueue], db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="server.persistence")
    queue = make_queue(policy=IMPATIENT)
    await queue.start()
    shutil.rmtree(db.parent)  # neither the database nor its dead-letter file can be written
    queue.put_nowait(MessageRecord.create("c1", "keep me"))
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
    assert without_ids(stored(db)) == sent


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
    assert without_ids(stored(db)) == sent
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

    def stuck_insert_many(self: Store, batch: list[MessageRecord]) -> None:
        entered.set()
        release.wait(10)  # a database call that outlives the shutdown timeout
        insert_many(self, batch)

    monkeypatch.setattr(Store, "insert_many", stuck_insert_many)
    queue = make_queue(capacity=5, batch_size=2)
    await queue.start()
    sent = records(0, 10)
    queue.put_nowait(sent[0])
    queue.put_nowait(sent[1])
    await wait_until(entered.is_set)  # sent[0:2] is in flight
    for record in sent[2:7]:
        queue.put_nowait(record)  # the queue is full
    putters = [asyncio.create_task(queue.put(record)) for record in sent[7:]]
    await asyncio.sleep(0)
    assert not any(putter.done() for putter in putters)
    try:
        await queue.stop(timeout=0)
    finally:
        release.set()
    await asyncio.gather(*putters)  # their records were queued, then dead-lettered
    assert queue.dead_lettered == 10
    assert queue.depth == 0
    assert as_records(dead_letters(queue.dead_letter_path)) == sent
    assert any("abandoning" in r.getMessage() for r in caplog.records)
    # The abandoned call still commits once released: that batch is both in the database and
    # in the dead-letter file (duplicated, never lost). Then the worker closes the store.
    worker_name = f"persistence {db.name}"
    await wait_until(lambda: all(t.name != worker_name for t in threading.enumerate()))
    assert without_ids(stored(db)) == sent[:2]


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
        assert without_ids(await queue.last(10)) == first
        assert [r.id for r in await queue.after(3, 10)] == [4, 5]
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
    assert without_ids(stored(db)) == sent


async def test_put_nowait_does_not_wait_for_a_busy_worker_thread(
    make_queue: Callable[..., PersistenceQueue], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    entered = threading.Event()
    insert_many = Store.insert_many

    def slow_insert_many(self: Store, batch: list[MessageRecord]) -> None:
        entered.set()
        release.wait(10)  # the worker thread is stuck in a database call
        insert_many(self, batch)

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
    assert without_ids(stored(db)) == sent


async def test_full_queue_raises_and_put_waits_for_room(
    make_queue: Callable[..., PersistenceQueue], db: Path
) -> None:
    queue = make_queue(capacity=10)
    sent = records(0, 12)
    for record in sent[:10]:
        queue.put_nowait(record)
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(sent[10])
    assert queue.depth == 10
    waiting = asyncio.create_task(queue.put(sent[10]))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # no room until the writer runs
    await queue.start()
    await waiting
    await queue.put(sent[11])
    await queue.stop()
    assert without_ids(stored(db)) == sent


async def test_put_after_stop_is_refused(make_queue: Callable[..., PersistenceQueue]) -> None:
    queue = make_queue()
    await queue.start()
    await queue.stop()
    await queue.stop()  # idempotent
    record = records(0, 1)[0]
    with pytest.raises(PersistenceClosed):
        queue.put_nowait(record)
    with pytest.raises(PersistenceClosed):
        await queue.put(record)
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
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
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
