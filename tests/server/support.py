"""Helpers of the chat server tests: clients, raw sockets, HTTP, and checks of message shapes.

Imported as ``tests.server.support`` (``pythonpath = ["."]``): two ``conftest.py`` files outside
packages cannot both be imported by name, so what tests call lives here and only fixtures live
in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import sqlite3
import struct
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rfc6455
from rfc6455 import Connection
from rfc6455.frames import Frame, Opcode, parse_frame, serialize_frame
from server.app import App
from server.persistence import dead_letter_path_for

HOST = "127.0.0.1"

# Hang guard for every single wait: far above what any step takes, so it only ever fires
# when something is broken.
GUARD = 10.0

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")

Json = dict[str, Any]


async def wait_until(predicate: Callable[[], object], within: float = GUARD) -> None:
    """Poll ``predicate`` until it is true; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.002)


def check_id(value: object) -> str:
    """Assert that ``value`` is a uuid4 in its canonical form: lowercase, 36 characters."""
    assert isinstance(value, str)
    assert len(value) == 36
    assert value == value.lower()
    parsed = uuid.UUID(value)
    assert parsed.version == 4
    assert str(parsed) == value
    return value


def check_timestamp(value: object, before: datetime, after: datetime) -> datetime:
    """Assert ``value`` is "YYYY-MM-DD HH:MM:SS" in UTC, between ``before`` and ``after``."""
    assert isinstance(value, str)
    assert TIMESTAMP.fullmatch(value), value
    when = datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    # Whole seconds: the timestamp is truncated, so compare with truncated bounds.
    assert before.replace(microsecond=0) <= when <= after, (before, value, after)
    return when


def check_broadcast(message: Json, sender: str, text: str) -> Json:
    """Assert ``message`` is the broadcast of ``text`` by ``sender``."""
    assert message["type"] == "broadcast", message
    assert message["connectionId"] == sender
    assert message["message"] == text
    assert isinstance(message["timestamp"], str)
    assert TIMESTAMP.fullmatch(message["timestamp"]), message
    return message


def check_user_left(
    message: Json, left: str, total: int, close: tuple[int, str] | None = None
) -> None:
    """Assert ``message`` announces that ``left`` left, ``total`` remaining, with ``close``."""
    assert message["type"] == "user_left", message
    assert message["connectionId"] == left
    assert message["totalConnections"] == total
    if close is None:
        assert "closeStatus" not in message
        assert "closeReason" not in message
    else:
        assert (message["closeStatus"], message["closeReason"]) == close


def _loads(data: str | bytes) -> Json:
    assert isinstance(data, str), f"expected a text message, got {data!r}"
    message = json.loads(data)
    assert isinstance(message, dict)
    return message


@dataclass
class Client:
    """A chat client on the ``rfc6455`` client, past its greeting messages and its history."""

    connection: Connection
    id: str
    welcome: Json
    history: Json | None = None
    # The acks received so far: recv() sets them aside, so that tests about other messages
    # need not care when the database commits.
    acks: list[Json] = field(default_factory=list)
    # What expect() passed over on its way to what it waited for.
    seen: list[Json] = field(default_factory=list)
    # Every message received after the greeting.
    received: list[Json] = field(default_factory=list)

    async def send(self, text: str) -> None:
        await self.connection.send(text)

    async def recv_any(self) -> Json:
        """The next message, acks included, parsed; fails after GUARD seconds."""
        async with asyncio.timeout(GUARD):
            message = _loads(await self.connection.recv())
        self.received.append(message)
        return message

    async def request(self, kind: str, **fields: Any) -> None:
        """Send a request of the channel protocol: ``{"type": kind, **fields}``."""
        await self.connection.send(json.dumps({"type": kind, **fields}))

    async def expect(self, kind: str, **fields: Any) -> Json:
        """Receive until a message of type ``kind`` with these values comes; the others
        received meanwhile are kept in ``seen`` (acks in ``acks`` as well)."""
        while True:
            message = await self.recv_any()
            if message.get("type") == kind and all(
                message.get(key) == value for key, value in fields.items()
            ):
                return message
            if message.get("type") == "ack":
                self.acks.append(message)
            self.seen.append(message)

    async def subscribe(self, channel: str, **fields: Any) -> Json:
        """Subscribe to ``channel``; return the ``subscribed`` answer."""
        await self.request("subscribe", channel=channel, **fields)
        return await self.expect("subscribed", channel=channel)

    async def publish(self, channel: str, text: str, client_msg_id: str | None = None) -> None:
        """Publish ``text`` to ``channel`` (with a clientMsgId if given)."""
        fields: dict[str, Any] = {"channel": channel, "message": text}
        if client_msg_id is not None:
            fields["clientMsgId"] = client_msg_id
        await self.request("publish", **fields)

    async def recv(self) -> Json:
        """The next message that is not an ack (acks go to ``acks``)."""
        while (message := await self.recv_any())["type"] == "ack":
            self.acks.append(message)
        return message

    async def wait_acks(self, n: int) -> list[Json]:
        """Receive until ``n`` acks in all have come; fails if anything else comes first."""
        while len(self.acks) < n:
            message = await self.recv_any()
            assert message["type"] == "ack", message
            self.acks.append(message)
        return self.acks

    async def expect_broadcast(self, sender: Client | RawClient, text: str) -> Json:
        """Assert the next message is the broadcast of ``text`` by ``sender``."""
        return check_broadcast(await self.recv(), sender.id, text)

    @property
    def local_address(self) -> str:
        address = self.connection.local_address
        assert address is not None
        return f"{address[0]}:{address[1]}"


