"""Tests for rfc6455.protocol: the sans-I/O state machine, both roles, no sockets.

Each test feeds bytes to a :class:`Protocol`, then checks the events it
produced and the bytes it wants to send (websockets ``tests/test_protocol.py``).
Receiving tests run three ways (the ``mode`` fixture, after h11's
``tests/test_io.py``): all input in one call, one byte per call, and followed
by the start of a ping that must stay buffered without any effect.
"""

from __future__ import annotations

import tracemalloc
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rfc6455.exceptions import InvalidPayloadData, InvalidState, PayloadTooBig, ProtocolError
from rfc6455.frames import (
    Close,
    CloseCode,
    Frame,
    Opcode,
    frame_header,
    parse_frame,
    serialize_frame,
)
from rfc6455.masking import apply_mask
from rfc6455.protocol import _COPY_LIMIT, Event, Ping, Pong, Protocol, Side, State
from tests.rfc6455.strategies import (
    KEY,
    URANDOM,
    Stream,
    chunks,
    split,
    streams,
    utf8ish,
)

# The start of a ping as the peer of each side sends it: the server still
# waits for the masking key, the client for the payload.
PARTIAL_PING = {Side.SERVER: b"\x89\x85\x37\xfa", Side.CLIENT: b"\x89\x05He"}

# The marker that data_to_send() uses to ask for a TCP half-close.
EOF = b""

RESERVED_OPCODES = [*range(0x3, 0x8), *range(0xB, 0x10)]


@pytest.fixture(params=list(Side), ids=lambda side: side.value)
def side(request: pytest.FixtureRequest) -> Side:
    return Side(request.param)


def other(side: Side) -> Side:
    return Side.CLIENT if side is Side.SERVER else Side.SERVER


def incoming(
    side: Side, opcode: int, data: bytes = b"", *, fin: bool = True, rsv: int = 0
) -> bytes:
    """A frame as the peer of ``side`` sends it: masked with KEY if ``side`` is the server."""
    key = KEY if side is Side.SERVER else None
    header = bytearray(frame_header(opcode, len(data), fin=fin, mask_key=key))
    header[0] |= rsv
    return bytes(header) + (data if key is None else apply_mask(data, key))


def close_frame(side: Side, code: int, reason: bytes = b"") -> bytes:
    return incoming(side, Opcode.CLOSE, code.to_bytes(2, "big") + reason)


def receive(proto: Protocol, data: bytes, mode: str) -> list[Event]:
    """Feed ``data`` to ``proto`` in the given mode and return the events."""
    if mode == "whole":
        proto.receive_data(data)
    elif mode == "bytewise":
        for i in range(len(data)):
            proto.receive_data(data[i : i + 1])
    else:
        proto.receive_data(data + PARTIAL_PING[proto.side])
    return proto.events_received()


def sent(proto: Protocol) -> list[Frame | bytes]:
    """What ``proto`` wants to send, parsed back into frames; EOF for a half-close."""
    out: list[Frame | bytes] = []
    buf = b""
    for data in [*proto.data_to_send(), None]:
        if data:
            buf += data
            continue
        pos = 0
        while pos < len(buf):
            result = parse_frame(buf, pos, mask=proto.side is Side.CLIENT)
            assert result is not None, "incomplete frame in data_to_send()"
            frame, pos = result
            out.append(frame)
        buf = b""
        if data is not None:
            out.append(EOF)
    return out


def error(events: list[Event], kind: type[ProtocolError] = ProtocolError) -> ProtocolError:
    """Check that ``events`` ends with the one error, of exactly type ``kind``."""
    assert events, "no events"
    err = events[-1]
    assert type(err) is kind, events
    assert not any(isinstance(event, ProtocolError) for event in events[:-1])
    return err


def assert_fails(proto: Protocol, data: bytes, mode: str, code: int = 1002) -> ProtocolError:
    """Feeding ``data`` must produce exactly one event: an error with ``code``."""
    events = receive(proto, data, mode)
    assert len(events) == 1, events
    err = events[0]
    assert isinstance(err, ProtocolError)
    assert err.close_code == code
    # Nothing is sent until the application fails the connection.
    assert proto.data_to_send() == []
    return err


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


def transfer(src: Protocol, dst: Protocol) -> None:
    """Deliver what ``src`` sends to ``dst``, EOF included."""
    for data in src.data_to_send():
        if data:
            dst.receive_data(data)
        else:
            dst.receive_eof()


# Receiving messages.


def test_receive_text(side: Side, mode: str) -> None:
    proto = Protocol(side)
    assert receive(proto, incoming(side, Opcode.TEXT, "café".encode()), mode) == ["café"]
    assert proto.data_to_send() == []


def test_receive_binary(side: Side, mode: str) -> None:
    proto = Protocol(side)
    assert receive(proto, incoming(side, Opcode.BINARY, b"\x00\xff"), mode) == [b"\x00\xff"]
    assert proto.data_to_send() == []


@pytest.mark.parametrize("length", [0, 16, 511, 512, 1024, 70000])
def test_received_binary_and_control_data_are_bytes(side: Side, length: int) -> None:
    # Whatever the unmasking path, the application gets bytes, never a bytearray.
    proto = Protocol(side)
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    proto.receive_data(
        incoming(side, Opcode.BINARY, payload) + incoming(side, Opcode.PING, payload[:125])
    )
    message, ping = proto.events_received()
    assert type(message) is bytes
    assert message == payload
    assert isinstance(ping, Ping)
    assert type(ping.data) is bytes


def test_receive_empty_messages(side: Side, mode: str) -> None:
    proto = Protocol(side)
    data = incoming(side, Opcode.TEXT) + incoming(side, Opcode.BINARY)
    assert receive(proto, data, mode) == ["", b""]


def test_receive_several_messages_in_one_chunk(side: Side, mode: str) -> None:
    proto = Protocol(side)
    data = b"".join(incoming(side, Opcode.TEXT, str(i).encode()) for i in range(5))
    assert receive(proto, data, mode) == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_receive_bytes_like(side: Side, kind: type) -> None:
    proto = Protocol(side)
    proto.receive_data(kind(incoming(side, Opcode.TEXT, b"Hello")))
    assert proto.events_received() == ["Hello"]


def test_receive_nothing(side: Side) -> None:
    proto = Protocol(side)
    proto.receive_data(b"")
    assert proto.events_received() == []
    assert proto.data_to_send() == []


def test_events_are_returned_once(side: Side) -> None:
    proto = Protocol(side)
    proto.receive_data(incoming(side, Opcode.TEXT, b"Hello"))
    assert proto.events_received() == ["Hello"]
    assert proto.events_received() == []


# RFC 6455 §5.7 examples, byte for byte, both directions.


def test_server_receives_rfc_masked_text(mode: str) -> None:
    proto = Protocol(Side.SERVER)
    assert receive(proto, bytes.fromhex("81 85 37 fa 21 3d 7f 9f 4d 51 58"), mode) == ["Hello"]


def test_client_receives_rfc_unmasked_text(mode: str) -> None:
    proto = Protocol(Side.CLIENT)
    assert receive(proto, bytes.fromhex("81 05 48 65 6c 6c 6f"), mode) == ["Hello"]


def test_client_receives_rfc_fragmented_text(mode: str) -> None:
    proto = Protocol(Side.CLIENT)
    assert receive(proto, bytes.fromhex("01 03 48 65 6c 80 02 6c 6f"), mode) == ["Hello"]


def test_client_receives_rfc_unmasked_ping(mode: str, urandom: mock.Mock) -> None:
    proto = Protocol(Side.CLIENT)
    assert receive(proto, bytes.fromhex("89 05 48 65 6c 6c 6f"), mode) == [Ping(b"Hello")]
    # The answer is the §5.7 masked pong.
    assert proto.data_to_send() == [bytes.fromhex("8a 85 37 fa 21 3d 7f 9f 4d 51 58")]


def test_server_receives_rfc_masked_pong(mode: str) -> None:
    proto = Protocol(Side.SERVER)
    wire = bytes.fromhex("8a 85 37 fa 21 3d 7f 9f 4d 51 58")
    assert receive(proto, wire, mode) == [Pong(b"Hello")]
    assert proto.data_to_send() == []


def test_client_receives_rfc_binary_256_bytes(mode: str) -> None:
    data = bytes(range(256))
    proto = Protocol(Side.CLIENT)
    assert receive(proto, bytes.fromhex("82 7E 01 00") + data, mode) == [data]


def test_client_receives_rfc_binary_65536_bytes() -> None:
    data = bytes(range(256)) * 256
    proto = Protocol(Side.CLIENT)
    wire = bytes.fromhex("82 7F 00 00 00 00 00 01 00 00") + data
    for mode in ("whole", "trailing"):
        assert receive(proto, wire, mode) == [data]


def test_client_sends_rfc_masked_text(urandom: mock.Mock) -> None:
    proto = Protocol(Side.CLIENT)
    proto.send_text("Hello")
    assert proto.data_to_send() == [bytes.fromhex("81 85 37 fa 21 3d 7f 9f 4d 51 58")]


