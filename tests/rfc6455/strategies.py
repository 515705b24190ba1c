"""Hypothesis strategies shared by the rfc6455 tests: frames, close codes, split points, streams.

The encoder here is written from RFC 6455 §5.2 with ``struct``, independently of
``rfc6455.frames``, so that a stream built by these strategies checks the parser
against a second implementation rather than against itself.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import strategies as st

from rfc6455.frames import Close, Frame, Opcode
from rfc6455.protocol import Event, Ping, Pong

__all__ = [
    "CONTROL_OPCODES",
    "KEY",
    "URANDOM",
    "VALID_CLOSE_CODES",
    "Stream",
    "chunks",
    "encode_frame",
    "frames",
    "invalid_close_codes",
    "is_valid_close_code",
    "mask_keys",
    "payloads",
    "split",
    "streams",
    "utf8ish",
    "valid_close_codes",
]

# Where frames.py draws masking keys from (RFC 6455 §5.3), to patch in a fixed key.
URANDOM = "rfc6455.frames.os.urandom"

# The masking key of the RFC 6455 §5.7 examples.
KEY = bytes.fromhex("37fa213d")

CONTROL_OPCODES = (Opcode.CLOSE, Opcode.PING, Opcode.PONG)

# RFC 6455 §7.4.1-§7.4.2: the codes a close frame may carry. 1004 is reserved;
# 1005, 1006 and 1015 "MUST NOT be set as a status code in a Close control frame";
# 1012-1014 were registered with IANA later (§11.7); 3000-4999 are for libraries
# and applications.
VALID_CLOSE_CODES = (1000, 1001, 1002, 1003, *range(1007, 1015))


def is_valid_close_code(code: int) -> bool:
    """The test suite's own oracle for RFC 6455 §7.4."""
    return code in VALID_CLOSE_CODES or 3000 <= code <= 4999


valid_close_codes = st.one_of(st.sampled_from(VALID_CLOSE_CODES), st.integers(3000, 4999))

invalid_close_codes = st.one_of(
    st.integers(0, 999),
    st.sampled_from([1004, 1005, 1006, 1015]),
    st.integers(1016, 2999),
    st.integers(5000, 65535),
)

mask_keys = st.binary(min_size=4, max_size=4)


def _repeat(size: int, pattern: bytes) -> bytes:
    return (pattern * (size // len(pattern) + 1))[:size]


# Mostly short payloads, sometimes ones around the 7-, 16- and 64-bit length
# encodings (RFC 6455 §5.2), built by repetition so that drawing them stays cheap.
payloads = st.one_of(
    st.binary(max_size=200),
    st.builds(
        _repeat,
        st.one_of(st.sampled_from([125, 126, 127, 65535, 65536]), st.integers(126, 70000)),
        st.binary(min_size=1, max_size=8),
    ),
)


@st.composite
def frames(draw: st.DrawFn, opcodes: st.SearchStrategy[Opcode] | None = None) -> Frame:
    """Any valid frame; control frames are short and final (RFC 6455 §5.5)."""
    opcode = draw(opcodes if opcodes is not None else st.sampled_from(Opcode))
    if opcode in CONTROL_OPCODES:
        return Frame(opcode, draw(st.binary(max_size=125)))
    return Frame(opcode, draw(payloads), draw(st.booleans()))


def encode_frame(frame: Frame, mask_key: bytes | None = None) -> bytes:
    """Encode ``frame`` per RFC 6455 §5.2, masked with ``mask_key`` if given."""
    first = (0x80 if frame.fin else 0) | frame.opcode
    mask_bit = 0x80 if mask_key is not None else 0
    length = len(frame.data)
    if length <= 125:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length <= 0xFFFF:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if mask_key is None:
        return header + frame.data
    masked = bytes(byte ^ mask_key[i % 4] for i, byte in enumerate(frame.data))
    return header + mask_key + masked


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``data`` at the offsets in ``cuts`` (any order, duplicates give empty pieces)."""
    points = sorted(cuts)
    return [data[i:j] for i, j in zip([0, *points], [*points, len(data)], strict=True)]


@st.composite
def chunks(draw: st.DrawFn, data: bytes, max_cuts: int = 20) -> list[bytes]:
    """``data`` cut at arbitrary points, empty chunks included."""
    return split(data, draw(st.lists(st.integers(0, len(data)), max_size=max_cuts)))


@dataclass
class Stream:
    """What a peer sends: its frames, their bytes on the wire and the events they must produce."""

    frames: list[Frame]
    data: bytes
    events: list[Event]


# A ping or a pong, and the event it produces.
_controls = st.one_of(
    st.binary(max_size=125).map(lambda data: (Frame(Opcode.PING, data), Ping(data))),
    st.binary(max_size=125).map(lambda data: (Frame(Opcode.PONG, data), Pong(data))),
)


@st.composite
def streams(draw: st.DrawFn, *, masked: bool) -> Stream:
    """A valid stream: messages cut into fragments at arbitrary byte offsets (text
    inside code points too), pings and pongs before and between the fragments, and
    sometimes a close frame at the end.

    Args:
        masked: True for frames a client sends (RFC 6455 §5.3), each with a drawn key.
    """
    frames: list[Frame] = []
    events: list[Event] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "binary", "control"]))
        if kind == "control":
            frame, event = draw(_controls)
            frames.append(frame)
            events.append(event)
            continue
        message: str | bytes
        if kind == "text":
            message = draw(st.text())
            opcode, payload = Opcode.TEXT, message.encode()
        else:
            message = payload = draw(payloads)
            opcode = Opcode.BINARY
        parts = draw(chunks(payload, max_cuts=4))
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            frames.append(Frame(opcode if i == 0 else Opcode.CONT, part, fin=last))
            # RFC 6455 §5.4: control frames MAY be injected in the middle of a message.
            if not last and draw(st.booleans()):
                frame, event = draw(_controls)
                frames.append(frame)
                events.append(event)
        events.append(message)
    if draw(st.booleans()):
        close = Close(draw(valid_close_codes), draw(st.text(max_size=30)))
        frames.append(Frame(Opcode.CLOSE, close.code.to_bytes(2, "big") + close.reason.encode()))
        events.append(close)
    data = b"".join(encode_frame(frame, draw(mask_keys) if masked else None) for frame in frames)
    return Stream(frames, data, events)


# Bytes that start, continue or break UTF-8 sequences: overlong leads (C0, C1, E0 80),
# surrogates (ED A0), code points over U+10FFFF (F4 90, F5), stray continuations.
_UTF8_EDGES = b"\x00\x7f\x80\x8f\x90\x9f\xa0\xbf\xc0\xc1\xc2\xdf\xe0\xed\xef\xf0\xf4\xf5\xff"

utf8ish = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.lists(
        st.one_of(
            st.text(max_size=3).map(str.encode),
            st.sampled_from([bytes([byte]) for byte in _UTF8_EDGES]),
        ),
        max_size=12,
    ).map(b"".join),
)
