"""Fixtures for the asyncio adapter tests: servers, clients and raw sockets on loopback.

Everything listens on 127.0.0.1 with an ephemeral port, and everything a test
opens is closed by the ``net`` fixture, so that no task, transport or socket
outlives the test (``filterwarnings = error`` turns a leak into a failure).

``net`` depends on ``loop_errors``, which records every call to the event
loop's exception handler ("Task exception was never retrieved", "Unhandled
exception in client_connected_cb", ...) and fails the test if there was one.
Being set up first, it is torn down last and sees the shutdown too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest

import rfc6455
from rfc6455 import Connection, Server
from tests.rfc6455.strategies import URANDOM

HOST = "127.0.0.1"

# RFC 6455 §1.3: the sample nonce and the accept value it gives.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# A fixed masking key keeps the raw client's frames readable; §5.3 only asks
# that real clients pick unpredictable keys.
MASK = b"\x37\xfa\x21\x3d"

# Hang guard for every wait in these tests: far above what any step takes.
GUARD = 10.0

Handler = Callable[[Connection], Awaitable[None]]


async def echo(ws: Connection) -> None:
    """Send every message back."""
    async for message in ws:
        await ws.send(message)


def upgrade_request(
    target: str = "/",
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    key: str = KEY,
    drop: Iterable[str] = (),
    replace: dict[str, str] | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> bytes:
    """Return a literal upgrade request; ``drop``, ``replace`` and ``extra`` edit its headers."""
    headers = {
        "Host": f"{HOST}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
    }
    headers.update(replace or {})
    for name in drop:
        del headers[name]
    lines = [f"{method} {target} {version}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def mask_payload(payload: bytes, key: bytes = MASK) -> bytes:
    return bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


def client_frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = MASK
) -> bytes:
    """Encode a frame as a client would (masked), or unmasked with ``mask=None``."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        head = bytes([first, mask_bit | length])
    elif length < 65536:
        head = bytes([first, mask_bit | 126]) + struct.pack("!H", length)
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack("!Q", length)
    if mask is None:
        return head + payload
    return head + mask + mask_payload(payload, mask)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]  # names lowercased; a repeated field keeps its last value
    body: bytes


@dataclass
class RawFrame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int:
        assert self.opcode == 0x8
        return int(struct.unpack("!H", self.payload[:2])[0]) if self.payload else 1005


class RawClient:
    """A TCP client that speaks literal bytes, to misbehave on purpose."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def local_address(self) -> tuple[str, int]:
        host, port = self.writer.get_extra_info("sockname")[:2]
        return (host, port)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_reply(self) -> HttpReply:
        """Read an HTTP response head and its Content-Length body."""
        async with asyncio.timeout(GUARD):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head[:-4].decode().split("\r\n")
            version, status, _ = status_line.split(" ", 2)
            assert version == "HTTP/1.1"
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await self.reader.readexactly(length)
        return HttpReply(int(status), headers, body)

    async def handshake(self, request: bytes | None = None) -> HttpReply:
        """Send an upgrade request (the §1.3 key by default) and expect 101."""
        await self.send(upgrade_request() if request is None else request)
        reply = await self.read_reply()
        assert reply.status == 101, reply
        return reply

    async def send_frame(
        self, opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = MASK
    ) -> None:
        await self.send(client_frame(opcode, payload, fin=fin, mask=mask))

    async def read_frame(self) -> RawFrame:
        """Read one server frame and check that it is unmasked (RFC 6455 §5.1)."""
        async with asyncio.timeout(GUARD):
            first, second = await self.reader.readexactly(2)
            assert not second & 0x80, "a server frame must not be masked"
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(length)
        return RawFrame(bool(first & 0x80), first & 0x0F, payload)

    async def read_close(self) -> RawFrame:
        """Read frames up to the close frame, skipping pings and pongs."""
        while True:
            frame = await self.read_frame()
            if frame.opcode == 0x8:
                return frame
            assert frame.opcode in (0x9, 0xA), frame

    async def at_eof(self) -> bool:
        """Wait for the server to close TCP: True on EOF (FIN), False on a reset."""
        async with asyncio.timeout(GUARD):
            try:
                data = await self.reader.read()
            except ConnectionResetError:
                return False
        assert data == b"", data
        return True

    def reset(self) -> None:
        """Drop the connection with a TCP RST rather than a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


