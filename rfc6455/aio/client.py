"""``connect()``: open a TCP connection and run the client's opening handshake."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl as ssl_module
from collections.abc import Iterable, Mapping, Sequence

from ..exceptions import InvalidResponse
from ..handshake import check_response, client_request, generate_key, parse_uri
from ..http11 import Request, ResponseParser
from ..limits import Limits
from ..protocol import Side
from .connection import Connection, _receive_buffer

__all__ = ["connect"]

logger = logging.getLogger("rfc6455.client")


async def connect(
    uri: str,
    *,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    subprotocols: Sequence[str] = (),
    limits: Limits | None = None,
    ssl: ssl_module.SSLContext | None = None,
    **options: float | int | None,
) -> Connection:
    """Connect to a WebSocket server and return the open connection (RFC 6455 §4.1).

    Args:
        uri: a ``ws://`` or ``wss://`` URI.
        headers: extra request headers, e.g. ``Authorization``.
        subprotocols: subprotocols to offer, the preferred one first.
        limits: a :class:`Limits`; ``options`` override single fields.
        ssl: a client TLS context for ``wss://`` (the default context if omitted).

    Raises:
        ValueError: ``uri`` is not a valid WebSocket URI.
        OSError: the TCP connection could not be opened.
        TimeoutError: the handshake did not complete within ``open_timeout``.
        InvalidResponse: the server refused the upgrade or answered wrongly.
    """
    limits = dataclasses.replace(limits or Limits(), **options)  # type: ignore[arg-type]
    target = parse_uri(uri)
    if isinstance(headers, Mapping):
        headers = headers.items()
    key = generate_key()
    request = client_request(target, key, subprotocols=subprotocols, headers=headers)
    if target.secure and ssl is None:
        ssl = ssl_module.create_default_context()
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[Connection] = loop.create_future()
    transport: asyncio.Transport | None = None
    try:
        async with asyncio.timeout(limits.open_timeout):
            transport, _ = await loop.create_connection(
                lambda: _Handshake(request, key, subprotocols, limits, opened),
                target.host,
                target.port,
                ssl=ssl if target.secure else None,
            )
            return await opened
    except BaseException:
        if transport is not None:
            transport.abort()
        raise


class _Handshake(asyncio.BufferedProtocol):
    """The client's side of the opening handshake (RFC 6455 §4.1).

    Sends the request, reads the response and, on a valid 101, hands the
    transport to a new :class:`Connection`, which ``opened`` then holds.
    """

    def __init__(
        self,
        request: Request,
        key: str,
        subprotocols: Sequence[str],
        limits: Limits,
        opened: asyncio.Future[Connection],
    ) -> None:
        self._request = request
        self._key = key
        self._subprotocols = subprotocols
        self._limits = limits
        self._opened = opened
        self._parser = ResponseParser(limits)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request.serialize())

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive_buffer.view

    def buffer_updated(self, nbytes: int) -> None:
        try:
            response = self._parser.feed(_receive_buffer.view[:nbytes])
            if response is None:
                return
            subprotocol = check_response(response, self._key, self._subprotocols)
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
            logger=logger,
        )
        if not self._opened.done():
            self._opened.set_result(connection)
        if self._parser.rest:
            connection.receive(self._parser.rest)

    def eof_received(self) -> bool:
        self._fail(InvalidResponse("connection closed before the handshake response"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None  # Nothing left to abort.
        self._fail(exc or InvalidResponse("connection closed before the handshake response"))

    def _fail(self, exc: Exception) -> None:
        if not self._opened.done():
            self._opened.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()
