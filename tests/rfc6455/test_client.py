"""Tests for rfc6455.aio.client: connect() against rfc6455 servers and raw fake servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import rfc6455
from rfc6455 import Connection, ConnectionClosedOK, InvalidResponse, Request, Response, State
from rfc6455.aio import client as client_module
from rfc6455.frames import Opcode
from rfc6455.handshake import accept_key, reject
from tests.rfc6455.conftest import (
    GUARD,
    HOST,
    Net,
    RawFrame,
    Tls,
    close_payload,
    mask_payload,
)

pytestmark = pytest.mark.usefixtures("loop_errors")

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


async def read_request(reader: Reader) -> dict[str, str]:
    """Read a request head; return its header fields, names lowercased."""
    head = await reader.readuntil(b"\r\n\r\n")
    _, *lines = head[:-4].decode().split("\r\n")
    return {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }


def switching_protocols(accept: str, *extra: str) -> bytes:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def accept_upgrade(reader: Reader, writer: Writer, *extra: str) -> None:
    """Answer the client's upgrade request correctly."""
    headers = await read_request(reader)
    writer.write(switching_protocols(accept_key(headers["sec-websocket-key"]), *extra))
    await writer.drain()


async def read_client_frame(reader: Reader) -> tuple[RawFrame, bytes]:
    """Read one client frame; return it unmasked, with its masking key."""
    async with asyncio.timeout(GUARD):
        first, second = await reader.readexactly(2)
        assert second & 0x80, "a client frame must be masked (RFC 6455 §5.1)"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        key = await reader.readexactly(4)
        payload = mask_payload(await reader.readexactly(length), key)
    return RawFrame(bool(first & 0x80), first & 0x0F, payload), key


async def test_round_trip(net: Net) -> None:
    server = await net.serve()
    client = await net.connect(server, "/echo?x=1", headers=[("X-A", "1"), ("X-A", "2")])
    assert client.state is State.OPEN
    assert client.request is not None
    assert client.request.target == "/echo?x=1"
    assert client.request.headers.get_all("X-A") == ["1", "2"]
    await client.send("text")
    assert await client.recv() == "text"
    await client.send(b"binary")
    assert await client.recv() == b"binary"
    await client.close()
    assert client.close_code == 1000


async def test_headers_from_a_mapping(net: Net) -> None:
    seen: list[Request] = []

    def hook(request: Request) -> None:
        seen.append(request)

    server = await net.serve(process_request=hook)
    await net.connect(server, headers={"Authorization": "Bearer t"})
    assert seen[0].headers.get("Authorization") == "Bearer t"


async def test_refused_upgrade_raises_invalid_response(net: Net) -> None:
    def hook(request: Request) -> Response:
        return reject(403, "forbidden")

    server = await net.serve(process_request=hook)
    with pytest.raises(InvalidResponse, match="403"):
        await net.connect(server)


