"""Archive: where the Redis engine also writes every message, and reads history older than its
streams (issue 13, the original roadmap's durable background queue).

``open_archive(db)`` chooses the database: a ``postgresql://`` (or ``postgres://``) URL for
servers on several hosts, anything else a SQLite file for servers on one host. Both keep the
``messages`` table of ``server.store``: the same columns, ``(channel, seq)`` unique. Seqs come
from Redis, so a write is idempotent: a record whose (channel, seq) is stored is left alone, and
a batch read again from a stream after a crash is written once. The caller retries a failed
write with backoff on the ``retryable`` errors and finally dead-letters it; ``RecordRejected``
(a record the database refuses) is not worth a retry. Read positions are not archived: Redis
keeps them.

SQLite: ``server.store.Store`` in a thread of its own (``worker.Worker``), as the local engine's
queue runs it: WAL, a busy timeout long enough for the other servers' transactions. Every
process on the file takes a shared lock of ``<db>.lock`` (``persistence.lock_database``), so
several servers in Redis mode share it, while the local engine's exclusive lock keeps them
apart: a local-engine server on a file that Redis-mode servers archive to refuses to start, and
so does a Redis-mode server on a local engine's file (``DatabaseInUse``), since either would
fork the other's seqs.

PostgreSQL: psycopg 3's asyncio connections (the ``postgres`` extra, imported only for a URL),
one for writes and one for reads, each opened when first needed and again after it broke (a
database restarted, a network cut): the next attempt reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .persistence import RECORD_ERRORS, RETRYABLE_ERRORS, RecordRejected, lock_database, rejecting
from .store import COLUMNS, MessageRecord, Store, as_row, from_row, last_prunable
from .worker import Worker

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

__all__ = [
    "Archive",
    "PostgresArchive",
    "RecordRejected",
    "SqliteArchive",
    "open_archive",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_MISSING_PSYCOPG = (
    "--db postgresql:// needs psycopg: python -m pip install 'rfc6455-chat[postgres]'"
)
# Several servers write the file: a transaction waits for another's (a few milliseconds each)
# rather than fail its attempt and back off for a second or more.
_SQLITE_BUSY_TIMEOUT = 5.0
# A connection attempt gives up after this many seconds unless the URL says otherwise (psycopg
# waits 130 s): the call fails sooner, and the caller's retry tries again.
_CONNECT_TIMEOUT = 10
# PostgreSQL's bigint bounds: "no limit" on seqs or bytes in the reads' parameters.
_PG_MAX = 2**63 - 1
_PG_MIN = -(2**63)


class Archive(Protocol):
    """The database every message is also written to, and history is read from."""

    @property
    def retryable(self) -> tuple[type[BaseException], ...]:
        """The errors of a call worth retrying (an outage, a lock), for ``retry.retry``."""

    async def start(self) -> None:
        """Open the database and create the schema if it is missing."""

    async def close(self) -> None:
        """Close the database; the archive cannot be used afterwards. Idempotent."""

    async def write(self, records: Sequence[MessageRecord]) -> None:
        """Store the records, in one transaction: all of them or, on error, none.

        A record whose (channel, seq) is stored already is left alone.

        Raises:
            RecordRejected: If a record is refused by the database (nothing was written).
            Exception: One of ``retryable`` if the database failed; nothing was written.
        """

    async def after(
        self, channel: str, since: int, through: int, most: int, max_bytes: int | None
    ) -> list[MessageRecord] | None:
        """The stored records of ``channel`` with ``since < seq <= through``, oldest first.

        Returns:
            None if one of those seqs is not stored (not archived yet, or deleted), or if they
            are more than ``most`` or their texts more than ``max_bytes`` UTF-8 bytes.
        """

    async def last(
        self, channel: str, limit: int, max_bytes: int, through: int | None = None
    ) -> list[MessageRecord]:
        """The latest ``limit`` stored records of ``channel`` (up to ``through``), oldest first.

        Read newest first, no further than the first whose text does not fit in what is left
        of ``max_bytes`` (UTF-8 bytes), as ``Store.last`` does.
        """

    async def begin(self, channel: str, floor: int) -> None:
        """Record that a new epoch of ``channel`` numbers its messages after ``floor`` (a
        channel's recorded floor only grows)."""

    async def floor(self, channel: str) -> int | None:
        """The highest of ``channel``'s archived seqs and recorded floors (``begin``): where
        a new epoch must go on after, so that no seq is used twice; None if the archive knows
        nothing of the channel (its first epoch)."""

    async def prune(self, channel: str, keep: int | None, before: str | None, limit: int) -> int:
        """Delete the oldest records of ``channel`` that retention no longer keeps (``keep``
        or more seqs below its last, or created before ``before``), at most ``limit``, as
        ``Store.prune`` does; returns the highest seq deleted, or 0."""


def open_archive(db: str | os.PathLike[str]) -> Archive:
    """The archive ``db`` names: a PostgreSQL URL (``postgresql://``, ``postgres://``) or a
    SQLite file.

    Raises:
        ImportError: For a URL, if psycopg is missing; its one line names the extra to install.
    """
    if isinstance(db, str) and db.startswith(_POSTGRES_SCHEMES):
        return PostgresArchive(db)
    return SqliteArchive(db)


async def _whole(
    read: Callable[[int], Awaitable[list[MessageRecord]]], since: int, through: int, most: int
) -> list[MessageRecord] | None:
    """``Archive.after``: ``read(n)`` reads at most the ``n`` seqs after ``since`` that fit;
    seqs are consecutive, so they are all there if ``n`` came back."""
    wanted = through - since
    if wanted > most:
        return None
    if wanted <= 0:
        return []
    records = await read(wanted)
    return records if len(records) == wanted else None


class SqliteArchive:
    """An archive in a SQLite file, shared by the servers of one host (``Archive``).

    Args:
        path: The database file; its folder must exist when ``start()`` is called.
        busy_timeout: Seconds a transaction waits for another server's before it fails.
    """

    retryable = RETRYABLE_ERRORS

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = _SQLITE_BUSY_TIMEOUT
    ) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._lock: int | None = None
        self._worker: Worker | None = None
        self._store: Store | None = None
        self._started = False

    async def start(self) -> None:
        """Take the shared lock, open the file in a new worker thread, create the tables.

        Raises:
            DatabaseInUse: If a server with the local engine has the file.
            sqlite3.Error: If the database cannot be opened (a missing folder, a directory...).
            RuntimeError: If the archive was started before.
        """
        if self._started:
            raise RuntimeError("an archive can only be started once")
        self._started = True
        self._lock = lock_database(self.path, shared=True)
        worker = Worker(f"archive {self.path.name}")
        worker.start()
        try:
            store = await worker.call(partial(Store, self.path, busy_timeout=self._busy_timeout))
        except BaseException:
            worker.shutdown(final=self._unlock)  # once the thread is done with the file
            raise
        self._worker, self._store = worker, store

    async def close(self) -> None:
        worker, store = self._worker, self._store
        self._worker = self._store = None
        if worker is None or store is None:
            return

        def close() -> None:
            store.close()
            self._unlock()

        try:
            await worker.call(close)
        finally:
            worker.shutdown()

    async def write(self, records: Sequence[MessageRecord]) -> None:
        worker, store = self._open()
        if records:
            # A copy: the caller may change its sequence while the thread writes.
            await worker.call(partial(rejecting, partial(store.insert_new, list(records))))

    async def after(
        self, channel: str, since: int, through: int, most: int, max_bytes: int | None
    ) -> list[MessageRecord] | None:
        worker, store = self._open()

        async def read(n: int) -> list[MessageRecord]:
            rows = await worker.call(
                partial(
                    store.after, since, n, through=through, max_bytes=max_bytes, channel=channel
                )
            )
            return rows.records

        return await _whole(read, since, through, most)

    async def last(
        self, channel: str, limit: int, max_bytes: int, through: int | None = None
    ) -> list[MessageRecord]:
        worker, store = self._open()
        rows = await worker.call(
            partial(store.last, limit, max_bytes=max_bytes, channel=channel, through=through)
        )
        return rows.records

    async def begin(self, channel: str, floor: int) -> None:
        worker, store = self._open()
        await worker.call(partial(store.begin, channel, floor))

    async def floor(self, channel: str) -> int | None:
        worker, store = self._open()
        found: int | None = await worker.call(partial(store.floor, channel))
        return found

    async def prune(self, channel: str, keep: int | None, before: str | None, limit: int) -> int:
        worker, store = self._open()
        job = partial(store.prune, keep=keep, before=before, limit=limit, channel=channel)
        last: int = await worker.call(job)
        return last

    def _open(self) -> tuple[Worker, Store]:
        if self._worker is None or self._store is None:
            raise RuntimeError("the archive is not open")
        return self._worker, self._store

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


