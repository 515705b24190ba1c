"""The SQLite message store: plain synchronous ``sqlite3``, schema and queries, no asyncio.

A ``Store`` belongs to the thread that created it (``sqlite3``'s ``check_same_thread``);
``server.persistence`` creates it inside the one worker thread that does all its I/O.

The store heals itself after the database went away. Any error other than "busy" or "locked"
drops the connection, and so does finding that the file at ``path`` was removed or replaced
(an open connection would otherwise keep writing, without any error, into the unlinked file);
the next call opens the database again, creating an empty one if only the file is gone. A lock
held by another process is reported at once (``busy_timeout`` is short): the caller's retry
policy, not SQLite, decides how long to wait.

Channels: every message belongs to a channel and has that channel's ``seq``, assigned by the
server, never by SQLite; ``(channel, seq)`` is unique. The ``channels`` table holds, per
channel, its ``epoch`` (a random id made with it; ``general``'s is the database's), ``last_seq``
(at least every seq handed out in it before the last commit) and ``pruned_seq`` (the highest
seq deleted by retention).

The one-row ``meta`` table holds the database's ``epoch``, ``reserved_seq`` and
``committed_seq``. The server counts every message it numbers, in all channels; it hands out a
number only below ``reserved_seq``, and each batch commits, with the channels' ``last_seq``, the
count reached when the batch was formed (``committed_seq``). So after a crash at most
``reserved_seq - committed_seq`` messages were numbered that no ``last_seq`` covers: opening the
database adds that many to every channel's ``last_seq``, and no seq is ever handed out twice.
A clean stop records both counts as equal, so seqs stay consecutive.

A file that is gone and comes back empty while the store runs gets the meta and channel rows
it had, so seqs never go back. Read positions (``read_positions``): a reader's last read seq
per channel.

An archive (``insert_new``, for ``server.archive``) stores messages numbered elsewhere (by
Redis), and raises their channels' ``last_seq`` to them.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TypeAlias, TypeVar

__all__ = [
    "COLUMNS",
    "DEFAULT_CHANNEL",
    "TIMESTAMP_FORMAT",
    "ChannelRow",
    "MessageRecord",
    "MessageRow",
    "Meta",
    "RecentId",
    "Rows",
    "Store",
    "as_row",
    "format_timestamp",
    "from_row",
    "last_prunable",
]

logger = logging.getLogger("server.store")

#: The broadcast's ``timestamp`` (``YYYY-MM-DD HH:mm:ss`` in the original design), always UTC.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"

#: The channel every client is in from the start, and where messages without one go.
DEFAULT_CHANNEL = "general"

# Rows are appended in rowid order; ``(channel, seq)`` is unique and is how they are read.
_SCHEMA = """
CREATE TABLE messages (
    seq           INTEGER NOT NULL,
    connection_id TEXT NOT NULL,
    message       TEXT NOT NULL,
    timestamp     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    client_msg_id TEXT,
    user          TEXT,
    channel       TEXT NOT NULL DEFAULT 'general',
    client_id     TEXT,
    name          TEXT,
    UNIQUE (channel, seq)
)
"""
# Databases from before sequence numbers: ``id INTEGER PRIMARY KEY AUTOINCREMENT`` and no
# ``client_msg_id``. The ids were assigned in arrival order, so they become the seqs.
_MIGRATE_IDS = (
    "ALTER TABLE messages RENAME COLUMN id TO seq",
    "ALTER TABLE messages ADD COLUMN client_msg_id TEXT",
)
# Databases from before authentication: their messages have no user.
_ADD_USER = "ALTER TABLE messages ADD COLUMN user TEXT"
# Databases from before channels (``seq INTEGER PRIMARY KEY``): every message is general's,
# with its seq (and its rowid, so that the rows stay in order).
_MIGRATE_CHANNELS = (
    "ALTER TABLE messages RENAME TO messages_before_channels",
    _SCHEMA,
    "INSERT INTO messages (rowid, seq, connection_id, message, timestamp, created_at,"
    " client_msg_id, user) SELECT seq, seq, connection_id, message, timestamp, created_at,"
    " client_msg_id, user FROM messages_before_channels",
    "DROP TABLE messages_before_channels",
)
# One row: the database's identity, the messages numbered (reserved, committed), and, from
# before channels, general's highest seq pruned.
_META_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    epoch         TEXT NOT NULL,
    reserved_seq  INTEGER NOT NULL,
    pruned_seq    INTEGER NOT NULL,
    committed_seq INTEGER NOT NULL DEFAULT 0
)
"""
_ADD_COMMITTED = "ALTER TABLE meta ADD COLUMN committed_seq INTEGER NOT NULL DEFAULT 0"
_CHANNELS_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    name       TEXT PRIMARY KEY,
    epoch      TEXT NOT NULL,
    last_seq   INTEGER NOT NULL,
    pruned_seq INTEGER NOT NULL
)
"""
_READS_SCHEMA = """
CREATE TABLE IF NOT EXISTS read_positions (
    channel TEXT NOT NULL,
    reader  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (channel, reader)
) WITHOUT ROWID
"""
# The Redis engine's: where each epoch of a channel began numbering (``Archive.begin``).
_FLOORS_SCHEMA = """
CREATE TABLE IF NOT EXISTS epoch_floors (
    channel TEXT PRIMARY KEY,
    floor   INTEGER NOT NULL
) WITHOUT ROWID
"""
_UPSERT_FLOOR = (
    "INSERT INTO epoch_floors (channel, floor) VALUES (?, ?)"
    " ON CONFLICT (channel) DO UPDATE SET floor = max(floor, excluded.floor)"
)
_FLOOR = (
    "SELECT max(seq) FROM (SELECT max(seq) AS seq FROM messages WHERE channel = ?"
    " UNION ALL SELECT floor FROM epoch_floors WHERE channel = ?)"
)
_UPSERT_CHANNEL = (
    "INSERT INTO channels (name, epoch, last_seq, pruned_seq) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)"
)
_UPSERT_READ = (
    "INSERT INTO read_positions (channel, reader, seq) VALUES (?, ?, ?)"
    " ON CONFLICT (channel, reader) DO UPDATE SET seq = max(seq, excluded.seq)"
)
#: The columns of ``messages``, in the order of ``as_row`` and ``from_row``.
COLUMNS = (
    "seq",
    "connection_id",
    "message",
    "timestamp",
    "created_at",
    "client_msg_id",
    "user",
    "channel",
    "client_id",
    "name",
)
_COLUMNS = ", ".join(COLUMNS)
_INSERT = f"INSERT INTO messages ({_COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS))})"
# An archive's insert: a record whose (channel, seq) is stored already is left alone; any other
# constraint still fails the transaction (OR IGNORE would skip a NOT NULL violation too).
_INSERT_NEW = f"{_INSERT} ON CONFLICT (channel, seq) DO NOTHING"
# The UTF-8 bytes of a message's text, as SQLite counts them (without decoding it).
_SIZE = "length(CAST(message AS BLOB))"
# Above every seq: SQLite's integers are 64-bit.
_MAX_SEQ = 2**63 - 1

# Primary result codes that mean another connection holds a lock: the connection itself is
# fine, so it is kept for the next attempt.
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

T = TypeVar("T")

#: A message as a row of ``COLUMNS``.
MessageRow: TypeAlias = tuple[
    int, str, str, str, str, str | None, str | None, str, str | None, str | None
]


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One chat message, as queued and as stored (the original ``Message`` entity).

    Attributes:
        connection_id: The sender's connection id (``api`` for the server API).
        message: The text, exactly as received.
        timestamp: The broadcast timestamp, ``YYYY-MM-DD HH:MM:SS`` in UTC.
        created_at: When the server received it, ISO-8601 in UTC with microseconds.
        seq: The sequence number the server gave it: its position in its channel, never reused.
        client_msg_id: The sender's id for it (or the API's idempotency key), if it gave one.
        user: The sender's authenticated name, if it had one.
        channel: The channel it was published to.
        client_id: The anonymous sender's stable id (``hello``), if it gave one.
        name: The anonymous sender's display name, if it gave one.
    """

    connection_id: str
    message: str
    timestamp: str
    created_at: str
    seq: int
    client_msg_id: str | None = None
    user: str | None = None
    channel: str = DEFAULT_CHANNEL
    client_id: str | None = None
    name: str | None = None

    @classmethod
    def create(
        cls,
        connection_id: str,
        message: str,
        *,
        seq: int,
        client_msg_id: str | None = None,
        user: str | None = None,
        channel: str = DEFAULT_CHANNEL,
        client_id: str | None = None,
        name: str | None = None,
        now: datetime | None = None,
    ) -> MessageRecord:
        """Build a record received now, both timestamps taken from the same instant.

        Args:
            connection_id: The sender's connection id.
            message: The text.
            seq: Its sequence number in ``channel``.
            client_msg_id: The sender's id for the message, if any.
            user: The sender's authenticated name, if any.
            channel: Its channel.
            client_id: The anonymous sender's stable id, if any.
            name: The anonymous sender's display name, if any.
            now: The instant of reception (converted to UTC); defaults to the current time.
        """
        when = datetime.now(UTC) if now is None else now.astimezone(UTC)
        return cls(
            connection_id,
            message,
            format_timestamp(when),
            when.isoformat(timespec="microseconds"),
            seq,
            client_msg_id,
            user,
            channel,
            client_id,
            name,
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
        epoch: A random id made with the database (``general``'s epoch).
        reserved: The server numbers at most this many messages (in all channels) before it
            reserves more; see the module's docstring.
        pruned: From before channels: ``general``'s highest seq deleted by retention.
        committed: How many messages were numbered when the last committed batch was formed.
    """

    epoch: str
    reserved: int
    pruned: int
    committed: int = 0


class RecentId(NamedTuple):
    """What identifies a stored message sent again: its channel, seq and sender's ids."""

    channel: str
    seq: int
    created_at: str
    client_msg_id: str
    user: str | None
    client_id: str | None
    connection_id: str


class ChannelRow(NamedTuple):
    """A channel's row: its epoch, the last seq handed out in it, the last seq pruned.

    A tuple: the queue makes one for every message it numbers.
    """

    epoch: str
    last: int
    pruned: int


class Store:
    """The tables of one SQLite database file (the original repository), for every channel.

    Opening a database creates its tables, or migrates one from an earlier version (each old
    message keeps its seq, in ``general``, with the database's epoch), and creates its ``meta``
    row if it has none. After a crash it moves every channel's ``last_seq`` past the seqs that
    may have been handed out unstored (see the module's docstring).

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
        # The meta and channel rows as last read or written: a database file that is gone and
        # comes back empty gets them again, so its seqs continue rather than start over.
        self._meta: Meta | None = None
        self._channels: dict[str, ChannelRow] = {}
        self._connection()

    @property
    def meta(self) -> Meta:
        """The ``meta`` row, as last read or written (the database is open: it was read then)."""
        assert self._meta is not None
        return self._meta

    @property
    def channels(self) -> Mapping[str, ChannelRow]:
        """Every channel's row, as last read or written."""
        return self._channels

    def insert_many(
        self,
        records: Iterable[MessageRecord],
        *,
        reserve: int | None = None,
        positions: Mapping[str, ChannelRow] | None = None,
        committed: int | None = None,
        reads: Mapping[tuple[str, str], int] | None = None,
        keep_stored: bool = False,
    ) -> None:
        """Insert records in one transaction: all of them or, on error, none.

        Args:
            records: The records to add, with their channels and seqs.
            keep_stored: Leave alone a record whose (channel, seq) is stored already, rather
                than fail the transaction.
            reserve: If given, the new ``Meta.reserved``, recorded in the same transaction.
            positions: Channels' rows to record (``last_seq`` only ever grows).
            committed: If given, the new ``Meta.committed``.
            reads: Read positions to record, by (channel, reader) (see ``set_read``).

        Raises:
            sqlite3.Error: If the transaction failed; nothing was written.
            OSError: If the database file could not be examined.
        """
        rows = [as_row(r) for r in records]
        if not rows and reserve is None and not positions and committed is None and not reads:
            return
        read_rows = [(channel, reader, seq) for (channel, reader), seq in (reads or {}).items()]
        channel_rows = [
            (name, row.epoch, row.last, row.pruned) for name, row in (positions or {}).items()
        ]

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT_NEW if keep_stored else _INSERT, rows)
            if channel_rows:
                conn.executemany(_UPSERT_CHANNEL, channel_rows)
            if reserve is not None:
                conn.execute("UPDATE meta SET reserved_seq = ?", (reserve,))
            if committed is not None:
                conn.execute("UPDATE meta SET committed_seq = ?", (committed,))
            if read_rows:
                conn.executemany(_UPSERT_READ, read_rows)

        self._write(insert)
        for name, row in (positions or {}).items():
            known = self._channels.get(name)
            self._channels[name] = (
                row if known is None else known._replace(last=max(known.last, row.last))
            )
        if reserve is not None:
            self._meta = replace(self.meta, reserved=reserve)
        if committed is not None:
            self._meta = replace(self.meta, committed=committed)

    def insert_new(self, records: Sequence[MessageRecord]) -> None:
        """Insert the records not stored yet, in one transaction, with their channels' rows.

        What an archive writes (``server.archive``): the seqs come from elsewhere (Redis), a
        batch may come twice, and every channel's ``last_seq`` still covers its stored seqs,
        so that the local engine could continue on this file without reusing one.

        Args:
            records: The records to add; one whose (channel, seq) is stored is left alone.

        Raises:
            sqlite3.Error: If the transaction failed; nothing was written.
            OSError: If the database file could not be examined.
        """
        tops: dict[str, int] = {}
        for record in records:
            tops[record.channel] = max(record.seq, tops.get(record.channel, 0))
        positions = {
            name: (
                ChannelRow(str(uuid.uuid4()), top, 0)
                if (known := self._channels.get(name)) is None
                else known._replace(last=top)
            )
            for name, top in tops.items()
        }
        self.insert_many(records, positions=positions, keep_stored=True)

    def reserve(self, seq: int) -> None:
        """Record ``seq`` as ``Meta.reserved``."""
        self.insert_many((), reserve=seq)

    def prune(
        self,
        *,
        keep: int | None,
        before: str | None,
        limit: int,
        channel: str = DEFAULT_CHANNEL,
    ) -> int:
        """Delete the oldest messages of a channel past retention, at most ``limit`` of them.

        A message goes if its seq is ``keep`` or more below the channel's last seq, or if it
        was created before ``before``. Only a run of the oldest messages is deleted, so one
        call is a short transaction on the start of the channel's index.

        Args:
            keep: How many of the latest seqs to keep; ``None`` keeps any number.
            before: ``created_at`` (ISO 8601, UTC) older messages go; ``None`` keeps any age.
            limit: The most rows deleted by this call.
            channel: The channel.

        Returns:
            The highest seq deleted, or 0 if nothing was.

        Raises:
            sqlite3.Error: If the transaction failed; nothing was deleted.
            OSError: If the database file could not be examined.
        """

        def prune(conn: sqlite3.Connection) -> int:
            oldest = conn.execute(
                "SELECT seq, created_at FROM messages WHERE channel = ? ORDER BY seq LIMIT ?",
                (channel, limit),
            ).fetchall()
            bound = 0
            if keep is not None:
                (top,) = conn.execute(
                    "SELECT max(seq) FROM messages WHERE channel = ?", (channel,)
                ).fetchone()
                bound = (top or 0) - keep
            last = last_prunable(oldest, bound, before)
            if last:
                conn.execute("DELETE FROM messages WHERE channel = ? AND seq <= ?", (channel, last))
                conn.execute(
                    "UPDATE channels SET pruned_seq = max(pruned_seq, ?) WHERE name = ?",
                    (last, channel),
                )
            return last

        last = self._write(prune)
        known = self._channels.get(channel)
        if last and known is not None:
            self._channels[channel] = known._replace(pruned=max(known.pruned, last))
        return last

    def pruned(self, channel: str = DEFAULT_CHANNEL) -> int:
        """The highest seq of ``channel`` deleted by retention (0 for a channel not stored)."""
        known = self._channels.get(channel)
        return 0 if known is None else known.pruned

    def last(
        self,
        n: int,
        *,
        max_bytes: int | None = None,
        channel: str = DEFAULT_CHANNEL,
        through: int | None = None,
    ) -> Rows:
        """Return a channel's last ``n`` messages, oldest first, within ``max_bytes`` of text.

        Args:
            n: How many messages; zero or less gives none.
            max_bytes: The most UTF-8 bytes their texts may hold; None: any. Rows are read
                newest first and no further than the first that does not fit.
            channel: The channel.
            through: If given, the highest seq to return.

        Returns:
            At most ``n`` records, in seq order, and whether those are all there are.
        """
        if n <= 0:
            return Rows([], complete=False)
        top = _MAX_SEQ if through is None else through
        rows = self._query_within(
            f"SELECT {_COLUMNS}, {_SIZE} FROM messages WHERE channel = ? AND seq <= ?"
            " ORDER BY seq DESC LIMIT ?",
            (channel, top, n),
            max_bytes,
        )
        rows.records.reverse()
        return rows

    def after(
        self,
        seq: int,
        limit: int,
        *,
        through: int | None = None,
        max_bytes: int | None = None,
        channel: str = DEFAULT_CHANNEL,
    ) -> Rows:
        """Return a channel's messages whose seq is greater than ``seq``, in seq order.

        Args:
            seq: The last seq the caller has; 0 starts from the beginning.
            limit: The most records to return; zero or less gives none.
            through: If given, the highest seq to return.
            max_bytes: The most UTF-8 bytes their texts may hold; None: any.
            channel: The channel.

        Returns:
            At most ``limit`` records, in seq order, and whether the read reached the last
            message there is (``complete``) rather than ``limit`` or ``max_bytes``.
        """
        if limit <= 0:
            return Rows([], complete=False)
        top = _MAX_SEQ if through is None else through
        return self._query_within(
            f"SELECT {_COLUMNS}, {_SIZE} FROM messages"
            " WHERE channel = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (channel, seq, top, limit),
            max_bytes,
        )

    def recent_ids(self, since: str, most: int) -> list[RecentId]:
        """The ids of the latest messages with a ``clientMsgId`` created at ``since`` or later,
        newest first.

        Read newest first by rowid (arrival order), no further than ``since`` or ``most``
        rows, and without their texts: what the server needs to recognise a message sent
        again after a restart, a few hundred bytes a row.
        """
        conn = self._connection()
        ids: list[RecentId] = []
        try:
            cursor = conn.execute(
                "SELECT channel, seq, created_at, client_msg_id, user, client_id, connection_id"
                " FROM messages ORDER BY rowid DESC LIMIT ?",
                (most,),
            )
            for row in cursor:
                if row[2] < since:
                    cursor.close()
                    break
                if row[3] is not None:
                    ids.append(RecentId(*row))
        except sqlite3.Error as exc:
            self._after_error(exc)
            raise
        return ids

    def set_read(self, channel: str, reader: str, seq: int) -> None:
        """Record ``seq`` as ``reader``'s last read message in ``channel`` (it only grows)."""
        self.insert_many((), reads={(channel, reader): seq})

    def read_position(self, channel: str, reader: str) -> int | None:
        """``reader``'s last read seq in ``channel``, if it recorded one."""
        rows = self._query(
            "SELECT seq FROM read_positions WHERE channel = ? AND reader = ?", (channel, reader)
        )
        return None if not rows else int(rows[0][0])

    def begin(self, channel: str, floor: int) -> None:
        """Record that an epoch of ``channel`` numbers its messages after ``floor`` (the Redis
        engine's epochs; a channel's recorded floor only grows)."""
        self._write(lambda conn: conn.execute(_UPSERT_FLOOR, (channel, floor)))

    def floor(self, channel: str) -> int | None:
        """The highest of ``channel``'s stored seqs and recorded floors (``begin``); None if
        the database has neither."""
        (top,) = self._query(_FLOOR, (channel, channel))[0]
        return None if top is None else int(top)

    def _query_within(self, sql: str, params: tuple[str | int, ...], max_bytes: int | None) -> Rows:
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
                records.append(from_row(row[:-1]))
        except sqlite3.Error as exc:
            self._after_error(exc)
            raise
        limit = params[-1]
        return Rows(records, complete=len(records) < int(limit))

    def count(self) -> int:
        """Return the number of stored messages, in every channel."""
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

    def _query(self, sql: str, params: tuple[str | int, ...]) -> list[Any]:
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
            mode = self._use_wal(conn)
            if mode != "wal":
                logger.warning("database %s: WAL mode unavailable, using %s", self.path, mode)
            # FULL: each commit is fsynced, so an acknowledged message survives a power loss,
            # not only a crash of the process (NORMAL may lose the last commits on power loss).
            conn.execute("PRAGMA synchronous=FULL")
            read = self._read(conn)
            # The first open after a crash moves the channels on; a reopen while running
            # does not: this process's own seqs are ahead of the file's.
            if read is None or (self._meta is None and read[0].committed < read[0].reserved):
                read = self._set_up(conn)
            self._meta, self._channels = read
            identity = self._file_identity()
            if identity is None:
                raise sqlite3.OperationalError(f"database {self.path} vanished while opening")
        except BaseException:
            conn.close()
            raise
        return conn, identity

    def _use_wal(self, conn: sqlite3.Connection) -> str:
        """Switch the file to WAL mode; returns the journal mode it is in.

        Servers opening a new file together each hold a shared lock when they ask for the
        switch, which needs an exclusive one: SQLite answers all but one "database is locked"
        at once rather than wait on the busy timeout (it would deadlock), so the request is
        made again until the timeout has passed.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)
            else:
                return str(mode)

    def _set_up(self, conn: sqlite3.Connection) -> tuple[Meta, dict[str, ChannelRow]]:
        """Create or migrate the tables and rows in one transaction; after a crash, move
        every channel's last seq past what may have been handed out unstored."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
            if not columns:
                conn.execute(_SCHEMA)
            else:
                if "seq" not in columns:
                    logger.info("database %s: adding sequence numbers to its messages", self.path)
                    for statement in _MIGRATE_IDS:
                        conn.execute(statement)
                if "user" not in columns:
                    conn.execute(_ADD_USER)
                if "channel" not in columns:
                    logger.info("database %s: its messages become general's", self.path)
                    for statement in _MIGRATE_CHANNELS:
                        conn.execute(statement)
            conn.execute(_META_SCHEMA)
            meta_columns = {row[1] for row in conn.execute("PRAGMA table_info(meta)")}
            if "committed_seq" not in meta_columns:
                conn.execute(_ADD_COMMITTED)
                # Before channels, a seq was handed out only below the reservation: general's
                # last seq is the reservation, and nothing else is uncovered.
                conn.execute("UPDATE meta SET committed_seq = reserved_seq")
            conn.execute(_CHANNELS_SCHEMA)
            conn.execute(_READS_SCHEMA)
            conn.execute(_FLOORS_SCHEMA)
            meta = self._read_meta(conn)
            if meta is None:
                (top,) = conn.execute("SELECT max(seq) FROM messages").fetchone()
                known = self._meta or Meta(str(uuid.uuid4()), 0, 0)
                reserved = max(known.reserved, top or 0)
                meta = replace(known, reserved=reserved, committed=reserved)
                conn.execute(
                    "INSERT INTO meta (id, epoch, reserved_seq, pruned_seq, committed_seq)"
                    " VALUES (1, ?, ?, ?, ?)",
                    (meta.epoch, meta.reserved, meta.pruned, meta.committed),
                )
            self._set_up_channels(conn, meta)
            if meta.committed < meta.reserved:
                skipped = meta.reserved - meta.committed
                logger.warning(
                    "database %s: the server stopped without recording its last seqs; each"
                    " channel's next seq is up to %d higher",
                    self.path,
                    skipped,
                )
                conn.execute("UPDATE channels SET last_seq = last_seq + ?", (skipped,))
                conn.execute("UPDATE meta SET committed_seq = reserved_seq")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        read = self._read(conn)
        assert read is not None
        return read

    def _set_up_channels(self, conn: sqlite3.Connection, meta: Meta) -> None:
        """Give every channel a row: those the store knew, and ``general`` (the database's
        epoch; from before channels, the reservation as its last seq); none below its stored
        messages."""
        general_row = conn.execute("SELECT 1 FROM channels WHERE name = ?", (DEFAULT_CHANNEL,))
        if general_row.fetchone() is None:
            known = self._channels.get(DEFAULT_CHANNEL)
            general = known or ChannelRow(meta.epoch, meta.reserved, meta.pruned)
            conn.execute(_UPSERT_CHANNEL, (DEFAULT_CHANNEL, *_values(general)))
        for name, row in self._channels.items():
            conn.execute(_UPSERT_CHANNEL, (name, *_values(row)))
        conn.execute(
            "UPDATE channels SET last_seq = max(last_seq, coalesce((SELECT max(seq) FROM"
            " messages WHERE channel = channels.name), 0))"
        )

    def _read(self, conn: sqlite3.Connection) -> tuple[Meta, dict[str, ChannelRow]] | None:
        """The meta and channel rows, if the schema is complete."""
        meta = self._read_meta(conn)
        if meta is None:
            return None
        rows = conn.execute("SELECT name, epoch, last_seq, pruned_seq FROM channels").fetchall()
        channels = {name: ChannelRow(epoch, last, pruned) for name, epoch, last, pruned in rows}
        if DEFAULT_CHANNEL not in channels:
            return None
        return meta, channels

    @staticmethod
    def _read_meta(conn: sqlite3.Connection) -> Meta | None:
        """The meta row, if the schema is complete; None if anything must be set up."""
        try:
            row = conn.execute(
                "SELECT epoch, reserved_seq, pruned_seq, committed_seq FROM meta"
            ).fetchone()
            conn.execute(f"SELECT {_COLUMNS} FROM messages LIMIT 0")
            conn.execute("SELECT name, epoch, last_seq, pruned_seq FROM channels LIMIT 0")
            conn.execute("SELECT channel, reader, seq FROM read_positions LIMIT 0")
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


# The last second formatted: at a thousand messages a second, strftime once instead of 1,000
# times, and one string for all that happened in that second (presence keeps one per member).
_formatted: tuple[datetime, str] = (datetime.min.replace(tzinfo=UTC), "")


def last_prunable(oldest: Sequence[tuple[int, str]], bound: int, before: str | None) -> int:
    """The highest seq of the run of ``oldest`` (seq, created_at) that retention deletes: seq
    at most ``bound``, or created before ``before``; 0 if the first one stays."""
    last = 0
    for seq, created_at in oldest:
        if seq > bound and (before is None or created_at >= before):
            break
        last = seq
    return last


def format_timestamp(when: datetime) -> str:
    """``when`` (UTC) as ``TIMESTAMP_FORMAT``; within a second, the same string."""
    global _formatted
    second = when.replace(microsecond=0)
    if second != _formatted[0]:
        _formatted = (second, second.strftime(TIMESTAMP_FORMAT))
    return _formatted[1]


def _values(row: ChannelRow) -> tuple[str, int, int]:
    return row.epoch, row.last, row.pruned


def as_row(record: MessageRecord) -> MessageRow:
    """A record as a row of ``COLUMNS``."""
    r = record
    return (
        r.seq,
        r.connection_id,
        r.message,
        r.timestamp,
        r.created_at,
        r.client_msg_id,
        r.user,
        r.channel,
        r.client_id,
        r.name,
    )


def from_row(row: Sequence[Any]) -> MessageRecord:
    """A record from a row of ``COLUMNS`` (which start with ``seq``)."""
    seq, connection_id, message, timestamp, created_at, *rest = row
    return MessageRecord(connection_id, message, timestamp, created_at, seq, *rest)
