"""Issue 7's traffic rules over real sockets: rate limits, backpressure, timeouts.

The slow-consumer rule, which needs the server's own memory measured, is in
``test_slow_consumer.py``; the mixed abuse run is in ``test_abuse.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from typing import Any

import pytest

from rfc6455 import Limits, State
from rfc6455.frames import Opcode
from server.retry import RetryPolicy
from tests.server.support import (
    GUARD,
    HOST,
    Json,
    RawClient,
    check_user_left,
    locked,
    wait_until,
)

# Keeps retrying while a test holds the database lock, so that nothing is dead-lettered.
PATIENT = RetryPolicy(attempts=1000, base_delay=0.01, max_delay=0.02)


def check_rate_limited(message: Json, at_most_ms: int, client_msg_id: str | None = None) -> int:
    """Assert ``message`` is the rate_limited error, exactly; return its retryAfterMs."""
    assert set(message) == {"type", "code", "retryAfterMs", "clientMsgId"}, message
    assert (message["type"], message["code"]) == ("error", "rate_limited")
    assert message["clientMsgId"] == client_msg_id
    wait = message["retryAfterMs"]
    assert isinstance(wait, int)
    assert 0 < wait <= at_most_ms
    return wait


async def read_close(raw: RawClient) -> tuple[int, str]:
    """Read frames up to the server's close frame; return its code and reason."""
    while True:
        frame = await raw.recv_frame()
        assert frame is not None, "EOF without a close frame"
        if frame.opcode is Opcode.CLOSE:
            return int.from_bytes(frame.data[:2], "big"), frame.data[2:].decode()


# Rate limits (server/ratelimit.py): per chat connection, /echo exempt.


async def test_over_the_message_rate_is_refused_then_disconnected(start_chat: Any) -> None:
    # 0.5 message a second: no token comes back while the test runs.
    chat = await start_chat(rate_limit=0.5, rate_burst=3)
    a, b = await chat.join(), await chat.join()
    for n in range(3):  # the burst
        await a.send(f"burst {n}")
    seqs = [(await b.expect_broadcast(a, f"burst {n}"))["seq"] for n in range(3)]
    await a.wait_acks(3)
    await a.send("over")
    check_rate_limited(await a.recv(), at_most_ms=2000)
    await a.send("over again")
    check_rate_limited(await a.recv(), at_most_ms=2000)
    # The third refusal within 10 s: the error, then 1008 "rate limit".
    await a.send("and again")
    check_rate_limited(await a.recv(), at_most_ms=2000)
    await a.connection.wait_closed()
    assert (a.connection.close_code, a.connection.close_reason) == (1008, "rate limit")
    # b saw the burst and a leaving, nothing else; the refused messages got no seq.
    check_user_left(await b.recv(), a.id, 1)
    assert [row[0] for row in chat.rows()] == seqs
    assert [row[2] for row in chat.rows()] == ["burst 0", "burst 1", "burst 2"]
    await b.send("after")
    await b.wait_acks(1)
    assert chat.rows()[-1][0] == seqs[-1] + 1


async def test_a_refused_message_is_not_broadcast_and_the_client_stays(start_chat: Any) -> None:
    chat = await start_chat(rate_limit=0.5, rate_burst=1)
    a, b = await chat.join(), await chat.join()
    await a.send("one")
    await b.expect_broadcast(a, "one")
    await a.send("two")
    wait = check_rate_limited(await a.recv(), at_most_ms=2000)
    assert wait > 1000  # the bucket is empty: 1 message at 0.5 a second
    await b.send("from b")  # b's own bucket is untouched
    await a.expect_broadcast(b, "from b")
    assert a.connection.state is State.OPEN
    await wait_until(lambda: chat.app.queue.depth == 0)
    assert [row[2] for row in chat.rows()] == ["one", "from b"]


async def test_over_the_byte_rate_is_refused(start_chat: Any) -> None:
    chat = await start_chat(rate_limit=100, rate_burst=100, byte_rate=100, byte_burst=1000)
    a, b = await chat.join(), await chat.join()
    await a.send("é" * 300)  # 600 bytes of UTF-8, 300 characters
    await b.expect_broadcast(a, "é" * 300)
    await a.send("x" * 600)  # 400 bytes left: 200 missing at 100 a second
    wait = check_rate_limited(await a.recv(), at_most_ms=2000)
    assert wait > 1500
    await a.send("x" * 300)  # fits in what is left
    await b.expect_broadcast(a, "x" * 300)


async def test_rate_limit_0_turns_it_off(start_chat: Any) -> None:
    chat = await start_chat(rate_limit=0, rate_burst=1, byte_rate=1, byte_burst=1)
    a, b = await chat.join(), await chat.join()
    for n in range(200):
        await a.send(f"{n} " + "x" * 100)
    for n in range(200):
        await b.expect_broadcast(a, f"{n} " + "x" * 100)
    assert len(await a.wait_acks(200)) == 200


