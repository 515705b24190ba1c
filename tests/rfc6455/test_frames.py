"""Tests for rfc6455.frames: the frame header codec and close payloads (RFC 6455 §5, §7.4).

Every parser test runs three ways (the ``mode`` fixture, after h11's
``tests/test_io.py``): the whole frame in a ``bytes``, every prefix of it one
byte longer than the last as a ``memoryview`` (each must be "incomplete"),
and the frame followed by the start of another in a ``bytearray``.
"""

from __future__ import annotations

import struct
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rfc6455.exceptions import InvalidPayloadData, PayloadTooBig, ProtocolError
from rfc6455.frames import (
    CTRL_OPCODES,
    DATA_OPCODES,
    EXTERNAL_CLOSE_CODES,
    Close,
    CloseCode,
    Frame,
    Opcode,
    frame_header,
    parse_frame,
    parse_header,
    serialize_frame,
)
from tests.rfc6455.strategies import (
    KEY,
    URANDOM,
    VALID_CLOSE_CODES,
    chunks,
    encode_frame,
    invalid_close_codes,
    is_valid_close_code,
    mask_keys,
    valid_close_codes,
)
from tests.rfc6455.strategies import frames as any_frames

# The start of another frame, left over behind the one under test.
TRAILING = b"\x81\x05Hel"

RESERVED_OPCODES = [*range(0x3, 0x8), *range(0xB, 0x10)]


def parse(data: bytes, mode: str, *, mask: bool, max_size: int | None = None) -> Frame:
    """Parse the one frame in ``data`` in the given mode; raise what the parser raises."""
    if mode == "whole":
        result = parse_frame(data, 0, mask=mask, max_size=max_size)
        assert result is not None
        frame, end = result
        assert end == len(data)
    elif mode == "bytewise":
        view = memoryview(data)
        for i in range(len(data)):
            assert parse_frame(view[:i], 0, mask=mask, max_size=max_size) is None
        result = parse_frame(view, 0, mask=mask, max_size=max_size)
        assert result is not None
        frame, end = result
        assert end == len(data)
    else:
        buf = bytearray(data + TRAILING)
        result = parse_frame(buf, 0, mask=mask, max_size=max_size)
        assert result is not None
        frame, end = result
        assert buf[end:] == TRAILING
    assert type(frame.data) is bytes
    return frame


def parse_error(data: bytes, mode: str, *, mask: bool, max_size: int | None = None) -> str:
    """Parse ``data`` in the given mode, expecting a ProtocolError with code 1002."""
    with pytest.raises(ProtocolError) as exc_info:
        parse(data, mode, mask=mask, max_size=max_size)
    assert type(exc_info.value) is ProtocolError
    assert exc_info.value.close_code == CloseCode.PROTOCOL_ERROR
    return str(exc_info.value)


def assert_frame_data(wire: bytes, frame: Frame, mode: str, urandom: mock.Mock) -> None:
    """``wire`` parses as ``frame`` and ``frame`` serializes as ``wire``.

    The masking key, if any, is taken from ``wire`` and fed to the serializer
    through the patched ``os.urandom`` (websockets' ``assertFrameData``).
    """
    masked = bool(wire[1] & 0x80)
    assert parse(wire, mode, mask=masked) == frame
    if masked:
        length = wire[1] & 0x7F
        key_at = 2 + {126: 2, 127: 8}.get(length, 0)
        urandom.return_value = wire[key_at : key_at + 4]
    assert frame.serialize(mask=masked) == wire
    assert serialize_frame(frame.opcode, frame.data, fin=frame.fin, mask=masked) == wire
    assert urandom.call_count == (2 if masked else 0)


# RFC 6455 §5.7 examples, byte for byte, both directions.


def test_rfc_unmasked_text(mode: str, urandom: mock.Mock) -> None:
    wire = bytes.fromhex("81 05 48 65 6c 6c 6f")
    assert_frame_data(wire, Frame(Opcode.TEXT, b"Hello"), mode, urandom)


def test_rfc_masked_text(mode: str, urandom: mock.Mock) -> None:
    wire = bytes.fromhex("81 85 37 fa 21 3d 7f 9f 4d 51 58")
    assert_frame_data(wire, Frame(Opcode.TEXT, b"Hello"), mode, urandom)


def test_rfc_fragmented_unmasked_text(mode: str, urandom: mock.Mock) -> None:
    assert_frame_data(
        bytes.fromhex("01 03 48 65 6c"), Frame(Opcode.TEXT, b"Hel", fin=False), mode, urandom
    )
    assert_frame_data(bytes.fromhex("80 02 6c 6f"), Frame(Opcode.CONT, b"lo"), mode, urandom)