def test_server_sends_rfc_unmasked_text() -> None:
    proto = Protocol(Side.SERVER)
    proto.send_text("Hello")
    assert proto.data_to_send() == [bytes.fromhex("81 05 48 65 6c 6c 6f")]


def test_server_sends_rfc_fragmented_text() -> None:
    proto = Protocol(Side.SERVER, max_frame_size=3)
    proto.send_text("Hello")
    assert proto.data_to_send() == [bytes.fromhex("01 03 48 65 6c"), bytes.fromhex("80 02 6c 6f")]


def test_server_sends_rfc_unmasked_ping() -> None:
    proto = Protocol(Side.SERVER)
    proto.send_ping(b"Hello")
    assert proto.data_to_send() == [bytes.fromhex("89 05 48 65 6c 6c 6f")]


def test_client_sends_rfc_masked_pong(urandom: mock.Mock) -> None:
    proto = Protocol(Side.CLIENT)
    proto.send_pong(b"Hello")
    assert proto.data_to_send() == [bytes.fromhex("8a 85 37 fa 21 3d 7f 9f 4d 51 58")]


def test_server_sends_rfc_binary_256_bytes() -> None:
    data = bytes(range(256))
    proto = Protocol(Side.SERVER)
    proto.send_binary(data)
    assert proto.data_to_send() == [bytes.fromhex("82 7E 01 00") + data]


def test_server_sends_rfc_binary_65536_bytes() -> None:
    data = bytes(range(256)) * 256
    proto = Protocol(Side.SERVER)
    proto.send_binary(data)
    # Over the copy limit: the header and the payload go out separately.
    assert proto.data_to_send() == [bytes.fromhex("82 7F 00 00 00 00 00 01 00 00"), data]


# Lengths (RFC 6455 §5.2).


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_receive_lengths(side: Side, length: int) -> None:
    data = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    wire = incoming(side, Opcode.BINARY, data)
    # One byte at a time is too slow for the longest frames: cut in 7-byte pieces instead.
    for pieces in ([wire], split(wire, list(range(0, len(wire), 7)))):
        proto = Protocol(side)
        for piece in pieces:
            proto.receive_data(piece)
        assert proto.events_received() == [data]


@pytest.mark.parametrize("length", [125, 126, 65535, 65536])
def test_receive_lengths_bytewise(side: Side, length: int) -> None:
    proto = Protocol(side)
    data = b"x" * length
    assert receive(proto, incoming(side, Opcode.BINARY, data), "bytewise") == [data]


def test_receive_length_msb_set(side: Side, mode: str) -> None:
    header = bytearray(frame_header(Opcode.BINARY, 2**63 + 1, mask_key=KEY))
    if side is Side.CLIENT:
        header[1] &= 0x7F
        del header[-4:]
    err = assert_fails(Protocol(side, max_size=None), bytes(header), mode)
    assert "most significant bit" in str(err)


@pytest.mark.parametrize("length", [0, 125, 65535])
def test_receive_length_not_minimal(side: Side, length: int, mode: str) -> None:
    wire = bytearray(frame_header(Opcode.BINARY, 65536, mask_key=KEY))
    if length < 126:
        wire[1:4] = bytes([0xFE]) + length.to_bytes(2, "big")
        del wire[4:10]
    else:
        wire[2:10] = length.to_bytes(8, "big")
    if side is Side.CLIENT:
        wire[1] &= 0x7F
        del wire[-4:]
    wire += bytes(length)
    err = assert_fails(Protocol(side), bytes(wire), mode)
    assert "minimally" in str(err)


# Masking (RFC 6455 §5.1, §5.3).


def test_server_receives_unmasked_frame(mode: str) -> None:
    err = assert_fails(Protocol(Side.SERVER), incoming(Side.CLIENT, Opcode.TEXT, b"Hello"), mode)
    assert "masking" in str(err)


def test_client_receives_masked_frame(mode: str) -> None:
    err = assert_fails(Protocol(Side.CLIENT), incoming(Side.SERVER, Opcode.TEXT, b"Hello"), mode)
    assert "masking" in str(err)


def test_client_masks_each_frame_with_fresh_key() -> None:
    keys = [bytes([i] * 4) for i in range(1, 7)]
    proto = Protocol(Side.CLIENT)
    with mock.patch(URANDOM, side_effect=keys) as urandom:
        proto.send_text("Hello")
        proto.send_text("Hello")
        proto.send_binary(b"Hello")
        proto.send_ping(b"Hello")
        proto.send_pong(b"Hello")
        proto.send_close(1000, "Hello")
    assert urandom.call_args_list == [mock.call(4)] * 6
    wires = proto.data_to_send()
    assert [wire[2:6] for wire in wires] == keys
    assert len({wire[6:] for wire in wires}) == 6


def test_client_keys_differ_without_patching() -> None:
    proto = Protocol(Side.CLIENT)
    for _ in range(8):
        proto.send_binary(b"same")
    # 32 random bits each: a collision among 8 keys has probability under 1e-8.
    assert len({wire[2:6] for wire in proto.data_to_send()}) == 8


def test_client_frames_are_masked(urandom: mock.Mock) -> None:
    proto = Protocol(Side.CLIENT, max_frame_size=2)
    proto.send_text("Hello")
    proto.send_binary(b"x" * (_COPY_LIMIT + 1))
    proto.send_ping()
    proto.send_pong()
    proto.send_close()
    wires = proto.data_to_send()
    assert all(wire[1] & 0x80 for wire in wires)
    assert urandom.call_count == len(wires)


def test_server_frames_are_unmasked(urandom: mock.Mock) -> None:
    proto = Protocol(Side.SERVER, max_frame_size=2)
    proto.send_text("Hello")
    proto.send_binary(b"Hello")
    proto.send_ping()
    proto.send_pong()
    proto.send_close()
    wires = proto.data_to_send()
    assert not any(wire[1] & 0x80 for wire in wires if wire)
    urandom.assert_not_called()


def test_client_pong_is_masked_with_fresh_key() -> None:
    proto = Protocol(Side.CLIENT)
    with mock.patch(URANDOM, side_effect=[b"aaaa", b"bbbb"]):
        proto.receive_data(incoming(Side.CLIENT, Opcode.PING, b"x") * 2)
    assert [wire[2:6] for wire in proto.data_to_send()] == [b"aaaa", b"bbbb"]


# Reserved bits and opcodes (RFC 6455 §5.2).


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10])
def test_receive_reserved_bits(side: Side, rsv: int, mode: str) -> None:
    err = assert_fails(Protocol(side), incoming(side, Opcode.TEXT, b"Hello", rsv=rsv), mode)
    assert "reserved bits" in str(err)


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10])
def test_receive_reserved_bits_on_control_frame(side: Side, rsv: int, mode: str) -> None:
    assert_fails(Protocol(side), incoming(side, Opcode.PING, rsv=rsv), mode)


@pytest.mark.parametrize("opcode", RESERVED_OPCODES)
def test_receive_reserved_opcode(side: Side, opcode: int, mode: str) -> None:
    err = assert_fails(Protocol(side), incoming(side, opcode, b"Hello"), mode)
    assert "reserved opcode" in str(err)


def test_receive_reserved_opcode_after_message(side: Side, mode: str) -> None:
    proto = Protocol(side)
    events = receive(proto, incoming(side, Opcode.TEXT, b"Hi") + incoming(side, 0xB), mode)
    assert events[0] == "Hi"
    assert error(events).close_code == 1002


# Control frames (RFC 6455 §5.5).


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_receive_control_frame_too_long(side: Side, opcode: Opcode, mode: str) -> None:
    err = assert_fails(Protocol(side), incoming(side, opcode, b"\x03\xe8" + b"x" * 124), mode)
    assert "too long" in str(err)


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_receive_control_frame_125_bytes(side: Side, opcode: Opcode, mode: str) -> None:
    data = b"\x03\xe8" + b"x" * 123
    expected = {
        Opcode.CLOSE: Close(1000, "x" * 123),
        Opcode.PING: Ping(data),
        Opcode.PONG: Pong(data),
    }
    assert receive(Protocol(side), incoming(side, opcode, data), mode) == [expected[opcode]]


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_receive_fragmented_control_frame(side: Side, opcode: Opcode, mode: str) -> None:
    err = assert_fails(Protocol(side), incoming(side, opcode, fin=False), mode)
    assert "fragmented control frame" in str(err)


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG])
def test_receive_control_frame_between_fragments(side: Side, opcode: Opcode, mode: str) -> None:
    proto = Protocol(side)
    data = (
        incoming(side, Opcode.TEXT, b"Hel", fin=False)
        + incoming(side, opcode, b"ctl")
        + incoming(side, Opcode.CONT, b"l", fin=False)
        + incoming(side, opcode, b"")
        + incoming(side, Opcode.CONT, b"o")
    )
    event = Ping if opcode is Opcode.PING else Pong
    assert receive(proto, data, mode) == [event(b"ctl"), event(b""), "Hello"]
    pongs = [Frame(Opcode.PONG, b"ctl"), Frame(Opcode.PONG, b"")]
    assert sent(proto) == (pongs if opcode is Opcode.PING else [])