@dataclass
class RawClient:
    """A WebSocket client on a bare TCP stream, for what real clients never send.

    It sends masked frames built by hand and reads frames without answering pings.
    """

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    buffer: bytearray = field(default_factory=bytearray)
    id: str = ""

    async def send_frame(self, opcode: Opcode, data: bytes, *, fin: bool = True) -> None:
        self.writer.write(serialize_frame(opcode, data, fin=fin, mask=True))
        await self.writer.drain()

    def reset(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0), as a tab closing with unread data."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def recv_frame(self) -> Frame | None:
        """The next frame, or None at EOF; fails after GUARD seconds."""
        async with asyncio.timeout(GUARD):
            while (parsed := parse_frame(self.buffer, 0, mask=False, max_size=None)) is None:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.buffer += data
        frame, end = parsed
        del self.buffer[:end]
        return frame

    async def recv(self) -> Json:
        """The next message that is not an ack."""
        while True:
            frame = await self.recv_frame()
            assert frame is not None
            assert frame.opcode is Opcode.TEXT, frame
            message = _loads(frame.data.decode())
            if message.get("type") != "ack":
                return message

    def drop(self) -> None:
        """Close the TCP connection without a close frame."""
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@dataclass
class Reply:
    """An HTTP response as read from a socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Json:
        return _loads(self.body.decode())


class Chat:
    """An App running in this process on 127.0.0.1, with helpers to talk to it."""

    def __init__(self, app: App, port: int) -> None:
        self.app = app
        self.port = port
        self.stopped = False
        self._connections: list[Connection] = []
        self._raw: list[RawClient] = []

    @property
    def db_path(self) -> Path:
        return self.app.settings.db_path

    @property
    def dead_letter_path(self) -> Path:
        return dead_letter_path_for(self.db_path)

    def url(self, path: str = "/") -> str:
        return f"ws://{HOST}:{self.port}{path}"

    async def connect(self, path: str = "/", **options: Any) -> Connection:
        """Open a WebSocket connection with the ``rfc6455`` client; closed at teardown."""
        options.setdefault("ping_interval", None)
        connection = await rfc6455.connect(self.url(path), **options)
        self._connections.append(connection)
        return connection

    def expects_history(self, query: str) -> bool:
        """Whether a client connecting with ``query`` gets a history message."""
        return self.app.settings.history > 0 or "since=" in query

    async def join(self, query: str = "") -> Client:
        """Connect to the chat endpoint; check the greeting messages, take the history."""
        connection = await self.connect("/?" + query if query else "/")
        async with asyncio.timeout(GUARD):
            first = _loads(await connection.recv())
            second = _loads(await connection.recv())
            history = _loads(await connection.recv()) if self.expects_history(query) else None
        check_id(first["connectionId"])
        assert "type" not in first, first  # the original's first message is untyped
        assert second["type"] == "welcome", second
        assert isinstance(second["message"], str)
        assert second["message"]
        assert second["epoch"] == (await self.app.engine.position("general")).epoch
        if history is not None:
            assert history["type"] == "history", history
            assert history["epoch"] == second["epoch"]
        return Client(connection, first["connectionId"], second, history)

    async def open_raw(self, source: str | None = None) -> RawClient:
        """A bare TCP connection to the server; closed at teardown.

        ``source``: the address to connect from (any of 127.0.0.0/8 is this machine).
        """
        local = None if source is None else (source, 0)
        reader, writer = await asyncio.open_connection(HOST, self.port, local_addr=local)
        raw = RawClient(reader, writer)
        self._raw.append(raw)
        return raw

    async def join_raw(
        self, query: str = "", *, headers: Sequence[str] = (), source: str | None = None
    ) -> RawClient:
        """Join the chat on a bare TCP stream: handshake by hand, then the greetings.

        ``headers``: extra lines of the request; ``source``: the address to connect from.
        """
        raw = await self.open_raw(source)
        reader, writer = raw.reader, raw.writer
        target = "/?" + query if query else "/"
        writer.write(upgrade_head(target, f"{HOST}:{self.port}", *headers))
        async with asyncio.timeout(GUARD):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        first = await raw.recv()
        raw.id = check_id(first["connectionId"])
        assert (await raw.recv())["type"] == "welcome"
        if self.expects_history(""):
            assert (await raw.recv())["type"] == "history"
        return raw

    async def request(self, data: bytes, source: str | None = None) -> Reply:
        """Send raw bytes as an HTTP request (from ``source``) and read the reply up to EOF."""
        raw = await self.open_raw(source)
        reader, writer = raw.reader, raw.writer
        writer.write(data)
        async with asyncio.timeout(GUARD):
            response = await reader.read()
        writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"duplicate header {name}"
            headers[name.lower()] = value.strip()
        if "content-length" in headers and not data.startswith(b"HEAD "):
            assert len(body) == int(headers["content-length"])
        return Reply(int(status), headers, body)

    async def get(
        self, target: str, method: str = "GET", *headers: str, source: str | None = None
    ) -> Reply:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}:{self.port}", *headers]
        return await self.request(("\r\n".join(lines) + "\r\n\r\n").encode(), source)

    async def health(self) -> Json:
        reply = await self.get("/healthz")
        assert reply.status == 200
        return reply.json()

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.app.stop()

    async def archived(self) -> None:
        """With the Redis engine, wait until what was published is archived."""
        archiver = getattr(self.app.engine, "archiver", None)
        if archiver is not None:
            async with asyncio.timeout(GUARD):
                await archiver.settle()

    def rows(self) -> list[tuple[Any, ...]]:
        """Every row of ``messages``, read through an independent connection."""
        conn = sqlite3.connect(self.db_path)
        try:
            return conn.execute(
                "SELECT seq, connection_id, message, timestamp, created_at"
                " FROM messages ORDER BY seq"
            ).fetchall()
        finally:
            conn.close()

    def dead_letters(self) -> list[Json]:
        if not self.dead_letter_path.exists():
            return []
        with open(self.dead_letter_path, encoding="utf-8") as file:
            return [json.loads(line) for line in file]

    async def close_all(self) -> None:
        # Read what clients have left (acks...) while the server closes them: a client that
        # reads nothing never sees the close frame, and the server would wait for it.
        drains = [asyncio.create_task(_drain(c)) for c in self._connections]
        await self.stop()
        await asyncio.gather(*drains)
        for raw in self._raw:
            await raw.close()


async def _drain(connection: Connection) -> None:
    """Read until the connection is closed; drop it if that takes GUARD seconds."""
    try:
        async with asyncio.timeout(GUARD):
            with contextlib.suppress(rfc6455.ConnectionClosed):
                while True:
                    await connection.recv()
            await connection.wait_closed()
    except TimeoutError:
        connection.abort()
        await connection.wait_closed()


@contextlib.contextmanager
def locked(db: Path) -> Iterator[None]:
    """Hold the database's write lock from another connection, as another process would."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=GUARD)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def upgrade_head(target: str, host: str, *headers: str) -> bytes:
    """A WebSocket upgrade request for ``target`` on ``host``: a fresh key, then ``headers``."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def upgrade(chat: Chat, target: str = "/", *headers: str, source: str | None = None) -> Reply:
    """Send an upgrade request by hand and read the refusal (a 101 would never reach EOF)."""
    return await chat.request(upgrade_head(target, f"{HOST}:{chat.port}", *headers), source)


def check_refusal(reply: Reply, status: int, retry_after: int | None = None) -> str:
    """A refusal: ``status``, a one-line reason as the body, Retry-After if expected."""
    assert reply.status == status, reply
    body = reply.body.decode()
    assert body.endswith("\n")
    assert body.count("\n") == 1
    if retry_after is not None:
        assert reply.headers["retry-after"] == str(retry_after)
    return body
