"""Run a sans-I/O :class:`~rfc6455.protocol.Protocol` over asyncio streams.

One reader task per connection feeds the protocol, answers pings (the
protocol queues the pongs) and queues messages for :meth:`Connection.recv`.
A keepalive task pings the peer. Sending writes straight to the transport and
waits for it to drain only above the write limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType

from ..exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
    ProtocolError,
)
from ..frames import CloseCode
from ..http11 import Request, Response
from ..limits import Limits
from ..protocol import Pong, Protocol, Side, State
from ..typing import BytesLike, Data

__all__ = ["Connection"]

# Close codes that end a connection normally (RFC 6455 §7.4.1); 1005 is the
# peer's close frame without a code.
_OK_CODES = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD})

# Messages the reader task queues before it stops reading from the socket, so
# that a handler that does not call recv() pushes back on the peer through TCP.
_MAX_QUEUE = 16

_READ_SIZE = 65536

# A module global: `State.OPEN` is an attribute lookup on the enum class, and
# every send and every received chunk checks the state.
_OPEN = State.OPEN
_CLOSED = State.CLOSED


class Connection:
    """An open WebSocket connection, for either role.

    Created by :func:`rfc6455.serve` (handed to the handler) and
    :func:`rfc6455.connect`, after the opening handshake.
    """

    def __init__(
        self,
        side: Side,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        limits: Limits,
        request: Request | None = None,
        response: Response | None = None,
        subprotocol: str | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        self.protocol = Protocol(
            side, max_size=limits.max_size, max_frame_size=limits.max_frame_size
        )
        self.limits = limits
        self.request = request
        self.response = response
        self.subprotocol = subprotocol
        self.logger = logger or logging.getLogger("rfc6455")
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self._loop = asyncio.get_running_loop()
        self.remote_address: tuple[str, int] | None = _address(writer.get_extra_info("peername"))
        self.local_address: tuple[str, int] | None = _address(writer.get_extra_info("sockname"))
        self._messages: deque[Data] = deque()
        self._recv_waiter: asyncio.Future[None] | None = None
        self._reading_resumed: asyncio.Future[None] | None = None
        self._pending_failure: ProtocolError | None = None
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        self._close_timer: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._reader_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None

    def start(self, initial_data: bytes = b"") -> None:
        """Start the reader and keepalive tasks; ``initial_data`` followed the handshake."""
        self._reader_task = self._loop.create_task(self._read_loop(initial_data))
        if self.limits.ping_interval is not None:
            self._keepalive_task = self._loop.create_task(self._keepalive())

    # Public API

    @property
    def state(self) -> State:
        """OPEN, CLOSING (a close frame was sent or received) or CLOSED."""
        return self.protocol.state

    @property
    def close_code(self) -> int | None:
        """The peer's close code (1005: none given, 1006: dropped), or None while open."""
        return self.protocol.close_code if self._close_known() else None

    @property
    def close_reason(self) -> str | None:
        """The peer's close reason, or None while open."""
        return self.protocol.close_reason if self._close_known() else None

    def _close_known(self) -> bool:
        """Whether the peer's close frame arrived or the connection is over."""
        return self.protocol.close_rcvd is not None or self._closed.done()

    async def recv(self) -> Data:
        """Receive the next message: ``str`` for text, ``bytes`` for binary.

        Raises:
            ConnectionClosed: every message received before the peer's close
                frame (or the end of the connection) was returned.
            InvalidState: another coroutine is already waiting in recv().
        """
        while not self._messages:
            self._fail_if_pending()
            # Nothing can follow the peer's close frame (RFC 6455 §5.5.1): no
            # need to wait for TCP to close as well.
            if self._close_known():
                raise self._closed_exception()
            if self._recv_waiter is not None:
                raise InvalidState("recv() is already running in another coroutine")
            waiter = self._recv_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._recv_waiter = None
        message = self._messages.popleft()
        if len(self._messages) < _MAX_QUEUE // 2:
            self._resume_reading()
        return message

    def __aiter__(self) -> AsyncIterator[Data]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Data]:
        """Yield messages until a normal close; re-raise an abnormal one."""
        try:
            while True:
                yield await self.recv()
        except ConnectionClosedOK:
            return

    async def send(self, message: Data | bytearray | memoryview) -> None:
        """Send a text (``str``) or binary (bytes-like) message.

        Raises:
            ConnectionClosed: a close frame was already sent or received.
            TypeError: ``message`` is neither str nor bytes-like.
        """
        protocol = self.protocol
        if protocol.state is not _OPEN:
            raise self._closed_exception()
        if isinstance(message, str):
            protocol.send_text(message)
        elif isinstance(message, bytes | bytearray | memoryview):
            protocol.send_binary(message)
        else:
            raise TypeError(f"message must be str or bytes-like, not {type(message).__name__}")
        await self._flush_and_drain()

    def send_encoded(self, frame: bytes) -> None:
        """Write a frame encoded once for many connections, without waiting.

        Server side only (see :func:`rfc6455.broadcast`). It never waits for
        the transport to drain: watch :meth:`write_buffer_size` to find peers
        that do not keep up.

        Raises:
            ConnectionClosed: a close frame was already sent or received.
        """
        if self.protocol.state is not _OPEN:
            raise self._closed_exception()
        self.protocol.send_encoded(frame)
        self._flush()

    def write_buffer_size(self) -> int:
        """How many bytes are waiting in the transport to be sent."""
        return self._transport.get_write_buffer_size()

    async def ping(self, data: BytesLike | None = None) -> asyncio.Future[float]:
        """Send a ping (RFC 6455 §5.5.2).

        Returns:
            A future that the matching pong completes with the round-trip time
            in seconds. A pong also acknowledges every ping sent before its own.
        """
        payload = os.urandom(4) if data is None else bytes(data)
        if payload in self._pings:
            raise InvalidState("a ping with this payload is already waiting for its pong")
        if self.protocol.state is not State.OPEN:
            raise self._closed_exception()
        self.protocol.send_ping(payload)
        waiter: asyncio.Future[float] = self._loop.create_future()
        self._pings[payload] = (waiter, time.monotonic())
        await self._flush_and_drain()
        return waiter

    async def pong(self, data: BytesLike = b"") -> None:
        """Send an unsolicited pong (RFC 6455 §5.5.3)."""
        if self.protocol.state is not State.OPEN:
            raise self._closed_exception()
        self.protocol.send_pong(data)
        await self._flush_and_drain()

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Perform the closing handshake and wait until TCP is closed (RFC 6455 §7.1.2).

        Waits at most ``close_timeout`` for the peer, then drops the connection.
        """
        self._fail_if_pending()
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self._flush()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed, however that happens."""
        await asyncio.shield(self._closed)

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7), e.g. on a keepalive timeout."""
        if self.protocol.state is State.OPEN:
            self.logger.info("failing connection: %d %s", code, reason)
        self.protocol.fail(code, reason)
        self._flush()

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        self._transport.abort()
        # A reader task paused on a full queue must wake up to see the EOF.
        self._resume_reading()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # The reader task

    async def _read_loop(self, initial_data: bytes) -> None:
        protocol = self.protocol
        reader = self._reader
        data = initial_data
        try:
            while True:
                if data:
                    protocol.receive_data(data)
                    self._process_events()
                    # Once closing, read on to the EOF: nothing else ends the task.
                    if (
                        len(self._messages) >= _MAX_QUEUE
                        and not protocol.close_expected()
                        and not self._transport.is_closing()
                    ):
                        await self._pause_reading()
                if protocol.state is _CLOSED:
                    break
                data = await reader.read(_READ_SIZE)
                if not data:
                    protocol.receive_eof()
                    self._flush()
                    break
        except (ConnectionError, OSError) as exc:
            self.logger.debug("connection lost: %r", exc)
        except Exception:
            # A bug of ours, not the peer's: 1011 without details (RFC 6455 §7.4.1).
            self.logger.exception("internal error while receiving")
            self.fail(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._finish()

    def _process_events(self) -> None:
        messages = self._messages
        for event in self.protocol.events_received():
            kind = type(event)
            if kind is str or kind is bytes:
                messages.append(event)  # type: ignore[arg-type]
            elif kind is Pong:
                self._acknowledge_pings(event.data)  # type: ignore[union-attr]
            elif isinstance(event, ProtocolError):
                self.logger.info(
                    "%s broke the protocol: %d %s",
                    _peer(self.remote_address),
                    event.close_code,
                    event,
                )
                # Fail once the handler has taken the messages that came before
                # the error (RFC 6455 §7.1.7), so that it can still answer them.
                self._pending_failure = event
        if not messages:
            self._fail_if_pending()
        waiter = self._recv_waiter
        if (messages or self._close_known()) and waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._pending_failure is not None:
            # A waiting recv() runs first (its wake-up is already scheduled),
            # but a handler that is not reading must not hold the failure back.
            self._loop.call_soon(self._fail_if_pending)
        self._flush()

    def _fail_if_pending(self) -> None:
        error = self._pending_failure
        if error is not None:
            self._pending_failure = None
            # Not self.fail(): _process_events already logged this failure.
            self.protocol.fail(error.close_code, str(error))
            self._flush()

    def _resume_reading(self) -> None:
        resumed = self._reading_resumed
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    async def _pause_reading(self) -> None:
        """Stop reading until recv() has taken half of the queued messages."""
        self._reading_resumed = self._loop.create_future()
        try:
            await self._reading_resumed
        finally:
            self._reading_resumed = None

    def _acknowledge_pings(self, data: bytes) -> None:
        """Complete the ping ``data`` answers and every ping sent before it."""
        if data not in self._pings:
            return  # RFC 6455 §5.5.3: an unsolicited pong needs no answer.
        now = time.monotonic()
        for payload in list(self._pings):
            waiter, sent_at = self._pings.pop(payload)
            if not waiter.done():
                waiter.set_result(now - sent_at)
            if payload == data:
                break

    def _flush(self) -> None:
        """Write what the protocol queued; arm the close timer once a close is under way."""
        writer = self._writer
        for data in self.protocol.data_to_send():
            if self._transport.is_closing():
                break
            if data:
                writer.write(data)
            elif writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()  # TLS cannot half-close.
        if self._close_timer is None and self.protocol.close_expected():
            # The peer's close frame and EOF must be read even if the queue is full.
            self._resume_reading()
            timeout = self.limits.close_timeout
            if timeout is not None:
                self._close_timer = self._loop.call_later(timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self.logger.debug("closing handshake timed out, dropping the connection")
        self.abort()

    async def _flush_and_drain(self) -> None:
        self._flush()
        if self._transport.get_write_buffer_size() > self.limits.write_limit:
            try:
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                raise self._closed_exception() from exc

    def _finish(self) -> None:
        """The TCP connection is over: release everything that waits on it."""
        if self.protocol.state is not State.CLOSED:
            self.protocol.receive_eof()
        self.protocol.data_to_send()
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        self._transport.close()
        exc = self._closed_exception()
        for waiter, _ in self._pings.values():
            if not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()  # Nobody may be awaiting it: mark it retrieved.
        self._pings.clear()
        if self._recv_waiter is not None and not self._recv_waiter.done():
            self._recv_waiter.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def _closed_exception(self) -> ConnectionClosed:
        rcvd = self.protocol.close_rcvd
        sent = self.protocol.close_sent
        ok = (rcvd is not None and rcvd.code in _OK_CODES) and (
            sent is None or sent.code in _OK_CODES
        )
        return (ConnectionClosedOK if ok else ConnectionClosedError)(rcvd, sent)

    # Keepalive

    async def _keepalive(self) -> None:
        """Ping every ``ping_interval``; fail with 1011 when no pong comes in time."""
        interval = self.limits.ping_interval
        timeout = self.limits.ping_timeout
        assert interval is not None
        try:
            while True:
                await asyncio.sleep(interval)
                if self.protocol.state is not State.OPEN:
                    return
                waiter = await self.ping()
                if timeout is None:
                    continue
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), timeout)
                except TimeoutError:
                    # RFC 6455 §7.4.1: 1011, "an unexpected condition prevented
                    # the request from being fulfilled".
                    self.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    return
        except ConnectionClosed:
            return


def _address(value: object) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


def _peer(address: tuple[str, int] | None) -> str:
    return "unknown peer" if address is None else f"{address[0]}:{address[1]}"