def test_receive_control_frame_between_binary_fragments(side: Side, mode: str) -> None:
    proto = Protocol(side)
    data = (
        incoming(side, Opcode.BINARY, b"\x00", fin=False)
        + incoming(side, Opcode.PING, b"?")
        + incoming(side, Opcode.CONT, b"\xff")
    )
    assert receive(proto, data, mode) == [Ping(b"?"), b"\x00\xff"]


def test_server_receives_ping(mode: str) -> None:
    proto = Protocol(Side.SERVER)
    assert receive(proto, incoming(Side.SERVER, Opcode.PING, b"Hello"), mode) == [Ping(b"Hello")]
    assert proto.data_to_send() == [b"\x8a\x05Hello"]


def test_client_receives_ping(mode: str) -> None:
    proto = Protocol(Side.CLIENT)
    assert receive(proto, incoming(Side.CLIENT, Opcode.PING, b"Hello"), mode) == [Ping(b"Hello")]
    assert sent(proto) == [Frame(Opcode.PONG, b"Hello")]


def test_receive_empty_ping(side: Side, mode: str) -> None:
    proto = Protocol(side)
    assert receive(proto, incoming(side, Opcode.PING), mode) == [Ping(b"")]
    assert sent(proto) == [Frame(Opcode.PONG, b"")]


def test_receive_ping_125_bytes_answered_in_full(side: Side) -> None:
    proto = Protocol(side)
    data = bytes(range(125))
    proto.receive_data(incoming(side, Opcode.PING, data))
    assert sent(proto) == [Frame(Opcode.PONG, data)]


def test_receive_unsolicited_pong(side: Side, mode: str) -> None:
    proto = Protocol(side)
    assert receive(proto, incoming(side, Opcode.PONG, b"Hello"), mode) == [Pong(b"Hello")]
    assert proto.data_to_send() == []


def test_send_ping_and_pong(side: Side) -> None:
    proto = Protocol(side)
    proto.send_ping(b"ping")
    proto.send_ping()
    proto.send_pong(bytearray(b"pong"))
    proto.send_pong(b"x" * 125)
    assert sent(proto) == [
        Frame(Opcode.PING, b"ping"),
        Frame(Opcode.PING, b""),
        Frame(Opcode.PONG, b"pong"),
        Frame(Opcode.PONG, b"x" * 125),
    ]


@pytest.mark.parametrize("method", ["send_ping", "send_pong"])
def test_send_control_frame_too_long(side: Side, method: str) -> None:
    proto = Protocol(side)
    with pytest.raises(ValueError, match="125"):
        getattr(proto, method)(b"x" * 126)
    assert proto.data_to_send() == []


# Fragmentation (RFC 6455 §5.4).


@pytest.mark.parametrize("fin", [True, False])
def test_receive_unexpected_continuation(side: Side, fin: bool, mode: str) -> None:
    err = assert_fails(Protocol(side), incoming(side, Opcode.CONT, b"lo", fin=fin), mode)
    assert "unexpected continuation" in str(err)


def test_receive_continuation_after_complete_message(side: Side, mode: str) -> None:
    proto = Protocol(side)
    data = (
        incoming(side, Opcode.TEXT, b"Hel", fin=False)
        + incoming(side, Opcode.CONT, b"lo")
        + incoming(side, Opcode.CONT, b"!")
    )
    events = receive(proto, data, mode)
    assert events[0] == "Hello"
    assert "unexpected continuation" in str(error(events))


@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
@pytest.mark.parametrize("fin", [True, False])
def test_receive_new_message_inside_fragmented_message(
    side: Side, opcode: Opcode, fin: bool, mode: str
) -> None:
    proto = Protocol(side)
    data = incoming(side, Opcode.TEXT, b"Hel", fin=False) + incoming(side, opcode, b"lo", fin=fin)
    events = receive(proto, data, mode)
    assert len(events) == 1
    assert "expected a continuation" in str(error(events))


def test_receive_fragments_reassembled_in_order(side: Side, mode: str) -> None:
    proto = Protocol(side)
    parts = [b"one ", b"two ", b"three ", b"four"]
    data = b"".join(
        incoming(side, Opcode.BINARY if i == 0 else Opcode.CONT, part, fin=i == 3)
        for i, part in enumerate(parts)
    )
    assert receive(proto, data, mode) == [b"one two three four"]


def test_receive_fragmented_text(side: Side, mode: str) -> None:
    proto = Protocol(side)
    data = (
        incoming(side, Opcode.TEXT, "κό".encode(), fin=False)
        + incoming(side, Opcode.CONT, "σμ".encode(), fin=False)
        + incoming(side, Opcode.CONT, "ε".encode())
    )
    assert receive(proto, data, mode) == ["κόσμε"]


def test_receive_zero_length_fragments(side: Side, mode: str) -> None:
    proto = Protocol(side)
    data = (
        incoming(side, Opcode.TEXT, b"", fin=False)
        + incoming(side, Opcode.CONT, b"", fin=False)
        + incoming(side, Opcode.CONT, b"Hello", fin=False)
        + incoming(side, Opcode.CONT, b"")  # a zero-length final fragment
    )
    assert receive(proto, data, mode) == ["Hello"]


def test_receive_message_of_zero_length_fragments(side: Side, mode: str) -> None:
    proto = Protocol(side)
    data = incoming(side, Opcode.BINARY, b"", fin=False) + incoming(side, Opcode.CONT, b"")
    data += incoming(side, Opcode.TEXT, b"", fin=False) + incoming(side, Opcode.CONT, b"")
    assert receive(proto, data, mode) == [b"", ""]


def test_receive_messages_after_fragmented_message(side: Side, mode: str) -> None:
    proto = Protocol(side)
    data = (
        incoming(side, Opcode.TEXT, b"a", fin=False)
        + incoming(side, Opcode.CONT, b"b")
        + incoming(side, Opcode.BINARY, b"c")
        + incoming(side, Opcode.BINARY, b"d", fin=False)
        + incoming(side, Opcode.CONT, b"e")
        + incoming(side, Opcode.TEXT, b"f")
    )
    assert receive(proto, data, mode) == ["ab", b"c", b"de", "f"]


def test_receive_masked_fragment_in_pieces() -> None:
    # The masking key restarts at every frame and runs on across the pieces of one.
    proto = Protocol(Side.SERVER)
    data = incoming(Side.SERVER, Opcode.BINARY, bytes(range(10)), fin=False)
    data += incoming(Side.SERVER, Opcode.CONT, bytes(range(10, 17)))
    for piece in split(data, [3, 7, 9, 13, 17, 20, 25]):
        proto.receive_data(piece)
    assert proto.events_received() == [bytes(range(17))]


# UTF-8 (RFC 6455 §5.6, §8.1).


@pytest.mark.parametrize(
    "payload", [b"\xff", b"caf\xe9", b"\xed\xa0\x80", b"\xe2\x82", b"\xc0\xaf"]
)
def test_receive_invalid_utf8(side: Side, payload: bytes, mode: str) -> None:
    err = assert_fails(Protocol(side), incoming(side, Opcode.TEXT, payload), mode, code=1007)
    assert isinstance(err, InvalidPayloadData)


def test_receive_invalid_utf8_in_continuation(side: Side, mode: str) -> None:
    proto = Protocol(side)
    data = incoming(side, Opcode.TEXT, b"ok", fin=False) + incoming(side, Opcode.CONT, b"\xff")
    assert error(receive(proto, data, mode), InvalidPayloadData).close_code == 1007


def test_receive_truncated_utf8_at_end_of_message(side: Side, mode: str) -> None:
    proto = Protocol(side)
    data = incoming(side, Opcode.TEXT, b"\xe2\x82", fin=False) + incoming(side, Opcode.CONT)
    assert error(receive(proto, data, mode), InvalidPayloadData).close_code == 1007


def test_receive_binary_is_not_utf8_checked(side: Side, mode: str) -> None:
    proto = Protocol(side)
    data = incoming(side, Opcode.BINARY, b"\xff", fin=False) + incoming(side, Opcode.CONT, b"\xfe")
    assert receive(proto, data, mode) == [b"\xff\xfe"]


def test_receive_invalid_first_fragment_fails_before_rest_arrives(side: Side, mode: str) -> None:
    proto = Protocol(side)
    events = receive(
        proto, incoming(side, Opcode.TEXT, "κόσμε".encode() + b"\xff", fin=False), mode
    )
    assert error(events, InvalidPayloadData).close_code == 1007
    # The rest is ignored (RFC 6455 §7.1.7).
    proto.receive_data(incoming(side, Opcode.CONT, b"edited"))
    assert proto.events_received() == []


