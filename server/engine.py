"""The engine: what differs between one process and many, behind one interface (STYLE §10).

The chat (``hub.py``, ``handler.py``) numbers, stores and reads messages, and keeps presence,
through an ``Engine``; it never touches the database. The engine calls its ``Listener`` back
for what must reach the clients connected here: publications, acks, presence changes and
signals. So a message reaches its subscribers the same way whether it was published here or
on another node.

``LocalEngine`` (``local_engine.py``) is one process with SQLite: seqs are handed out in the
event loop, a publication is delivered in the step it is published in, and a history held in
memory is answered without suspending. An engine shared by several processes answers
``history`` later; the hub holds a subscriber's live messages meanwhile and drops those the
history already covers (``Recovery.top``), so either engine gives no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from . import messages
from .history import Resume
from .store import MessageRecord

__all__ = [
    "API_CONNECTION",
    "Ack",
    "Draft",
    "Engine",
    "EngineClosed",
    "EngineUnavailable",
    "Listener",
    "Member",
    "NoListener",
    "Position",
    "Publication",
    "Recovery",
    "payload_of",
    "sender_of",
]


#: The connection id of what the server API publishes.
API_CONNECTION = "api"


class EngineClosed(RuntimeError):
    """The engine has stopped: it takes no more messages and serves no more reads."""


class EngineUnavailable(RuntimeError):
    """The engine cannot be reached for now (Redis is down): try again later."""


# Draft, Publication and Ack are made for every message: plain slotted dataclasses, since a
# frozen one's __init__ costs five times as much. Nothing changes them once made.


@dataclass(slots=True, eq=False)
class Draft:
    """A message to publish, as the sender gave it.

    Attributes:
        channel: Where it goes.
        text: Its text, checked (``messages.parse``).
        connection_id: The sender's connection (``api`` for the server API).
        client_msg_id: The sender's id for it: a second publish with the same id by the same
            sender is a duplicate (``sender``).
        user: The sender's authenticated name, if any.
        client_id: The anonymous sender's stable id (``hello``), if any.
        name: The anonymous sender's display name, if any.
        reply: Resolved with the ``Ack`` instead of an ack sent to the connection (the API).
        received: When it was received (``time.perf_counter``), for the ack's latency.
    """

    channel: str
    text: str
    connection_id: str
    client_msg_id: str | None = None
    user: str | None = None
    client_id: str | None = None
    name: str | None = None
    reply: asyncio.Future[Ack] | None = field(default=None, compare=False)
    received: float = field(default_factory=time.perf_counter, compare=False)

    @property
    def sender(self) -> str | None:
        """Who published it, for recognising a message sent twice (``sender_of``)."""
        return sender_of(self.user, self.client_id, self.connection_id)


def sender_of(user: str | None, client_id: str | None, connection_id: str) -> str | None:
    """Who published a message, for recognising one sent twice: the user, else the client id;
    the API. None for an anonymous connection, which is not recognised (clients from before
    exactly-once may use a clientMsgId more than once)."""
    if user is not None:
        return f"user:{user}"
    if client_id is not None:
        return f"client:{client_id}"
    if connection_id == API_CONNECTION:
        return API_CONNECTION
    return None


def payload_of(record: MessageRecord) -> bytes:
    """A stored message's broadcast, as sent on the wire (and kept in histories)."""
    return messages.broadcast(
        record.connection_id,
        record.message,
        record.timestamp,
        record.seq,
        record.user,
        channel=record.channel,
        client_id=record.client_id,
        name=record.name,
    ).encode()


@dataclass(slots=True)
class Publication:
    """A message with its seq, delivered to a channel's subscribers.

    Attributes:
        channel: Its channel.
        seq: Its seq in the channel.
        payload: Its ``broadcast`` as sent (UTF-8 JSON), the same bytes for every subscriber.
        connection_id: The sender's connection: it gets an ack, not the broadcast.
    """

    channel: str
    seq: int
    payload: bytes
    connection_id: str


@dataclass(slots=True)
class Ack:
    """The outcome of a publish, once it is settled.

    Attributes:
        draft: What was published.
        seq: Its seq (the original's, for a duplicate).
        epoch: Its channel's epoch.
        stored: False if it could not be stored (it was dead-lettered, or not published).
        duplicate: Whether it repeated a message already published.
        unavailable: Whether it was not published because the engine could not be reached
            (``seq`` is then 0): the sender may send it again.
    """

    draft: Draft
    seq: int
    epoch: str
    stored: bool = True
    duplicate: bool = False
    unavailable: bool = False


