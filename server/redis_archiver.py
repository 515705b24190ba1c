"""The archiver: every node's consumer of the channels' streams, writing them to the database.

Every stream has one consumer group (``redis_keys.GROUP``) whose consumers are the nodes. A node
reads what no node has read yet (``XREADGROUP ... >``), writes it to the archive (idempotent by
``(channel, seq)``), and acknowledges it only after the commit (``XACK``); then the stream is
trimmed of what is both archived and beyond what the channel's history keeps: its latest
``history``, none older than its retention (``redis_scripts.TRIM``).
A node that dies leaves its entries pending: another claims them once they have been idle 30 s
(``XAUTOCLAIM``). A failed write is retried with the writer's linear backoff; entries that still
cannot be written stay pending in Redis and are claimed again later, so the stream is the
durable queue and nothing acknowledged to a sender is lost while the database is away. A record
the database refuses (``RecordRejected``) goes to the dead-letter file, as the local engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .archive import RecordRejected
from .persistence import PRUNE_CHUNK, append_dead_letters, dead_letter_path_for, retention_bounds
from .redis_keys import CHANNELS, GROUP
from .redis_ops import pipelined
from .redis_scripts import TRIM
from .retry import retry
from .store import MessageRecord

if TYPE_CHECKING:
    from .redis_engine import RedisEngine

__all__ = ["Archiver"]

logger = logging.getLogger("server.archive")

#: Entries read from one stream at a time.
_COUNT = 512
#: Streams in one XREADGROUP.
_STREAMS = 256
#: Seconds between two reads of the channels' list, and between two claims of others' entries.
_CHANNELS_EVERY = 10.0
_CLAIM_EVERY = 30.0
#: Milliseconds an entry stays pending before another node may claim it.
_CLAIM_IDLE = 30_000
#: Milliseconds a consumer without pending entries stays idle before it is forgotten.
_GONE_IDLE = 3_600_000
#: Seconds the archiver sleeps when there was nothing to write (a publish here wakes it).
_IDLE = 1.0
#: Seconds between a pass that wrote and the next, unless a stream has more waiting than one
#: pass reads: a trickle of messages is written 50 at a time (at 1,000 a second), not one
#: transaction, acknowledgement and trim each; the archive lags the streams by this much.
#: The first messages after a quiet time are written at once.
_GATHER = 0.05


class Archiver:
    """This node's consumer of every channel's stream."""

    def __init__(self, engine: RedisEngine) -> None:
        self.engine = engine
        self.archived = 0
        self.dead_lettered = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set by each pass that found nothing, and replaced
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._channels: list[str] = []
        self._published: set[str] = set()
        self._behind = False
        self._channels_at = -_CHANNELS_EVERY
        self._claimed_at = 0.0
        self._pruned_at = 0.0
        database = engine.settings.db_path
        # Beside the SQLite file; for a PostgreSQL archive, in the working folder's data/.
        self._dead_letters = dead_letter_path_for(
            "data/archive.db" if isinstance(database, str) else database
        )

    def start(self) -> None:
        """Start archiving in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self, channels: Iterable[str] = ()) -> None:
        """Messages were published here (to these channels): read the streams now."""
        self._published.update(channels)
        self._wake.set()

    async def settle(self) -> None:
        """Wait until a pass that starts now finds nothing more to write: what this node
        published before is in the database."""
        idle = self._idle = asyncio.Event()
        self._wake.set()
        await idle.wait()

    async def stop(self, timeout: float) -> None:
        """Archive what is there to read (within ``timeout``), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait([self._task], timeout=timeout)
            if not done:
                self._task.cancel()

    def health(self) -> dict[str, object]:
        """Figures for ``/healthz``."""
        return {"archived": self.archived, "deadLettered": self.dead_lettered}

    async def _run(self) -> None:
        from redis.exceptions import RedisError

        while True:
            idle = self._idle
            try:
                written = await self.archive_once()
            except (RedisError, OSError) as exc:
                logger.debug("archive: redis unavailable: %s", exc)
                written = 0
            except Exception:
                logger.exception("archive: a pass failed")
                written = 0
            if self._stopping and not written:
                return
            if not written:
                idle.set()
                if self._wake.is_set() and idle is not self._idle:
                    continue  # a settle() began during this pass: one more
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE)
            elif not self._stopping and not self._behind:
                await asyncio.sleep(_GATHER)

    async def archive_once(self) -> int:
        """Read, write, acknowledge and trim once; returns how many entries were written."""
        redis = self.engine.redis
        now = time.monotonic()
        if now - self._channels_at >= _CHANNELS_EVERY:
            members = await redis.smembers(CHANNELS)
            self._channels = sorted(member.decode() for member in members)
            self._channels_at = now
        # The channels of the list (read every 10 s), and those delivered or published here.
        channels = sorted(set(self._channels).union(self.engine.watched(), self._published))
        self._published.clear()
        entries: dict[str, list[Any]] = {}
        for start in range(0, len(channels), _STREAMS):
            for channel, items in await self._read_new(channels[start : start + _STREAMS]):
                entries.setdefault(channel, []).extend(items)
        if now - self._claimed_at >= _CLAIM_EVERY:
            self._claimed_at = now
            for channel in channels:
                claimed = await self._claim(channel)
                if claimed:
                    entries.setdefault(channel, []).extend(claimed)
        # A stream that gave all it may: more wait, read them without a pause.
        self._behind = any(len(items) >= _COUNT for items in entries.values())
        written = await self._archive(entries) if entries else 0
        if now - self._pruned_at >= self.engine.settings.prune_interval:
            self._pruned_at = now
            await self._prune(channels)
        return written

    async def _prune(self, channels: Sequence[str]) -> None:
        """Retention: delete from the archive what a channel's namespace no longer keeps
        (every node does it; a second delete finds nothing), and trim the streams of the
        channels that got no message since (``_archive`` trims the others)."""
        archive = self.engine.archive
        for channel in channels:
            options = self.engine.namespaces.of(channel)
            keep, before = retention_bounds(options.retention_messages, options.retention_days)
            if keep is None and before is None:
                continue
            try:
                while await archive.prune(channel, keep, before, PRUNE_CHUNK):
                    pass
            except archive.retryable as exc:
                logger.warning("retention: deleting old messages of %s failed: %s", channel, exc)
                return
        _failed(await pipelined(self.engine.redis, [self._trim(channel) for channel in channels]))

    def _trim(self, channel: str) -> tuple[object, ...]:
        """The command that trims a channel's stream to what its history and retention keep."""
        options = self.engine.namespaces.of(channel)
        keep, before = retention_bounds(options.retention_messages, options.retention_days)
        history = options.history if keep is None else min(options.history, keep)
        keys = self.engine.keys_of(channel)
        return ("EVALSHA", TRIM.sha, 2, keys.stream, keys.meta, GROUP, history, before or "")

    async def _read_new(self, channels: Sequence[str]) -> list[tuple[str, list[Any]]]:
        """The entries of these channels that no node has read yet, by channel."""
        from redis.exceptions import ResponseError

        redis = self.engine.redis
        streams = [self.engine.keys_of(channel).stream for channel in channels]
        # RESP3: a map of stream -> entries (nil when there is nothing new).
        (answer,) = await pipelined(redis, [self._read_command(streams)])
        if answer is None:
            return []
        if isinstance(answer, ResponseError):
            if "NOGROUP" not in str(answer):
                raise answer
            # A channel that expired unused: forget it, read the others one by one.
            answer = {}
            replies = await pipelined(redis, [self._read_command([stream]) for stream in streams])
            for channel, reply in zip(channels, replies, strict=True):
                if isinstance(reply, ResponseError):
                    await redis.srem(CHANNELS, channel)
                    self._channels = [c for c in self._channels if c != channel]
                else:
                    answer.update(reply or {})
        channel_of = dict(zip(streams, channels, strict=True))
        return [(channel_of[stream.decode()], items) for stream, items in answer.items()]

    def _read_command(self, streams: Sequence[str]) -> tuple[object, ...]:
        return (
            "XREADGROUP",
            "GROUP",
            GROUP,
            self.engine.node,
            "COUNT",
            _COUNT,
            "STREAMS",
            *streams,
            *(">" for _ in streams),
        )

    async def _claim(self, channel: str) -> list[Any]:
        """Take over the entries other nodes left pending 30 s (they died), and forget the
        consumers that left nothing pending and were idle an hour (nodes gone)."""
        from redis.exceptions import ResponseError

        redis = self.engine.redis
        stream = self.engine.keys_of(channel).stream
        node = self.engine.node
        try:
            (answer,) = await pipelined(
                redis, [("XAUTOCLAIM", stream, GROUP, node, _CLAIM_IDLE, "0-0", "COUNT", _COUNT)]
            )
            if isinstance(answer, ResponseError):
                return []
            for consumer in await redis.xinfo_consumers(stream, GROUP):
                if not consumer["pending"] and consumer["idle"] > _GONE_IDLE:
                    await redis.xgroup_delconsumer(stream, GROUP, consumer["name"])
        except ResponseError:
            return []
        return list(answer[1])

    async def _archive(self, entries: dict[str, list[Any]]) -> int:
        """Write the entries read, of every channel, in one transaction, then acknowledge and
        trim their streams in one pipeline; returns how many were written."""
        records = [
            _record(channel, entry_id, fields)
            for channel, items in entries.items()
            for entry_id, fields in items
            if fields
        ]
        archive = self.engine.archive
        try:
            await retry(
                lambda: archive.write(records),
                policy=self.engine.settings.retry,
                retry_on=archive.retryable,
                description=f"archive {len(records)} messages",
            )
        except RecordRejected:
            await self._one_by_one(records)
        except archive.retryable:
            return 0  # they stay pending: claimed and written again later
        commands: list[tuple[object, ...]] = []
        for channel, items in entries.items():
            ids = [entry_id for entry_id, _ in items]
            commands += [
                ("XACK", self.engine.keys_of(channel).stream, GROUP, *ids),
                self._trim(channel),
            ]
        _failed(await pipelined(self.engine.redis, commands))
        self.archived += len(records)
        return len(records)

    async def _one_by_one(self, records: Sequence[MessageRecord]) -> None:
        """Write each record alone; dead-letter those the database refuses."""
        for record in records:
            try:
                await self.engine.archive.write([record])
            except RecordRejected as exc:
                self.dead_lettered += 1
                with contextlib.suppress(OSError):  # data/ beside a PostgreSQL archive
                    self._dead_letters.parent.mkdir(parents=True, exist_ok=True)
                append_dead_letters(self._dead_letters, [record], str(exc))


def _failed(replies: Sequence[object]) -> None:
    """Log the first error of a pipeline's acknowledgements and trims (what was not
    acknowledged stays pending and is claimed again; what was not trimmed, next time)."""
    errors = [reply for reply in replies if isinstance(reply, Exception)]
    if errors:
        logger.warning(
            "archive: %d of %d commands failed: %s", len(errors), len(replies), errors[0]
        )


def _record(channel: str, entry_id: bytes, fields: list[bytes]) -> MessageRecord:
    """A stream entry, its fields in the order ``PUBLISH`` writes them, as the row the archive
    stores."""
    _, data, _, connection_id, _, client_msg_id, _, created_at = fields
    broadcast = json.loads(data.decode())
    return MessageRecord(
        connection_id=connection_id.decode(),
        message=broadcast["message"],
        timestamp=broadcast["timestamp"],
        created_at=created_at.decode(),
        seq=int(entry_id.split(b"-", 1)[0]),
        client_msg_id=client_msg_id.decode() or None,
        user=broadcast.get("user"),
        channel=channel,
        client_id=broadcast.get("clientId"),
        name=broadcast.get("name"),
    )
