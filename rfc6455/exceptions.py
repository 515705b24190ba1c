"""Every exception the package raises.

The tree::

    WebSocketError
    ├── HandshakeError              opening handshake refused (RFC 6455 §4)
    │   ├── InvalidRequest          server side: answered with an HTTP 4xx/505 status
    │   └── InvalidResponse         client side: the server's reply is not a valid upgrade
    ├── ProtocolError               the peer broke RFC 6455: close code 1002
    │   ├── InvalidPayloadData      text or close reason not UTF-8: close code 1007
    │   └── PayloadTooBig           message over ``max_size``: close code 1009
    ├── InvalidState                the caller used a connection in the wrong state (our bug)
    └── ConnectionClosed            the connection is closed; carries the close code and reason
        ├── ConnectionClosedOK      a normal close: 1000 or 1001 both ways (1005 from the peer)
        └── ConnectionClosedError   any other code, or dropped without a close frame (1006)

A ``ProtocolError`` is always about the *peer's* bytes; it carries the close code
that the connection is failed with (RFC 6455 §7.1.7) as ``close_code``, so no
table maps errors to codes. ``Protocol`` hands the error over as its last event
and leaves the failing to its user: the asyncio adapter fails the connection
with ``Protocol.fail(error.close_code, str(error))`` in
``Connection._fail_if_pending``, once a waiting ``recv()`` has had the messages
that came before the error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .frames import Close
    from .http11 import Response

__all__ = [
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "HandshakeError",
    "InvalidPayloadData",
    "InvalidRequest",
    "InvalidResponse",
    "InvalidState",
    "PayloadTooBig",
    "ProtocolError",
    "WebSocketError",
]


class WebSocketError(Exception):
    """Base class of every exception raised by this package."""


class HandshakeError(WebSocketError):
    """The opening handshake failed (RFC 6455 §4)."""


class InvalidRequest(HandshakeError):
    """A request that the server refuses with an HTTP error status.

    Args:
        status: the HTTP status code of the reply: 400 to 499, or 505.
        reason: one line of text, sent as the reply body.
        headers: extra response headers, e.g. ``Sec-WebSocket-Version`` with 426.
    """

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


class InvalidResponse(HandshakeError):
    """The server's reply to an upgrade request is not a valid RFC 6455 §4.2.2 answer.

    Args:
        message: what is wrong, e.g. ``server refused the WebSocket upgrade: 401 Unauthorized``.
        response: the reply, when one was parsed; a refusal's carries the start of its body.
    """

    def __init__(self, message: str, response: Response | None = None) -> None:
        super().__init__(message)
        self.response = response


class ProtocolError(WebSocketError):
    """The peer sent bytes that break RFC 6455; the connection fails with ``close_code``."""

    close_code: int = 1002


class InvalidPayloadData(ProtocolError):
    """A text message or a close reason is not valid UTF-8 (RFC 6455 §8.1)."""

    close_code = 1007


class PayloadTooBig(ProtocolError):
    """A message is larger than the configured ``max_size`` (RFC 6455 §7.4.1)."""

    close_code = 1009


class InvalidState(WebSocketError):
    """An operation is not allowed in the connection's current state."""


class ConnectionClosed(WebSocketError):
    """The connection is closed.

    Args:
        rcvd: the close frame received from the peer, if any.
        sent: the close frame we sent, if any.

    ``code`` and ``reason`` are what the peer sent: ``code`` is 1005 when its
    close frame had no code and 1006 when no close frame arrived at all
    (RFC 6455 §7.1.5).
    """

    def __init__(self, rcvd: Close | None, sent: Close | None) -> None:
        self.rcvd = rcvd
        self.sent = sent
        super().__init__(f"connection closed: {self.code} {self.reason}".rstrip())

    @property
    def code(self) -> int:
        """The peer's close code, 1005 (none given) or 1006 (no close frame)."""
        return 1006 if self.rcvd is None else self.rcvd.code

    @property
    def reason(self) -> str:
        """The peer's close reason, or ""."""
        return "" if self.rcvd is None else self.rcvd.reason


class ConnectionClosedOK(ConnectionClosed):
    """Both sides closed with 1000 or 1001, or the peer's close frame had no code (1005)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection closed with an error code or was dropped (1006)."""
