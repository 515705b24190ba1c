"""The per-client coroutines: the chat endpoint and the echo endpoint."""

from __future__ import annotations

import asyncio
import logging
import uuid

import rfc6455
from rfc6455 import CloseCode

from . import messages
from .manager import ConnectionManager
from .persistence import PersistenceQueue
from .store import MessageRecord

__all__ = ["ChatHandler", "echo"]

logger = logging.getLogger("server")


class ChatHandler:
    """Runs one chat client: welcome, then receive, persist and broadcast until it leaves."""

    def __init__(self, manager: ConnectionManager, queue: PersistenceQueue, welcome: str) -> None:
        self.manager = manager
        self.queue = queue
        self.welcome = welcome

    async def __call__(self, connection: rfc6455.Connection) -> None:
        connection_id = str(uuid.uuid4())
        peer = _peer(connection)
        self.manager.add(connection_id, connection)
        logger.info("connect %s from %s (%d open)", connection_id, peer, len(self.manager))
        try:
            await connection.send(messages.connection_id(connection_id))
            await connection.send(messages.welcome(self.welcome))
            await self._receive(connection, connection_id)
        except rfc6455.ConnectionClosed:
            pass
        finally:
            self._leave(connection, connection_id, peer)

    async def _receive(self, connection: rfc6455.Connection, connection_id: str) -> None:
        async for message in connection:
            if not isinstance(message, str):
                await connection.close(
                    CloseCode.UNSUPPORTED_DATA, "binary messages are not supported"
                )
                return
            record = MessageRecord.create(connection_id, message)
            try:
                self.queue.put_nowait(record)
            except asyncio.QueueFull:
                # Backpressure: stop reading from this client until the writer catches up.
                await self.queue.put(record)
            self.manager.broadcast(
                messages.broadcast(connection_id, message, record.timestamp),
                exclude=connection_id,
            )

    def _leave(self, connection: rfc6455.Connection, connection_id: str, peer: str) -> None:
        """Unregister the client and tell the others, exactly once."""
        if not self.manager.remove(connection_id):
            return
        close = connection.protocol.close_rcvd
        logger.info(
            "disconnect %s from %s: %d %s (%d open)",
            connection_id,
            peer,
            connection.protocol.close_code,
            connection.protocol.close_reason,
            len(self.manager),
        )
        # closeStatus only when the client sent a code: not for 1005 nor a drop (1006).
        if close is None or close.code == CloseCode.NO_STATUS_RCVD:
            left = messages.user_left(connection_id, len(self.manager))
        else:
            left = messages.user_left(connection_id, len(self.manager), close.code, close.reason)
        self.manager.broadcast(left)


async def echo(connection: rfc6455.Connection) -> None:
    """Send every message back unchanged (for conformance tests and benchmarks)."""
    async for message in connection:
        await connection.send(message)


def _peer(connection: rfc6455.Connection) -> str:
    address = connection.remote_address
    return "unknown" if address is None else f"{address[0]}:{address[1]}"
