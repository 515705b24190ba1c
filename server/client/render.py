"""How the chat console shows what the server sends: short lines, ``[channel] who: text``.

A chat message is ``[channel] sender: text``, the sender being its name, else its user, else
the first 8 characters of its client or connection id. Joins, leaves, typing, presence and
errors are one short line each; the client's own messages are shown once acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from .commands import Direct
from .events import GENERAL, channel_of, retry_after
from .outbox import Pending

__all__ = ["lines", "who"]

# At most this many characters of a message are quoted in an error about it.
_QUOTED = 60

# What a member did, by event type.
_MEMBER_EVENTS = {"joined": "joined", "left": "left", "typing": "is typing…"}


def lines(
    event: Mapping[str, object], pending: Pending | None = None, *, resuming: bool = False
) -> list[str] | None:
    """The lines that show ``event``; None for an event this client does not know.

    Args:
        event: a JSON object from the server.
        pending: the outbox's message that an ``ack`` or an ``error`` names.
        resuming: the client asked to resume this event's channel (``history``, ``subscribed``).
    """
    kind, channel = event.get("type"), channel_of(event)
    tag = f"[{channel}]"
    if kind is None and "connectionId" in event:
        return [f"* connection {_text(event['connectionId'])}"]
    if kind == "welcome":
        return [f"* {_text(event.get('message'))}"]
    if kind == "hello":
        return [f"* you are {who(event)}"]
    if kind in ("history", "subscribed"):
        return _history(event, channel, resuming=resuming)
    if kind == "broadcast":
        return [_broadcast(event, channel)]
    if kind == "ack":
        return [_ack(event, pending)]
    if kind == "error":
        return [_error(event, pending)]
    if kind in _MEMBER_EVENTS:
        return [f"{tag} {who(_mapping(event.get('member')))} {_MEMBER_EVENTS[kind]}"]
    if kind == "presence":
        return [f"{tag} here: {_members(event.get('members'))}"]
    if kind == "unsubscribed":
        return [f"{tag} unsubscribed"]
    if kind == "user_left":
        return [f"{tag} {who(event)} left{_open(event)}"]
    if kind == "users_left":
        return [_users_left(event, tag)]
    return None


def who(fields: Mapping[str, object]) -> str:
    """A sender or a member: its name, else its user, else its short client or connection id."""
    for key in ("name", "user"):
        if isinstance(value := fields.get(key), str) and value:
            return value
    for key in ("clientId", "connectionId"):
        if isinstance(value := fields.get(key), str) and value:
            return value[:8]
    return "someone"


def _broadcast(item: Mapping[str, object], channel: str) -> str:
    return f"[{channel}] {who(item)}: {_text(item.get('message'))}"


def _history(event: Mapping[str, object], channel: str, *, resuming: bool) -> list[str]:
    """A history or a subscription: what it holds, then its messages (and its members)."""
    items = [_mapping(item) for item in _list(event.get("messages"))]
    if event.get("recovered") is True:
        summary = f"resumed, {_count(len(items), 'missed message')}"
    elif resuming:
        summary = f"could not resume: the latest {_count(len(items), 'message')}, some missed"
    else:
        summary = _count(len(items), "earlier message")
    joined = "joined, " if event.get("type") == "subscribed" else ""
    shown = [f"[{channel}] {joined}{summary}"]
    shown += [_broadcast(item, channel) for item in items]
    if "presence" in event:
        shown.append(f"[{channel}] here: {_members(event['presence'])}")
    return shown


def _ack(event: Mapping[str, object], pending: Pending | None) -> str:
    seq = f"#{_text(event.get('seq'))}"
    if event.get("duplicate") is True:
        seq += ", duplicate"
    tag = f"[{_where(event, pending, GENERAL)}]"
    if pending is None:
        return f"{tag} ✓ {seq}"
    return f"{tag} you: {pending.message.text} (✓ {seq})"


def _error(event: Mapping[str, object], pending: Pending | None) -> str:
    code, reason = _text(event.get("code")), event.get("message")
    detail = f"{code}: {_text(reason)}" if reason else code
    where = _where(event, pending, None)
    tag = "*" if where is None else f"[{where}]"
    if pending is None:
        return f"{tag} error {detail}"
    quoted = _quote(pending.message.text)
    if code == "rate_limited":
        return f"{tag} rate limited: sending {quoted} again in {retry_after(event):g} s"
    if code == "not_persisted":  # broadcast, then lost by the database
        return f"{tag} not stored {quoted}: {detail}"
    return f"{tag} not sent {quoted}: {detail}"


def _where(event: Mapping[str, object], pending: Pending | None, default: str | None) -> str | None:
    """The channel an answer is about: its own, else its message's; a direct one, ``@user``."""
    if isinstance(channel := event.get("channel"), str):
        return channel
    if pending is None:
        return default
    message = pending.message
    return f"@{message.to}" if isinstance(message, Direct) else message.channel


def _members(members: object) -> str:
    """``ann, bob (2 connections)``: who is in a channel."""
    shown = []
    for member in (_mapping(item) for item in _list(members)):
        connections = member.get("connections")
        many = isinstance(connections, int) and connections > 1
        shown.append(f"{who(member)} ({connections} connections)" if many else who(member))
    return ", ".join(shown) or "nobody"


def _users_left(event: Mapping[str, object], tag: str) -> str:
    """Several departures announced together: how many, a few names, how many remain."""
    names = [who(_mapping(user)) for user in _list(event.get("users"))]
    more = event.get("more")
    more = more if isinstance(more, int) and more > 0 else 0
    listed = ", ".join(names) + (f" and {more} more" if more else "")
    return f"{tag} {_count(len(names) + more, 'person', 'people')} left: {listed}{_open(event)}"


def _open(event: Mapping[str, object]) -> str:
    """`` (3 connections open)``, when the event says."""
    total = event.get("totalConnections")
    return f" ({_count(total, 'connection')} open)" if isinstance(total, int) else ""


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _quote(text: str) -> str:
    """``"text"``, cut at ``_QUOTED`` characters: the message an error is about."""
    cut = text if len(text) <= _QUOTED else text[: _QUOTED - 1] + "…"
    return json.dumps(cut, ensure_ascii=False)


def _text(value: object) -> str:
    """A value of an event as text: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []
