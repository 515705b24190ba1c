"""The SQLite message store: plain synchronous ``sqlite3``, schema and queries, no asyncio.

A ``Store`` belongs to the thread that created it (``sqlite3``'s ``check_same_thread``);
``server.persistence`` creates it inside the one worker thread that does all its I/O.

The store heals itself after the database went away. Any error other than "busy" or "locked"
drops the connection, and so does finding that the file at ``path`` was removed or replaced
(an open connection would otherwise keep writing, without any error, into the unlinked file);
the next call opens the database again, creating an empty one if only the file is gone. A lock
held by another process is reported at once (``busy_timeout`` is short): the caller's retry
policy, not SQLite, decides how long to wait.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["TIMESTAMP_FORMAT", "MessageRecord", "Store"]

logger = logging.getLogger("server.store")

#: The broadcast's ``timestamp`` (``YYYY-MM-DD HH:mm:ss`` in the original design), always UTC.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    connection_id TEXT NOT NULL,
    message       TEXT NOT NULL,
    timestamp     TEXT NOT NULL,
    created_at    TEXT NOT NULL
)
"""
_INSERT = "INSERT INTO messages (connection_id, message, timestamp, created_at) VALUES (?, ?, ?, ?)"
_COLUMNS = "id, connection_id, message, timestamp, created_at"

# Primary result codes that mean another connection holds a lock: the connection itself is
# fine, so it is kept for the next attempt.
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One chat message, as queued and as stored (the original ``Message`` entity).

    Attributes:
        connection_id: The sender's connection id.
        message: The text, exactly as received.
        timestamp: The broadcast timestamp, ``YYYY-MM-DD HH:MM:SS`` in UTC.
        created_at: When the server received it, ISO-8601 in UTC with microseconds.
        id: The database id; ``None`` until the record is stored.
    """

    connection_id: str
    message: str
    timestamp: str
    created_at: str
    id: int | None = None

    @classmethod
    def create(
        cls, connection_id: str, message: str, *, now: datetime | None = None
    ) -> MessageRecord:
        """Build a record received now, both timestamps taken from the same instant.

        Args:
            connection_id: The sender's connection id.
            message: The text.
            now: The instant of reception (converted to UTC); defaults to the current time.

        Returns:
            A record without an id.
        """
        when = datetime.now(UTC) if now is None else now.astimezone(UTC)
        return cls(
            connection_id=connection_id,
            message=message,
            timestamp=when.strftime(TIMESTAMP_FORMAT),
            created_at=when.isoformat(timespec="microseconds"),
        )


class Store:
    """The ``messages`` table of one SQLite database file (the original repository).

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
        self._connection()

    def insert_many(self, records: Iterable[MessageRecord]) -> None:
        """Insert records in one transaction: all of them or, on error, none.

        Args:
            records: The records to add; their ``id`` is ignored and assigned by SQLite.

        Raises:
            sqlite3.Error: If the transaction failed; nothing was written.
            OSError: If the database file could not be examined.
        """
        rows = [(r.connection_id, r.message, r.timestamp, r.created_at) for r in records]
        if not rows:
            return
        conn = self._connection()
        try:
            # IMMEDIATE takes the write lock up front, so a lock held elsewhere fails here,
            # before any work, instead of at COMMIT.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, rows)
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

    def last(self, n: int) -> list[MessageRecord]:
        """Return the last ``n`` messages, oldest first.

        Args:
            n: How many messages; zero or less gives an empty list.

        Returns:
            At most ``n`` records, in id order.
        """
        if n <= 0:
            return []
        rows = self._query(f"SELECT {_COLUMNS} FROM messages ORDER BY id DESC LIMIT ?", (n,))
        rows.reverse()
        return [_record(row) for row in rows]

    def after(self, message_id: int, limit: int) -> list[MessageRecord]:
        """Return the messages whose id is greater than ``message_id``, in id order.

        Args:
            message_id: The last id the caller has; 0 starts from the beginning.
            limit: The most records to return; zero or less gives an empty list.

        Returns:
            At most ``limit`` records, in id order.
        """
        if limit <= 0:
            return []
        sql = f"SELECT {_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?"
        return [_record(row) for row in self._query(sql, (message_id, limit))]

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
        # isolation_level=None: no implicit transactions; insert_many issues its own BEGIN.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        try:
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode != "wal":
                logger.warning("database %s: WAL mode unavailable, using %s", self.path, mode)
            # NORMAL is durable in WAL mode except for the last transactions on power loss.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            identity = self._file_identity()
            if identity is None:
                raise sqlite3.OperationalError(f"database {self.path} vanished while opening")
        except BaseException:
            conn.close()
            raise
        return conn, identity

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


def _record(row: tuple[int, str, str, str, str]) -> MessageRecord:
    message_id, connection_id, message, timestamp, created_at = row
    return MessageRecord(connection_id, message, timestamp, created_at, message_id)
