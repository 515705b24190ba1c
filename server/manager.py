"""ConnectionManager: the open chat connections, by id, and writes to them without waiting."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import rfc6455
from rfc6455.frames import CloseCode, Opcode, serialize_frame

__all__ = ["ConnectionManager", "send_now"]

logger = logging.getLogger("server.manager")


def _text_frame(payload: str | bytes) -> bytes:
    return serialize_frame(Opcode.TEXT, payload.encode() if isinstance(payload, str) else payload)


def send_now(connection: rfc6455.Connection, payload: str | bytes) -> None:
    """Write a text message (``bytes``: already UTF-8) at once, in this event-loop step.

    Raises:
        rfc6455.ConnectionClosed: If the connection is closing.
    """
    connection.send_encoded(_text_frame(payload))


class ConnectionManager:
    """Tracks open chat connections by their connection id.

    A connection may be added on hold: what is sent to it is kept, in order, until
    ``release()``, so a client whose history must first be read from the database misses
    nothing that is broadcast meanwhile. At most ``max_held`` bytes are kept: a read that
    takes so long that more was broadcast meanwhile fails the connection with 1013 (try
    again later), and the client resumes from where it was.

    Args:
        max_held: The most bytes held for one connection.
    """

    def __init__(self, max_held: int = 2**20) -> None:
        self.max_held = max_held
        self._connections: dict[str, rfc6455.Connection] = {}
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._connections)

    def add(
        self, connection_id: str, connection: rfc6455.Connection, *, hold: bool = False
    ) -> None:
        """Register a connection under a new id, on hold or not."""
        self._connections[connection_id] = connection
        if hold:
            self._held[connection_id] = _Held()

    def release(self, connection_id: str) -> None:
        """Write what was held for a connection, then send to it directly.

        Raises:
            rfc6455.ConnectionClosed: If the connection is closing.
        """
        held = self._held.pop(connection_id, None)
        connection = self._connections[connection_id]
        for frame in () if held is None else held.frames:
            connection.send_encoded(frame)

    def remove(self, connection_id: str) -> bool:
        """Forget a connection; True if it was registered (so it is announced once)."""
        self._held.pop(connection_id, None)
        return self._connections.pop(connection_id, None) is not None

    def send(self, connection_id: str, payload: str | bytes) -> bool:
        """Send a text message to one client, without waiting; False if it is gone or closing."""
        connection = self._connections.get(connection_id)
        if connection is None:
            return False
        return self._write(connection_id, connection, _text_frame(payload))

    def broadcast(self, payload: str | bytes, *, exclude: str | None = None) -> int:
        """Send a text message to every connection but ``exclude``, without waiting.

        The frame is encoded once and the same bytes are written to each
        receiver; there is no ``await`` per receiver, so a slow or dead client
        never delays the others. A client whose connection is closing is
        skipped here; its own handler removes and announces it.

        Returns:
            How many clients the message was written (or held) for.
        """
        frame = _text_frame(payload)
        sent = 0
        for connection_id, connection in self._connections.items():
            if connection_id != exclude and self._write(connection_id, connection, frame):
                sent += 1
        return sent

    def _write(self, connection_id: str, connection: rfc6455.Connection, frame: bytes) -> bool:
        held = self._held.get(connection_id)
        if held is not None:
            held.frames.append(frame)
            held.size += len(frame)
            if held.size > self.max_held:
                del self._held[connection_id]
                # RFC 6455 §7.4.1 (IANA registry): 1013, a temporary condition.
                connection.fail(CloseCode.TRY_AGAIN_LATER, "history too slow: resume again")
                return False
            return True
        try:
            connection.send_encoded(frame)
        except rfc6455.ConnectionClosed:
            return False
        return True


@dataclass(slots=True)
class _Held:
    """What is kept for a connection on hold, and its size in bytes."""

    frames: list[bytes] = field(default_factory=list)
    size: int = 0
