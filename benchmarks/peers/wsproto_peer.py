"""Peer server: ``wsproto`` (sans-I/O) on an ``asyncio.Protocol``, for benchmarks/e2e.py.

Written lean but honest: one ``WSConnection`` per client drives everything (the
handshake, framing, pings, the closing handshake), the protocol's bytes go
straight to the transport, and messages are reassembled from wsproto's partial
events. There are no extensions (wsproto only negotiates what the server offers,
and this one offers none). Backpressure: a client whose write buffer is full is
not read from until it drains. wsproto has no broadcast helper and encodes per
connection, so the chat sends each message to each receiver through that
receiver's ``WSConnection``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import cast

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

# Run as a script: the repository, not this folder, is where ``benchmarks`` lives.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peers import _common

CLIENTS: set[Client] = set()
OPEN_CLIENTS: set[Client] = set()


class Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        self.transport: asyncio.Transport | None = None
        self.echo = False
        self.parts: list[str] | list[bytes] = []
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        CLIENTS.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        CLIENTS.discard(self)
        OPEN_CLIENTS.discard(self)

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        self._receive(None)
        return None

    def data_received(self, data: bytes) -> None:
        self._receive(data)

    def send(self, event: Event) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(self.ws.send(event))

    def close(self, code: int, reason: str) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self.send(CloseConnection(code=code, reason=reason))
        OPEN_CLIENTS.discard(self)

    def _receive(self, data: bytes | None) -> None:
        transport = self.transport
        assert transport is not None
        try:
            self.ws.receive_data(data)
        except RemoteProtocolError as exc:  # A bad upgrade request.
            if exc.event_hint is not None:
                transport.write(self.ws.send(exc.event_hint))
            transport.close()
            return
        for event in self.ws.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                self._message(event)  # type: ignore[arg-type]
            elif kind is Request:
                self._accept(event)  # type: ignore[arg-type]
            elif kind is Ping:
                self.send(event.response())  # type: ignore[attr-defined]
            elif kind is CloseConnection:
                OPEN_CLIENTS.discard(self)
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.send(event.response())  # type: ignore[attr-defined]
                transport.close()  # The server closes TCP first (RFC 6455 §7.1.1).
                return
        if data is None:
            transport.close()

    def _accept(self, request: Request) -> None:
        path = request.target.partition("?")[0]
        if path == _common.ECHO_PATH:
            self.echo = True
        elif path != "/":
            self.send(RejectConnection(status_code=404))
            assert self.transport is not None
            self.transport.close()
            return
        self.send(AcceptConnection())
        if not self.echo:
            OPEN_CLIENTS.add(self)

    def _message(self, event: TextMessage | BytesMessage) -> None:
        data = event.data
        self.size += len(data)
        if self.size > _common.MAX_SIZE:
            self.close(1009, "message too big")
            return
        if not event.message_finished:
            self.parts.append(data)  # type: ignore[arg-type]
            return
        if self.parts:
            self.parts.append(data)  # type: ignore[arg-type]
            data = "".join(self.parts) if isinstance(data, str) else b"".join(self.parts)  # type: ignore[arg-type]
            self.parts = []
        self.size = 0
        if self.echo:
            if isinstance(data, str):
                self.send(TextMessage(data=data))
            else:
                self.send(BytesMessage(data=data))
        elif isinstance(data, str):
            for other in OPEN_CLIENTS:
                if other is not self:
                    other.send(TextMessage(data=data))
        else:
            self.close(1003, "binary messages are not supported")


async def main(args: argparse.Namespace, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Client, args.host, args.port)
    _common.ready(server.sockets[0].getsockname()[1])
    try:
        await stop.wait()
    finally:
        server.close()
        for client in list(CLIENTS):
            client.close(1001, "server shutting down")
            if client.transport is not None:
                client.transport.close()
        await server.wait_closed()


if __name__ == "__main__":
    _common.run(main, __doc__ or "")
