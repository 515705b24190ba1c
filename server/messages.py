"""The chat protocol's JSON messages (the original design's message formats).

Every message is a JSON object sent as one text frame. Keys are exactly the
original ones; later features may add keys, never rename them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_CLIENT_MSG_ID",
    "ChatMessage",
    "InvalidMessage",
    "ack",
    "broadcast",
    "connection_id",
    "history",
    "invalid_message",
    "not_persisted",
    "parse",
    "rate_limited",
    "user_left",
    "welcome",
]

# Compact, and UTF-8 as is: JSON escapes only what it must, so any text
# (quotes, backslashes, newlines, emoji, "<script>") round-trips exactly.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# A client's message id is echoed in every ack: long enough for a UUID or a ULID with a
# prefix, short enough that acks stay small.
MAX_CLIENT_MSG_ID = 128


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """What a client sent: the text, and its own id for it if it gave one."""

    text: str
    client_msg_id: str | None = None


class InvalidMessage(ValueError):
    """A structured message that breaks the rules; the reason is sent back to its sender."""


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse(text: str) -> ChatMessage:
    """Read a text frame from a client.

    A frame that parses as a JSON object with a string ``message`` is a structured message:
    ``{"message": "...", "clientMsgId": "..."}``, ``clientMsgId`` optional. Any other text
    (not JSON, JSON that is not an object, an object without a string ``message``) is the
    message itself.

    Raises:
        InvalidMessage: A structured message whose ``clientMsgId`` is present but not a string
            of at most ``MAX_CLIENT_MSG_ID`` characters.
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return ChatMessage(text)
    if not isinstance(value, dict) or not isinstance(value.get("message"), str):
        return ChatMessage(text)
    if "clientMsgId" not in value:
        return ChatMessage(value["message"])
    client_msg_id = value["clientMsgId"]
    if not isinstance(client_msg_id, str) or len(client_msg_id) > MAX_CLIENT_MSG_ID:
        raise InvalidMessage(
            f"clientMsgId must be a string of at most {MAX_CLIENT_MSG_ID} characters"
        )
    return ChatMessage(value["message"], client_msg_id)


def connection_id(connection_id: str) -> str:
    """The first message a client receives: its id."""
    return _dumps({"connectionId": connection_id})


def welcome(message: str, epoch: str) -> str:
    """The second message a client receives; ``epoch`` identifies the database."""
    return _dumps({"type": "welcome", "message": message, "epoch": epoch})


def broadcast(sender: str, message: str, timestamp: str, seq: int, user: str | None = None) -> str:
    """A chat message, as every client but its sender receives it.

    ``timestamp`` is "YYYY-MM-DD HH:mm:ss" in UTC (``store.TIMESTAMP_FORMAT``); ``user`` is
    the sender's authenticated name, present only when it has one.
    """
    payload: dict[str, object] = {
        "type": "broadcast",
        "connectionId": sender,
        "message": message,
        "timestamp": timestamp,
        "seq": seq,
    }
    if user is not None:
        payload["user"] = user
    return _dumps(payload)


def history(items: Sequence[bytes], epoch: str, recovered: bool) -> bytes:
    """The third message a client receives: earlier broadcasts, oldest first, as UTF-8.

    ``items`` are broadcast payloads as encoded for the wire, spliced in without re-encoding.
    """
    return b"".join(
        (
            b'{"type":"history","messages":[',
            b",".join(items),
            b'],"epoch":',
            _dumps(epoch).encode(),
            b',"recovered":true}' if recovered else b',"recovered":false}',
        )
    )


def ack(seq: int, client_msg_id: str | None) -> str:
    """Tells a sender that its message ``seq`` is committed to the database."""
    return _dumps({"type": "ack", "seq": seq, "clientMsgId": client_msg_id})


def not_persisted(seq: int, client_msg_id: str | None) -> str:
    """Tells a sender that its message ``seq`` could not be stored (it was dead-lettered)."""
    return _dumps(
        {"type": "error", "code": "not_persisted", "seq": seq, "clientMsgId": client_msg_id}
    )


def invalid_message(reason: str) -> str:
    """Tells a sender that its structured message was refused (not broadcast, not stored)."""
    return _dumps({"type": "error", "code": "invalid_message", "message": reason})


def rate_limited(retry_after_ms: int) -> str:
    """Tells a sender that its message was over its rate limit (not broadcast, not stored)."""
    return _dumps({"type": "error", "code": "rate_limited", "retryAfterMs": retry_after_ms})


def user_left(
    connection_id: str,
    total: int,
    close_status: int | None = None,
    close_reason: str = "",
    user: str | None = None,
) -> str:
    """Tells the remaining clients that one left; ``total`` counts those remaining.

    ``closeStatus`` and ``closeReason`` are present when the client sent a close code, ``user``
    when it was authenticated.
    """
    payload: dict[str, object] = {
        "type": "user_left",
        "connectionId": connection_id,
        "totalConnections": total,
    }
    if user is not None:
        payload["user"] = user
    if close_status is not None:
        payload["closeStatus"] = close_status
        payload["closeReason"] = close_reason
    return _dumps(payload)