class Net:
    """Starts servers, clients and raw sockets, and closes all of them at teardown."""

    def __init__(self) -> None:
        self.servers: list[Server] = []
        self.clients: list[Connection] = []
        self.raw_clients: list[RawClient] = []
        self.plain_servers: list[asyncio.Server] = []

    async def serve(self, handler: Handler = echo, **kwargs: Any) -> Server:
        server = await rfc6455.serve(handler, HOST, 0, **kwargs)
        self.servers.append(server)
        return server

    def uri(self, server: Server | asyncio.Server | int, target: str = "/") -> str:
        if isinstance(server, int):
            port = server
        elif isinstance(server, Server):
            port = server.port
        else:
            port = server.sockets[0].getsockname()[1]
        return f"ws://{HOST}:{port}{target}"

    async def connect(
        self, server: Server | asyncio.Server | int, target: str = "/", **kwargs: Any
    ) -> Connection:
        client = await rfc6455.connect(self.uri(server, target), **kwargs)
        self.clients.append(client)
        return client

    async def pair(
        self, server_options: dict[str, Any] | None = None, **client_options: Any
    ) -> tuple[Connection, Connection]:
        """Return (server side, client side) of one connection; the handler waits for its end."""
        accepted: asyncio.Queue[Connection] = asyncio.Queue()

        async def handler(ws: Connection) -> None:
            accepted.put_nowait(ws)
            await ws.wait_closed()

        server = await self.serve(handler, **(server_options or {}))
        client = await self.connect(server, **client_options)
        async with asyncio.timeout(GUARD):
            return await accepted.get(), client

    async def raw_pair(self, **server_options: Any) -> tuple[Connection, RawClient]:
        """Return the server side of a connection and the raw client at its other end."""
        accepted: asyncio.Queue[Connection] = asyncio.Queue()

        async def handler(ws: Connection) -> None:
            accepted.put_nowait(ws)
            await ws.wait_closed()

        server = await self.serve(handler, **server_options)
        raw = await self.raw(server)
        await raw.handshake()
        async with asyncio.timeout(GUARD):
            return await accepted.get(), raw

    async def raw(self, server: Server | int, source: str | None = None) -> RawClient:
        """A raw TCP client; ``source``: the local address (127.0.0.2, ...) it connects from."""
        port = server if isinstance(server, int) else server.port
        local = None if source is None else (source, 0)
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=local)
        raw = RawClient(reader, writer)
        self.raw_clients.append(raw)
        return raw

    async def plain_server(
        self, callback: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> asyncio.Server:
        """A TCP server that runs ``callback``, to fake a WebSocket server."""

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await callback(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(run, HOST, 0)
        self.plain_servers.append(server)
        return server

    async def aclose(self) -> None:
        for client in self.clients:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GUARD):
                    await client.close()
            client.abort()
            await client.wait_closed()
        for raw in self.raw_clients:
            await raw.close()
        for server in self.servers:
            await server.close(timeout=GUARD)
        for plain in self.plain_servers:
            plain.close()
            await plain.wait_closed()
        # Let transports that were just closed call connection_lost().
        for _ in range(3):
            await asyncio.sleep(0)


# The sans-I/O tests: every parser test runs whole, byte by byte and with
# trailing data (h11's habit), and masking keys can be fixed to the §5.7 one.
@pytest.fixture(params=["whole", "bytewise", "trailing"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def urandom(monkeypatch: pytest.MonkeyPatch) -> mock.Mock:
    """Make ``os.urandom``, as frames.py calls it, return the §5.7 key."""
    fake = mock.Mock(return_value=MASK)
    monkeypatch.setattr(URANDOM, fake)
    return fake


@pytest.fixture
async def net(loop_errors: list[dict[str, Any]]) -> AsyncIterator[Net]:
    network = Net()
    try:
        yield network
    finally:
        await network.aclose()


@dataclass
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """TLS contexts for 127.0.0.1, with a throwaway self-signed certificate."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-nodes", "-days", "1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}"),
        ],
        check=True,
        capture_output=True,
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return Tls(server, client)


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog recording the package's loggers from INFO up."""
    caplog.set_level(logging.INFO, logger="rfc6455")
    return caplog


def info_lines(caplog: pytest.LogCaptureFixture, logger: str = "rfc6455") -> list[str]:
    """The messages logged at INFO or above by ``logger`` and its children."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.INFO
        and (record.name == logger or record.name.startswith(logger + "."))
    ]


async def wait_until(condition: Callable[[], object]) -> None:
    """Poll ``condition()`` until it is true, within the hang guard (not a timed assert)."""
    async with asyncio.timeout(GUARD):
        while not condition():  # noqa: ASYNC110 - no event to wait on for these states
            await asyncio.sleep(0.005)


def random_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()
