"""PersistenceQueue: a bounded in-memory queue plus one writer that owns the database.

The receive path calls ``put_nowait()``, which never touches the database. One writer task takes
the queued records in batches and runs ``Store.insert_many`` in a dedicated thread, the only
thread that ever uses the SQLite connection (aiosqlite's design: jobs go to the thread through a
queue, results come back through ``call_soon_threadsafe``, a sentinel stops it). Each batch is
written with ``retry()``; a batch that still fails after the last attempt is appended to the
dead-letter file and logged, and the writer carries on with the next batch.

Decisions:

* Full queue: ``put_nowait()`` raises ``asyncio.QueueFull`` and queues nothing; ``put()`` waits
  for room. The caller picks; a connection handler should fall back to awaiting ``put()``,
  which stops reading from that client (backpressure) instead of dropping its message.
* Dead letters: ``<db>.deadletter.jsonl`` beside the database (``messages.db`` gives
  ``messages.db.deadletter.jsonl``), one JSON object per message and per line, in queue order:
  ``connection_id``, ``message``, ``timestamp``, ``created_at`` (the ``MessageRecord`` fields,
  so the line can be replayed), plus ``error`` and ``dead_lettered_at``. The file is ASCII
  (``\\uXXXX`` escapes), so any text round-trips through ``json.loads``. If even that file cannot
  be written, each message is written to the log instead, at ERROR level.
* ``depth`` counts every accepted record not yet persisted or dead-lettered, the batch being
  written included: it is what a crash would lose.
* ``stop(timeout)`` keeps accepting records until the writer has drained the queue, then refuses
  them with ``PersistenceClosed``. Once the timeout expires, the batch being retried and
  everything still queued is dead-lettered instead of written. A database call still running
  ``_STOP_GRACE`` seconds later is abandoned and its batch dead-lettered too: should the call
  commit after all, that batch is duplicated, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from .retry import RetryPolicy, retry
from .store import MessageRecord, Store

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CAPACITY",
    "RETRYABLE_ERRORS",
    "PersistenceClosed",
    "PersistenceQueue",
    "dead_letter_path_for",
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
# Errors that may go away: a lock held elsewhere, a read-only or missing file or folder.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
# After the shutdown timeout, a database call already running in the worker thread gets this
# long to finish (it is bounded by the store's short busy timeout), because abandoning it
# could not tell whether its batch was committed.
_STOP_GRACE = 2.0


class PersistenceClosed(RuntimeError):
    """The queue is stopped: it takes no more records and serves no more reads."""


class _Signal(enum.Enum):
    WAKE = enum.auto()  # queued by stop() to wake a writer waiting on an empty queue


class _ShutdownDeadline(Exception):
    """The shutdown timeout expires before the next attempt could start."""


_Job: TypeAlias = tuple["asyncio.Future[Any] | None", Callable[[], Any]]


def dead_letter_path_for(db_path: str | os.PathLike[str]) -> Path:
    """Return the dead-letter file of a database: ``<db>.deadletter.jsonl`` beside it."""
    path = Path(db_path)
    return path.with_name(path.name + ".deadletter.jsonl")


class PersistenceQueue:
    """Queue chat messages in memory and write them to SQLite from one background worker.

    Args:
        db_path: The SQLite database file; its folder must exist when ``start()`` is called.
        capacity: The most records waiting in memory.
        batch_size: The most records written in one transaction.
        policy: Attempts and delays for each batch; ``RetryPolicy()`` by default.
        dead_letter_path: Where failed batches go; ``dead_letter_path_for(db_path)`` by default.
        busy_timeout: Seconds SQLite waits for another connection's lock before an attempt fails.

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
        self._busy_timeout = busy_timeout
        self._queue: asyncio.Queue[MessageRecord | _Signal] = asyncio.Queue(maxsize=capacity)
        self._worker: _Worker | None = None
        self._store: Store | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: list[MessageRecord] | None = None
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

    # The receive path.

    def put_nowait(self, record: MessageRecord) -> None:
        """Queue a record without waiting and without touching the database.

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

    async def put(self, record: MessageRecord) -> None:
        """Queue a record, waiting for room if the queue is full (backpressure).

        Args:
            record: The message to persist.

        Raises:
            PersistenceClosed: If the queue has stopped.
        """
        if not self._accepting:
            raise PersistenceClosed("the persistence queue is stopped")
        await self._queue.put(record)
        self._accepted += 1

    # Reads, run in the worker thread; they see persisted records only.

    async def last(self, n: int) -> list[MessageRecord]:
        """Return the last ``n`` persisted messages, oldest first (see ``Store.last``)."""
        worker, store = self._running()
        return await worker.call(partial(store.last, n))

    async def after(self, message_id: int, limit: int) -> list[MessageRecord]:
        """Return up to ``limit`` persisted messages with an id above ``message_id``, in order."""
        worker, store = self._running()
        return await worker.call(partial(store.after, message_id, limit))

    async def count(self) -> int:
        """Return the number of messages in the database."""
        worker, store = self._running()
        return await worker.call(store.count)

    # Life cycle.

    async def start(self) -> None:
        """Open the database in a new worker thread and start the writer task.

        Raises:
            sqlite3.Error: If the database cannot be opened (a missing folder, a directory...).
            RuntimeError: If the queue was already started or stopped.
        """
        if self._worker is not None or self._stop_started:
            raise RuntimeError("a PersistenceQueue can only be started once")
        worker = _Worker(f"persistence {self.db_path.name}")
        worker.start()
        try:
            store = await worker.call(partial(Store, self.db_path, busy_timeout=self._busy_timeout))
        except BaseException:
            worker.shutdown()
            raise
        self._worker, self._store = worker, store
        self._task = asyncio.create_task(self._run(), name="persistence writer")
        self._task.add_done_callback(self._writer_done)

    # A parameter rather than asyncio.timeout() around the call: cancelling could only lose
    # records, while this timeout ends with the unwritten ones dead-lettered and the store closed.
    async def stop(self, timeout: float | None = 10.0) -> None:
        """Write everything still queued, then close the database. Idempotent.

        Records may still be queued while the writer drains the queue; afterwards ``put`` and
        ``put_nowait`` raise ``PersistenceClosed``.

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
        self._accepting = False
        self._stopped = True
        await self._dead_letter_leftovers()
        if worker is None or store is None:
            return
        if clean:
            await worker.call(store.close)
            worker.shutdown()
            worker.join(timeout=1.0)
        else:
            # The worker may be stuck in a database call: close the store whenever it gets there.
            worker.shutdown(final=store.close)

    # The writer.

    async def _run(self) -> None:
        while True:
            if self._stopping.is_set() and self._queue.empty():
                # Same event-loop step as the emptiness check: no record can slip in between.
                self._accepting = False
                return
            item = await self._queue.get()
            batch: list[MessageRecord] = [] if item is _Signal.WAKE else [item]
            self._take_queued(batch, self.batch_size)
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[MessageRecord]) -> None:
        worker, store = self._worker, self._store
        assert worker is not None
        assert store is not None
        self._in_flight = batch
        if self._deadline is not None and asyncio.get_running_loop().time() >= self._deadline:
            await self._dead_letter(batch, "shutdown timeout expired before it could be written")
        else:
            try:
                await retry(
                    partial(worker.call, partial(store.insert_many, batch)),
                    policy=self.policy,
                    retry_on=RETRYABLE_ERRORS,
                    sleep=self._sleep,
                    on_failure=self._count_failure,
                    description=f"persisting {len(batch)} messages",
                )
            except Exception as exc:
                await self._dead_letter(batch, f"{type(exc).__name__}: {exc}")
            else:
                self._persisted += len(batch)
        self._in_flight = None

    async def _dead_letter(self, batch: list[MessageRecord], reason: str) -> None:
        assert self._worker is not None
        # File I/O stays off the event loop, in the worker, in order with the database writes.
        await self._worker.call(partial(_append_dead_letters, self.dead_letter_path, batch, reason))
        self._dead_lettered += len(batch)

    def _take_queued(self, batch: list[MessageRecord], limit: int | None = None) -> None:
        """Move queued records into ``batch`` without waiting, up to ``limit`` in all."""
        while limit is None or len(batch) < limit:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is not _Signal.WAKE:
                batch.append(item)

    async def _dead_letter_leftovers(self) -> None:
        """After the writer has gone: dead-letter its batch and anything still queued."""
        # A copy: the abandoned worker call may still be reading the in-flight list.
        batch, self._in_flight = list(self._in_flight or []), None
        while True:
            self._take_queued(batch)
            if batch:
                # On the event loop: the worker may be stuck, and this is shutdown anyway.
                reason = "persistence stopped before it could be written"
                _append_dead_letters(self.dead_letter_path, batch, reason)
                self._dead_lettered += len(batch)
                batch = []
            # Each get_nowait() above woke a put() waiting for room; let it queue its record.
            await asyncio.sleep(0)
            if self._queue.empty():
                return

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

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("persistence writer crashed", exc_info=exc)

    def _running(self) -> tuple[_Worker, Store]:
        if self._worker is None or self._store is None:
            raise RuntimeError("the persistence queue is not started")
        if self._stopped:
            raise PersistenceClosed("the persistence queue is stopped")
        return self._worker, self._store