@dataclass(frozen=True, slots=True)
class Position:
    """Where a channel is: its epoch and its last seq."""

    epoch: str
    top: int


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a subscriber gets of a channel's past.

    Attributes:
        epoch: The channel's epoch.
        messages: ``broadcast`` payloads, oldest first.
        recovered: Whether these are exactly everything after the subscriber's ``since``.
        top: The channel's last seq when this was read: live messages up to it are covered.
    """

    epoch: str
    messages: list[bytes]
    recovered: bool
    top: int


@dataclass(frozen=True, slots=True)
class Member:
    """Somebody in a channel: a user, an anonymous client, or a bare connection.

    Attributes:
        key: Who it is (``user:alice``, ``client:<uuid>``, ``connection:<uuid>``): a user with
            two tabs is one member.
        fields: How it is shown (``{"user": "alice"}``, ``{"clientId": ..., "name": ...}``...).
    """

    key: str
    fields: tuple[tuple[str, str], ...]


class Listener(Protocol):
    """What the engine tells the clients connected here (``hub.Hub``)."""

    def published(self, publication: Publication) -> None:
        """Deliver a message to the channel's subscribers here (not to its sender)."""

    def acked(self, acks: Sequence[Ack]) -> None:
        """Tell senders here that their messages are settled."""

    def joined(
        self, channel: str, member: Member, connections: int, since: str, connection_id: str
    ) -> None:
        """A member's first connection (``connection_id``) subscribed to ``channel``."""

    def left(self, channel: str, member: Member, connection_id: str) -> None:
        """A member's last connection (``connection_id``) left ``channel``."""

    def signalled(self, channel: str, payload: bytes, connection_id: str) -> None:
        """Deliver an ephemeral message (typing) to the channel's subscribers but its sender."""

    def reset(self, channel: str) -> None:
        """The channel cannot go on from what was delivered here (its epoch changed, or
        messages were lost beyond recovery): its subscribers here must start again."""

    def invited(self, user: str, channel: str) -> None:
        """A direct message came for ``user`` in ``channel``: subscribe its connections here."""


class Engine(Protocol):
    """Channels' seqs, storage, history, read positions and presence."""

    listener: Listener

    async def start(self) -> None:
        """Open the storage; raises what keeps the engine from running."""

    async def stop(self, timeout: float) -> None:
        """Settle or dead-letter what is pending, within ``timeout`` seconds, and close."""

    def ready(self) -> bool:
        """Whether ``publish()`` may be called now."""

    async def wait_ready(self) -> None:
        """Wait until ``ready()`` (backpressure); raises ``EngineClosed`` once stopped."""

    async def position(self, channel: str) -> Position:
        """The channel's epoch (a channel without messages has one too) and last seq.

        Raises ``EngineUnavailable`` when it cannot be read now."""

    async def known(self, channel: str) -> bool:
        """Whether the channel exists: it has messages, or subscribers."""

    async def stored(
        self, channel: str, since: int | None, limit: int, max_bytes: int
    ) -> list[dict[str, object]]:
        """At most ``limit`` committed broadcasts after ``since`` (the latest if None);
        raises ``EngineClosed`` once stopped."""

    def publish(self, draft: Draft) -> None:
        """Number, store and deliver a message; the ``Ack`` comes through the listener.

        Raises ``EngineClosed`` once stopped."""

    async def history(
        self,
        channel: str,
        resume: Resume | None,
        *,
        count: int,
        resume_max: int,
        max_bytes: int | None,
    ) -> Recovery:
        """The last ``count`` messages, or, for a resume, everything after ``since``.

        Called when a connection here subscribes to ``channel``: from then on, until
        ``forget``, the channel's publications are delivered here (those up to
        ``Recovery.top`` may be delivered too, and the hub drops them). Raises
        ``EngineUnavailable`` when it cannot be read now."""

    async def read_position(self, channel: str, reader: str) -> int | None:
        """A reader's last read seq in a channel."""

    def set_read(self, channel: str, reader: str, seq: int) -> None:
        """Record a reader's last read seq in a channel."""

    def join(self, channel: str, member: Member, connection_id: str) -> None:
        """Count one more connection of ``member`` in ``channel``."""

    def leave(self, channel: str, member: Member, connection_id: str) -> None:
        """Count one connection of ``member`` less in ``channel``."""

    async def members(self, channel: str, most: int | None = None) -> list[dict[str, object]]:
        """A channel's presence, at most ``most`` members: fields, connections and since."""

    async def member_count(self, channel: str) -> int:
        """How many members a channel has."""

    def signal(self, channel: str, payload: bytes, connection_id: str) -> None:
        """Send an ephemeral message to a channel's subscribers (``Listener.signalled``)."""

    def forget(self, channel: str) -> None:
        """Nobody here is subscribed to ``channel`` any more: memory of it may go."""

    def watch_user(self, user: str) -> None:
        """A user's first connection here: invitations for it (``invite``) reach this node."""

    def unwatch_user(self, user: str) -> None:
        """A user's last connection here went."""

    def invite(self, user: str, channel: str) -> None:
        """Tell every other node that a direct message for ``user`` came in ``channel``
        (``Listener.invited``); the handler subscribes the connections here itself."""

    def health(self) -> dict[str, object]:
        """Figures for ``/healthz``."""

    def figures(self) -> dict[str, float]:
        """Counts for ``/metrics``, read when it is scraped (``chat_metrics``): any of
        ``presence_members``, ``queue_depth``, ``persisted``, ``retries``, ``dead_letters``."""


class NoListener:
    """The listener until the hub is attached: nobody to tell."""

    def published(self, publication: Publication) -> None:
        pass

    def acked(self, acks: Sequence[Ack]) -> None:
        pass

    def joined(
        self, channel: str, member: Member, connections: int, since: str, connection_id: str
    ) -> None:
        pass

    def left(self, channel: str, member: Member, connection_id: str) -> None:
        pass

    def signalled(self, channel: str, payload: bytes, connection_id: str) -> None:
        pass

    def reset(self, channel: str) -> None:
        pass

    def invited(self, user: str, channel: str) -> None:
        pass
