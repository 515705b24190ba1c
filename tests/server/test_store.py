"""Tests for server.store on real SQLite files: schema, atomic batches, reads, reopening."""

from __future__ import annotations

import re
import shutil
import sqlite3
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from server.store import MessageRecord, Meta, Store


def record(n: int, connection_id: str = "c1") -> MessageRecord:
    """Message ``n``, with seq ``n``."""
    return MessageRecord.create(connection_id, f"message {n}", seq=n)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "messages.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    db.parent.mkdir()
    with Store(db) as store:
        yield store


def rows(db: Path) -> list[tuple[int, str, str, str, str, str | None]]:
    """Read the table through an independent connection."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT * FROM messages ORDER BY seq").fetchall()
    finally:
        conn.close()


# MessageRecord


def test_record_create_uses_one_utc_instant() -> None:
    now = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone(timedelta(hours=2)))
    rec = MessageRecord.create("c1", "hi", seq=3, client_msg_id="m", now=now)
    assert rec == MessageRecord(
        "c1", "hi", "2024-02-29 21:59:58", "2024-02-29T21:59:58.123456+00:00", 3, "m"
    )


def test_record_create_defaults_to_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    rec = MessageRecord.create("c1", "hi", seq=1)
    assert rec.client_msg_id is None
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", rec.timestamp)
    created = datetime.fromisoformat(rec.created_at)
    assert created.utcoffset() == timedelta(0)
    assert created >= before
    assert rec.timestamp == created.strftime("%Y-%m-%d %H:%M:%S")


# Schema


def test_schema(store: Store, db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        columns = conn.execute("PRAGMA table_info(messages)").fetchall()
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'messages'").fetchone()
        (journal_mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    finally:
        conn.close()
    # (name, type, notnull, primary key)
    assert [(c[1], c[2], c[3], c[5]) for c in columns] == [
        ("seq", "INTEGER", 1, 0),
        ("connection_id", "TEXT", 1, 0),
        ("message", "TEXT", 1, 0),
        ("timestamp", "TEXT", 1, 0),
        ("created_at", "TEXT", 1, 0),
        ("client_msg_id", "TEXT", 0, 0),
        ("user", "TEXT", 0, 0),
        ("channel", "TEXT", 1, 0),
        ("client_id", "TEXT", 0, 0),
        ("name", "TEXT", 0, 0),
    ]
    assert "UNIQUE (channel, seq)" in sql
    assert "AUTOINCREMENT" not in sql  # the server assigns seqs, SQLite never does
    assert journal_mode == "wal"
    # FULL: a commit is fsynced, so an acknowledged message survives a power loss.
    assert store._conn is not None
    (synchronous,) = store._conn.execute("PRAGMA synchronous").fetchone()
    assert synchronous == 2


def test_reopening_an_existing_database_keeps_its_messages(db: Path) -> None:
    db.parent.mkdir()
    with Store(db) as store:
        store.insert_many([record(1), record(2)])
    with Store(db) as store:
        assert [r.message for r in store.last(10).records] == ["message 1", "message 2"]


def test_missing_folder_fails_to_open(db: Path) -> None:
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        Store(db)


# insert_many


def test_insert_many_stores_every_field(store: Store, db: Path) -> None:
    records = [record(n, f"c{n % 3}") for n in range(1, 11)]
    records.append(MessageRecord.create("c1", "with an id", seq=12, client_msg_id="m-12"))
    store.insert_many(records)
    stored = rows(db)
    assert [row[0] for row in stored] == [*range(1, 11), 12]
    assert [MessageRecord(*row[1:5], row[0], row[5]) for row in stored] == records


def test_insert_many_of_nothing_is_a_no_op(store: Store) -> None:
    store.insert_many([])
    assert store.count() == 0


def test_insert_many_is_all_or_nothing(store: Store, db: Path) -> None:
    store.insert_many([record(0)])
    bad = MessageRecord("c1", None, "2024-01-01 00:00:00", "2024-01-01T00:00:00+00:00", 9)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        store.insert_many([record(1), record(2), bad, record(3)])
    assert [row[2] for row in rows(db)] == ["message 0"]
    # The store is still usable after the failed transaction.
    store.insert_many([record(4)])
    assert [row[2] for row in rows(db)] == ["message 0", "message 4"]


def test_insert_many_fails_fast_when_locked(store: Store, db: Path) -> None:
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.insert_many([record(1)])
        # WAL: readers are not blocked by the other connection's write lock.
        assert store.count() == 0
        other.execute("ROLLBACK")
    finally:
        other.close()
    store.insert_many([record(2)])
    assert store.count() == 1


TEXTS = [
    "",
    "quotes \" and ' and \\ backslashes",
    "line\nbreaks\r\nand\ttabs",
    "emoji 🎉👩‍💻 and accents éàü, 中文",
    "<script>alert('x')</script>",
    "nul \x00 inside",
    "x" * 100_000,
]


def test_any_text_round_trips(store: Store) -> None:
    store.insert_many([MessageRecord.create("c1", text, seq=n) for n, text in enumerate(TEXTS)])
    assert [r.message for r in store.last(len(TEXTS)).records] == TEXTS


# Reads


def test_last_returns_the_last_n_oldest_first(store: Store) -> None:
    store.insert_many([record(n) for n in range(1, 8)])
    last = store.last(3).records
    assert [r.message for r in last] == ["message 5", "message 6", "message 7"]
    assert [r.seq for r in last] == [5, 6, 7]
    assert len(store.last(100).records) == 7
    assert store.last(0).records == []
    assert store.last(-1).records == []


def test_last_of_an_empty_table(store: Store) -> None:
    assert store.last(5).records == []


def test_reads_stop_at_a_budget_of_bytes(store: Store) -> None:
    # 10 messages of 100 bytes of UTF-8 each (50 characters of 2 bytes).
    store.insert_many([MessageRecord.create("c", "é" * 50, seq=n) for n in range(1, 11)])
    latest = store.last(10, max_bytes=350)
    assert ([r.seq for r in latest.records], latest.complete) == ([8, 9, 10], False)
    assert store.last(11, max_bytes=1000).complete is True  # all ten, exactly 1,000 bytes
    assert store.last(5, max_bytes=1000).complete is False  # the limit cut it
    assert store.last(11).complete is True
    after = store.after(2, 10, max_bytes=250)
    assert ([r.seq for r in after.records], after.complete) == ([3, 4], False)
    through = store.after(2, 10, through=5, max_bytes=300)
    assert ([r.seq for r in through.records], through.complete) == ([3, 4, 5], True)
    assert store.after(2, 3, through=5).complete is False  # 3 of them, as many as asked


def test_a_read_within_bytes_never_holds_much_more_than_them(store: Store) -> None:
    big = "x" * 2**20
    store.insert_many([MessageRecord.create("c", big, seq=n) for n in range(1, 41)])
    tracemalloc.start()
    try:
        rows = store.last(10_000, max_bytes=2 * 2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(rows.records) == 2
    # Two messages kept and the batch being read: not the 40 MiB of the table.
    assert peak < 70 * 2**20 // 8, peak


def test_after_returns_later_messages_in_order(store: Store) -> None:
    store.insert_many([record(n) for n in range(1, 11)])
    after = store.after(4, 3).records
    assert [r.seq for r in after] == [5, 6, 7]
    assert [r.message for r in after] == ["message 5", "message 6", "message 7"]
    assert [r.seq for r in store.after(0, 100).records] == list(range(1, 11))
    assert [r.seq for r in store.after(8, 100).records] == [9, 10]
    assert [r.seq for r in store.after(3, 100, through=6).records] == [4, 5, 6]
    assert [r.seq for r in store.after(3, 2, through=6).records] == [4, 5]
    assert store.after(10, 100).records == []
    assert store.after(0, 0).records == []


def test_count(store: Store) -> None:
    assert store.count() == 0
    store.insert_many([record(n) for n in range(5)])
    store.insert_many([record(n) for n in range(5, 8)])
    assert store.count() == 8


# Reopening after the database went away


def test_reopens_after_the_folder_is_removed_and_recreated(store: Store, db: Path) -> None:
    store.insert_many([record(1)])
    shutil.rmtree(db.parent)
    # An open connection would keep writing into the unlinked file without any error.
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        store.insert_many([record(2)])
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        store.count()
    db.parent.mkdir()
    store.insert_many([record(3)])
    assert [row[2] for row in rows(db)] == ["message 3"]
    assert [r.message for r in store.last(10).records] == ["message 3"]


def test_reopens_after_the_file_is_removed(store: Store, db: Path) -> None:
    store.insert_many([record(1)])
    for path in db.parent.iterdir():
        path.unlink()
    store.insert_many([record(2)])
    assert [row[2] for row in rows(db)] == ["message 2"]


def test_reopens_after_a_directory_replaced_the_file(store: Store, db: Path) -> None:
    store.insert_many([record(1)])
    for path in db.parent.iterdir():
        path.unlink()
    db.mkdir()  # even root cannot open a directory as a database
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        store.insert_many([record(2)])
    db.rmdir()
    store.insert_many([record(3)])
    assert [row[2] for row in rows(db)] == ["message 3"]


def test_recreates_a_dropped_table(store: Store, db: Path) -> None:
    store.insert_many([record(1)])
    other = sqlite3.connect(db)
    try:
        other.execute("DROP TABLE messages")
    finally:
        other.close()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        store.count()
    store.insert_many([record(2)])  # the reopened connection created the schema again
    assert [r.message for r in store.last(10).records] == ["message 2"]


def test_a_file_that_is_not_a_database_fails_to_open(db: Path) -> None:
    db.parent.mkdir()
    db.write_bytes(b"this is not an SQLite database, just some text" * 100)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        Store(db)


def test_close_is_idempotent_and_final(db: Path) -> None:
    db.parent.mkdir()
    store = Store(db)
    store.close()
    store.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        store.insert_many([record(1)])
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        store.last(1)


# Sequence numbers, the meta row, the migration of old databases


def meta_row(db: Path) -> tuple[str, int, int]:
    conn = sqlite3.connect(db)
    try:
        row: tuple[str, int, int] = conn.execute(
            "SELECT epoch, reserved_seq, pruned_seq FROM meta"
        ).fetchone()
        return row
    finally:
        conn.close()


def channel_row(db: Path, name: str) -> tuple[str, int, int]:
    conn = sqlite3.connect(db)
    try:
        row: tuple[str, int, int] = conn.execute(
            "SELECT epoch, last_seq, pruned_seq FROM channels WHERE name = ?", (name,)
        ).fetchone()
        return row
    finally:
        conn.close()


def test_a_new_database_gets_an_epoch_that_stays(db: Path) -> None:
    db.parent.mkdir()
    with Store(db) as store:
        first = store.meta
        assert first.reserved == first.pruned == 0
        assert str(uuid.UUID(first.epoch)) == first.epoch
        store.reserve(10_000)
        assert store.meta.reserved == 10_000
    with Store(db) as store:
        # Reserved but never committed: opened as after a crash, the reservation is skipped.
        assert store.meta == Meta(first.epoch, 10_000, 0, 10_000)
        assert store.channels["general"].last == 10_000
    assert meta_row(db) == (first.epoch, 10_000, 0)
    other = db.parent / "other.db"
    with Store(other) as store:
        assert store.meta.epoch != first.epoch


def test_insert_many_records_a_reservation_in_the_same_transaction(store: Store, db: Path) -> None:
    store.insert_many([record(1)], reserve=500)
    assert meta_row(db)[1:] == (500, 0)
    bad = MessageRecord("c1", None, "t", "c", 2)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_many([bad], reserve=900)
    assert meta_row(db)[1:] == (500, 0)  # rolled back with the failed rows
    assert store.meta.reserved == 500
    store.reserve(3)  # a clean shutdown may lower it to the last seq used
    assert meta_row(db)[1:] == (3, 0)


def test_a_seq_is_never_stored_twice(store: Store) -> None:
    store.insert_many([record(1)])
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        store.insert_many([record(2), record(1)])
    assert [r.seq for r in store.last(10).records] == [1]


# insert_new: an archive's writes, numbered elsewhere


def test_insert_new_leaves_stored_records_alone(store: Store) -> None:
    first = [record(1), record(2)]
    store.insert_new(first)
    again, third = MessageRecord.create("c2", "another text, same seq", seq=2), record(3)
    store.insert_new([again, third])
    assert store.last(10).records == [*first, third]


def test_insert_new_raises_the_channels_last_seqs_to_theirs(store: Store, db: Path) -> None:
    store.insert_new([record(7), MessageRecord.create("c1", "news", seq=4, channel="news")])
    store.insert_new([record(5)])  # older: general's last seq stays
    assert store.channels["general"].last == 7
    assert store.channels["news"].last == 4
    store.close()
    with Store(db) as reopened:  # what the local engine would continue from
        assert (reopened.channels["general"].last, reopened.channels["news"].last) == (7, 4)


def test_insert_new_fails_on_other_constraints(store: Store) -> None:
    bad = MessageRecord("c1", None, "2024-01-01 00:00:00", "2024-01-01T00:00:00+00:00", 9)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        store.insert_new([record(1), bad])
    assert store.count() == 0


OLD_SCHEMA = """
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    connection_id TEXT NOT NULL,
    message       TEXT NOT NULL,
    timestamp     TEXT NOT NULL,
    created_at    TEXT NOT NULL
)
"""


def test_a_database_from_before_seqs_is_migrated(db: Path) -> None:
    """A real file with the old schema: its ids become seqs, and new seqs come after them."""
    db.parent.mkdir()
    conn = sqlite3.connect(db)
    try:
        conn.execute(OLD_SCHEMA)
        conn.executemany(
            "INSERT INTO messages (connection_id, message, timestamp, created_at)"
            " VALUES (?, ?, ?, ?)",
            [
                ("c1", f"old {n}", "2024-01-01 00:00:00", "2024-01-01T00:00:00+00:00")
                for n in range(5)
            ],
        )
        conn.execute("DELETE FROM messages WHERE id = 3")
        conn.commit()
    finally:
        conn.close()
    with Store(db) as store:
        assert store.meta.reserved == 5  # above every old id: none is given again
        assert [(r.seq, r.message, r.client_msg_id) for r in store.last(10).records] == [
            (1, "old 0", None),
            (2, "old 1", None),
            (4, "old 3", None),
            (5, "old 4", None),
        ]
        store.insert_many([MessageRecord.create("c2", "new", seq=6, client_msg_id="m")])
        epoch = store.meta.epoch
    with Store(db) as store:  # opening again migrates nothing more
        assert store.meta.epoch == epoch
        assert [r.seq for r in store.after(0, 10).records] == [1, 2, 4, 5, 6]
        assert store.last(1).records[0].client_msg_id == "m"


def test_a_file_that_comes_back_empty_keeps_the_epoch_and_reservation(
    store: Store, db: Path
) -> None:
    store.insert_many([record(1), record(2)], reserve=1000)
    epoch = store.meta.epoch
    for path in db.parent.iterdir():
        path.unlink()
    store.insert_many([record(3)])
    assert meta_row(db) == (epoch, 1000, 0)


# Retention


def aged(seq: int, days: float) -> MessageRecord:
    return MessageRecord.create(
        "c1", f"message {seq}", seq=seq, now=datetime.now(UTC) - timedelta(days=days)
    )


def test_prune_keeps_the_latest_seqs(store: Store, db: Path) -> None:
    store.insert_many([record(n) for n in range(1, 26)])
    assert store.prune(keep=10, before=None, limit=4) == 4  # small deletes
    assert store.prune(keep=10, before=None, limit=100) == 15
    assert store.prune(keep=10, before=None, limit=100) == 0
    assert [r.seq for r in store.after(0, 100).records] == list(range(16, 26))
    assert channel_row(db, "general")[2] == 15
    assert store.pruned() == 15


def test_prune_deletes_what_is_older_than_the_cut_off(store: Store) -> None:
    store.insert_many([aged(1, 40), aged(2, 31), aged(3, 29), aged(4, 0)])
    cutoff = (datetime.now(UTC) - timedelta(days=30)).isoformat(timespec="microseconds")
    assert store.prune(keep=None, before=cutoff, limit=100) == 2
    assert [r.seq for r in store.after(0, 100).records] == [3, 4]
    assert store.prune(keep=None, before=cutoff, limit=100) == 0
    assert store.prune(keep=None, before=None, limit=100) == 0


def test_servers_opening_a_new_file_together_all_open_it(tmp_path: Path) -> None:
    # Each asks for WAL mode holding a shared lock: SQLite refused all but one at once.
    for attempt in range(40):
        path = tmp_path / f"new{attempt}.db"
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_it(
            path: Path = path,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            try:
                Store(path, busy_timeout=5.0).close()
            except sqlite3.Error as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], (attempt, errors)
