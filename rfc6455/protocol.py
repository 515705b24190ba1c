"""The sans-I/O WebSocket state machine (RFC 6455 §5-§7), for both roles.

A :class:`Protocol` owns no socket, clock or task. Bytes go in, events and
bytes come out::

    proto.receive_data(chunk)        # or proto.receive_eof()
    for event in proto.events_received():
        ...                          # str, bytes, Ping, Pong, Close or ProtocolError
    for data in proto.data_to_send():
        if data:
            transport.write(data)
        else:
            transport.write_eof()    # b"" asks for a half-close

A ``ProtocolError`` event ends the input: once the application has handled the
events before it, it calls ``proto.fail(error.close_code, str(error))``.

The opening handshake happens before a Protocol exists: see ``http11`` and
``handshake``. Timers (close timeout, keepalive) belong to the I/O layer, which
asks :meth:`Protocol.close_expected` when to start one.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from enum import Enum, IntEnum

from .deflate import Inflation, PerMessageDeflate
from .exceptions import InvalidPayloadData, InvalidState, PayloadTooBig, ProtocolError
from .frames import (
    Close,
    CloseCode,
    Opcode,
    frame_header,
    is_valid_close_code,
    parse_header,
    serialize_frame,
)
from .masking import SHIFT, SPREAD, apply_mask, unmask_payload, unpack_key
from .prepared import PreparedMessage
from .typing import BytesLike

__all__ = ["Event", "Ping", "Pong", "Protocol", "Side", "State"]

# Payloads larger than this are written after their header instead of being
# copied into one buffer with it: one more write() beats copying the payload.
_COPY_LIMIT = 16384

# Text of a message in fragments is kept in parts of about this many characters
# or more: smaller pieces are appended to the last part (a copy of at most this
# much each), so a part's own cost, some 50 bytes, is a few percent at most.
_SMALL_PART = 1024

_Utf8Decoder = codecs.getincrementaldecoder("utf-8")
_from_bytes = int.from_bytes

# Enum members bound to module globals: `Opcode.TEXT` is an attribute lookup on
# the enum class, about 60 ns each time, which the per-frame loop cannot afford.
_CONT = Opcode.CONT
_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY


class Side(Enum):
    """Which end of the connection this protocol plays."""

    SERVER = "server"
    CLIENT = "client"


class State(IntEnum):
    """Connection states after the opening handshake (RFC 6455 §7)."""

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


# Checked on every send and flush: see the opcode aliases above.
_OPEN = State.OPEN

# A server's frame header for a whole text or binary message of n < 126 bytes (§5.2).
_SHORT_TEXT_HEADERS = tuple(frame_header(_TEXT, n) for n in range(126))
_SHORT_BINARY_HEADERS = tuple(frame_header(_BINARY, n) for n in range(126))


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping was received; the protocol has already queued the pong (RFC 6455 §5.5.2)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong was received (RFC 6455 §5.5.3)."""

    data: bytes


# A message is delivered as str (text) or bytes (binary), a close as a Close.
# A ProtocolError is always the last event: the peer broke the protocol and the
# connection must be failed with ``fail(error.close_code, str(error))``.
Event = str | bytes | Ping | Pong | Close | ProtocolError


