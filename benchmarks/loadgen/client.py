"""A lean WebSocket client for load generation: rfc6455's sans-I/O pieces on an asyncio Protocol.

``rfc6455.connect`` gives a ``Connection`` built for applications: a reader task, a message
queue, ``await recv()``. Each message then costs two task switches and a future, which
matters here: the server under test does the same work per message on its side, so on a
machine with one core each a generator built on it would be as busy as the server and
measure itself. This client keeps the project's own handshake (``handshake``, ``http11``) and
state machine (``Protocol``: parsing, UTF-8 checks, control frames, the closing handshake),
and drops the tasks: bytes arrive in ``data_received``, each message goes to a callback at
once, and frames are written straight to the transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rfc6455.exceptions import ConnectionClosedError, InvalidResponse, ProtocolError
from rfc6455.handshake import check_response, client_request, generate_key, parse_uri
from rfc6455.http11 import ResponseParser
from rfc6455.limits import Limits
from rfc6455.protocol import Protocol, Side, State
from rfc6455.typing import Data

__all__ = ["Client", "open_client"]

_OPEN = State.OPEN
_CLOSED = State.CLOSED
_LIMITS = Limits(max_size=None)
# Frames sent together are joined into one write up to this many bytes.
_JOIN_LIMIT = 65536


def _ignore(_message: Data) -> None:
    pass


class Client(asyncio.Protocol):
    """One client connection. Messages go to ``on_message`` (set it before the first can
    arrive, or they are dropped); ``closed`` completes when TCP is closed."""

    def __init__(self, request: bytes, key: str, on_message: Callable[[Data], None]) -> None:
        self.on_message = on_message
        # Called once the connection is lost, however that happens.
        self.on_close: Callable[[Client], None] | None = None
        self._request = request
        self._key = key
        self._parser: ResponseParser | None = ResponseParser(_LIMITS)
        self.protocol = Protocol(Side.CLIENT, max_size=None)
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._writable: asyncio.Future[None] | None = None
        self._batch: list[bytes] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._parser is not None:
            data = self._handshake(data)
            if not data:
                return
        protocol = self.protocol
        protocol.receive_data(data)
        on_message = self.on_message
        # Frames sent from the callbacks (echo replies) go out in one write after the loop.
        batch: list[bytes] = []
        self._batch = batch
        try:
            for event in protocol.events_received():
                kind = type(event)
                if kind is str or kind is bytes:
                    on_message(event)  # type: ignore[arg-type]
                elif isinstance(event, ProtocolError):
                    protocol.fail(event.close_code, str(event))
                # Ping: the protocol queued the pong. Close: it queued the reply.
        finally:
            self._batch = None
            if batch:
                self._write_batch(batch)
        self._flush()

    def eof_received(self) -> bool:
        self.protocol.receive_eof()
        self._flush()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self.protocol.state is not _CLOSED:
            self.protocol.receive_eof()
        if not self.opened.done():
            self.opened.set_exception(
                InvalidResponse("connection closed before the handshake response")
            )
            self.opened.exception()  # nobody may wait for it any more
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake_writer()
        if self.on_close is not None:
            self.on_close(self)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    # Handshake

    def _handshake(self, data: bytes) -> bytes:
        """Feed the response head; once complete, return what followed it."""
        assert self._parser is not None
        assert self.transport is not None
        try:
            response = self._parser.feed(data)
            if response is None:
                return b""
            check_response(response, self._key)
        except Exception as exc:
            self._parser = None
            self.transport.abort()
            if not self.opened.done():
                self.opened.set_exception(exc)
            return b""
        rest = self._parser.rest
        self._parser = None
        self.opened.set_result(None)
        return rest

    # Sending

    @property
    def is_open(self) -> bool:
        return self.protocol.state is _OPEN and not self._closing()

    def _closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def _closed_error(self) -> ConnectionClosedError:
        return ConnectionClosedError(self.protocol.close_rcvd, self.protocol.close_sent)

    def send_frame(self, frame: bytes) -> None:
        """Write a whole frame encoded ahead of time (see wire.py); from within a message
        callback, together with the others sent from the same ``data_received``."""
        if self.protocol.state is not _OPEN or self._closing():
            raise self._closed_error()
        if self._batch is not None:
            self._batch.append(frame)
            return
        assert self.transport is not None
        self.transport.write(frame)

    def _write_batch(self, batch: list[bytes]) -> None:
        """One write (one system call) for small frames; large ones are not copied."""
        transport = self.transport
        assert transport is not None
        if self._closing() or self.protocol.state is not _OPEN:
            return
        if len(batch) == 1:
            transport.write(batch[0])
        elif sum(map(len, batch)) <= _JOIN_LIMIT:
            transport.write(b"".join(batch))
        else:
            for frame in batch:
                transport.write(frame)

    def send(self, message: Data) -> None:
        """Send a message through the protocol (a fresh masking key per frame)."""
        if self._closing():
            raise self._closed_error()
        try:
            if isinstance(message, str):
                self.protocol.send_text(message)
            else:
                self.protocol.send_binary(message)
        except Exception:
            raise self._closed_error() from None
        self._flush()

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark."""
        if self._writable is not None:
            await asyncio.shield(self._writable)

    def _wake_writer(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def _flush(self) -> None:
        transport = self.transport
        assert transport is not None
        for data in self.protocol.data_to_send():
            if transport.is_closing():
                break
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()

    # Closing

    @property
    def close_code(self) -> int:
        """The server's close code: 1005 without one, 1006 without a close frame."""
        return self.protocol.close_code

    async def close(self, timeout: float) -> None:
        """The closing handshake (RFC 6455 §7.1.2); drop the connection after ``timeout``."""
        if self.protocol.state is _OPEN and not self._closing():
            self.protocol.send_close()
            self._flush()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.closed)
        except TimeoutError:
            self.abort()
            await asyncio.shield(self.closed)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_client(
    url: str, timeout: float, on_message: Callable[[Data], None] = _ignore
) -> Client:
    """Connect and complete the opening handshake within ``timeout`` seconds.

    Raises:
        OSError: the TCP connection failed.
        TimeoutError: the handshake took longer than ``timeout``.
        InvalidResponse: the server refused the upgrade or answered wrongly.
    """
    target = parse_uri(url)
    if target.secure:
        raise ValueError("wss:// is not supported by the load generator")
    key = generate_key()
    request = client_request(target, key).serialize()
    loop = asyncio.get_running_loop()
    client: Client | None = None
    try:
        async with asyncio.timeout(timeout):
            _, client = await loop.create_connection(
                lambda: Client(request, key, on_message), target.host, target.port
            )
            await client.opened
    except BaseException:
        if client is not None:
            client.abort()
        raise
    return client
