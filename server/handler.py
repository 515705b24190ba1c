"""The per-client coroutines: the chat endpoint and the echo endpoint.

A chat client is subscribed to the default channel from the start: it is registered, greeted
and given that channel's history as before. Then each text frame is one command
(``commands.py``), answered in order: a publish goes to the engine, which numbers, stores and
delivers it (``local_engine.py``); a subscribe holds the channel's live messages until its
history is sent (``hub.py``), so history and live messages meet with no gap and no duplicate.
A refused request gets an error and the connection stays open, but every error costs the
client one more token of its rate limit, so that a client that keeps sending bad requests is
refused and, three refusals later, disconnected (1008).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import sys
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field

import rfc6455
from rfc6455 import CloseCode
from rfc6455.typing import Data

from . import commands, messages
from .auth import close_at_expiry, identity_of
from .channels import DEFAULT_CHANNEL, direct_channel, direct_users
from .chat_metrics import ChatMetrics, close_of
from .commands import CommandError
from .departures import Departures
from .engine import Draft, Engine, EngineClosed, EngineUnavailable, Member
from .history import Resume
from .hub import Hub, Subscriber
from .manager import ConnectionManager
from .namespaces import Namespaces
from .ratelimit import RateLimiter, TokenBucket, retry_after_ms
from .settings import Settings

__all__ = ["MAX_CHANNELS", "MAX_PRESENCE", "TYPING_INTERVAL", "ChatHandler", "echo"]

logger = logging.getLogger("server")

#: Channels one connection may be subscribed to at once (Centrifugo's default).
MAX_CHANNELS = 128
#: Members listed in a presence snapshot; ``count`` says how many there are.
MAX_PRESENCE = 1000
#: Seconds between two typing signals of one member in one channel that are forwarded.
TYPING_INTERVAL = 2.0
# Typing times kept before the stale ones are swept.
_TYPING_SWEEP = 10_000


@dataclass(slots=True)
class _Client:
    """One chat client while its handler runs."""

    connection: rfc6455.Connection
    id: str
    user: str | None
    patterns: tuple[str, ...] | None = None
    client_id: str | None = None
    name: str | None = None
    subscriptions: dict[str, Subscriber] = field(default_factory=dict)
    limiter: RateLimiter | None = None
    # Made once (one for all its channels' presence), again after a hello.
    _member: Member | None = None

    @property
    def peer(self) -> str:
        address = self.connection.remote_address
        return "unknown" if address is None else f"{address[0]}:{address[1]}"

    @property
    def member(self) -> Member:
        """Who the client is in presence: its user, its client id, or its connection."""
        if self._member is None:
            self._member = _member_of(self)
        return self._member

    def identify(self, client_id: str, name: str | None) -> None:
        """Take the identity a ``hello`` gives."""
        self.client_id, self.name, self._member = client_id, name, None

    @property
    def reader(self) -> str | None:
        """Whose read positions the client records: its user or its client id."""
        if self.user is not None:
            return f"user:{self.user}"
        if self.client_id is not None:
            return f"client:{self.client_id}"
        return None

    def draft(self, channel: str, text: str, client_msg_id: str | None) -> Draft:
        return Draft(channel, text, self.id, client_msg_id, self.user, self.client_id, self.name)


def _member_of(client: _Client) -> Member:
    if client.user is not None:
        return Member(f"user:{client.user}", (("user", client.user), ("name", client.user)))
    if client.client_id is not None:
        fields = [("clientId", client.client_id)]
        if client.name is not None:
            fields.append(("name", client.name))
        return Member(f"client:{client.client_id}", tuple(fields))
    return Member(f"connection:{client.id}", (("connectionId", client.id),))


class ChatHandler:
    """Runs one chat client: greeting and history, then its commands.

    Args:
        manager: The open connections.
        engine: Seqs, storage, history, presence.
        hub: The subscriptions here, and the fan-out.
        namespaces: The channels' options.
        settings: The server's settings.
        metrics: Counts messages received, rate-limited ones, resumes.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        engine: Engine,
        hub: Hub,
        namespaces: Namespaces,
        settings: Settings,
        metrics: ChatMetrics | None = None,
    ) -> None:
        self.manager = manager
        self.metrics = metrics or ChatMetrics()
        self.engine = engine
        self.hub = hub
        self.namespaces = namespaces
        self.settings = settings
        self.departures = Departures(
            lambda payload: hub.broadcast(DEFAULT_CHANNEL, payload),
            lambda: len(manager),
            rate=settings.leave_rate or None,
        )
        self._typing: dict[tuple[str, str], float] = {}
        # The clients connected, by connection id: a direct message subscribes its users'.
        self._clients: dict[str, _Client] = {}
        # Histories sent by themselves (a channel started again, another node's invitation).
        self._resets: set[asyncio.Task[None]] = set()
        hub.on_reset = self._reset
        hub.on_invited = self._invited

    async def __call__(self, connection: rfc6455.Connection) -> None:
        request = connection.request
        assert request is not None
        identity = identity_of(request)
        client = _Client(
            connection,
            str(uuid.uuid4()),
            None if identity is None else identity.user,
            None if identity is None else identity.channels,
        )
        if client.user is None:
            # Checked by the access hook: the handshake of a bad one was refused with 400.
            client.client_id, client.name = commands.identity_from_query(request.query)
        expiry = close_at_expiry(connection, identity)
        try:
            if await self._join(client):
                await self._receive(client)
        except rfc6455.ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            self._leave(client)

    async def _join(self, client: _Client) -> bool:
        """Register, greet and send the default channel's history (none comes between).

        Returns False if the engine cannot be reached: the client is told to come back.
        """
        connection, engine, settings = client.connection, self.engine, self.settings
        assert connection.request is not None
        if client.user is not None and not self.manager.of_user(client.user):
            engine.watch_user(client.user)
        self.manager.add(client.id, connection, client.user)
        self._clients[client.id] = client
        try:
            self._check_allowed(client, DEFAULT_CHANNEL)
        except CommandError:
            subscriber = None  # a token or namespace that keeps the client out of general
        else:
            subscriber = self._subscribe_now(client, DEFAULT_CHANNEL)
        resume = Resume.from_query(connection.request.query)
        count = self.namespaces.of(DEFAULT_CHANNEL).history
        try:
            if subscriber is None:
                recovery = None
                epoch = (await engine.position(DEFAULT_CHANNEL)).epoch
            else:
                recovery = await engine.history(
                    DEFAULT_CHANNEL,
                    resume,
                    count=count,
                    resume_max=settings.resume_max,
                    max_bytes=settings.history_bytes,
                )
                epoch = recovery.epoch
        except EngineUnavailable:
            # RFC 6455 §7.4.1 (IANA registry): 1013, a temporary condition.
            await connection.close(CloseCode.TRY_AGAIN_LATER, "chat unavailable: try again")
            return False
        logger.info(
            "connect %s from %s (%d open)",
            client.id,
            client.peer,
            len(self.manager),
            extra={
                "event": "connect",
                "connection_id": client.id,
                "user": client.user,
                "channel": DEFAULT_CHANNEL if subscriber is not None else None,
                "peer": client.peer,
                "open": len(self.manager),
            },
        )
        self.manager.send_now(connection, messages.connection_id(client.id))
        self.manager.send_now(connection, messages.welcome(settings.welcome, epoch))
        if subscriber is None or recovery is None:
            return True
        self._count_resume(resume, recovery.recovered, len(recovery.messages))
        if resume is not None or count:
            self.manager.send_now(
                connection,
                messages.history(recovery.messages, recovery.epoch, recovery.recovered),
            )
        self.hub.release(subscriber, recovery.top)
        return True

    def _subscribe_now(self, client: _Client, channel: str) -> Subscriber:
        """Subscribe (held until its history is sent) and count the client in presence."""
        # One string for a channel's name however many subscribe (each request brings its
        # own): sys.intern's strings go when no one holds them.
        channel = sys.intern(channel)
        subscriber = self.hub.subscribe(channel, client.id, client.connection)
        client.subscriptions[channel] = subscriber
        self.engine.join(channel, client.member, client.id)
        return subscriber

    def _unsubscribe_now(self, client: _Client, channel: str) -> None:
        del client.subscriptions[channel]
        self.hub.unsubscribe(channel, client.id)
        self.engine.leave(channel, client.member, client.id)
        if not self.hub.count(channel):
            self.engine.forget(channel)

    async def _receive(self, client: _Client) -> None:
        connection, settings = client.connection, self.settings
        limited = settings.rate_limit > 0
        received, received_bytes = self.metrics.messages_received, self.metrics.bytes_received
        async for text in connection:
            received.value += 1
            if not isinstance(text, str):
                received_bytes.value += len(text)
                await connection.close(
                    CloseCode.UNSUPPORTED_DATA, "binary messages are not supported"
                )
                return
            received_bytes.value += messages.utf8_size(text)
            if limited and client.limiter is None:
                # Made at the first message: an idle client costs no buckets.
                client.limiter = self._rate_limiter()
            limiter = client.limiter
            if limiter is not None and (wait := limiter.admit(text)):
                # Refused before it gets a seq: neither stored nor broadcast. Its id is read
                # only now, for the error: a client refused 3 times is disconnected.
                self.metrics.rate_limited.value += 1
                self.manager.send_now(
                    connection, messages.rate_limited(retry_after_ms(wait), _id_of(text))
                )
                if limiter.strike():
                    # Fail rather than close: a flooder's further frames are discarded
                    # (RFC 6455 §7.1.7), not queued while it ignores the close frame.
                    connection.fail(CloseCode.POLICY_VIOLATION, "rate limit")
                    return
                continue
            try:
                # The command is not kept in this frame, nor (below) the text: a client that
                # then idles would keep its last request alive, its text twice.
                await self._run(
                    client,
                    commands.read(
                        text, max_chars=settings.max_text_chars, max_bytes=settings.max_text_bytes
                    ),
                )
            except CommandError as exc:
                if limiter is not None:
                    limiter.messages.take(1)
                self.manager.send_now(
                    connection,
                    messages.error(exc.code, str(exc), exc.client_msg_id, exc.channel),
                )
            del text

    async def _run(self, client: _Client, command: commands.Command) -> None:
        """Do what a command asks; raises ``CommandError`` to refuse it."""
        match command:
            case commands.Publish(channel, text, client_msg_id):
                await self._publish(client, channel, text, client_msg_id)
            case commands.Subscribe(channel, since, epoch):
                resume = None if since is None or epoch is None else Resume(since, epoch)
                await self._subscribe(client, channel, resume)
            case commands.Unsubscribe(channel):
                if channel not in client.subscriptions:
                    raise CommandError(
                        "not_subscribed", f"not subscribed to {channel}", None, channel
                    )
                self._unsubscribe_now(client, channel)
                self.manager.send_now(client.connection, messages.unsubscribed(channel))
            case commands.Direct(to, text, client_msg_id):
                await self._direct(client, to, text, client_msg_id)
            case commands.Hello(client_id, name):
                self._hello(client, client_id, name)
            case commands.PresenceQuery(channel):
                self._check_presence(client, channel)
                try:
                    members = await self._presence(channel)
                except EngineUnavailable:
                    raise _unavailable(channel) from None
                self.manager.send_now(client.connection, messages.presence(channel, *members))
            case commands.Typing(channel):
                self._check_subscribed(client, channel)
                self._typed(client, channel)
            case commands.Read(channel, seq):
                await self._read(client, channel, seq)

    async def _publish(
        self, client: _Client, channel: str, text: str, client_msg_id: str | None
    ) -> None:
        self._check_subscribed(client, channel, client_msg_id)
        if self.namespaces.of(channel).publish != "members":
            raise CommandError(
                "forbidden", f"only the server publishes in {channel}", client_msg_id, channel
            )
        await self._submit(client.draft(channel, text, client_msg_id))

    async def _submit(self, draft: Draft) -> None:
        engine = self.engine
        if not engine.ready():
            # Backpressure: stop reading from this client until the writer catches up.
            try:
                await engine.wait_ready()
            except EngineClosed:
                return
        engine.publish(draft)

    async def _direct(self, client: _Client, to: str, text: str, client_msg_id: str | None) -> None:
        if client.user is None:
            raise CommandError(
                "forbidden", "direct messages are between authenticated users", client_msg_id
            )
        channel = direct_channel(client.user, to)
        if channel is None:
            raise CommandError(
                "unknown_user", f"no direct messages with {to[:64]!r}", client_msg_id
            )
        # It reaches every connection of both users: those not subscribed to the pair's
        # channel are now, as if they had asked (``subscribed``, with the latest messages and
        # the epoch to resume from), unless they are in as many channels as they may be;
        # those here first, then those on other nodes (``Listener.invited``).
        for user in {client.user, to}:
            for connection_id in self.manager.of_user(user):
                other = self._clients.get(connection_id)
                if other is not None and self._may_join(other, channel):
                    with contextlib.suppress(rfc6455.ConnectionClosed, CommandError):
                        await self._send_subscription(other, channel, None)
            self.engine.invite(user, channel)
        await self._submit(client.draft(channel, text, client_msg_id))

    def _may_join(self, client: _Client, channel: str) -> bool:
        return channel not in client.subscriptions and len(client.subscriptions) < MAX_CHANNELS

    def _invited(self, user: str, channel: str) -> None:
        """Another node's direct message: subscribe the user's connections here."""
        for connection_id in self.manager.of_user(user):
            client = self._clients.get(connection_id)
            if client is not None and self._may_join(client, channel):
                subscriber = self._subscribe_now(client, channel)
                self._spawn(self._invite(client, channel, subscriber))

    async def _invite(self, client: _Client, channel: str, subscriber: Subscriber) -> None:
        try:
            await self._send_history(client, channel, subscriber, None, restart=False)
        except EngineUnavailable:
            if client.subscriptions.get(channel) is subscriber:
                self._unsubscribe_now(client, channel)
        except rfc6455.ConnectionClosed:
            pass

    async def _subscribe(self, client: _Client, channel: str, resume: Resume | None) -> None:
        if channel in client.subscriptions:
            raise CommandError(
                "already_subscribed", f"already subscribed to {channel}", None, channel
            )
        if len(client.subscriptions) >= MAX_CHANNELS:
            raise CommandError(
                "too_many_channels",
                f"at most {MAX_CHANNELS} channels at once: unsubscribe from one first",
                None,
                channel,
            )
        self._check_allowed(client, channel)
        options = self.namespaces.of(channel)
        if options.max_members and await self._count(channel) >= options.max_members:
            raise CommandError("forbidden", f"{channel} is full", None, channel)
        await self._send_subscription(client, channel, resume)

    async def _send_subscription(
        self, client: _Client, channel: str, resume: Resume | None
    ) -> None:
        """Subscribe, then send ``subscribed``: its live messages wait for their history.

        Raises:
            rfc6455.ConnectionClosed: If the client's connection is closing.
            CommandError: ``unavailable``, if the engine cannot be reached.
        """
        subscriber = self._subscribe_now(client, channel)
        try:
            await self._send_history(client, channel, subscriber, resume, restart=False)
        except EngineUnavailable:
            if client.subscriptions.get(channel) is subscriber:
                self._unsubscribe_now(client, channel)
            raise _unavailable(channel) from None

    async def _send_history(
        self,
        client: _Client,
        channel: str,
        subscriber: Subscriber,
        resume: Resume | None,
        *,
        restart: bool,
    ) -> None:
        """Send a held subscriber its history, then release it: ``subscribed``, or
        ``history`` when the default channel starts again (as it was sent at connect).

        Raises:
            EngineUnavailable: The engine cannot be reached.
        """
        options = self.namespaces.of(channel)
        engine, settings = self.engine, self.settings
        recovery = await engine.history(
            channel,
            resume,
            count=options.history,
            resume_max=settings.resume_max,
            max_bytes=settings.history_bytes,
        )
        if restart and channel == DEFAULT_CHANNEL:
            payload = messages.history(recovery.messages, recovery.epoch, recovery.recovered)
        else:
            reader = client.reader
            last_read = None if reader is None else await engine.read_position(channel, reader)
            presence = await self._presence(channel) if options.presence else None
            payload = messages.subscribed(
                channel, recovery.messages, recovery.epoch, recovery.recovered, last_read, presence
            )
        if client.subscriptions.get(channel) is not subscriber:
            return  # the connection is gone, or left the channel meanwhile
        self.manager.send_now(client.connection, payload)
        self._count_resume(resume, recovery.recovered, len(recovery.messages))
        self.hub.release(subscriber, recovery.top)

    def _count_resume(self, resume: Resume | None, recovered: bool, sent: int) -> None:
        """Count a resume (a ``since`` and ``epoch`` given) and the messages it recovered."""
        if resume is None:
            return
        metrics = self.metrics
        (metrics.resumes_recovered if recovered else metrics.resumes_lost).value += 1
        if recovered:
            metrics.recovered_messages.value += sent

    def _reset(self, channel: str) -> None:
        """The engine lost the channel's thread (``Listener.reset``): every subscriber here
        gets its latest messages again, with ``recovered: false``."""
        for connection_id in self.hub.connections(channel):
            client = self._clients.get(connection_id)
            subscriber = None if client is None else client.subscriptions.get(channel)
            if client is not None and subscriber is not None and subscriber.held is None:
                self.hub.hold(subscriber)
                self._spawn(self._restart(client, channel, subscriber))

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        """Run a history sent by itself in the background, kept until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._resets.add(task)
        task.add_done_callback(self._resets.discard)

    async def _restart(self, client: _Client, channel: str, subscriber: Subscriber) -> None:
        try:
            await self._send_history(client, channel, subscriber, None, restart=True)
        except EngineUnavailable:
            # Its thread cannot be read: it reconnects and resumes later.
            client.connection.fail(CloseCode.TRY_AGAIN_LATER, "chat unavailable: resume again")
        except rfc6455.ConnectionClosed:
            pass

    async def _presence(self, channel: str) -> tuple[list[dict[str, object]], int]:
        """A channel's first ``MAX_PRESENCE`` members, and how many there are: a snapshot of
        a crowd would cost every subscribe a megabyte."""
        engine = self.engine
        return await engine.members(channel, MAX_PRESENCE), await engine.member_count(channel)

    async def _count(self, channel: str) -> int:
        try:
            return await self.engine.member_count(channel)
        except EngineUnavailable:
            raise _unavailable(channel) from None

    def _check_allowed(self, client: _Client, channel: str) -> None:
        """Whether the client may use ``channel``: its namespace, its token's claim."""
        options = self.namespaces.of(channel)
        users = direct_users(channel)
        if users is not None:
            if client.user not in users:
                raise CommandError("forbidden", f"{channel} is another pair's", None, channel)
            return
        if client.user is None and not options.anonymous:
            raise CommandError("forbidden", f"{channel} is for authenticated users", None, channel)
        patterns = client.patterns
        if patterns is None:
            if options.require_claim and client.user is not None:
                raise CommandError(
                    "forbidden", f"your token does not allow {channel}", None, channel
                )
            return
        if not any(fnmatch.fnmatchcase(channel, pattern) for pattern in patterns):
            raise CommandError("forbidden", f"your token does not allow {channel}", None, channel)

    def _check_subscribed(
        self, client: _Client, channel: str, client_msg_id: str | None = None
    ) -> None:
        if channel not in client.subscriptions:
            raise CommandError(
                "not_subscribed", f"subscribe to {channel} first", client_msg_id, channel
            )

    def _check_presence(self, client: _Client, channel: str) -> None:
        self._check_subscribed(client, channel)
        if not self.namespaces.of(channel).presence:
            raise CommandError("forbidden", f"{channel} does not show its members", None, channel)

    def _hello(self, client: _Client, client_id: str, name: str | None) -> None:
        if client.user is not None:
            raise CommandError("forbidden", "an authenticated client is known by its user")
        # Presence counts the client under its new identity from now on.
        for channel in client.subscriptions:
            self.engine.leave(channel, client.member, client.id)
        client.identify(client_id, name)
        for channel in client.subscriptions:
            self.engine.join(channel, client.member, client.id)
        fields = dict(client.member.fields)
        self.manager.send_now(client.connection, messages.hello(fields))

    def _typed(self, client: _Client, channel: str) -> None:
        """Forward a typing signal, at most one per member and channel every 2 s."""
        member = client.member
        key = (channel, member.key)
        now = time.monotonic()
        if now - self._typing.get(key, -TYPING_INTERVAL) < TYPING_INTERVAL:
            return
        if len(self._typing) >= _TYPING_SWEEP:
            self._typing = {k: t for k, t in self._typing.items() if now - t < TYPING_INTERVAL}
        self._typing[key] = now
        payload = messages.typing(channel, dict(member.fields)).encode()
        self.engine.signal(channel, payload, client.id)

    async def _read(self, client: _Client, channel: str, seq: int) -> None:
        self._check_subscribed(client, channel)
        reader = client.reader
        if reader is None:
            raise CommandError(
                "forbidden",
                "read positions are kept for a user or a clientId (hello)",
                None,
                channel,
            )
        try:
            top = (await self.engine.position(channel)).top
        except EngineUnavailable:
            raise _unavailable(channel) from None
        if seq > top:
            raise CommandError("bad_request", f"{channel} has no message {seq}", None, channel)
        self.engine.set_read(channel, reader, seq)

    def _rate_limiter(self) -> RateLimiter:
        """A client's rate limits (``rate_limit`` is not 0)."""
        settings = self.settings
        size = TokenBucket(settings.byte_rate, settings.byte_burst) if settings.byte_rate else None
        return RateLimiter(TokenBucket(settings.rate_limit, settings.rate_burst), size)

    def _leave(self, client: _Client) -> None:
        """Unsubscribe and unregister the client, and tell the others, exactly once."""
        for channel in list(client.subscriptions):
            self._unsubscribe_now(client, channel)
        self._clients.pop(client.id, None)
        removed = self.manager.remove(client.id, client.user)
        if client.user is not None and not self.manager.of_user(client.user):
            self.engine.unwatch_user(client.user)
        if not removed:
            return
        connection = client.connection
        ending = _Ending.of(connection.protocol)
        logger.info(
            "disconnect %s from %s: %s (%d open)",
            client.id,
            client.peer,
            ending,
            len(self.manager),
            extra={
                "event": "disconnect",
                "connection_id": client.id,
                "user": client.user,
                "peer": client.peer,
                "initiator": ending.initiator,
                "close_code": ending.code,
                "close_reason": ending.reason,
                "open": len(self.manager),
            },
        )
        # closeStatus only when the client sent a code: not for 1005 nor a drop (1006).
        close = connection.protocol.close_rcvd
        if close is None or close.code == CloseCode.NO_STATUS_RCVD:
            departure = messages.Departure(client.id, client.user)
        else:
            departure = messages.Departure(client.id, client.user, close.code, close.reason)
        self.departures.left(departure)


