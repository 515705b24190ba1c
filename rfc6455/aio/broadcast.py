"""Send one message to many connections, encoding its frame once."""

from __future__ import annotations

from collections.abc import Iterable

from ..exceptions import ConnectionClosed
from ..prepared import PreparedMessage
from ..typing import Data
from .connection import Connection

__all__ = ["broadcast"]


def broadcast(connections: Iterable[Connection], message: Data) -> int:
    """Send ``message`` to every open server-side connection, without waiting.

    The frame is encoded once and the same bytes are written to each peer
    (server frames are unmasked, RFC 6455 §5.1), so the cost per receiver is
    one ``write()``; with permessage-deflate, it is compressed once for all
    the peers that agreed on the same parameters without context takeover
    (RFC 7692 §7.1.1). Connections that are closing are skipped: a slow or
    dead peer never delays the others.

    Returns:
        How many connections the message was written to.
    """
    prepared = PreparedMessage(message)
    sent = 0
    for connection in connections:
        try:
            connection.send_prepared(prepared)
        except ConnectionClosed:
            continue
        sent += 1
    return sent
