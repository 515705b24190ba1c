"""``connect()``: open a TCP connection and run the client's opening handshake."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl as ssl_module
from collections.abc import Iterable, Mapping, Sequence

from ..exceptions import InvalidResponse
from ..handshake import check_response, client_request, generate_key, parse_uri
from ..http11 import ResponseParser
from ..limits import Limits
from ..protocol import Side
from .connection import Connection

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
    async with asyncio.timeout(limits.open_timeout):
        reader, writer = await asyncio.open_connection(
            target.host, target.port, ssl=ssl if target.secure else None, limit=2**20
        )
        try:
            writer.write(request.serialize())
            parser = ResponseParser(limits)
            while (response := parser.feed(await reader.read(65536) or _eof())) is None:
                pass
            subprotocol = check_response(response, key, subprotocols)
        except BaseException:
            writer.transport.abort()
            raise
    connection = Connection(
        Side.CLIENT,
        reader,
        writer,
        limits=limits,
        request=request,
        response=response,
        subprotocol=subprotocol,
        logger=logger,
    )
    connection.start(parser.rest)
    return connection


def _eof() -> bytes:
    raise InvalidResponse("connection closed before the handshake response")
