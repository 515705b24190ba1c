"""RedisEngine: channels shared by every server process that uses one Redis (``engine.Engine``).

After the model of Centrifugo's Redis engine (``../docs/redis.md`` has the key layout):

- **Publishing.** One Lua script per message (``redis_scripts.PUBLISH``) gives it the next seq
  of its channel, appends it to the channel's stream and publishes it on the channel's topic,
  atomically: every node receives a channel's messages in seq order. A sender's clientMsgId is
  remembered there for ten minutes (a key with a TTL, read and set by the same script), so a
  message sent again is acknowledged with its first seq. The drafts waiting are sent as one
  pipeline, one at a time: a sender's messages keep their order. The ack goes out once the
  script ran and this node delivered the message (and those before it) to its subscribers.
- **Delivery.** A node subscribes to a channel's topic while it has subscribers of the channel
  (``history`` starts it, ``forget`` ends it), and checks every message's seq and epoch: one
  already delivered is dropped, one after a gap waits while the gap is read from the stream
  (``_Watch``). A channel whose epoch changed (Redis lost its data), or whose gap is no longer
  anywhere, starts again (``Listener.reset``): its subscribers get ``recovered: false``.
- **Outages.** When Redis cannot be reached, publishes get ``unavailable`` at once (the
  clients send them again: the same clientMsgId is recognised), and the node reconnects with
  backoff (0.5 s doubling to 30 s), subscribes again and reads what it missed of each channel.
- **Presence** is kept per node and member (``redis_presence.py``): refreshed every 25 s,
  expiring after 60 s, so a crashed node's members leave within about a minute.
- **Archive.** Every stream is read by a consumer group whose consumers are the nodes'
  archivers (``redis_archiver.py``): each message is written to the database, acknowledged
  after the commit, and trimmed from the stream once it is both archived and beyond what the
  channel's history keeps (its count and its retention's age). A history that reaches further
  back than the stream reads the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import messages
from .archive import Archive, open_archive
from .chat_metrics import ChatMetrics
from .engine import (
    Ack,
    Draft,
    EngineClosed,
    EngineUnavailable,
    Listener,
    Member,
    NoListener,
    Position,
    Publication,
    Recovery,
    payload_of,
)
from .history import Resume, payload_size
from .namespaces import Namespaces
from .recent import DEFAULT_WINDOW
from .redis_keys import CHANNELS, GROUP, USER_TOPIC, ChannelKeys, node_topic
from .redis_ops import pipelined
from .redis_scripts import HISTORY, INIT, PUBLISH, SCRIPTS, SET_READ, Script
from .settings import Settings
from .store import MessageRecord, format_timestamp

__all__ = ["RedisEngine", "connect_redis"]

logger = logging.getLogger("server.engine")

_MISSING_REDIS = "--engine redis:// needs redis-py: python -m pip install 'rfc6455-chat[redis]'"
#: Connections to Redis per node (besides its pub/sub connection): commands beyond wait.
_CONNECTIONS = 32
#: The most drafts in one pipeline.
_PIPELINE = 512
#: Reconnection delays: the first, and the most.
_RECONNECT_FIRST = 0.5
_RECONNECT_MOST = 30.0
#: A channel that never gets a message expires after this many seconds unread.
_UNUSED_TTL = 600
#: A channel given a new epoch after an earlier one (Redis lost its data, or the channel
#: expired unused) goes on this far above what the archive knows of it (its last seq, or
#: where the last epoch began): messages of a lost epoch that archivers had read and are
#: still writing (at most 512 per node) keep their seqs, and the new ones get seqs of their own.
_EPOCH_GAP = 100_000
#: The longest a history waits for this node's delivery to reach what it read.
_CATCH_UP = 10.0


def connect_redis(url: str) -> Any:
    """A redis-py client for ``url`` that never retries by itself (a command that failed may
    have run: a publish; the engine decides), and whose commands wait for one of its
    connections rather than fail when all are busy (a reconnection storm's subscribes);
    raises ``ImportError`` naming the extra."""
    try:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:
        raise ImportError(_MISSING_REDIS) from None
    pool = BlockingConnectionPool.from_url(
        url,
        protocol=3,  # RESP3 (redis-py 8's default): the replies the engine reads raw
        max_connections=_CONNECTIONS,
        timeout=_CATCH_UP,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=0,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


@dataclass(slots=True)
class _Live:
    """A message as a node receives it on a channel's topic."""

    seq: int
    epoch: str
    connection_id: str
    payload: bytes


@dataclass(slots=True)
class _Watch:
    """A channel this node delivers: what it has delivered, and what waits.

    ``pending`` is not None while the node is not sure of its position (the first read, a
    gap being filled, a reconnection): live messages wait there, in order.
    """

    keys: ChannelKeys
    epoch: str = ""
    top: int = 0
    pending: list[_Live] | None = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)
    # Acks of this node's messages, held until they are delivered here (seq order), each
    # with when its script replied (``time.perf_counter``): their pub/sub lag.
    acks: list[tuple[Ack, float]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Read:
    """What ``HISTORY`` read: the position, entries after ``since``, the latest entries."""

    epoch: str
    top: int
    after: list[tuple[int, bytes, str]]
    latest: list[tuple[int, bytes, str]]


class RedisEngine:
    """Channels in Redis, shared by every node that uses it; messages archived in ``db``.

    Args:
        settings: The server's settings (``engine`` is the Redis URL, ``db_path`` the archive).
        namespaces: The channels' options (history).
        redis: A client (``connect_redis``); by default one for ``settings.engine``.
        archive: The database; by default ``open_archive(settings.db)``.
        metrics: Where publishes' round trips, pub/sub lag, gaps and reconnections count.
    """

    def __init__(
        self,
        settings: Settings,
        namespaces: Namespaces,
        *,
        redis: Any = None,
        archive: Archive | None = None,
        metrics: ChatMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or ChatMetrics()
        self.namespaces = namespaces
        self.listener: Listener = NoListener()
        self.node = uuid.uuid4().hex
        self.redis = connect_redis(settings.engine) if redis is None else redis
        self.archive = open_archive(settings.db_path) if archive is None else archive
        self._watches: dict[str, _Watch] = {}
        self._users: set[str] = set()  # users with connections here
        self._keys: dict[str, ChannelKeys] = {}
        self._outbox: list[Draft] = []
        self._room = asyncio.Event()
        self._room.set()
        self._flusher: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._confirmations: dict[str, list[asyncio.Future[None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._available = False
        self._closed = False
        self._outages = 0
        # Connections lost: a reconnection that saw one more meanwhile goes round again.
        self._losses = 0
        # Imported here: redis-py is an optional extra.
        from .redis_archiver import Archiver
        from .redis_presence import Presence

        self.presence = Presence(self)
        self.archiver = Archiver(self)

    # Life cycle.

    async def start(self) -> None:
        """Connect to Redis and to the database, subscribe this node's topic, start the
        archiver and presence refresh; raises what keeps it from running."""
        from redis.exceptions import RedisError

        try:
            await self.archive.start()
        except self.archive.retryable as exc:
            await _quietly(self.redis.aclose())
            raise EngineUnavailable(f"cannot open the archive: {_first_line(exc)}") from None
        try:
            await self._load_scripts()
            await self._connect_pubsub()
        except BaseException as exc:
            await self.archive.close()
            await _quietly(self.redis.aclose())
            if isinstance(exc, RedisError | OSError | TimeoutError):
                raise EngineUnavailable(f"cannot reach Redis: {_first_line(exc)}") from None
            raise
        self._available = True
        self.presence.start()
        self.archiver.start()

    async def stop(self, timeout: float) -> None:
        """Publish what waits (within ``timeout``), take this node's members out of presence,
        archive what this node read, then close."""
        self._closed = True
        self._room.set()
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=timeout)
        for draft in self._outbox:
            self._unavailable(draft)
        self._outbox.clear()
        for watch in self._watches.values():
            self._release_acks(watch, everything=True)
        await self.presence.stop(timeout)
        await self.archiver.stop(timeout)
        for task in (self._reader, self._reconnecting, *self._tasks):
            if task is not None:
                task.cancel()
        if self._pubsub is not None:
            await _quietly(self._pubsub.aclose())
        await _quietly(self.redis.aclose())
        await self.archive.close()

    def health(self) -> dict[str, object]:
        """Figures for ``/healthz``."""
        return {
            "engine": "redis",
            "redis": "up" if self._available else "down",
            "outages": self._outages,
            "outbox": len(self._outbox),
            "channels": len(self._watches),
            **self.archiver.health(),
        }

    def figures(self) -> dict[str, float]:
        """The outbox, the archive's counts and the members here, for ``/metrics``."""
        archiver = self.archiver
        return {
            "presence_members": self.presence.local_members(),
            "queue_depth": len(self._outbox),
            "persisted": archiver.archived,
            "dead_letters": archiver.dead_lettered,
        }

    # Publishing.

    def ready(self) -> bool:
        """Whether ``publish()`` may be called now (room in the outbox)."""
        return len(self._outbox) < self.settings.queue_capacity

    async def wait_ready(self) -> None:
        """Wait for room in the outbox; raises ``EngineClosed`` once stopped."""
        while not self.ready():
            if self._closed:
                raise EngineClosed("the engine has stopped")
            self._room.clear()
            await self._room.wait()
        if self._closed:
            raise EngineClosed("the engine has stopped")

    def publish(self, draft: Draft) -> None:
        """Send a message to Redis with the next pipeline; its ack comes once the script ran,
        or ``unavailable`` at once while Redis cannot be reached."""
        if self._closed:
            raise EngineClosed("the engine has stopped")
        if not self._available:
            self._unavailable(draft)
            return
        self._outbox.append(draft)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    def _unavailable(self, draft: Draft) -> None:
        self.listener.acked((Ack(draft, 0, "", stored=False, unavailable=True),))

    async def _flush(self) -> None:
        """Run the publish script of every draft waiting, a pipeline at a time."""
        try:
            while self._outbox:
                batch = self._outbox[:_PIPELINE]
                del self._outbox[:_PIPELINE]
                if len(self._outbox) < self.settings.queue_capacity:
                    self._room.set()
                again = await self._publish_batch(batch)
                if again:
                    self._outbox[:0] = again
        finally:
            self._flusher = None

    async def _publish_batch(self, batch: list[Draft]) -> list[Draft]:
        """Publish drafts; returns those to publish again (a channel given its meta since)."""
        from redis.exceptions import NoScriptError, RedisError, ResponseError

        now = datetime.now(UTC)
        timestamp = format_timestamp(now)
        created_at = now.isoformat(timespec="microseconds")
        commands = []
        for draft in batch:
            keys = self.keys_of(draft.channel)
            head, tail = messages.broadcast_around_seq(
                draft.connection_id,
                draft.text,
                timestamp,
                draft.user,
                channel=draft.channel,
                client_id=draft.client_id,
                name=draft.name,
            )
            sender, client_msg_id = draft.sender, draft.client_msg_id
            remembered = sender is not None and client_msg_id is not None
            commands.append(
                (
                    "EVALSHA",
                    PUBLISH.sha,
                    3,
                    keys.meta,
                    keys.stream,
                    keys.dedupe(sender, client_msg_id)
                    if sender is not None and client_msg_id is not None
                    else keys.meta,
                    head,
                    tail,
                    draft.connection_id,
                    client_msg_id or "",
                    created_at,
                    DEFAULT_WINDOW if remembered else 0,
                    keys.topic,
                )
            )
        sent = time.perf_counter()
        try:
            results = await pipelined(self.redis, commands)
        except (RedisError, OSError) as exc:
            self._lost_redis(exc)
            for draft in batch:
                self._unavailable(draft)
            return []
        self.metrics.redis_publish_duration.observe(time.perf_counter() - sent)
        acks: list[Ack] = []
        again: list[Draft] = []
        missing: set[str] = set()
        for draft, result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):
                again.append(draft)
            elif isinstance(result, ResponseError) and str(result).startswith("NOMETA"):
                missing.add(draft.channel)
                again.append(draft)
            elif isinstance(result, Exception):
                logger.warning(
                    "publish to %s failed: %s",
                    draft.channel,
                    result,
                    extra={"event": "publish_failed", "channel": draft.channel},
                )
                acks.append(Ack(draft, 0, "", stored=False, unavailable=True))
            else:
                seq, epoch, duplicate = result
                acks.append(Ack(draft, int(seq), epoch.decode(), duplicate=bool(duplicate)))
        if acks:
            self._acknowledge(acks)
            self.archiver.wake({ack.draft.channel for ack in acks})
        if again:
            try:
                if len(missing) < len(again):
                    await self._load_scripts()
                for channel in missing:
                    await self._init(self.keys_of(channel))
            except (RedisError, OSError) as exc:
                self._lost_redis(exc)
                for draft in again:
                    self._unavailable(draft)
                return []
            except Exception:
                # The archive cannot say where the channel's seqs go on (it is read first).
                logger.exception("cannot give %s a new epoch", ", ".join(sorted(missing)))
                for draft in again:
                    self._unavailable(draft)
                return []
        return again

    # Channels' meta and history.

    def keys_of(self, channel: str) -> ChannelKeys:
        """A channel's key names, made once for up to 4,096 channels at a time."""
        keys = self._keys.get(channel)
        if keys is None:
            if len(self._keys) > 4096:
                self._keys.clear()
            keys = self._keys[channel] = ChannelKeys(channel)
        return keys

    async def _init(self, keys: ChannelKeys) -> None:
        """Give a channel its meta: a new epoch, after every seq the archive knows of the
        channel (so seqs are never used twice, even after Redis lost its data before the
        archive had any message of it), recorded there first."""
        known = await self.archive.floor(keys.channel)
        floor = 0 if known is None else known + _EPOCH_GAP
        await self.archive.begin(keys.channel, floor)
        await self.redis.sadd(CHANNELS, keys.channel)
        made = await self._evalsha(
            INIT, keys.meta, keys.stream, args=(str(uuid.uuid4()), floor, GROUP, _UNUSED_TTL)
        )
        if made:
            logger.info(
                "channel %s: a new epoch, after seq %d",
                keys.channel,
                floor,
                extra={"event": "new_epoch", "channel": keys.channel},
            )

    async def _read(
        self, channel: str, *, after: int | None = None, most: int = 0, latest: int = 0
    ) -> _Read:
        """A channel's position and entries (``HISTORY``), its meta made first if need be.

        Raises:
            EngineUnavailable: Redis cannot be reached.
        """
        from redis.exceptions import NoScriptError, RedisError, ResponseError

        keys = self.keys_of(channel)
        args = (-1 if after is None else after, most, latest, _UNUSED_TTL)
        for _ in range(3):
            try:
                epoch, top, newer, older = await self._evalsha(
                    HISTORY, keys.meta, keys.stream, args=args
                )
            except NoScriptError:
                await self._load_scripts()
            except ResponseError as exc:
                if not str(exc).startswith("NOMETA"):
                    raise EngineUnavailable(str(exc)) from None
                try:
                    await self._init(keys)
                except (RedisError, OSError) as error:
                    self._lost_redis(error)
                    raise EngineUnavailable(str(error)) from None
                except Exception as error:
                    logger.exception("cannot give %s a new epoch", channel)
                    raise EngineUnavailable(str(error)) from None
            except (RedisError, OSError) as exc:
                self._lost_redis(exc)
                raise EngineUnavailable(str(exc)) from None
            else:
                return _Read(epoch.decode(), int(top), _entries(newer), _entries(older))
        raise EngineUnavailable(f"cannot read {channel}")

    async def _evalsha(self, script: Script, *keys: str, args: Sequence[object]) -> Any:
        return await self.redis.evalsha(script.sha, len(keys), *keys, *args)

    async def _load_scripts(self) -> None:
        for script in SCRIPTS:
            await self.redis.script_load(script.source)

    async def position(self, channel: str) -> Position:
        """The channel's epoch and last seq, read from Redis."""
        if not self._available:
            raise EngineUnavailable("Redis cannot be reached")
        read = await self._read(channel)
        return Position(read.epoch, read.top)

    async def known(self, channel: str) -> bool:
        """Whether the channel has a meta key in Redis (or subscribers here)."""
        if channel in self._watches:
            return True
        from redis.exceptions import RedisError

        try:
            return bool(await self.redis.exists(self.keys_of(channel).meta))
        except (RedisError, OSError) as exc:
            raise EngineUnavailable(str(exc)) from None

    async def history(
        self,
        channel: str,
        resume: Resume | None,
        *,
        count: int,
        resume_max: int,
        max_bytes: int | None,
    ) -> Recovery:
        """The latest ``count`` messages, or everything after ``since`` (from the stream,
        and from the archive for what the stream no longer holds); this node delivers the
        channel from now on (``forget`` ends it)."""
        if not self._available:
            raise EngineUnavailable("Redis cannot be reached")
        watch = await self._watch(channel)
        if resume is None:
            read = await self._read(channel, latest=count)
            items = await self._latest(channel, read, count, max_bytes)
            await self._caught_up(watch, read.top)
            return Recovery(read.epoch, items, False, read.top)
        read = await self._read(channel, after=resume.since, most=resume_max + 1, latest=count)
        recovered = await self._missed(channel, resume, read, resume_max, max_bytes)
        if recovered is None:
            items = await self._latest(channel, read, count, max_bytes)
        await self._caught_up(watch, read.top)
        if recovered is None:
            return Recovery(read.epoch, items, False, read.top)
        return Recovery(read.epoch, recovered, True, read.top)

    async def _latest(
        self, channel: str, read: _Read, count: int, max_bytes: int | None
    ) -> list[bytes]:
        """The channel's latest ``count`` messages within ``max_bytes``: the stream's, and
        before them the archive's when the stream holds fewer (Redis lost its data)."""
        entries = list(reversed(read.latest))
        items = [payload for _, payload, _ in entries]
        first = entries[0][0] if entries else read.top + 1
        if len(entries) < count and first > 1:
            room = 2**31 if max_bytes is None else max_bytes
            try:
                older = await self.archive.last(channel, count - len(entries), room, first - 1)
            except self.archive.retryable as exc:
                logger.warning("history: cannot read the archive of %s: %s", channel, exc)
                older = []
            items = [payload_of(record) for record in older] + items
        return _fit(items, max_bytes)

    async def _missed(
        self,
        channel: str,
        resume: Resume,
        read: _Read,
        resume_max: int,
        max_bytes: int | None,
    ) -> list[bytes] | None:
        """Everything after ``resume.since``, or None if that cannot be given exactly."""
        if resume.epoch != read.epoch:
            return None
        entries = await self._after(channel, resume.since, read, resume_max, max_bytes)
        if entries is None:
            return None
        newer = [payload for _, payload, _ in entries]
        if max_bytes is not None and payload_size(newer) > max_bytes:
            return None
        return newer

    async def _after(
        self, channel: str, since: int, read: _Read, most: int, max_bytes: int | None
    ) -> list[tuple[int, bytes, str]] | None:
        """Every message after ``since`` through ``read.top``: the stream's (``read.after``)
        and, before them, the archive's; None if some are in neither, or more than ``most``."""
        top = read.top
        if since > top or top - since > most:
            return None
        entries = read.after
        first = entries[0][0] if entries else top + 1
        if first > since + 1:
            older = await self.archive.after(channel, since, first - 1, most, max_bytes)
            if older is None:
                return None
            archived = [(r.seq, payload_of(r), r.connection_id) for r in older]
            entries = archived + entries
        if len(entries) != top - since:
            return None
        return entries

    async def stored(
        self, channel: str, since: int | None, limit: int, max_bytes: int
    ) -> list[dict[str, object]]:
        """At most ``limit`` acknowledged messages after ``since`` (the latest if None),
        oldest first, from the stream and the archive."""
        if since is None:
            read = await self._read(channel, latest=limit)
            items = await self._latest(channel, read, limit, max_bytes)
        else:
            read = await self._read(channel, after=since, most=limit)
            entries = read.after
            first = entries[0][0] if entries else read.top + 1
            older: list[MessageRecord] = []
            if first > since + 1:
                through = min(first - 1, since + limit)
                older = await self.archive.after(channel, since, through, limit, max_bytes) or []
            items = [payload_of(record) for record in older] + [p for _, p, _ in entries]
        return [json.loads(payload) for payload in _fit(items[:limit], max_bytes)]

    # Delivery.

    async def _watch(self, channel: str) -> _Watch:
        """Deliver ``channel`` here: subscribe to its topic, then read where it is."""
        watch = self._watches.get(channel)
        if watch is None:
            watch = self._watches[channel] = _Watch(self.keys_of(channel))
            task = asyncio.get_running_loop().create_task(self._start_watch(watch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not watch.ready.is_set():
            try:
                await asyncio.wait_for(watch.ready.wait(), _CATCH_UP)
            except TimeoutError:
                raise EngineUnavailable(f"cannot subscribe to {channel}") from None
        return watch

    async def _start_watch(self, watch: _Watch) -> None:
        from redis.exceptions import RedisError

        try:
            await self._subscribe(watch.keys.topic)
            await self._recover(watch)
        except (RedisError, OSError, EngineUnavailable, TimeoutError) as exc:
            # The reconnection subscribes every watch again, and recovers it.
            self._lost_pubsub(exc)

    async def _subscribe(self, topic: str) -> None:
        """Subscribe to a topic and wait for Redis's confirmation: what is published after
        it reaches this node."""
        pubsub, reader = self._pubsub, self._reader
        if pubsub is None or reader is None or reader.done():
            raise ConnectionError("no pub/sub connection")
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(topic, []).append(confirmed)
        await pubsub.subscribe(topic)
        await asyncio.wait_for(confirmed, _CATCH_UP)

    async def _recover(self, watch: _Watch) -> None:
        """Read where a channel is, and go on from there (a first read, or after a gap or a
        reconnection): deliver what the stream, or the archive, holds after what was
        delivered; start again if the epoch changed or some of it is nowhere."""
        channel = watch.keys.channel
        if watch.pending is None:
            watch.pending = []
        async with watch.lock:  # one at a time: a fill and a reconnection may overlap
            most = self.settings.resume_max
            first = not watch.ready.is_set()
            # The first read needs the position only.
            read = (
                await self._read(channel)
                if first
                else await self._read(channel, after=watch.top, most=most + 1)
            )
            if self._watches.get(channel) is not watch:
                return
            if first:
                watch.epoch, watch.top = read.epoch, read.top
            else:
                entries = None
                if read.epoch == watch.epoch:
                    entries = await self._after(channel, watch.top, read, most, None)
                if entries is None:
                    logger.warning(
                        "channel %s: cannot go on from seq %d: starting again",
                        channel,
                        watch.top,
                        extra={"event": "channel_reset", "channel": channel},
                    )
                    watch.epoch, watch.top = read.epoch, read.top
                    self._release_acks(watch, everything=True)
                    self.listener.reset(channel)
                else:
                    logger.debug("channel %s: %d read after a gap", channel, len(entries))
                    if entries:  # a gap (or a reconnection's) held messages: filled
                        self.metrics.redis_gaps_filled.value += 1
                    for seq, payload, connection_id in entries:
                        self._deliver(watch, seq, payload, connection_id)
            watch.ready.set()
            self._drain(watch)

    def _drain(self, watch: _Watch) -> None:
        """Take the live messages that waited, in order, until a gap (its fill goes on)."""
        pending, watch.pending = watch.pending or [], None
        for index, live in enumerate(pending):
            if not self._take(watch, live):
                _waiting(watch).extend(pending[index + 1 :])
                return

    def _take(self, watch: _Watch, live: _Live) -> bool:
        """Check a live message's epoch and seq, and deliver it or drop it (True), or wait
        for the gap before it to be filled (False)."""
        if live.epoch != watch.epoch or live.seq > watch.top + 1:
            logger.debug(
                "channel %s: seq %d after %d: reading the gap",
                watch.keys.channel,
                live.seq,
                watch.top,
            )
            watch.pending = [live]
            self._spawn(self._fill(watch))
            return False
        if live.seq == watch.top + 1:
            self._deliver(watch, live.seq, live.payload, live.connection_id)
        return True

    async def _fill(self, watch: _Watch) -> None:
        from redis.exceptions import RedisError

        try:
            await self._recover(watch)
        except (RedisError, OSError, EngineUnavailable) as exc:
            # The reconnection recovers it.
            self._lost_pubsub(exc)

    def _acknowledge(self, acks: list[Ack]) -> None:
        """Send acks, each once this node has delivered its message (and those before it)
        to the channel's subscribers here: a sender that counts its own seqs as seen never
        gets ahead of the broadcasts (as the local engine acks after its broadcast)."""
        now: list[Ack] = []
        replied = time.perf_counter()
        lag = self.metrics.redis_pubsub_lag
        for ack in acks:
            watch = self._watches.get(ack.draft.channel)
            if watch is None or watch.top >= ack.seq:
                if watch is not None:
                    lag.observe(0.0)  # it came over pub/sub before the script's reply
                now.append(ack)
            else:
                watch.acks.append((ack, replied))
        if now:
            self.listener.acked(now)

    def _release_acks(self, watch: _Watch, everything: bool = False) -> None:
        """Send the held acks of messages delivered now (all of them if ``everything``)."""
        acks = watch.acks
        count = 0
        while count < len(acks) and (everything or acks[count][0].seq <= watch.top):
            count += 1
        if count:
            due, watch.acks = acks[:count], acks[count:]
            if not everything:
                lag, now = self.metrics.redis_pubsub_lag, time.perf_counter()
                for _, replied in due:
                    lag.observe(now - replied)
            self.listener.acked([ack for ack, _ in due])

    def _deliver(self, watch: _Watch, seq: int, payload: bytes, connection_id: str) -> None:
        watch.top = seq
        channel = watch.keys.channel
        self.listener.published(Publication(channel, seq, payload, connection_id))
        if watch.acks:
            self._release_acks(watch)
        if watch.waiters:
            due = [(top, waiter) for top, waiter in watch.waiters if top <= seq]
            if due:
                watch.waiters = [(top, w) for top, w in watch.waiters if top > seq]
                for _, waiter in due:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _caught_up(self, watch: _Watch, top: int) -> None:
        """Wait until this node delivered the channel through ``top`` (what a history read
        covers), filling the gap if no message is coming to show it."""
        if watch.top >= top or self._watches.get(watch.keys.channel) is not watch:
            return
        waiter = asyncio.get_running_loop().create_future()
        watch.waiters.append((top, waiter))
        if watch.pending is None:
            watch.pending = []
            self._spawn(self._fill(watch))
        try:
            await asyncio.wait_for(waiter, _CATCH_UP)
        except TimeoutError:
            raise EngineUnavailable(f"cannot deliver {watch.keys.channel}") from None

    def watched(self) -> list[str]:
        """The channels this node delivers."""
        return list(self._watches)

    def forget(self, channel: str) -> None:
        """Nobody here is subscribed to ``channel``: stop receiving its topic."""
        watch = self._watches.pop(channel, None)
        if watch is None:
            return
        for _, waiter in watch.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._release_acks(watch, everything=True)
        if self._pubsub is not None and self._available:
            self._spawn(_quietly(self._pubsub.unsubscribe(watch.keys.topic)))

    def watch_user(self, user: str) -> None:
        """A user's first connection here: receive its invitations (its own topic)."""
        self._users.add(user)
        if self._pubsub is not None and self._available:
            self._spawn(_quietly(self._subscribe(USER_TOPIC + user)))

    def unwatch_user(self, user: str) -> None:
        """A user's last connection here went."""
        self._users.discard(user)
        if self._pubsub is not None and self._available:
            self._spawn(_quietly(self._pubsub.unsubscribe(USER_TOPIC + user)))

    def invite(self, user: str, channel: str) -> None:
        """Tell the nodes with connections of ``user`` that it has a direct message."""
        self.presence.publish(USER_TOPIC + user, channel.encode())

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # The pub/sub connection.

    async def _connect_pubsub(self) -> None:
        """A pub/sub connection, subscribed to this node's topic and every watched channel's."""
        pubsub = self._pubsub = self.redis.pubsub()
        await pubsub.connect()
        self._confirmations.clear()
        self._reader = asyncio.get_running_loop().create_task(self._read_pubsub(pubsub))
        await self._subscribe(node_topic(self.node))
        for watch in self._watches.values():
            await self._subscribe(watch.keys.topic)
        for user in self._users:
            await self._subscribe(USER_TOPIC + user)

    async def _read_pubsub(self, pubsub: Any) -> None:
        """Read the pub/sub connection: its messages here, straight from the parser (redis-py's
        ``get_message`` spends 7 µs on each in Python), the rest by redis-py, which keeps
        track of its subscriptions."""
        from redis.exceptions import RedisError

        connection = pubsub.connection
        try:
            while True:
                response = await connection.read_response(timeout=math.inf, push_request=True)
                if response[0] != b"message":
                    message = await pubsub.handle_message(response)
                    if message is not None and message["type"] == "subscribe":
                        self._confirmed(message["channel"].decode())
                    continue
                try:
                    self._received(response[1].decode(), response[2])
                except (ValueError, KeyError, TypeError) as exc:
                    # Not ours (another program on the topic?): the others still go through.
                    logger.error("redis: cannot read %r: %s", response[2][:200], exc)
        except (RedisError, OSError) as exc:
            if pubsub is self._pubsub:
                # Whoever waits for a confirmation on it waits no more.
                for waiting in self._confirmations.values():
                    for confirmed in waiting:
                        if not confirmed.done():
                            confirmed.set_exception(ConnectionError("pub/sub connection lost"))
                self._confirmations.clear()
                self._lost_pubsub(exc)

    def _confirmed(self, topic: str) -> None:
        waiting = self._confirmations.get(topic)
        if waiting:
            confirmed = waiting.pop(0)
            if not confirmed.done():
                confirmed.set_result(None)

    def _received(self, topic: str, data: bytes) -> None:
        if topic.startswith(USER_TOPIC):
            self.listener.invited(topic[len(USER_TOPIC) :], data.decode())
            return
        channel = topic[len("chat:{") : -len("}:live")]
        if data[:1] == b"p":
            watch = self._watches.get(channel)
            if watch is None:
                return
            seq, epoch, connection_id, payload = data[1:].split(b":", 3)
            live = _Live(int(seq), epoch.decode(), connection_id.decode(), payload)
            if watch.pending is not None:
                watch.pending.append(live)
            else:
                self._take(watch, live)
        elif channel in self._watches:
            self.presence.received(channel, data)

    def _lost_redis(self, error: BaseException) -> None:
        """Redis cannot be reached: refuse publishes, and reconnect in the background."""
        if self._closed:
            return
        self._unreachable(error)
        self._losses += 1
        self._start_reconnecting(_RECONNECT_FIRST)

    def _lost_pubsub(self, error: BaseException) -> None:
        """The pub/sub connection broke (Redis may be fine): reconnect it at once; publishes
        go on meanwhile, and what it missed is read from the streams."""
        if self._closed:
            return
        logger.warning(
            "redis: pub/sub connection lost (%s): reconnecting",
            error,
            extra={"event": "redis_pubsub_lost"},
        )
        self._losses += 1
        self._start_reconnecting(0.0)

    def _unreachable(self, error: BaseException) -> None:
        if self._available:
            self._available = False
            self._outages += 1
            logger.warning(
                "redis: unreachable (%s): publishes are refused until it is back",
                error,
                extra={"event": "redis_unreachable"},
            )

    def _start_reconnecting(self, delay: float) -> None:
        if self._reconnecting is None:
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect(delay))

    async def _reconnect(self, delay: float) -> None:
        """Reconnect with backoff (0.5 s doubling to 30 s, each attempt logged), subscribe
        again, and recover every channel delivered here."""
        from redis.exceptions import RedisError

        attempt = 0
        try:
            while not self._closed:
                if delay:
                    await asyncio.sleep(delay)
                attempt += 1
                logger.info("redis: reconnecting (attempt %d)", attempt)
                old, self._pubsub = self._pubsub, None
                if old is not None:
                    await _quietly(old.aclose())
                if self._reader is not None:
                    self._reader.cancel()
                for watch in self._watches.values():
                    if watch.pending is None:
                        watch.pending = []
                reachable = False
                losses = self._losses
                try:
                    if not self._available:
                        # After a restart the idle pooled connections are stale: new ones.
                        # (Not those in use: a pipeline waits on one.)
                        await self.redis.connection_pool.disconnect(inuse_connections=False)
                    await self.redis.ping()
                    reachable = True
                    await self._load_scripts()
                    await self._connect_pubsub()
                    self._available = True
                    for watch in list(self._watches.values()):
                        await self._recover(watch)
                except (RedisError, OSError, EngineUnavailable, TimeoutError) as exc:
                    if reachable:  # Redis answers: only the pub/sub connection broke again
                        delay = _RECONNECT_FIRST
                    else:
                        self._unreachable(exc)
                        delay = min(delay * 2, _RECONNECT_MOST) if delay else _RECONNECT_FIRST
                    logger.warning(
                        "redis: attempt %d failed: %s; next in %g s", attempt, exc, delay
                    )
                    continue
                if self._losses != losses:  # one broke again meanwhile
                    delay = 0.0
                    continue
                logger.info(
                    "redis: connected again (attempt %d)",
                    attempt,
                    extra={"event": "redis_reconnected"},
                )
                self.metrics.redis_reconnects.value += 1
                self.presence.refresh_soon()
                return
        finally:
            self._reconnecting = None

    # Read positions.

    async def read_position(self, channel: str, reader: str) -> int | None:
        """A reader's last read seq in a channel."""
        from redis.exceptions import RedisError

        try:
            value = await self.redis.hget(self.keys_of(channel).reads, reader)
        except (RedisError, OSError) as exc:
            logger.warning("cannot read the read position in %s: %s", channel, exc)
            return None
        return None if value is None else int(value)

    def set_read(self, channel: str, reader: str, seq: int) -> None:
        """Record a reader's last read seq (it only goes forward)."""
        self.presence.send(SET_READ, (self.keys_of(channel).reads,), (reader, seq))

    # Presence and signals (``redis_presence.Presence``).

    def join(self, channel: str, member: Member, connection_id: str) -> None:
        """One more connection of ``member`` in ``channel``."""
        self.presence.join(channel, member, connection_id)

    def leave(self, channel: str, member: Member, connection_id: str) -> None:
        """One connection of ``member`` less in ``channel``."""
        self.presence.leave(channel, member, connection_id)

    async def members(self, channel: str, most: int | None = None) -> list[dict[str, object]]:
        """The channel's members across the nodes."""
        return await self.presence.members(channel, most)

    async def member_count(self, channel: str) -> int:
        """How many members the channel has across the nodes."""
        return await self.presence.count(channel)

    def signal(self, channel: str, payload: bytes, connection_id: str) -> None:
        """Send an ephemeral message to the channel's subscribers on every node."""
        self.presence.publish(
            self.keys_of(channel).topic, b"s" + connection_id.encode() + b":" + payload
        )


def _waiting(watch: _Watch) -> list[_Live]:
    """What waits for a watch's gap to be filled (it has one)."""
    assert watch.pending is not None
    return watch.pending


def _entries(raw: list[Any]) -> list[tuple[int, bytes, str]]:
    """Stream entries as (seq, broadcast, sender's connection id)."""
    entries = []
    for entry_id, fields in raw:
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        seq = int(entry_id.split(b"-", 1)[0])
        entries.append((seq, values[b"d"], values[b"c"].decode()))
    return entries


def _fit(items: list[bytes], max_bytes: int | None) -> list[bytes]:
    """The latest of ``items`` that fit in ``max_bytes``."""
    if max_bytes is None:
        return items
    total = 0
    for index in range(len(items) - 1, -1, -1):
        total += len(items[index]) + 1
        if total > max_bytes:
            return items[index + 1 :]
    return items


def _first_line(error: BaseException) -> str:
    """An error's first line (a driver's message may go on with details)."""
    return (str(error) or type(error).__name__).splitlines()[0]


async def _quietly(work: Awaitable[Any]) -> None:
    """Await ``work``, ignoring that the connection is already gone."""
    try:
        await work
    except Exception as exc:
        logger.debug("redis: %s", exc)