class Protocol:
    """A WebSocket connection after the opening handshake, without I/O.

    Args:
        side: ``Side.SERVER`` or ``Side.CLIENT``; decides the masking rules
            (RFC 6455 §5.1) and who closes TCP first (§7.1.1).
        max_size: largest incoming message in bytes, or None for no limit.
        max_frame_size: outgoing messages larger than this are fragmented
            (§5.4), or None to send each message as one frame.
        deflate: permessage-deflate, if the handshake negotiated it (RFC 7692).
    """

    def __init__(
        self,
        side: Side,
        *,
        max_size: int | None = 2**20,
        max_frame_size: int | None = None,
        deflate: PerMessageDeflate | None = None,
    ) -> None:
        if max_frame_size is not None and max_frame_size < 1:
            raise ValueError("max_frame_size must be at least 1")
        self.side = side
        self.max_size = max_size
        self.max_frame_size = max_frame_size
        self.deflate = deflate
        # RFC 7692 §6: permessage-deflate gives RSV1 a meaning on data frames.
        self._rsv = 0 if deflate is None else 0x40
        self.state = State.OPEN
        # RFC 6455 §5.1: clients mask, servers don't, and each side checks the other.
        self._mask = side is Side.CLIENT
        self._expect_mask = side is Side.SERVER
        # The largest message sent by the short path: one unmasked frame with a prebuilt
        # header (§5.2), neither fragmented nor compressed (under the threshold); -1: none.
        self._short_send = -1 if self._mask else min(125, max_frame_size or 125)
        if deflate is not None:
            self._short_send = min(self._short_send, deflate.threshold - 1)
        self._buffer = bytearray()
        self._events: list[Event] = []
        self._output: list[bytes] = []
        # The data message being reassembled: opcode 0 when none (§5.4). Binary is
        # gathered in one bytearray; text, decoded as it comes, in parts of at least
        # _SMALL_PART characters: one object per 1-byte fragment cost 36 to 56 times
        # the message. Made when a message starts: an idle connection has neither.
        self._message_opcode = 0
        self._message_data: bytearray | None = None
        self._message_text: list[str] | None = None
        self._message_size = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        # The compressed message being reassembled (RSV1 on its first frame), if any.
        self._inflation: Inflation | None = None
        # The data frame whose payload is still arriving.
        self._frame_length = 0
        self._frame_remaining = 0
        self._frame_fin = False
        self._frame_mask: bytes | None = None
        self._discarding = False
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        # Which side started the closing handshake (or failed the connection), if one did.
        self.close_initiator: Side | None = None
        self.eof_sent = False

    # Receiving

    def receive_data(self, data: BytesLike) -> None:
        """Feed bytes received from the network."""
        if self._discarding or not data:
            return
        buffer = self._buffer
        buffer += data
        pos = 0
        try:
            pos = self._parse(buffer)
        except ProtocolError as exc:
            # RFC 6455 §7.1.7: stop processing input at once. The error is the
            # last event, so the application can act on the messages before it
            # (e.g. echo them) before failing the connection with its code.
            self._events.append(exc)
            self._discarding = True
            buffer.clear()
        else:
            del buffer[:pos]

    def _parse(self, buffer: bytearray) -> int:
        """Consume every complete frame, and partial data-frame payloads, in ``buffer``.

        Returns:
            How many bytes were consumed.
        """
        pos = 0
        end = len(buffer)
        masked = self._expect_mask
        append = self._events.append
        deflate = self.deflate
        rsv = self._rsv
        # The short path's frames: FIN, no RSV bit, masked as this side expects (§5.1),
        # and a length under 126 (one byte, §5.2) within max_size.
        key_size = 4 if masked else 0
        mask_bit = 0x80 if masked else 0
        small = 125 if self.max_size is None else min(125, self.max_size)
        while pos < end and not self._discarding:
            if self._frame_remaining:
                pos = self._consume_payload(buffer, pos)
                continue
            first = buffer[pos]
            if (first == 0x81 or first == 0x82) and not self._message_opcode and pos + 1 < end:
                # The short path: a whole small text or binary message in one frame, the
                # most frequent frame by far, with every test that parse_header makes on it.
                length = buffer[pos + 1] ^ mask_bit
                start = pos + 2 + key_size
                stop = start + length
                if length <= small and stop <= end:
                    if masked:
                        payload = (
                            _from_bytes(buffer[start:stop])
                            ^ unpack_key(buffer, pos + 2)[0] * SPREAD[length] >> SHIFT[length]
                        ).to_bytes(length)
                    else:
                        payload = bytes(buffer[start:stop])
                    pos = stop
                    if first == 0x81:
                        try:
                            append(payload.decode())
                        except UnicodeDecodeError as exc:
                            raise InvalidPayloadData("invalid UTF-8 in text message") from exc
                    else:
                        append(payload)
                    continue
            max_size = self.max_size
            if max_size is not None:
                if deflate is not None and (self._inflation is not None or buffer[pos] & 0x40):
                    # RFC 7692: max_size bounds a compressed message once inflated,
                    # which _inflate_* check; its frames may be longer, by at most
                    # zlib's deflateBound() for data that deflate cannot shrink.
                    max_size += (max_size >> 3) + (max_size >> 6) + 64
                max_size -= self._message_size
            try:
                header = parse_header(buffer, pos, masked, max_size, rsv)
            except PayloadTooBig:
                # The limit, not what was left of it for this fragment.
                raise PayloadTooBig(f"message over {self.max_size} bytes") from None
            if header is None:
                break
            opcode, fin, length, start = header
            stop = start + length
            if stop <= end and (
                opcode >= 0x8 or (fin and not self._message_opcode and opcode is not _CONT)
            ):
                # Fast path: a whole control frame or unfragmented message is here.
                data = unmask_payload(buffer, start, stop) if masked else buffer[start:stop]
                # RFC 7692 §6.1: RSV1 marks a compressed message (parse_header
                # refused it on control frames); §7.2.2: inflate before the UTF-8 check.
                if deflate is not None and buffer[pos] & 0x40:
                    data = self._inflate_whole(deflate, data)
                pos = stop
                if opcode is _TEXT:
                    try:
                        append(data.decode())
                    except UnicodeDecodeError as exc:
                        raise InvalidPayloadData("invalid UTF-8 in text message") from exc
                elif opcode is _BINARY:
                    append(data if type(data) is bytes else bytes(data))
                else:
                    self._receive_control(opcode, bytes(data))
            elif opcode >= 0x8:
                break  # Control frames are short: wait for the whole of it.
            else:
                # A fragment, or a frame still arriving: its payload is taken as
                # it comes (even when empty, since it may end the message).
                key = bytes(buffer[start - 4 : start]) if masked else None
                compressed = deflate is not None and bool(buffer[pos] & 0x40)
                self._start_frame(opcode, fin, length, key, compressed)
                pos = self._consume_payload(buffer, start)
        return pos

    def _inflate_whole(self, deflate: PerMessageDeflate, data: BytesLike) -> bytes:
        """Inflate a message that came in one frame, within ``max_size`` (RFC 7692 §7.2.2)."""
        try:
            return deflate.inflate(data, self.max_size)
        except PayloadTooBig:
            raise PayloadTooBig(f"message over {self.max_size} bytes once inflated") from None

    def _start_frame(
        self, opcode: Opcode, fin: bool, length: int, mask: bytes | None, compressed: bool
    ) -> None:
        """Begin a data frame that starts or continues a message (RFC 6455 §5.4)."""
        if opcode is Opcode.CONT:
            if not self._message_opcode:
                raise ProtocolError("unexpected continuation frame")
            # RFC 7692 §6.1: RSV1 is set on the first frame only.
            if compressed:
                raise ProtocolError("RSV1 set on a continuation frame")
        else:
            if self._message_opcode:
                raise ProtocolError("expected a continuation frame")
            self._message_opcode = opcode
            if compressed:
                assert self.deflate is not None
                self._inflation = self.deflate.start(self.max_size)
            if opcode is Opcode.TEXT:
                self._decoder = _Utf8Decoder()
                self._message_text = []
            else:
                self._decoder = None
                self._message_data = bytearray()
        self._message_size += length
        self._frame_length = length
        self._frame_remaining = length
        self._frame_fin = fin
        self._frame_mask = mask

    def _consume_payload(self, buffer: bytearray, pos: int) -> int:
        """Take what has arrived of the current data frame's payload.

        Text is checked as it arrives, so a message whose beginning is already
        invalid UTF-8 fails without waiting for the rest (RFC 6455 §8.1).
        """
        take = min(self._frame_remaining, len(buffer) - pos)
        chunk = buffer[pos : pos + take]
        mask = self._frame_mask
        data: BytesLike = chunk
        if mask is not None:
            # The key applies from the frame's first payload byte: rotate it by
            # the number of bytes already consumed (RFC 6455 §5.3).
            offset = (self._frame_length - self._frame_remaining) % 4
            data = apply_mask(chunk, mask[offset:] + mask[:offset])
        self._frame_remaining -= take
        final = self._frame_fin and not self._frame_remaining
        inflation = self._inflation
        if inflation is not None:
            data = self._inflate_part(inflation, data, final)
        decoder = self._decoder
        if decoder is not None:
            try:
                text = decoder.decode(data, final)
            except UnicodeDecodeError as exc:
                raise InvalidPayloadData("invalid UTF-8 in text message") from exc
            # CPython's decoder waits for a third byte before refusing ED A0-BF,
            # the start of a UTF-16 surrogate, which is never valid UTF-8.
            pending = decoder.getstate()[0]
            if len(pending) == 2 and pending[0] == 0xED and pending[1] >= 0xA0:
                raise InvalidPayloadData("invalid UTF-8 in text message")
            parts = self._message_text
            assert parts is not None
            if parts and len(text) < _SMALL_PART and len(parts[-1]) < _SMALL_PART:
                parts[-1] += text  # copies at most _SMALL_PART characters
            else:
                parts.append(text)
        else:
            assert self._message_data is not None
            self._message_data += data
        if final:
            if decoder is not None:
                assert self._message_text is not None
                message: str | bytes = "".join(self._message_text)
                self._message_text = None
            else:
                assert self._message_data is not None
                message = bytes(self._message_data)
                self._message_data = None
            self._events.append(message)
            self._message_opcode = 0
            self._message_size = 0
            self._decoder = None
            self._inflation = None
        if not self._frame_remaining:
            self._frame_mask = None
        return pos + take

    def _inflate_part(self, inflation: Inflation, data: BytesLike, final: bool) -> bytes:
        """Inflate a piece of a compressed message in fragments (RFC 7692 §7.2.2)."""
        try:
            output = inflation.feed(data)
            if final:
                rest = inflation.finish()
                if rest:
                    output += rest
        except PayloadTooBig:
            raise PayloadTooBig(f"message over {self.max_size} bytes once inflated") from None
        return output

    def _receive_control(self, opcode: Opcode, data: bytes) -> None:
        """Handle a ping, pong or close frame (RFC 6455 §5.5)."""
        if opcode is Opcode.PING:
            self._events.append(Ping(data))
            # RFC 6455 §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST
            # send a Pong frame in response, unless it already received a Close
            # frame." We also stay quiet once we have sent ours.
            if self.state is State.OPEN:
                self._output.append(serialize_frame(Opcode.PONG, data, mask=self._mask))
        elif opcode is Opcode.PONG:
            self._events.append(Pong(data))
        else:
            close = Close.parse(data)
            self.close_rcvd = close
            self._events.append(close)
            if self.state is State.OPEN:
                self.close_initiator = Side.CLIENT if self.side is Side.SERVER else Side.SERVER
                # RFC 6455 §5.5.1: answer with a close frame; echoing the code
                # (but not the reason) tells the peer which close we confirm.
                self._send_close(Close(close.code))
            # RFC 6455 §5.5.1: nothing may follow a close frame.
            self._discarding = True
            self._buffer.clear()
            # RFC 6455 §7.1.1: the server closes TCP first once both close
            # frames have crossed; the client waits for it.
            if self.side is Side.SERVER:
                self.send_eof()

    def receive_eof(self) -> None:
        """The peer closed its side of TCP (RFC 6455 §7.1.1)."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._discarding = True
        self._buffer.clear()
        # A client answers the server's TCP close with its own (§7.1.1).
        if not self.eof_sent:
            self.send_eof()

    def events_received(self) -> list[Event]:
        """Return the events received since the last call, oldest first."""
        events = self._events
        self._events = []
        return events

    # Sending

    def data_to_send(self) -> list[bytes]:
        """Return the bytes to write since the last call; ``b""`` asks to close TCP."""
        output = self._output
        self._output = []
        return output

    def send_text(self, data: str | BytesLike) -> None:
        """Send a text message; ``bytes`` must already be UTF-8 (RFC 6455 §5.6)."""
        payload = data.encode() if isinstance(data, str) else data
        if len(payload) <= self._short_send and self.state is _OPEN:
            self._output.append(_SHORT_TEXT_HEADERS[len(payload)] + payload)
        else:
            self._send_message(_TEXT, payload)

    def send_binary(self, data: BytesLike) -> None:
        """Send a binary message (RFC 6455 §5.6)."""
        if len(data) <= self._short_send and self.state is _OPEN:
            self._output.append(_SHORT_BINARY_HEADERS[len(data)] + data)
        else:
            self._send_message(_BINARY, data)

    def _send_message(self, opcode: int, data: BytesLike) -> None:
        if self.state is not _OPEN:
            self._check_open()
        deflate = self.deflate
        if deflate is not None:
            compressed = deflate.compress(data)
            if compressed is not None:
                # RFC 7692 §6.1: RSV1 on the first frame of a compressed message.
                opcode |= 0x40
                data = compressed
        size = self.max_frame_size
        if size is None or len(data) <= size:
            self._send_frame(opcode, data, fin=True)
            return
        # RFC 6455 §5.4: the first fragment carries the opcode, the rest are
        # continuations; text may be split inside a code point.
        view = memoryview(data)
        last = len(data) - size
        for offset in range(0, len(data), size):
            self._send_frame(
                opcode if offset == 0 else Opcode.CONT,
                view[offset : offset + size],
                fin=offset >= last,
            )

    def _send_frame(self, opcode: int, data: BytesLike, *, fin: bool) -> None:
        if self._mask:
            self._output.append(serialize_frame(opcode, data, fin=fin, mask=True))
            return
        # RFC 6455 §5.1: a server never masks, so the payload goes as it is after its header.
        header = frame_header(opcode, len(data), fin=fin)
        if len(data) > _COPY_LIMIT:
            self._output.append(header)
            self._output.append(data if isinstance(data, bytes) else bytes(data))
        else:
            self._output.append(header + data)

    def send_encoded(self, frame: bytes) -> None:
        """Send a frame encoded with :func:`frames.serialize_frame` ahead of time.

        A server that sends one message to many clients encodes it once; only
        unmasked (server) frames can be shared, since a client masks each frame
        with its own key.
        """
        if self._mask:
            raise InvalidState("a client cannot share encoded frames: each one is masked")
        self._check_open()
        self._output.append(frame)

    def send_prepared(self, message: PreparedMessage) -> None:
        """Send a message prepared once for many server connections.

        The connection takes the frame that fits what it negotiated (RFC 7692:
        plain, or compressed once for every connection with the same
        parameters), or compresses the message itself if it keeps a context.
        """
        if self._mask:
            raise InvalidState("a client cannot share encoded frames: each one is masked")
        if self.state is not _OPEN:
            self._check_open()
        deflate = self.deflate
        if deflate is None:
            frame: bytes | None = message.frame
        elif deflate.shared_key is message.last_key is not None:
            frame = message.last_frame  # the usual case of a broadcast: one test
        else:
            frame = message.frame_for(deflate)
        if frame is None:
            self._send_message(message.opcode, message.payload)
        else:
            self._output.append(frame)

    def send_ping(self, data: BytesLike = b"") -> None:
        """Send a ping (RFC 6455 §5.5.2); at most 125 bytes."""
        self._send_control(Opcode.PING, data)

    def send_pong(self, data: BytesLike = b"") -> None:
        """Send an unsolicited pong, e.g. as a heartbeat (RFC 6455 §5.5.3)."""
        self._send_control(Opcode.PONG, data)

    def _send_control(self, opcode: Opcode, data: BytesLike) -> None:
        if len(data) > 125:
            raise ValueError("control frame payload over 125 bytes")
        self._check_open()
        self._output.append(serialize_frame(opcode, data, mask=self._mask))

    def send_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 §7.1.2).

        Raises:
            ValueError: the code may not be sent (§7.4) or the reason is over 123 bytes.
            InvalidState: a close frame was already sent or received.
        """
        if not is_valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent")
        if len(reason.encode()) > 123:
            raise ValueError("close reason over 123 bytes")
        self._check_open()
        self._send_close(Close(code, reason))

    def _send_close(self, close: Close) -> None:
        self._output.append(serialize_frame(Opcode.CLOSE, close.serialize(), mask=self._mask))
        self.close_sent = close
        self.state = State.CLOSING
        if self.close_initiator is None:
            self.close_initiator = self.side

    def send_eof(self) -> None:
        """Half-close TCP: queue the ``b""`` marker for the I/O layer."""
        if not self.eof_sent:
            self.eof_sent = True
            self._output.append(b"")

    def fail(self, code: int, reason: str = "") -> None:
        """_Fail the WebSocket Connection_ (RFC 6455 §7.1.7).

        Sends a close frame with ``code`` if none was sent, stops processing
        input ("An endpoint MUST NOT continue to attempt to process data ...
        after being instructed to _Fail the WebSocket Connection_") and, as a
        server, closes TCP.

        Raises:
            ValueError: ``code`` may not be sent in a close frame (§7.4).
        """
        if not is_valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent")
        if self.state is State.OPEN:
            # Reasons are short by design; keep the close frame within 125 bytes.
            self._send_close(Close(code, reason.encode()[:123].decode(errors="ignore")))
        self._discarding = True
        if self.side is Side.SERVER:
            self.send_eof()

    def close_expected(self) -> bool:
        """Whether the peer should close TCP soon, so a close timer should run.

        True once a close frame was sent or the connection failed: the I/O
        layer waits ``close_timeout`` for the peer, then aborts (§7.1.1).
        """
        return self.state is not _OPEN

    # State

    @property
    def close_code(self) -> int:
        """The code the peer sent: 1005 for none, 1006 without a close frame (§7.1.5)."""
        if self.close_rcvd is None:
            return CloseCode.ABNORMAL_CLOSURE
        return self.close_rcvd.code

    @property
    def close_reason(self) -> str:
        """The reason the peer sent, or "" (RFC 6455 §7.1.6)."""
        return "" if self.close_rcvd is None else self.close_rcvd.reason

    def _check_open(self) -> None:
        if self.state is not _OPEN:
            raise InvalidState(f"connection is {self.state.name}")
