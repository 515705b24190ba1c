"""Client frames encoded ahead of time, and the send timestamp carried inside broadcast messages.

A client must mask each frame (RFC 6455 §5.3), and masking in pure Python costs about 1 ns per
byte: at 1 MiB as much as the server's own unmasking. So that the generator is not the
bottleneck, each worker process picks one random masking key and encodes the echo frame once;
broadcast frames are encoded from a template whose constant tail is masked once, so only the
head that changes (sender and timestamp, 32 bytes) is masked per message. The server still
unmasks every byte of every frame, so its work is unchanged. ``--fresh-masks`` sends through
``Protocol.send_text`` instead, with a fresh key per frame as the RFC asks of clients.

A broadcast message is the text ``#LG <sender> <t> <filler>``: ``sender`` the global index of
the sending connection (6 digits), ``t`` its ``time.perf_counter_ns()`` at sending (20 digits;
CLOCK_MONOTONIC on Linux, so comparable across the worker processes of one machine), padded to
``--size`` characters (at least 32). Receivers find it in the raw text (a plain relay) or in
the ``message`` of a JSON envelope (the chat's ``broadcast``).
"""

from __future__ import annotations

import json

from rfc6455.frames import Opcode, frame_header
from rfc6455.masking import apply_mask
from rfc6455.typing import Data

__all__ = [
    "CHAT_BROADCAST",
    "CHAT_MESSAGE",
    "CHAT_SHIFT",
    "HEAD",
    "MARK",
    "SENDER",
    "SENDER_END",
    "T_END",
    "StampedFrames",
    "T",
    "filler",
    "is_notice",
    "masked_frame",
    "parse_stamp",
    "payload",
]

MARK = "#LG "
# The head: MARK, the sender (6 digits), a space, the time (20 digits), a space; fixed widths,
# so that the fields are sliced without searching: message[i + SENDER : i + SENDER_END] and
# message[i + T : i + T_END] for a head that starts at i.
_SENDER_DIGITS = 6
_DIGITS = 20
SENDER = len(MARK)
SENDER_END = SENDER + _SENDER_DIGITS
T = SENDER_END + 1
T_END = T + _DIGITS
HEAD = T_END + 1
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# The chat server's envelope, compact JSON with the keys in this order: the fast path.
CHAT_BROADCAST = '{"type":"broadcast",'
CHAT_MESSAGE = '"message":"' + MARK
# From where CHAT_MESSAGE is found to where the stamp starts.
CHAT_SHIFT = len(CHAT_MESSAGE) - len(MARK)
# Chat messages that are not someone's text: skipped wherever they come.
_NOTICE_TYPES = frozenset({"welcome", "history", "user_left"})


def filler(size: int) -> str:
    """``size`` ASCII letters and digits."""
    return (_ALPHABET * (size // len(_ALPHABET) + 1))[:size]


def payload(size: int, *, binary: bool = False) -> str | bytes:
    """An echo payload of ``size`` bytes: text, or the same characters as bytes."""
    text = filler(size)
    return text.encode() if binary else text


def masked_frame(message: str | bytes, key: bytes) -> bytes:
    """A whole client frame for ``message`` (text for str), masked with ``key``."""
    if isinstance(message, str):
        opcode, data = Opcode.TEXT, message.encode()
    else:
        opcode, data = Opcode.BINARY, message
    return frame_header(opcode, len(data), mask_key=key) + apply_mask(data, key)


class StampedFrames:
    """Broadcast messages of one sender: ``#LG <sender> <t> <filler>``, ``size`` characters.

    Sizes below the head's 32 characters are rounded up to it.
    """

    __slots__ = ("_header", "_key", "_masked_tail", "_prefix", "_tail", "size")

    def __init__(self, sender: int, size: int, key: bytes) -> None:
        if not 0 <= sender < 10**_SENDER_DIGITS:
            raise ValueError(f"sender index out of range: {sender}")
        self._prefix = f"{MARK}{sender:0{_SENDER_DIGITS}d} "
        self.size = max(size, HEAD)
        template = f"{self._prefix}{0:0{_DIGITS}d} {filler(self.size)[HEAD:]}"
        self._tail = template[HEAD:]
        self._key = key
        self._header = frame_header(Opcode.TEXT, self.size, mask_key=key)
        # Masking is position-dependent: the tail is masked once, at its offset.
        self._masked_tail = apply_mask(template.encode(), key)[HEAD:]

    def text(self, t_ns: int) -> str:
        """The message as text, for ``Connection.send``."""
        return f"{self._prefix}{t_ns:0{_DIGITS}d} {self._tail}"

    def frame(self, t_ns: int) -> bytes:
        """The message as a masked frame: only the head is masked here."""
        head = f"{self._prefix}{t_ns:0{_DIGITS}d} ".encode()
        return self._header + apply_mask(head, self._key) + self._masked_tail


def parse_stamp(message: Data) -> tuple[int, int] | None:
    """``(sender, t_ns)`` of a broadcast message, or None when it carries none.

    Accepts the raw text, the chat's envelope (compact JSON, ``type`` first: a fast path) and
    any other JSON object whose ``message`` is the raw text; notices such as ``welcome``,
    ``history`` or ``user_left`` give None.
    """
    if type(message) is not str:
        return None
    if message.startswith(MARK):
        i = 0
    elif message.startswith(CHAT_BROADCAST):
        i = message.find(CHAT_MESSAGE, len(CHAT_BROADCAST))
        if i < 0:
            return None
        i += CHAT_SHIFT
    elif message.startswith("{"):
        inner = _json_message(message)
        if inner is None or not inner.startswith(MARK):
            return None
        message, i = inner, 0
    else:
        return None
    try:
        return int(message[i + SENDER : i + SENDER_END]), int(message[i + T : i + T_END])
    except ValueError:
        return None


def _json_message(message: str) -> str | None:
    try:
        value = json.loads(message)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("type") in _NOTICE_TYPES:
        return None
    inner = value.get("message")
    return inner if isinstance(inner, str) else None


def is_notice(message: Data) -> bool:
    """Whether ``message`` is a chat notice to skip: the greeting, welcome, history, user_left."""
    if type(message) is not str or not message.startswith("{"):
        return False
    try:
        value = json.loads(message)
    except ValueError:
        return False
    return isinstance(value, dict) and (
        ("connectionId" in value and "message" not in value) or value.get("type") in _NOTICE_TYPES
    )
