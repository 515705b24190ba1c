"""The hub: who is subscribed to what here, and the fan-out to them (the engine's listener).

A channel's subscribers are a dict of connection id to ``Subscriber``; a publication is one
``PreparedMessage``, framed once (and compressed once for every subscriber with the same
permessage-deflate parameters), written to each of them without waiting, so a slow or dead
client never delays the others. A subscriber is held from the step it subscribes in until its
history is sent (``release``): what is delivered meanwhile is kept, in order, bounded in bytes
(1013 beyond, and the client resumes), and what its history already holds (``Recovery.top``)
is dropped, so it gets no gap and no duplicate whatever the engine."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import rfc6455
from rfc6455.frames import CloseCode

from . import messages
from .chat_metrics import ChatMetrics
from .engine import Ack, Member, Publication
from .manager import ConnectionManager, text_frame
from .namespaces import Namespaces

__all__ = ["Hub", "Subscriber", "member_fields"]

logger = logging.getLogger("server.hub")


class Subscriber:
    """One connection's subscription to one channel, and what is held for it."""

    __slots__ = ("connection", "connection_id", "held", "held_size")

    def __init__(self, connection_id: str, connection: rfc6455.Connection) -> None:
        self.connection_id = connection_id
        self.connection = connection
        # (seq or None, message) while the history is being read; None once released.
        self.held: list[tuple[int | None, rfc6455.PreparedMessage]] | None = []
        self.held_size = 0


def member_fields(member: Member, connections: int, since: str) -> dict[str, object]:
    """A member as clients are shown it: who, how many connections, since when."""
    return {**dict(member.fields), "connections": connections, "since": since}


class Hub:
    """Subscriptions of the connections here; delivers what the engine publishes.

    Args:
        manager: The open connections (for acks, which go to one connection).
        namespaces: Whether a channel announces its members.
        max_held: The most bytes held for one subscriber while its history is read.
        metrics: Counts what is sent, how long a fan-out takes, acks' latency.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        namespaces: Namespaces,
        max_held: int = 2**20,
        metrics: ChatMetrics | None = None,
    ) -> None:
        self.manager = manager
        self.namespaces = namespaces
        self.max_held = max_held
        self.metrics = metrics = metrics or ChatMetrics()
        self._sent, self._sent_bytes = metrics.messages_sent, metrics.bytes_sent
        self._duration = metrics.broadcast_duration
        self._channels: dict[str, dict[str, Subscriber]] = {}
        #: Told which channel to start again (``reset``), and which user to subscribe to a
        #: direct message's channel (``invited``): the chat handler sets them.
        self.on_reset: Callable[[str], None] | None = None
        self.on_invited: Callable[[str, str], None] | None = None

    def subscribe(
        self, channel: str, connection_id: str, connection: rfc6455.Connection
    ) -> Subscriber:
        """Add a subscriber, held until ``release``."""
        subscriber = Subscriber(connection_id, connection)
        subscribers = self._channels.get(channel)
        if subscribers is None:
            subscribers = self._channels[channel] = {}
        subscribers[connection_id] = subscriber
        return subscriber

    def release(self, subscriber: Subscriber, top: int) -> None:
        """Write what was held for a subscriber but what its history covers (seq <= ``top``),
        then deliver to it directly.

        Raises:
            rfc6455.ConnectionClosed: If the connection is closing.
        """
        held, subscriber.held = subscriber.held or [], None
        for seq, message in held:
            if seq is None or seq > top:
                subscriber.connection.send_prepared(message)
                self._sent.value += 1
                self._sent_bytes.value += message.size

    def hold(self, subscriber: Subscriber) -> None:
        """Hold a released subscriber's messages again, until its next ``release``."""
        subscriber.held = []
        subscriber.held_size = 0

    def unsubscribe(self, channel: str, connection_id: str) -> bool:
        """Remove a subscriber; False if it was not subscribed."""
        subscribers = self._channels.get(channel)
        if subscribers is None or subscribers.pop(connection_id, None) is None:
            return False
        if not subscribers:
            del self._channels[channel]
        return True

    def count(self, channel: str) -> int:
        """How many connections here are subscribed to ``channel``."""
        return len(self._channels.get(channel, ()))

    def connections(self, channel: str) -> list[str]:
        """The connections here subscribed to ``channel``."""
        return list(self._channels.get(channel, ()))

    def counts(self) -> dict[str, int]:
        """Every channel with subscribers here, and how many."""
        return {channel: len(subscribers) for channel, subscribers in self._channels.items()}

    def broadcast(self, channel: str, payload: str | bytes, exclude: str | None = None) -> int:
        """Deliver a message without a seq to a channel's subscribers; returns how many."""
        return self._fan_out(channel, None, text_frame(payload), exclude)

    # The engine's listener.

    def published(self, publication: Publication) -> None:
        """Deliver a message to its channel's subscribers but its sender."""
        self._fan_out(
            publication.channel,
            publication.seq,
            text_frame(publication.payload),
            publication.connection_id,
        )

    def acked(self, acks: Sequence[Ack]) -> None:
        """Tell each sender that its message is stored (or could not be)."""
        send = self.manager.send
        latency, now = self.metrics.ack_latency, time.perf_counter()
        for ack in acks:
            draft = ack.draft
            if ack.stored:
                latency.observe(now - draft.received)
            if draft.reply is not None:
                if not draft.reply.done():
                    draft.reply.set_result(ack)
                continue
            if ack.unavailable:
                reply = messages.error(
                    "unavailable",
                    "the chat cannot reach its engine: send it again",
                    draft.client_msg_id,
                    draft.channel,
                )
            elif ack.stored:
                reply = messages.ack(
                    ack.seq, draft.client_msg_id, draft.channel, duplicate=ack.duplicate
                )
            else:
                reply = messages.not_persisted(ack.seq, draft.client_msg_id, draft.channel)
            send(draft.connection_id, reply)

    def joined(
        self, channel: str, member: Member, connections: int, since: str, connection_id: str
    ) -> None:
        """Announce a member's arrival to the others, if the channel announces them."""
        if self.namespaces.of(channel).join_leave:
            fields = member_fields(member, connections, since)
            payload = messages.membership("joined", channel, fields)
            self.broadcast(channel, payload, exclude=connection_id)

    def left(self, channel: str, member: Member, connection_id: str) -> None:
        """Announce a member's departure to the others, if the channel announces them."""
        if self.namespaces.of(channel).join_leave:
            fields: dict[str, object] = dict(member.fields)
            payload = messages.membership("left", channel, fields)
            self.broadcast(channel, payload, exclude=connection_id)

    def signalled(self, channel: str, payload: bytes, connection_id: str) -> None:
        """Deliver an ephemeral message to a channel's subscribers but its sender."""
        self._fan_out(channel, None, text_frame(payload), connection_id)

    def reset(self, channel: str) -> None:
        """The engine lost the channel's thread: its subscribers here start again."""
        if self.on_reset is not None:
            self.on_reset(channel)

    def invited(self, user: str, channel: str) -> None:
        """A direct message for ``user`` came in ``channel`` on another node."""
        if self.on_invited is not None:
            self.on_invited(user, channel)

    def _fan_out(
        self, channel: str, seq: int | None, message: rfc6455.PreparedMessage, exclude: str | None
    ) -> int:
        subscribers = self._channels.get(channel)
        if subscribers is None:
            return 0
        started = time.perf_counter()
        sent = written = 0
        for connection_id, subscriber in subscribers.items():
            if connection_id == exclude:
                continue
            held = subscriber.held
            if held is not None:
                held.append((seq, message))
                subscriber.held_size += message.size
                if subscriber.held_size > self.max_held:
                    subscriber.held = None
                    # RFC 6455 §7.4.1 (IANA registry): 1013, a temporary condition.
                    subscriber.connection.fail(
                        CloseCode.TRY_AGAIN_LATER, "history too slow: resume again"
                    )
                    self.metrics.slow_history.value += 1
                    continue
                sent += 1
                continue
            try:
                subscriber.connection.send_prepared(message)
            except rfc6455.ConnectionClosed:
                continue
            written += 1
        # Counted once per fan-out, not per subscriber (held messages count when released).
        self._sent.value += written
        self._sent_bytes.value += written * message.size
        self._duration.observe(time.perf_counter() - started)
        return sent + written
