"""The chat server in-process, over real sockets on 127.0.0.1 and a real SQLite file.

Each test starts an ``App`` on an ephemeral port (the ``chat`` and ``start_chat`` fixtures)
and talks to it with the ``rfc6455`` client, or with a bare TCP stream for what real clients
never send. "Nothing else arrived" is always proven the same way: another client sends a
marker, and the marker must be the very next message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import rfc6455
from rfc6455 import CloseCode, Limits
from rfc6455.frames import Close, Opcode
from server.retry import RetryPolicy
from server.store import TIMESTAMP_FORMAT
from tests.server.support import (
    GUARD,
    Chat,
    Client,
    RawClient,
    check_broadcast,
    check_id,
    check_timestamp,
    check_user_left,
    locked,
    wait_until,
)

# Retries often, for long enough that no test ever exhausts it.
PATIENT = RetryPolicy(attempts=1000, base_delay=0.01, max_delay=0.02)
# Gives up fast: two attempts 10 ms apart.
IMPATIENT = RetryPolicy(attempts=2, base_delay=0.01)

# Text that JSON must escape, or that a careless encoder would mangle.
TRICKY_TEXTS = [
    " a",
    "plain",
    "\"double\" and 'single' quotes",
    "back\\slash \\n \\u0000 \\\\",
    "line\nbreak\nand\ttab",
    "emoji 😀👍🏽👩‍👩‍👧 and flags 🇫🇷",
    "<script>alert('x')</script>",
    "\x7f DEL and \x85 NEL, which are not C0 control characters",
    "line separators \u2028 \u2029",
    "ünïcödé 中文 עברית العربية",
    "\ufeff BOM and \ufffd replacement",
    '{"kind": "welcome", "message": 42}',  # JSON, but neither a request nor a message
    '["message", "not really"]',
    "😀" * 1000,
]


def check_rows(rows: list[tuple[Any, ...]], sent: list[tuple[str, str, str]]) -> None:
    """Assert the database holds exactly ``sent`` (connection id, text, timestamp), in order."""
    assert [(c, m, t) for _, c, m, t, _ in rows] == sent
    ids = [row[0] for row in rows]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for _, _, _, timestamp, created_at in rows:
        created = datetime.fromisoformat(created_at)
        assert created.utcoffset() == timedelta(0), created_at
        assert created.strftime(TIMESTAMP_FORMAT) == timestamp


# Greetings and message shapes.


@pytest.mark.usefixtures("local_time_not_utc")
async def test_greeting_then_broadcast_shapes(chat: Chat) -> None:
    """connectionId first, welcome second; a broadcast has the four keys, timestamp in UTC."""
    connection = await chat.connect()
    async with asyncio.timeout(GUARD):
        first, second = await connection.recv(), await connection.recv()
    assert isinstance(first, str)
    assert isinstance(second, str)
    greeting = json.loads(first)
    sender = check_id(greeting["connectionId"])
    assert "type" not in greeting  # the original's first message is untyped
    welcome = json.loads(second)
    assert welcome == {
        "type": "welcome",
        "message": chat.app.settings.welcome,
        "epoch": chat.app.queue.meta.epoch,
    }
    async with asyncio.timeout(GUARD):
        history = json.loads(str(await connection.recv()))
    assert history == {
        "type": "history",
        "channel": "general",
        "messages": [],
        "epoch": chat.app.queue.meta.epoch,
        "recovered": False,
    }

    other = await chat.join()
    before = datetime.now(UTC)
    await connection.send("hello")
    message = await other.recv()
    after = datetime.now(UTC)
    assert set(message) == {"type", "channel", "connectionId", "message", "timestamp", "seq"}
    check_broadcast(message, sender, "hello")
    check_timestamp(message["timestamp"], before, after)


async def test_every_connection_gets_a_new_id(chat: Chat) -> None:
    clients = [await chat.join() for _ in range(5)]
    assert len({client.id for client in clients}) == 5


async def test_welcome_text_comes_from_the_settings(start_chat: Any) -> None:
    chat = await start_chat(welcome="Bonjour 👋")
    client = await chat.join()
    epoch = chat.app.queue.meta.epoch
    assert client.welcome == {"type": "welcome", "message": "Bonjour 👋", "epoch": epoch}


# Broadcast.


async def test_broadcast_reaches_the_two_others_only(chat: Chat) -> None:
    a, b, c = await chat.join(), await chat.join(), await chat.join()
    await a.send("from a")
    await b.expect_broadcast(a, "from a")
    await c.expect_broadcast(a, "from a")
    # The sender got nothing back: the next thing it receives is b's message.
    await b.send("from b")
    await a.expect_broadcast(b, "from b")
    await c.expect_broadcast(b, "from b")
    await c.send("from c")
    await a.expect_broadcast(c, "from c")
    await b.expect_broadcast(c, "from c")
    assert (await chat.health())["connections"] == 3


async def test_1000_messages_arrive_in_order(start_chat: Any) -> None:
    chat = await start_chat(rate_limit=0)  # a burst far over the rate limit
    a, b, c = await chat.join(), await chat.join(), await chat.join()
    texts = [f"message {n}" for n in range(1000)]
    for text in texts:
        await a.send(text)
    for receiver in (b, c):
        for text in texts:
            await receiver.expect_broadcast(a, text)
    await b.send("done")
    await a.expect_broadcast(b, "done")
    await chat.stop()
    assert [row[2] for row in chat.rows()] == [*texts, "done"]


async def test_unicode_round_trips_exactly(chat: Chat) -> None:
    """Through the broadcast JSON and through the database."""
    a, b = await chat.join(), await chat.join()
    for text in TRICKY_TEXTS:
        await a.send(text)
    timestamps = []
    for text in TRICKY_TEXTS:
        message = await b.expect_broadcast(a, text)
        timestamps.append(message["timestamp"])
    await chat.stop()
    check_rows(chat.rows(), [(a.id, t, ts) for t, ts in zip(TRICKY_TEXTS, timestamps, strict=True)])


async def test_a_slow_client_does_not_delay_the_others(start_chat: Any) -> None:
    """A client that reads nothing fills its socket buffers; the others get every message.

    Without the rate limit, and without the slow-consumer limit that would cut it off
    (test_protection.py tests that one).
    """
    chat = await start_chat(
        rate_limit=0,
        limits=Limits(max_send_buffer=None),
        max_text_chars=2**19,
        max_text_bytes=2**20,
    )
    a, b = await chat.join(), await chat.join()
    stalled = await chat.join_raw()  # never reads from now on
    chunk = "x" * 2**18
    for n in range(100):  # 25 MiB: far more than the kernel buffers of the stalled socket
        await a.send(f"{n} {chunk}")
    for n in range(100):
        await b.expect_broadcast(a, f"{n} {chunk}")
    stalled.drop()
    check_user_left(await b.recv(), stalled.id, 2)
    check_user_left(await a.recv(), stalled.id, 2)


# Leaving.


LEAVES: dict[str, tuple[int, str] | None] = {
    # How the third client leaves -> the closeStatus and closeReason the others should see.
    "close with code and reason": (4000, "bye 👋"),
    "close 1000 without reason": (1000, ""),
    "raw close frame with code": (1001, "going"),
    "raw close frame without code": None,
    "TCP drop without close frame": None,
    "raw TCP close without close frame": None,
}


@pytest.mark.parametrize("how", list(LEAVES))
async def test_user_left_once_for_each_remaining_client(chat: Chat, how: str) -> None:
    a, b = await chat.join(), await chat.join()
    close = LEAVES[how]
    leaver: Client | RawClient
    if how.startswith("raw"):
        leaver = raw = await chat.join_raw()
        if how == "raw TCP close without close frame":
            await raw.close()
        else:
            payload = b"" if close is None else Close(*close).serialize()
            await raw.send_frame(Opcode.CLOSE, payload)
            # The server confirms with the code alone (RFC 6455 §5.5.1), then closes TCP.
            reply = await raw.recv_frame()
            assert reply is not None
            assert (reply.opcode, reply.data) == (Opcode.CLOSE, payload[:2])
            assert await raw.recv_frame() is None
            await raw.close()
    else:
        leaver = client = await chat.join()
        if close is None:
            client.connection.abort()
        else:
            await client.connection.close(*close)
            assert client.connection.close_code == close[0]  # the server confirmed it
    check_user_left(await a.recv(), leaver.id, 2, LEAVES[how])
    check_user_left(await b.recv(), leaver.id, 2, LEAVES[how])
    # Exactly once: the next message of each is a marker sent after the announcement.
    await a.send("marker a")
    await b.expect_broadcast(a, "marker a")
    await b.send("marker b")
    await a.expect_broadcast(b, "marker b")
    assert (await chat.health())["connections"] == 2


async def test_total_connections_counts_down(chat: Chat) -> None:
    a, b, c, d = [await chat.join() for _ in range(4)]
    await d.connection.close(4001, "d leaves")
    for client in (a, b, c):
        check_user_left(await client.recv(), d.id, 3, (4001, "d leaves"))
    c.connection.abort()
    for client in (a, b):
        check_user_left(await client.recv(), c.id, 2)
    await b.connection.close()
    check_user_left(await a.recv(), b.id, 1, (1000, ""))
    assert (await chat.health())["connections"] == 1
    late = await chat.join()
    await a.connection.close()
    check_user_left(await late.recv(), a.id, 1, (1000, ""))


async def test_binary_message_closes_with_1003(chat: Chat) -> None:
    a, b = await chat.join(), await chat.join()
    await a.connection.send(b"\x00\x01binary")
    with pytest.raises(rfc6455.ConnectionClosed) as raised:
        async with asyncio.timeout(GUARD):
            await a.connection.recv()
    assert raised.value.code == CloseCode.UNSUPPORTED_DATA
    assert raised.value.reason
    left = await b.recv()
    assert (left["type"], left["connectionId"], left["totalConnections"]) == ("user_left", a.id, 1)
    # Nothing was broadcast or persisted, and the server still serves.
    c = await chat.join()
    await b.send("still serving")
    await c.expect_broadcast(b, "still serving")
    await chat.stop()
    assert [row[2] for row in chat.rows()] == ["still serving"]


async def test_one_log_line_per_connect_and_disconnect(
    chat: Chat, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server")
    a, b, c = await chat.join(), await chat.join(), await chat.join()
    await a.connection.close(4002, "gone fishing")
    check_user_left(await c.recv(), a.id, 2, (4002, "gone fishing"))
    b.connection.abort()
    check_user_left(await c.recv(), b.id, 1)

    def lines(word: str, client: Client) -> list[str]:
        """The log lines of the ``server`` logger starting with ``word`` and naming ``client``."""
        messages = [r.getMessage() for r in caplog.records if r.name == "server"]
        return [m for m in messages if m.startswith(word + " ") and client.id in m]

    for client in (a, b, c):
        (connect,) = lines("connect", client)
        assert client.local_address in connect  # the server's view of the remote address
    (disconnect_a,) = lines("disconnect", a)
    assert a.local_address in disconnect_a
    assert "4002" in disconnect_a
    assert "gone fishing" in disconnect_a
    (disconnect_b,) = lines("disconnect", b)
    assert b.local_address in disconnect_b
    assert "1006" in disconnect_b
    assert lines("disconnect", c) == []


# Persistence.


@pytest.mark.usefixtures("local_time_not_utc")
async def test_the_database_holds_what_was_sent(chat: Chat) -> None:
    a, b, c = await chat.join(), await chat.join(), await chat.join()
    sent = []
    before = datetime.now(UTC)
    for n in range(5):
        for sender in (a, b):
            await sender.send(f"{n} from {sender.id[:8]}")
            message = await c.expect_broadcast(sender, f"{n} from {sender.id[:8]}")
            sent.append((sender.id, message["message"], message["timestamp"]))
    after = datetime.now(UTC)
    await chat.stop()
    rows = chat.rows()
    check_rows(rows, sent)
    for _, _, _, timestamp, created_at in rows:
        check_timestamp(timestamp, before, after)
        assert before <= datetime.fromisoformat(created_at) <= after
    assert chat.dead_letters() == []
    assert chat.app.queue.persisted == 10


async def test_locked_database_then_released_loses_nothing(start_chat: Any) -> None:
    """Locked for several retry delays: clients stay connected, broadcasts flow, then all land."""
    chat = await start_chat(retry=PATIENT)
    a, b = await chat.join(), await chat.join()
    queue = chat.app.queue
    sent = []
    with locked(chat.db_path):
        for n in range(20):
            await a.send(f"while locked {n}")
        for n in range(20):
            message = await b.expect_broadcast(a, f"while locked {n}")  # not delayed
            sent.append((a.id, message["message"], message["timestamp"]))
        # Longer than one retry delay: an attempt failed after the first delay too.
        await wait_until(lambda: queue.failed_attempts >= 2)
        await b.send("still connected")
        message = await a.expect_broadcast(b, "still connected")
        sent.append((b.id, message["message"], message["timestamp"]))
        health = await chat.health()
        assert (health["persisted"], health["queueDepth"], health["deadLettered"]) == (0, 21, 0)
        assert chat.rows() == []
        assert a.acks == b.acks == []  # nothing is acknowledged before it is committed
    await wait_until(lambda: queue.persisted == 21)
    # Then every message is acknowledged to its sender, in order.
    assert [ack["seq"] for ack in await a.wait_acks(20)] == [r[0] for r in chat.rows()[:20]]
    assert [ack["seq"] for ack in await b.wait_acks(1)] == [chat.rows()[20][0]]
    assert (await chat.health())["queueDepth"] == 0
    await a.send("after")
    message = await b.expect_broadcast(a, "after")
    sent.append((a.id, message["message"], message["timestamp"]))
    await chat.stop()
    check_rows(chat.rows(), sent)
    assert queue.dead_lettered == 0
    assert not chat.dead_letter_path.exists()


@pytest.mark.parametrize("failure", ["locked throughout", "directory at the db path"])
async def test_database_failing_past_all_retries_dead_letters(
    start_chat: Any, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    caplog.set_level(logging.INFO, logger="server")
    chat = await start_chat(retry=IMPATIENT)
    a, b = await chat.join(), await chat.join()
    queue = chat.app.queue
    db = chat.db_path
    with contextlib.ExitStack() as stack:
        if failure == "locked throughout":
            stack.enter_context(locked(db))
        else:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f"{db}{suffix}")
            db.mkdir()
        sent, seqs = [], []
        for n in range(3):
            await a.send(f"lost {n} 😀")
            message = await b.expect_broadcast(a, f"lost {n} 😀")
            sent.append((a.id, message["message"], message["timestamp"]))
            seqs.append(message["seq"])
        await wait_until(lambda: queue.dead_lettered == 3)
        # Never acknowledged: the sender is told, message by message.
        for seq in seqs:
            error = await a.recv_any()
            assert error == {
                "type": "error",
                "code": "not_persisted",
                "channel": "general",
                "seq": seq,
                "clientMsgId": None,
            }
        health = await chat.health()
        assert (health["deadLettered"], health["persisted"], health["queueDepth"]) == (3, 0, 0)
        letters = chat.dead_letters()
        assert [(d["connection_id"], d["message"], d["timestamp"]) for d in letters] == sent
        for letter in letters:
            created = datetime.fromisoformat(letter["created_at"])
            assert created.strftime(TIMESTAMP_FORMAT) == letter["timestamp"]
            assert letter["error"]
        # The server still serves, while the database is still broken.
        c = await chat.join()
        await c.send("still serving")
        await a.expect_broadcast(c, "still serving")
        await b.expect_broadcast(c, "still serving")
        await wait_until(lambda: queue.dead_lettered == 4)
        assert (await c.recv_any())["code"] == "not_persisted"
        assert a.acks == c.acks == []
        # One log line per failed attempt, and one per dead-lettered batch.
        retries = [r for r in caplog.records if r.name == "server.retry"]
        assert len(retries) == queue.failed_attempts >= 2 * 2
        assert all("attempt" in r.getMessage() for r in retries)
        dead = [r for r in caplog.records if r.getMessage().startswith("dead-lettered ")]
        assert sum(int(r.getMessage().split()[1]) for r in dead) == 4
        assert all(str(chat.dead_letter_path) in r.getMessage() for r in dead)
        if failure == "directory at the db path":
            db.rmdir()
    # Repaired: the next message is persisted and nothing more is dead-lettered.
    await a.send("repaired")
    message = await b.expect_broadcast(a, "repaired")
    await wait_until(lambda: queue.persisted == 1)
    await chat.stop()
    check_rows(chat.rows(), [(a.id, "repaired", message["timestamp"])])
    assert len(chat.dead_letters()) == 4
    assert queue.dead_lettered == 4


async def test_clean_shutdown_writes_10000_queued_messages(start_chat: Any) -> None:
    """10,000 messages wait behind a lock when the shutdown starts; all of them are written."""
    chat = await start_chat(retry=PATIENT, rate_limit=0)
    a = await chat.join()
    texts = [f"queued {n}" for n in range(10_000)]
    with locked(chat.db_path):
        for text in texts:
            await a.send(text)
        await wait_until(lambda: chat.app.queue.depth == 10_000)
        assert chat.app.queue.persisted == 0
        stopping = asyncio.create_task(chat.stop())
        # The shutdown has begun: the client is closed with 1001 and a reason.
        with pytest.raises(rfc6455.ConnectionClosed) as raised:
            async with asyncio.timeout(GUARD):
                await a.connection.recv()
        assert raised.value.code == CloseCode.GOING_AWAY
        assert raised.value.reason
        assert not stopping.done()
    async with asyncio.timeout(GUARD * 2):
        await stopping
    rows = chat.rows()
    assert [row[2] for row in rows] == texts
    assert {row[1] for row in rows} == {a.id}
    assert chat.app.queue.persisted == 10_000
    assert chat.app.queue.dead_lettered == 0
    assert not chat.dead_letter_path.exists()


# The echo endpoint.

SIZES = [0, 1, 125, 126, 65535, 65536, 2**20]


def text_of(size: int) -> str:
    """Text of exactly ``size`` UTF-8 bytes, with multi-byte characters."""
    pattern = "echo ✓ 😀 é "
    data = (pattern * (size // len(pattern.encode()) + 1)).encode()[:size]
    text = data.decode(errors="ignore")
    return text + "x" * (size - len(text.encode()))


def bytes_of(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


@pytest.mark.parametrize("size", SIZES)
async def test_echo_echoes_text_and_binary(chat: Chat, size: int) -> None:
    echo = await chat.connect("/echo")
    text, data = text_of(size), bytes_of(size)
    assert len(text.encode()) == size
    await echo.send(text)
    await echo.send(data)
    async with asyncio.timeout(GUARD):
        assert await echo.recv() == text
        assert await echo.recv() == data


async def test_echo_neither_broadcasts_nor_persists(chat: Chat) -> None:
    a, b = await chat.join(), await chat.join()
    echo = await chat.connect("/echo")
    for message in ("echo 1", b"echo 2", "echo 3"):
        await echo.send(message)
        async with asyncio.timeout(GUARD):
            assert await echo.recv() == message
    assert (await chat.health())["connections"] == 2
    await a.send("marker")
    await b.expect_broadcast(a, "marker")
    await echo.close()
    await b.send("marker 2")  # and the echo client's departure was not announced
    await a.expect_broadcast(b, "marker 2")
    await chat.stop()
    assert [row[2] for row in chat.rows()] == ["marker", "marker 2"]


async def test_stop_closes_every_client_with_1001(chat: Chat) -> None:
    a, b = await chat.join(), await chat.join()
    echo = await chat.connect("/echo")
    await chat.stop()
    for connection in (a.connection, b.connection, echo):
        with pytest.raises(rfc6455.ConnectionClosed) as raised:
            async with asyncio.timeout(GUARD):
                await connection.recv()
        assert raised.value.code == CloseCode.GOING_AWAY
        assert raised.value.reason == "server shutting down"
    assert chat.app.server is not None
    assert chat.app.server.sockets == ()  # no longer listening
