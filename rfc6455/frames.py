"""WebSocket frames: opcodes, close codes, the frame header codec, close payloads.

Parsing works on a buffer and an offset and never copies what it does not
return, so the protocol can parse many frames out of one chunk and trim its
buffer once (RFC 6455 §5.2).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum

from .exceptions import InvalidPayloadData, PayloadTooBig, ProtocolError
from .masking import apply_mask, unmask_payload
from .typing import BytesLike

__all__ = [
    "CTRL_OPCODES",
    "DATA_OPCODES",
    "EXTERNAL_CLOSE_CODES",
    "Close",
    "CloseCode",
    "Frame",
    "FrameHeader",
    "Opcode",
    "frame_header",
    "is_valid_close_code",
    "parse_frame",
    "parse_header",
    "serialize_frame",
]


class Opcode(IntEnum):
    """Frame opcodes (RFC 6455 §5.2, §11.8)."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


DATA_OPCODES = frozenset({Opcode.CONT, Opcode.TEXT, Opcode.BINARY})
CTRL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})

# Index by the 4-bit opcode field; None marks the reserved opcodes 3-7 and 0xB-0xF.
_OPCODE_BY_VALUE: tuple[Opcode | None, ...] = tuple(
    Opcode(value) if value in Opcode._value2member_map_ else None for value in range(16)
)


class CloseCode(IntEnum):
    """Close status codes (RFC 6455 §7.4.1 and the IANA registry, §11.7)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


# Codes an endpoint may put in a close frame: the registered ones except
# 1004 (reserved) and 1005, 1006, 1015, which RFC 6455 §7.4.1 says "MUST NOT be
# set as a status code in a Close control frame"; plus 3000-4999 (§7.4.2).
EXTERNAL_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (RFC 6455 §7.4.1, §7.4.2)."""
    return code in EXTERNAL_CLOSE_CODES or 3000 <= code < 5000


# A prebuilt Struct packs the two bytes of a short header in half the time of bytes((a, b)).
_pack_B = struct.Struct("!BB").pack
_pack_H = struct.Struct("!BBH").pack
_pack_Q = struct.Struct("!BBQ").pack
_unpack_H = struct.Struct("!H").unpack_from
_unpack_Q = struct.Struct("!Q").unpack_from


@dataclass(slots=True)
class Frame:
    """One frame, as it survives parsing: the mask and the length are wire details."""

    opcode: Opcode
    data: bytes
    fin: bool = True

    def serialize(self, *, mask: bool) -> bytes:
        """Encode the frame; ``mask`` is True on the client side (RFC 6455 §5.3)."""
        return serialize_frame(self.opcode, self.data, fin=self.fin, mask=mask)


# What parse_header returns: (opcode, fin, payload length, offset of the first
# payload byte); a masked frame's key is the 4 bytes before that offset. A plain
# tuple, because the parser builds one per frame.
FrameHeader = tuple[Opcode, bool, int, int]


def parse_header(
    buf: BytesLike, pos: int, mask: bool, max_size: int | None = None, rsv: int = 0
) -> FrameHeader | None:
    """Parse the frame header at ``buf[pos:]``, or return None if it is incomplete.

    Every check that the header alone allows happens here, before any payload
    is buffered.

    Args:
        buf: received bytes.
        pos: offset of the frame's first byte.
        mask: True when frames must be masked (we are the server), False when
            they must not be (we are the client).
        max_size: the largest payload accepted for a data frame, or None.
        rsv: the reserved bits that a negotiated extension defines (0x40: RSV1,
            permessage-deflate); allowed on data frames only.

    Returns:
        ``(opcode, fin, length, payload_start)``, see :data:`FrameHeader`.

    Raises:
        ProtocolError: reserved bits or opcode, wrong masking, a bad control frame
            or a length that is not minimally encoded.
        PayloadTooBig: a data frame declares more than ``max_size`` bytes.
    """
    available = len(buf) - pos
    if available < 2:
        return None
    first = buf[pos]
    second = buf[pos + 1]
    # RFC 6455 §5.2: "If a nonzero value is received and none of the negotiated
    # extensions defines the meaning of such a nonzero value, the receiving
    # endpoint MUST _Fail the WebSocket Connection_."
    # RFC 7692 §6.1: an extension's bit on a control frame fails it too. One
    # test on the usual path: the bits are checked only when one is set.
    if first & 0x70 and (first & 0x70 & ~rsv or first & 0x08):
        raise ProtocolError("reserved bits must be 0")
    opcode = _OPCODE_BY_VALUE[first & 0x0F]
    if opcode is None:
        raise ProtocolError(f"reserved opcode {first & 0x0F:#x}")
    # RFC 6455 §5.1: the server MUST close on an unmasked frame, the client on a masked one.
    if bool(second & 0x80) is not mask:
        raise ProtocolError("incorrect masking")
    fin = bool(first & 0x80)
    length = second & 0x7F
    start = pos + 2
    if opcode >= 0x8:
        # RFC 6455 §5.5: control frames have at most 125 bytes and are never fragmented.
        if length > 125:
            raise ProtocolError("control frame too long")
        if not fin:
            raise ProtocolError("fragmented control frame")
    elif length == 126:
        if available < 4:
            return None
        (length,) = _unpack_H(buf, start)
        start += 2
        # RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode the length".
        if length < 126:
            raise ProtocolError("payload length not minimally encoded")
    elif length == 127:
        if available < 10:
            return None
        (length,) = _unpack_Q(buf, start)
        start += 8
        # RFC 6455 §5.2: "the most significant bit MUST be 0".
        if length >> 63:
            raise ProtocolError("payload length has its most significant bit set")
        if length < 0x10000:
            raise ProtocolError("payload length not minimally encoded")
    if max_size is not None and length > max_size and opcode < 0x8:
        raise PayloadTooBig(f"message over {max_size} bytes")
    if mask:
        start += 4
        if len(buf) < start:
            return None
    return opcode, fin, length, start


