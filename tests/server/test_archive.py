"""Tests for server.archive on a real SQLite file and a real PostgreSQL server.

One suite runs on both (``archive`` is parametrised): each test has a SQLite file or a
PostgreSQL database of its own. Then what only one of them has: PostgreSQL restarted between two
writes, psycopg missing, a database not in UTF-8; the SQLite file's locks against the local
engine's queue, both ways.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from server.archive import (
    Archive,
    PostgresArchive,
    RecordRejected,
    SqliteArchive,
    open_archive,
)
from server.persistence import DatabaseInUse, PersistenceQueue
from server.retry import RetryPolicy, retry
from server.store import MessageRecord
from tests.server.postgres_service import PostgresService


def record(seq: int, text: str | None = None, channel: str = "general") -> MessageRecord:
    """Message ``seq`` of ``channel``; its text is ``message <seq>`` unless given."""
    return MessageRecord.create(
        "c1", f"message {seq}" if text is None else text, seq=seq, channel=channel
    )


def seqs(records: list[MessageRecord] | None) -> list[int] | None:
    return None if records is None else [r.seq for r in records]


async def create_database(service: PostgresService, name: str, *options: str) -> str:
    """Create a database on the server and return its URL."""
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(service.url, autocommit=True) as conn:
        statement = sql.SQL("CREATE DATABASE {} " + " ".join(options)).format(sql.Identifier(name))
        await conn.execute(statement)
    return service.url_of(name)


@dataclass
class Opener:
    """Archives on one database, each started when made and closed at teardown."""

    db: str
    opened: list[Archive]

    async def __call__(self) -> Archive:
        archive = open_archive(self.db)
        self.opened.append(archive)
        await archive.start()
        return archive


@pytest.fixture(params=["sqlite", "postgresql"])
async def opener(
    request: pytest.FixtureRequest, tmp_path: Path, loop_errors: list[dict[str, Any]]
) -> AsyncIterator[Opener]:
    """Opens archives on a database of the test's own: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        db = str(tmp_path / "archive.db")
    else:
        service: PostgresService = request.getfixturevalue("postgres")
        db = await create_database(service, f"test_{uuid.uuid4().hex}")
    opener = Opener(db, [])
    yield opener
    for archive in opener.opened:
        await archive.close()


@pytest.fixture
async def archive(opener: Opener) -> Archive:
    return await opener()


# Writes


async def test_a_batch_written_twice_is_stored_once(archive: Archive) -> None:
    batch = [record(1), record(2), record(3)]
    await archive.write(batch)
    await archive.write(batch)
    # Overlapping, and with other texts for the stored seqs: those are left alone.
    fourth = record(4)
    await archive.write([record(3, "another text"), fourth])
    assert await archive.last("general", 10, 10_000) == [*batch, fourth]


async def test_every_field_round_trips(archive: Archive) -> None:
    full = MessageRecord.create(
        "c7",
        "hello",
        seq=5,
        client_msg_id="m-5",
        user="alice",
        channel="news",
        client_id="k-1",
        name="Alice",
    )
    bare = record(6, channel="news")
    await archive.write([full, bare])
    assert await archive.last("news", 10, 10_000) == [full, bare]
    assert await archive.after("news", 4, 6, 10, None) == [full, bare]


async def test_writing_nothing_is_a_no_op(archive: Archive) -> None:
    await archive.write([])
    assert await archive.last("general", 10, 10_000) == []


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(record(3, "lone \udc00 surrogate"), id="text-not-unicode"),
        pytest.param(record(2**63), id="seq-over-64-bits"),
    ],
)
async def test_a_write_is_all_or_nothing(archive: Archive, bad: MessageRecord) -> None:
    await archive.write([record(1)])
    with pytest.raises(RecordRejected) as caught:
        await archive.write([record(2), bad, record(4)])
    assert caught.value.__cause__ is not None
    assert not isinstance(caught.value, archive.retryable)
    assert seqs(await archive.last("general", 10, 10_000)) == [1]
    # Still usable after the failed transaction.
    await archive.write([record(2), record(3)])
    assert seqs(await archive.last("general", 10, 10_000)) == [1, 2, 3]