def test_rfc_unmasked_ping(mode: str, urandom: mock.Mock) -> None:
    wire = bytes.fromhex("89 05 48 65 6c 6c 6f")
    assert_frame_data(wire, Frame(Opcode.PING, b"Hello"), mode, urandom)


def test_rfc_masked_pong(mode: str, urandom: mock.Mock) -> None:
    wire = bytes.fromhex("8a 85 37 fa 21 3d 7f 9f 4d 51 58")
    assert_frame_data(wire, Frame(Opcode.PONG, b"Hello"), mode, urandom)


def test_rfc_binary_256_bytes(mode: str, urandom: mock.Mock) -> None:
    data = bytes(range(256))
    wire = bytes.fromhex("82 7E 01 00") + data
    assert_frame_data(wire, Frame(Opcode.BINARY, data), mode, urandom)


def test_rfc_binary_65536_bytes(mode: str, urandom: mock.Mock) -> None:
    data = bytes(range(256)) * 256
    wire = bytes.fromhex("82 7F 00 00 00 00 00 01 00 00") + data
    assert_frame_data(wire, Frame(Opcode.BINARY, data), mode, urandom)


def test_masked_binary_65536_bytes(mode: str, urandom: mock.Mock) -> None:
    data = bytes(range(256)) * 256
    masked = bytes(byte ^ KEY[i % 4] for i, byte in enumerate(data))
    wire = bytes.fromhex("82 FF 00 00 00 00 00 01 00 00") + KEY + masked
    assert_frame_data(wire, Frame(Opcode.BINARY, data), mode, urandom)


# Lengths (RFC 6455 §5.2): 7 bits up to 125, 16 bits up to 65535, 64 bits beyond.


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, "00"),
        (125, "7d"),
        (126, "7e 00 7e"),
        (65535, "7e ff ff"),
        (65536, "7f 00 00 00 00 00 01 00 00"),
    ],
)
@pytest.mark.parametrize("masked", [False, True])
def test_length_encodings(
    length: int, encoded: str, masked: bool, mode: str, urandom: mock.Mock
) -> None:
    data = b"x" * length
    header = bytearray(bytes.fromhex("82" + encoded))
    if masked:
        header[1] |= 0x80
        header += KEY
        data_on_wire = bytes(byte ^ KEY[i % 4] for i, byte in enumerate(data))
    else:
        data_on_wire = data
    assert_frame_data(bytes(header) + data_on_wire, Frame(Opcode.BINARY, data), mode, urandom)


def test_frame_header_encodings() -> None:
    assert frame_header(Opcode.TEXT, 5) == b"\x81\x05"
    assert frame_header(Opcode.TEXT, 5, fin=False) == b"\x01\x05"
    assert frame_header(Opcode.TEXT, 5, mask_key=KEY) == b"\x81\x85" + KEY
    assert frame_header(Opcode.BINARY, 126) == b"\x82\x7e\x00\x7e"
    assert frame_header(Opcode.BINARY, 2**32) == b"\x82\x7f\x00\x00\x00\x01\x00\x00\x00\x00"


def test_length_64_bit_msb_set(mode: str) -> None:
    wire = bytes.fromhex("82 7F 80 00 00 00 00 00 00 00")
    assert "most significant bit" in parse_error(wire, mode, mask=False)


def test_length_64_bit_msb_set_masked(mode: str) -> None:
    wire = bytes.fromhex("82 FF 80 00 00 00 00 01 00 00") + KEY
    parse_error(wire, mode, mask=True)


@pytest.mark.parametrize(
    "header",
    [
        "82 7e 00 00",  # 0 in 16 bits
        "82 7e 00 7d",  # 125 in 16 bits
        "82 7f 00 00 00 00 00 00 00 7d",  # 125 in 64 bits
        "82 7f 00 00 00 00 00 00 ff ff",  # 65535 in 64 bits
    ],
)
def test_length_not_minimally_encoded(header: str, mode: str) -> None:
    wire = bytes.fromhex(header)
    # Enough payload for the declared length: the header alone must be refused.
    wire += bytes(int.from_bytes(wire[2:], "big"))
    assert "minimally" in parse_error(wire, mode, mask=False)


def test_length_checked_before_payload_arrives() -> None:
    with pytest.raises(ProtocolError):
        parse_header(bytes.fromhex("82 7e 00 7d"), 0, mask=False)


