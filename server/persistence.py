"""PersistenceQueue: a bounded in-memory queue plus one writer that owns the database.

The receive path calls ``accept()``, which never touches the database. One writer task takes
the queued records in batches and runs ``Store.insert_many`` in a dedicated thread, the only
thread that ever uses the SQLite connection (``worker.Worker``). Each batch is written with
``retry()``; a batch that still fails after the last attempt is appended to the dead-letter
file and logged, and the writer carries on with the next batch. A batch that fails
because of one of its records (``RECORD_ERRORS``: a value SQLite refuses) is not retried: it is
split in halves, written again, until only the records at fault are dead-lettered.

The queue owns its database: ``start()`` takes an exclusive lock on ``<db>.lock``, so a second
server on the same file refuses to start (``DatabaseInUse``) instead of forking the seqs, and so
does one whose archive (``server.archive``, a shared lock) is the file.

The queue also numbers the messages. ``accept()`` gives each one the next seq of its channel
and queues it in the same step, so the queue is in seq order in every channel. It counts every
message it numbers with a ``SequenceAllocator`` and numbers one only below that count's durable
reservation; the writer commits, in the transaction of a batch (a group commit: one fsync), the
allocator's next reservation when it is due, the last seq of every channel that numbered
messages since the last batch, and the count when the batch was formed (``store.py`` says why
that makes a seq never handed out twice, even after a crash). After each batch it calls
``on_committed`` or ``on_dead_lettered`` with the records, in order. On a clean stop both
counts are recorded as equal, so seqs stay consecutive across restarts.

Read positions (``set_read``) are kept in memory and written with the next batch.

Retention runs in the same worker thread: every ``prune_interval`` seconds, for each channel,
deletes of at most ``PRUNE_CHUNK`` rows each, one transaction per delete, interleaved with the
batches; ``retention(channel)`` may give a channel limits of its own.

Decisions:

* Full queue or no seq reserved: ``ready()`` is False and ``accept()`` raises
  ``asyncio.QueueFull`` without taking a seq. A connection handler awaits ``wait_ready()``
  first, which stops reading from that client (backpressure) instead of dropping its message.
* Dead letters: ``<db>.deadletter.jsonl`` beside the database (``messages.db`` gives
  ``messages.db.deadletter.jsonl``), one JSON object per message and per line, in queue order:
  ``connection_id``, ``message``, ``timestamp``, ``created_at``, ``seq``, ``client_msg_id``,
  ``user``, ``channel``, ``client_id``, ``name`` (the ``MessageRecord`` fields, so the line
  can be replayed), plus ``error`` and
  ``dead_lettered_at``. The file is ASCII (``\\uXXXX`` escapes), so any text round-trips
  through ``json.loads``. If even that file cannot be written, each message is written to the
  log instead, at ERROR level.
* ``depth`` counts every accepted record not yet persisted or dead-lettered, the batch being
  written included: it is what a crash would lose.
* ``stop(timeout)`` keeps accepting records until the writer has drained the queue, then refuses
  them with ``PersistenceClosed`` (and ``wait_ready()`` raises it). Once the timeout expires,
  the batch being retried and everything still queued is dead-lettered instead of written. A
  database call still running ``_STOP_GRACE`` seconds later is abandoned and its batch
  dead-lettered too: should the call commit after all, that batch is duplicated, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

from .metrics import HistogramChild
from .retry import RetryPolicy, retry
from .sequence import DEFAULT_BLOCK, SequenceAllocator
from .store import DEFAULT_CHANNEL, ChannelRow, MessageRecord, Meta, RecentId, Rows, Store
from .worker import Worker

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CAPACITY",
    "PRUNE_CHUNK",
    "RECORD_ERRORS",
    "RETRYABLE_ERRORS",
    "DatabaseInUse",
    "PersistenceClosed",
    "PersistenceQueue",
    "RecordRejected",
    "append_dead_letters",
    "dead_letter_path_for",
    "lock_database",
    "lock_path_for",
    "rejecting",
    "retention_bounds",
]

logger = logging.getLogger("server.persistence")

T = TypeVar("T")

# 10,000 chat messages of a few hundred bytes are a few MB of memory: at 100 messages per
# second that rides out a database outage of 100 s, longer than the default retry policy
# (1 + 2 + 3 + 4 = 10 s per batch) before anything is dead-lettered.
DEFAULT_CAPACITY = 10_000
# One transaction per batch amortises the commit; 500 rows still commit in milliseconds, so
# reads never wait long and one failing batch dead-letters few messages.
DEFAULT_BATCH_SIZE = 500
# Rows per retention delete: a transaction of a few milliseconds, so batches never wait long.
PRUNE_CHUNK = 1000
# Errors that may go away: a lock held elsewhere, a read-only or missing file or folder.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
# Errors that a record causes, which no retry mends: a constraint, a value SQLite cannot bind
# (a string that is not UTF-8, such as a lone surrogate; an integer over 64 bits).
RECORD_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    ValueError,
    OverflowError,
    TypeError,
)
# A writer woken by one record with fewer than _GATHER_BELOW behind it waits _GATHER_SECONDS
# for more before committing. At 1,000 messages/s it committed each on its own (one fsync, and a
# wake-up of the database thread, per message), taking the core from the event loop; 2 ms
# gathers a few per commit, and delays an ack by at most that (benchmarks/README.md).
_GATHER_BELOW = 16
_GATHER_SECONDS = 0.002
# After the shutdown timeout, a database call already running in the worker thread gets this
# long to finish (it is bounded by the store's short busy timeout), because abandoning it
# could not tell whether its batch was committed.
_STOP_GRACE = 2.0


class PersistenceClosed(RuntimeError):
    """The queue is stopped: it takes no more records and serves no more reads."""


class DatabaseInUse(RuntimeError):
    """Another server process owns the database: a persistence queue, or archives."""


class _Signal(enum.Enum):
    WAKE = enum.auto()  # queued to wake a writer waiting on an empty queue


class RecordRejected(Exception):
    """A batch failed because of a record in it, which no retry mends: the cause is chained.

    Not a retryable error: the writer splits the batch to find the record, or dead-letters it.
    """


@dataclass(slots=True)
class _Extras:
    """What a batch's transaction records besides its rows (``Store.insert_many``)."""

    reserve: int | None = None
    positions: dict[str, ChannelRow] = field(default_factory=dict)
    committed: int | None = None
    reads: dict[tuple[str, str], int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.reserve is not None or self.positions or self.committed is not None or self.reads
        )


