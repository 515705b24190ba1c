"""``python -m server --workers 2 --engine redis://...`` as real processes, with a real Redis.

A supervisor and its two workers run as one child (``workers_service.py``), on a port the test
holds bound. Redis is the session's ``redis-server`` (``redis_service.py``), emptied for the
test; the archive is one SQLite file both workers share, or a PostgreSQL database of the
test's own.

Clients are connected until each worker has some: a worker's log lines name its pid, which
tells the test where each client is. They behave as the console and web clients do
(``docs/protocol.md``, "Resuming"): an outbox of messages with a ``clientMsgId`` (and a
``clientId``, so that the server knows the sender), sent again after every reconnect; on 1012
they connect again to the same port with ``?since=&epoch=`` for ``general`` and ``subscribe``
with ``since`` and ``epoch`` for the other channel, the position being the highest seq
delivered (a broadcast or a history's message).

Then what was found while writing it and the Redis engine's documentation, with several
nodes in this process (Apps on one Redis).

Orders, sets and counts are asserted, never durations; every wait has a generous bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import rfc6455
from tests.server.postgres_service import PostgresService
from tests.server.redis_service import RedisServer
from tests.server.support import wait_until
from tests.server.workers_service import (
    WAIT,
    Supervisor,
    Supervisors,
    create_database,
    reserved_port,
)

REPO = Path(__file__).resolve().parents[2]
GENERAL = "general"
ROOM = "room:workers"
CHANNELS = (GENERAL, ROOM)
# Clients each worker must have before the test goes on, and the most connected to get there.
PER_WORKER = 3
MOST_CLIENTS = 40
# Seconds before a client reconnects: the console client's first delay (the others publish
# meanwhile, and the second worker may be replaced first), or almost at once (it may reach the
# other old worker, to be closed again); every other client waits long.
RECONNECT = (0.5, 0.05)

Json = dict[str, Any]


@dataclass
class Sent:
    """A message of a client's outbox."""

    channel: str
    text: str
    client_msg_id: str


@dataclass
class Resume:
    """A ``history`` or ``subscribed`` that answered a resume."""

    channel: str
    since: int
    recovered: bool
    seqs: list[int]


