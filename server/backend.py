"""ChatBackend: the chat's side of the HTTP API (``api.ApiBackend``), on its engine and hub.

A publish through the API is a message like any other, from the connection id ``api``: it
gets its channel's next seq, is delivered to the subscribers, stored, and answered once it is
committed. Its ``idempotencyKey`` plays the part of a clientMsgId, so a backend that retries a
publish gets the first one's seq with ``"duplicate": true``. ``history`` reads what is
committed; ``disconnect`` closes connections with the code and reason given.
"""

from __future__ import annotations

import asyncio

import rfc6455

from .api import ApiError
from .channels import check_name
from .engine import API_CONNECTION, Ack, Draft, Engine, EngineClosed, EngineUnavailable
from .hub import Hub
from .manager import ConnectionManager

__all__ = ["ChatBackend"]


class ChatBackend:
    """The HTTP API's view of the chat.

    Args:
        engine: Seqs, storage, history, presence.
        hub: The subscriptions here.
        manager: The open connections.
        max_bytes: The most bytes of messages one history answer holds.
    """

    def __init__(
        self, engine: Engine, hub: Hub, manager: ConnectionManager, max_bytes: int
    ) -> None:
        self.engine = engine
        self.hub = hub
        self.manager = manager
        self.max_bytes = max_bytes
        self._closing: set[asyncio.Task[None]] = set()

    async def publish(
        self, channel: str, message: str, idempotency_key: str | None
    ) -> dict[str, object]:
        """Publish ``message``; return its seq and epoch once it is committed."""
        _check(channel)
        engine = self.engine
        reply: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        try:
            if not engine.ready():
                await engine.wait_ready()
            engine.publish(Draft(channel, message, API_CONNECTION, idempotency_key, reply=reply))
        except EngineClosed:
            raise ApiError(503, "unavailable", "the server is shutting down") from None
        ack = await reply
        if ack.unavailable:
            raise _unavailable()
        if not ack.stored:
            raise ApiError(503, "not_persisted", f"message {ack.seq} could not be stored")
        answer: dict[str, object] = {"channel": channel, "seq": ack.seq, "epoch": ack.epoch}
        if ack.duplicate:
            answer["duplicate"] = True
        return answer

    def channels(self) -> list[dict[str, object]]:
        """The channels with subscribers here, by name."""
        return [
            {"channel": channel, "subscribers": count}
            for channel, count in sorted(self.hub.counts().items())
        ]

    async def presence(self, channel: str) -> list[dict[str, object]]:
        """The members of a channel somebody is subscribed to."""
        _check(channel)
        if not self.hub.count(channel):
            raise ApiError(404, "unknown_channel", f"nobody is subscribed to {channel}")
        try:
            return await self.engine.members(channel)
        except EngineUnavailable:
            raise _unavailable() from None

    async def history(self, channel: str, since: int | None, limit: int) -> dict[str, object]:
        """At most ``limit`` committed messages after ``since`` (the latest if None)."""
        _check(channel)
        engine = self.engine
        try:
            if not await engine.known(channel):
                raise ApiError(404, "unknown_channel", f"{channel} has no messages")
            items = await engine.stored(channel, since, limit, self.max_bytes)
            epoch = (await engine.position(channel)).epoch
        except EngineClosed:
            raise ApiError(503, "unavailable", "the server is shutting down") from None
        except EngineUnavailable:
            raise _unavailable() from None
        return {"channel": channel, "epoch": epoch, "messages": items}

    def disconnect(
        self, *, user: str | None, connection_id: str | None, code: int, reason: str
    ) -> int:
        """Close a user's connections, or one connection, with ``code`` and ``reason``."""
        ids = self.manager.of_user(user) if user is not None else [connection_id or ""]
        closed = 0
        for target in ids:
            connection = self.manager.get(target)
            if connection is None:
                continue
            task = asyncio.get_running_loop().create_task(_close(connection, code, reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            closed += 1
        return closed


async def _close(connection: rfc6455.Connection, code: int, reason: str) -> None:
    """The closing handshake (RFC 6455 §7.1.2), bounded by the connection's close timeout."""
    await connection.close(code, reason)


def _unavailable() -> ApiError:
    return ApiError(503, "unavailable", "the chat cannot reach its engine: try again")


def _check(channel: str) -> None:
    reason = check_name(channel)
    if reason is not None:
        raise ApiError(400, "bad_channel", reason)
