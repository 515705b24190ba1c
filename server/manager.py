"""ConnectionManager: the open chat connections, by id and by user, and writes to one of them."""

from __future__ import annotations

import logging

import rfc6455

from .chat_metrics import ChatMetrics

__all__ = ["ConnectionManager", "text_frame"]

logger = logging.getLogger("server.manager")


def text_frame(payload: str | bytes) -> rfc6455.PreparedMessage:
    """A text message (RFC 6455 §5.6) of ``payload`` (``bytes``: already UTF-8), ready to send
    to one connection or many: its plain frame, and its compressed one once a connection with
    permessage-deflate asks (RFC 7692)."""
    return rfc6455.PreparedMessage(payload, text=True)


class ConnectionManager:
    """Tracks open chat connections by their connection id, and by user; writes to one.

    Args:
        metrics: Counts the messages written (``chat_transport_messages_sent_total``).
    """

    def __init__(self, metrics: ChatMetrics | None = None) -> None:
        self._connections: dict[str, rfc6455.Connection] = {}
        self._users: dict[str, set[str]] = {}
        metrics = metrics or ChatMetrics()
        self._sent, self._sent_bytes = metrics.messages_sent, metrics.bytes_sent

    def __len__(self) -> int:
        return len(self._connections)

    def add(
        self, connection_id: str, connection: rfc6455.Connection, user: str | None = None
    ) -> None:
        """Register a connection under a new id (and its user's name, if it has one)."""
        self._connections[connection_id] = connection
        if user is not None:
            self._users.setdefault(user, set()).add(connection_id)

    def remove(self, connection_id: str, user: str | None = None) -> bool:
        """Forget a connection; True if it was registered (so it is announced once)."""
        if user is not None:
            ids = self._users.get(user)
            if ids is not None:
                ids.discard(connection_id)
                if not ids:
                    del self._users[user]
        return self._connections.pop(connection_id, None) is not None

    def get(self, connection_id: str) -> rfc6455.Connection | None:
        """The open connection with this id, if any."""
        return self._connections.get(connection_id)

    def of_user(self, user: str) -> list[str]:
        """The ids of a user's open connections."""
        return list(self._users.get(user, ()))

    def send(self, connection_id: str, payload: str | bytes) -> bool:
        """Send a text message to one client, without waiting; False if it is gone or closing."""
        connection = self._connections.get(connection_id)
        if connection is None:
            return False
        try:
            self.send_now(connection, payload)
        except rfc6455.ConnectionClosed:
            return False
        return True

    def send_now(self, connection: rfc6455.Connection, payload: str | bytes) -> None:
        """Write a text message (``bytes``: already UTF-8) at once, in this event-loop step.

        Raises:
            rfc6455.ConnectionClosed: If the connection is closing.
        """
        message = text_frame(payload)
        connection.send_prepared(message)
        self._sent.value += 1
        self._sent_bytes.value += message.size