def _unavailable(channel: str) -> CommandError:
    return CommandError("unavailable", "the chat cannot reach its engine: try again", None, channel)


def _id_of(text: str) -> str | None:
    """A refused frame's clientMsgId, if it has a valid one (for the error)."""
    value = messages.loads(text)
    if isinstance(value, dict) and "clientMsgId" in value:
        try:
            return messages.check_client_msg_id(value["clientMsgId"])
        except messages.InvalidMessage:
            return None
    return None


@dataclass(frozen=True, slots=True)
class _Ending:
    """How a connection ended, for the log: who closed it, with which code and reason.

    When the server closed (a keepalive timeout, a slow consumer, an expired token...) the
    code is the one it sent, whatever the client answered; a drop without a close frame is
    1006 (RFC 6455 §7.1.5).

    Attributes:
        initiator: ``server``, ``client`` or ``lost``.
        code: The close code of the side that closed.
        reason: Its reason.
        answer: The code the client answered the server's close with, if it did.
    """

    initiator: str
    code: int
    reason: str
    answer: int | None = None

    @classmethod
    def of(cls, protocol: rfc6455.Protocol) -> _Ending:
        code, by = close_of(protocol)
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        if by == "server" and sent is not None:
            return cls(by, code, sent.reason, None if rcvd is None else rcvd.code)
        if by == "client" and rcvd is not None:
            return cls(by, code, rcvd.reason)
        return cls("lost", code, "")

    def __str__(self) -> str:
        # A reason is the peer's text: repr escapes what could forge a log line (a newline).
        if self.initiator == "lost":
            return f"connection lost ({self.code})"
        answer = "" if self.answer is None else f", client answered {self.answer}"
        return f"{self.initiator} closed {self.code} {self.reason!r}{answer}"


async def echo(connection: rfc6455.Connection, metrics: ChatMetrics | None = None) -> None:
    """Send every message back unchanged (for conformance tests and benchmarks).

    ``recv()`` rather than ``async for``: the iterator's ``__anext__`` is one more coroutine
    per message, a tenth of the Python this endpoint runs for a small one. Its messages and
    bytes are counted (each way) when the connection ends: a count in a local variable costs
    a third of one in a shared counter, on the path the echo benchmarks measure.
    """
    recv, send = connection.recv, connection.send
    count = size = 0
    try:
        with contextlib.suppress(rfc6455.ConnectionClosedOK):
            while True:
                message = await recv()
                await send(message)
                count += 1
                # Bytes and ASCII text: their length; other text: its UTF-8's.
                size += len(message) if message.isascii() else len(_as_bytes(message))
    finally:
        if metrics is not None:
            metrics.echoed(count, size)


def _as_bytes(message: Data) -> bytes:
    return message.encode() if isinstance(message, str) else message
