"""``connect()``: open a TCP connection and run the client's opening handshake."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl as ssl_module
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

from ..deflate import Compression, client_accept, client_offer
from ..exceptions import InvalidResponse
from ..extensions import parse_extensions
from ..handshake import check_response, client_request, generate_key, parse_uri, refused
from ..http11 import Request, Response, ResponseParser
from ..limits import Limits
from ..protocol import Side
from ..typing import BytesLike
from .connection import Connection, _receive_buffer

__all__ = ["connect"]

logger = logging.getLogger("rfc6455.client")

# How much of a refusal's body is kept: its reason is a line of text or the
# start of a short error page (nginx's are under 1 KiB), and a server that
# sends more, or never stops, must not make the client buffer it all.
_MAX_REFUSAL_BODY = 4096


async def connect(
    uri: str,
    *,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    subprotocols: Sequence[str] = (),
    limits: Limits | None = None,
    ssl: ssl_module.SSLContext | None = None,
    compression: Compression | None = Compression(),
    **options: float | int | None,
) -> Connection:
    """Connect to a WebSocket server and return the open connection (RFC 6455 §4.1).

    Args:
        uri: a ``ws://`` or ``wss://`` URI.
        headers: extra request headers, e.g. ``Authorization``.
        subprotocols: subprotocols to offer, the preferred one first.
        limits: a :class:`Limits`; ``options`` override single fields.
        ssl: a client TLS context for ``wss://``; by default ``ssl.create_default_context()``,
            which checks the certificate against the system's CAs and its host name
            (RFC 6125 through OpenSSL).
        compression: permessage-deflate (RFC 7692) to offer: by default
            without context takeover either way; None offers nothing.

    Raises:
        ValueError: ``uri`` is not a valid WebSocket URI.
        OSError: the TCP connection could not be opened; for ``wss://``, an
            ``ssl.SSLCertVerificationError`` when the certificate is not trusted or
            names another host, an ``ssl.SSLError`` when TLS fails otherwise.
        TimeoutError: the handshake did not complete within ``open_timeout``
            (a refusal whose body is late is an ``InvalidResponse`` all the same).
        InvalidResponse: the server refused the upgrade or answered wrongly
            (an extension or parameters that were not offered, RFC 7692 §5.1);
            a refusal carries the ``response``, with the start of its body.
    """
    limits = dataclasses.replace(limits or Limits(), **options)  # type: ignore[arg-type]
    target = parse_uri(uri)
    if isinstance(headers, Mapping):
        headers = headers.items()
    key = generate_key()
    if compression is not None:
        headers = [*headers, ("Sec-WebSocket-Extensions", client_offer(compression))]
    request = client_request(target, key, subprotocols=subprotocols, headers=headers)
    if target.secure and ssl is None:
        ssl = ssl_module.create_default_context()
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[Connection] = loop.create_future()
    transport: asyncio.Transport | None = None
    handshake: _Handshake | None = None
    try:
        async with asyncio.timeout(limits.open_timeout):
            transport, handshake = await loop.create_connection(
                lambda: _Handshake(request, key, subprotocols, limits, opened, compression),
                target.host,
                target.port,
                ssl=ssl if target.secure else None,
            )
            return await opened
    except BaseException as exc:
        if transport is not None:
            transport.abort()
        if isinstance(exc, TimeoutError) and handshake is not None:
            # Refused, but the body is late: what the server said beats "timed out".
            refusal = handshake.refusal()
            if refusal is not None:
                raise refusal from None
        raise


class _Handshake(asyncio.BufferedProtocol):
    """The client's side of the opening handshake (RFC 6455 §4.1).

    Sends the request, reads the response and, on a valid 101, hands the
    transport to a new :class:`Connection`, which ``opened`` then holds. Any
    other status is a refusal: the start of its body is read (at most
    ``_MAX_REFUSAL_BODY`` bytes, up to its ``Content-Length`` or the end of the
    connection), then ``opened`` holds the ``InvalidResponse``.
    """

    def __init__(
        self,
        request: Request,
        key: str,
        subprotocols: Sequence[str],
        limits: Limits,
        opened: asyncio.Future[Connection],
        compression: Compression | None,
    ) -> None:
        self._request = request
        self._compression = compression
        self._key = key
        self._subprotocols = subprotocols
        self._limits = limits
        self._opened = opened
        self._parser = ResponseParser(limits)
        self._transport: asyncio.Transport | None = None
        # A refusal: its head, the body so far, and how much of it to wait for.
        self._refused: Response | None = None
        self._body = bytearray()
        self._body_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream's transport, though not a subclass of asyncio.Transport on every loop
        # (uvloop's are not): no isinstance check.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.write(self._request.serialize())

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive_buffer.view

    def buffer_updated(self, nbytes: int) -> None:
        data = _receive_buffer.view[:nbytes]
        if self._refused is not None:
            self._read_body(data)
            return
        try:
            response = self._parser.feed(data)
            if response is None:
                return
            if response.status != 101:
                self._refused = response
                self._body_size = _body_size(response)
                self._read_body(self._parser.rest)
                return
            compression = self._compression
            subprotocol = check_response(
                response, self._key, self._subprotocols, extensions=compression is not None
            )
            deflate = (
                None
                if compression is None
                else client_accept(parse_extensions(response.headers), compression)
            )
        except InvalidResponse as exc:
            self._fail(exc)
            return
        assert self._transport is not None
        connection = Connection(
            Side.CLIENT,
            self._transport,
            limits=self._limits,
            request=self._request,
            response=response,
            subprotocol=subprotocol,
            deflate=deflate,
            logger=logger,
        )
        if not self._opened.done():
            self._opened.set_result(connection)
        if self._parser.rest:
            connection.receive(self._parser.rest)

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None  # Nothing left to abort.
        self._end(exc)

    def refusal(self) -> InvalidResponse | None:
        """The error for the refusal received, with its body so far; None before one came."""
        if self._refused is None:
            return None
        return refused(dataclasses.replace(self._refused, body=bytes(self._body)))

    def _read_body(self, data: BytesLike) -> None:
        """Keep the next bytes of a refusal's body, up to ``_body_size``; then fail."""
        self._body += data[: self._body_size - len(self._body)]
        if len(self._body) >= self._body_size:
            self._end()

    def _end(self, exc: Exception | None = None) -> None:
        """No more of the response is read: fail with the refusal, if one came, else ``exc``."""
        self._fail(
            self.refusal()
            or exc
            or InvalidResponse("connection closed before the handshake response")
        )

    def _fail(self, exc: Exception) -> None:
        if not self._opened.done():
            self._opened.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()


def _body_size(response: Response) -> int:
    """How many bytes of a refusal's body to wait for: at most ``_MAX_REFUSAL_BODY``.

    RFC 9112 §6.3: none for a 1xx, 204 or 304, which have no body; none either
    for a ``Transfer-Encoding`` (chunked), which is not decoded; ``Content-Length``
    if given, else up to the end of the connection.
    """
    if response.status < 200 or response.status in (204, 304):
        return 0
    if "Transfer-Encoding" in response.headers:
        return 0
    length = response.headers.get("Content-Length")
    # A longer number is over the cap anyway, and int() of a huge one is slow.
    if length is not None and length.isdecimal() and len(length) < 19:
        return min(int(length), _MAX_REFUSAL_BODY)
    return _MAX_REFUSAL_BODY