# Parsing in pieces and at an offset.


def test_parse_header_fields() -> None:
    wire = bytes.fromhex("01 fe 01 00") + KEY
    # (opcode, fin, length, payload start); the key is the 4 bytes before the payload.
    assert parse_header(b"??" + wire, 2, mask=True) == (Opcode.TEXT, False, 256, 10)


def test_parse_header_incomplete() -> None:
    wire = bytes.fromhex("82 ff 00 00 00 00 00 01 00 00") + KEY
    for i in range(len(wire)):
        assert parse_header(wire[:i], 0, mask=True) is None
    assert parse_header(wire, 0, mask=True) is not None


def test_parse_frame_at_offset() -> None:
    buf = bytes.fromhex("81 05 48 65 6c 6c 6f 89 00 80 02 6c 6f")
    assert parse_frame(buf, 0, mask=False) == (Frame(Opcode.TEXT, b"Hello"), 7)
    assert parse_frame(buf, 7, mask=False) == (Frame(Opcode.PING, b""), 9)
    assert parse_frame(buf, 9, mask=False) == (Frame(Opcode.CONT, b"lo"), 13)
    assert parse_frame(buf, 13, mask=False) is None


def test_parse_frame_incomplete_payload() -> None:
    assert parse_frame(b"\x81\x05Hell", 0, mask=False) is None


def test_parse_frame_empty_masked_payload(mode: str) -> None:
    assert parse(b"\x82\x80" + KEY, mode, mask=True) == Frame(Opcode.BINARY, b"")


# Masking (RFC 6455 §5.1, §5.3).


def test_unmasked_frame_where_mask_required(mode: str) -> None:
    assert "masking" in parse_error(b"\x81\x05Hello", mode, mask=True)


def test_masked_frame_where_mask_forbidden(mode: str) -> None:
    wire = bytes.fromhex("81 85 37 fa 21 3d 7f 9f 4d 51 58")
    assert "masking" in parse_error(wire, mode, mask=False)


def test_serialize_masked_uses_fresh_key_per_frame() -> None:
    keys = [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"]
    with mock.patch(URANDOM, side_effect=keys) as urandom:
        first = serialize_frame(Opcode.TEXT, b"Hello", mask=True)
        second = serialize_frame(Opcode.TEXT, b"Hello", mask=True)
    assert urandom.call_args_list == [mock.call(4), mock.call(4)]
    assert first[2:6] == keys[0]
    assert second[2:6] == keys[1]
    assert first[6:] != second[6:]


def test_serialize_masked_keys_differ_without_patching() -> None:
    # 32 random bits each: a collision among 8 keys has probability under 1e-8.
    keys = {serialize_frame(Opcode.BINARY, b"same", mask=True)[2:6] for _ in range(8)}
    assert len(keys) == 8


def test_serialize_unmasked_does_not_draw_a_key(urandom: mock.Mock) -> None:
    assert serialize_frame(Opcode.TEXT, b"Hello") == b"\x81\x05Hello"
    urandom.assert_not_called()


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@pytest.mark.parametrize("masked", [False, True])
def test_serialize_bytes_like(kind: type, masked: bool, urandom: mock.Mock) -> None:
    wire = serialize_frame(Opcode.BINARY, kind(b"Hello"), mask=masked)
    assert type(wire) is bytes
    assert parse_frame(wire, 0, mask=masked) == (Frame(Opcode.BINARY, b"Hello"), len(wire))


# Reserved bits and opcodes (RFC 6455 §5.2).


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
@pytest.mark.parametrize("masked", [False, True])
def test_reserved_bits(rsv: int, masked: bool, mode: str) -> None:
    wire = bytes([0x81 | rsv, 0x85 if masked else 0x05]) + (KEY if masked else b"") + b"Hello"
    assert "reserved bits" in parse_error(wire, mode, mask=masked)


@pytest.mark.parametrize("opcode", RESERVED_OPCODES)
@pytest.mark.parametrize("masked", [False, True])
def test_reserved_opcodes(opcode: int, masked: bool, mode: str) -> None:
    wire = bytes([0x80 | opcode, 0x80 if masked else 0]) + (KEY if masked else b"")
    assert "reserved opcode" in parse_error(wire, mode, mask=masked)


def test_opcode_sets() -> None:
    assert {Opcode.CONT, Opcode.TEXT, Opcode.BINARY} == DATA_OPCODES
    assert {Opcode.CLOSE, Opcode.PING, Opcode.PONG} == CTRL_OPCODES
    assert [int(opcode) for opcode in Opcode] == [0x0, 0x1, 0x2, 0x8, 0x9, 0xA]


# Control frames (RFC 6455 §5.5).


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_control_frame_125_bytes(opcode: Opcode, mode: str) -> None:
    data = b"\x03\xe8" + b"x" * 123
    assert parse(bytes([0x80 | opcode, 125]) + data, mode, mask=False) == Frame(opcode, data)


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_control_frame_over_125_bytes(opcode: Opcode, mode: str) -> None:
    wire = frame_header(opcode, 126) + b"x" * 126
    assert "too long" in parse_error(wire, mode, mask=False)


def test_control_frame_over_125_bytes_with_7_bit_length(mode: str) -> None:
    # 127 in the 7-bit field would announce a 64-bit length: still too long.
    assert "too long" in parse_error(b"\x89\x7f" + bytes(8), mode, mask=False)


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
@pytest.mark.parametrize("masked", [False, True])
def test_fragmented_control_frame(opcode: Opcode, masked: bool, mode: str) -> None:
    wire = bytes([opcode, 0x80 if masked else 0]) + (KEY if masked else b"")
    assert "fragmented control frame" in parse_error(wire, mode, mask=masked)


# max_size: decided from the declared length, before the payload arrives.


@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY, Opcode.CONT])
def test_max_size_exceeded(opcode: Opcode, mode: str) -> None:
    wire = frame_header(opcode, 11) + b"x" * 11
    with pytest.raises(PayloadTooBig) as exc_info:
        parse(wire, mode, mask=False, max_size=10)
    assert exc_info.value.close_code == CloseCode.MESSAGE_TOO_BIG


