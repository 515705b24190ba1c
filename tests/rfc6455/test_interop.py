"""Interop over real loopback sockets with the `websockets` library, both directions.

- the rfc6455 client against a ``websockets.asyncio.server`` server;
- a ``websockets.asyncio.client`` client against an rfc6455 server;
- both with permessage-deflate (RFC 7692) negotiated, with and without
  context takeover, for every window size zlib can compress with.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)

from rfc6455 import Compression, Connection, ConnectionClosedError
from tests.rfc6455.conftest import GUARD, HOST, Net

pytestmark = pytest.mark.usefixtures("loop_errors")

SIZES = [0, 125, 126, 65535, 65536, 2**20]


def text_of(size: int) -> str:
    """A str whose UTF-8 encoding is ``size`` bytes, mostly 2-byte characters."""
    return "é" * (size // 2) + "a" * (size % 2)


def binary_of(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


def message_of(kind: str, size: int) -> str | bytes:
    message = text_of(size) if kind == "text" else binary_of(size)
    assert len(message.encode() if isinstance(message, str) else message) == size
    return message


WsHandler = Callable[[ServerConnection], Awaitable[None]]


async def ws_echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.fixture
async def ws_servers(net: Net) -> AsyncIterator[Callable[..., Awaitable[WsServer]]]:
    """Start websockets servers on loopback; close them at teardown."""
    servers: list[WsServer] = []

    async def start(handler: WsHandler = ws_echo, **kwargs: Any) -> WsServer:
        server = await ws_serve(handler, HOST, 0, **kwargs)
        servers.append(server)
        return server

    yield start
    for client in net.clients:  # close rfc6455 clients before their servers
        await client.close()
    for server in servers:
        server.close()
        async with asyncio.timeout(GUARD):
            await server.wait_closed()


@pytest.fixture
async def ws_clients() -> AsyncIterator[Callable[..., Awaitable[ClientConnection]]]:
    """Connect websockets clients; close them at teardown."""
    clients: list[ClientConnection] = []

    async def open_client(port: int, path: str = "/", **kwargs: Any) -> ClientConnection:
        kwargs.setdefault("proxy", None)
        client = await ws_connect(f"ws://{HOST}:{port}{path}", **kwargs)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        async with asyncio.timeout(GUARD):
            await client.close()


def port_of(server: WsServer) -> int:
    return int(next(iter(server.sockets)).getsockname()[1])


# The rfc6455 client against a websockets server


@pytest.mark.parametrize("kind", ["text", "binary"])
@pytest.mark.parametrize("size", SIZES)
async def test_client_echo_with_websockets_server(
    net: Net, ws_servers: Any, kind: str, size: int
) -> None:
    server = await ws_servers()
    client = await net.connect(port_of(server))
    message = message_of(kind, size)
    await client.send(message)
    async with asyncio.timeout(GUARD):
        assert await client.recv() == message


async def test_client_fragments_to_websockets_server(net: Net, ws_servers: Any) -> None:
    received: asyncio.Queue[str | bytes] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        received.put_nowait(await ws.recv())
        # websockets sends an iterable as the fragments of one message.
        await ws.send(["frag", "mented ", "rép", "ly"])
        await ws.wait_closed()

    server = await ws_servers(handler)
    client = await net.connect(port_of(server), max_frame_size=1000)
    message = text_of(10_001)
    await client.send(message)  # 11 frames of at most 1000 bytes
    async with asyncio.timeout(GUARD):
        assert await received.get() == message
        assert await client.recv() == "fragmented réply"


async def test_client_ping_pong_with_websockets_server(net: Net, ws_servers: Any) -> None:
    async def handler(ws: ServerConnection) -> None:
        pong_waiter = await ws.ping(b"from websockets")
        await pong_waiter
        await ws.send("pong received")
        await ws.wait_closed()

    server = await ws_servers(handler)
    client = await net.connect(port_of(server))
    async with asyncio.timeout(GUARD):
        assert await client.recv() == "pong received"
        waiter = await client.ping(b"from rfc6455")
        assert await waiter >= 0


async def test_client_closes_websockets_server(net: Net, ws_servers: Any) -> None:
    closed: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()
        closed.put_nowait((ws.close_code, ws.close_reason))

    server = await ws_servers(handler)
    client = await net.connect(port_of(server))
    async with asyncio.timeout(GUARD):
        await client.close(4000, "client bye")
        assert await closed.get() == (4000, "client bye")
    assert client.close_code == 4000


async def test_websockets_server_closes_client(net: Net, ws_servers: Any) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(4001, "server bye")

    server = await ws_servers(handler)
    client = await net.connect(port_of(server))
    with pytest.raises(ConnectionClosedError) as info:
        async with asyncio.timeout(GUARD):
            await client.recv()
    assert (info.value.code, info.value.reason) == (4001, "server bye")
    assert (client.close_code, client.close_reason) == (4001, "server bye")


async def test_websockets_server_normal_close(net: Net, ws_servers: Any) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("only message")

    server = await ws_servers(handler)
    client = await net.connect(port_of(server))
    async with asyncio.timeout(GUARD):
        assert [message async for message in client] == ["only message"]
    assert client.close_code == 1000


async def test_client_subprotocol_with_websockets_server(net: Net, ws_servers: Any) -> None:
    server = await ws_servers(subprotocols=["chat.v2", "chat.v1"])
    client = await net.connect(port_of(server), subprotocols=["chat.v1"])
    assert client.subprotocol == "chat.v1"


# A websockets client against an rfc6455 server


async def rfc_echo(ws: Connection) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.mark.parametrize("kind", ["text", "binary"])
@pytest.mark.parametrize("size", SIZES)
async def test_websockets_client_echo_with_server(
    net: Net, ws_clients: Any, kind: str, size: int
) -> None:
    server = await net.serve(rfc_echo)
    client = await ws_clients(server.port)
    message = message_of(kind, size)
    await client.send(message)
    async with asyncio.timeout(GUARD):
        assert await client.recv() == message


async def test_websockets_client_fragments_to_server(net: Net, ws_clients: Any) -> None:
    server = await net.serve(rfc_echo, max_frame_size=3)
    client = await ws_clients(server.port)
    await client.send(["frag", "", "ments ", "☃"])  # a zero-length fragment too
    async with asyncio.timeout(GUARD):
        # The server reassembled it, then sent it back in 3-byte frames.
        assert await client.recv() == "fragments ☃"
    await client.send([b"\x00" * 5, b"\x01" * 5])
    async with asyncio.timeout(GUARD):
        assert await client.recv() == b"\x00" * 5 + b"\x01" * 5


async def test_websockets_client_ping_pong_with_server(net: Net, ws_clients: Any) -> None:
    async def handler(ws: Connection) -> None:
        async for message in ws:
            if message == "ping me":
                waiter = await ws.ping(b"from rfc6455")
                await waiter
                await ws.send("pong received")

    server = await net.serve(handler)
    client = await ws_clients(server.port)
    async with asyncio.timeout(GUARD):
        pong_waiter = await client.ping(b"from websockets")
        assert await pong_waiter >= 0
        await client.send("ping me")
        assert await client.recv() == "pong received"


async def test_websockets_client_closes_server(net: Net, ws_clients: Any) -> None:
    closed: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()

    async def handler(ws: Connection) -> None:
        await ws.wait_closed()
        closed.put_nowait((ws.close_code, ws.close_reason))

    server = await net.serve(handler)
    client = await ws_clients(server.port)
    async with asyncio.timeout(GUARD):
        await client.close(4002, "websockets bye")
        assert await closed.get() == (4002, "websockets bye")
    assert client.close_code == 4002


async def test_server_closes_websockets_client(net: Net, ws_clients: Any) -> None:
    async def handler(ws: Connection) -> None:
        await ws.close(4003, "rfc6455 bye")

    server = await net.serve(handler)
    client = await ws_clients(server.port)
    with pytest.raises(WsConnectionClosed) as info:
        async with asyncio.timeout(GUARD):
            await client.recv()
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4003, "rfc6455 bye")
    assert (client.close_code, client.close_reason) == (4003, "rfc6455 bye")


async def test_server_shutdown_with_websockets_client(net: Net, ws_clients: Any) -> None:
    server = await net.serve(rfc_echo)
    client = await ws_clients(server.port)
    await client.send("hello")
    async with asyncio.timeout(GUARD):
        assert await client.recv() == "hello"
    await server.close()
    await client.wait_closed()
    assert (client.close_code, client.close_reason) == (1001, "server shutting down")


async def test_websockets_client_compression_offer_is_declined(net: Net, ws_clients: Any) -> None:
    server = await net.serve(rfc_echo, compression=None)
    client = await ws_clients(server.port, compression="deflate")
    assert client.response is not None
    assert "Sec-WebSocket-Extensions" not in client.response.headers
    await client.send("uncompressed")
    async with asyncio.timeout(GUARD):
        assert await client.recv() == "uncompressed"


async def test_websockets_client_subprotocol_with_server(net: Net, ws_clients: Any) -> None:
    accepted: asyncio.Queue[Connection] = asyncio.Queue()

    async def handler(ws: Connection) -> None:
        accepted.put_nowait(ws)
        await ws.wait_closed()

    server = await net.serve(handler, subprotocols=["chat.v2", "chat.v1"])
    client = await ws_clients(server.port, subprotocols=["chat.v1", "chat.v2"])
    assert client.subprotocol == "chat.v2"
    assert (await accepted.get()).subprotocol == "chat.v2"


async def test_websockets_client_normal_close_ends_async_for(net: Net, ws_clients: Any) -> None:
    received: asyncio.Queue[list[str | bytes]] = asyncio.Queue()

    async def handler(ws: Connection) -> None:
        received.put_nowait([message async for message in ws])

    server = await net.serve(handler)
    client = await ws_clients(server.port)
    await client.send("one")
    await client.send(b"two")
    await client.close()
    async with asyncio.timeout(GUARD):
        assert await received.get() == ["one", b"two"]


async def test_websockets_client_sees_1011_from_a_failing_handler(
    net: Net, ws_clients: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(ws: Connection) -> None:
        raise RuntimeError("handler bug")

    server = await net.serve(handler)
    client = await ws_clients(server.port)
    with pytest.raises(WsConnectionClosed):
        async with asyncio.timeout(GUARD):
            await client.recv()
    assert client.close_code == 1011


# permessage-deflate (RFC 7692) both ways: with and without context takeover,
# window bits 9 to 15, messages from 0 B to 1 MiB, fragmented by either side.

DEFLATE_SIZES = [0, 300, 65536, 2**20]
WINDOW_BITS = list(range(9, 16))


async def ws_fragmenting_echo(ws: ServerConnection) -> None:
    """Echo each message as three fragments (websockets sends an iterable so)."""
    async for message in ws:
        third = len(message) // 3
        await ws.send([message[:third], message[third : 2 * third], message[2 * third :]])


def deflate_messages() -> list[str | bytes]:
    return [message_of(kind, size) for size in DEFLATE_SIZES for kind in ("text", "binary")]


@pytest.mark.parametrize("bits", WINDOW_BITS)
@pytest.mark.parametrize("keep", [False, True], ids=["no_context", "context"])
async def test_client_compresses_with_websockets_server(
    net: Net, ws_servers: Any, bits: int, keep: bool
) -> None:
    factory = ServerPerMessageDeflateFactory(
        server_no_context_takeover=not keep,
        client_no_context_takeover=not keep,
        server_max_window_bits=bits,
        client_max_window_bits=bits,
    )
    # websockets also bounds what it reads before inflating: with 9 bits, 1 MiB of
    # bytes(range(256)) compresses to a little more than 1 MiB.
    server = await ws_servers(
        ws_fragmenting_echo, compression=None, extensions=[factory], max_size=2**21
    )
    client = await net.connect(
        port_of(server),
        compression=Compression(context_takeover=keep, window_bits=bits, threshold=0),
        max_frame_size=16384,
    )
    assert client.response is not None
    answer = client.response.headers.get("Sec-WebSocket-Extensions") or ""
    assert f"server_max_window_bits={bits}" in answer
    assert ("server_no_context_takeover" in answer) is not keep
    assert client.protocol.deflate is not None
    for message in deflate_messages():
        await client.send(message)
        async with asyncio.timeout(GUARD):
            assert await client.recv() == message


@pytest.mark.parametrize("bits", WINDOW_BITS)
@pytest.mark.parametrize("keep", [False, True], ids=["no_context", "context"])
async def test_websockets_client_compresses_with_server(
    net: Net, ws_clients: Any, bits: int, keep: bool
) -> None:
    accepted: asyncio.Queue[Connection] = asyncio.Queue()

    async def handler(ws: Connection) -> None:
        accepted.put_nowait(ws)
        await rfc_echo(ws)

    server = await net.serve(
        handler,
        compression=Compression(context_takeover=keep, window_bits=bits, threshold=0),
        max_frame_size=16384,
    )
    factory = ClientPerMessageDeflateFactory(
        server_no_context_takeover=not keep,
        client_no_context_takeover=not keep,
        server_max_window_bits=bits if bits < 15 else None,
        client_max_window_bits=bits,
    )
    client = await ws_clients(server.port, compression=None, extensions=[factory], max_size=2**21)
    assert client.response is not None
    assert client.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
    assert (await accepted.get()).protocol.deflate is not None
    for message in deflate_messages():
        third = len(message) // 3
        await client.send([message[:third], message[third : 2 * third], message[2 * third :]])
        async with asyncio.timeout(GUARD):
            assert await client.recv() == message