def test_receive_invalid_middle_fragment_fails_before_rest_arrives(side: Side) -> None:
    # Autobahn 6.4.1: the second fragment is U+110000, out of range.
    proto = Protocol(side)
    proto.receive_data(incoming(side, Opcode.TEXT, "κόσμε".encode(), fin=False))
    assert proto.events_received() == []
    proto.receive_data(incoming(side, Opcode.CONT, b"\xf4\x90\x80\x80", fin=False))
    assert error(proto.events_received(), InvalidPayloadData).close_code == 1007


def test_receive_invalid_sequence_across_fragments_fails_early(side: Side) -> None:
    # Autobahn 6.4.2: F4 ends the first fragment, 90 (making it invalid) starts the second.
    proto = Protocol(side)
    proto.receive_data(incoming(side, Opcode.TEXT, "κόσμε".encode() + b"\xf4", fin=False))
    assert proto.events_received() == []
    proto.receive_data(incoming(side, Opcode.CONT, b"\x90", fin=False))
    assert error(proto.events_received(), InvalidPayloadData).close_code == 1007


@pytest.mark.parametrize("second", [0xA0, 0xBF])
def test_receive_surrogate_prefix_fails_before_rest_arrives(side: Side, second: int) -> None:
    # ED A0..BF starts a UTF-16 surrogate: no third byte can make it valid UTF-8.
    proto = Protocol(side)
    proto.receive_data(incoming(side, Opcode.TEXT, b"ab\xed" + bytes([second]), fin=False))
    assert error(proto.events_received(), InvalidPayloadData).close_code == 1007


def test_receive_ed_prefix_below_surrogates_waits(side: Side) -> None:
    # ED 80..9F is a valid prefix (U+D000..U+D7FF): wait for the third byte.
    proto = Protocol(side)
    proto.receive_data(incoming(side, Opcode.TEXT, b"\xed\x9f", fin=False))
    assert proto.events_received() == []
    proto.receive_data(incoming(side, Opcode.CONT, b"\xbf"))
    assert proto.events_received() == ["\ud7ff"]


def test_receive_code_point_split_across_fragments(side: Side, mode: str) -> None:
    proto = Protocol(side)
    euro = "€".encode()  # e2 82 ac
    data = (
        incoming(side, Opcode.TEXT, b"1" + euro[:1], fin=False)
        + incoming(side, Opcode.CONT, euro[1:2], fin=False)
        + incoming(side, Opcode.CONT, euro[2:] + "\U0001f600".encode()[:3], fin=False)
        + incoming(side, Opcode.CONT, "\U0001f600".encode()[3:])
    )
    assert receive(proto, data, mode) == ["1€\U0001f600"]


def test_receive_text_frame_checked_as_it_arrives(side: Side) -> None:
    # Autobahn 6.4.3: one frame, its payload delivered in pieces; the invalid
    # piece fails the connection before the frame is complete.
    proto = Protocol(side)
    wire = incoming(side, Opcode.TEXT, "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"edited")
    header = 6 if side is Side.SERVER else 2
    proto.receive_data(wire[: header + 5])
    assert proto.events_received() == []
    proto.receive_data(wire[header + 5 : header + 12])
    assert error(proto.events_received(), InvalidPayloadData).close_code == 1007


def test_receive_text_frame_in_pieces(side: Side) -> None:
    proto = Protocol(side)
    text = "κόσμε €"
    wire = incoming(side, Opcode.TEXT, text.encode())
    pieces = split(wire, list(range(1, len(wire), 3)))
    for piece in pieces[:-1]:
        proto.receive_data(piece)
        assert proto.events_received() == []
    proto.receive_data(pieces[-1])
    assert proto.events_received() == [text]


# Close (RFC 6455 §5.5.1, §7.1, §7.4).


def test_server_receives_close_with_code_and_reason(mode: str) -> None:
    proto = Protocol(Side.SERVER)
    events = receive(proto, close_frame(Side.SERVER, 1001, b"going away"), mode)
    assert events == [Close(1001, "going away")]
    assert proto.close_rcvd == Close(1001, "going away")
    assert proto.close_code == 1001
    assert proto.close_reason == "going away"
    # The reply echoes the code; the server then closes TCP first (§7.1.1).
    assert proto.data_to_send() == [b"\x88\x02\x03\xe9", EOF]
    assert proto.close_sent == Close(1001)
    assert proto.state is State.CLOSING


def test_client_receives_close_with_code_and_reason(mode: str) -> None:
    proto = Protocol(Side.CLIENT)
    events = receive(proto, close_frame(Side.CLIENT, 4000, "é".encode()), mode)
    assert events == [Close(4000, "é")]
    assert (proto.close_code, proto.close_reason) == (4000, "é")
    # The client echoes the code and waits for the server to close TCP.
    assert sent(proto) == [Frame(Opcode.CLOSE, b"\x0f\xa0")]
    assert proto.state is State.CLOSING


def test_server_receives_close_empty(mode: str) -> None:
    proto = Protocol(Side.SERVER)
    assert receive(proto, incoming(Side.SERVER, Opcode.CLOSE), mode) == [Close(1005)]
    assert proto.close_code == CloseCode.NO_STATUS_RCVD
    assert proto.close_reason == ""
    assert proto.data_to_send() == [b"\x88\x00", EOF]


def test_client_receives_close_empty(mode: str) -> None:
    proto = Protocol(Side.CLIENT)
    assert receive(proto, incoming(Side.CLIENT, Opcode.CLOSE), mode) == [Close(1005)]
    assert proto.close_code == CloseCode.NO_STATUS_RCVD
    assert sent(proto) == [Frame(Opcode.CLOSE, b"")]


def test_server_receives_close_one_byte(mode: str) -> None:
    proto = Protocol(Side.SERVER)
    assert_fails(proto, incoming(Side.SERVER, Opcode.CLOSE, b"\x03"), mode)
    assert proto.close_rcvd is None


def test_client_receives_close_one_byte(mode: str) -> None:
    proto = Protocol(Side.CLIENT)
    assert_fails(proto, incoming(Side.CLIENT, Opcode.CLOSE, b"\x03"), mode)
    assert proto.close_rcvd is None


INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]
VALID_CODES = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 4999]


@pytest.mark.parametrize("code", INVALID_CODES)
def test_server_receives_close_invalid_code(code: int, mode: str) -> None:
    err = assert_fails(Protocol(Side.SERVER), close_frame(Side.SERVER, code), mode)
    assert f"invalid close code {code}" in str(err)


@pytest.mark.parametrize("code", INVALID_CODES)
def test_client_receives_close_invalid_code(code: int, mode: str) -> None:
    assert_fails(Protocol(Side.CLIENT), close_frame(Side.CLIENT, code), mode)


@pytest.mark.parametrize("code", VALID_CODES)
def test_server_receives_close_valid_code(code: int) -> None:
    proto = Protocol(Side.SERVER)
    assert receive(proto, close_frame(Side.SERVER, code, b"r"), "whole") == [Close(code, "r")]
    assert proto.data_to_send() == [b"\x88\x02" + code.to_bytes(2, "big"), EOF]


@pytest.mark.parametrize("code", VALID_CODES)
def test_client_receives_close_valid_code(code: int) -> None:
    proto = Protocol(Side.CLIENT)
    assert receive(proto, close_frame(Side.CLIENT, code, b"r"), "whole") == [Close(code, "r")]
    assert sent(proto) == [Frame(Opcode.CLOSE, code.to_bytes(2, "big"))]


def test_server_receives_close_non_utf8_reason(mode: str) -> None:
    proto = Protocol(Side.SERVER)
    err = assert_fails(proto, close_frame(Side.SERVER, 1000, b"\xff"), mode, code=1007)
    assert isinstance(err, InvalidPayloadData)


def test_client_receives_close_non_utf8_reason(mode: str) -> None:
    proto = Protocol(Side.CLIENT)
    err = assert_fails(proto, close_frame(Side.CLIENT, 1000, b"ok\xc3"), mode, code=1007)
    assert isinstance(err, InvalidPayloadData)


def test_server_receives_close_mid_fragmented_message(mode: str) -> None:
    proto = Protocol(Side.SERVER)
    data = incoming(Side.SERVER, Opcode.TEXT, b"Hel", fin=False) + close_frame(Side.SERVER, 1000)
    # The message never completes: only the close is an event.
    assert receive(proto, data, mode) == [Close(1000)]
    assert proto.data_to_send() == [b"\x88\x02\x03\xe8", EOF]
    proto.receive_data(incoming(Side.SERVER, Opcode.CONT, b"lo"))
    assert proto.events_received() == []


def test_client_receives_close_mid_fragmented_message(mode: str) -> None:
    proto = Protocol(Side.CLIENT)
    data = incoming(Side.CLIENT, Opcode.BINARY, b"\x00", fin=False) + close_frame(Side.CLIENT, 1001)
    assert receive(proto, data, mode) == [Close(1001)]
    assert sent(proto) == [Frame(Opcode.CLOSE, b"\x03\xe9")]