@dataclass
class Client:
    """A chat client that reconnects and resumes as the console and web clients do."""

    url: str
    supervisor: Supervisor
    name: str
    reconnect: float
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    epochs: dict[str, str] = field(default_factory=dict)
    #: Per channel, the seqs delivered (broadcasts, histories), in the order they came.
    delivered: dict[str, list[int]] = field(default_factory=lambda: {c: [] for c in CHANNELS})
    #: The text of every message delivered, by (channel, seq).
    texts: dict[tuple[str, int], str] = field(default_factory=dict)
    outbox: dict[str, Sent] = field(default_factory=dict)
    sent: dict[str, Sent] = field(default_factory=dict)
    #: clientMsgId -> every (channel, seq) its acks said.
    acks: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    resumes: list[Resume] = field(default_factory=list)
    closes: list[tuple[int | None, str | None]] = field(default_factory=list)
    #: The worker of each connection, in order.
    workers: list[int] = field(default_factory=list)
    errors: list[Json] = field(default_factory=list)
    connection: rfc6455.Connection | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    _count: int = 0

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def since(self, channel: str) -> int | None:
        """The highest seq delivered in ``channel``: where it resumes from."""
        seqs = self.delivered[channel]
        return max(seqs) if seqs else None

    def acked(self, channel: str) -> set[int]:
        """The seqs of this client's own messages in ``channel``, from their acks."""
        return {seq for answers in self.acks.values() for c, seq in answers if c == channel}

    def seen(self, channel: str) -> set[int]:
        """Every seq of ``channel`` this client knows of: delivered, or its own."""
        return set(self.delivered[channel]) | self.acked(channel)

    async def publish(self, channel: str) -> None:
        """Put a new message in the outbox; send it now if connected and resubscribed."""
        self._count += 1
        text = f"{self.name} #{self._count} in {channel}"
        sent = Sent(channel, text, str(uuid.uuid4()))
        self.outbox[sent.client_msg_id] = self.sent[sent.client_msg_id] = sent
        if self.ready.is_set():
            await self._send(sent)

    async def _send(self, sent: Sent) -> None:
        connection = self.connection
        if connection is None:
            return
        request = {
            "type": "publish",
            "channel": sent.channel,
            "message": sent.text,
            "clientMsgId": sent.client_msg_id,
        }
        # Closed: it stays in the outbox, sent again after the reconnect.
        with contextlib.suppress(rfc6455.ConnectionClosed):
            await connection.send(json.dumps(request))

    def check(self) -> bool:
        """Raise what ended the client's task with an error (a failed check); True."""
        task = self.task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]
        return True

    async def _run(self) -> None:
        while True:
            since = self.since(GENERAL)
            connection = await self._connect(since)
            with contextlib.suppress(rfc6455.ConnectionClosed):
                await self._serve(connection, since)
            self.ready.clear()
            self.connection = None
            await connection.wait_closed()
            self.closes.append((connection.close_code, connection.close_reason))
            if connection.close_code != rfc6455.CloseCode.SERVICE_RESTART:
                return
            await asyncio.sleep(self.reconnect)

    async def _connect(self, since: int | None) -> rfc6455.Connection:
        """Connect, resuming general after ``since``; try again while the port has no
        listener for it (a connection in a closing worker's backlog is reset)."""
        query = f"clientId={self.client_id}"
        if since is not None:
            query += f"&since={since}&epoch={self.epochs[GENERAL]}"
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    return await rfc6455.connect(f"{self.url}?{query}", ping_interval=None)
                except (OSError, TimeoutError, rfc6455.HandshakeError):
                    await asyncio.sleep(0.05)

    async def _serve(self, connection: rfc6455.Connection, since: int | None) -> None:
        """Greeting, history, subscribe (resuming), the outbox again, then every message."""
        first = await _recv(connection)
        self.workers.append(await self.supervisor.worker_of(first["connectionId"]))
        welcome = await _recv(connection)
        assert welcome["type"] == "welcome", welcome
        self._history(await _recv(connection), since)
        self.connection = connection
        subscribe: Json = {"type": "subscribe", "channel": ROOM}
        room_since = self.since(ROOM)
        if room_since is not None:
            subscribe |= {"since": room_since, "epoch": self.epochs[ROOM]}
        await connection.send(json.dumps(subscribe))
        while True:
            message = await _recv(connection)
            kind = message.get("type")
            if kind == "broadcast":
                self._delivered(message["channel"], message)
            elif kind == "ack":
                self._ack(message)
            elif kind == "subscribed":
                self._history(message, room_since)
                again = list(self.outbox.values())
                self.ready.set()
                for sent in again:
                    await self._send(sent)
            elif kind == "error":
                self.errors.append(message)
            # joined, left, user_left: presence, not what this test counts.

    def _history(self, message: Json, since: int | None) -> None:
        channel = message.get("channel", GENERAL)
        assert message["type"] in ("history", "subscribed"), message
        seqs = [item["seq"] for item in message["messages"]]
        if since is not None:
            assert self.epochs[channel] == message["epoch"]
            self.resumes.append(Resume(channel, since, message["recovered"], seqs))
        else:
            self.epochs[channel] = message["epoch"]
        for item in message["messages"]:
            self._delivered(channel, item)

    def _delivered(self, channel: str, message: Json) -> None:
        self.delivered[channel].append(message["seq"])
        self.texts[(channel, message["seq"])] = message["message"]

    def _ack(self, message: Json) -> None:
        client_msg_id = message["clientMsgId"]
        self.acks.setdefault(client_msg_id, []).append((message["channel"], message["seq"]))
        self.outbox.pop(client_msg_id, None)


async def _recv(connection: rfc6455.Connection) -> Json:
    async with asyncio.timeout(WAIT):
        data = await connection.recv()
    assert isinstance(data, str)
    message = json.loads(data)
    assert isinstance(message, dict)
    return message


async def archived(db: str) -> list[tuple[str, int, str]]:
    """Every (channel, seq, message) of the archive's table."""
    query = "SELECT channel, seq, message FROM messages ORDER BY channel, seq"
    if db.startswith("postgresql://"):
        import psycopg

        async with await psycopg.AsyncConnection.connect(db) as pg:
            cursor = await pg.execute(query)
            return [(c, int(s), m) for c, s, m in await cursor.fetchall()]
    conn = sqlite3.connect(db)
    try:
        return [(c, int(s), m) for c, s, m in conn.execute(query).fetchall()]
    finally:
        conn.close()


