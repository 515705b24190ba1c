"""The chat protocol's JSON messages (the original design's message formats).

Every message is a JSON object sent as one text frame. Keys are exactly the
original ones; later features may add keys, never rename them.
"""

from __future__ import annotations

import json

__all__ = ["broadcast", "connection_id", "user_left", "welcome"]

# Compact, and UTF-8 as is: JSON escapes only what it must, so any text
# (quotes, backslashes, newlines, emoji, "<script>") round-trips exactly.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def connection_id(connection_id: str) -> str:
    """The first message a client receives: its id."""
    return _dumps({"connectionId": connection_id})


def welcome(message: str) -> str:
    """The second message a client receives."""
    return _dumps({"type": "welcome", "message": message})


def broadcast(sender: str, message: str, timestamp: str) -> str:
    """A chat message, as every client but its sender receives it.

    ``timestamp`` is "YYYY-MM-DD HH:mm:ss" in UTC (``store.TIMESTAMP_FORMAT``).
    """
    return _dumps(
        {"type": "broadcast", "connectionId": sender, "message": message, "timestamp": timestamp}
    )


def user_left(
    connection_id: str, total: int, close_status: int | None = None, close_reason: str = ""
) -> str:
    """Tells the remaining clients that one left; ``total`` counts those remaining.

    ``closeStatus`` and ``closeReason`` are present when the client sent a close code.
    """
    payload: dict[str, object] = {
        "type": "user_left",
        "connectionId": connection_id,
        "totalConnections": total,
    }
    if close_status is not None:
        payload["closeStatus"] = close_status
        payload["closeReason"] = close_reason
    return _dumps(payload)