# The columns quoted: "user" is a reserved word in PostgreSQL.
_PG_COLUMNS = ", ".join(f'"{column}"' for column in COLUMNS)
# The unique constraint's index on (channel, seq) serves both reads: a range of one channel's
# seqs, in either order.
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq           BIGINT NOT NULL,
    connection_id TEXT NOT NULL,
    message       TEXT NOT NULL,
    timestamp     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    client_msg_id TEXT,
    "user"        TEXT,
    channel       TEXT NOT NULL DEFAULT 'general',
    client_id     TEXT,
    name          TEXT,
    UNIQUE (channel, seq)
);
CREATE TABLE IF NOT EXISTS epoch_floors (
    channel TEXT PRIMARY KEY,
    floor   BIGINT NOT NULL
)
"""
# Servers starting together create the table one at a time (IF NOT EXISTS alone can race):
# any constant names the lock; this one is RFC 6455's and issue 13's.
_PG_SCHEMA_LOCK = 6455_13
_PG_INSERT = (
    f"INSERT INTO messages ({_PG_COLUMNS}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
    " ON CONFLICT (channel, seq) DO NOTHING"
)


def _pg_range(order: str) -> str:
    """The query of a channel's seqs in a range, read in ``order`` while their texts fit,
    returned oldest first.

    The server keeps the running sum of the texts' UTF-8 bytes (the database's encoding is
    UTF-8) and sends only the rows within the budget: no row past the first that does not fit,
    and never more than the budget (and one row's worth) over the network.
    """
    return (
        f"SELECT {_PG_COLUMNS} FROM (SELECT {_PG_COLUMNS}, sum(octet_length(message))"
        f" OVER (ORDER BY seq {order}) AS total FROM messages"
        f" WHERE channel = %s AND seq > %s AND seq <= %s ORDER BY seq {order} LIMIT %s) AS r"
        " WHERE total <= %s ORDER BY seq"
    )


_PG_BEGIN = (
    "INSERT INTO epoch_floors (channel, floor) VALUES (%s, %s)"
    " ON CONFLICT (channel) DO UPDATE SET floor = GREATEST(epoch_floors.floor, excluded.floor)"
)
_PG_FLOOR = (
    "SELECT max(seq) FROM (SELECT max(seq) AS seq FROM messages WHERE channel = %s"
    " UNION ALL SELECT floor FROM epoch_floors WHERE channel = %s) AS known"
)
_PG_OLDEST = "SELECT seq, created_at FROM messages WHERE channel = %s ORDER BY seq LIMIT %s"
_PG_TOP = "SELECT max(seq) FROM messages WHERE channel = %s"
_PG_PRUNE = "DELETE FROM messages WHERE channel = %s AND seq <= %s"
_PG_AFTER = _pg_range("ASC")
_PG_LAST = _pg_range("DESC")


class PostgresArchive:
    """An archive in a PostgreSQL database, shared by servers on any host (``Archive``).

    Args:
        url: A ``postgresql://`` URL (libpq's).

    Raises:
        ImportError: If psycopg is missing; its one line names the extra to install.
    """

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise ImportError(_MISSING_PSYCOPG) from None
        from psycopg.conninfo import conninfo_to_dict

        self.url = url
        self.retryable: tuple[type[BaseException], ...] = (psycopg.Error, OSError)
        # Errors a record causes: a value PostgreSQL refuses (a NUL character, a seq over 64
        # bits), a constraint; or one Python cannot encode (a lone surrogate), as for SQLite.
        self._rejected: tuple[type[BaseException], ...] = (
            psycopg.DataError,
            psycopg.IntegrityError,
            *(error for error in RECORD_ERRORS if not issubclass(error, sqlite3.Error)),
        )
        options: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in conninfo_to_dict(url):
            options["connect_timeout"] = _CONNECT_TIMEOUT
        connect = partial(psycopg.AsyncConnection.connect, url, **options)
        self._not_utf8 = psycopg.NotSupportedError
        self._writes = _Connection(connect)
        self._reads = _Connection(connect)
        self._closed = False

    async def start(self) -> None:
        """Connect and create the table if it is missing.

        Raises:
            psycopg.NotSupportedError: If the database's encoding is not UTF-8.
            psycopg.Error: If the database cannot be reached or the table created.
        """
        async with self._use(self._writes) as conn:
            encoding = conn.info.parameter_status("server_encoding")
            if encoding != "UTF8":
                raise self._not_utf8(
                    f"the database's encoding is {encoding}, not UTF8: create it with"
                    " ENCODING 'UTF8' (texts are measured in UTF-8 bytes)"
                )
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
                await conn.execute(_PG_SCHEMA)

    async def close(self) -> None:
        self._closed = True
        await self._writes.close()
        await self._reads.close()

    async def write(self, records: Sequence[MessageRecord]) -> None:
        if not records:
            return
        rows = [as_row(record) for record in records]
        async with self._use(self._writes) as conn:
            try:
                # executemany: one round trip for the batch (psycopg's pipeline mode).
                async with conn.transaction(), conn.cursor() as cursor:
                    await cursor.executemany(_PG_INSERT, rows)
            except self._rejected as exc:
                raise RecordRejected(str(exc)) from exc

    async def after(
        self, channel: str, since: int, through: int, most: int, max_bytes: int | None
    ) -> list[MessageRecord] | None:
        budget = _PG_MAX if max_bytes is None else max_bytes
        read = partial(self._query, _PG_AFTER, channel, since, through, budget=budget)
        return await _whole(read, since, through, most)

    async def last(
        self, channel: str, limit: int, max_bytes: int, through: int | None = None
    ) -> list[MessageRecord]:
        if limit <= 0:
            return []
        top = _PG_MAX if through is None else through
        return await self._query(_PG_LAST, channel, _PG_MIN, top, limit, budget=max_bytes)

    async def begin(self, channel: str, floor: int) -> None:
        async with self._use(self._writes) as conn:
            await conn.execute(_PG_BEGIN, (channel, floor))

    async def floor(self, channel: str) -> int | None:
        async with self._use(self._reads) as conn:
            cursor = await conn.execute(_PG_FLOOR, (channel, channel))
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def prune(self, channel: str, keep: int | None, before: str | None, limit: int) -> int:
        async with self._use(self._writes) as conn, conn.transaction():
            cursor = await conn.execute(_PG_OLDEST, (channel, limit))
            oldest = [(seq, created_at) for seq, created_at in await cursor.fetchall()]
            bound = 0
            if keep is not None:
                cursor = await conn.execute(_PG_TOP, (channel,))
                row = await cursor.fetchone()
                bound = (row[0] if row is not None and row[0] is not None else 0) - keep
            last = last_prunable(oldest, bound, before)
            if last:
                await conn.execute(_PG_PRUNE, (channel, last))
            return last

    async def _query(
        self, sql: str, channel: str, since: int, through: int, limit: int, *, budget: int
    ) -> list[MessageRecord]:
        async with self._use(self._reads) as conn:
            cursor = await conn.execute(sql, (channel, since, through, limit, budget))
            return [from_row(row) for row in await cursor.fetchall()]

    def _use(
        self, connection: _Connection
    ) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[TupleRow]]:
        if self._closed:
            raise RuntimeError("the archive is closed")
        return connection.use()


class _Connection:
    """One connection, opened when first needed and again once it failed.

    One task at a time uses it, for a whole transaction: psycopg locks each query, not the
    transaction around them.
    """

    def __init__(self, connect: Callable[[], Awaitable[psycopg.AsyncConnection[TupleRow]]]) -> None:
        self._connect = connect
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await self._connect()
            conn = self._conn
            try:
                yield conn
            except BaseException:
                # Broken, or cut short in a transaction by a cancellation: whichever it was,
                # the next use starts on a fresh connection.
                self._conn = None
                await conn.close()
                raise

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()