def test_max_size_exceeded_from_header_alone() -> None:
    # A 64-bit length, nothing else: no payload needs to be buffered to refuse it.
    header = frame_header(Opcode.BINARY, 2**40, mask_key=KEY)
    with pytest.raises(PayloadTooBig):
        parse_header(header[:10], 0, mask=True, max_size=2**20)


def test_max_size_reached(mode: str) -> None:
    wire = frame_header(Opcode.BINARY, 10) + b"x" * 10
    assert parse(wire, mode, mask=False, max_size=10) == Frame(Opcode.BINARY, b"x" * 10)


def test_max_size_ignores_control_frames(mode: str) -> None:
    wire = b"\x89\x05Hello"
    assert parse(wire, mode, mask=False, max_size=0) == Frame(Opcode.PING, b"Hello")


def test_max_size_none_is_unlimited() -> None:
    header = frame_header(Opcode.BINARY, 2**62)
    assert parse_header(header, 0, mask=False, max_size=None) == (Opcode.BINARY, True, 2**62, 10)


# Close payloads (RFC 6455 §5.5.1, §7.4).


def test_close_parse_code_and_reason() -> None:
    assert Close.parse(b"\x03\xe8bye") == Close(CloseCode.NORMAL_CLOSURE, "bye")
    assert Close.parse(memoryview(b"\x0f\xa0\xc3\xa9")) == Close(4000, "é")


def test_close_parse_empty_payload() -> None:
    assert Close.parse(b"") == Close(CloseCode.NO_STATUS_RCVD, "")


def test_close_parse_one_byte() -> None:
    with pytest.raises(ProtocolError) as exc_info:
        Close.parse(b"\x03")
    assert exc_info.value.close_code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_parse_invalid_code(code: int) -> None:
    with pytest.raises(ProtocolError) as exc_info:
        Close.parse(code.to_bytes(2, "big"))
    assert type(exc_info.value) is ProtocolError
    assert exc_info.value.close_code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("code", [*VALID_CLOSE_CODES, 3000, 4999])
def test_close_parse_valid_code(code: int) -> None:
    assert Close.parse(code.to_bytes(2, "big") + b"ok") == Close(code, "ok")


def test_close_parse_invalid_utf8_reason() -> None:
    with pytest.raises(InvalidPayloadData) as exc_info:
        Close.parse(b"\x03\xe8\xff")
    assert exc_info.value.close_code == CloseCode.INVALID_DATA


def test_close_serialize() -> None:
    assert Close(CloseCode.NORMAL_CLOSURE, "bye").serialize() == b"\x03\xe8bye"
    assert Close(CloseCode.GOING_AWAY).serialize() == b"\x03\xe9"
    assert Close(4000, "é").serialize() == b"\x0f\xa0\xc3\xa9"


def test_close_serialize_no_status_is_empty() -> None:
    assert Close(CloseCode.NO_STATUS_RCVD).serialize() == b""


