"""ConnectionManager: the open chat connections, by id, and broadcast to them."""

from __future__ import annotations

import logging

import rfc6455

__all__ = ["ConnectionManager"]

logger = logging.getLogger("server.manager")


class ConnectionManager:
    """Tracks open chat connections by their connection id."""

    def __init__(self) -> None:
        self._connections: dict[str, rfc6455.Connection] = {}

    def __len__(self) -> int:
        return len(self._connections)

    def add(self, connection_id: str, connection: rfc6455.Connection) -> None:
        """Register a connection under a new id."""
        self._connections[connection_id] = connection

    def remove(self, connection_id: str) -> bool:
        """Forget a connection; True if it was registered (so it is announced once)."""
        return self._connections.pop(connection_id, None) is not None

    def broadcast(self, message: str, *, exclude: str | None = None) -> int:
        """Send ``message`` to every connection but ``exclude``, without waiting.

        The frame is encoded once and the same bytes are written to each
        receiver; there is no ``await`` per receiver, so a slow or dead client
        never delays the others. A client whose connection is closing is
        skipped here; its own handler removes and announces it.

        Returns:
            How many clients the message was written to.
        """
        excluded = self._connections.get(exclude) if exclude is not None else None
        return rfc6455.broadcast(
            (c for c in self._connections.values() if c is not excluded), message
        )