@pytest.fixture
async def supervise(
    tmp_path: Path, loop_errors: list[dict[str, Any]]
) -> AsyncIterator[Callable[..., Any]]:
    """``supervise(*args, port=P)``: a ``python -m server --workers 2`` in tmp_path."""
    supervisors = Supervisors(tmp_path)
    yield supervisors.start
    await supervisors.close()


async def until(clients: list[Client], predicate: Callable[[], object]) -> None:
    """Wait until ``predicate()``, failing at once if a client's own checks failed."""
    await wait_until(lambda: all(client.check() for client in clients) and predicate(), WAIT)


async def connect_to_both(supervisor: Supervisor, url: str) -> list[Client]:
    """Clients, until each worker has ``PER_WORKER`` (the kernel spreads them), each greeted."""
    clients: list[Client] = []
    while True:
        counts: dict[int, int] = {}
        for client in clients:
            counts[client.workers[-1]] = counts.get(client.workers[-1], 0) + 1
        if len(counts) == 2 and min(counts.values()) >= PER_WORKER:
            return clients
        assert len(clients) < MOST_CLIENTS, f"the kernel gave every client to one worker: {counts}"
        number = len(clients)
        client = Client(url, supervisor, f"c{number}", RECONNECT[number % 2])
        client.start()
        clients.append(client)
        await until(clients, client.ready.is_set)


async def publish_each(clients: list[Client], rounds: int) -> None:
    """Each client publishes ``rounds`` messages in each channel, a little apart."""
    for _ in range(rounds):
        for channel in CHANNELS:
            for client in clients:
                await client.publish(channel)
            await asyncio.sleep(0.01)


async def keep_publishing(client: Client, stop: asyncio.Event) -> None:
    """Publish in turn in each channel, ten a second (the rate limit allows 20), until told."""
    while not stop.is_set():
        for channel in CHANNELS:
            await client.publish(channel)
            await asyncio.sleep(0.1)


def check_exactly_once(clients: list[Client]) -> dict[str, int]:
    """Every message acked once with one seq, the seqs of each channel 1..top, each delivered
    to every other client once, in order, with its text; returns each channel's top."""
    acked: dict[tuple[str, int], str] = {}
    for client in clients:
        assert client.errors == []
        assert client.outbox == {}
        for client_msg_id, answers in client.acks.items():
            sent = client.sent[client_msg_id]
            # A message sent again after a lost ack is acked with its first seq.
            assert {answer for answer in answers} == {(sent.channel, answers[0][1])}
            key = answers[0]
            assert key not in acked, f"{key} acked for two messages"
            acked[key] = sent.text
        assert set(client.acks) == set(client.sent)
    tops = {}
    for channel in CHANNELS:
        seqs = sorted(seq for c, seq in acked if c == channel)
        tops[channel] = top = len(seqs)
        assert seqs == list(range(1, top + 1)), f"{channel}: seqs not 1..{top}"
    for client in clients:
        for channel in CHANNELS:
            delivered = client.delivered[channel]
            assert delivered == sorted(set(delivered)), f"{client.name} {channel}: order, twice"
            assert client.seen(channel) == set(range(1, tops[channel] + 1)), client.name
            for seq in delivered:
                assert client.texts[(channel, seq)] == acked[(channel, seq)]
    return tops


async def wait_all_seen(clients: list[Client]) -> None:
    """Wait until every message is acked and every client knows of every seq."""
    await until(clients, lambda: all(not client.outbox for client in clients))

    def tops() -> dict[str, int]:
        return {
            channel: max(max(client.acked(channel), default=0) for client in clients)
            for channel in CHANNELS
        }

    def everything_seen() -> bool:
        top = tops()
        return all(
            len(client.seen(channel)) >= top[channel] for client in clients for channel in CHANNELS
        )

    await until(clients, everything_seen)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_rolling_restart_of_two_workers_loses_nothing_and_archives_each_message_once(
    supervise: Callable[..., Any],
    redis_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    database: str,
) -> None:
    if database == "sqlite":
        db = str(tmp_path / "chat.db")  # one file, shared by both workers (a shared lock)
    else:
        service: PostgresService = request.getfixturevalue("postgres")
        db = await create_database(service, f"workers_{uuid.uuid4().hex}")
    with reserved_port() as port:
        supervisor = await supervise("--engine", redis_url, "--db", db, port=port)
        await chat_through_a_rolling_restart(supervisor, f"ws://127.0.0.1:{port}/", db)


