"""Presence across nodes, in Redis: who is in a channel, counted by member, announced once.

Each node writes one entry per member and channel it has connections of (``<node>/<member>``:
its fields, how many connections here, since when), in a ZSET by expiry and a HASH of info,
and counts each member's entries (``redis_scripts.PRESENCE_JOIN``/``PRESENCE_LEAVE``). A
member's first entry anywhere publishes ``joined`` on the channel's topic, its last
``left``; every node delivers them to its own subscribers (``Listener.joined``/``left``).

Entries are refreshed every 25 s and expire 60 s after their last refresh (``--presence-ttl``;
the refresh and the sweeps below keep their proportions to it). A node that crashed
refreshes nothing: whichever node next sweeps the channel (every node sweeps the channels it
delivers every 5 s, and every read of presence sweeps first) removes the expired entries and,
for a member with none left, publishes its ``left``, once, since the sweep is one script. So
a crashed node's members leave within 65 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .engine import EngineUnavailable, Member
from .redis_keys import ChannelKeys
from .redis_ops import Background
from .redis_scripts import PRESENCE, PRESENCE_JOIN, PRESENCE_LEAVE, Script
from .store import format_timestamp

if TYPE_CHECKING:
    from .redis_engine import RedisEngine

__all__ = ["Presence"]

#: A node refreshes its entries this part of their TTL (``--presence-ttl``) after the last:
#: 25 s of the default 60 s, so one refresh may be late or lost before they expire.
_REFRESH = 5 / 12
#: Nodes sweep the channels they deliver this part of the TTL apart (5 s of 60 s).
_SWEEP = 1 / 12


@dataclass(slots=True)
class _Entry:
    """A member's connections here in a channel."""

    member: Member
    connections: int
    since: str
    joined: int  # µs since the epoch: orders the members who came in the same second