async def test_wrong_accept_raises_invalid_response(net: Net) -> None:
    async def fake(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(switching_protocols(accept_key("AAAAAAAAAAAAAAAAAAAAAA==")))
        await writer.drain()
        await reader.read()

    server = await net.plain_server(fake)
    with pytest.raises(InvalidResponse, match="Sec-WebSocket-Accept"):
        await net.connect(server)


@pytest.mark.parametrize(
    ("extra", "options"),
    [
        ("Sec-WebSocket-Protocol: not-offered", {}),
        ("Sec-WebSocket-Extensions: permessage-deflate", {"compression": None}),
        ("Sec-WebSocket-Extensions: x-other", {}),
        ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=16", {}),
        ("Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover", {}),
    ],
    ids=["unoffered_subprotocol", "unoffered_extension", "other", "bad_bits", "context"],
)
async def test_unrequested_negotiation_raises_invalid_response(
    net: Net, extra: str, options: dict[str, Any]
) -> None:
    # RFC 7692 §5.1: a client MUST fail the connection on an answer that breaks the rules.
    async def fake(reader: Reader, writer: Writer) -> None:
        await accept_upgrade(reader, writer, extra)
        await reader.read()

    server = await net.plain_server(fake)
    with pytest.raises(InvalidResponse):
        await net.connect(server, **options)


async def test_client_offers_and_uses_compression(net: Net) -> None:
    seen: list[Request] = []

    def hook(request: Request) -> None:
        seen.append(request)

    server = await net.serve(process_request=hook)
    client = await net.connect(server)
    assert seen[0].headers.get("Sec-WebSocket-Extensions") == (
        "permessage-deflate; client_max_window_bits; "
        "server_no_context_takeover; client_no_context_takeover"
    )
    assert client.protocol.deflate is not None
    await client.send("compressed " * 100)
    assert await client.recv() == "compressed " * 100


async def test_server_closing_before_the_response(net: Net) -> None:
    async def fake(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 101 Switching")  # then closes mid-line

    server = await net.plain_server(fake)
    with pytest.raises(InvalidResponse, match="closed before"):
        await net.connect(server)


async def test_malformed_response(net: Net) -> None:
    async def fake(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await reader.read()

    server = await net.plain_server(fake)
    with pytest.raises(InvalidResponse):
        await net.connect(server)


async def test_no_response_within_open_timeout(net: Net) -> None:
    async def fake(reader: Reader, writer: Writer) -> None:
        await reader.read()  # never answers

    server = await net.plain_server(fake)
    with pytest.raises(TimeoutError):
        await net.connect(server, open_timeout=0.2)


async def test_connect_to_a_closed_port_raises_oserror(net: Net) -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        await net.connect(port)


async def test_invalid_uri_raises_value_error() -> None:
    with pytest.raises(ValueError, match="ws://"):
        await rfc6455.connect(f"http://{HOST}:1/")


async def test_wss_to_a_plain_server_fails_the_tls_handshake(net: Net) -> None:
    server = await net.serve()
    with pytest.raises(ssl.SSLError):
        await rfc6455.connect(f"wss://{HOST}:{server.port}/")


async def test_wss_round_trip(net: Net, tls: Tls) -> None:
    server = await net.serve(ssl=tls.server)
    client = await rfc6455.connect(f"wss://{HOST}:{server.port}/secure", ssl=tls.client)
    net.clients.append(client)
    await client.send("over TLS")
    assert await client.recv() == "over TLS"
    await client.send(b"\x00" * 100_000)
    assert await client.recv() == b"\x00" * 100_000
    # TLS cannot half-close: both sides close the transport instead (§7.1.1).
    await client.close()
    assert client.close_code == 1000


async def test_wss_server_initiated_close(net: Net, tls: Tls) -> None:
    async def handler(ws: Connection) -> None:
        await ws.send("bye")

    server = await net.serve(handler, ssl=tls.server)
    client = await rfc6455.connect(f"wss://{HOST}:{server.port}/", ssl=tls.client)
    net.clients.append(client)
    assert [message async for message in client] == ["bye"]
    assert client.close_code == 1000


async def test_frames_sent_with_the_response_are_received(net: Net) -> None:
    async def fake(reader: Reader, writer: Writer) -> None:
        headers = await read_request(reader)
        # The 101 and the first frame in one segment (RFC 6455 §5.7 "Hello").
        writer.write(
            switching_protocols(accept_key(headers["sec-websocket-key"])) + b"\x81\x05Hello"
        )
        await reader.read()

    server = await net.plain_server(fake)
    client = await net.connect(server, close_timeout=0.2)
    assert await client.recv() == "Hello"


async def test_client_frames_are_masked_with_fresh_keys(net: Net) -> None:
    frames: asyncio.Queue[tuple[RawFrame, bytes]] = asyncio.Queue()

    async def fake(reader: Reader, writer: Writer) -> None:
        await accept_upgrade(reader, writer)
        for _ in range(3):
            frames.put_nowait(await read_client_frame(reader))
        await reader.read()

    server = await net.plain_server(fake)
    client = await net.connect(server, close_timeout=0.2)
    for _ in range(3):
        await client.send("same payload")
    received = [await frames.get() for _ in range(3)]
    assert [frame.payload for frame, _ in received] == [b"same payload"] * 3
    keys = {key for _, key in received}
    assert len(keys) == 3


async def test_masked_server_frame_fails_with_1002(net: Net) -> None:
    closes: asyncio.Queue[RawFrame] = asyncio.Queue()

    async def fake(reader: Reader, writer: Writer) -> None:
        await accept_upgrade(reader, writer)
        writer.write(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58")  # masked "Hello"
        frame, _ = await read_client_frame(reader)
        closes.put_nowait(frame)
        writer.write(b"\x88\x02\x03\xea")  # answer the close, then close TCP

    server = await net.plain_server(fake)
    client = await net.connect(server)
    await client.wait_closed()
    frame = await closes.get()
    assert (frame.opcode, frame.close_code) == (Opcode.CLOSE, 1002)


async def test_close_code_1005_from_an_empty_close_frame(net: Net) -> None:
    async def fake(reader: Reader, writer: Writer) -> None:
        await accept_upgrade(reader, writer)
        writer.write(b"\x88\x00")
        frame, _ = await read_client_frame(reader)
        assert (frame.opcode, frame.payload) == (Opcode.CLOSE, b"")  # echoed empty

    server = await net.plain_server(fake)
    client = await net.connect(server)
    await client.wait_closed()
    assert (client.close_code, client.close_reason) == (1005, "")
    with pytest.raises(ConnectionClosedOK) as info:
        await client.recv()
    assert info.value.code == 1005


async def test_client_waits_for_the_server_to_close_tcp(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 6455 §7.1.1: the client does not close TCP after the close exchange."""
    caplog.set_level(logging.DEBUG, logger="rfc6455")
    ended: asyncio.Queue[bytes] = asyncio.Queue()

    async def fake(reader: Reader, writer: Writer) -> None:
        await accept_upgrade(reader, writer)
        frame, _ = await read_client_frame(reader)
        assert frame.close_code == 1000
        writer.write(b"\x88\x02\x03\xe8")  # the close answer, but no EOF
        try:
            ended.put_nowait(await reader.read())
        except ConnectionResetError:
            ended.put_nowait(b"reset")

    server = await net.plain_server(fake)
    client = await net.connect(server, close_timeout=0.2)
    async with asyncio.timeout(GUARD):
        await client.close()
    # The client sent no EOF of its own: it waited, then dropped TCP on the timer.
    assert "closing handshake timed out, dropping the connection" in caplog.messages
    assert await ended.get() in (b"", b"reset")
    assert client.close_code == 1000


async def test_client_closes_once_the_server_closed_tcp(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rfc6455")
    client_eof: asyncio.Queue[bytes] = asyncio.Queue()

    async def fake(reader: Reader, writer: Writer) -> None:
        await accept_upgrade(reader, writer)
        frame, _ = await read_client_frame(reader)
        assert frame.opcode == Opcode.CLOSE
        writer.write(b"\x88\x02\x03\xe8")
        writer.write_eof()  # the server closes TCP first...
        client_eof.put_nowait(await reader.read())  # ... and the client follows

    server = await net.plain_server(fake)
    client = await net.connect(server)  # the default close_timeout is 10 s
    async with asyncio.timeout(GUARD):
        await client.close()
    assert await client_eof.get() == b""
    assert "closing handshake timed out, dropping the connection" not in caplog.messages


async def test_server_that_never_answers_the_close(net: Net) -> None:
    async def fake(reader: Reader, writer: Writer) -> None:
        await accept_upgrade(reader, writer)
        with contextlib.suppress(ConnectionResetError):
            await reader.read()

    server = await net.plain_server(fake)
    client = await net.connect(server, close_timeout=0.2)
    async with asyncio.timeout(GUARD):
        await client.close(1000)
    assert client.close_code == 1006


async def test_server_closing_the_connection(net: Net) -> None:
    async def fake(reader: Reader, writer: Writer) -> None:
        await accept_upgrade(reader, writer)
        writer.write(b"\x88\x06" + close_payload(1001, "bye!"))
        frame, _ = await read_client_frame(reader)
        assert frame.payload == close_payload(1001)

    server = await net.plain_server(fake)
    client = await net.connect(server)
    with pytest.raises(ConnectionClosedOK) as info:
        await client.recv()
    assert (info.value.code, info.value.reason) == (1001, "bye!")


# Refusals: the response, with the start of its body


async def test_refusal_carries_the_response_and_its_body(net: Net) -> None:
    challenge = 'Bearer realm="chat", error="invalid_token", error_description="expired"'

    def hook(request: Request) -> Response:
        if request.path == "/401":
            return reject(401, "the token has expired", [("WWW-Authenticate", challenge)])
        return reject(403, "no token")

    server = await net.serve(process_request=hook)
    with pytest.raises(InvalidResponse) as unauthorized:
        await net.connect(server, "/401")
    # The message is as it was; the response comes with it.
    assert str(unauthorized.value) == "server refused the WebSocket upgrade: 401 Unauthorized"
    response = unauthorized.value.response
    assert response is not None
    assert (response.status, response.reason) == (401, "Unauthorized")
    assert response.headers.get("WWW-Authenticate") == challenge
    assert response.body == b"the token has expired\n"
    with pytest.raises(InvalidResponse) as forbidden:
        await net.connect(server, "/")
    assert forbidden.value.response is not None
    assert forbidden.value.response.body == b"no token\n"


async def refused_by(net: Net, *reply: bytes, then_close: bool = False) -> InvalidResponse:
    """Connect to a fake server that sends ``reply``, then holds the connection or closes it.

    The parts of ``reply`` are sent a moment apart, to arrive in several reads.
    No ``open_timeout``: only the end of what is read can end the handshake,
    and the hang guard fails a client that waits for more.
    """

    async def fake(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        for part in reply:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)
        if not then_close:
            with contextlib.suppress(ConnectionError):
                await reader.read()

    return await refusal_of(net, fake)


async def refusal_of(
    net: Net, fake: Callable[[Reader, Writer], Awaitable[None]]
) -> InvalidResponse:
    """What connecting to the fake server ``fake`` raises: a refusal that has its response."""
    server = await net.plain_server(fake)
    with pytest.raises(InvalidResponse) as info:
        async with asyncio.timeout(GUARD):
            await net.connect(server, open_timeout=None)
    assert info.value.response is not None
    return info.value


@pytest.mark.parametrize(
    ("reply", "body"),
    [
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nno token\n", b"no token\n"),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno token\n", b"no"),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", b""),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        # Not decoded, so not waited for.
        (b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nno!\r\n", b""),
    ],
    ids=["content_length", "shorter_content_length", "empty", "204", "chunked"],
)
async def test_refusal_body_up_to_its_length(net: Net, reply: bytes, body: bytes) -> None:
    """The server keeps the connection open: the client stops reading where the body ends."""
    error = await refused_by(net, reply)
    assert error.response is not None
    assert error.response.body == body


async def test_refusal_body_up_to_the_end_of_the_connection(net: Net) -> None:
    head = b"HTTP/1.0 404 Not Found\r\n\r\n"
    error = await refused_by(net, head, b"no such room\n", b"second line", then_close=True)
    assert str(error) == "server refused the WebSocket upgrade: 404 Not Found"
    assert error.response is not None
    assert error.response.body == b"no such room\nsecond line"


@pytest.mark.parametrize("length", ["Content-Length: 100000000\r\n", ""], ids=["huge", "endless"])
async def test_refusal_body_is_bounded(net: Net, length: str) -> None:
    """A server that sends a body without end: the client keeps 4 KiB and stops reading."""

    async def fake(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(f"HTTP/1.1 403 Forbidden\r\n{length}\r\n".encode())
        with contextlib.suppress(ConnectionError):
            while True:  # until the client drops the connection
                writer.write(b"x" * 65536)
                await writer.drain()

    error = await refusal_of(net, fake)
    assert error.response is not None
    assert error.response.body == b"x" * client_module._MAX_REFUSAL_BODY


async def test_refusal_whose_body_is_late(net: Net) -> None:
    """The body never comes in full: at ``open_timeout`` the refusal is raised, not TimeoutError."""
    reply = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 100\r\n\r\nbad t"

    async def fake(reader: Reader, writer: Writer) -> None:
        await read_request(reader)
        writer.write(reply)
        with contextlib.suppress(ConnectionError):
            await reader.read()

    server = await net.plain_server(fake)
    with pytest.raises(InvalidResponse) as info:
        async with asyncio.timeout(GUARD):
            await net.connect(server, open_timeout=0.5)
    assert info.value.response is not None
    assert info.value.response.status == 401
    assert info.value.response.body == b"bad t"