def test_server_receives_close_then_ignores_input(mode: str) -> None:
    # RFC 6455 §5.5.1: the close frame is the last one; what follows is discarded.
    proto = Protocol(Side.SERVER)
    data = close_frame(Side.SERVER, 1000) + incoming(Side.SERVER, Opcode.TEXT, b"late")
    assert receive(proto, data, mode) == [Close(1000)]
    proto.receive_data(incoming(Side.SERVER, Opcode.PING, b"late"))
    assert proto.events_received() == []
    assert proto.data_to_send() == [b"\x88\x02\x03\xe8", EOF]


def test_client_receives_close_then_ignores_input(mode: str) -> None:
    proto = Protocol(Side.CLIENT)
    data = close_frame(Side.CLIENT, 1000) + incoming(Side.CLIENT, Opcode.PING, b"late")
    assert receive(proto, data, mode) == [Close(1000)]
    assert sent(proto) == [Frame(Opcode.CLOSE, b"\x03\xe8")]


def test_server_sends_close_with_code_and_reason() -> None:
    proto = Protocol(Side.SERVER)
    assert not proto.close_expected()
    proto.send_close(1001, "bye")
    assert proto.data_to_send() == [b"\x88\x05\x03\xe9bye"]
    assert proto.close_sent == Close(1001, "bye")
    assert proto.state is State.CLOSING
    assert proto.close_expected()
    # Not a close code from the peer yet.
    assert proto.close_code == CloseCode.ABNORMAL_CLOSURE


def test_client_sends_close_with_code_and_reason(urandom: mock.Mock) -> None:
    proto = Protocol(Side.CLIENT)
    proto.send_close(4999, "bye")
    assert proto.data_to_send() == [b"\x88\x85" + KEY + apply_mask(b"\x13\x87bye", KEY)]
    assert proto.state is State.CLOSING
    assert proto.close_expected()


def test_server_sends_close_default_code() -> None:
    proto = Protocol(Side.SERVER)
    proto.send_close()
    assert proto.data_to_send() == [b"\x88\x02\x03\xe8"]


def test_client_sends_close_default_code() -> None:
    proto = Protocol(Side.CLIENT)
    proto.send_close()
    assert sent(proto) == [Frame(Opcode.CLOSE, b"\x03\xe8")]


@pytest.mark.parametrize("code", INVALID_CODES)
def test_server_sends_close_invalid_code(code: int) -> None:
    proto = Protocol(Side.SERVER)
    with pytest.raises(ValueError, match="may not be sent"):
        proto.send_close(code)
    assert proto.state is State.OPEN
    assert proto.data_to_send() == []


@pytest.mark.parametrize("code", INVALID_CODES)
def test_client_sends_close_invalid_code(code: int) -> None:
    proto = Protocol(Side.CLIENT)
    with pytest.raises(ValueError, match="may not be sent"):
        proto.send_close(code)
    assert proto.data_to_send() == []


def test_server_sends_close_reason_too_long() -> None:
    proto = Protocol(Side.SERVER)
    proto_ok = Protocol(Side.SERVER)
    with pytest.raises(ValueError, match="123"):
        proto.send_close(1000, "é" * 62)  # 124 bytes
    proto_ok.send_close(1000, "x" * 123)
    assert proto_ok.data_to_send() == [b"\x88\x7d\x03\xe8" + b"x" * 123]


def test_client_sends_close_reason_too_long() -> None:
    proto = Protocol(Side.CLIENT)
    with pytest.raises(ValueError, match="123"):
        proto.send_close(1000, "x" * 124)
    assert proto.state is State.OPEN


def test_server_sends_close_twice() -> None:
    proto = Protocol(Side.SERVER)
    proto.send_close()
    with pytest.raises(InvalidState):
        proto.send_close()
    assert proto.data_to_send() == [b"\x88\x02\x03\xe8"]


def test_client_sends_close_twice() -> None:
    proto = Protocol(Side.CLIENT)
    proto.send_close()
    with pytest.raises(InvalidState):
        proto.send_close()
    assert len(proto.data_to_send()) == 1


def test_server_sends_close_after_receiving_close() -> None:
    proto = Protocol(Side.SERVER)
    proto.receive_data(close_frame(Side.SERVER, 1000))
    with pytest.raises(InvalidState):
        proto.send_close()


def test_client_sends_close_after_receiving_close() -> None:
    proto = Protocol(Side.CLIENT)
    proto.receive_data(close_frame(Side.CLIENT, 1000))
    with pytest.raises(InvalidState):
        proto.send_close()


SENDS = [
    ("send_text", "late"),
    ("send_text", b"late"),
    ("send_binary", b"late"),
    ("send_ping", b"late"),
    ("send_pong", b"late"),
]


@pytest.mark.parametrize(("method", "data"), SENDS)
def test_server_sends_close_then_data(method: str, data: str | bytes) -> None:
    # RFC 6455 §5.5.1: "the endpoint MUST NOT send any more data frames".
    proto = Protocol(Side.SERVER)
    proto.send_close()
    with pytest.raises(InvalidState, match="CLOSING"):
        getattr(proto, method)(data)
    with pytest.raises(InvalidState):
        proto.send_encoded(b"\x81\x04late")
    assert proto.data_to_send() == [b"\x88\x02\x03\xe8"]


@pytest.mark.parametrize(("method", "data"), SENDS)
def test_client_sends_close_then_data(method: str, data: str | bytes) -> None:
    proto = Protocol(Side.CLIENT)
    proto.send_close()
    with pytest.raises(InvalidState, match="CLOSING"):
        getattr(proto, method)(data)
    assert sent(proto) == [Frame(Opcode.CLOSE, b"\x03\xe8")]


@pytest.mark.parametrize(("method", "data"), SENDS)
def test_server_receives_close_then_sends_data(method: str, data: str | bytes) -> None:
    proto = Protocol(Side.SERVER)
    proto.receive_data(close_frame(Side.SERVER, 1000))
    with pytest.raises(InvalidState):
        getattr(proto, method)(data)
    assert proto.data_to_send() == [b"\x88\x02\x03\xe8", EOF]


@pytest.mark.parametrize(("method", "data"), SENDS)
def test_client_receives_close_then_sends_data(method: str, data: str | bytes) -> None:
    proto = Protocol(Side.CLIENT)
    proto.receive_data(close_frame(Side.CLIENT, 1000))
    with pytest.raises(InvalidState):
        getattr(proto, method)(data)
    assert sent(proto) == [Frame(Opcode.CLOSE, b"\x03\xe8")]


def test_server_sends_close_then_receives_messages() -> None:
    # Until the peer's close arrives, its data is still delivered; pings are
    # not answered any more, since nothing may follow our close frame.
    proto = Protocol(Side.SERVER)
    proto.send_close()
    proto.data_to_send()
    proto.receive_data(
        incoming(Side.SERVER, Opcode.TEXT, b"still")
        + incoming(Side.SERVER, Opcode.PING, b"?")
        + incoming(Side.SERVER, Opcode.PONG, b"!")
    )
    assert proto.events_received() == ["still", Ping(b"?"), Pong(b"!")]
    assert proto.data_to_send() == []


def test_client_sends_close_then_receives_messages() -> None:
    proto = Protocol(Side.CLIENT)
    proto.send_close()
    proto.data_to_send()
    proto.receive_data(incoming(Side.CLIENT, Opcode.BINARY, b"still"))
    proto.receive_data(incoming(Side.CLIENT, Opcode.PING, b"?"))
    assert proto.events_received() == [b"still", Ping(b"?")]
    assert proto.data_to_send() == []


def test_server_sends_close_then_receives_close() -> None:
    proto = Protocol(Side.SERVER)
    proto.send_close(1000, "bye")
    proto.data_to_send()
    proto.receive_data(close_frame(Side.SERVER, 1000))
    assert proto.events_received() == [Close(1000)]
    # Both close frames have crossed: the server closes TCP first (§7.1.1),
    # without a second close frame.
    assert proto.data_to_send() == [EOF]
    assert proto.close_sent == Close(1000, "bye")
    assert proto.close_expected()
    proto.receive_eof()
    assert proto.state is State.CLOSED
    assert proto.data_to_send() == []


def test_client_sends_close_then_receives_close() -> None:
    proto = Protocol(Side.CLIENT)
    proto.send_close(1000, "bye")
    proto.data_to_send()
    proto.receive_data(close_frame(Side.CLIENT, 1000))
    assert proto.events_received() == [Close(1000)]
    # The client waits for the server to close TCP (§7.1.1).
    assert proto.data_to_send() == []
    assert proto.close_expected()
    assert not proto.eof_sent
    proto.receive_eof()
    assert proto.state is State.CLOSED
    assert proto.data_to_send() == [EOF]


def test_server_sends_close_handshake_with_client() -> None:
    server, client = Protocol(Side.SERVER), Protocol(Side.CLIENT)
    server.send_close(1000, "bye")
    transfer(server, client)
    assert client.events_received() == [Close(1000, "bye")]
    transfer(client, server)
    assert server.events_received() == [Close(1000)]
    assert (server.close_code, client.close_code) == (1000, 1000)
    transfer(server, client)  # the server's EOF
    assert client.state is State.CLOSED
    transfer(client, server)  # the client's EOF
    assert server.state is State.CLOSED
    assert server.data_to_send() == client.data_to_send() == []


