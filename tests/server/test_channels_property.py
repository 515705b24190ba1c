"""A property of channels, tested with random sequences of what clients do (hypothesis).

Five clients, each with its own ``clientId``, and three channels: they subscribe, unsubscribe,
publish, publish again what they published (as a client does after losing an ack), drop their
connection and come back resuming where they were. Whatever the order, once a client has
subscribed to a channel it has, whenever it is subscribed, every message of that channel
exactly once: what it received (history and live, in increasing seq order, never twice) and
what it published itself. A message sent again is acked with its first seq and stored once.
The same machine runs on the local engine and on the Redis engine.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import rfc6455
from server.app import App
from server.settings import Settings
from tests.server.redis_service import RedisServer
from tests.server.support import GUARD, HOST

CHANNELS = ("general", "room:a", "room:b")
SLOTS = 5


@dataclass
class Slot:
    """One client across its connections: its id, its positions and what it has."""

    client_id: str
    connection: rfc6455.Connection | None = None
    reader: asyncio.Task[None] | None = None
    inbox: list[dict[str, Any]] = field(default_factory=list)
    subscribed: set[str] = field(default_factory=set)
    epochs: dict[str, str] = field(default_factory=dict)
    # Per channel: the seqs received (in order of arrival) and those acked to it.
    received: dict[str, list[int]] = field(default_factory=dict)
    acked: dict[str, set[int]] = field(default_factory=dict)
    # What it published: (channel, clientMsgId, text) -> seq.
    published: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def since(self, channel: str) -> int | None:
        seqs = [*self.received.get(channel, []), *self.acked.get(channel, set())]
        return max(seqs) if seqs else None


class Channels(RuleBasedStateMachine):
    #: The Redis server of the run on the Redis engine (``RedisChannels``); None: local.
    redis: RedisServer | None = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp())
        engine = "local"
        if self.redis is not None:
            self.redis.command("FLUSHALL")
            engine = self.redis.url
        self.app = App(
            Settings(
                host=HOST,
                port=0,
                db_path=self.folder / "chat.db",
                web_root=self.folder,
                history=1000,
                rate_limit=0,
                leave_rate=0,
                engine=engine,
            )
        )
        self.port = self.run(self.app.start())
        self.slots = [Slot(str(uuid.uuid4())) for _ in range(SLOTS)]
        # Per channel: the text of every seq stored.
        self.stored: dict[str, dict[int, str]] = {channel: {} for channel in CHANNELS}
        self.texts = 0

    def run(self, work: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(work, GUARD))

    # What clients do.

    @initialize()
    def two_clients_are_connected(self) -> None:
        for slot in self.slots[:2]:
            self.run(self._connect(slot))

    @precondition(lambda self: any(s.connection is None for s in self.slots))
    @rule(data=st.data())
    def connect(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from([s for s in self.slots if s.connection is None]))
        self.run(self._connect(slot))

    @precondition(lambda self: any(s.connection is not None for s in self.slots))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from([s for s in self.slots if s.connection is not None]))
        self.run(self._drop(slot))

    @precondition(lambda self: any(s.connection is not None for s in self.slots))
    @rule(data=st.data(), channel=st.sampled_from(CHANNELS))
    def subscribe(self, data: st.DataObject, channel: str) -> None:
        slot = data.draw(st.sampled_from([s for s in self.slots if s.connection is not None]))
        if channel not in slot.subscribed:
            self.run(self._subscribe(slot, channel))

    @precondition(lambda self: any(s.subscribed for s in self.slots if s.connection))
    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from([s for s in self.slots if s.connection and s.subscribed]))
        channel = data.draw(st.sampled_from(sorted(slot.subscribed)))
        self.run(self._unsubscribe(slot, channel))

    @precondition(lambda self: any(s.subscribed for s in self.slots if s.connection))
    @rule(data=st.data())
    def publish(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from([s for s in self.slots if s.connection and s.subscribed]))
        channel = data.draw(st.sampled_from(sorted(slot.subscribed)))
        self.texts += 1
        self.run(self._publish(slot, channel, str(uuid.uuid4()), f"text {self.texts}"))

    @precondition(
        lambda self: any(
            key[0] in s.subscribed for s in self.slots if s.connection for key in s.published
        )
    )
    @rule(data=st.data())
    def publish_again(self, data: st.DataObject) -> None:
        slot = data.draw(
            st.sampled_from(
                [
                    s
                    for s in self.slots
                    if s.connection and any(k[0] in s.subscribed for k in s.published)
                ]
            )
        )
        key = data.draw(
            st.sampled_from(sorted(k for k in slot.published if k[0] in slot.subscribed))
        )
        self.run(self._publish(slot, *key))

    # The property.

    @invariant()
    def every_subscriber_has_every_message_once(self) -> None:
        self.run(self._sync())
        for slot in self.slots:
            # Disconnected or unsubscribed, a client catches up when it resumes.
            for channel in slot.subscribed:
                received = slot.received[channel]
                assert received == sorted(set(received)), (channel, received)
                have = set(received) | slot.acked.get(channel, set())
                assert len(have) == len(received) + len(slot.acked.get(channel, set())), (
                    "a message both received and acked",
                    channel,
                )
                assert sorted(have) == sorted(self.stored[channel]), (channel, sorted(have))

    def teardown(self) -> None:
        try:
            for slot in self.slots:
                if slot.connection is not None:
                    self.run(self._drop(slot))
            self.run(self.app.stop())
            conn = sqlite3.connect(self.folder / "chat.db")
            try:
                rows = conn.execute("SELECT channel, seq, message FROM messages").fetchall()
            finally:
                conn.close()
            assert len(rows) == sum(len(stored) for stored in self.stored.values())
            for channel, seq, text in rows:
                assert self.stored[channel][seq] == text
        finally:
            self.loop.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    # How.

    async def _connect(self, slot: Slot) -> None:
        query = f"clientId={slot.client_id}"
        since = slot.since("general")
        if since is not None:
            query += f"&since={since}&epoch={slot.epochs['general']}"
        slot.connection = await rfc6455.connect(
            f"ws://{HOST}:{self.port}/?{query}", ping_interval=None
        )
        slot.inbox = []
        slot.reader = asyncio.get_running_loop().create_task(self._read(slot, slot.connection))
        history = await self._wait(slot, "history")
        self._take(slot, "general", history)
        slot.subscribed = {"general"}
        for channel in sorted(set(slot.received) - {"general"}):
            await self._subscribe(slot, channel)

    async def _drop(self, slot: Slot) -> None:
        assert slot.connection is not None
        await slot.connection.close()
        assert slot.reader is not None
        await slot.reader
        self._absorb(slot)
        slot.connection = slot.reader = None
        slot.subscribed = set()

    async def _subscribe(self, slot: Slot, channel: str) -> None:
        request: dict[str, Any] = {"type": "subscribe", "channel": channel}
        since = slot.since(channel)
        if since is not None:
            request.update(since=since, epoch=slot.epochs[channel])
        await self._send(slot, request)
        self._take(slot, channel, await self._wait(slot, "subscribed", channel))
        slot.subscribed.add(channel)

    async def _unsubscribe(self, slot: Slot, channel: str) -> None:
        await self._send(slot, {"type": "unsubscribe", "channel": channel})
        await self._wait(slot, "unsubscribed", channel)
        slot.subscribed.discard(channel)

    async def _publish(self, slot: Slot, channel: str, msg_id: str, text: str) -> None:
        request = {"type": "publish", "channel": channel, "message": text, "clientMsgId": msg_id}
        await self._send(slot, request)
        ack = await self._wait(slot, "ack", channel, clientMsgId=msg_id)
        key = (channel, msg_id, text)
        if key in slot.published:
            assert (ack["seq"], ack.get("duplicate")) == (slot.published[key], True), ack
            return
        assert "duplicate" not in ack, ack
        slot.published[key] = ack["seq"]
        self.stored[channel][ack["seq"]] = text
        slot.acked.setdefault(channel, set()).add(ack["seq"])

    async def _sync(self) -> None:
        """Every connected client has read all that was sent to it so far."""
        for slot in self.slots:
            if slot.connection is not None:
                marker = f"sync-{uuid.uuid4()}"
                await self._send(slot, {"type": "subscribe", "channel": marker})
                await self._send(slot, {"type": "unsubscribe", "channel": marker})
                await self._wait(slot, "unsubscribed", marker)
                self._absorb(slot)

    async def _send(self, slot: Slot, request: dict[str, Any]) -> None:
        assert slot.connection is not None
        await slot.connection.send(json.dumps(request))

    async def _read(self, slot: Slot, connection: rfc6455.Connection) -> None:
        async for text in connection:
            slot.inbox.append(json.loads(str(text)))

    async def _wait(
        self, slot: Slot, kind: str, channel: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """The first message of the inbox of this kind; those before it are absorbed."""
        while True:
            for index, message in enumerate(slot.inbox):
                if (
                    message.get("type") == kind
                    and (channel is None or message.get("channel") == channel)
                    and all(message.get(k) == v for k, v in fields.items())
                ):
                    before, slot.inbox = slot.inbox[:index], slot.inbox[index + 1 :]
                    for earlier in before:
                        self._absorb_one(slot, earlier)
                    return message
            await asyncio.sleep(0.001)

    def _absorb(self, slot: Slot) -> None:
        inbox, slot.inbox = slot.inbox, []
        for message in inbox:
            self._absorb_one(slot, message)

    def _absorb_one(self, slot: Slot, message: dict[str, Any]) -> None:
        kind = message.get("type")
        assert kind != "error", message
        if kind == "broadcast":
            channel = message["channel"]
            assert (
                self.stored[channel].get(message["seq"], message["message"]) == message["message"]
            )
            slot.received.setdefault(channel, []).append(message["seq"])

    def _take(self, slot: Slot, channel: str, history: dict[str, Any]) -> None:
        """A history: recovered whenever the client had a position, and it continues it."""
        if slot.since(channel) is not None:
            assert history["recovered"] is True, history
            assert history["epoch"] == slot.epochs[channel]
        slot.epochs[channel] = history["epoch"]
        slot.received.setdefault(channel, [])
        for message in history["messages"]:
            self._absorb_one(slot, message)


class RedisChannels(Channels):
    """The same property on the Redis engine (its messages archived to the SQLite file)."""


@pytest.fixture(autouse=True)
def redis_for_the_machine(request: pytest.FixtureRequest) -> None:
    if request.cls is RedisChannels.TestCase:
        RedisChannels.redis = request.getfixturevalue("redis_server")


Channels.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
RedisChannels.TestCase.settings = Channels.TestCase.settings
test_channels_property = Channels.TestCase
test_channels_property_on_redis = RedisChannels.TestCase
