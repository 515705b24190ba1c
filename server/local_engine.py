"""LocalEngine: the engine of one process, with its messages in SQLite (``engine.Engine``).

Seqs are handed out in the event loop by the persistence queue, and a message is delivered to
its channel's subscribers in the same step (``broadcast_after_commit``: once committed, still
in seq order). Each channel with subscribers or with messages not yet committed has a ring of
its latest broadcasts (``history.History``), from which histories and resumes are answered
without suspending; a channel's ring is read from the database the first time it is needed,
and goes again once nobody here is subscribed and the writer is done with all of it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .channels import DEFAULT_CHANNEL
from .chat_metrics import ChatMetrics
from .engine import (
    Ack,
    Draft,
    EngineClosed,
    Listener,
    Member,
    NoListener,
    Position,
    Publication,
    Recovery,
    payload_of,
    sender_of,
)
from .history import Budget, History, Plan, Resume, payload_size
from .namespaces import Namespaces
from .persistence import PersistenceClosed, PersistenceQueue
from .recent import DEFAULT_WINDOW, Entry, RecentIds
from .settings import Settings
from .store import MessageRecord, format_timestamp

__all__ = ["LocalEngine"]

logger = logging.getLogger("server.engine")

# Read at start-up to recognise messages sent again: at most this many of the latest rows.
_RECENT_ROWS = 200_000
# Ids remembered between two sweeps of the expired ones in every channel.
_SWEEP_EVERY = 4096


@dataclass(slots=True)
class _Presence:
    """A member of a channel: how many of its connections are in it, and since when."""

    member: Member
    connections: int
    since: str


class LocalEngine:
    """Channels of one process: seqs, SQLite, rings in memory, presence in memory.

    Args:
        settings: The server's settings.
        namespaces: The channels' options (history, retention).
        metrics: Where commits' durations are observed.
    """

    def __init__(
        self, settings: Settings, namespaces: Namespaces, metrics: ChatMetrics | None = None
    ) -> None:
        self.settings = settings
        self.namespaces = namespaces
        self.listener: Listener = NoListener()
        self.queue = PersistenceQueue(
            settings.db_path,
            capacity=settings.queue_capacity,
            batch_size=settings.batch_size,
            policy=settings.retry,
            retention=self._retention,
            prune_interval=settings.prune_interval,
            commit_duration=None if metrics is None else metrics.commit_duration,
        )
        self._rings: dict[str, History] = {}
        # Every ring's bytes count against one budget: a client subscribed to 128 channels
        # cannot make the server hold 128 histories' worth.
        self._budget = Budget(settings.history_memory)
        self._ids_added = 0
        self._loading: dict[str, asyncio.Task[None]] = {}
        # Channels whose ring does not hold their latest stored messages yet.
        self._unloaded: set[str] = set()
        self._recent: dict[str, RecentIds] = {}
        # Publishes not settled yet (with their entry in the channel's recent ids, if any),
        # and the duplicates of those waiting with them.
        self._unsettled: dict[tuple[str, int], tuple[Draft, Entry | None]] = {}
        self._waiting: defaultdict[tuple[str, int], list[Draft]] = defaultdict(list)
        self._presence: dict[str, dict[str, _Presence]] = {}

    # Life cycle.

    async def start(self) -> None:
        """Open the database and read what the default channel and resends need."""
        queue = self.queue
        await queue.start()
        try:
            queue.on_committed = self._committed
            queue.on_dead_lettered = self._dead_lettered
            queue.on_pruned = self._pruned
            await self._ring(DEFAULT_CHANNEL)
            await self._load_recent()
        except BaseException:
            await queue.stop(0)
            raise

    async def stop(self, timeout: float) -> None:
        """Write or dead-letter what is queued (within ``timeout``), then close the database."""
        await self.queue.stop(timeout)

    def health(self) -> dict[str, object]:
        """The queue's figures, for ``/healthz``."""
        queue = self.queue
        return {
            "queueDepth": queue.depth,
            "persisted": queue.persisted,
            "deadLettered": queue.dead_lettered,
            "historyBytes": self._budget.used,
        }

    def figures(self) -> dict[str, float]:
        """The queue's counts and the members here, for ``/metrics``."""
        queue = self.queue
        return {
            "presence_members": sum(map(len, self._presence.values())),
            "queue_depth": queue.depth,
            "persisted": queue.persisted,
            "retries": queue.failed_attempts,
            "dead_letters": queue.dead_lettered,
        }

    # Publishing.

    def ready(self) -> bool:
        """Whether ``publish()`` may be called now (room in the queue, a seq reserved)."""
        return self.queue.ready()

    async def wait_ready(self) -> None:
        """Wait for room in the queue (backpressure).

        Raises:
            EngineClosed: If the engine has stopped.
        """
        try:
            await self.queue.wait_ready()
        except PersistenceClosed as exc:
            raise EngineClosed(str(exc)) from None

    async def position(self, channel: str) -> Position:
        """The channel's epoch and last seq handed out."""
        row = self.queue.channel(channel)
        return Position(row.epoch, row.last)

    async def known(self, channel: str) -> bool:
        """Whether the channel has a row: stored, published to, or subscribed to."""
        return channel in self.queue.channels

    async def stored(
        self, channel: str, since: int | None, limit: int, max_bytes: int
    ) -> list[dict[str, object]]:
        """At most ``limit`` committed broadcasts after ``since`` (the latest if None), oldest
        first, within ``max_bytes`` of text.

        Raises:
            EngineClosed: If the engine has stopped.
        """
        queue = self.queue
        try:
            if since is None:
                rows = await queue.last(limit, max_bytes=max_bytes, channel=channel)
            else:
                rows = await queue.after(since, limit, max_bytes=max_bytes, channel=channel)
        except PersistenceClosed as exc:
            raise EngineClosed(str(exc)) from None
        return [json.loads(payload_of(record)) for record in rows.records]

    def publish(self, draft: Draft) -> None:
        """Number and queue a message, and deliver it now (unless after the commit).

        A message whose clientMsgId its sender already published in the channel lately is
        not stored again: its ack carries the first one's seq, once that one is settled.

        Raises:
            asyncio.QueueFull: If not ``ready()``.
            EngineClosed: If the engine has stopped.
        """
        channel, sender, client_msg_id = draft.channel, draft.sender, draft.client_msg_id
        recent = self._recent.get(channel)
        if sender is not None and client_msg_id is not None and recent is not None:
            entry = recent.get(sender, client_msg_id)
            if entry is not None:
                if entry.settled:
                    ack = Ack(draft, entry.seq, self.queue.channel(channel).epoch, duplicate=True)
                    self.listener.acked((ack,))
                else:
                    self._waiting[(channel, entry.seq)].append(draft)
                return
        try:
            record = self.queue.accept(
                draft.connection_id,
                draft.text,
                client_msg_id,
                draft.user,
                channel=channel,
                client_id=draft.client_id,
                name=draft.name,
            )
        except PersistenceClosed as exc:
            raise EngineClosed(str(exc)) from None
        seq = record.seq
        entry = None
        if sender is not None and client_msg_id is not None:
            if recent is None:
                recent = self._recent[channel] = RecentIds()
            entry = recent.add(sender, client_msg_id, seq)
            self._ids_added += 1
            if self._ids_added % _SWEEP_EVERY == 0:
                self._sweep_ids()
        self._unsettled[(channel, seq)] = (draft, entry)
        ring = self._rings.get(channel)
        if ring is None:  # not `or`: an empty ring is falsy
            ring = self._new_ring(channel, seq - 1)
        if not self.settings.broadcast_after_commit:
            encoded = payload_of(record)
            ring.append(seq, encoded)
            if self._budget.used > self._budget.limit:
                self._shrink_rings()
            self.listener.published(Publication(channel, seq, encoded, draft.connection_id))

    def _committed(self, batch: Sequence[MessageRecord]) -> None:
        """A batch is in the database: deliver it if that waited for the commit, then ack."""
        self._settle(batch, stored=True)

    def _dead_lettered(self, batch: Sequence[MessageRecord]) -> None:
        """A batch could not be stored: its senders are told; sent again, it is stored anew."""
        self._settle(batch, stored=False)

    def _settle(self, batch: Sequence[MessageRecord], *, stored: bool) -> None:
        acks: list[Ack] = []
        finished: dict[str, int] = {}
        after_commit = stored and self.settings.broadcast_after_commit
        for record in batch:
            channel, seq = record.channel, record.seq
            finished[channel] = seq
            unsettled = self._unsettled.pop((channel, seq), None)
            if unsettled is None:  # put on the queue by another hand
                continue
            draft, entry = unsettled
            epoch = self.queue.channel(channel).epoch
            if entry is not None:
                entry.settled = True
                if not stored:
                    recent = self._recent.get(channel)
                    sender = draft.sender
                    if recent is not None and sender is not None and draft.client_msg_id:
                        recent.discard(sender, draft.client_msg_id, seq)
            if after_commit:
                encoded = payload_of(record)
                ring = self._rings.get(channel)
                if ring is None:
                    ring = self._new_ring(channel, seq - 1)
                ring.append(seq, encoded)
                if self._budget.used > self._budget.limit:
                    self._shrink_rings()
                self.listener.published(Publication(channel, seq, encoded, draft.connection_id))
            acks.append(Ack(draft, seq, epoch, stored=stored))
            for duplicate in self._waiting.pop((channel, seq), ()):
                acks.append(Ack(duplicate, seq, epoch, stored=stored, duplicate=stored))
            if after_commit:
                # Each ack right after its broadcast: what the sender sees keeps seq order.
                self.listener.acked(acks)
                acks = []
        for channel, seq in finished.items():
            held = self._rings.get(channel)
            if held is not None:
                held.finished(seq)
                self._drop_ring_if_unused(channel)
        if self._budget.used > self._budget.limit:
            self._shrink_rings()
        if acks:
            self.listener.acked(acks)

    # History.

    async def history(
        self,
        channel: str,
        resume: Resume | None,
        *,
        count: int,
        resume_max: int,
        max_bytes: int | None,
    ) -> Recovery:
        """What a subscriber gets; without suspending when the ring holds all of it."""
        ring = await self._ring(channel)
        row = self.queue.channel(channel)
        plan = ring.plan(
            resume, last=row.last, count=count, resume_max=resume_max, max_bytes=max_bytes
        )
        if plan is None:
            return Recovery(row.epoch, [], False, row.last)
        if plan.read_after is None:
            return Recovery(row.epoch, plan.messages, plan.recovered, row.last)
        items, recovered = await self._read_older(channel, plan)
        return Recovery(row.epoch, items, recovered, row.last)

    async def _read_older(self, channel: str, plan: Plan) -> tuple[list[bytes], bool]:
        """The resume's messages when the oldest are no longer in memory."""
        assert plan.read_after is not None
        try:
            older = await self.queue.kept_after(
                plan.read_after,
                plan.read_through,
                most=plan.read_count,
                max_bytes=plan.read_bytes,
                channel=channel,
            )
        except (PersistenceClosed, sqlite3.Error, OSError) as exc:
            logger.warning("history: cannot read %s after %d: %s", channel, plan.read_after, exc)
            older = None
        # Failed, retention deleted some meanwhile, or more than a history may hold.
        if older is None:
            return plan.fallback, False
        items = [payload_of(record) for record in older]
        if plan.read_bytes is not None and payload_size(items) > plan.read_bytes:
            return plan.fallback, False
        return items + plan.messages, True

    async def _ring(self, channel: str) -> History:
        """The channel's ring, read from the database first if it has not been."""
        ring = self._rings.get(channel)
        if ring is None:
            ring = self._new_ring(channel, self.queue.channel(channel).last)
        if channel in self._unloaded:
            self._unloaded.discard(channel)
            task = asyncio.get_running_loop().create_task(self._load(channel, ring, ring.evicted))
            self._loading[channel] = task
        loading = self._loading.get(channel)
        if loading is not None:
            await asyncio.shield(loading)
        return ring

    def _new_ring(self, channel: str, stored: int) -> History:
        """A ring for a channel whose messages up to ``stored`` are in the database only; their
        latest are read when a history first needs them (``_ring``)."""
        row = self.queue.channel(channel)
        settings = self.settings
        ring = self._rings[channel] = History(
            row.epoch,
            max_messages=max(self.namespaces.of(channel).history, settings.resume_max),
            max_bytes=settings.history_memory,
            finished=stored,
            pruned=row.pruned,
            evicted=stored,
            budget=self._budget,
        )
        if stored > row.pruned:
            self._unloaded.add(channel)
        return ring

    async def _load(self, channel: str, ring: History, through: int) -> None:
        """Read a channel's latest stored messages into its ring, bounded as the ring is."""
        try:
            latest = await self.queue.last(
                ring.max_messages, max_bytes=ring.max_bytes, channel=channel, through=through
            )
        except (PersistenceClosed, sqlite3.Error, OSError) as exc:
            # The ring stays as it is: a resume reads the database, a history starts now.
            logger.warning("history: cannot read the latest messages of %s: %s", channel, exc)
        else:
            stored = [(record.seq, payload_of(record)) for record in latest.records]
            ring.load(stored, complete=latest.complete, through=through)
            if self._budget.used > self._budget.limit:
                self._shrink_rings()
        finally:
            del self._loading[channel]

    def _drop_ring_if_unused(self, channel: str) -> None:
        """Forget a ring nobody here reads and the writer is done with (not the default's)."""
        ring = self._rings.get(channel)
        if (
            ring is not None
            and channel != DEFAULT_CHANNEL
            and channel not in self._presence
            and channel not in self._loading
            and ring.settled()
        ):
            del self._rings[channel]
            ring.release()
            self._unloaded.discard(channel)

    def _shrink_rings(self) -> None:
        """Over the budget: the largest rings give up their oldest messages (those the writer
        is done with) until three quarters of it are used. A resume that reaches further back
        reads the database."""
        budget = self._budget
        target = budget.limit * 3 // 4
        for ring in sorted(self._rings.values(), key=lambda ring: ring.size, reverse=True):
            if budget.used <= target:
                return
            ring.shrink(max(0, ring.size - (budget.used - target)))

    def _pruned(self, channel: str, seq: int) -> None:
        ring = self._rings.get(channel)
        if ring is not None:
            ring.pruned_through(seq)

    def _sweep_ids(self) -> None:
        """Forget the expired ids of every channel: those of a channel nobody publishes in
        any more would otherwise stay."""
        for channel, recent in list(self._recent.items()):
            recent.expire()
            if not len(recent):
                del self._recent[channel]

    def _retention(self, channel: str) -> tuple[int, float]:
        options = self.namespaces.of(channel)
        return options.retention_messages, options.retention_days

    async def _load_recent(self) -> None:
        """Remember the clientMsgIds stored in the last window, to recognise them sent again."""
        now = datetime.now(UTC)
        since = (now - timedelta(seconds=DEFAULT_WINDOW)).isoformat(timespec="microseconds")
        for stored in reversed(await self.queue.recent_ids(since, _RECENT_ROWS)):
            sender = sender_of(stored.user, stored.client_id, stored.connection_id)
            if sender is None:
                continue
            recent = self._recent.get(stored.channel)
            if recent is None:
                recent = self._recent[stored.channel] = RecentIds()
            age = (now - datetime.fromisoformat(stored.created_at)).total_seconds()
            # Oldest first: beyond a channel's most, the oldest go, as they would have.
            recent.add(sender, stored.client_msg_id, stored.seq, age=max(age, 1e-6))

    # Read positions.

    async def read_position(self, channel: str, reader: str) -> int | None:
        """A reader's last read seq in a channel."""
        try:
            return await self.queue.read_position(channel, reader)
        except (PersistenceClosed, sqlite3.Error, OSError) as exc:
            logger.warning("cannot read the read position in %s: %s", channel, exc)
            return None

    def set_read(self, channel: str, reader: str, seq: int) -> None:
        """Record a reader's last read seq (written with the next batch)."""
        self.queue.set_read(channel, reader, seq)

    # Presence.

    def join(self, channel: str, member: Member, connection_id: str) -> None:
        """One more connection of ``member`` in ``channel``; its first is announced, and so is
        one that shows it otherwise (a new name, from a ``hello``)."""
        members = self._presence.get(channel)
        if members is None:
            members = self._presence[channel] = {}
        entry = members.get(member.key)
        if entry is not None:
            entry.connections += 1
            if entry.member.fields != member.fields:
                entry.member = member
                self.listener.joined(channel, member, entry.connections, entry.since, connection_id)
            return
        since = format_timestamp(datetime.now(UTC))
        members[member.key] = _Presence(member, 1, since)
        self.listener.joined(channel, member, 1, since, connection_id)

    def leave(self, channel: str, member: Member, connection_id: str) -> None:
        """One connection of ``member`` less in ``channel``; its last is announced."""
        members = self._presence.get(channel)
        entry = None if members is None else members.get(member.key)
        if members is None or entry is None:
            return
        entry.connections -= 1
        if entry.connections > 0:
            return
        del members[member.key]
        self.listener.left(channel, member, connection_id)
        if not members:
            del self._presence[channel]

    async def members(self, channel: str, most: int | None = None) -> list[dict[str, object]]:
        """The channel's members (the ``most`` who came first), each with its connections and
        since when it is there."""
        entries = self._presence.get(channel, {}).values()
        return [
            {**dict(entry.member.fields), "connections": entry.connections, "since": entry.since}
            for entry in itertools.islice(entries, most)
        ]

    async def member_count(self, channel: str) -> int:
        """How many members the channel has."""
        return len(self._presence.get(channel, ()))

    def signal(self, channel: str, payload: bytes, connection_id: str) -> None:
        """Deliver an ephemeral message to the channel's subscribers here."""
        self.listener.signalled(channel, payload, connection_id)

    def watch_user(self, user: str) -> None:
        """One process: every user's connections are here already."""

    def unwatch_user(self, user: str) -> None:
        """One process: nothing to do."""

    def invite(self, user: str, channel: str) -> None:
        """One process: no other node to tell."""

    def forget(self, channel: str) -> None:
        """Nobody here is subscribed to ``channel``: its ring may go, and its row if it never
        had a message."""
        self._drop_ring_if_unused(channel)
        self.queue.forget(channel)