# Reads


async def test_after_reads_a_range_oldest_first(archive: Archive) -> None:
    await archive.write([record(n) for n in range(1, 11)])
    assert seqs(await archive.after("general", 3, 7, 10, None)) == [4, 5, 6, 7]
    assert seqs(await archive.after("general", 0, 10, 10, None)) == list(range(1, 11))
    assert await archive.after("general", 10, 10, 10, None) == []
    assert await archive.after("general", 0, 0, 0, 0) == []


async def test_after_is_none_across_a_gap(archive: Archive) -> None:
    await archive.write([record(n) for n in (1, 2, 3, 5, 6)])
    assert await archive.after("general", 0, 6, 100, None) is None
    assert await archive.after("general", 3, 5, 100, None) is None
    assert seqs(await archive.after("general", 0, 3, 100, None)) == [1, 2, 3]
    assert seqs(await archive.after("general", 4, 6, 100, None)) == [5, 6]


async def test_after_is_none_past_what_is_archived(archive: Archive) -> None:
    await archive.write([record(n) for n in range(1, 6)])
    assert await archive.after("general", 0, 8, 100, None) is None
    assert await archive.after("general", 5, 6, 100, None) is None
    assert await archive.after("nowhere", 0, 1, 100, None) is None


async def test_after_is_none_over_most_or_max_bytes(archive: Archive) -> None:
    # Ten texts of ten bytes each.
    await archive.write([record(n, f"text {n:05}") for n in range(1, 11)])
    assert await archive.after("general", 0, 10, 9, None) is None
    assert seqs(await archive.after("general", 0, 10, 10, None)) == list(range(1, 11))
    assert await archive.after("general", 0, 10, 10, 99) is None
    assert seqs(await archive.after("general", 0, 10, 10, 100)) == list(range(1, 11))
    assert seqs(await archive.after("general", 8, 10, 2, 20)) == [9, 10]


async def test_last_reads_the_latest_oldest_first_within_its_bounds(archive: Archive) -> None:
    await archive.write([record(n, f"text {n:05}") for n in range(1, 11)])
    assert seqs(await archive.last("general", 3, 10_000)) == [8, 9, 10]
    assert seqs(await archive.last("general", 100, 10_000)) == list(range(1, 11))
    assert seqs(await archive.last("general", 100, 25)) == [9, 10]
    assert seqs(await archive.last("general", 100, 30)) == [8, 9, 10]
    assert seqs(await archive.last("general", 2, 10_000, through=5)) == [4, 5]
    assert await archive.last("general", 0, 10_000) == []
    assert await archive.last("general", 10, 9) == []
    assert await archive.last("nowhere", 10, 10_000) == []


async def test_last_reads_no_further_than_the_first_text_that_does_not_fit(
    archive: Archive,
) -> None:
    await archive.write([record(1, "a"), record(2, "x" * 100), record(3, "b")])
    assert seqs(await archive.last("general", 10, 50)) == [3]


async def test_channels_are_apart(archive: Archive) -> None:
    await archive.write([record(1), record(1, "news 1", "news"), record(2), record(2, "n", "news")])
    await archive.write([record(3, channel="news")])
    assert seqs(await archive.last("general", 10, 10_000)) == [1, 2]
    assert [r.message for r in await archive.last("news", 10, 10_000)] == [
        "news 1",
        "n",
        "message 3",
    ]
    assert seqs(await archive.after("news", 0, 3, 10, None)) == [1, 2, 3]
    assert await archive.after("general", 0, 3, 10, None) is None


async def test_texts_are_measured_in_utf8_bytes(archive: Archive) -> None:
    text = "héllo 🌍 中文"
    size = len(text.encode())  # 17 bytes for 10 characters
    stored = record(1, text)
    await archive.write([stored])
    assert await archive.last("general", 1, size) == [stored]
    assert await archive.after("general", 0, 1, 1, size) == [stored]
    assert await archive.last("general", 1, size - 1) == []
    assert await archive.after("general", 0, 1, 1, size - 1) is None


