"""The archiver: every node's consumer of the channels' streams, writing them to the database.

Every stream has one consumer group (``redis_keys.GROUP``) whose consumers are the nodes. A node
reads what no node has read yet (``XREADGROUP ... >``), writes it to the archive (idempotent by
``(channel, seq)``), and acknowledges it only after the commit (``XACK``); then the stream is
trimmed of what is both archived and older than the channel's history (``redis_scripts.TRIM``).
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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .archive import RecordRejected
from .persistence import PRUNE_CHUNK, append_dead_letters, dead_letter_path_for, retention_bounds
from .redis_keys import CHANNELS, GROUP, ChannelKeys
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

    def wake(self) -> None:
        """Messages were published here: read the streams now."""
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
            if self._stopping and not written:
                return
            if not written:
                idle.set()
                if self._wake.is_set() and idle is not self._idle:
                    continue  # a settle() began during this pass: one more
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE)

    async def archive_once(self) -> int:
        """Read, write, acknowledge and trim once; returns how many entries were written."""
        redis = self.engine.redis
        now = time.monotonic()
        if now - self._channels_at >= _CHANNELS_EVERY:
            members = await redis.smembers(CHANNELS)
            self._channels = sorted(member.decode() for member in members)
            self._channels_at = now
        channels = sorted(set(self._channels) | set(self.engine.watched()))
        entries: dict[str, list[Any]] = {}
        for start in range(0, len(channels), _STREAMS):
            chunk = channels[start : start + _STREAMS]
            for stream, items in await self._read_new(chunk):
                entries.setdefault(stream, []).extend(items)
        if now - self._claimed_at >= _CLAIM_EVERY:
            self._claimed_at = now
            for channel in channels:
                claimed = await self._claim(ChannelKeys(channel).stream)
                if claimed:
                    entries.setdefault(ChannelKeys(channel).stream, []).extend(claimed)
        written = 0
        for stream, items in entries.items():
            written += await self._archive(stream, items)
        if now - self._pruned_at >= self.engine.settings.prune_interval:
            self._pruned_at = now
            await self._prune(channels)
        return written

    async def _prune(self, channels: Sequence[str]) -> None:
        """Retention: delete from the archive what a channel's namespace no longer keeps
        (every node does it; a second delete finds nothing). The streams keep their
        history; a resume from before what is left gets ``recovered: false``."""
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

    async def _read_new(self, channels: Sequence[str]) -> list[tuple[str, list[Any]]]:
        from redis.exceptions import ResponseError

        redis = self.engine.redis
        streams = {ChannelKeys(channel).stream: ">" for channel in channels}
        try:
            answer = await redis.xreadgroup(GROUP, self.engine.node, streams, count=_COUNT)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # A channel that expired unused: forget it, read the others one by one.
            answer = []
            for channel in channels:
                keys = ChannelKeys(channel)
                try:
                    one = await redis.xreadgroup(
                        GROUP, self.engine.node, {keys.stream: ">"}, count=_COUNT
                    )
                except ResponseError:
                    await redis.srem(CHANNELS, channel)
                    self._channels = [c for c in self._channels if c != channel]
                    continue
                answer.extend(one)
        return [(stream.decode(), items) for stream, items in answer or []]

    async def _claim(self, stream: str) -> list[Any]:
        """Take over the entries other nodes left pending 30 s (they died), and forget the
        consumers that left nothing pending and were idle an hour (nodes gone)."""
        from redis.exceptions import ResponseError

        redis = self.engine.redis
        try:
            answer = await redis.xautoclaim(
                stream, GROUP, self.engine.node, _CLAIM_IDLE, "0-0", count=_COUNT
            )
            for consumer in await redis.xinfo_consumers(stream, GROUP):
                if not consumer["pending"] and consumer["idle"] > _GONE_IDLE:
                    await redis.xgroup_delconsumer(stream, GROUP, consumer["name"])
        except ResponseError:
            return []
        return list(answer[1])

    async def _archive(self, stream: str, items: list[Any]) -> int:
        """Write a stream's entries, then acknowledge and trim them."""
        channel = stream[len("chat:{") : -len("}:stream")]
        records = [_record(channel, entry_id, fields) for entry_id, fields in items if fields]
        ids = [entry_id for entry_id, _ in items]
        archive = self.engine.archive
        try:
            await retry(
                lambda: archive.write(records),
                policy=self.engine.settings.retry,
                retry_on=archive.retryable,
                description=f"archive {len(records)} messages of {channel}",
            )
        except RecordRejected:
            await self._one_by_one(records)
        except archive.retryable:
            return 0  # they stay pending: claimed and written again later
        redis = self.engine.redis
        await redis.xack(stream, GROUP, *ids)
        keys = ChannelKeys(channel)
        keep = self.engine.keeps(channel)
        await redis.evalsha(TRIM.sha, 2, keys.stream, keys.meta, GROUP, keep)
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


def _record(
    channel: str, entry_id: bytes, fields: list[bytes] | dict[bytes, bytes]
) -> MessageRecord:
    """A stream entry as the row the archive stores."""
    values = (
        fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))
    )
    broadcast = json.loads(values[b"d"])
    return MessageRecord(
        connection_id=values[b"c"].decode(),
        message=broadcast["message"],
        timestamp=broadcast["timestamp"],
        created_at=values[b"t"].decode(),
        seq=int(entry_id.split(b"-", 1)[0]),
        client_msg_id=values[b"k"].decode() or None,
        user=broadcast.get("user"),
        channel=channel,
        client_id=broadcast.get("clientId"),
        name=broadcast.get("name"),
    )