def test_client_sends_close_handshake_with_server() -> None:
    server, client = Protocol(Side.SERVER), Protocol(Side.CLIENT)
    client.send_close(1001)
    transfer(client, server)
    assert server.events_received() == [Close(1001)]
    assert server.eof_sent
    transfer(server, client)  # the server's close, then its EOF
    assert client.events_received() == [Close(1001)]
    assert client.state is State.CLOSED
    assert client.eof_sent
    transfer(client, server)
    assert server.state is State.CLOSED


def test_server_receives_close_and_then_eof() -> None:
    proto = Protocol(Side.SERVER)
    proto.receive_data(close_frame(Side.SERVER, 1000))
    assert proto.data_to_send() == [b"\x88\x02\x03\xe8", EOF]
    proto.receive_eof()
    assert proto.state is State.CLOSED
    # EOF was already sent: not twice.
    assert proto.data_to_send() == []


def test_client_receives_close_and_then_eof() -> None:
    proto = Protocol(Side.CLIENT)
    proto.receive_data(close_frame(Side.CLIENT, 1000))
    assert EOF not in proto.data_to_send()
    assert not proto.eof_sent
    proto.receive_eof()
    assert proto.data_to_send() == [EOF]
    assert proto.close_code == 1000


def test_server_receives_close_expects_eof() -> None:
    proto = Protocol(Side.SERVER)
    proto.receive_data(close_frame(Side.SERVER, 1000))
    assert proto.close_expected()


def test_client_receives_close_expects_eof() -> None:
    proto = Protocol(Side.CLIENT)
    proto.receive_data(close_frame(Side.CLIENT, 1000))
    assert proto.close_expected()


def test_close_not_expected_while_open(side: Side) -> None:
    proto = Protocol(side)
    proto.send_text("hi")
    proto.receive_data(incoming(side, Opcode.PING))
    assert not proto.close_expected()


# EOF (RFC 6455 §7.1.1, §7.1.5).


def test_server_receives_eof_without_close() -> None:
    proto = Protocol(Side.SERVER)
    proto.receive_eof()
    assert proto.state is State.CLOSED
    assert proto.close_code == CloseCode.ABNORMAL_CLOSURE
    assert proto.close_reason == ""
    assert proto.close_rcvd is None
    assert proto.events_received() == []
    assert proto.data_to_send() == [EOF]


def test_client_receives_eof_without_close() -> None:
    proto = Protocol(Side.CLIENT)
    proto.receive_eof()
    assert proto.state is State.CLOSED
    assert proto.close_code == CloseCode.ABNORMAL_CLOSURE
    assert proto.data_to_send() == [EOF]


def test_receive_eof_mid_message(side: Side) -> None:
    proto = Protocol(side)
    proto.receive_data(incoming(side, Opcode.TEXT, b"Hel", fin=False) + b"\x80")
    proto.receive_eof()
    assert proto.events_received() == []
    assert proto.close_code == 1006


def test_receive_eof_twice(side: Side) -> None:
    proto = Protocol(side)
    proto.receive_eof()
    proto.receive_eof()
    assert proto.data_to_send() == [EOF]


def test_receive_data_after_eof(side: Side) -> None:
    proto = Protocol(side)
    proto.receive_eof()
    proto.receive_data(incoming(side, Opcode.TEXT, b"late"))
    assert proto.events_received() == []


def test_send_after_eof(side: Side) -> None:
    proto = Protocol(side)
    proto.receive_eof()
    with pytest.raises(InvalidState, match="CLOSED"):
        proto.send_text("late")


def test_send_eof_once(side: Side) -> None:
    proto = Protocol(side)
    proto.send_eof()
    proto.send_eof()
    assert proto.data_to_send() == [EOF]
    assert proto.eof_sent


# max_size (RFC 6455 §7.4.1: 1009).


@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_receive_message_too_big_from_header(side: Side, opcode: Opcode) -> None:
    proto = Protocol(side, max_size=10)
    # Only the header: the payload never needs to be buffered.
    proto.receive_data(incoming(side, opcode, b"x" * 11)[:2])
    events = proto.events_received()
    assert isinstance(error(events, PayloadTooBig), PayloadTooBig)
    assert events[0].close_code == CloseCode.MESSAGE_TOO_BIG  # type: ignore[union-attr]


def test_receive_message_too_big_64_bit_header(side: Side) -> None:
    proto = Protocol(side)  # 1 MiB by default
    proto.receive_data(incoming(side, Opcode.BINARY, b"x" * 65536)[:10])
    assert proto.events_received() == []
    proto = Protocol(side)
    key = KEY if side is Side.SERVER else None
    proto.receive_data(frame_header(Opcode.BINARY, 2**40, mask_key=key)[:10])
    error(proto.events_received(), PayloadTooBig)


def test_receive_message_too_big(side: Side, mode: str) -> None:
    proto = Protocol(side, max_size=10)
    data = incoming(side, Opcode.TEXT, b"x" * 10) + incoming(side, Opcode.BINARY, b"x" * 11)
    events = receive(proto, data, mode)
    assert events[0] == "x" * 10
    assert error(events, PayloadTooBig).close_code == 1009


def test_receive_message_too_big_across_fragments(side: Side, mode: str) -> None:
    proto = Protocol(side, max_size=10)
    data = (
        incoming(side, Opcode.TEXT, b"x" * 4, fin=False)
        + incoming(side, Opcode.PING, b"p" * 20)  # control frames do not count
        + incoming(side, Opcode.CONT, b"x" * 6, fin=False)
        + incoming(side, Opcode.CONT, b"x")
    )
    events = receive(proto, data, mode)
    assert events[0] == Ping(b"p" * 20)
    exc = error(events, PayloadTooBig)
    assert exc.close_code == 1009
    # The reason names the limit, not what the last fragment had left of it.
    assert str(exc) == "message over 10 bytes"


