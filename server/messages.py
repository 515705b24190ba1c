"""The chat protocol's JSON messages (the original design's message formats).

Every message is a JSON object sent as one text frame. Keys are exactly the
original ones; later features may add keys, never rename them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_CLIENT_MSG_ID",
    "MAX_TEXT_BYTES",
    "MAX_TEXT_CHARS",
    "ChatMessage",
    "Departure",
    "InvalidMessage",
    "ack",
    "broadcast",
    "chat_message",
    "check_client_msg_id",
    "check_text",
    "connection_id",
    "error",
    "hello",
    "history",
    "is_unicode",
    "loads",
    "membership",
    "not_persisted",
    "parse",
    "presence",
    "rate_limited",
    "subscribed",
    "typing",
    "unsubscribed",
    "user_left",
    "users_left",
    "utf8_size",
    "welcome",
]

# Compact, and UTF-8 as is: JSON escapes only what it must, so any text
# (quotes, backslashes, newlines, emoji, "<script>") round-trips exactly.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# A client's message id is echoed in every ack: long enough for a UUID or a ULID with a
# prefix, short enough that acks stay small.
MAX_CLIENT_MSG_ID = 128
# A chat message's text: 16,384 characters is a few pages (Slack suggests 4,000, Mattermost
# allows 16,383), and its bytes as broadcast, UTF-8 and JSON-escaped, are at most 4 a
# character: 64 KiB. That bound is what the server sends for one message to every client
# and keeps in its history, whatever the client sent (1 MiB of U+0001 used to become a 6 MiB
# broadcast).
MAX_TEXT_CHARS = 16_384
MAX_TEXT_BYTES = 65_536

# C0 control characters but tab and newline: nothing a person types, and JSON sends each as
# six bytes (\u0001), the escape that made a message six times its size.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f]")
# In a clientMsgId, which acks echo and logs may show, no control character at all.
_ID_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """What a client sent: the text, and its own id for it if it gave one."""

    text: str
    client_msg_id: str | None = None


class InvalidMessage(ValueError):
    """A message that breaks the rules; the reason is sent back to its sender.

    Attributes:
        client_msg_id: The message's ``clientMsgId``, if it had a valid one, so that the
            error can name it.
    """

    def __init__(self, reason: str, client_msg_id: str | None = None) -> None:
        super().__init__(reason)
        self.client_msg_id = client_msg_id


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def utf8_size(text: str) -> int:
    """The bytes of a frame's text in UTF-8 (RFC 6455 §5.6), encoded only if not ASCII
    (``str.isascii`` is O(1))."""
    return len(text) if text.isascii() else len(text.encode())


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode: a JSON escape (\\ud800) can make a lone surrogate."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse(
    text: str, *, max_chars: int = MAX_TEXT_CHARS, max_bytes: int = MAX_TEXT_BYTES
) -> ChatMessage:
    """Read a text frame from a client, and check what it says.

    A frame that parses as a JSON object with a string ``message`` is a structured message:
    ``{"message": "...", "clientMsgId": "..."}``, ``clientMsgId`` optional. Any other text
    (not JSON, JSON that is not an object, an object without a string ``message``) is the
    message itself.

    Raises:
        InvalidMessage: ``clientMsgId`` is present but not a string of at most
            ``MAX_CLIENT_MSG_ID`` characters without control characters; or the text is
            empty or blank, has a control character other than tab and newline, is not valid
            Unicode (a JSON escape of a lone surrogate), or is over ``max_chars`` characters
            or ``max_bytes`` bytes once encoded for the broadcast.
    """
    return chat_message(text, loads(text), max_chars=max_chars, max_bytes=max_bytes)


# Made once: json.loads with parse_constant makes a decoder for every call (1 µs a frame).
_decode = json.JSONDecoder(parse_constant=_reject_constant).decode


def loads(text: str) -> object:
    """The JSON value of a frame's text, or None if it is not JSON (NaN and Infinity are not)."""
    try:
        return _decode(text)
    except (ValueError, RecursionError):
        return None


def chat_message(
    text: str, value: object, *, max_chars: int = MAX_TEXT_CHARS, max_bytes: int = MAX_TEXT_BYTES
) -> ChatMessage:
    """``parse`` of a frame whose JSON value (``loads``) is already known."""
    client_msg_id = None
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        text = value["message"]
        if "clientMsgId" in value:
            client_msg_id = check_client_msg_id(value["clientMsgId"])
    check_text(text, client_msg_id, max_chars, max_bytes)
    return ChatMessage(text, client_msg_id)