class Presence:
    """This node's members, written to Redis; the channels' members, read from it."""

    def __init__(self, engine: RedisEngine) -> None:
        self.engine = engine
        self.background = Background(engine.redis)
        self._local: dict[str, dict[str, _Entry]] = {}
        self._task: asyncio.Task[None] | None = None
        self._refresh = asyncio.Event()
        self.ttl = engine.settings.presence_ttl

    def start(self) -> None:
        """Start refreshing and sweeping."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, timeout: float) -> None:
        """Take this node's members out (announcing those who leave), within ``timeout``."""
        if self._task is not None:
            self._task.cancel()
        for channel, entries in self._local.items():
            for entry in entries.values():
                self._remove(channel, entry, "")
        self._local.clear()
        await self.background.drain(timeout)
        self.background.cancel()

    def local_members(self) -> int:
        """The members of every channel connected here (one per channel they are in)."""
        return sum(map(len, self._local.values()))

    def refresh_soon(self) -> None:
        """Write every entry again now (Redis is back: it may have lost them)."""
        self._refresh.set()

    # What the handler asks.

    def join(self, channel: str, member: Member, connection_id: str) -> None:
        """Count one more connection of ``member`` here; announced if it is its first
        anywhere, or if it shows differently now (a new name)."""
        entries = self._local.get(channel)
        if entries is None:
            entries = self._local[channel] = {}
        entry = entries.get(member.key)
        changed = False
        if entry is None:
            now = datetime.now(UTC)
            entry = entries[member.key] = _Entry(
                member, 1, format_timestamp(now), int(now.timestamp() * 1_000_000)
            )
        else:
            entry.connections += 1
            changed = entry.member.fields != member.fields
            entry.member = member
        self._write(channel, entry, connection_id, announce=changed)

    def leave(self, channel: str, member: Member, connection_id: str) -> None:
        """Count one connection of ``member`` less here; its last anywhere is announced."""
        entries = self._local.get(channel)
        entry = None if entries is None else entries.get(member.key)
        if entries is None or entry is None:
            return
        entry.connections -= 1
        if entry.connections > 0:
            self._write(channel, entry, connection_id, announce=False)
            return
        del entries[member.key]
        if not entries:
            del self._local[channel]
        self._remove(channel, entry, connection_id)

    async def members(self, channel: str, most: int | None) -> list[dict[str, object]]:
        """The members of every node, each once (its connections added up, since its
        first), those who came first first."""
        infos = await self._ask(channel, "entries")
        merged: dict[str, dict[str, Any]] = {}
        for raw in infos:
            info = json.loads(raw)
            known = merged.get(info["key"])
            if known is None:
                merged[info["key"]] = info
            else:
                known["connections"] += info["connections"]
                if info["joined"] < known["joined"]:
                    known["since"], known["joined"] = info["since"], info["joined"]
        ordered = sorted(merged.values(), key=lambda info: info["joined"])[:most]
        return [
            {**dict(info["fields"]), "connections": info["connections"], "since": info["since"]}
            for info in ordered
        ]

    async def count(self, channel: str) -> int:
        """How many members the channel has, on every node."""
        return int(await self._ask(channel, "count"))

    def publish(self, topic: str, data: bytes) -> None:
        """Publish an ephemeral message (a typing signal) after what is queued."""
        self.background.publish(topic, data)

    def send(self, script: Script, keys: tuple[str, ...], args: tuple[object, ...]) -> None:
        """Run a script nobody waits for (a read position) after what is queued."""
        self.background.script(script, keys, args)

    # What other nodes publish.

    def received(self, channel: str, data: bytes) -> None:
        """A presence change or a signal from a channel's topic: tell the subscribers here."""
        kind = data[:1]
        connection_id, _, payload = data[1:].partition(b":")
        sender = connection_id.decode()
        listener = self.engine.listener
        if kind == b"s":
            listener.signalled(channel, payload, sender)
            return
        info = json.loads(payload)
        member = Member(info["key"], tuple((k, v) for k, v in info["fields"]))
        if kind == b"j":
            listener.joined(channel, member, info["connections"], info["since"], sender)
        elif kind == b"l":
            listener.left(channel, member, sender)

    # Writing and sweeping.

    def _entry_id(self, member: Member) -> str:
        return f"{self.engine.node}/{member.key}"

    def _info(self, entry: _Entry) -> bytes:
        member = entry.member
        return json.dumps(
            {
                "key": member.key,
                "fields": member.fields,
                "connections": entry.connections,
                "since": entry.since,
                "joined": entry.joined,
            },
            separators=(",", ":"),
        ).encode()

    def _write(self, channel: str, entry: _Entry, connection_id: str, *, announce: bool) -> None:
        keys = ChannelKeys(channel)
        info = self._info(entry)
        expires = int((time.time() + self.ttl) * 1000)
        event = b"j" + connection_id.encode() + b":" + info
        self.background.script(
            PRESENCE_JOIN,
            (keys.presence, keys.info, keys.members),
            (
                self._entry_id(entry.member),
                entry.member.key,
                info,
                expires,
                "1" if announce else "0",
                keys.topic,
                event,
            ),
        )

    def _remove(self, channel: str, entry: _Entry, connection_id: str) -> None:
        keys = ChannelKeys(channel)
        event = b"l" + connection_id.encode() + b":" + self._info(entry)
        self.background.script(
            PRESENCE_LEAVE,
            (keys.presence, keys.info, keys.members),
            (self._entry_id(entry.member), entry.member.key, keys.topic, event),
        )

    async def _ask(self, channel: str, what: str) -> Any:
        from redis.exceptions import NoScriptError, RedisError

        await self.background.drain(5.0)  # this node's own changes first
        keys = ChannelKeys(channel)
        redis = self.engine.redis
        args = (int(time.time() * 1000), keys.topic, what)
        try:
            try:
                return await redis.evalsha(
                    PRESENCE.sha, 3, keys.presence, keys.info, keys.members, *args
                )
            except NoScriptError:
                await redis.script_load(PRESENCE.source)
                return await redis.evalsha(
                    PRESENCE.sha, 3, keys.presence, keys.info, keys.members, *args
                )
        except (RedisError, OSError) as exc:
            raise EngineUnavailable(str(exc)) from None

    async def _run(self) -> None:
        """Sweep the channels delivered here every TTL/12 (5 s); write this node's entries
        again every 5/12 of the TTL (25 s), and when Redis is back."""
        loop = asyncio.get_running_loop()
        refreshed = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh.wait(), self.ttl * _SWEEP)
            now = loop.time()
            if self._refresh.is_set() or now - refreshed >= self.ttl * _REFRESH:
                self._refresh.clear()
                refreshed = now
                for channel, entries in self._local.items():
                    for entry in entries.values():
                        self._write(channel, entry, "", announce=False)
            stamp = int(time.time() * 1000)
            for channel in list(self.engine.watched()):
                keys = ChannelKeys(channel)
                self.background.script(
                    PRESENCE,
                    (keys.presence, keys.info, keys.members),
                    (stamp, keys.topic, "sweep"),
                )
