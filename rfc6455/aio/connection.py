"""Run a sans-I/O :class:`~rfc6455.protocol.Protocol` over an asyncio transport.

A :class:`Connection` is the ``asyncio.BufferedProtocol`` of its TCP
connection once the opening handshake is over: the event loop reads into one
receive buffer shared by every connection of the thread (nothing is allocated
per read), and :meth:`Connection.buffer_updated` feeds the protocol, answers
pings (the protocol queues the pongs) and queues messages for
:meth:`Connection.recv`. No task runs per connection: keepalive and the close
timeout are timers.

Frames sent during one turn of the event loop are written together at the end
of it, one ``write()`` per connection: a handler answering sixteen messages, or
a broadcast of a burst of messages, makes one system call per peer, not one
per frame. Above ``write_limit`` bytes the frames are written at once, and
:meth:`Connection.send` waits for the transport to drain.

A peer that does not read is a slow consumer once more is written while over
``max_send_buffer`` bytes wait for it *behind the write in progress*: what was
not written yet is dropped, the connection fails with 1008 "slow consumer", and
it is dropped after a short grace if the close frame, queued behind what the
peer did not read, cannot get through. The write being sent does not count,
however large (a big message, a long history): a peer that keeps reading is
never cut off for it. While the transport has paused writing (above
``write_limit``) the connection notes where each write ends in the transport's
buffer; otherwise the test costs one attribute check per write.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
import weakref
from types import TracebackType

from ..deflate import PerMessageDeflate
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
from ..prepared import PreparedMessage
from ..protocol import Pong, Protocol, Side, State
from ..typing import BytesLike, Data

__all__ = ["SLOW_CONSUMER", "Connection"]

#: The reason of the 1008 close frame a slow consumer gets (its count is an application's metric).
SLOW_CONSUMER = "slow consumer"

# Close codes that end a connection normally (RFC 6455 §7.4.1); 1005 is the
# peer's close frame without a code.
_OK_CODES = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD})

# Messages queued for recv() before the connection stops reading from the
# socket, so that a handler that does not call recv() pushes back on the peer
# through TCP; reading resumes once half of them were taken.
_MAX_QUEUE = 16

# What one read may bring. The buffer is shared: its size costs nothing per
# connection, and 256 KiB is what asyncio reads at a time without one.
_RECEIVE_SIZE = 256 * 1024

# Small frames queued for one write are joined; larger ones are written as
# they are, since copying them costs more than the extra system call.
_JOIN_LIMIT = 16384

# A slow consumer's close frame waits behind the data it did not read: the
# connection is dropped if it is not closed within this time (or close_timeout
# if shorter). A peer that reads at all takes 1 MiB in a second on any link
# faster than 8 Mbit/s; one that does not would hold its buffer for the whole
# close_timeout.
_SLOW_CONSUMER_GRACE = 1.0

# A module global: `State.OPEN` is an attribute lookup on the enum class, and
# every send and every received chunk checks the state.
_OPEN = State.OPEN
_CLOSED = State.CLOSED


class _ReceiveBuffer(threading.local):
    """The buffer the event loop of this thread reads into, for every connection.

    The transport calls ``get_buffer()``, reads, then ``buffer_updated()`` at
    once, and the protocol copies what it keeps: the buffer is free again
    before the next read of any connection of the same loop.
    """

    def __init__(self) -> None:
        self.view = memoryview(bytearray(_RECEIVE_SIZE))


_receive_buffer = _ReceiveBuffer()


class _WriteBatcher:
    """Flushes, once per turn of the event loop, the connections that sent frames."""

    # No reference to the loop: the batcher is the value of a weak-keyed mapping
    # whose key is the loop, which would then never be collected.
    __slots__ = ("_connections",)

    def __init__(self) -> None:
        self._connections: list[Connection] = []

    def add(self, connection: Connection) -> None:
        if not self._connections:
            connection._loop.call_soon(self._flush)
        self._connections.append(connection)

    def _flush(self) -> None:
        connections = self._connections
        self._connections = []
        for connection in connections:
            try:
                connection._flush()
            except Exception:
                # A bug of ours on one connection must not hold back the others' frames.
                connection.logger.exception("internal error while sending")
                connection._transport.abort()  # Not abort(): it would flush again.


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _WriteBatcher] = (
    weakref.WeakKeyDictionary()
)


def _batcher(loop: asyncio.AbstractEventLoop) -> _WriteBatcher:
    batcher = _batchers.get(loop)
    if batcher is None:
        batcher = _batchers[loop] = _WriteBatcher()
    return batcher


class Connection(asyncio.BufferedProtocol):
    """An open WebSocket connection, for either role.

    Created by :func:`rfc6455.serve` (handed to the handler) and
    :func:`rfc6455.connect`, after the opening handshake; it then replaces the
    handshake as the protocol of ``transport``.
    """

    def __init__(
        self,
        side: Side,
        transport: asyncio.Transport,
        *,
        limits: Limits,
        request: Request | None = None,
        response: Response | None = None,
        subprotocol: str | None = None,
        deflate: PerMessageDeflate | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        self.protocol = Protocol(
            side,
            max_size=limits.max_size,
            max_frame_size=limits.max_frame_size,
            deflate=deflate,
        )
        self.limits = limits
        self.request = request
        self.response = response
        self.subprotocol = subprotocol
        self.logger = logger or logging.getLogger("rfc6455")
        self.remote_address = (
            request.remote_address
            if request is not None and request.remote_address is not None
            else _address(transport.get_extra_info("peername"))
        )
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._view = _receive_buffer.view
        self._batcher = _batcher(self._loop)
        self._write_limit = limits.write_limit
        # The messages received, of which the first _taken were returned by
        # recv(): a list costs far less memory per idle connection than a deque.
        self._messages: list[Data] = []
        self._taken = 0
        self._recv_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._pending_failure: ProtocolError | None = None
        # Bytes sent but not yet handed to the transport, and whether a flush
        # at the end of this turn of the loop is booked.
        self._unflushed = 0
        self._flush_booked = False
        self._writing_paused = False
        # While the transport has paused writing: bytes handed to it since it
        # paused, counting what its buffer held then, and where in that count
        # each write still in its buffer ends. The first one not sent yet is
        # the write in progress, the others are behind it (the slow-consumer
        # rule). Nothing is counted while it writes freely.
        self._written = 0
        self._ends: collections.deque[int] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._pings: dict[bytes, tuple[asyncio.Future[float] | None, float]] = {}
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._done = False
        self._closed_waiter: asyncio.Future[None] | None = None
        # The transport pauses us above write_limit and resumes us below a quarter of it.
        transport.set_write_buffer_limits(high=self._write_limit)
        transport.set_protocol(self)
        self._schedule_keepalive()

    # Public API

    @property
    def local_address(self) -> tuple[str, int] | None:
        """This end's address and port."""
        return _address(self._transport.get_extra_info("sockname"))

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
        return self.protocol.close_rcvd is not None or self._done

    async def recv(self) -> Data:
        """Receive the next message: ``str`` for text, ``bytes`` for binary.

        Raises:
            ConnectionClosed: every message received before the peer's close
                frame (or the end of the connection) was returned.
            InvalidState: another coroutine is already waiting in recv().
        """
        messages = self._messages
        while self._taken == len(messages):
            # Both tests inlined: a handler waits here for every message it is sent.
            if self._pending_failure is not None:
                self._fail_if_pending()
            # Nothing can follow the peer's close frame (RFC 6455 §5.5.1): no
            # need to wait for TCP to close as well.
            if self.protocol.close_rcvd is not None or self._done:
                raise self._closed_exception()
            if self._recv_waiter is not None:
                raise InvalidState("recv() is already running in another coroutine")
            waiter = self._recv_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._recv_waiter = None
        taken = self._taken
        message = messages[taken]
        taken += 1
        if taken == len(messages):
            messages.clear()
            taken = 0
        elif taken > len(messages) // 2:
            del messages[:taken]  # Amortized: each message is moved at most once.
            taken = 0
        self._taken = taken
        if self._reading_paused and len(messages) - taken <= _MAX_QUEUE // 2:
            self._resume_reading()
        return message

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> Data:
        """``async for``: the next message; a normal close ends the loop, others raise."""
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    async def send(self, message: Data | bytearray | memoryview) -> None:
        """Send a text (``str``) or binary (bytes-like) message.

        The frame is written at the end of this turn of the event loop, or at
        once above ``write_limit``; above that limit in the transport, this
        waits for it to drain.

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
        self._write_soon(len(message))
        if self._writing_paused:
            await self._drain()

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
        self._write_soon(len(frame))

    def send_prepared(self, message: PreparedMessage) -> None:
        """Write a message prepared once for many connections, without waiting.

        Like :meth:`send_encoded`, for a server's broadcast; the connection
        picks the frame that fits its permessage-deflate parameters (RFC 7692).

        Raises:
            ConnectionClosed: a close frame was already sent or received.
        """
        if self.protocol.state is not _OPEN:
            raise self._closed_exception()
        self.protocol.send_prepared(message)
        self._write_soon(message.size)

    def write_buffer_size(self) -> int:
        """How many bytes are waiting to be sent."""
        return self._transport.get_write_buffer_size() + self._unflushed

    async def ping(self, data: BytesLike | None = None) -> asyncio.Future[float]:
        """Send a ping (RFC 6455 §5.5.2).

        Returns:
            A future that the matching pong completes with the round-trip time
            in seconds. A pong also acknowledges every ping sent before its own.
        """
        payload = os.urandom(4) if data is None else bytes(data)
        if payload in self._pings:
            raise InvalidState("a ping with this payload is already waiting for its pong")
        if self.protocol.state is not _OPEN:
            raise self._closed_exception()
        self.protocol.send_ping(payload)
        waiter: asyncio.Future[float] = self._loop.create_future()
        self._pings[payload] = (waiter, time.monotonic())
        self._write_soon(len(payload))
        if self._writing_paused:
            await self._drain()
        return waiter

    async def pong(self, data: BytesLike = b"") -> None:
        """Send an unsolicited pong (RFC 6455 §5.5.3)."""
        if self.protocol.state is not _OPEN:
            raise self._closed_exception()
        self.protocol.send_pong(data)
        self._write_soon(len(data))
        if self._writing_paused:
            await self._drain()

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Perform the closing handshake and wait until TCP is closed (RFC 6455 §7.1.2).

        Waits at most ``close_timeout`` for the peer, then drops the connection.
        """
        self._fail_if_pending()
        if self.protocol.state is _OPEN:
            self.protocol.send_close(code, reason)
            self._flush()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed, however that happens."""
        if self._done:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self._loop.create_future()
        await asyncio.shield(self._closed_waiter)

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7), e.g. on a keepalive timeout."""
        if self.protocol.state is _OPEN:
            self.logger.info(
                "failing connection: %d %s",
                code,
                reason,
                extra={
                    "event": "connection_failed",
                    "peer": _peer(self.remote_address),
                    "close_code": code,
                    "close_reason": reason,
                },
            )
        self.protocol.fail(code, reason)
        self._flush()

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake.

        Frames already sent are first handed to the transport, as if written
        at once; whatever the socket does not take right away is lost.
        """
        if self._unflushed:
            self._flush()
        self._transport.abort()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # asyncio.BufferedProtocol: the event loop calls these.

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.receive(self._view[:nbytes])

    def receive(self, data: BytesLike) -> None:
        """Feed bytes read from the transport (and those that followed the handshake)."""
        try:
            self.protocol.receive_data(data)
            self._process_events()
        except Exception:
            # A bug of ours, not the peer's: 1011 without details (RFC 6455 §7.4.1).
            self.logger.exception("internal error while receiving")
            self.fail(CloseCode.INTERNAL_ERROR, "internal error")

    def eof_received(self) -> bool:
        self.protocol.receive_eof()
        self._flush()
        # The transport closes itself: the peer is done, and so are we.
        return False

    def pause_writing(self) -> None:
        # Called from within transport.write(): its buffer, the write that made
        # it pause included, is the first write to count.
        self._writing_paused = True
        self._written = self._transport.get_write_buffer_size()
        self._ends = collections.deque([self._written])

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._written = 0
        self._ends = None
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.logger.debug("connection lost: %r", exc)
        self._finish()

    # Receiving

    def _process_events(self) -> None:
        messages = self._messages
        # Only control frames and errors make the protocol answer or close.
        control = False
        for event in self.protocol.events_received():
            kind = type(event)
            if kind is str or kind is bytes:
                messages.append(event)  # type: ignore[arg-type]
                continue
            control = True
            if kind is Pong:
                self._acknowledge_pings(event.data)  # type: ignore[union-attr]
            elif isinstance(event, ProtocolError):
                self.logger.info(
                    "%s broke the protocol: %d %s",
                    _peer(self.remote_address),
                    event.close_code,
                    event,
                    extra={
                        "event": "protocol_error",
                        "peer": _peer(self.remote_address),
                        "close_code": event.close_code,
                        "close_reason": str(event),
                    },
                )
                # Fail once the handler has taken the messages that came before
                # the error (RFC 6455 §7.1.7), so that it can still answer them.
                self._pending_failure = event
        queued = len(messages) - self._taken
        if queued:
            if queued >= _MAX_QUEUE and not self._reading_paused:
                if self.protocol.close_expected():
                    # Closing: reading goes on to the peer's close frame and EOF,
                    # but nothing obliges us to keep what it sends meanwhile
                    # (RFC 6455 §7.1.2): a peer that ignores our close cannot
                    # grow the queue past _MAX_QUEUE.
                    del messages[self._taken + _MAX_QUEUE :]
                    queued = _MAX_QUEUE
                else:
                    self._reading_paused = True
                    self._transport.pause_reading()
        else:
            self._fail_if_pending()
        waiter = self._recv_waiter
        if (queued or self._close_known()) and waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._pending_failure is not None:
            # A waiting recv() runs first (its wake-up is already scheduled),
            # but a handler that is not reading must not hold the failure back.
            self._loop.call_soon(self._fail_if_pending)
        if control:
            self._flush()

    def _fail_if_pending(self) -> None:
        error = self._pending_failure
        if error is not None:
            self._pending_failure = None
            # Not self.fail(): _process_events already logged this failure.
            self.protocol.fail(error.close_code, str(error))
            self._flush()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if not self._done:
                self._transport.resume_reading()

    def _acknowledge_pings(self, data: bytes) -> None:
        """Complete the ping ``data`` answers and every ping sent before it."""
        if data not in self._pings:
            return  # RFC 6455 §5.5.3: an unsolicited pong needs no answer.
        now = time.monotonic()
        for payload in list(self._pings):
            waiter, sent_at = self._pings.pop(payload)
            if waiter is None:
                self._keepalive_answered()
            elif not waiter.done():
                waiter.set_result(now - sent_at)
            if payload == data:
                break

    # Sending

    def _write_soon(self, size: int) -> None:
        """Flush at the end of this turn of the loop, or now above the write limit."""
        self._unflushed += size
        if self._unflushed > self._write_limit:
            self._flush()
        elif not self._flush_booked:
            self._flush_booked = True
            self._batcher.add(self)

    def _flush(self) -> None:
        """Write what the protocol queued; arm the close timer once a close is under way."""
        self._flush_booked = False
        self._unflushed = 0
        output = self.protocol.data_to_send()
        transport = self._transport
        # The transport pauses writing above write_limit: one test while below.
        # Nothing new to write, nothing to shed.
        if output and self._writing_paused and self._over_send_limit():
            output = self._shed_slow_consumer()
        if output and not transport.is_closing():
            if len(output) != 1 or not output[0]:
                self._write_all(output)
            elif self._ends is None:  # the usual case: nothing to note
                transport.write(output[0])
            else:
                self._write(output[0])
        # close_expected() inline (state is not OPEN): this runs at every flush.
        if self._close_timer is None and self.protocol.state is not _OPEN:
            # The peer's close frame and EOF must be read even if the queue is full.
            self._resume_reading()
            timeout = self.limits.close_timeout
            if timeout is not None and not self._done:
                self._close_timer = self._loop.call_later(timeout, self._close_timed_out)

    def _write(self, data: bytes) -> None:
        """Hand ``data`` to the transport; while it has paused, note where it ends.

        A write that makes it pause is counted in what its buffer held then
        (``pause_writing``). Writes after a small one (under write_limit)
        extend it rather than add an entry: the count is exact to within
        write_limit, and there is one entry per write_limit bytes buffered.
        """
        ends = self._ends
        self._transport.write(data)
        if ends is not None:
            self._written += len(data)
            if len(ends) > 1 and ends[-1] - ends[-2] < self._write_limit:
                ends[-1] = self._written
            else:
                ends.append(self._written)

    def _write_all(self, output: list[bytes]) -> None:
        """Write several queued chunks: small runs joined, ``b""`` as a half-close."""
        transport = self._transport
        run: list[bytes] = []
        for data in output:
            if data and len(data) < _JOIN_LIMIT:
                run.append(data)
                continue
            if run:
                self._write(b"".join(run))
                run = []
            if data:
                self._write(data)
                continue
            if transport.can_write_eof():
                try:
                    transport.write_eof()
                except OSError:
                    # The peer reset the connection meanwhile (a browser tab closed with
                    # unread data): it is gone, which is all a half-close would say.
                    transport.abort()
            else:
                transport.close()  # TLS cannot half-close.
            return
        if run:
            self._write(b"".join(run))

    def _over_send_limit(self) -> bool:
        """Whether over ``max_send_buffer`` bytes wait behind the write in progress."""
        limit = self.limits.max_send_buffer
        ends = self._ends
        if limit is None or ends is None or self.protocol.state is not _OPEN:
            return False
        sent = self._written - self._transport.get_write_buffer_size()
        while len(ends) > 1 and ends[0] <= sent:
            ends.popleft()
        return self._written - ends[0] > limit

    def _shed_slow_consumer(self) -> list[bytes]:
        """Fail a peer that does not read with 1008, dropping what was not written yet.

        Returns:
            What to write instead: the close frame, and the EOF.
        """
        self.logger.warning(
            "%s is a slow consumer: %d bytes not read, closing with 1008",
            _peer(self.remote_address),
            self._transport.get_write_buffer_size(),
            extra={
                "event": "slow_consumer",
                "peer": _peer(self.remote_address),
                "close_code": CloseCode.POLICY_VIOLATION,
                "close_reason": "slow consumer",
            },
        )
        # RFC 6455 §7.4.1: 1008, "a message that violates its policy".
        self.protocol.fail(CloseCode.POLICY_VIOLATION, SLOW_CONSUMER)
        # The peer's close frame and EOF must be read, and a peer that never reads
        # gets the grace, not close_timeout, before its buffer is freed.
        self._resume_reading()
        timeout = self.limits.close_timeout
        grace = _SLOW_CONSUMER_GRACE if timeout is None else min(timeout, _SLOW_CONSUMER_GRACE)
        if not self._done:
            self._close_timer = self._loop.call_later(grace, self._close_timed_out)
        return self.protocol.data_to_send()

    def _close_timed_out(self) -> None:
        self.logger.debug("closing handshake timed out, dropping the connection")
        self.abort()

    async def _drain(self) -> None:
        """Wait until the transport's buffer is below a quarter of the write limit."""
        if self._done:
            raise self._closed_exception()
        if self._drain_waiter is None:
            self._drain_waiter = self._loop.create_future()
        await asyncio.shield(self._drain_waiter)

    def _finish(self) -> None:
        """The TCP connection is over: release everything that waits on it."""
        self._done = True
        protocol = self.protocol
        if protocol.state is not _CLOSED:
            protocol.receive_eof()
        protocol.data_to_send()
        for timer in (self._close_timer, self._keepalive_timer):
            if timer is not None:
                timer.cancel()
        exc = self._closed_exception()
        for waiter, _ in self._pings.values():
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()  # Nobody may be awaiting it: mark it retrieved.
        self._pings.clear()
        for done in (self._recv_waiter, self._closed_waiter):
            if done is not None and not done.done():
                done.set_result(None)
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(exc)
            drain.exception()

    def _closed_exception(self) -> ConnectionClosed:
        rcvd = self.protocol.close_rcvd
        sent = self.protocol.close_sent
        ok = (rcvd is not None and rcvd.code in _OK_CODES) and (
            sent is None or sent.code in _OK_CODES
        )
        return (ConnectionClosedOK if ok else ConnectionClosedError)(rcvd, sent)

    # Keepalive (RFC 6455 §5.5.2): timers, not a task.

    def _schedule_keepalive(self) -> None:
        interval = self.limits.ping_interval
        if interval is not None and not self._done:
            self._keepalive_timer = self._loop.call_later(interval, self._keepalive_ping)

    def _keepalive_ping(self) -> None:
        """Ping the peer; fail with 1011 if no pong comes within ``ping_timeout``."""
        self._keepalive_timer = None
        if self.protocol.state is not _OPEN:
            return
        payload = os.urandom(4)
        self.protocol.send_ping(payload)
        self._pings[payload] = (None, time.monotonic())
        self._flush()
        timeout = self.limits.ping_timeout
        if timeout is None:
            self._schedule_keepalive()
        else:
            self._keepalive_timer = self._loop.call_later(timeout, self._keepalive_timed_out)

    def _keepalive_answered(self) -> None:
        """A pong came: stop waiting for it, ping again after ``ping_interval``."""
        if self.limits.ping_timeout is None:
            return  # The next ping is already booked.
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
        self._schedule_keepalive()

    def _keepalive_timed_out(self) -> None:
        self._keepalive_timer = None
        # RFC 6455 §7.4.1: 1011, "an unexpected condition prevented the
        # request from being fulfilled". A peer that answers no ping will not
        # answer the close frame either: close TCP now rather than after
        # close_timeout (§7.1.7 ends a failed connection by closing TCP).
        self.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        self._transport.close()


def _address(value: object) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


def _peer(address: tuple[str, int] | None) -> str:
    return "unknown peer" if address is None else f"{address[0]}:{address[1]}"