def check_client_msg_id(value: object) -> str:
    """``value`` if it is a valid ``clientMsgId``.

    Raises:
        InvalidMessage: It is not a string of at most ``MAX_CLIENT_MSG_ID`` characters without
            control characters, or is not valid Unicode.
    """
    if (
        not isinstance(value, str)
        or len(value) > MAX_CLIENT_MSG_ID
        or _ID_CONTROLS.search(value)
        or not is_unicode(value)
    ):
        raise InvalidMessage(
            f"clientMsgId must be a string of at most {MAX_CLIENT_MSG_ID} characters, "
            "without control characters"
        )
    return value


def check_text(
    text: str,
    client_msg_id: str | None = None,
    max_chars: int = MAX_TEXT_CHARS,
    max_bytes: int = MAX_TEXT_BYTES,
) -> None:
    """Check a message's text (``parse`` says the rules).

    Raises:
        InvalidMessage: It breaks one, naming ``client_msg_id``.
    """
    if len(text) > max_chars:
        raise InvalidMessage(f"a message has at most {max_chars} characters", client_msg_id)
    if not text or text.isspace():  # isspace() stops at the first other character
        raise InvalidMessage("a message must not be empty", client_msg_id)
    if _CONTROLS.search(text):
        raise InvalidMessage(
            "a message must not contain control characters other than tab and newline",
            client_msg_id,
        )
    try:
        size = len(text) if text.isascii() else len(text.encode())
    except UnicodeEncodeError:
        raise InvalidMessage("a message must be valid Unicode", client_msg_id) from None
    # As broadcast: JSON escapes a quote and a backslash with one more byte each.
    size += text.count('"') + text.count("\\")
    if size > max_bytes:
        raise InvalidMessage(f"a message has at most {max_bytes} bytes of UTF-8", client_msg_id)


def connection_id(connection_id: str) -> str:
    """The first message a client receives: its id."""
    return _dumps({"connectionId": connection_id})


def welcome(message: str, epoch: str) -> str:
    """The second message a client receives; ``epoch`` identifies the database."""
    return _dumps({"type": "welcome", "message": message, "epoch": epoch})


def broadcast(
    sender: str,
    message: str,
    timestamp: str,
    seq: int,
    user: str | None = None,
    *,
    channel: str = "general",
    client_id: str | None = None,
    name: str | None = None,
) -> str:
    """A chat message, as every subscriber of its channel but its sender receives it.

    ``timestamp`` is "YYYY-MM-DD HH:mm:ss" in UTC (``store.TIMESTAMP_FORMAT``); ``user`` is
    the sender's authenticated name, ``clientId`` and ``name`` an anonymous sender's
    (``hello``), each present only when the sender has it.
    """
    payload: dict[str, object] = {
        "type": "broadcast",
        "channel": channel,
        "connectionId": sender,
        "message": message,
        "timestamp": timestamp,
        "seq": seq,
    }
    if user is not None:
        payload["user"] = user
    if client_id is not None:
        payload["clientId"] = client_id
    if name is not None:
        payload["name"] = name
    return _dumps(payload)


def broadcast_around_seq(
    sender: str,
    message: str,
    timestamp: str,
    user: str | None = None,
    *,
    channel: str = "general",
    client_id: str | None = None,
    name: str | None = None,
) -> tuple[str, str]:
    """A ``broadcast`` cut where its seq goes: ``head + str(seq) + tail`` is the broadcast,
    for an engine whose seqs are given elsewhere (Redis's publish script)."""
    text = broadcast(
        sender, message, timestamp, 0, user, channel=channel, client_id=client_id, name=name
    )
    # No string value can hold '"seq":0' unescaped: this is the key.
    head, _, tail = text.partition('"seq":0')
    return head + '"seq":', tail


def _messages(head: bytes, items: Sequence[bytes], epoch: str, recovered: bool) -> bytes:
    """``head`` then ``"messages"``: broadcast payloads as encoded for the wire, spliced in
    without re-encoding, then ``epoch`` and ``recovered``."""
    return b"".join(
        (
            head,
            b'"messages":[',
            b",".join(items),
            b'],"epoch":',
            _dumps(epoch).encode(),
            b',"recovered":true' if recovered else b',"recovered":false',
        )
    )


def history(items: Sequence[bytes], epoch: str, recovered: bool, channel: str = "general") -> bytes:
    """The third message a client receives: the default channel's past, oldest first."""
    head = b'{"type":"history","channel":' + _dumps(channel).encode() + b","
    return _messages(head, items, epoch, recovered) + b"}"


