"""The SQLite message store: plain synchronous ``sqlite3``, schema and queries, no asyncio.

A ``Store`` belongs to the thread that created it (``sqlite3``'s ``check_same_thread``);
``server.persistence`` creates it inside the one worker thread that does all its I/O.

The store heals itself after the database went away. Any error other than "busy" or "locked"
drops the connection, and so does finding that the file at ``path`` was removed or replaced
(an open connection would otherwise keep writing, without any error, into the unlinked file);
the next call opens the database again, creating an empty one if only the file is gone. A lock
held by another process is reported at once (``busy_timeout`` is short): the caller's retry
policy, not SQLite, decides how long to wait.

Sequence numbers: ``messages.seq`` is the primary key, assigned by the server, never by
SQLite. The one-row ``meta`` table holds the database's ``epoch`` (a random id made with it),
``reserved_seq`` (every seq handed out so far is at most this, so a restart after a crash
starts above it) and ``pruned_seq`` (the highest seq deleted by retention). A file that is gone
and comes back empty while the store runs gets the meta row it had, so seqs never go back.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["TIMESTAMP_FORMAT", "MessageRecord", "Meta", "Rows", "Store"]

logger = logging.getLogger("server.store")

#: The broadcast's ``timestamp`` (``YYYY-MM-DD HH:mm:ss`` in the original design), always UTC.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"

# ``seq`` is the primary key: the server assigns it, so rows are appended in key order.
_SCHEMA = """
CREATE TABLE messages (
    seq           INTEGER PRIMARY KEY,
    connection_id TEXT NOT NULL,
    message       TEXT NOT NULL,
    timestamp     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    client_msg_id TEXT,
    user          TEXT
)
"""
# Databases from before sequence numbers: ``id INTEGER PRIMARY KEY AUTOINCREMENT`` and no
# ``client_msg_id``. The ids were assigned in arrival order, so they become the seqs.
_MIGRATE = (
    "ALTER TABLE messages RENAME COLUMN id TO seq",
    "ALTER TABLE messages ADD COLUMN client_msg_id TEXT",
)
# Databases from before authentication: their messages have no user.
_ADD_USER = "ALTER TABLE messages ADD COLUMN user TEXT"
# One row: the database's identity, the seqs reserved so far, the highest seq pruned.
_META_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    epoch        TEXT NOT NULL,
    reserved_seq INTEGER NOT NULL,
    pruned_seq   INTEGER NOT NULL
)
"""
_INSERT = (
    "INSERT INTO messages"
    " (seq, connection_id, message, timestamp, created_at, client_msg_id, user)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS = "seq, connection_id, message, timestamp, created_at, client_msg_id, user"
# The UTF-8 bytes of a message's text, as SQLite counts them (without decoding it).
_SIZE = "length(CAST(message AS BLOB))"

# Primary result codes that mean another connection holds a lock: the connection itself is
# fine, so it is kept for the next attempt.
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One chat message, as queued and as stored (the original ``Message`` entity).

    Attributes:
        connection_id: The sender's connection id.
        message: The text, exactly as received.
        timestamp: The broadcast timestamp, ``YYYY-MM-DD HH:MM:SS`` in UTC.
        created_at: When the server received it, ISO-8601 in UTC with microseconds.
        seq: The sequence number the server gave it: its position in the chat, never reused.
        client_msg_id: The sender's id for it, if it sent a structured message with one.
        user: The sender's authenticated name, if it had one.
    """

    connection_id: str
    message: str
    timestamp: str
    created_at: str
    seq: int
    client_msg_id: str | None = None
    user: str | None = None

    @classmethod
    def create(
        cls,
        connection_id: str,
        message: str,
        *,
        seq: int,
        client_msg_id: str | None = None,
        user: str | None = None,
        now: datetime | None = None,
    ) -> MessageRecord:
        """Build a record received now, both timestamps taken from the same instant.

        Args:
            connection_id: The sender's connection id.
            message: The text.
            seq: Its sequence number.
            client_msg_id: The sender's id for the message, if any.
            user: The sender's authenticated name, if any.
            now: The instant of reception (converted to UTC); defaults to the current time.
        """
        when = datetime.now(UTC) if now is None else now.astimezone(UTC)
        return cls(
            connection_id=connection_id,
            message=message,
            timestamp=when.strftime(TIMESTAMP_FORMAT),
            created_at=when.isoformat(timespec="microseconds"),
            seq=seq,
            client_msg_id=client_msg_id,
            user=user,
        )


@dataclass(frozen=True, slots=True)
class Rows:
    """Records read, and whether they are all the query had (not cut by a limit)."""

    records: list[MessageRecord]
    complete: bool


@dataclass(frozen=True, slots=True)
class Meta:
    """The ``meta`` row of a database.

    Attributes:
        epoch: A random id made with the database: history from another epoch is not ours.
        reserved: Every seq up to this one may have been handed out; the next start uses the
            next one, so no seq is ever given twice, even after a crash.
        pruned: The highest seq deleted by retention; older messages are no longer kept.
    """

    epoch: str
    reserved: int
    pruned: int


class Store:
    """The ``messages`` and ``meta`` tables of one SQLite database file (the original repository).

    Opening a database creates its tables, or migrates a database from before sequence numbers
    (each old row keeps its ``id`` as its ``seq``), and creates its ``meta`` row if it has none:
    a new epoch and, as reserved, the highest seq stored.

    Args:
        path: The database file; its folder must exist.
        busy_timeout: Seconds SQLite waits for another connection's lock before failing.

    Raises:
        sqlite3.Error: If the database cannot be opened or its schema created.
        OSError: If the file cannot be examined after opening.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 0.1) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._closed = False
        # The meta row as last read or written: a database file that is gone and comes back
        # empty gets it again, so its seqs continue rather than start over.
        self._meta: Meta | None = None
        self._connection()

    @property
    def meta(self) -> Meta:
        """The ``meta`` row, as last read or written (the database is open: it was read then)."""
        assert self._meta is not None
        return self._meta

    def insert_many(self, records: Iterable[MessageRecord], *, reserve: int | None = None) -> None:
        """Insert records in one transaction: all of them or, on error, none.

        Args:
            records: The records to add, with their seqs.
            reserve: If given, the new reserved seq, recorded in the same transaction.

        Raises:
            sqlite3.Error: If the transaction failed; nothing was written.
            OSError: If the database file could not be examined.
        """
        rows = [
            (r.seq, r.connection_id, r.message, r.timestamp, r.created_at, r.client_msg_id, r.user)
            for r in records
        ]
        if not rows and reserve is None:
            return

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT, rows)
            if reserve is not None:
                conn.execute("UPDATE meta SET reserved_seq = ?", (reserve,))

        self._write(insert)
        if reserve is not None:
            self._meta = replace(self.meta, reserved=reserve)

    def reserve(self, seq: int) -> None:
        """Record ``seq`` as the highest seq that may be handed out (see ``Meta.reserved``)."""
        self.insert_many((), reserve=seq)

    def prune(self, *, keep: int | None, before: str | None, limit: int) -> int:
        """Delete the oldest messages past retention, at most ``limit`` of them.

        A message goes if its seq is ``keep`` or more below the highest seq, or if it was
        created before ``before``. Only a run of the oldest messages is deleted, so one call
        is a short transaction on the start of the primary key.

        Args:
            keep: How many of the latest seqs to keep; ``None`` keeps any number.
            before: ``created_at`` (ISO 8601, UTC) older messages go; ``None`` keeps any age.
            limit: The most rows deleted by this call.

        Returns:
            The highest seq deleted, or 0 if nothing was.

        Raises:
            sqlite3.Error: If the transaction failed; nothing was deleted.
            OSError: If the database file could not be examined.
        """

        def prune(conn: sqlite3.Connection) -> int:
            oldest = conn.execute(
                "SELECT seq, created_at FROM messages ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
            bound = 0
            if keep is not None:
                (top,) = conn.execute("SELECT max(seq) FROM messages").fetchone()
                bound = (top or 0) - keep
            last = 0
            for seq, created_at in oldest:
                if seq > bound and (before is None or created_at >= before):
                    break
                last = seq
            if last:
                conn.execute("DELETE FROM messages WHERE seq <= ?", (last,))
                conn.execute("UPDATE meta SET pruned_seq = max(pruned_seq, ?)", (last,))
            return last

        last = self._write(prune)
        if last:
            self._meta = replace(self.meta, pruned=max(self.meta.pruned, last))
        return last

    def last(self, n: int, *, max_bytes: int | None = None) -> Rows:
        """Return the last ``n`` messages, oldest first, within ``max_bytes`` of text.

        Args:
            n: How many messages; zero or less gives none.
            max_bytes: The most UTF-8 bytes their texts may hold; None: any. Rows are read
                newest first and no further than the first that does not fit.

        Returns:
            At most ``n`` records, in seq order, and whether those are all there are.
        """
        if n <= 0:
            return Rows([], complete=False)
        rows = self._query_within(
            f"SELECT {_COLUMNS}, {_SIZE} FROM messages ORDER BY seq DESC LIMIT ?", (n,), max_bytes
        )
        rows.records.reverse()
        return rows

    def after(
        self, seq: int, limit: int, *, through: int | None = None, max_bytes: int | None = None
    ) -> Rows:
        """Return the messages whose seq is greater than ``seq``, in seq order.

        Args:
            seq: The last seq the caller has; 0 starts from the beginning.
            limit: The most records to return; zero or less gives none.
            through: If given, the highest seq to return.
            max_bytes: The most UTF-8 bytes their texts may hold; None: any.

        Returns:
            At most ``limit`` records, in seq order, and whether the read reached the last
            message there is (``complete``) rather than ``limit`` or ``max_bytes``.
        """
        if limit <= 0:
            return Rows([], complete=False)
        if through is None:
            sql = f"SELECT {_COLUMNS}, {_SIZE} FROM messages WHERE seq > ? ORDER BY seq LIMIT ?"
            params: tuple[int, ...] = (seq, limit)
        else:
            sql = (
                f"SELECT {_COLUMNS}, {_SIZE} FROM messages"
                " WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
            )
            params = (seq, through, limit)
        return self._query_within(sql, params, max_bytes)

    def _query_within(self, sql: str, params: tuple[int, ...], max_bytes: int | None) -> Rows:
        """Run a query whose last column is ``_SIZE``, keeping rows while they fit.

        The rows are fetched one at a time, so that a query over large messages never
        holds more than ``max_bytes`` (and one row) in memory.
        """
        conn = self._connection()
        records: list[MessageRecord] = []
        room = max_bytes
        try:
            cursor = conn.execute(sql, params)
            for row in cursor:
                if room is not None:
                    room -= row[-1]
                    if room < 0:
                        cursor.close()
                        return Rows(records, complete=False)
                records.append(_record(row[:-1]))
        except sqlite3.Error as exc:
            self._after_error(exc)
            raise
        limit = params[-1]
        return Rows(records, complete=len(records) < limit)

    def count(self) -> int:
        """Return the number of stored messages."""
        (count,) = self._query("SELECT COUNT(*) FROM messages", ())[0]
        assert isinstance(count, int)
        return count

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards. Idempotent."""
        self._closed = True
        self._drop()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one write transaction: committed, or rolled back on any error."""
        conn = self._connection()
        try:
            # IMMEDIATE takes the write lock up front, so a lock held elsewhere fails here,
            # before any work, instead of at COMMIT.
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        self._drop()  # closing the connection rolls back as well
                raise
        except sqlite3.Error as exc:
            self._after_error(exc)
            raise
        return result

    def _query(self, sql: str, params: tuple[int, ...]) -> list[Any]:
        conn = self._connection()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self._after_error(exc)
            raise

    def _connection(self) -> sqlite3.Connection:
        """Return an open connection to the file now at ``path``, opening one if needed."""
        if self._closed:
            raise sqlite3.ProgrammingError("the store is closed")
        if self._conn is not None and self._file_identity() != self._identity:
            logger.warning("database %s was removed or replaced; reopening it", self.path)
            self._drop()
        if self._conn is None:
            self._conn, self._identity = self._open()
        return self._conn

    def _open(self) -> tuple[sqlite3.Connection, tuple[int, int]]:
        # isolation_level=None: no implicit transactions; _write issues its own BEGIN.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        try:
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode != "wal":
                logger.warning("database %s: WAL mode unavailable, using %s", self.path, mode)
            # FULL: each commit is fsynced, so an acknowledged message survives a power loss,
            # not only a crash of the process (NORMAL may lose the last commits on power loss).
            conn.execute("PRAGMA synchronous=FULL")
            self._meta = self._read_meta(conn) or self._set_up(conn)
            identity = self._file_identity()
            if identity is None:
                raise sqlite3.OperationalError(f"database {self.path} vanished while opening")
        except BaseException:
            conn.close()
            raise
        return conn, identity

    def _set_up(self, conn: sqlite3.Connection) -> Meta:
        """Create or migrate the tables and the meta row, in one transaction."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
            if not columns:
                conn.execute(_SCHEMA)
            elif "seq" not in columns:
                logger.info("database %s: adding sequence numbers to its messages", self.path)
                for statement in _MIGRATE:
                    conn.execute(statement)
            if columns and "user" not in columns:
                conn.execute(_ADD_USER)
            conn.execute(_META_SCHEMA)
            meta = self._read_meta(conn)
            if meta is None:
                (top,) = conn.execute("SELECT max(seq) FROM messages").fetchone()
                known = self._meta or Meta(str(uuid.uuid4()), 0, 0)
                meta = replace(known, reserved=max(known.reserved, top or 0))
                conn.execute(
                    "INSERT INTO meta (id, epoch, reserved_seq, pruned_seq) VALUES (1, ?, ?, ?)",
                    (meta.epoch, meta.reserved, meta.pruned),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return meta

    @staticmethod
    def _read_meta(conn: sqlite3.Connection) -> Meta | None:
        """The meta row, if the schema is complete; None if anything must be set up."""
        try:
            row = conn.execute("SELECT epoch, reserved_seq, pruned_seq FROM meta").fetchone()
            conn.execute("SELECT seq, client_msg_id, user FROM messages LIMIT 0")
        except sqlite3.OperationalError:  # no such table or column
            return None
        return None if row is None else Meta(*row)

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _after_error(self, exc: sqlite3.Error) -> None:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return
        # Read-only file, missing folder, I/O error...: a fresh connection is the way back.
        self._drop()

    def _drop(self) -> None:
        conn, self._conn, self._identity = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                logger.debug("closing database %s failed: %s", self.path, exc)


def _record(row: tuple[int, str, str, str, str, str | None, str | None]) -> MessageRecord:
    seq, connection_id, message, timestamp, created_at, client_msg_id, user = row
    return MessageRecord(connection_id, message, timestamp, created_at, seq, client_msg_id, user)