def rejecting(write: Callable[[], T]) -> T:
    """Run ``write()``; an error a record causes (``RECORD_ERRORS``) becomes ``RecordRejected``."""
    try:
        return write()
    except RECORD_ERRORS as exc:
        raise RecordRejected(str(exc)) from exc


def _insert(store: Store, batch: list[MessageRecord], extras: _Extras) -> None:
    """``Store.insert_many``, in the worker thread, ``rejecting`` a record's fault."""
    rejecting(
        partial(
            store.insert_many,
            batch,
            reserve=extras.reserve,
            positions=extras.positions,
            committed=extras.committed,
            reads=extras.reads,
        )
    )


class _ShutdownDeadline(Exception):
    """The shutdown timeout expires before the next attempt could start."""


def dead_letter_path_for(db_path: str | os.PathLike[str]) -> Path:
    """Return the dead-letter file of a database: ``<db>.deadletter.jsonl`` beside it."""
    path = Path(db_path)
    return path.with_name(path.name + ".deadletter.jsonl")


def lock_path_for(db_path: str | os.PathLike[str]) -> Path:
    """Return the lock file of a database: ``<db>.lock`` beside it."""
    path = Path(db_path)
    return path.with_name(path.name + ".lock")


def lock_database(db_path: Path, *, shared: bool = False) -> int:
    """Own ``db_path``: a ``flock`` of its lock file, exclusive or shared.

    The persistence queue takes it exclusive: two writers would each hand out the same seqs.
    Archives (``server.archive``) take it shared: their seqs come from Redis, so several
    processes may write the file, but none while a queue numbers its own seqs there. The lock
    goes with the file descriptor, so the kernel releases it however the process ends,
    ``kill -9`` included; the file stays, holding the pid of the last owner, for the error
    message.

    Args:
        db_path: The database file.
        shared: Take a shared lock (an archive's) rather than an exclusive one (the queue's).

    Returns:
        The descriptor to close to release it.

    Raises:
        DatabaseInUse: The lock is held in the other mode, or exclusively; one line says which.
        sqlite3.OperationalError: The lock file cannot be opened (what opening the database
            would say of a missing or read-only folder).
    """
    lock = lock_path_for(db_path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise sqlite3.OperationalError(f"cannot lock {lock}: {exc}") from None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DatabaseInUse(_in_use(db_path, fd, shared)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _in_use(db_path: Path, fd: int, shared: bool) -> str:
    """Why the lock on ``fd`` was refused, in one line; closes ``fd``."""
    try:
        # Sharers may write their pids over each other: the first word is one of them.
        words = os.pread(fd, 20, 0).decode("ascii", "replace").split()
        owner = words[0] if words else "unknown"
        if shared:
            return (
                f"{db_path} is in use by a server with the local engine (pid {owner}), which"
                " numbers its own seqs: stop it, or give this one another --db"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return (
                f"{db_path} is in use by another server (pid {owner}): stop it, or give this"
                " one another --db"
            )
        return (
            f"{db_path} is the archive of servers with the Redis engine (pid {owner}), whose"
            " seqs the local engine would fork: stop them, or give this one another --db"
        )
    finally:
        os.close(fd)


class PersistenceQueue:
    """Number chat messages, queue them in memory and write them to SQLite from one worker.

    Args:
        db_path: The SQLite database file; its folder must exist when ``start()`` is called.
        capacity: The most records waiting in memory.
        batch_size: The most records written in one transaction.
        policy: Attempts and delays for each batch; ``RetryPolicy()`` by default.
        dead_letter_path: Where failed batches go; ``dead_letter_path_for(db_path)`` by default.
        busy_timeout: Seconds SQLite waits for another connection's lock before an attempt fails.
        seq_block: Seqs per reservation; by default twice ``capacity`` and at least
            ``sequence.DEFAULT_BLOCK``, so during an outage the queue fills before seqs run out.
        retention_messages: Keep at most this many of the latest seqs; 0 keeps any number.
        retention_days: Delete messages older than this; 0 keeps them forever.
        prune_interval: Seconds between two retention passes.
        retention: A channel's (messages, days) if not the two above; None: those for all.
        commit_duration: Observes how long each batch took to commit, retries included.

    Raises:
        ValueError: If ``capacity`` or ``batch_size`` is less than 1.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        capacity: int = DEFAULT_CAPACITY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        policy: RetryPolicy | None = None,
        dead_letter_path: str | os.PathLike[str] | None = None,
        busy_timeout: float = 0.1,
        seq_block: int | None = None,
        retention_messages: int = 0,
        retention_days: float = 0,
        prune_interval: float = 60.0,
        retention: Callable[[str], tuple[int, float]] | None = None,
        commit_duration: HistogramChild | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.db_path = Path(db_path)
        self.dead_letter_path = (
            dead_letter_path_for(db_path) if dead_letter_path is None else Path(dead_letter_path)
        )
        self.capacity = capacity
        self.batch_size = batch_size
        self.policy = RetryPolicy() if policy is None else policy
        self.seq_block = max(DEFAULT_BLOCK, 2 * capacity) if seq_block is None else seq_block
        self.retention_messages = retention_messages
        self.retention_days = retention_days
        self.prune_interval = prune_interval
        self.retention = retention or (lambda channel: (retention_messages, retention_days))
        self._prunes = bool(retention_messages or retention_days or retention)
        self._commit_duration = commit_duration
        # Called in the event loop after each batch, with its records in seq order.
        self.on_committed: Callable[[Sequence[MessageRecord]], object] = _ignore
        self.on_dead_lettered: Callable[[Sequence[MessageRecord]], object] = _ignore
        # Called with a channel and the highest seq of it that retention deleted.
        self.on_pruned: Callable[[str, int], object] = _ignore_pruned
        self._busy_timeout = busy_timeout
        self._queue: asyncio.Queue[MessageRecord | _Signal] = asyncio.Queue(maxsize=capacity)
        self._lock: int | None = None  # the lock file's descriptor, while started
        self._worker: Worker | None = None
        self._store: Store | None = None
        self._meta: Meta | None = None
        self._sequence: SequenceAllocator | None = None
        # Every channel's row as this process numbers its messages, and those changed since
        # the last batch was formed; read positions not written yet.
        self._channels: dict[str, ChannelRow] = {}
        self._dirty: dict[str, ChannelRow] = {}
        self._unpublished: set[str] = set()
        self._reads: dict[tuple[str, str], int] = {}
        self._reads_queued = False
        self._task: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._in_flight: list[MessageRecord] | None = None
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._deadline: float | None = None
        self._accepting = True
        self._stop_started = False
        self._stopped = False
        self._stopped_event = asyncio.Event()
        self._accepted = 0
        self._persisted = 0
        self._dead_lettered = 0
        self._failed_attempts = 0

    # Counters, for /healthz.

    @property
    def depth(self) -> int:
        """Records accepted but neither persisted nor dead-lettered yet."""
        return self._accepted - self._persisted - self._dead_lettered

    @property
    def persisted(self) -> int:
        """Records written to the database since the queue was created."""
        return self._persisted

    @property
    def dead_lettered(self) -> int:
        """Records given up on and sent to the dead-letter file (or the log)."""
        return self._dead_lettered

    @property
    def failed_attempts(self) -> int:
        """Failed write attempts, retried or not."""
        return self._failed_attempts

    # What start() read from the database.

    @property
    def meta(self) -> Meta:
        """The database's ``meta`` row as it was at start-up (its epoch, what was pruned)."""
        if self._meta is None:
            raise RuntimeError("the persistence queue is not started")
        return self._meta

    @property
    def last_seq(self) -> int:
        """The last seq handed out by ``accept()`` in the default channel."""
        return self.channel(DEFAULT_CHANNEL).last

    @property
    def channels(self) -> Mapping[str, ChannelRow]:
        """The rows of the channels known: stored, published to, or asked about."""
        return self._channels

    def channel(self, name: str) -> ChannelRow:
        """A channel's row; a channel not known yet gets one, with a new epoch, in memory
        (stored with its first message; ``forget()`` drops it if none comes)."""
        row = self._channels.get(name)
        if row is None:
            self._allocator()  # started: the stored rows are known
            row = self._channels[name] = ChannelRow(str(uuid.uuid4()), 0, 0)
            self._unpublished.add(name)
        return row

    def forget(self, name: str) -> None:
        """Drop the row of a channel made by ``channel()`` that never had a message."""
        if name in self._unpublished:
            self._unpublished.discard(name)
            del self._channels[name]

    # The receive path.

    def ready(self) -> bool:
        """Whether ``accept()`` would take a message now: room in the queue and a seq reserved."""
        return (
            self._accepting
            and self._sequence is not None
            and self._sequence.available()
            and not self._queue.full()
        )

    async def wait_ready(self) -> None:
        """Wait until ``ready()``.

        Raises:
            PersistenceClosed: If the queue has stopped.
        """
        while not self.ready():
            if not self._accepting:
                raise PersistenceClosed("the persistence queue is stopped")
            self._ready.clear()
            await self._ready.wait()

    def accept(
        self,
        connection_id: str,
        message: str,
        client_msg_id: str | None = None,
        user: str | None = None,
        *,
        channel: str = DEFAULT_CHANNEL,
        client_id: str | None = None,
        name: str | None = None,
    ) -> MessageRecord:
        """Give a message received now the next seq of its channel and queue it, without waiting.

        Returns:
            The queued record.

        Raises:
            asyncio.QueueFull: If not ``ready()``; no seq was taken and nothing was queued.
            PersistenceClosed: If the queue has stopped.
        """
        if not self._accepting:
            raise PersistenceClosed("the persistence queue is stopped")
        if not self.ready():
            raise asyncio.QueueFull("no room in the queue, or no seq reserved yet")
        self._allocator().take()
        row = self.channel(channel)
        self._unpublished.discard(channel)
        row = self._channels[channel] = self._dirty[channel] = ChannelRow(
            row.epoch, row.last + 1, row.pruned
        )
        record = MessageRecord.create(
            connection_id,
            message,
            seq=row.last,
            client_msg_id=client_msg_id,
            user=user,
            channel=channel,
            client_id=client_id,
            name=name,
        )
        self.put_nowait(record)
        return record

    def set_read(self, channel: str, reader: str, seq: int) -> None:
        """Keep ``seq`` as ``reader``'s last read in ``channel``; written with the next batch.

        Raises:
            PersistenceClosed: If the queue has stopped.
        """
        if not self._accepting:
            raise PersistenceClosed("the persistence queue is stopped")
        key = (channel, reader)
        self._reads[key] = max(seq, self._reads.get(key, 0))
        if not self._reads_queued:
            # Wake a writer waiting for records; a full queue wakes it anyway.
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_Signal.WAKE)
                self._reads_queued = True

    def put_nowait(self, record: MessageRecord) -> None:
        """Queue a record that already has its seq, without waiting or touching the database.

        Args:
            record: The message to persist.

        Raises:
            asyncio.QueueFull: If ``capacity`` records are waiting; nothing was queued.
            PersistenceClosed: If the queue has stopped.
        """
        if not self._accepting:
            raise PersistenceClosed("the persistence queue is stopped")
        self._queue.put_nowait(record)
        self._accepted += 1

    # Reads, run in the worker thread; they see persisted records only.

    async def last(
        self,
        n: int,
        *,
        max_bytes: int | None = None,
        channel: str = DEFAULT_CHANNEL,
        through: int | None = None,
    ) -> Rows:
        """Return a channel's last ``n`` persisted messages, oldest first (``Store.last``)."""
        worker, store = self._running()
        return await worker.call(
            partial(store.last, n, max_bytes=max_bytes, channel=channel, through=through)
        )

    async def after(
        self,
        seq: int,
        limit: int,
        *,
        through: int | None = None,
        max_bytes: int | None = None,
        channel: str = DEFAULT_CHANNEL,
    ) -> Rows:
        """Return up to ``limit`` persisted messages after ``seq``, in order (``Store.after``)."""
        worker, store = self._running()
        return await worker.call(
            partial(store.after, seq, limit, through=through, max_bytes=max_bytes, channel=channel)
        )

    async def kept_after(
        self,
        seq: int,
        through: int,
        *,
        most: int,
        max_bytes: int | None = None,
        channel: str = DEFAULT_CHANNEL,
    ) -> list[MessageRecord] | None:
        """Return a channel's persisted messages with ``seq < seq' <= through``, in order.

        Args:
            seq: Messages after this one...
            through: ... up to this one.
            most: The most messages wanted.
            max_bytes: The most UTF-8 bytes their texts may hold; None: any.
            channel: The channel.

        Returns:
            None if retention has deleted some of them (checked in the same thread, after any
            delete that ran before this read), or if there are more than ``most`` or
            ``max_bytes``: the read stops there.
        """
        worker, store = self._running()

        def read() -> list[MessageRecord] | None:
            if store.pruned(channel) > seq:
                return None
            rows = store.after(seq, most + 1, through=through, max_bytes=max_bytes, channel=channel)
            return rows.records if rows.complete else None

        return await worker.call(read)

    async def read_position(self, channel: str, reader: str) -> int | None:
        """``reader``'s last read seq in ``channel`` (``set_read``), if it has one."""
        pending = self._reads.get((channel, reader))
        worker, store = self._running()
        stored = await worker.call(partial(store.read_position, channel, reader))
        if pending is None or (stored is not None and stored > pending):
            return stored
        return pending

    async def recent_ids(self, since: str, most: int) -> list[RecentId]:
        """The latest stored messages with a clientMsgId, newest first (``Store.recent_ids``)."""
        worker, store = self._running()
        return await worker.call(partial(store.recent_ids, since, most))

    async def count(self) -> int:
        """Return the number of messages in the database."""
        worker, store = self._running()
        return await worker.call(store.count)

    # Life cycle.

    async def start(self) -> None:
        """Open the database in a new worker thread, reserve seqs, start the writer.

        Raises:
            DatabaseInUse: If another queue (another process), or an archive, has the
                database.
            sqlite3.Error: If the database cannot be opened (a missing folder, a directory...)
                or the first seqs cannot be reserved.
            RuntimeError: If the queue was already started or stopped.
        """
        if self._worker is not None or self._stop_started:
            raise RuntimeError("a PersistenceQueue can only be started once")
        self._lock = lock_database(self.db_path)
        worker = Worker(f"persistence {self.db_path.name}")
        worker.start()
        try:
            store = await worker.call(partial(Store, self.db_path, busy_timeout=self._busy_timeout))
            self._meta = meta = store.meta
            self._channels = dict(store.channels)
            sequence = SequenceAllocator(meta.reserved, self.seq_block)
            first = sequence.due()
            assert first is not None
            try:
                await worker.call(partial(store.reserve, first))
            except BaseException:
                await worker.call(store.close)
                raise
        except BaseException:
            worker.shutdown(final=self._unlock)
            raise
        sequence.reserved_through(first)
        self._worker, self._store, self._sequence = worker, store, sequence
        self._task = asyncio.create_task(self._run(), name="persistence writer")
        self._task.add_done_callback(self._writer_done)
        if self._prunes:
            self._pruner = asyncio.create_task(self._prune_periodically(), name="retention")

    # A parameter rather than asyncio.timeout() around the call: cancelling could only lose
    # records, while this timeout ends with the unwritten ones dead-lettered and the store closed.
    async def stop(self, timeout: float | None = 10.0) -> None:
        """Write everything still queued, then close the database. Idempotent.

        Records may still be queued while the writer drains the queue; afterwards ``accept``
        and ``put_nowait`` raise ``PersistenceClosed``.

        Args:
            timeout: Seconds allowed for draining; ``None`` waits as long as the retry policy
                does. When it expires, whatever is not written yet is dead-lettered.
        """
        if self._stop_started:
            await self._stopped_event.wait()
            return
        self._stop_started = True
        try:
            await self._stop(timeout)
        finally:
            self._stopped_event.set()

    async def _stop(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        if timeout is not None:
            self._deadline = loop.time() + max(0.0, timeout)
        self._stopping.set()
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.wait([self._pruner])
        task, worker, store = self._task, self._worker, self._store
        clean = False
        if task is not None:
            with contextlib.suppress(asyncio.QueueFull):  # a full queue wakes the writer anyway
                self._queue.put_nowait(_Signal.WAKE)
            grace = None if timeout is None else max(0.0, timeout) + _STOP_GRACE
            try:
                await asyncio.wait_for(asyncio.shield(task), grace)
                clean = True
            except TimeoutError:
                logger.error(
                    "persistence writer still busy %g s after the shutdown timeout; abandoning it",
                    _STOP_GRACE,
                )
                task.cancel()
                await asyncio.wait([task])
            except Exception:
                pass  # already logged by _writer_done
        self._close_intake()
        self._stopped = True
        self._dead_letter_leftovers()
        if worker is None or store is None:
            return
        if clean:
            await self._release_reservation(worker, store)
            await worker.call(store.close)
            worker.shutdown(final=self._unlock)
            worker.join(timeout=1.0)
        else:
            # The worker may be stuck in a database call: close the store whenever it gets
            # there, and only then let another queue have the database.
            def close() -> None:
                store.close()
                self._unlock()

            worker.shutdown(final=close)

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    async def _release_reservation(self, worker: Worker, store: Store) -> None:
        """Record the channels' last seqs, and the count of messages numbered as both the
        reservation and what is committed, so the next start continues from them."""
        last = self._allocator().last
        extras = _Extras(last, self._dirty, last, self._reads)
        try:
            await worker.call(partial(_insert, store, [], extras))
        except RETRYABLE_ERRORS as exc:
            # Harmless: the next start skips the seqs reserved but unused.
            logger.warning("could not record the last seq %d: %s", last, exc)

    def _close_intake(self) -> None:
        """Refuse records from now on, and wake whoever waits for room."""
        self._accepting = False
        self._ready.set()

    # The writer.

    async def _run(self) -> None:
        while True:
            if self._stopping.is_set() and self._queue.empty():
                # Same event-loop step as the emptiness check: no record can slip in between.
                self._close_intake()
                return
            batch: list[MessageRecord] = []
            # Without queued records, wait for some; unless seqs ran out and must be reserved.
            if self._queue.empty() and self._allocator().available():
                item = await self._queue.get()
                if item is not _Signal.WAKE:
                    batch.append(item)
                    if self._queue.qsize() < _GATHER_BELOW and not self._stopping.is_set():
                        # Group commit for a trickle: the next messages share this fsync.
                        await asyncio.sleep(_GATHER_SECONDS)
            # Never more than a queue's worth: what a crash can lose stays within twice the
            # capacity, even when a gathering writer let the queue fill up again.
            self._take_queued(batch, min(self.batch_size, self.capacity))
            self._ready.set()  # room in the queue again
            await self._write(batch)

    async def _write(self, batch: list[MessageRecord]) -> None:
        extras = self._take_extras()
        if not batch and not extras:
            return
        self._in_flight = batch
        if self._deadline is not None and asyncio.get_running_loop().time() >= self._deadline:
            self._keep_extras(extras)
            await self._dead_letter(batch, "shutdown timeout expired before it could be written")
        else:
            await self._write_part(batch, extras)
        self._in_flight = None

    def _take_extras(self) -> _Extras:
        """What the next transaction records besides the batch: taken in the step the batch
        was formed in, so the channels' last seqs cover every seq handed out so far."""
        sequence = self._allocator()
        extras = _Extras(sequence.due(), self._dirty, None, self._reads)
        if self._dirty:
            extras.committed = sequence.last
        self._dirty, self._reads, self._reads_queued = {}, {}, False
        return extras

    def _keep_extras(self, extras: _Extras) -> None:
        """A transaction failed: its channel rows and read positions go with the next one."""
        for name, row in extras.positions.items():
            self._dirty.setdefault(name, row)
        for key, seq in extras.reads.items():
            self._reads[key] = max(seq, self._reads.get(key, 0))

    async def _write_part(self, batch: list[MessageRecord], extras: _Extras) -> None:
        """Write ``batch`` (and ``extras``) with retries; halve it if a record is at fault."""
        worker, store, sequence = self._worker, self._store, self._allocator()
        assert worker is not None
        assert store is not None
        started = time.perf_counter()
        try:
            await retry(
                partial(worker.call, partial(_insert, store, batch, extras)),
                policy=self.policy,
                retry_on=RETRYABLE_ERRORS,
                sleep=self._sleep,
                on_failure=self._count_failure,
                description=f"persisting {len(batch)} messages" if batch else "reserving seqs",
            )
        except RecordRejected as exc:
            if len(batch) > 1:
                # The others must not pay for it: each half is written on its own, in seq
                # order, so that only the record at fault is dead-lettered (log2 n rounds).
                # The extras go with the first half; if that fails, with the next batch.
                half = len(batch) // 2
                await self._write_part(batch[:half], extras)
                await self._write_part(batch[half:], _Extras())
                return
            cause = exc.__cause__
            self._keep_extras(extras)
            await self._dead_letter(batch, f"{type(cause).__name__}: {cause}")
        except Exception as exc:
            self._keep_extras(extras)
            await self._dead_letter(batch, f"{type(exc).__name__}: {exc}")
        else:
            self._persisted += len(batch)
            if extras.reserve is not None:
                sequence.reserved_through(extras.reserve)
                self._ready.set()
            if batch:
                if self._commit_duration is not None:
                    self._commit_duration.observe(time.perf_counter() - started)
                self._notify(self.on_committed, batch)

    async def _dead_letter(self, batch: list[MessageRecord], reason: str) -> None:
        assert self._worker is not None
        if not batch:  # only a reservation failed; the next round tries again
            return
        # File I/O stays off the event loop, in the worker, in order with the database writes.
        await self._worker.call(partial(append_dead_letters, self.dead_letter_path, batch, reason))
        self._dead_lettered += len(batch)
        self._notify(self.on_dead_lettered, batch)

    def _take_queued(self, batch: list[MessageRecord], limit: int | None = None) -> None:
        """Move queued records into ``batch`` without waiting, up to ``limit`` in all."""
        while limit is None or len(batch) < limit:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is not _Signal.WAKE:
                batch.append(item)

    def _dead_letter_leftovers(self) -> None:
        """After the writer has gone: dead-letter its batch and anything still queued."""
        # A copy: the abandoned worker call may still be reading the in-flight list.
        batch, self._in_flight = list(self._in_flight or []), None
        self._take_queued(batch)  # the intake is closed: nothing more can be queued
        if batch:
            # On the event loop: the worker may be stuck, and this is shutdown anyway.
            reason = "persistence stopped before it could be written"
            append_dead_letters(self.dead_letter_path, batch, reason)
            self._dead_lettered += len(batch)
            self._notify(self.on_dead_lettered, batch)

    async def _sleep(self, delay: float) -> None:
        """Wait between attempts; raise ``_ShutdownDeadline`` if that outlasts stop()'s timeout."""
        loop = asyncio.get_running_loop()
        wake_at = loop.time() + delay
        if not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                return
        if self._deadline is not None and wake_at >= self._deadline:
            raise _ShutdownDeadline("shutdown timeout expires before the next attempt")
        await asyncio.sleep(max(0.0, wake_at - loop.time()))

    def _count_failure(self, attempt: int, error: BaseException) -> None:
        self._failed_attempts += 1

    @staticmethod
    def _notify(
        callback: Callable[[Sequence[MessageRecord]], object], batch: list[MessageRecord]
    ) -> None:
        """Tell the listener; a failing listener is logged, it must not stop the writer."""
        try:
            callback(batch)
        except Exception:
            logger.exception("persistence listener %r failed", callback)

    # Retention.

    async def _prune_periodically(self) -> None:
        """Delete what retention no longer keeps now, then every ``prune_interval`` seconds."""
        worker, store = self._running()
        while True:
            for channel in [name for name, row in self._channels.items() if row.last]:
                try:
                    while last := await worker.call(self._prune_job(store, channel)):
                        self.on_pruned(channel, last)
                except RETRYABLE_ERRORS as exc:
                    logger.warning("retention: deleting old messages failed: %s", exc)
                    break
            await asyncio.sleep(self.prune_interval)

    def _prune_job(self, store: Store, channel: str) -> Callable[[], int]:
        """One delete of at most ``PRUNE_CHUNK`` rows, with the age cut-off taken now."""
        keep, before = retention_bounds(*self.retention(channel))
        return partial(store.prune, keep=keep, before=before, limit=PRUNE_CHUNK, channel=channel)

    def _allocator(self) -> SequenceAllocator:
        if self._sequence is None:
            raise RuntimeError("the persistence queue is not started")
        return self._sequence

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("persistence writer crashed", exc_info=exc)

    def _running(self) -> tuple[Worker, Store]:
        if self._worker is None or self._store is None:
            raise RuntimeError("the persistence queue is not started")
        if self._stopped:
            raise PersistenceClosed("the persistence queue is stopped")
        return self._worker, self._store


def retention_bounds(messages: int, days: float) -> tuple[int | None, str | None]:
    """``Store.prune``'s ``keep`` and ``before`` for a channel's retention, taken now: how
    many of the latest messages stay, and the ``created_at`` older ones go (None: no bound)."""
    before = None
    if days:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        before = cutoff.isoformat(timespec="microseconds")
    return messages or None, before


def _ignore(value: object) -> None:
    """The listener until one is set."""


def _ignore_pruned(channel: str, seq: int) -> None:
    """The retention listener until one is set."""


def append_dead_letters(path: Path, records: Sequence[MessageRecord], reason: str) -> None:
    """Append records to the dead-letter file, or to the log if the file cannot be written."""
    dead_lettered_at = datetime.now(UTC).isoformat(timespec="microseconds")
    lines = "".join(
        json.dumps(
            {
                "connection_id": record.connection_id,
                "message": record.message,
                "timestamp": record.timestamp,
                "created_at": record.created_at,
                "seq": record.seq,
                "client_msg_id": record.client_msg_id,
                "user": record.user,
                "channel": record.channel,
                "client_id": record.client_id,
                "name": record.name,
                "error": reason,
                "dead_lettered_at": dead_lettered_at,
            }
        )
        + "\n"
        for record in records
    )
    try:
        with open(path, "a", encoding="utf-8") as file:
            file.write(lines)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        logger.error(
            "could not append %d messages to dead-letter file %s (%s); logging them instead",
            len(records),
            path,
            exc,
        )
        for line in lines.splitlines():
            logger.error("dead letter: %s", line)
    else:
        logger.error("dead-lettered %d messages to %s: %s", len(records), path, reason)
