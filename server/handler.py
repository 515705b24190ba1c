"""The per-client coroutines: the chat endpoint and the echo endpoint.

The chat keeps one order: a message gets its seq, is queued for the database and (unless
``broadcast_after_commit``) is broadcast and added to the history, all in one event-loop step.
A new client is registered, greeted and given its history in one step too. So every client
sees the messages in seq order, and its history ends exactly where its live messages begin.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import rfc6455
from rfc6455 import CloseCode

from . import messages
from .auth import close_at_expiry, identity_of
from .departures import Departures
from .history import History, Plan, Resume, payload_size
from .manager import ConnectionManager, send_now
from .persistence import PersistenceClosed, PersistenceQueue
from .ratelimit import RateLimiter, TokenBucket, retry_after_ms
from .settings import Settings
from .store import MessageRecord

__all__ = ["ChatHandler", "echo", "payload"]

logger = logging.getLogger("server")


def payload(record: MessageRecord) -> bytes:
    """A message's broadcast, as sent on the wire (and kept in the history)."""
    return messages.broadcast(
        record.connection_id, record.message, record.timestamp, record.seq, record.user
    ).encode()


class ChatHandler:
    """Runs one chat client: greeting and history, then receive, persist and broadcast.

    It also hears from the persistence queue (``committed``, ``dead_lettered``) to answer
    each sender with an ack or an error, and, with ``broadcast_after_commit``, to broadcast.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        queue: PersistenceQueue,
        history: History,
        settings: Settings,
    ) -> None:
        self.manager = manager
        self.queue = queue
        self.history = history
        self.settings = settings
        self.departures = Departures(
            manager.broadcast, lambda: len(manager), rate=settings.leave_rate or None
        )

    async def __call__(self, connection: rfc6455.Connection) -> None:
        assert connection.request is not None
        identity = identity_of(connection.request)
        client = _Client(connection, str(uuid.uuid4()), None if identity is None else identity.user)
        expiry = close_at_expiry(connection, identity)
        try:
            await self._join(client)
            await self._receive(client)
        except rfc6455.ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            self._leave(client)

    async def _join(self, client: _Client) -> None:
        """Register, greet and send the history; no broadcast can come between them."""
        connection, connection_id = client.connection, client.id
        assert connection.request is not None
        settings = self.settings
        plan = self.history.plan(
            Resume.from_query(connection.request.query),
            last=self.queue.last_seq,
            count=settings.history,
            resume_max=settings.resume_max,
            max_bytes=settings.history_bytes,
        )
        reading = plan is not None and plan.read_after is not None
        # On hold while older messages are read: what is broadcast meanwhile waits for it.
        self.manager.add(connection_id, connection, hold=reading)
        logger.info("connect %s from %s (%d open)", connection_id, client.peer, len(self.manager))
        send_now(connection, messages.connection_id(connection_id))
        send_now(connection, messages.welcome(settings.welcome, self.history.epoch))
        if plan is None:
            return
        if not reading:
            send_now(
                connection, messages.history(plan.messages, self.history.epoch, plan.recovered)
            )
            return
        items, recovered = await self._read_older(plan)
        send_now(connection, messages.history(items, self.history.epoch, recovered))
        self.manager.release(connection_id)

    async def _read_older(self, plan: Plan) -> tuple[list[bytes], bool]:
        """The resume's messages when the oldest are no longer in memory."""
        assert plan.read_after is not None
        try:
            older = await self.queue.kept_after(
                plan.read_after, plan.read_through, most=plan.read_count, max_bytes=plan.read_bytes
            )
        except (PersistenceClosed, sqlite3.Error, OSError) as exc:
            logger.warning("history: cannot read messages after %d: %s", plan.read_after, exc)
            older = None
        # Failed, retention deleted some meanwhile, or more than a history may hold.
        if older is None:
            return plan.fallback, False
        items = [payload(record) for record in older]
        if plan.read_bytes is not None and payload_size(items) > plan.read_bytes:
            return plan.fallback, False
        return items + plan.messages, True

    async def _receive(self, client: _Client) -> None:
        connection, settings = client.connection, self.settings
        # Made at the first message: an idle client costs no buckets.
        limiter: RateLimiter | None = None
        limited = settings.rate_limit > 0
        async for text in connection:
            if not isinstance(text, str):
                await connection.close(
                    CloseCode.UNSUPPORTED_DATA, "binary messages are not supported"
                )
                return
            if limited and limiter is None:
                limiter = self._rate_limiter()
            if limiter is not None and (wait := limiter.admit(text)):
                # Refused before it gets a seq: neither stored nor broadcast. Its id is read
                # only now, for the error: a client refused 3 times is disconnected.
                refused = self._parse(text)
                client_msg_id = refused.client_msg_id
                send_now(connection, messages.rate_limited(retry_after_ms(wait), client_msg_id))
                if limiter.strike():
                    # Fail rather than close: a flooder's further frames are discarded
                    # (RFC 6455 §7.1.7), not queued while it ignores the close frame.
                    connection.fail(CloseCode.POLICY_VIOLATION, "rate limit")
                    return
                continue
            message = self._parse(text)
            if isinstance(message, messages.InvalidMessage):
                send_now(connection, messages.invalid_message(str(message), message.client_msg_id))
                continue
            if not self.queue.ready():
                # Backpressure: stop reading from this client until the writer catches up.
                await self.queue.wait_ready()
            record = self.queue.accept(client.id, message.text, message.client_msg_id, client.user)
            if not settings.broadcast_after_commit:
                self._publish(record)

    def _parse(self, text: str) -> messages.ChatMessage | messages.InvalidMessage:
        settings = self.settings
        try:
            return messages.parse(
                text, max_chars=settings.max_text_chars, max_bytes=settings.max_text_bytes
            )
        except messages.InvalidMessage as exc:
            return exc

    def _rate_limiter(self) -> RateLimiter:
        """A client's rate limits (``rate_limit`` is not 0)."""
        settings = self.settings
        size = TokenBucket(settings.byte_rate, settings.byte_burst) if settings.byte_rate else None
        return RateLimiter(TokenBucket(settings.rate_limit, settings.rate_burst), size)

    def _publish(self, record: MessageRecord) -> None:
        encoded = payload(record)
        self.history.append(record.seq, encoded)
        self.manager.broadcast(encoded, exclude=record.connection_id)

    def committed(self, batch: Sequence[MessageRecord]) -> None:
        """A batch is in the database: broadcast it if that waited for the commit, then ack."""
        self.history.finished(batch[-1].seq)
        after_commit = self.settings.broadcast_after_commit
        for record in batch:
            if after_commit:
                self._publish(record)
            self.manager.send(record.connection_id, messages.ack(record.seq, record.client_msg_id))

    def dead_lettered(self, batch: Sequence[MessageRecord]) -> None:
        """A batch could not be stored: its senders get an error instead of an ack."""
        self.history.finished(batch[-1].seq)
        for record in batch:
            self.manager.send(
                record.connection_id, messages.not_persisted(record.seq, record.client_msg_id)
            )

    def _leave(self, client: _Client) -> None:
        """Unregister the client and tell the others, exactly once."""
        if not self.manager.remove(client.id):
            return
        connection = client.connection
        logger.info(
            "disconnect %s from %s: %s (%d open)",
            client.id,
            client.peer,
            _describe_close(connection.protocol),
            len(self.manager),
        )
        # closeStatus only when the client sent a code: not for 1005 nor a drop (1006).
        close = connection.protocol.close_rcvd
        if close is None or close.code == CloseCode.NO_STATUS_RCVD:
            departure = messages.Departure(client.id, client.user)
        else:
            departure = messages.Departure(client.id, client.user, close.code, close.reason)
        self.departures.left(departure)


@dataclass(slots=True)
class _Client:
    """One chat client while its handler runs."""

    connection: rfc6455.Connection
    id: str
    user: str | None

    @property
    def peer(self) -> str:
        address = self.connection.remote_address
        return "unknown" if address is None else f"{address[0]}:{address[1]}"


def _describe_close(protocol: rfc6455.Protocol) -> str:
    """How a connection ended, for the log: who closed, the code, the reason escaped.

    A reason is the peer's text: ``repr`` escapes what could forge a log line (a newline).
    """
    rcvd, sent = protocol.close_rcvd, protocol.close_sent
    if sent is not None and (rcvd is None or protocol.close_initiator is protocol.side):
        answer = "" if rcvd is None else f", client answered {rcvd.code}"
        return f"server closed {sent.code} {sent.reason!r}{answer}"
    if rcvd is not None:
        return f"client closed {rcvd.code} {rcvd.reason!r}"
    return "connection lost (1006)"


async def echo(connection: rfc6455.Connection) -> None:
    """Send every message back unchanged (for conformance tests and benchmarks)."""
    async for message in connection:
        await connection.send(message)
