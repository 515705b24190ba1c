"""Send one message to many connections, encoding its frame once."""

from __future__ import annotations

from collections.abc import Iterable

from ..exceptions import ConnectionClosed
from ..frames import Opcode, serialize_frame
from ..typing import Data
from .connection import Connection

__all__ = ["broadcast"]


def broadcast(connections: Iterable[Connection], message: Data) -> int:
    """Send ``message`` to every open server-side connection, without waiting.

    The frame is encoded once and the same bytes are written to each peer
    (server frames are unmasked, RFC 6455 §5.1), so the cost per receiver is
    one ``write()``. Connections that are closing are skipped: a slow or dead
    peer never delays the others.

    Returns:
        How many connections the message was written to.
    """
    if isinstance(message, str):
        frame = serialize_frame(Opcode.TEXT, message.encode())
    else:
        frame = serialize_frame(Opcode.BINARY, message)
    sent = 0
    for connection in connections:
        try:
            connection.send_encoded(frame)
        except ConnectionClosed:
            continue
        sent += 1
    return sent
