"""The Python cost of rfc6455's asyncio adapter, without sockets.

The real ``Connection`` and server handshake run over a transport that
discards what is written, so what is timed is only the project's Python: a
masked 32 B text message received and echoed by 50 connections (frame
parsing, unmasking, UTF-8, the ``recv()``/``send()`` coroutines, the reply's
encoding and the batched flush), and one opening handshake through the chat
server's router followed by a closing handshake. System calls, the event
loop's polling and asyncio's transports are left out: they cost the same for
every server, and ``e2e.py`` measures everything together.

    python benchmarks/bench_adapter.py [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rfc6455 import Connection, Limits
from rfc6455.aio.connection import _receive_buffer
from rfc6455.aio.server import Server, _Handshake
from rfc6455.frames import Opcode, serialize_frame
from rfc6455.protocol import Side
from server import event_loop
from server.handler import echo
from server.settings import WEB_ROOT
from server.web import Router

REQUEST = (
    b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:5000\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
CONNECTIONS = 50


class NullTransport(asyncio.Transport):
    """A transport that takes every write and reports itself always writable."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: asyncio.BaseProtocol | None = None
        self.closing = False
        self.writes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1

    def write_eof(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            protocol = self.protocol
            assert protocol is not None
            asyncio.get_running_loop().call_soon(protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


def feed(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """Deliver ``data`` as the event loop would: into the buffer, then ``buffer_updated``."""
    buffer = memoryview(protocol.get_buffer(len(data)))
    buffer[: len(data)] = data
    protocol.buffer_updated(len(data))


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def echo_cost(messages: int) -> float:
    """Microseconds of Python per 32 B message received and echoed."""
    transports = [NullTransport() for _ in range(CONNECTIONS)]
    connections = [
        Connection(Side.SERVER, t, limits=Limits(ping_interval=None)) for t in transports
    ]
    handlers = [asyncio.create_task(echo(c)) for c in connections]
    frame = serialize_frame(Opcode.TEXT, b"x" * 32, mask=True)
    await turns(1)
    start = time.perf_counter()
    for _ in range(messages // CONNECTIONS):
        for connection in connections:
            feed(connection, frame)
        await turns(2)  # the handlers answer, then the batched flush writes
    elapsed = time.perf_counter() - start
    assert sum(t.writes for t in transports) == messages // CONNECTIONS * CONNECTIONS
    for handler in handlers:
        handler.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    return elapsed / (messages // CONNECTIONS * CONNECTIONS) * 1e6


async def handshake_cost(handshakes: int) -> float:
    """Microseconds of Python per opening handshake plus closing handshake."""
    server = Server(
        echo,
        limits=Limits(ping_interval=None),
        process_request=Router(WEB_ROOT, dict),
        subprotocols=(),
    )
    close = serialize_frame(Opcode.CLOSE, b"\x03\xe8", mask=True)
    start = time.perf_counter()
    for _ in range(handshakes):
        transport = NullTransport()
        handshake = _Handshake(server, "127.0.0.1")
        transport.set_protocol(handshake)
        handshake.connection_made(transport)
        feed(handshake, REQUEST)
        connection = transport.get_protocol()
        assert isinstance(connection, Connection)
        await turns(1)  # the handler starts
        feed(connection, close)
        connection.eof_received()
        transport.close()
        await turns(3)  # the connection is lost, the handler returns
    elapsed = time.perf_counter() - start
    assert not server.connections
    return elapsed / handshakes * 1e6


async def run(rounds: int, messages: int, handshakes: int) -> None:
    assert _receive_buffer.view  # one shared buffer: the loop's reads go there
    echoes = [await echo_cost(messages) for _ in range(rounds)]
    opens = [await handshake_cost(handshakes) for _ in range(rounds)]
    print(f"echo, 32 B text:          {min(echoes):6.2f} µs per message (best of {rounds})")
    print(f"handshake, then close:    {min(opens):6.1f} µs per connection (best of {rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--handshakes", type=int, default=5_000)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    event_loop.run(args.loop, run(args.rounds, args.messages, args.handshakes))


if __name__ == "__main__":
    main()
