"""rfc6455: a strict, fast WebSocket (RFC 6455) implementation in pure Python.

A sans-I/O core (``Protocol``, ``frames``, ``handshake``, ``http11``) and a thin
asyncio adapter (``serve``, ``connect``, ``Connection``).
"""

from __future__ import annotations

from .aio import Connection, Server, broadcast, connect, serve
from .deflate import Compression
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    InvalidPayloadData,
    InvalidRequest,
    InvalidResponse,
    InvalidState,
    PayloadTooBig,
    ProtocolError,
    WebSocketError,
)
from .frames import Close, CloseCode, Frame, Opcode
from .http11 import Headers, Request, Response
from .limits import Limits
from .prepared import PreparedMessage
from .protocol import Ping, Pong, Protocol, Side, State
from .version import __version__

__all__ = [
    "Close",
    "CloseCode",
    "Compression",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "Frame",
    "HandshakeError",
    "Headers",
    "InvalidPayloadData",
    "InvalidRequest",
    "InvalidResponse",
    "InvalidState",
    "Limits",
    "Opcode",
    "PayloadTooBig",
    "Ping",
    "Pong",
    "PreparedMessage",
    "Protocol",
    "ProtocolError",
    "Request",
    "Response",
    "Server",
    "Side",
    "State",
    "WebSocketError",
    "__version__",
    "broadcast",
    "connect",
    "serve",
]