@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
@pytest.mark.parametrize("fragment", [1, 2, 7])
def test_tiny_fragments_cost_about_the_size_of_the_message(
    side: Side, opcode: Opcode, fragment: int
) -> None:
    # The issue: an unfinished 1 MiB message in 1- or 2-byte fragments took 36-56 MB.
    size = 2**16
    proto = Protocol(side, max_size=None)
    payload = ("é" * (size // 2)).encode() if opcode is Opcode.TEXT else bytes(size)
    frames = [
        incoming(side, opcode if n == 0 else Opcode.CONT, payload[n : n + fragment], fin=False)
        for n in range(0, size, fragment)
    ]
    tracemalloc.start()
    try:
        for start in range(0, len(frames), 4096):
            proto.receive_data(b"".join(frames[start : start + 4096]))
        assert proto.events_received() == []
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The bytearray it is gathered in, with its slack (an eighth), and no object per part.
    assert held < 1.25 * size + 16 * 1024, held
    proto.receive_data(incoming(side, Opcode.CONT, b""))
    (message,) = proto.events_received()
    assert message == (payload.decode() if opcode is Opcode.TEXT else payload)


def test_text_split_inside_code_points_is_checked_and_kept(side: Side, mode: str) -> None:
    payload = "aé😀中b".encode()
    proto = Protocol(side)
    frames = [
        incoming(side, Opcode.TEXT if n == 0 else Opcode.CONT, payload[n : n + 1], fin=False)
        for n in range(len(payload))
    ]
    events = receive(proto, b"".join(frames) + incoming(side, Opcode.CONT, b""), mode)
    assert events == ["aé😀中b"]


def test_receive_message_at_max_size_across_fragments(side: Side, mode: str) -> None:
    proto = Protocol(side, max_size=10)
    data = (
        incoming(side, Opcode.BINARY, b"x" * 4, fin=False)
        + incoming(side, Opcode.CONT, b"x" * 6)
        # The count starts again with each message.
        + incoming(side, Opcode.BINARY, b"y" * 9, fin=False)
        + incoming(side, Opcode.CONT, b"y")
    )
    assert receive(proto, data, mode) == [b"x" * 10, b"y" * 10]


def test_receive_max_size_zero(side: Side) -> None:
    proto = Protocol(side, max_size=0)
    proto.receive_data(incoming(side, Opcode.TEXT) + incoming(side, Opcode.PING, b"p"))
    assert proto.events_received() == ["", Ping(b"p")]
    proto.receive_data(incoming(side, Opcode.TEXT, b"x"))
    error(proto.events_received(), PayloadTooBig)


def test_receive_max_size_default_is_1_mib(side: Side) -> None:
    assert Protocol(side).max_size == 2**20
    proto = Protocol(side)
    proto.receive_data(incoming(side, Opcode.BINARY, bytes(2**20)))
    assert proto.events_received() == [bytes(2**20)]
    proto = Protocol(side)
    proto.receive_data(incoming(side, Opcode.BINARY, bytes(2**20 + 1))[:10])
    error(proto.events_received(), PayloadTooBig)


def test_receive_max_size_none_is_unlimited(side: Side) -> None:
    proto = Protocol(side, max_size=None)
    data = bytes(2**20 + 1)
    proto.receive_data(incoming(side, Opcode.BINARY, data[:10], fin=False))
    proto.receive_data(incoming(side, Opcode.CONT, data[10:]))
    assert proto.events_received() == [data]


# Sending messages and fragmenting them (RFC 6455 §5.4, §5.6).


def test_send_text(side: Side) -> None:
    proto = Protocol(side)
    proto.send_text("café")
    proto.send_text("café".encode())  # already UTF-8
    proto.send_text(bytearray(b"x"))
    assert sent(proto) == [
        Frame(Opcode.TEXT, "café".encode()),
        Frame(Opcode.TEXT, "café".encode()),
        Frame(Opcode.TEXT, b"x"),
    ]


def test_send_binary(side: Side) -> None:
    proto = Protocol(side)
    proto.send_binary(b"\x00\xff")
    proto.send_binary(memoryview(b"\x01"))
    proto.send_binary(b"")
    assert sent(proto) == [
        Frame(Opcode.BINARY, b"\x00\xff"),
        Frame(Opcode.BINARY, b"\x01"),
        Frame(Opcode.BINARY, b""),
    ]


def test_send_fragmented_binary(side: Side) -> None:
    proto = Protocol(side, max_frame_size=4)
    proto.send_binary(b"0123456789")
    assert sent(proto) == [
        Frame(Opcode.BINARY, b"0123", fin=False),
        Frame(Opcode.CONT, b"4567", fin=False),
        Frame(Opcode.CONT, b"89"),
    ]


def test_send_fragmented_exact_multiple(side: Side) -> None:
    proto = Protocol(side, max_frame_size=4)
    proto.send_binary(b"01234567")
    assert sent(proto) == [
        Frame(Opcode.BINARY, b"0123", fin=False),
        Frame(Opcode.CONT, b"4567"),
    ]


def test_send_not_fragmented_up_to_max_frame_size(side: Side) -> None:
    proto = Protocol(side, max_frame_size=4)
    proto.send_binary(b"0123")
    proto.send_text("")
    assert sent(proto) == [Frame(Opcode.BINARY, b"0123"), Frame(Opcode.TEXT, b"")]


def test_send_fragmented_text_inside_code_points(side: Side) -> None:
    proto = Protocol(side, max_frame_size=4)
    peer = Protocol(other(side))
    proto.send_text("€€€")  # e2 82 ac, three times
    frames_sent = sent(proto)
    assert frames_sent == [
        Frame(Opcode.TEXT, b"\xe2\x82\xac\xe2", fin=False),
        Frame(Opcode.CONT, b"\x82\xac\xe2\x82", fin=False),
        Frame(Opcode.CONT, b"\xac"),
    ]
    proto.send_text("€€€")
    transfer(proto, peer)
    assert peer.events_received() == ["€€€"]


def test_send_fragmented_max_frame_size_one(side: Side) -> None:
    proto = Protocol(side, max_frame_size=1)
    peer = Protocol(other(side))
    proto.send_text("κόσμε")
    output = proto.data_to_send()
    assert len(output) == len("κόσμε".encode())
    for data in output:
        peer.receive_data(data)
    assert peer.events_received() == ["κόσμε"]


@pytest.mark.parametrize("size", [0, -1])
def test_max_frame_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        Protocol(Side.SERVER, max_frame_size=size)


def test_copy_limit_is_small() -> None:
    # The tests below depend on payloads over the limit being cheap to build.
    assert _COPY_LIMIT <= 65536


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_server_sends_large_payload_separately(kind: type) -> None:
    proto = Protocol(Side.SERVER)
    data = bytes(range(256)) * (_COPY_LIMIT // 256 + 1)
    proto.send_binary(kind(data))
    header, payload = proto.data_to_send()
    assert header == frame_header(Opcode.BINARY, len(data))
    assert type(payload) is bytes
    assert payload == data


def test_server_sends_payload_at_copy_limit_in_one_piece() -> None:
    proto = Protocol(Side.SERVER)
    proto.send_binary(bytes(_COPY_LIMIT))
    assert proto.data_to_send() == [frame_header(Opcode.BINARY, _COPY_LIMIT) + bytes(_COPY_LIMIT)]


def test_server_sends_large_fragments_separately() -> None:
    size = _COPY_LIMIT + 1
    proto = Protocol(Side.SERVER, max_frame_size=size)
    data = b"a" * size + b"b" * size + b"c"
    proto.send_binary(data)
    output = proto.data_to_send()
    assert output == [
        frame_header(Opcode.BINARY, size, fin=False),
        b"a" * size,
        frame_header(Opcode.CONT, size, fin=False),
        b"b" * size,
        b"\x80\x01c",
    ]
    assert all(type(data) is bytes for data in output)


def test_client_sends_large_payload_in_one_piece() -> None:
    # A masked payload is a new bytes object anyway: one write.
    proto = Protocol(Side.CLIENT)
    data = bytes(_COPY_LIMIT + 1)
    proto.send_binary(data)
    (wire,) = proto.data_to_send()
    assert parse_frame(wire, 0, mask=True) == (Frame(Opcode.BINARY, data), len(wire))


# send_encoded: one encoding shared by many server connections.


def test_server_send_encoded() -> None:
    wire = serialize_frame(Opcode.TEXT, b"to all")
    protos = [Protocol(Side.SERVER) for _ in range(3)]
    for proto in protos:
        proto.send_encoded(wire)
    for proto in protos:
        (data,) = proto.data_to_send()
        assert data is wire


def test_client_send_encoded() -> None:
    proto = Protocol(Side.CLIENT)
    with pytest.raises(InvalidState, match="masked"):
        proto.send_encoded(b"\x81\x02hi")
    assert proto.data_to_send() == []


# fail() (RFC 6455 §7.1.7).


def test_server_fail() -> None:
    proto = Protocol(Side.SERVER)
    proto.fail(1002, "bad frame")
    assert proto.data_to_send() == [b"\x88\x0b\x03\xeabad frame", EOF]
    assert proto.close_sent == Close(1002, "bad frame")
    assert proto.state is State.CLOSING
    assert proto.close_expected()


def test_client_fail() -> None:
    proto = Protocol(Side.CLIENT)
    proto.fail(1007)
    # The client does not close TCP first, even when failing (§7.1.1).
    assert sent(proto) == [Frame(Opcode.CLOSE, b"\x03\xef")]
    assert proto.close_expected()


def test_fail_ignores_input(side: Side) -> None:
    proto = Protocol(side)
    proto.fail(1011)
    proto.data_to_send()
    proto.receive_data(incoming(side, Opcode.PING, b"?") + close_frame(side, 1000))
    assert proto.events_received() == []
    assert proto.data_to_send() == []


def test_fail_after_protocol_error(side: Side, mode: str) -> None:
    proto = Protocol(side)
    data = (
        incoming(side, Opcode.TEXT, b"before")
        + incoming(side, Opcode.TEXT, b"\xff")
        + incoming(side, Opcode.TEXT, b"after")
    )
    events = receive(proto, data, mode)
    assert events[0] == "before"
    err = error(events, InvalidPayloadData)
    assert len(events) == 2
    # Input after the error is ignored even before fail() is called.
    proto.receive_data(incoming(side, Opcode.PING, b"?"))
    assert proto.events_received() == []
    proto.fail(err.close_code, str(err))
    assert sent(proto)[0] == Frame(Opcode.CLOSE, close_payload(1007, str(err)))


@pytest.mark.parametrize("code", [999, 1005, 1006, 1015, 5000])
def test_fail_refuses_codes_that_may_not_be_sent(side: Side, code: int) -> None:
    with pytest.raises(ValueError, match="may not be sent"):
        Protocol(side).fail(code)


def test_fail_after_sending_close(side: Side) -> None:
    proto = Protocol(side)
    proto.send_close()
    proto.data_to_send()
    proto.fail(1002)
    # No second close frame; the server still closes TCP.
    assert proto.data_to_send() == ([EOF] if side is Side.SERVER else [])
    assert proto.close_sent == Close(1000)


def test_fail_truncates_long_reason(side: Side) -> None:
    proto = Protocol(side)
    proto.fail(1011, "é" * 100)  # 200 bytes, cut to 123 and then to whole code points
    (frame, *_) = sent(proto)
    assert isinstance(frame, Frame)
    assert len(frame.data) <= 125
    assert Close.parse(frame.data) == Close(1011, "é" * 61)


def test_initial_state(side: Side) -> None:
    proto = Protocol(side)
    assert proto.side is side
    assert proto.state is State.OPEN
    assert proto.close_rcvd is proto.close_sent is None
    assert not proto.eof_sent
    assert proto.max_frame_size is None


# Properties.


def pongs_and_close(side: Side, stream: Stream) -> list[Frame | bytes]:
    """What ``side`` must send after receiving ``stream``."""
    expected: list[Frame | bytes] = [
        Frame(Opcode.PONG, event.data) for event in stream.events if isinstance(event, Ping)
    ]
    if stream.events and isinstance(close := stream.events[-1], Close):
        expected.append(Frame(Opcode.CLOSE, close.code.to_bytes(2, "big")))
        if side is Side.SERVER:
            expected.append(EOF)
    return expected


@pytest.mark.parametrize("side", list(Side), ids=lambda side: side.value)
@given(data=st.data())
def test_any_split_gives_same_events(side: Side, data: st.DataObject) -> None:
    stream = data.draw(streams(masked=side is Side.SERVER))
    proto = Protocol(side)
    for piece in data.draw(chunks(stream.data)):
        proto.receive_data(piece)
    assert proto.events_received() == stream.events
    assert sent(proto) == pongs_and_close(side, stream)


@pytest.mark.parametrize("side", list(Side), ids=lambda side: side.value)
@given(data=st.data())
def test_frames_sent_are_received(side: Side, data: st.DataObject) -> None:
    # Whatever one side sends, fragmented or not, the other side receives.
    messages = data.draw(st.lists(st.one_of(st.text(), st.binary()), max_size=5))
    max_frame_size = data.draw(st.one_of(st.none(), st.integers(1, 20)))
    proto = Protocol(side, max_frame_size=max_frame_size)
    peer = Protocol(other(side))
    for message in messages:
        if isinstance(message, str):
            proto.send_text(message)
        else:
            proto.send_binary(message)
    wire = b"".join(proto.data_to_send())
    for piece in data.draw(chunks(wire)):
        peer.receive_data(piece)
    assert peer.events_received() == messages


# Frame headers with every field drawn freely, to reach deep into the parser.
raw_frames = st.builds(
    lambda first, second, extended, key, payload: bytes([first, second]) + extended + key + payload,
    st.integers(0, 255),
    st.integers(0, 255),
    st.sampled_from([b"", b"\x00\x7d", b"\x00\x80", b"\x00\x00\x00\x00\x00\x01\x00\x00"]),
    st.sampled_from([b"", KEY]),
    st.one_of(st.binary(max_size=10), st.sampled_from([b"\x03\xe8", b"\x03\xe8\xff", b"\xe2"])),
)
garbage = st.lists(st.one_of(st.binary(max_size=20), raw_frames), max_size=8).map(b"".join)


@pytest.mark.parametrize("side", list(Side), ids=lambda side: side.value)
@given(
    data=st.data(),
    max_size=st.one_of(st.none(), st.integers(0, 200)),
    raw=st.one_of(st.binary(), garbage),
)
def test_arbitrary_bytes(side: Side, data: st.DataObject, max_size: int | None, raw: bytes) -> None:
    proto = Protocol(side, max_size=max_size)
    for piece in data.draw(chunks(raw)):
        proto.receive_data(piece)  # never raises: errors are events
    events = proto.events_received()
    for event in events[:-1]:
        assert isinstance(event, str | bytes | Ping | Pong)
    if events and isinstance(err := events[-1], ProtocolError):
        assert err.close_code in (1002, 1007, 1009)
        proto.fail(err.close_code, str(err))
    elif events:
        assert isinstance(err, str | bytes | Ping | Pong | Close)
    assert all(type(output) is bytes for output in proto.data_to_send())
    proto.receive_eof()
    assert proto.state is State.CLOSED


def can_be_completed(prefix: bytes) -> bool:
    """Whether some UTF-8 text starts with ``prefix``: the oracle is bytes.decode."""
    try:
        prefix.decode()
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data"
    return True


# CPython's incremental decoder accepts ED A0..ED BF (the start of a UTF-16
# surrogate, never valid in UTF-8) until the third byte arrives: the only
# invalid prefix it detects late (checked exhaustively for 2- and 3-byte prefixes).
def ends_with_surrogate_lead(prefix: bytes) -> bool:
    return len(prefix) >= 2 and prefix[-2] == 0xED and prefix[-1] >= 0xA0


@pytest.mark.parametrize("side", list(Side), ids=lambda side: side.value)
@given(text=utf8ish, data=st.data())
def test_utf8_check_agrees_with_decode(side: Side, text: bytes, data: st.DataObject) -> None:
    parts = data.draw(chunks(text, max_cuts=6))
    proto = Protocol(side)
    received = b""
    events: list[Event] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        proto.receive_data(incoming(side, Opcode.TEXT if i == 0 else Opcode.CONT, part, fin=last))
        received += part
        events = proto.events_received()
        if events and isinstance(events[-1], ProtocolError):
            # Never a false alarm: the bytes so far cannot start valid UTF-8
            # (or the message ended inside a code point).
            assert not can_be_completed(received) or last
            break
        # Never a miss, except for the one-byte delay above.
        assert can_be_completed(received) or ends_with_surrogate_lead(received)
        assert events == ([text.decode()] if last else [])
    try:
        expected = text.decode()
    except UnicodeDecodeError:
        error(events, InvalidPayloadData)
    else:
        assert events == [expected]


@pytest.mark.parametrize("side", list(Side), ids=lambda side: side.value)
@given(text=utf8ish, data=st.data())
def test_utf8_check_in_one_frame_agrees_with_decode(
    side: Side, text: bytes, data: st.DataObject
) -> None:
    proto = Protocol(side)
    for piece in data.draw(chunks(incoming(side, Opcode.TEXT, text))):
        proto.receive_data(piece)
    events = proto.events_received()
    try:
        expected = text.decode()
    except UnicodeDecodeError:
        error(events, InvalidPayloadData)
    else:
        assert events == [expected]


def test_surrogate_lead_is_detected_with_the_next_byte(side: Side) -> None:
    # The one late detection of CPython's decoder costs one byte, not the message.
    proto = Protocol(side)
    proto.receive_data(incoming(side, Opcode.TEXT, b"\xed\xa0", fin=False))
    proto.receive_data(incoming(side, Opcode.CONT, b"\x80", fin=False))
    error(proto.events_received(), InvalidPayloadData)


# The short paths: a whole text or binary message under 126 bytes is parsed inline and sent
# with a prebuilt header. Each test they skip must still be made, at their boundaries.


@pytest.mark.parametrize("size", [0, 1, 124, 125, 126, 127])
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_short_frames_round_trip_at_the_length_boundaries(
    side: Side, opcode: Opcode, size: int
) -> None:
    sender, receiver = Protocol(other(side)), Protocol(side)
    payload = b"a" * size
    if opcode is Opcode.TEXT:
        sender.send_text(payload.decode())
    else:
        sender.send_binary(payload)
    (frame,) = sender.data_to_send()
    receiver.receive_data(frame)
    expected: Event = payload.decode() if opcode is Opcode.TEXT else payload
    assert receiver.events_received() == [expected]


@pytest.mark.parametrize("size", [10, 11])
def test_a_short_frame_over_max_size_is_refused(size: int) -> None:
    receiver = Protocol(Side.SERVER, max_size=10)
    receiver.receive_data(serialize_frame(Opcode.TEXT, b"a" * size, mask=True))
    events = receiver.events_received()
    if size <= 10:
        assert events == ["a" * size]
    else:
        assert len(events) == 1
        assert isinstance(events[0], PayloadTooBig)


def test_a_short_frame_with_the_wrong_masking_is_refused(side: Side) -> None:
    receiver = Protocol(side)
    receiver.receive_data(serialize_frame(Opcode.TEXT, b"hi", mask=side is Side.CLIENT))
    (event,) = receiver.events_received()
    assert isinstance(event, ProtocolError)
    assert str(event) == "incorrect masking"


def test_a_short_text_frame_with_invalid_utf8_is_refused(side: Side) -> None:
    receiver = Protocol(side)
    receiver.receive_data(serialize_frame(Opcode.TEXT, b"\xff", mask=side is Side.SERVER))
    (event,) = receiver.events_received()
    assert isinstance(event, InvalidPayloadData)


def test_short_frames_follow_one_another_in_one_read() -> None:
    receiver = Protocol(Side.SERVER)
    frames = b"".join(serialize_frame(Opcode.TEXT, b"%d" % i, mask=True) for i in range(50))
    receiver.receive_data(frames[:-1])
    receiver.receive_data(frames[-1:])
    assert receiver.events_received() == [str(i) for i in range(50)]


def test_a_short_message_is_still_fragmented_under_max_frame_size() -> None:
    sender = Protocol(Side.SERVER, max_frame_size=4)
    sender.send_text("abcdefghij")
    frames = [parse_frame(data, 0, mask=False) for data in sender.data_to_send()]
    assert [parsed[0].fin for parsed in frames if parsed is not None] == [False, False, True]


def test_a_short_message_is_not_sent_after_a_close() -> None:
    sender = Protocol(Side.SERVER)
    sender.send_close()
    with pytest.raises(InvalidState):
        sender.send_text("late")
    with pytest.raises(InvalidState):
        sender.send_binary(b"late")