def subscribed(
    channel: str,
    items: Sequence[bytes],
    epoch: str,
    recovered: bool,
    last_read: int | None,
    presence: tuple[Sequence[dict[str, object]], int] | None,
) -> bytes:
    """The answer to ``subscribe``: the channel's past (as ``history``), the subscriber's last
    read seq, and when presence is on the channel's members (as listed by ``presence``) and
    how many there are."""
    head = b'{"type":"subscribed","channel":' + _dumps(channel).encode() + b","
    tail: dict[str, object] = {"lastRead": last_read}
    if presence is not None:
        tail["presence"], tail["presenceCount"] = list(presence[0]), presence[1]
    return _messages(head, items, epoch, recovered) + b"," + _dumps(tail)[1:].encode()


def unsubscribed(channel: str) -> str:
    """The answer to ``unsubscribe``: nothing of ``channel`` comes after it."""
    return _dumps({"type": "unsubscribed", "channel": channel})


def hello(fields: dict[str, str]) -> str:
    """The answer to ``hello``: who the server now knows the client as."""
    return _dumps({"type": "hello", **fields})


def presence(channel: str, members: Sequence[dict[str, object]], count: int) -> str:
    """The answer to ``presence``: a snapshot of the channel's members (``count`` in all)."""
    return _dumps(
        {"type": "presence", "channel": channel, "members": list(members), "count": count}
    )


def membership(kind: str, channel: str, member: dict[str, object]) -> str:
    """``joined`` or ``left``: a member's first connection came, or its last one went."""
    return _dumps({"type": kind, "channel": channel, "member": member})


def typing(channel: str, member: dict[str, object]) -> str:
    """A member is typing in ``channel`` (not stored, no seq)."""
    return _dumps({"type": "typing", "channel": channel, "member": member})


def ack(
    seq: int, client_msg_id: str | None, channel: str = "general", *, duplicate: bool = False
) -> str:
    """Tells a sender that its message ``seq`` is committed to the database."""
    # The original keys first: clients and load generators that read an ack by its prefix
    # ('{"type":"ack","seq":') still can.
    payload: dict[str, object] = {
        "type": "ack",
        "seq": seq,
        "clientMsgId": client_msg_id,
        "channel": channel,
    }
    if duplicate:
        payload["duplicate"] = True
    return _dumps(payload)


def _error(code: str, client_msg_id: str | None, **details: object) -> str:
    """An error about one of the sender's messages, naming it by its ``clientMsgId``."""
    return _dumps({"type": "error", "code": code, **details, "clientMsgId": client_msg_id})


def error(
    code: str, message: str, client_msg_id: str | None = None, channel: str | None = None
) -> str:
    """An error about a request; ``channel`` when the request named a valid one."""
    if channel is None:
        return _error(code, client_msg_id, message=message)
    return _error(code, client_msg_id, message=message, channel=channel)


def not_persisted(seq: int, client_msg_id: str | None, channel: str = "general") -> str:
    """Tells a sender that its message ``seq`` could not be stored (it was dead-lettered)."""
    return _error("not_persisted", client_msg_id, seq=seq, channel=channel)


def rate_limited(retry_after_ms: int, client_msg_id: str | None) -> str:
    """Tells a sender that its message was over its rate limit (not broadcast, not stored)."""
    return _error("rate_limited", client_msg_id, retryAfterMs=retry_after_ms)


@dataclass(frozen=True, slots=True)
class Departure:
    """A client that left: who, and the close code and reason it sent, if it sent one."""

    connection_id: str
    user: str | None = None
    close_status: int | None = None
    close_reason: str = ""

    def fields(self) -> dict[str, object]:
        """Its keys in ``user_left``: ``connectionId``, then ``user`` and the close if known."""
        payload: dict[str, object] = {"connectionId": self.connection_id}
        if self.user is not None:
            payload["user"] = self.user
        if self.close_status is not None:
            payload["closeStatus"] = self.close_status
            payload["closeReason"] = self.close_reason
        return payload


def user_left(departure: Departure, total: int) -> str:
    """Tells the remaining clients that one left; ``total`` counts those remaining.

    ``closeStatus`` and ``closeReason`` are present when the client sent a close code, ``user``
    when it was authenticated.
    """
    return _dumps(
        {
            "type": "user_left",
            "channel": "general",
            **departure.fields(),
            "totalConnections": total,
        }
    )


def users_left(departures: Sequence[Departure], more: int, total: int) -> str:
    """Tells the remaining clients that several left (more than are announced one by one).

    ``users`` holds each like ``user_left`` does, ``more`` counts those left unnamed.
    """
    return _dumps(
        {
            "type": "users_left",
            "channel": "general",
            "users": [departure.fields() for departure in departures],
            "more": more,
            "totalConnections": total,
        }
    )