async def chat_through_a_rolling_restart(supervisor: Supervisor, url: str, db: str) -> None:
    clients = await connect_to_both(supervisor, url)
    first_workers = {client.workers[0] for client in clients}
    assert len(first_workers) == 2

    # Everyone knows a seq and an epoch of both channels before the restart.
    await publish_each(clients, 2)
    await wait_all_seen(clients)

    stop = asyncio.Event()
    publishers = [asyncio.create_task(keep_publishing(client, stop)) for client in clients]
    supervisor.signal(signal.SIGHUP)
    await until(clients, lambda: supervisor.logged("server.supervisor: restarted 2 workers"))
    # Every client was closed by its worker, connected again to a new one, and resumed.
    await until(
        clients,
        lambda: all(c.ready.is_set() and c.workers[-1] not in first_workers for c in clients),
    )
    for client in clients:
        assert client.closes, client.name
        assert set(client.closes) == {(1012, "service restart")}
    # Some more from every client on the new workers, then no more.
    counts = {client.name: len(client.sent) for client in clients}
    await until(clients, lambda: all(len(c.sent) >= counts[c.name] + 4 for c in clients))
    stop.set()
    await asyncio.gather(*publishers)
    await wait_all_seen(clients)

    tops = check_exactly_once(clients)
    # What they missed while away came with the resumes (the others kept publishing).
    assert sum(len(resume.seqs) for client in clients for resume in client.resumes) > 0
    for client in clients:
        # Both channels resumed on the last connection at least (an earlier one may have been
        # closed before its answers came).
        assert {resume.channel for resume in client.resumes} == set(CHANNELS)
        for resume in client.resumes:
            assert resume.recovered, (client.name, resume)
            assert resume.seqs == list(range(resume.since + 1, resume.since + 1 + len(resume.seqs)))

    supervisor.signal(signal.SIGTERM)
    assert await supervisor.wait() == 0
    for client in clients:
        assert client.task is not None
        async with asyncio.timeout(WAIT):
            await client.task
        assert client.closes[-1] == (1001, "server shutting down")
    assert not [line for line in supervisor.lines if " ERROR " in line or "Traceback" in line]

    # In the archive once each: one row per acknowledged (channel, seq), with its text.
    texts = {
        answers[0]: client.sent[client_msg_id].text
        for client in clients
        for client_msg_id, answers in client.acks.items()
    }
    expected = sorted((channel, seq, text) for (channel, seq), text in texts.items())
    assert len(expected) == sum(tops.values())
    assert await archived(db) == expected


# Found while writing the test above: the order of an ack and the broadcasts before it.