class _Worker:
    """One thread running jobs in order; the only thread that touches the SQLite connection."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Daemon: a worker stuck in a database call must not keep the process alive.
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def call(self, function: Callable[[], T]) -> T:
        """Run ``function()`` in the worker thread and return its result or raise its error."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((future, function))
        return await future

    def shutdown(self, final: Callable[[], object] | None = None) -> None:
        """Let the thread finish the queued jobs, then ``final()``, then exit."""
        if final is not None:
            self._jobs.put((None, final))
        self._jobs.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function = job
            try:
                result = function()
            except BaseException as exc:
                if future is None:
                    logger.debug("persistence worker job %r failed: %s", function, exc)
                else:
                    _settle(future, None, exc)
            else:
                if future is not None:
                    _settle(future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """Resolve ``future`` from the worker thread, on its own event loop."""

    def settle() -> None:
        if future.done():  # the caller was cancelled
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    # A closed event loop raises RuntimeError: nobody is waiting for the result any more.
    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(settle)


def _append_dead_letters(path: Path, records: Sequence[MessageRecord], reason: str) -> None:
    """Append records to the dead-letter file, or to the log if the file cannot be written."""
    dead_lettered_at = datetime.now(UTC).isoformat(timespec="microseconds")
    lines = "".join(
        json.dumps(
            {
                "connection_id": record.connection_id,
                "message": record.message,
                "timestamp": record.timestamp,
                "created_at": record.created_at,
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
