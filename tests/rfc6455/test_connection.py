"""Tests for rfc6455.aio.connection: a Connection over real loopback sockets.

Most tests pair an rfc6455 server with an rfc6455 client (``net.pair``); those
that need a misbehaving peer put a raw socket speaking literal bytes at the
client end (``net.raw_pair``).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import struct
from typing import Any

import pytest

from rfc6455 import (
    Connection,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
    State,
)
from rfc6455.frames import Close, Opcode, serialize_frame
from tests.rfc6455.conftest import (
    GUARD,
    HOST,
    MASK,
    Net,
    close_payload,
    info_lines,
    mask_payload,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("loop_errors")


# Messages


async def test_text_is_str_and_binary_is_bytes(net: Net) -> None:
    server_ws, client = await net.pair()
    await client.send("héllo ☃")
    await client.send(b"\x00\xff")
    await client.send(bytearray(b"ba"))
    await client.send(memoryview(b"mv"))
    assert await server_ws.recv() == "héllo ☃"
    assert await server_ws.recv() == b"\x00\xff"
    assert await server_ws.recv() == b"ba"
    assert await server_ws.recv() == b"mv"
    await server_ws.send("to client")
    await server_ws.send(b"\x01\x02")
    received = [await client.recv(), await client.recv()]
    assert received == ["to client", b"\x01\x02"]
    assert [type(message) for message in received] == [str, bytes]


async def test_empty_messages(net: Net) -> None:
    server_ws, client = await net.pair()
    await client.send("")
    await client.send(b"")
    assert await server_ws.recv() == ""
    assert await server_ws.recv() == b""


async def test_send_rejects_other_types(net: Net) -> None:
    _, client = await net.pair()
    with pytest.raises(TypeError, match="int"):
        await client.send(42)  # type: ignore[arg-type]


async def test_large_message_both_ways(net: Net) -> None:
    server_ws, client = await net.pair()
    payload = bytes(range(256)) * 4096  # 1 MiB: the writer drains above its limit
    await client.send(payload)
    assert await server_ws.recv() == payload
    await server_ws.send(payload)
    assert await client.recv() == payload


async def test_fragmented_outgoing_messages(net: Net) -> None:
    server_ws, client = await net.pair({"max_frame_size": 3}, max_frame_size=4)
    await client.send("fragmented ☃ text")
    assert await server_ws.recv() == "fragmented ☃ text"
    await server_ws.send(b"0123456789")
    assert await client.recv() == b"0123456789"


async def test_server_fragments_on_the_wire(net: Net) -> None:
    server_ws, raw = await net.raw_pair(max_frame_size=4)
    await server_ws.send("Hello")
    frames = [await raw.read_frame(), await raw.read_frame()]
    assert [(f.fin, f.opcode, f.payload) for f in frames] == [
        (False, Opcode.TEXT, b"Hell"),
        (True, Opcode.CONT, b"o"),
    ]


async def test_fragmented_incoming_message_with_a_ping_inside(net: Net) -> None:
    server_ws, raw = await net.raw_pair()
    await raw.send_frame(Opcode.TEXT, b"Hel", fin=False)
    await raw.send_frame(Opcode.PING, b"mid")
    await raw.send_frame(Opcode.CONT, b"", fin=False)
    await raw.send_frame(Opcode.CONT, b"lo")
    assert await server_ws.recv() == "Hello"
    pong = await raw.read_frame()
    assert (pong.opcode, pong.payload) == (Opcode.PONG, b"mid")


async def test_recv_in_two_coroutines_is_refused(net: Net) -> None:
    server_ws, client = await net.pair()
    first = asyncio.create_task(server_ws.recv())
    await asyncio.sleep(0)
    with pytest.raises(InvalidState):
        await server_ws.recv()
    await client.send("one")
    assert await first == "one"


async def test_async_for_ends_on_a_normal_close(net: Net) -> None:
    server_ws, client = await net.pair()
    messages: list[str | bytes] = ["a", b"b", "c"]
    for message in messages:
        await client.send(message)
    await client.close()
    assert [message async for message in server_ws] == ["a", b"b", "c"]


async def test_async_for_raises_on_an_error_close(net: Net) -> None:
    server_ws, client = await net.pair()
    await client.send("a")
    await client.close(4000, "app error")
    received: list[str | bytes] = []

    async def consume() -> None:
        async for message in server_ws:
            received.append(message)

    with pytest.raises(ConnectionClosedError) as info:
        await consume()
    assert received == ["a"]
    assert (info.value.code, info.value.reason) == (4000, "app error")


async def test_messages_before_the_close_are_still_received(net: Net) -> None:
    server_ws, client = await net.pair()
    await server_ws.send("one")
    await server_ws.send("two")
    await server_ws.close()
    assert client.state is State.CLOSED
    assert await client.recv() == "one"
    assert await client.recv() == "two"
    with pytest.raises(ConnectionClosedOK):
        await client.recv()


async def test_reading_pauses_when_messages_pile_up(net: Net) -> None:
    server_ws, client = await net.pair()
    messages = [f"message {i}" for i in range(50)]
    for message in messages[:20]:
        await client.send(message)
    # Reading pauses once 16 messages are queued...
    await wait_until(lambda: server_ws._reading_paused)
    assert len(server_ws._messages) >= 16
    # ... and TCP holds what comes next until recv() has taken half of them.
    for message in messages[20:]:
        await client.send(message)
    assert [await server_ws.recv() for _ in messages] == messages


async def test_close_while_reading_is_paused(net: Net) -> None:
    server_ws, client = await net.pair({"close_timeout": 3600})
    for i in range(20):
        await client.send(f"unread {i}")
    await wait_until(lambda: server_ws._reading_paused)
    # Sending a close resumes reading, so the client's answer is read and the
    # closing handshake completes, long before the close timer would fire.
    async with asyncio.timeout(GUARD):
        await server_ws.close()
    assert server_ws.state is State.CLOSED
    assert server_ws.close_code == 1000


async def test_messages_kept_while_closing_are_bounded(net: Net) -> None:
    # A peer that ignores our close frame and goes on sending: reading goes on
    # (its close frame must be read), but at most 16 of its messages are kept.
    server_ws, raw = await net.raw_pair(close_timeout=GUARD)
    closing = asyncio.create_task(server_ws.close())
    assert (await raw.read_frame()).opcode == Opcode.CLOSE
    for i in range(100):
        await raw.send_frame(Opcode.TEXT, f"ignored {i}".encode())
    await raw.send_frame(Opcode.CLOSE, close_payload(1000))
    await raw.close()
    async with asyncio.timeout(GUARD):
        await closing
    assert len(server_ws._messages) - server_ws._taken == 16


async def test_abort_while_reading_is_paused(net: Net) -> None:
    server_ws, client = await net.pair()
    for i in range(20):
        await client.send(f"unread {i}")
    await wait_until(lambda: server_ws._reading_paused)
    server_ws.abort()
    async with asyncio.timeout(GUARD):
        await server_ws.wait_closed()
    assert server_ws.close_code == 1006


async def test_recv_in_progress_when_the_connection_drops(net: Net) -> None:
    server_ws, client = await net.pair()
    receiving = asyncio.create_task(server_ws.recv())
    await asyncio.sleep(0)
    client.abort()
    with pytest.raises(ConnectionClosedError) as info:
        await receiving
    assert info.value.code == 1006


# Ping and pong (RFC 6455 §5.5.2, §5.5.3)


async def test_ping_is_completed_by_its_pong(net: Net) -> None:
    server_ws, client = await net.pair()
    waiter = await client.ping(b"client ping")
    async with asyncio.timeout(GUARD):
        latency = await waiter
    assert latency >= 0
    waiter = await server_ws.ping(b"server ping")
    async with asyncio.timeout(GUARD):
        assert await waiter >= 0


async def test_ping_with_a_random_payload(net: Net) -> None:
    server_ws, raw = await net.raw_pair()
    waiters = [await server_ws.ping() for _ in range(3)]
    pings = [await raw.read_frame() for _ in range(3)]
    assert [frame.opcode for frame in pings] == [Opcode.PING] * 3
    payloads = [frame.payload for frame in pings]
    # Four random bytes each (os.urandom): three pings, three payloads.
    assert [len(payload) for payload in payloads] == [4, 4, 4]
    assert len(set(payloads)) == 3
    for payload in payloads:
        await raw.send_frame(Opcode.PONG, payload)
    async with asyncio.timeout(GUARD):
        latencies = await asyncio.gather(*waiters)
    assert all(isinstance(latency, float) and latency >= 0 for latency in latencies)


async def test_pong_answers_the_ping_payload(net: Net) -> None:
    _, raw = await net.raw_pair()
    await raw.send_frame(Opcode.PING, b"echo me")
    frame = await raw.read_frame()
    assert (frame.fin, frame.opcode, frame.payload) == (True, Opcode.PONG, b"echo me")


async def test_later_pong_acknowledges_earlier_pings(net: Net) -> None:
    server_ws, raw = await net.raw_pair()
    one = await server_ws.ping(b"one")
    two = await server_ws.ping(b"two")
    three = await server_ws.ping(b"three")
    pings = [await raw.read_frame() for _ in range(3)]
    assert [(f.opcode, f.payload) for f in pings] == [
        (Opcode.PING, p) for p in [b"one", b"two", b"three"]
    ]
    # An unsolicited pong acknowledges nothing.
    await raw.send_frame(Opcode.PONG, b"unknown")
    await raw.send_frame(Opcode.PONG, b"two")
    async with asyncio.timeout(GUARD):
        await two
    assert one.done()
    assert not three.done()
    await raw.send_frame(Opcode.PONG, b"three")
    async with asyncio.timeout(GUARD):
        await three


async def test_ping_payload_already_waiting_is_refused(net: Net) -> None:
    server_ws, _ = await net.raw_pair()
    await server_ws.ping(b"same")
    with pytest.raises(InvalidState):
        await server_ws.ping(b"same")


async def test_ping_payload_over_125_bytes_is_refused(net: Net) -> None:
    _, client = await net.pair()
    with pytest.raises(ValueError, match="125"):
        await client.ping(b"x" * 126)


async def test_cancelled_ping_waiter(net: Net) -> None:
    server_ws, raw = await net.raw_pair()
    first = await server_ws.ping(b"first")
    first.cancel()  # the caller gave up waiting
    second = await server_ws.ping(b"second")
    await raw.read_frame()
    await raw.read_frame()
    await raw.send_frame(Opcode.PONG, b"second")
    async with asyncio.timeout(GUARD):
        await second
    assert first.cancelled()
    assert server_ws._pings == {}


async def test_cancelled_ping_waiter_when_the_connection_drops(net: Net) -> None:
    server_ws, raw = await net.raw_pair()
    waiter = await server_ws.ping(b"given up")
    waiter.cancel()
    raw.writer.transport.abort()
    await server_ws.wait_closed()
    assert waiter.cancelled()


async def test_pending_ping_fails_when_the_connection_drops(net: Net) -> None:
    server_ws, raw = await net.raw_pair()
    waiter = await server_ws.ping(b"never answered")
    raw.writer.transport.abort()
    with pytest.raises(ConnectionClosedError):
        async with asyncio.timeout(GUARD):
            await waiter


async def test_pending_ping_not_awaited_when_the_connection_drops(
    net: Net, loop_errors: list[dict[str, Any]]
) -> None:
    server_ws, raw = await net.raw_pair()
    waiter = await server_ws.ping(b"nobody awaits this")
    raw.writer.transport.abort()
    await server_ws.wait_closed()
    assert waiter.done()
    assert not waiter.cancelled()  # it failed with ConnectionClosed, which nobody retrieves
    del waiter
    gc.collect()  # a future whose exception nobody retrieved logs it when collected
    assert loop_errors == []


async def test_unsolicited_pong(net: Net) -> None:
    server_ws, client = await net.pair()
    await client.pong(b"heartbeat")
    await client.send("still fine")
    assert await server_ws.recv() == "still fine"


# Closing (RFC 6455 §7)


async def test_close_code_and_reason_are_what_the_peer_sent(net: Net) -> None:
    server_ws, client = await net.pair()
    assert (client.close_code, client.close_reason) == (None, None)  # still open
    await client.close(4001, "going away now")
    assert client.state is State.CLOSED
    await server_ws.wait_closed()
    assert (server_ws.close_code, server_ws.close_reason) == (4001, "going away now")
    # The server echoed the code without the reason (RFC 6455 §5.5.1).
    assert (client.close_code, client.close_reason) == (4001, "")


async def test_close_code_1005_when_the_close_frame_has_no_code(net: Net) -> None:
    server_ws, raw = await net.raw_pair()
    await raw.send_frame(Opcode.CLOSE, b"")
    reply = await raw.read_frame()
    assert (reply.opcode, reply.payload) == (Opcode.CLOSE, b"")
    assert await raw.at_eof()
    await raw.close()
    await server_ws.wait_closed()
    assert (server_ws.close_code, server_ws.close_reason) == (1005, "")
    with pytest.raises(ConnectionClosedOK) as info:
        await server_ws.recv()
    assert info.value.code == 1005


async def test_close_code_1006_when_tcp_drops(net: Net) -> None:
    server_ws, client = await net.pair()
    client.abort()
    await server_ws.wait_closed()
    assert (server_ws.close_code, server_ws.close_reason) == (1006, "")
    with pytest.raises(ConnectionClosedError) as info:
        await server_ws.recv()
    assert info.value.code == 1006
    assert info.value.rcvd is None


async def test_client_sees_1006_when_the_server_drops_tcp(net: Net) -> None:
    server_ws, client = await net.pair()
    server_ws.abort()
    await client.wait_closed()
    assert client.close_code == 1006
    with pytest.raises(ConnectionClosedError):
        await client.send("too late")


async def test_connection_reset_by_peer(net: Net, log: pytest.LogCaptureFixture) -> None:
    server_ws, raw = await net.raw_pair()
    raw.reset()
    await server_ws.wait_closed()
    assert server_ws.close_code == 1006
    assert info_lines(log) == []


async def test_recv_and_send_after_a_normal_close(net: Net) -> None:
    server_ws, client = await net.pair()
    await client.close(1000, "done")
    await server_ws.wait_closed()
    for ws, code, reason in [(server_ws, 1000, "done"), (client, 1000, "")]:
        with pytest.raises(ConnectionClosedOK) as info:
            await ws.recv()
        assert (info.value.code, info.value.reason) == (code, reason)
        with pytest.raises(ConnectionClosedOK):
            await ws.send("x")
        with pytest.raises(ConnectionClosedOK):
            await ws.ping(b"x")
        with pytest.raises(ConnectionClosedOK):
            await ws.pong(b"x")


async def test_recv_and_send_after_an_error_close(net: Net) -> None:
    server_ws, client = await net.pair()
    await server_ws.close(1011, "oops")
    await client.wait_closed()
    with pytest.raises(ConnectionClosedError) as info:
        await client.recv()
    assert (info.value.code, info.value.reason) == (1011, "oops")
    assert isinstance(info.value, ConnectionClosed)
    with pytest.raises(ConnectionClosedError):
        await client.send(b"x")
    # The server sent 1011 and got 1011 back: an error on its side too.
    with pytest.raises(ConnectionClosedError) as info:
        await server_ws.recv()
    assert info.value.code == 1011


async def test_send_while_closing_is_refused(net: Net) -> None:
    server_ws, raw = await net.raw_pair(close_timeout=GUARD)
    closing = asyncio.create_task(server_ws.close())
    assert (await raw.read_frame()).opcode == Opcode.CLOSE
    assert server_ws.state is State.CLOSING
    with pytest.raises(ConnectionClosed):
        await server_ws.send("no data after a close frame")
    await raw.send_frame(Opcode.CLOSE, close_payload(1000))
    assert await raw.at_eof()
    await raw.close()
    async with asyncio.timeout(GUARD):
        await closing


async def test_close_twice(net: Net) -> None:
    _, client = await net.pair()
    await asyncio.gather(client.close(), client.close())
    await client.close()
    assert client.close_code == 1000


async def test_close_with_an_invalid_code_is_refused(net: Net) -> None:
    _, client = await net.pair()
    with pytest.raises(ValueError, match="1005"):
        await client.close(1005)
    assert client.state is State.OPEN


async def test_server_closes_tcp_first(net: Net) -> None:
    """RFC 6455 §7.1.1: after the close exchange, the server sends EOF first."""
    server_ws, raw = await net.raw_pair()
    await raw.send_frame(Opcode.CLOSE, close_payload(1000, "bye"))
    reply = await raw.read_frame()
    assert (reply.opcode, reply.payload) == (Opcode.CLOSE, close_payload(1000))
    # The raw client has not closed its side, yet the server's EOF comes.
    assert await raw.at_eof()
    assert not server_ws._done  # the server waits for the client's EOF
    raw.writer.write_eof()
    await server_ws.wait_closed()
    assert (server_ws.close_code, server_ws.close_reason) == (1000, "bye")


async def test_server_initiated_close_ends_with_server_eof(net: Net) -> None:
    server_ws, raw = await net.raw_pair()
    closing = asyncio.create_task(server_ws.close(1001, "restart"))
    frame = await raw.read_frame()
    assert (frame.opcode, frame.payload) == (Opcode.CLOSE, close_payload(1001, "restart"))
    await raw.send_frame(Opcode.CLOSE, close_payload(1001))
    assert await raw.at_eof()
    await raw.close()
    async with asyncio.timeout(GUARD):
        await closing
    assert server_ws.close_code == 1001


async def test_peer_that_never_answers_the_close_is_dropped(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rfc6455")
    server_ws, raw = await net.raw_pair(close_timeout=0.2)
    async with asyncio.timeout(GUARD):
        await server_ws.close()
    assert server_ws.close_code == 1006
    assert "closing handshake timed out, dropping the connection" in caplog.messages
    frame = await raw.read_frame()
    assert frame.opcode == Opcode.CLOSE
    await raw.at_eof()


async def test_no_close_timeout(net: Net) -> None:
    server_ws, raw = await net.raw_pair(close_timeout=None)
    closing = asyncio.create_task(server_ws.close())
    assert (await raw.read_frame()).opcode == Opcode.CLOSE
    assert server_ws._close_timer is None
    await raw.close()
    async with asyncio.timeout(GUARD):
        await closing


async def test_async_with_closes_the_connection(net: Net) -> None:
    server_ws, client = await net.pair()
    async with client as ws:
        assert ws is client
        await ws.send("in context")
    assert client.state is State.CLOSED
    assert await server_ws.recv() == "in context"
    await server_ws.wait_closed()
    assert server_ws.close_code == 1000


async def test_fail_sends_the_code(net: Net, log: pytest.LogCaptureFixture) -> None:
    server_ws, client = await net.pair()
    server_ws.fail(4002, "policy")
    await client.wait_closed()
    assert (client.close_code, client.close_reason) == (4002, "policy")
    assert info_lines(log) == ["failing connection: 4002 policy"]
    server_ws.fail(4003, "again")  # already closing: nothing more is sent or logged
    assert info_lines(log) == ["failing connection: 4002 policy"]


async def test_send_encoded(net: Net) -> None:
    server_ws, client = await net.pair()
    server_ws.send_encoded(serialize_frame(Opcode.TEXT, b"shared"))
    assert await client.recv() == "shared"
    assert server_ws.write_buffer_size() >= 0
    await server_ws.close()
    late = serialize_frame(Opcode.TEXT, b"late")
    with pytest.raises(ConnectionClosed):
        server_ws.send_encoded(late)


async def test_send_blocked_on_drain_when_the_peer_resets(net: Net) -> None:
    server_ws, raw = await net.raw_pair()
    # The raw client reads nothing, so the kernel buffers fill and send() waits.
    sending = asyncio.create_task(server_ws.send(b"\x00" * 2**25))
    await wait_until(lambda: server_ws.write_buffer_size() > server_ws.limits.write_limit)
    assert not sending.done()
    raw.reset()
    with pytest.raises(ConnectionClosedError):
        async with asyncio.timeout(GUARD):
            await sending


async def test_a_peer_that_resets_after_its_close_frame_is_no_error(
    net: Net, log: pytest.LogCaptureFixture
) -> None:
    # A browser tab closing with unread data sends its close frame, then a reset: the
    # server's half-close (after its close frame) then fails with ENOTCONN. It was logged
    # as "internal error while receiving", with a traceback, and answered 1011.
    server_ws, raw = await net.raw_pair()
    transport = server_ws._transport
    write_eof = transport.write_eof

    def reset_first() -> None:
        raw.reset()
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    transport.write_eof = reset_first  # type: ignore[method-assign]
    try:
        await raw.send_frame(0x8, close_payload(1001, "tab closed"))
        async with asyncio.timeout(GUARD):
            await server_ws.wait_closed()
    finally:
        transport.write_eof = write_eof  # type: ignore[method-assign]
    assert server_ws.close_code == 1001
    assert server_ws.protocol.close_sent == Close(1001)
    assert [r for r in log.records if r.levelno >= logging.WARNING] == []


async def send_until_closed(server_ws: Connection, frame: bytes, most: int) -> int:
    """Send ``frame`` without waiting, a turn of the loop apart, until closed; bytes sent."""
    sent = 0
    while sent < most:
        try:
            server_ws.send_encoded(frame)
        except ConnectionClosed:
            break
        sent += len(frame)
        await asyncio.sleep(0)
    return sent


async def test_slow_consumer_is_failed_with_1008_and_dropped(
    net: Net, log: pytest.LogCaptureFixture
) -> None:
    limit = 2**18
    server_ws, _ = await net.raw_pair(max_send_buffer=limit)
    frame = serialize_frame(Opcode.BINARY, b"\x00" * 2**14)
    # The raw client reads nothing: kernel buffers, then the transport's, fill up.
    sent = await send_until_closed(server_ws, frame, most=2**27)
    assert sent < 2**27, "the slow consumer was never cut off"
    assert server_ws.protocol.close_sent == Close(1008, "slow consumer")
    # What was queued when it was cut off, plus the close frame, and no more.
    assert server_ws.write_buffer_size() <= limit + server_ws.limits.write_limit + len(frame)
    # It never reads its close frame: it is dropped after the grace, not close_timeout.
    async with asyncio.timeout(GUARD):
        await server_ws.wait_closed()
    assert server_ws.close_code == 1006
    assert any("is a slow consumer" in record.getMessage() for record in log.records)


async def test_slow_consumer_that_reads_in_time_gets_the_close_frame(net: Net) -> None:
    server_ws, raw = await net.raw_pair(max_send_buffer=2**18)
    frame = serialize_frame(Opcode.BINARY, b"\x00" * 2**14)
    await send_until_closed(server_ws, frame, most=2**27)
    while (received := await raw.read_frame()).opcode != 0x8:
        assert received.opcode == 0x2
    assert (received.close_code, received.payload[2:]) == (1008, b"slow consumer")


async def test_a_reader_of_one_large_frame_is_not_a_slow_consumer(net: Net) -> None:
    # The issue: one frame over the limit (a 6 MiB broadcast, a long history) made the
    # next frame to each reader, however it read, cut it off with 1008.
    server_ws, client = await net.pair({"max_send_buffer": 2**18}, max_size=None)
    big = b"\x01" * 2**23
    server_ws.send_encoded(serialize_frame(Opcode.BINARY, big))
    small = [serialize_frame(Opcode.TEXT, b"after %d" % n) for n in range(50)]
    received: list[object] = []

    async def read() -> None:
        while len(received) < 51:
            received.append(await client.recv())

    reading = asyncio.create_task(read())
    for frame in small:  # behind the big one, far less than the limit
        server_ws.send_encoded(frame)
        await asyncio.sleep(0.001)
    async with asyncio.timeout(GUARD):
        await reading
    assert received == [big, *(f"after {n}" for n in range(50))]
    assert server_ws.state is State.OPEN


async def test_a_flush_with_nothing_new_sheds_no_one(net: Net) -> None:
    # A pong from the peer makes the connection flush what it queued: nothing. Over the
    # limit with one big frame, that used to cut it off.
    server_ws, raw = await net.raw_pair(max_send_buffer=2**18)
    server_ws.send_encoded(serialize_frame(Opcode.BINARY, b"\x00" * 2**23))
    await wait_until(lambda: server_ws._writing_paused)
    await raw.send_frame(0xA, b"unsolicited")
    await raw.send_frame(0xA, b"again")
    await asyncio.sleep(0.05)
    assert server_ws.state is State.OPEN


async def test_what_waits_behind_the_write_in_progress_counts(net: Net) -> None:
    limit = 2**18
    server_ws, _ = await net.raw_pair(max_send_buffer=limit)
    server_ws.send_encoded(serialize_frame(Opcode.BINARY, b"\x00" * 2**23))
    frame = serialize_frame(Opcode.BINARY, b"\x00" * 2**12)
    # The raw client reads nothing: the big frame stays in progress, and only what is
    # queued behind it, over the limit, cuts the connection off.
    behind = await send_until_closed(server_ws, frame, most=2**24)
    assert limit - server_ws.limits.write_limit <= behind <= limit + 2 * len(frame)
    assert server_ws.protocol.close_sent == Close(1008, "slow consumer")


async def test_send_waits_so_a_reader_gets_messages_over_max_send_buffer(net: Net) -> None:
    server_ws, client = await net.pair({"max_send_buffer": 2**17}, max_size=None)
    big = b"\x01" * 2**20
    for _ in range(3):
        await server_ws.send(big)
    assert [await client.recv() for _ in range(3)] == [big] * 3
    assert server_ws.state is State.OPEN


async def test_max_send_buffer_none_never_cuts_off(net: Net) -> None:
    server_ws, _ = await net.raw_pair(max_send_buffer=None)
    frame = serialize_frame(Opcode.BINARY, b"\x00" * 2**14)
    # Past the default limit of 1 MiB, and past the kernel buffers.
    assert await send_until_closed(server_ws, frame, most=2**23) >= 2**23
    assert server_ws.state is State.OPEN
    assert server_ws.write_buffer_size() > 2**20


# Attributes


async def test_request_and_addresses(net: Net) -> None:
    server_ws, client = await net.pair(headers={"X-Client": "test"})
    request = server_ws.request
    assert request is not None
    assert (request.method, request.path, request.query) == ("GET", "/", "")
    assert request.headers.get("X-Client") == "test"
    assert request.remote_address == client.local_address
    assert server_ws.remote_address == client.local_address
    assert client.remote_address == server_ws.local_address
    assert client.remote_address is not None
    assert client.remote_address[0] == HOST
    assert client.request is not None
    assert client.request.headers.get("X-Client") == "test"
    assert client.response is not None
    assert client.response.status == 101
    assert server_ws.subprotocol is None
    assert client.subprotocol is None


async def test_request_path_and_query(net: Net) -> None:
    accepted: asyncio.Queue[Connection] = asyncio.Queue()

    async def handler(ws: Connection) -> None:
        accepted.put_nowait(ws)
        await ws.wait_closed()

    server = await net.serve(handler)
    await net.connect(server, "/rooms/1?user=ann&x=%20")
    server_ws = await accepted.get()
    assert server_ws.request is not None
    assert server_ws.request.path == "/rooms/1"
    assert server_ws.request.query == "user=ann&x=%20"


# max_size (RFC 6455 §7.4.1, 1009)


async def test_declared_length_over_max_size_closes_1009_before_the_payload(
    net: Net, log: pytest.LogCaptureFixture
) -> None:
    server_ws, raw = await net.raw_pair(max_size=1000)
    # Only the header of a 4 GiB binary frame: the payload never comes.
    await raw.send(b"\x82\xff" + struct.pack("!Q", 2**32) + MASK)
    assert (await raw.read_close()).close_code == 1009
    assert await raw.at_eof()
    await raw.close()
    await server_ws.wait_closed()
    lines = info_lines(log)
    assert len(lines) == 1
    assert "broke the protocol: 1009" in lines[0]


async def test_message_over_max_size_from_the_client(net: Net) -> None:
    server_ws, client = await net.pair({"max_size": 1000})
    await client.send(b"x" * 1000)  # the limit itself is fine
    assert await server_ws.recv() == b"x" * 1000
    await client.send(b"x" * 1001)
    with pytest.raises(ConnectionClosedError) as info:
        await client.recv()
    assert info.value.code == 1009


async def test_fragmented_message_over_max_size(net: Net) -> None:
    _, client = await net.pair({"max_size": 1000}, max_frame_size=300)
    await client.send("y" * 1200)
    with pytest.raises(ConnectionClosedError) as info:
        await client.recv()
    assert info.value.code == 1009


async def test_message_over_max_size_from_the_server(net: Net) -> None:
    server_ws, client = await net.pair(max_size=100)
    await server_ws.send("z" * 101)
    with pytest.raises(ConnectionClosedError) as info:
        await client.recv()
    assert info.value.sent is not None
    assert info.value.sent.code == 1009
    await server_ws.wait_closed()
    assert server_ws.close_code == 1009


async def test_max_size_none_accepts_a_large_message(net: Net) -> None:
    server_ws, client = await net.pair({"max_size": None})
    payload = b"\xab" * (3 * 2**20)
    await client.send(payload)
    assert await server_ws.recv() == payload


# Keepalive (ping_interval, ping_timeout)


async def test_keepalive_fails_a_peer_that_never_answers(
    net: Net, log: pytest.LogCaptureFixture
) -> None:
    server_ws, raw = await net.raw_pair(ping_interval=0.05, ping_timeout=0.1)
    ping = await raw.read_frame()
    assert ping.opcode == Opcode.PING
    close = await raw.read_close()
    assert close.close_code == 1011
    assert close.payload[2:] == b"keepalive ping timeout"
    assert await raw.at_eof()
    await raw.close()
    await server_ws.wait_closed()
    assert info_lines(log) == ["failing connection: 1011 keepalive ping timeout"]


async def test_keepalive_timeout_closes_tcp_without_waiting_for_the_peer(net: Net) -> None:
    # The peer answers neither the ping nor the close frame: TCP is closed at once,
    # not after close_timeout (an hour here).
    server_ws, raw = await net.raw_pair(ping_interval=0.05, ping_timeout=0.1, close_timeout=3600)
    async with asyncio.timeout(GUARD):
        await server_ws.wait_closed()
    assert (await raw.read_frame()).opcode == Opcode.PING
    assert (await raw.read_close()).close_code == 1011
    assert await raw.at_eof()


async def test_keepalive_keeps_a_live_connection_open(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    pongs: list[Connection] = []
    acknowledge = Connection._acknowledge_pings

    def spy(self: Connection, data: bytes) -> None:
        pongs.append(self)
        acknowledge(self, data)

    monkeypatch.setattr(Connection, "_acknowledge_pings", spy)
    server_ws, client = await net.pair(
        {"ping_interval": 0.02, "ping_timeout": 0.02}, ping_interval=0.02, ping_timeout=0.02
    )
    # Several intervals on both sides, each ping answered in time.
    await wait_until(lambda: pongs.count(server_ws) >= 4 and pongs.count(client) >= 4)
    assert server_ws.state is State.OPEN
    assert client.state is State.OPEN
    await client.send("still here")
    assert await server_ws.recv() == "still here"


async def test_keepalive_without_timeout_only_pings(net: Net) -> None:
    server_ws, raw = await net.raw_pair(ping_interval=0.02, ping_timeout=None)
    frames = [await raw.read_frame() for _ in range(3)]
    assert {frame.opcode for frame in frames} == {Opcode.PING}
    assert server_ws.state is State.OPEN


def _keepalive_stopped(connection: Connection) -> bool:
    timer = connection._keepalive_timer
    return timer is None or timer.cancelled()


async def test_keepalive_stops_when_the_connection_closes(net: Net) -> None:
    server_ws, client = await net.pair({"ping_interval": 0.02})
    await client.close()
    await wait_until(lambda: _keepalive_stopped(server_ws))


async def test_keepalive_stops_when_closing(net: Net) -> None:
    server_ws, raw = await net.raw_pair(ping_interval=0.05, close_timeout=GUARD)
    closing = asyncio.create_task(server_ws.close())
    assert (await raw.read_frame()).opcode == Opcode.CLOSE
    await wait_until(lambda: _keepalive_stopped(server_ws))  # wakes up, sees CLOSING, stops
    await raw.send_frame(Opcode.CLOSE, close_payload(1000))
    await raw.close()
    async with asyncio.timeout(GUARD):
        await closing


# Protocol errors over a socket: the close code and one log line


PROTOCOL_ERRORS: dict[str, tuple[bytes, int]] = {
    # RFC 6455 §5.1: a client frame must be masked.
    "unmasked_client_frame": (b"\x81\x05Hello", 1002),
    # RFC 6455 §8.1: text must be valid UTF-8.
    "invalid_utf8": (
        b"\x81\x82" + MASK + mask_payload(b"\xc3\x28"),
        1007,
    ),
    "reserved_opcode": (b"\x83\x80" + MASK, 1002),
    "rsv_bits": (b"\xa1\x80" + MASK, 1002),
    "ping_over_125_bytes": (b"\x89\xfe\x00\x7e" + MASK + b"\x00" * 126, 1002),
    "fragmented_ping": (b"\x09\x80" + MASK, 1002),
    "continuation_without_message": (b"\x80\x80" + MASK, 1002),
    "close_with_one_byte": (b"\x88\x81" + MASK + b"\x00", 1002),
    "message_over_max_size": (b"\x82\xff" + struct.pack("!Q", 2**40) + MASK, 1009),
}


@pytest.mark.parametrize(
    ("data", "code"), list(PROTOCOL_ERRORS.values()), ids=list(PROTOCOL_ERRORS)
)
async def test_protocol_error(
    net: Net,
    log: pytest.LogCaptureFixture,
    loop_errors: list[dict[str, Any]],
    data: bytes,
    code: int,
) -> None:
    server_ws, raw = await net.raw_pair()
    await raw.send(data)
    assert (await raw.read_close()).close_code == code
    assert await raw.at_eof()
    await raw.close()
    await server_ws.wait_closed()
    with pytest.raises(ConnectionClosedError) as info:
        await server_ws.recv()
    assert info.value.sent is not None
    assert info.value.sent.code == code
    lines = info_lines(log)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{HOST}:{raw.local_address[1]} broke the protocol: {code} ")
    assert loop_errors == []


async def test_invalid_utf8_in_the_first_fragment_fails_at_once(net: Net) -> None:
    _, raw = await net.raw_pair()
    await raw.send_frame(Opcode.TEXT, b"ok \xff", fin=False)
    # The rest of the message never comes: the first fragment is enough.
    assert (await raw.read_close()).close_code == 1007


async def test_messages_before_a_protocol_error_can_be_answered(net: Net) -> None:
    async def handler(ws: Connection) -> None:
        async for message in ws:
            await ws.send(message)

    server = await net.serve(handler)
    raw = await net.raw(server)
    await raw.handshake()
    # A valid message and an unmasked frame in one segment.
    hello = b"\x81\x85" + MASK + mask_payload(b"Hello")
    await raw.send(hello + b"\x81\x05Hello")
    echo = await raw.read_frame()
    assert (echo.opcode, echo.payload) == (Opcode.TEXT, b"Hello")
    assert (await raw.read_close()).close_code == 1002


async def test_protocol_error_after_messages_the_handler_never_reads(net: Net) -> None:
    """The failure must not wait for a recv() that never comes."""
    server_ws, raw = await net.raw_pair(ping_interval=None)
    hello = b"\x81\x85" + MASK + mask_payload(b"Hello")
    await raw.send(hello + b"\x81\x05Hello")
    assert (await raw.read_close()).close_code == 1002
    assert await raw.at_eof()
    await raw.close()
    await server_ws.wait_closed()
    # What came before the error is still delivered.
    assert await server_ws.recv() == "Hello"
    with pytest.raises(ConnectionClosedError):
        await server_ws.recv()


async def test_close_with_a_protocol_error_pending(net: Net) -> None:
    server_ws, raw = await net.raw_pair(ping_interval=None)
    hello = b"\x81\x85" + MASK + mask_payload(b"Hello")
    await raw.send(hello + b"\x81\x05Hello")
    await wait_until(lambda: server_ws._messages or server_ws.state is not State.OPEN)
    closing = asyncio.create_task(server_ws.close())
    # The close carries the protocol error's code, not 1000.
    assert (await raw.read_close()).close_code == 1002
    await raw.close()
    async with asyncio.timeout(GUARD):
        await closing


async def test_internal_error_while_receiving_closes_with_1011(
    net: Net, log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_ws, raw = await net.raw_pair()

    def broken(data: bytes) -> None:
        raise RuntimeError("bug in the protocol")

    monkeypatch.setattr(server_ws.protocol, "receive_data", broken)
    await raw.send_frame(Opcode.TEXT, b"trigger")
    close = await raw.read_close()
    assert close.close_code == 1011
    assert close.payload[2:] == b"internal error"  # no details leaked
    await raw.close()
    await server_ws.wait_closed()
    errors = [r for r in log.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["internal error while receiving"]


async def test_recv_raises_once_the_peer_close_frame_arrived(net: Net) -> None:
    # The peer sends its close frame but keeps TCP open: nothing can follow the
    # close frame (RFC 6455 §5.5.1), so recv() need not wait for close_timeout.
    server_ws, raw = await net.raw_pair(close_timeout=3600)
    await raw.send_frame(Opcode.TEXT, b"last")
    await raw.send_frame(Opcode.CLOSE, close_payload(4000, "bye"))
    async with asyncio.timeout(GUARD):
        assert await server_ws.recv() == "last"
        with pytest.raises(ConnectionClosedError) as info:
            await server_ws.recv()
    assert (info.value.code, info.value.reason) == (4000, "bye")
    assert (server_ws.close_code, server_ws.close_reason) == (4000, "bye")
    assert server_ws.state is State.CLOSING