async def test_a_large_text_round_trips(archive: Archive) -> None:
    text = "ß" * 500_000 + "\n\t🎉"  # a MiB of UTF-8
    await archive.write([record(1, text), record(2)])
    stored = await archive.after("general", 0, 2, 2, None)
    assert stored is not None
    assert stored[0].message == text


# Life cycle


async def test_what_is_written_is_there_after_a_reopen(opener: Opener) -> None:
    first = await opener()
    batch = [record(1), record(2, channel="news")]
    await first.write(batch)
    await first.close()
    second = await opener()
    assert await second.last("general", 10, 10_000) == batch[:1]
    assert await second.after("news", 0, 2, 10, None) is None
    assert await second.last("news", 10, 10_000) == batch[1:]


async def test_archives_on_one_database_write_side_by_side(opener: Opener) -> None:
    """Two servers: the same batch from both (a claimed stream entry) is stored once."""
    one, two = await opener(), await opener()
    await one.write([record(1), record(2)])
    await two.write([record(2), record(3)])
    await one.write([record(3), record(4)])
    assert seqs(await two.last("general", 10, 10_000)) == [1, 2, 3, 4]
    assert seqs(await one.after("general", 0, 4, 10, None)) == [1, 2, 3, 4]


async def test_a_channels_floor_is_its_highest_seq_or_epoch_floor(opener: Opener) -> None:
    first = await opener()
    assert await first.floor("room") is None  # never heard of: a first epoch starts at 0
    await first.begin("room", 0)
    assert await first.floor("room") == 0  # known now, though it holds no message
    await first.write([record(5, channel="room"), record(9)])
    assert await first.floor("room") == 5
    await first.begin("room", 100_005)
    await first.begin("room", 7)  # a floor only grows
    assert await first.floor("room") == 100_005
    await first.write([record(100_006, channel="room")])
    assert await first.floor("room") == 100_006
    assert await first.floor("general") == 9
    await first.close()
    second = await opener()  # recorded in the database, for every server
    assert await second.floor("room") == 100_006
    assert await second.floor("news") is None


async def test_close_is_idempotent_and_final(archive: Archive) -> None:
    await archive.close()
    await archive.close()
    with pytest.raises(RuntimeError):
        await archive.write([record(1)])
    with pytest.raises(RuntimeError):
        await archive.last("general", 1, 100)


# Choosing


def test_open_archive_chooses_by_the_url(tmp_path: Path) -> None:
    assert isinstance(open_archive("postgresql://user@host/db"), PostgresArchive)
    assert isinstance(open_archive("postgres://host/db"), PostgresArchive)
    assert isinstance(open_archive(str(tmp_path / "messages.db")), SqliteArchive)
    assert isinstance(open_archive(tmp_path / "postgresql:"), SqliteArchive)


@pytest.mark.parametrize("url", ["postgresql://host/db", "postgres://host/db"])
def test_without_psycopg_one_line_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    with pytest.raises(ImportError) as caught:
        open_archive(url)
    assert str(caught.value) == (
        "--db postgresql:// needs psycopg: python -m pip install 'rfc6455-chat[postgres]'"
    )


# PostgreSQL only


async def test_postgres_restarted_between_two_writes(
    postgres: PostgresService, loop_errors: list[dict[str, Any]]
) -> None:
    import psycopg

    archive = open_archive(await create_database(postgres, f"test_{uuid.uuid4().hex}"))
    await archive.start()
    try:
        await archive.write([record(1)])
        assert seqs(await archive.last("general", 10, 10_000)) == [1]
        postgres.restart()  # both connections, the writes' and the reads', break
        failures: list[BaseException] = []
        again = partial(
            retry,
            policy=RetryPolicy(attempts=3, base_delay=0),
            retry_on=archive.retryable,
            on_failure=lambda attempt, exc: failures.append(exc),
        )
        await again(partial(archive.write, [record(2)]))
        stored = await again(partial(archive.last, "general", 10, 10_000))
        assert seqs(stored) == [1, 2]
        # One failed attempt each, on the connection the restart broke; then a new one.
        assert [isinstance(exc, psycopg.OperationalError) for exc in failures] == [True, True]
    finally:
        await archive.close()


