"""Several real ``python -m server`` nodes on one real redis-server: the delivery guarantees.

Each test starts 2 or 3 nodes (processes, each on its own port of 127.0.0.1, all archiving to
one SQLite file) on a redis-server of its own (``redis_factory``: ``--save ''``, AOF when the
test needs it), and drives them with ``Peer``s: chat clients that keep every message they get,
and publish like the real clients do, with an outbox whose messages are sent again with the
same clientMsgId when the server says ``unavailable`` or the connection drops.

What each test proves is what a subscriber sees: every message of each of its channels, in
seq order, consecutive, each once, whatever happens to the nodes' connections to Redis, to
Redis itself, or to a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rfc6455
from tests.server.redis_service import RedisServer
from tests.server.support import wait_until
from tests.server.test_auth import SECRET, token
from tests.server.test_subprocess import ServerProcess
from tests.server.test_subprocess import spawn as spawn  # the fixture

Spawn = Callable[..., Any]
HOST = "127.0.0.1"
# Seconds a test waits for what it expects: the nodes share two cores with the test.
PATIENCE = 60.0


async def eventually(predicate: Callable[[], object]) -> None:
    await wait_until(predicate, PATIENCE)


class Node:
    """One server process and its port."""

    def __init__(self, process: ServerProcess, port: int) -> None:
        self.process = process
        self.port = port


async def start_node(spawn: Spawn, redis: RedisServer, db: Path, *options: str) -> Node:
    process = await spawn(
        "--engine",
        redis.url,
        "--port",
        "0",
        "--db",
        str(db),
        "--rate-limit",
        "0",
        "--max-connections-per-ip",
        "0",
        *options,
    )
    return Node(process, await process.port())


class Peer:
    """A chat client: every message it receives, its channels' seqs, an outbox.

    Args:
        name: Its clientId's label (a clientId is what makes its clientMsgIds recognised).
    """

    def __init__(self, name: str, channels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.client_id = str(uuid.uuid4())
        self.channels = channels
        self.connection: rfc6455.Connection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.messages: list[dict[str, Any]] = []
        # Per channel: the seqs received (histories and broadcasts), in the order they came,
        # and those of its own messages (acks, which need not come in order with them).
        self.seqs: dict[str, list[int]] = {}
        self.own: dict[str, list[int]] = {}
        self.epochs: dict[str, str] = {}
        self.resets: dict[str, int] = {}  # histories with recovered: false after the first
        self.joined: set[str] = set()
        self.outbox: dict[str, tuple[str, str]] = {}  # clientMsgId -> (channel, text)
        self.acked: dict[str, int] = {}
        self.unavailable = 0
        self.closes: list[int | None] = []
        self._mark = 0

    async def connect(self, node: Node, *, resume: bool = False, query: str = "") -> None:
        query = query or f"clientId={self.client_id}"
        if resume and "general" in self.epochs:
            query += f"&since={self.last('general')}&epoch={self.epochs['general']}"
        self.connection = await rfc6455.connect(
            f"ws://{HOST}:{node.port}/?{query}", ping_interval=None
        )
        self._mark = len(self.messages)
        self.reader = asyncio.get_running_loop().create_task(self._read(self.connection))
        await eventually(lambda: any(m.get("type") == "welcome" for m in self._since_connect()))
        for channel in self.channels:
            request: dict[str, Any] = {"type": "subscribe", "channel": channel}
            if resume and channel in self.epochs:
                request.update(since=self.last(channel), epoch=self.epochs[channel])
            await self.send(request)
        for channel in self.channels:
            await eventually(lambda channel=channel: self._subscribed(channel))
        for msg_id, (channel, text) in list(self.outbox.items()):
            await self._publish(msg_id, channel, text)

    def _since_connect(self) -> list[dict[str, Any]]:
        return self.messages[self._mark :]

    def _subscribed(self, channel: str) -> bool:
        return any(
            m.get("type") == "subscribed" and m.get("channel") == channel
            for m in self._since_connect()
        )

    async def send(self, request: dict[str, Any]) -> None:
        assert self.connection is not None
        await self.connection.send(json.dumps(request))

    async def publish(self, channel: str, text: str) -> str:
        msg_id = str(uuid.uuid4())
        self.outbox[msg_id] = (channel, text)
        await self._publish(msg_id, channel, text)
        return msg_id

    async def _publish(self, msg_id: str, channel: str, text: str) -> None:
        request = {"type": "publish", "channel": channel, "message": text, "clientMsgId": msg_id}
        with contextlib.suppress(rfc6455.ConnectionClosed):
            await self.send(request)  # if not, sent again after the reconnection

    def count(self, channel: str) -> int:
        """How many of the channel's messages it has."""
        return len(self.seqs.get(channel, [])) + len(self.own.get(channel, []))

    def last(self, channel: str) -> int:
        """The highest seq it has of the channel."""
        return max(self.seqs.get(channel, []) + self.own.get(channel, []), default=0)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        if self.reader is not None:
            await self.reader

    async def _read(self, connection: rfc6455.Connection) -> None:
        try:
            async for text in connection:
                self._take(json.loads(str(text)))
        except rfc6455.ConnectionClosed:
            pass
        close = connection.protocol.close_rcvd
        self.closes.append(None if close is None else close.code)

    def _take(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        kind, channel = message.get("type"), message.get("channel", "general")
        if kind in ("history", "subscribed"):
            if message["recovered"] is not True and channel in self.joined:
                self.resets[channel] = self.resets.get(channel, 0) + 1
                self.seqs[channel] = []
            self.joined.add(channel)
            self.epochs[channel] = message["epoch"]
            for item in message["messages"]:
                self.seqs.setdefault(channel, []).append(item["seq"])
        elif kind == "welcome":
            self.epochs.setdefault("general", message["epoch"])
        elif kind == "broadcast":
            self.seqs.setdefault(channel, []).append(message["seq"])
        elif kind == "ack":
            msg_id = message["clientMsgId"]
            if self.outbox.pop(msg_id, None) is not None:
                self.acked[msg_id] = message["seq"]
                self.own.setdefault(channel, []).append(message["seq"])
        elif kind == "error" and message.get("code") == "unavailable":
            self.unavailable += 1
            msg_id = message.get("clientMsgId")
            if msg_id in self.outbox:
                channel, text = self.outbox[msg_id]
                asyncio.get_running_loop().create_task(self._publish(msg_id, channel, text))


def check_every_message_once_in_order(peers: list[Peer], channel: str, top: int) -> None:
    """Each peer received the channel's messages in increasing seq order, and has seqs
    1..top of it, each once (those it sent itself as acks)."""
    for peer in peers:
        seqs = peer.seqs.get(channel, [])
        assert _first_disorder(seqs) is None, (peer.name, channel, _first_disorder(seqs))
        every = sorted(seqs + peer.own.get(channel, []))
        assert every == list(range(1, top + 1)), (peer.name, channel, len(every), top)


def _first_disorder(seqs: list[int]) -> tuple[int, int] | None:
    for index in range(1, len(seqs)):
        if seqs[index] <= seqs[index - 1]:
            return index, seqs[index]
    return None


def archived(db: Path, channel: str) -> list[int]:
    connection = sqlite3.connect(db)
    try:
        rows = connection.execute(
            "SELECT seq FROM messages WHERE channel = ? ORDER BY seq", (channel,)
        ).fetchall()
    finally:
        connection.close()
    return [seq for (seq,) in rows]


async def publish_all(peers: list[Peer], channels: tuple[str, ...], total: int) -> int:
    """``total`` publishes, interleaved: every peer in turn, every channel in turn, at most a
    few in flight per peer; returns how many were acked (all of them)."""
    for index in range(total):
        peer = peers[index % len(peers)]
        await eventually(lambda peer=peer: len(peer.outbox) < 8)
        channel = channels[(index // len(peers)) % len(channels)]
        await peer.publish(channel, f"{peer.name} #{index}")
    await eventually(lambda: all(not peer.outbox for peer in peers))
    return sum(len(peer.acked) for peer in peers)


# Order


async def test_three_nodes_deliver_every_channel_in_seq_order(
    spawn: Spawn, redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    redis = redis_factory()
    db = tmp_path / "chat.db"
    nodes = [await start_node(spawn, redis, db) for _ in range(3)]
    channels = ("room:0", "room:1", "room:2")
    peers = [Peer(f"p{i}", channels) for i in range(30)]
    for index, peer in enumerate(peers):
        await peer.connect(nodes[index % 3])
    assert await publish_all(peers, channels, 10_000) == 10_000
    tops = {channel: 0 for channel in channels}
    for index in range(10_000):
        tops[channels[(index // 30) % 3]] += 1
    for channel, top in tops.items():
        await eventually(
            lambda c=channel, t=top: all(len(p.seqs[c]) + len(p.own[c]) >= t for p in peers)
        )
        check_every_message_once_in_order(peers, channel, top)
    for peer in peers:
        await peer.close()
    for node in nodes:
        node.process.process.terminate()
        assert await node.process.wait() == 0
    for channel, top in tops.items():
        assert archived(db, channel) == list(range(1, top + 1))


# Resume anywhere


async def test_a_client_resumes_exactly_on_another_node(
    spawn: Spawn, redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    redis = redis_factory()
    db = tmp_path / "chat.db"
    nodes = [await start_node(spawn, redis, db, "--history", "5") for _ in range(3)]
    reader, writer = Peer("reader", ("room",)), Peer("writer", ("room",))
    await reader.connect(nodes[0])
    await writer.connect(nodes[1])
    for index in range(10):
        await writer.publish("room", f"before {index}")
        await writer.publish("general", f"before {index}")
    await eventually(lambda: reader.count("room") == 10 and reader.count("general") == 10)
    await reader.close()
    for index in range(30):
        await writer.publish("room", f"missed {index}")
        await writer.publish("general", f"missed {index}")
    await eventually(lambda: not writer.outbox)
    # The stream keeps 5 once archived: the resume reads 25 of the 30 from the database.
    await eventually(lambda: len(archived(db, "room")) == 40 and len(archived(db, "general")) == 40)
    await eventually(lambda: redis.command("XLEN", "chat:{room}:stream").startswith(b":5\r"))
    await reader.connect(nodes[2], resume=True)
    for channel in ("room", "general"):
        kind = "subscribed" if channel == "room" else "history"
        resumed = [
            m
            for m in reader.messages
            if m.get("type") == kind and m.get("channel") == channel and m.get("recovered")
        ]
        assert len(resumed) == 1, (channel, reader.messages[-5:])
        assert [item["seq"] for item in resumed[0]["messages"]] == list(range(11, 41))
        assert resumed[0]["messages"][0]["message"] == "missed 0"
    check_every_message_once_in_order([reader], "room", 40)
    check_every_message_once_in_order([reader], "general", 40)


# Gaps


async def test_pubsub_connections_killed_again_and_again_lose_nothing(
    spawn: Spawn, redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    redis = redis_factory()
    db = tmp_path / "chat.db"
    nodes = [await start_node(spawn, redis, db) for _ in range(2)]
    channels = ("room:a", "room:b")
    peers = [Peer(f"p{i}", channels) for i in range(6)]
    for index, peer in enumerate(peers):
        await peer.connect(nodes[index % 2])
    kills = 0
    done = asyncio.Event()

    async def kill_pubsub() -> None:
        nonlocal kills
        while not done.is_set():
            await asyncio.sleep(0.05)
            if redis.command("CLIENT", "KILL", "TYPE", "pubsub").startswith(b":"):
                kills += 1

    killer = asyncio.get_running_loop().create_task(kill_pubsub())
    total = await publish_all(peers, channels, 3000)
    done.set()
    await killer
    assert total == 3000
    assert kills >= 5
    tops = {channel: 1500 for channel in channels}
    for channel, top in tops.items():
        await eventually(lambda c=channel, t=top: all(p.count(c) >= t for p in peers))
        check_every_message_once_in_order(peers, channel, top)
    assert all(peer.closes == [] for peer in peers)
    assert all(not peer.resets for peer in peers)


# Redis restarts


@pytest.mark.parametrize("aof", [True, False], ids=["aof", "no-aof"])
async def test_redis_restarted_loses_nothing_with_aof_and_nothing_silently_without(
    spawn: Spawn, redis_factory: Callable[..., RedisServer], tmp_path: Path, aof: bool
) -> None:
    redis = redis_factory(aof=aof)
    db = tmp_path / "chat.db"
    nodes = [await start_node(spawn, redis, db) for _ in range(2)]
    peers = [Peer(f"p{i}", ("room",)) for i in range(4)]
    for index, peer in enumerate(peers):
        await peer.connect(nodes[index % 2])
    epoch = peers[0].epochs["room"]
    assert await publish_all(peers, ("room",), 200) == 200
    await eventually(lambda: all(p.count("room") >= 200 for p in peers))
    redis.stop()
    # Publishes while Redis is away: refused at once, kept in the outboxes.
    for peer in peers:
        await peer.publish("room", f"{peer.name} during the outage")
    await eventually(lambda: all(p.unavailable >= 1 for p in peers))
    assert all(p.outbox for p in peers)
    await asyncio.sleep(2)  # several reconnection attempts
    redis.start()
    for node in nodes:
        await eventually(lambda node=node: node.process.lines_with("redis: connected again"))
        assert len(node.process.lines_with("redis: reconnecting (attempt")) >= 2
    # The clients stayed connected; what was refused is sent again and acknowledged.
    for peer in peers:
        for msg_id, (channel, text) in list(peer.outbox.items()):
            await peer._publish(msg_id, channel, text)
    await eventually(lambda: all(not p.outbox for p in peers))
    assert await publish_all(peers, ("room",), 100) == 100 + 200 + 4
    assert all(peer.closes == [] for peer in peers)
    if aof:
        # Nothing acknowledged was lost: every seq, once, in order, in the same epoch.
        await eventually(lambda: all(p.count("room") >= 304 for p in peers))
        check_every_message_once_in_order(peers, "room", 304)
        assert all(peer.epochs["room"] == epoch and not peer.resets for peer in peers)
    else:
        # A new epoch: every subscriber was told (recovered: false), and its seqs go on far
        # above the old ones (those of the archive), with no gap.
        tops = {peer.last("room") for peer in peers}
        assert len(tops) == 1
        for peer in peers:
            assert peer.epochs["room"] != epoch
            assert peer.resets["room"] == 1
            new = sorted({seq for seq in peer.seqs["room"] + peer.own["room"] if seq > 100_000})
            assert new == list(range(new[0], max(tops) + 1))


# A node crashes


async def test_a_crashed_nodes_clients_resume_elsewhere_and_its_members_leave(
    spawn: Spawn, redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    redis = redis_factory()
    db = tmp_path / "chat.db"
    options = ("--presence-ttl", "2")
    nodes = [await start_node(spawn, redis, db, *options) for _ in range(3)]
    peers = [Peer(f"p{i}", ("room",)) for i in range(6)]
    for index, peer in enumerate(peers):
        await peer.connect(nodes[index % 3])
    doomed = [peer for index, peer in enumerate(peers) if index % 3 == 2]
    survivors = [peer for peer in peers if peer not in doomed]
    assert await publish_all(peers, ("room",), 300) == 300
    await nodes[2].process.kill()  # SIGKILL: no close frame, no presence removed
    writing = asyncio.get_running_loop().create_task(publish_all(survivors, ("room",), 300))
    # Its members leave within the TTL: a surviving node's sweep announces it.
    for peer in doomed:
        await eventually(
            lambda peer=peer: all(
                any(
                    m.get("type") == "left" and m["member"].get("clientId") == peer.client_id
                    for m in other.messages
                )
                for other in survivors
            )
        )
    for peer in doomed:
        await eventually(lambda peer=peer: bool(peer.closes))
        await peer.connect(nodes[0], resume=True)
    await writing
    await eventually(lambda: all(p.count("room") >= 600 for p in peers))
    check_every_message_once_in_order(peers, "room", 600)


# Direct messages


async def test_a_direct_message_reaches_the_users_connections_on_every_node(
    spawn: Spawn, redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    redis = redis_factory()
    db = tmp_path / "chat.db"
    auth = ("--auth", "jwt", "--jwt-secret", SECRET)
    nodes = [await start_node(spawn, redis, db, *auth) for _ in range(3)]
    alice, bob, bob_tab = Peer("alice"), Peer("bob"), Peer("bob's tab")
    await alice.connect(nodes[0], query=f"access_token={token(sub='alice')}")
    await bob.connect(nodes[1], query=f"access_token={token(sub='bob')}")
    await bob_tab.connect(nodes[2], query=f"access_token={token(sub='bob')}")
    alice.outbox["d1"] = ("dm:alice:bob", "psst")  # its ack counts as alice's own message
    await alice.send({"type": "direct", "to": "bob", "message": "psst", "clientMsgId": "d1"})
    for peer in (bob, bob_tab):
        await eventually(lambda peer=peer: peer.count("dm:alice:bob") == 1)
        subscribed = [m for m in peer.messages if m.get("type") == "subscribed"]
        assert [m["channel"] for m in subscribed] == ["dm:alice:bob"]
        # In the history it came with, or live after it: once either way.
        texts = [m["message"] for m in peer.messages if m.get("type") == "broadcast"]
        texts += [item["message"] for m in subscribed for item in m["messages"]]
        assert texts == ["psst"]
    # Subscribed now: the answer goes back the usual way.
    await bob_tab.publish("dm:alice:bob", "hi alice")
    peers = [alice, bob, bob_tab]
    # bob's tab counts the answer once its ack came (after its node delivered it).
    await eventually(lambda: all(peer.count("dm:alice:bob") == 2 for peer in peers))
    check_every_message_once_in_order(peers, "dm:alice:bob", 2)


# A storm of connections


async def test_three_hundred_clients_connecting_at_once_are_all_served(
    spawn: Spawn, redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    # Each connect reads general's history: more at once than the node has connections to
    # Redis must wait for one, not fail (redis-py's plain pool raises beyond its size, which
    # the engine took for Redis lost: 1013 for everyone).
    redis = redis_factory()
    node = await start_node(spawn, redis, tmp_path / "chat.db", "--max-handshakes-per-ip", "0")
    peers = [Peer(f"p{i}", ("room",)) for i in range(300)]
    await asyncio.gather(*(peer.connect(node) for peer in peers))
    assert all(peer.closes == [] for peer in peers)
    assert all(peer.epochs["room"] == peers[0].epochs["room"] for peer in peers)
    assert not node.process.lines_with("unreachable")
    await asyncio.gather(*(peer.close() for peer in peers))