async def test_an_ack_comes_after_the_broadcasts_of_the_seqs_before_it(
    start_chat: Callable[..., Any], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes (two Apps on one Redis, in this process); node B's pub/sub deliveries are held
    back, as a busy pub/sub connection or a gap being filled holds them.

    a (on A) publishes seq 1, then b (on B) publishes seq 2. The local engine sends b the
    broadcast of seq 1 before the ack of seq 2 (it broadcasts at numbering, acks at commit), and
    the clients rely on it: they take an ack's seq as seen, skip a broadcast at or below what
    they saw, and resume after it. So b must get broadcast 1 before ack 2.
    """
    node_a = await start_chat(engine=redis_url)
    node_b = await start_chat(engine=redis_url)
    a, b = await node_a.join(), await node_b.join()
    engine = node_b.app.engine
    received = engine._received
    held: list[tuple[str, bytes]] = []

    def hold(topic: str, data: bytes) -> None:
        held.append((topic, data))

    monkeypatch.setattr(engine, "_received", hold)
    await a.publish(GENERAL, "from a", "m-a")
    assert (await a.expect("ack"))["seq"] == 1
    await b.publish(GENERAL, "from b", "m-b")
    await wait_until(lambda: len(held) == 2)  # seq 1 and 2 reached B, and wait there
    # Whatever B sends b while it holds them (the ack, at the time of writing).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            await b.recv_any()
    monkeypatch.setattr(engine, "_received", received)
    for topic, data in held:
        received(topic, data)
    while not any(m.get("type") == "broadcast" for m in b.received):
        await b.recv_any()
    while not any(m.get("type") == "ack" for m in b.received):
        await b.recv_any()
    order = [(m["type"], m["seq"]) for m in b.received if m.get("type") in ("broadcast", "ack")]
    assert order == [("broadcast", 1), ("ack", 2)]


# Found while documenting the engine: the left of a crashed node's member.


async def test_a_crashed_nodes_member_is_announced_left_and_the_others_deliver_on(
    start_chat: Callable[..., Any], redis_url: str
) -> None:
    """Three nodes (three Apps on one Redis, in this process) in one channel, with a presence
    TTL of 1 s. Node C "crashes": it stops without taking its presence entries out, as
    ``kill -9`` would, so they expire. A node delivering the channel sweeps them: B's subscriber
    is told that C's member left, and B still delivers what node A's client publishes (the
    sweep's ``left`` once ended the pub/sub reader of every node that received it: ``l::``
    made its info unreadable)."""
    node_a, node_b, node_c = [
        await start_chat(engine=redis_url, presence_ttl=1.0) for _ in range(3)
    ]
    cat = str(uuid.uuid4())
    a, b, c = [
        await node.join(f"clientId={client_id}&name={name}")
        for node, client_id, name in (
            (node_a, uuid.uuid4(), "Ann"),
            (node_b, uuid.uuid4(), "Bob"),
            (node_c, cat, "Cat"),
        )
    ]
    channel = "room:crash"
    for client in (a, b, c):
        await client.subscribe(channel)
    assert (await b.expect("joined", channel=channel))["member"]["name"] == "Cat"
    node_c.app.engine.presence._local.clear()  # nothing taken out at its stop: a crash
    await node_c.app.stop()
    node_c.stopped = True
    assert (await b.expect("left", channel=channel))["member"] == {"clientId": cat, "name": "Cat"}
    await b.request("presence", channel=channel)
    presence = await b.expect("presence", channel=channel)
    assert sorted(member["name"] for member in presence["members"]) == ["Ann", "Bob"]
    await a.publish(channel, "still here?", "m-1")
    assert (await b.expect("broadcast", channel=channel))["message"] == "still here?"


async def test_the_workers_run_on_the_loop_chosen_and_the_supervisor_on_asyncio(
    supervise: Callable[..., Any], redis_url: str, tmp_path: Path
) -> None:
    """uvloop cannot start a process in a group of its own: the supervisor stays on asyncio."""
    uvloop = pytest.importorskip("uvloop")
    with reserved_port() as port:
        db = str(tmp_path / "chat.db")
        supervisor = await supervise(
            "--engine", redis_url, "--db", db, "--loop", "uvloop", port=port
        )
        # Each worker's line, before it listens; none of the supervisor's.
        assert supervisor.logged(f": event loop: uvloop {uvloop.__version__}\n") == 2
        assert supervisor.logged(": event loop:") == 2
        url = f"ws://127.0.0.1:{port}/echo"
        async with await rfc6455.connect(url, ping_interval=None) as echo:
            await echo.send("on a worker's uvloop")
            assert await echo.recv() == "on a worker's uvloop"
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.wait() == 0, "".join(supervisor.lines)


@pytest.mark.parametrize("unreachable", ["redis", "postgresql"])
async def test_workers_that_cannot_reach_redis_or_the_database_exit_2_with_one_line(
    redis_url: str, tmp_path: Path, unreachable: str
) -> None:
    """What the README says of a worker that exits before it first listens ("Redis
    unreachable"): the supervisor exits with its status, 2, after the worker's one line."""
    with reserved_port() as closed:  # bound, never listening: connections to it are refused
        engine, db = redis_url, str(tmp_path / "chat.db")
        if unreachable == "redis":
            engine = f"redis://127.0.0.1:{closed}/0"
        else:
            db = f"postgresql://chat@127.0.0.1:{closed}/chat"
        with reserved_port() as port:
            environ = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server",
                *("--workers", "2", "--port", str(port), "--engine", engine, "--db", db),
                cwd=tmp_path,
                env={**environ, "PYTHONPATH": str(REPO)},
                stdin=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            async with asyncio.timeout(WAIT):
                _, stderr = await process.communicate()
    assert process.returncode == 2
    # The workers' error lines; not the supervisor's log (nor asyncio's: a worker stopped
    # as it failed may be reaped twice, "Unknown child process pid ...", a known wart).
    logged = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
    errors = [line for line in stderr.decode().splitlines() if line and not logged.match(line)]
    assert len(errors) in (1, 2)  # each worker's line, or the first one's only
    assert all(line.startswith("python -m server: error: ") for line in errors), errors


async def test_a_channel_that_redis_rewound_is_started_again_not_silently_skipped(
    start_chat: Callable[..., Any], redis_url: str
) -> None:
    """Two nodes; five messages; then Redis "loses" the last two, as a restart from an AOF
    fsynced every second (or a snapshot) does: the meta key's seq goes back to 3 with the same
    epoch, entries 4 and 5 are gone from the stream and its group. The nodes' pub/sub
    connections are cut (a restart cuts them) and come back. Three new messages take seqs 4, 5
    and 6: the subscriber on the other node must get all three, or start again
    (``recovered: false``), not just the third."""
    import redis.asyncio

    node_a, node_b = [await start_chat(engine=redis_url) for _ in range(2)]
    a, b = await node_a.join(), await node_b.join()
    for number in range(1, 6):
        await a.publish(GENERAL, f"before {number}", f"m{number}")
        assert (await a.expect("ack"))["seq"] == number
    assert (await b.expect("broadcast", seq=5))["message"] == "before 5"
    engine_a, engine_b = node_a.app.engine, node_b.app.engine
    pubsubs = (engine_a._pubsub, engine_b._pubsub)
    redis_client = redis.asyncio.Redis.from_url(redis_url)
    try:
        # What an AOF without the last two scripts holds: the stream and its group too.
        stream = "chat:{general}:stream"
        await redis_client.hset("chat:{general}:meta", "s", 3)
        await redis_client.xdel(stream, "4-0", "5-0")
        await redis_client.execute_command("XSETID", stream, "3-0")
        await redis_client.xgroup_setid(stream, "archive", "3-0")
        await redis_client.client_kill_filter(_type="pubsub")
    finally:
        await redis_client.aclose()

    def reconnected() -> bool:
        return all(
            engine._pubsub is not None
            and engine._pubsub is not old
            and engine._reconnecting is None
            and all(watch.ready.is_set() for watch in engine._watches.values())
            for engine, old in zip((engine_a, engine_b), pubsubs, strict=True)
        )

    await wait_until(reconnected)
    for number in range(4, 7):
        await a.publish(GENERAL, f"after {number}", f"n{number}")
        assert (await a.expect("ack"))["seq"] == number
    texts = []
    reset = False
    while "after 6" not in texts:
        message = await b.recv()
        if message["type"] == "broadcast":
            texts.append(message["message"])
        elif message["type"] == "history" and message["recovered"] is False:
            reset = True
            texts.extend(item["message"] for item in message["messages"])
    assert reset or texts == ["after 4", "after 5", "after 6"]


async def test_a_channel_redis_lost_before_the_archive_had_any_of_it_never_reuses_a_seq(
    start_chat: Callable[..., Any], redis_url: str, redis_server: RedisServer
) -> None:
    """The archive records where each epoch began: a channel whose first messages Redis lost
    before any was archived goes on far above them, not at 1 again (an archiver may still be
    writing those)."""
    chat = await start_chat(engine=redis_url)
    client = await chat.join()
    redis_server.command("FLUSHALL")  # general's epoch began at 0; its data is gone
    await client.publish(GENERAL, "after the loss", "m1")
    ack = await client.expect("ack")
    assert ack["seq"] == 100_001