def test_external_close_codes() -> None:
    assert set(VALID_CLOSE_CODES) == EXTERNAL_CLOSE_CODES


# Properties.


@given(frame=any_frames(), masked=st.booleans())
def test_round_trip(frame: Frame, masked: bool) -> None:
    wire = frame.serialize(mask=masked)
    assert parse_frame(wire, 0, mask=masked) == (frame, len(wire))


@given(frame=any_frames(), key=st.one_of(st.none(), mask_keys))
def test_matches_independent_encoder(frame: Frame, key: bytes | None) -> None:
    expected = encode_frame(frame, key)
    with mock.patch(URANDOM, return_value=key) as urandom:
        assert frame.serialize(mask=key is not None) == expected
    assert urandom.call_count == (key is not None)
    assert parse_frame(expected, 0, mask=key is not None) == (frame, len(expected))


def parse_chunks(pieces: list[bytes], *, mask: bool) -> list[Frame]:
    """Parse frames the way a reader does: append each chunk, take every whole frame."""
    buf = bytearray()
    parsed = []
    for piece in pieces:
        buf += piece
        pos = 0
        while (result := parse_frame(buf, pos, mask=mask)) is not None:
            frame, pos = result
            parsed.append(frame)
        del buf[:pos]
    assert not buf
    return parsed


@given(stream=st.lists(any_frames(), max_size=5), masked=st.booleans(), data=st.data())
def test_any_split_gives_same_frames(
    stream: list[Frame], masked: bool, data: st.DataObject
) -> None:
    wire = b"".join(
        encode_frame(frame, data.draw(mask_keys) if masked else None) for frame in stream
    )
    assert parse_chunks(data.draw(chunks(wire)), mask=masked) == stream


# Frame headers with every field drawn freely, to reach deep into the parser.
raw_headers = st.builds(
    lambda first, second, extended, key: bytes([first, second]) + extended + key,
    st.integers(0, 255),
    st.integers(0, 255),
    st.sampled_from([b"", b"\x00\x7d", b"\x01\x00", b"\x00\x00\x00\x00\x00\x00\x00\x05"]),
    st.sampled_from([b"", KEY]),
)
garbage = st.lists(st.one_of(st.binary(max_size=20), raw_headers), max_size=6).map(b"".join)


@given(
    data=st.one_of(st.binary(), garbage),
    masked=st.booleans(),
    max_size=st.one_of(st.none(), st.integers(0, 200)),
)
def test_arbitrary_bytes(data: bytes, masked: bool, max_size: int | None) -> None:
    parsed: list[Frame] = []
    failure: ProtocolError | None = None
    pos = 0
    try:
        while (result := parse_frame(data, pos, mask=masked, max_size=max_size)) is not None:
            frame, pos = result
            parsed.append(frame)
    except ProtocolError as exc:  # any other exception fails the test
        failure = exc
    for frame in parsed:
        assert isinstance(frame.opcode, Opcode)
        assert type(frame.data) is bytes
    if failure is not None:
        # The frame parser checks headers; UTF-8 (1007) is the protocol's business.
        assert failure.close_code in (1002, 1009)


@given(code=valid_close_codes, reason=st.text(max_size=30))
def test_close_round_trip(code: int, reason: str) -> None:
    close = Close(code, reason)
    assert Close.parse(close.serialize()) == close


@given(code=invalid_close_codes, reason=st.binary(max_size=10))
def test_close_invalid_codes(code: int, reason: bytes) -> None:
    assert not is_valid_close_code(code)
    with pytest.raises(ProtocolError):
        Close.parse(code.to_bytes(2, "big") + reason)


@given(data=st.binary(min_size=2, max_size=10))
def test_close_parse_agrees_with_oracle(data: bytes) -> None:
    (code,) = struct.unpack("!H", data[:2])
    try:
        reason = data[2:].decode()
    except UnicodeDecodeError:
        reason = None
    if not is_valid_close_code(code):
        with pytest.raises(ProtocolError):
            Close.parse(data)
    elif reason is None:
        with pytest.raises(InvalidPayloadData):
            Close.parse(data)
    else:
        assert Close.parse(data) == Close(code, reason)


def test_urandom_is_the_entropy_source() -> None:
    # The masking tests patch URANDOM: make sure that is what frames.py draws keys from.
    with mock.patch(URANDOM, return_value=b"\x00\x00\x00\x00"):
        assert serialize_frame(Opcode.TEXT, b"Hi", mask=True) == b"\x81\x82\x00\x00\x00\x00Hi"