def parse_frame(
    buf: BytesLike, pos: int, *, mask: bool, max_size: int | None = None
) -> tuple[Frame, int] | None:
    """Parse a whole frame at ``buf[pos:]``.

    Returns:
        The frame and the offset just after it, or None when the buffer does
        not hold the whole frame yet.

    Raises:
        ProtocolError: see :func:`parse_header`.
    """
    header = parse_header(buf, pos, mask, max_size)
    if header is None:
        return None
    opcode, fin, length, start = header
    end = start + length
    if len(buf) < end:
        return None
    payload = unmask_payload(buf, start, end) if mask else buf[start:end]
    return Frame(opcode, bytes(payload), fin), end


def frame_header(
    opcode: int, length: int, *, fin: bool = True, mask_key: bytes | None = None
) -> bytes:
    """Encode a frame header for a payload of ``length`` bytes (RFC 6455 §5.2)."""
    first = opcode | 0x80 if fin else opcode
    mask_bit = 0x80 if mask_key is not None else 0
    if length < 126:
        header = _pack_B(first, mask_bit | length)
    elif length < 0x10000:
        header = _pack_H(first, mask_bit | 126, length)
    else:
        header = _pack_Q(first, mask_bit | 127, length)
    return header if mask_key is None else header + mask_key


def serialize_frame(opcode: int, data: BytesLike, *, fin: bool = True, mask: bool = False) -> bytes:
    """Encode a whole frame.

    RFC 6455 §5.3: a client masks every frame with a fresh key that is "derived
    from a strong source of entropy"; the server never masks.
    """
    if mask:
        mask_key = os.urandom(4)
        return frame_header(opcode, len(data), fin=fin, mask_key=mask_key) + apply_mask(
            data, mask_key
        )
    return frame_header(opcode, len(data), fin=fin) + data


@dataclass(frozen=True, slots=True)
class Close:
    """The payload of a close frame (RFC 6455 §5.5.1).

    An empty payload parses as code 1005 (no status received) and a 1005 close
    serializes as an empty payload.
    """

    code: int
    reason: str = ""

    @classmethod
    def parse(cls, data: BytesLike) -> Close:
        """Parse and check a received close payload.

        Raises:
            ProtocolError: a 1-byte payload or a code no endpoint may send.
            InvalidPayloadData: the reason is not valid UTF-8.
        """
        if not data:
            return cls(CloseCode.NO_STATUS_RCVD)
        if len(data) == 1:
            raise ProtocolError("close frame with a 1-byte payload")
        (code,) = _unpack_H(data, 0)
        if not is_valid_close_code(code):
            raise ProtocolError(f"invalid close code {code}")
        try:
            # RFC 6455 §5.5.1: the reason is UTF-8; invalid data is a 1007 (§8.1).
            reason = bytes(data[2:]).decode()
        except UnicodeDecodeError as exc:
            raise InvalidPayloadData("close reason is not valid UTF-8") from exc
        return cls(code, reason)

    def serialize(self) -> bytes:
        """Encode the close payload; 1005 means "no code" and encodes as empty."""
        if self.code == CloseCode.NO_STATUS_RCVD:
            return b""
        return self.code.to_bytes(2, "big") + self.reason.encode()