async def test_echo_is_exempt_from_rate_limits(start_chat: Any) -> None:
    chat = await start_chat(rate_limit=0.5, rate_burst=1, byte_rate=1, byte_burst=1)
    echo = await chat.connect("/echo")
    for n in range(100):
        await echo.send(f"{n} " + "y" * 1000)
    for n in range(100):
        async with asyncio.timeout(GUARD):
            assert await echo.recv() == f"{n} " + "y" * 1000
    assert echo.state is State.OPEN


# Producer backpressure: a full persistence queue stops the server reading.


async def test_full_queue_stops_reading_and_drops_nothing(start_chat: Any) -> None:
    capacity = 5
    chat = await start_chat(queue_capacity=capacity, retry=PATIENT, rate_limit=0)
    b = await chat.join()
    sender = await chat.join_raw()
    # A small send buffer: the sender notices sooner that the server has stopped reading.
    sender.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2**15)
    texts: list[str] = []
    cap = 2**26  # 64 MiB: far more than the kernel buffers of one loopback connection
    blocked = False
    with locked(chat.db_path):
        while len(texts) * 8200 < cap:
            text = f"{len(texts)} " + "z" * 8192
            texts.append(text)
            try:
                await asyncio.wait_for(sender.send_frame(Opcode.TEXT, text.encode()), 0.5)
            except TimeoutError:
                blocked = True  # the frame is written; TCP does not take more
                break
        assert blocked, "the server kept reading while its queue was full"
        # Memory is bounded: the queue is full, plus the batch the writer keeps retrying.
        assert capacity <= chat.app.queue.depth <= 2 * capacity
        assert len(chat.rows()) == 0
    # The lock is gone: every message is persisted and broadcast, in order.
    seqs = [(await b.expect_broadcast(sender, text))["seq"] for text in texts]
    assert seqs == list(range(seqs[0], seqs[0] + len(texts)))
    await wait_until(lambda: chat.app.queue.depth == 0)
    assert [row[2] for row in chat.rows()] == texts
    sender.drop()  # it reads nothing, not even the server's close frame


# Timeouts: the opening handshake (slowloris) and keepalive.


async def slowloris(port: int, count: int, stop: asyncio.Event) -> list[bytes | None]:
    """Open ``count`` connections that send one byte of a request head a second.

    Returns what each read until the server dropped it (b"": EOF; None: reset).
    """
    streams = [await asyncio.open_connection(HOST, port) for _ in range(count)]
    head = f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\n".encode()

    async def dribble() -> None:
        for byte in head:
            for _, writer in streams:
                if not writer.is_closing():
                    with contextlib.suppress(ConnectionError):
                        writer.write(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if stop.is_set():
                return

    async def dropped(reader: asyncio.StreamReader) -> bytes | None:
        try:
            return await reader.read()
        except ConnectionResetError:
            return None

    dribbling = asyncio.create_task(dribble())
    try:
        async with asyncio.timeout(GUARD):
            return await asyncio.gather(*(dropped(reader) for reader, _ in streams))
    finally:
        stop.set()
        await dribbling
        for _, writer in streams:
            writer.close()


@pytest.fixture
def file_descriptors() -> None:
    """Raise the soft limit on open files if 500 sockets on each side would not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1500
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@pytest.mark.usefixtures("file_descriptors")
async def test_slowloris_does_not_stop_a_real_client_and_is_dropped(start_chat: Any) -> None:
    # All from one address: the cap of handshakes per address is off here (see the next test).
    chat = await start_chat(limits=Limits(open_timeout=2.0, max_handshakes_per_address=None))
    stop = asyncio.Event()
    attack = asyncio.create_task(slowloris(chat.port, 500, stop))
    # Once all 500 are connected, a real client connects and chats.
    await wait_until(lambda: len(chat.app.server._handshakes) >= 500)  # type: ignore[union-attr]
    a, b = await chat.join(), await chat.join()
    await a.send("through the crowd")
    await b.expect_broadcast(a, "through the crowd")
    assert not attack.done()
    # After the open timeout every one of them is dropped without an answer.
    results = await attack
    assert all(result in (b"", None) for result in results)
    assert len(chat.app.server._handshakes) == 0  # type: ignore[union-attr]
    await a.send("still here")
    await b.expect_broadcast(a, "still here")


async def test_no_pong_closes_with_1011_and_announces_the_leave(start_chat: Any) -> None:
    chat = await start_chat(limits=Limits(ping_interval=0.2, ping_timeout=0.2))
    b = await chat.join()  # the rfc6455 client answers pings by itself
    silent = await chat.join_raw()  # reads frames, never answers a ping
    assert await read_close(silent) == (1011, "keepalive ping timeout")
    # It closes TCP on the close frame (a peer that is gone for good is dropped after
    # close_timeout) and is announced as left, once.
    await silent.close()
    check_user_left(await b.recv(), silent.id, 1)
    assert b.connection.state is State.OPEN
    await b.send("alone")
    await b.wait_acks(1)