async def test_postgres_refuses_a_nul_character_as_a_record_fault(
    postgres: PostgresService, loop_errors: list[dict[str, Any]]
) -> None:
    archive = open_archive(await create_database(postgres, f"test_{uuid.uuid4().hex}"))
    await archive.start()
    try:
        with pytest.raises(RecordRejected):
            await archive.write([record(1), record(2, "nul \x00 inside")])
        assert await archive.last("general", 10, 10_000) == []
    finally:
        await archive.close()


async def test_postgres_database_not_in_utf8_is_refused(
    postgres: PostgresService, loop_errors: list[dict[str, Any]]
) -> None:
    import psycopg

    url = await create_database(
        postgres, f"test_{uuid.uuid4().hex}", "ENCODING 'LATIN1'", "TEMPLATE template0"
    )
    archive = open_archive(url)
    with pytest.raises(psycopg.NotSupportedError, match="encoding is LATIN1, not UTF8"):
        await archive.start()
    await archive.close()


# SQLite only: one file, the local engine's queue or archives


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "messages.db"


async def test_a_local_engine_refuses_a_file_archives_use(
    db: Path, loop_errors: list[dict[str, Any]]
) -> None:
    archives = [SqliteArchive(db), SqliteArchive(db)]  # several servers in Redis mode
    for archive in archives:
        await archive.start()
    queue = PersistenceQueue(db)
    with pytest.raises(DatabaseInUse) as caught:
        await queue.start()
    message = str(caught.value)
    assert message.startswith(f"{db} is the archive of servers with the Redis engine (pid ")
    assert "\n" not in message
    for archive in archives:
        await archive.close()
    queue = PersistenceQueue(db)
    await queue.start()  # the locks went with the archives
    await queue.stop()


async def test_an_archive_refuses_a_local_engines_file(
    db: Path, loop_errors: list[dict[str, Any]]
) -> None:
    queue = PersistenceQueue(db)
    await queue.start()
    archive = SqliteArchive(db)
    with pytest.raises(DatabaseInUse) as caught:
        await archive.start()
    assert str(caught.value) == (
        f"{db} is in use by a server with the local engine (pid {os.getpid()}), which numbers"
        " its own seqs: stop it, or give this one another --db"
    )
    await queue.stop()
    archive = SqliteArchive(db)
    await archive.start()  # the lock went with the queue
    await archive.write([record(1)])
    await archive.close()


async def test_sqlite_archive_cannot_start_twice(db: Path) -> None:
    archive = SqliteArchive(db)
    await archive.start()
    try:
        with pytest.raises(RuntimeError, match="only be started once"):
            await archive.start()
    finally:
        await archive.close()


async def test_sqlite_archive_in_a_missing_folder_fails_to_start(tmp_path: Path) -> None:
    archive = SqliteArchive(tmp_path / "missing" / "messages.db")
    with pytest.raises(sqlite3.OperationalError, match="cannot lock"):
        await archive.start()
    await archive.close()


async def test_retention_deletes_the_oldest_beyond_a_count(archive: Archive) -> None:
    await archive.write([record(n) for n in range(1, 11)])
    await archive.write([record(n, channel="other") for n in range(1, 4)])
    assert await archive.prune("general", 3, None, 4) == 4  # at most 4 a call
    assert await archive.prune("general", 3, None, 100) == 7
    assert await archive.prune("general", 3, None, 100) == 0
    assert seqs(await archive.last("general", 100, 10_000)) == [8, 9, 10]
    assert await archive.after("general", 5, 10, 100, None) is None  # 6 and 7 are gone
    assert seqs(await archive.last("other", 100, 10_000)) == [1, 2, 3]


async def test_retention_deletes_the_oldest_run_before_an_age(archive: Archive) -> None:
    old = [replace(record(n), created_at="2020-01-01T00:00:00.000000+00:00") for n in (1, 2)]
    await archive.write([*old, record(3), record(4)])
    assert await archive.prune("general", None, "2021-01-01T00:00:00+00:00", 100) == 2
    assert seqs(await archive.last("general", 100, 10_000)) == [3, 4]
