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
the ``message`` of a JSON envelope (the chat's ``broadcast``). Sent to a chat channel
(``--channel``), the text goes inside the chat's ``publish`` request, whose constant head and
tail are masked once as well.
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
    "CHAT_SUBSCRIBED",
    "CHAT_UNSUBSCRIBED",
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
    "publish_envelope",
    "request_frame",
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
# The chat's answers to subscribe and unsubscribe (docs/protocol.md), as they start.
CHAT_SUBSCRIBED = '{"type":"subscribed",'
CHAT_UNSUBSCRIBED = '{"type":"unsubscribed",'
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


def request_frame(kind: str, channel: str, key: bytes) -> bytes:
    """A chat request naming a channel (``subscribe``, ``unsubscribe``), as a masked frame."""
    text = json.dumps({"type": kind, "channel": channel}, separators=(",", ":"))
    return masked_frame(text, key)


def publish_envelope(channel: str) -> tuple[str, str]:
    """What comes before and after a message's text in a chat ``publish`` to ``channel``
    (the text needs no escaping: it is ASCII letters, digits and spaces)."""
    head = json.dumps({"type": "publish", "channel": channel}, separators=(",", ":"))
    return head[:-1] + ',"message":"', '"}'


class StampedFrames:
    """Broadcast messages of one sender: ``#LG <sender> <t> <filler>``, ``size`` characters,
    bare or between the two halves of an ``envelope`` (``publish_envelope``).

    Sizes below the head's 32 characters are rounded up to it.
    """

    __slots__ = (
        "_after",
        "_before",
        "_head_key",
        "_header",
        "_masked_before",
        "_masked_tail",
        "_prefix",
        "_tail",
        "size",
    )

    def __init__(
        self, sender: int, size: int, key: bytes, envelope: tuple[str, str] = ("", "")
    ) -> None:
        if not 0 <= sender < 10**_SENDER_DIGITS:
            raise ValueError(f"sender index out of range: {sender}")
        self._prefix = f"{MARK}{sender:0{_SENDER_DIGITS}d} "
        self.size = max(size, HEAD)
        self._before, self._after = envelope
        message = f"{self._prefix}{0:0{_DIGITS}d} {filler(self.size)[HEAD:]}"
        self._tail = message[HEAD:]
        template = f"{self._before}{message}{self._after}".encode()
        start = len(self._before.encode())
        self._header = frame_header(Opcode.TEXT, len(template), mask_key=key)
        # Masking is position-dependent: what does not change is masked once, at its offset,
        # and the head with the key rotated to where it starts (byte i uses key[i % 4]).
        masked = apply_mask(template, key)
        self._masked_before = masked[:start]
        self._masked_tail = masked[start + HEAD :]
        self._head_key = key[start % 4 :] + key[: start % 4]

    def text(self, t_ns: int) -> str:
        """The message as text, for ``Connection.send``."""
        return f"{self._before}{self._prefix}{t_ns:0{_DIGITS}d} {self._tail}{self._after}"

    def frame(self, t_ns: int) -> bytes:
        """The message as a masked frame: only the head is masked here."""
        head = f"{self._prefix}{t_ns:0{_DIGITS}d} ".encode()
        return (
            self._header
            + self._masked_before
            + apply_mask(head, self._head_key)
            + self._masked_tail
        )


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
