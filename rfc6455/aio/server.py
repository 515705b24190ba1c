"""``serve()``: accept TCP connections, run the opening handshake, hand each to a handler."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

from ..exceptions import ConnectionClosed, InvalidRequest
from ..frames import CloseCode
from ..handshake import accept, check_request, reject, select_subprotocol
from ..http11 import Request, RequestParser, Response
from ..limits import Limits
from ..protocol import Side
from .connection import Connection, _address, _peer

__all__ = ["ProcessRequest", "Server", "serve"]

Handler = Callable[[Connection], Awaitable[None]]
# Sees every request before the upgrade: returns a Response to answer it
# (a plain HTTP reply or a refusal), or None to go on with the upgrade.
ProcessRequest = Callable[[Request], Response | Awaitable[Response | None] | None]

logger = logging.getLogger("rfc6455.server")


class Server:
    """A running WebSocket server, as returned by :func:`serve`.

    ``async with`` closes it gracefully on exit.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        limits: Limits,
        process_request: ProcessRequest | None,
        subprotocols: Sequence[str],
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.process_request = process_request
        self.subprotocols = tuple(subprotocols)
        self.connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # The tasks still in the opening handshake, cancelled at once on close().
        self._handshakes: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def sockets(self) -> tuple[object, ...]:
        """The listening sockets."""
        return () if self._server is None else tuple(self._server.sockets)

    @property
    def port(self) -> int:
        """The port of the first listening socket (useful after binding port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Run one TCP connection: handshake, then the handler, then the close."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._handshakes.add(task)
        try:
            connection = await self._handshake(reader, writer)
            self._handshakes.discard(task)
            if connection is not None:
                await self._run_handler(connection)
        except asyncio.CancelledError:
            # Server.close() cancels handlers that outlive its timeout. End this
            # task normally: on Python 3.11, asyncio's done callback for it calls
            # task.exception(), which raises CancelledError in the event loop.
            writer.transport.abort()
        finally:
            self._handshakes.discard(task)
            self._tasks.discard(task)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Connection | None:
        """Read and answer the upgrade request (RFC 6455 §4.2); None when it was refused."""
        limits = self.limits
        remote = _address(writer.get_extra_info("peername"))
        parser = RequestParser(limits)
        try:
            async with asyncio.timeout(limits.open_timeout):
                request = await _read_request(reader, parser)
                if request is None:
                    writer.close()
                    return None
                request = dataclasses.replace(request, remote_address=remote)
                try:
                    response = await self._respond(request)
                    head = response.serialize()
                except InvalidRequest:
                    raise
                except Exception:
                    # A bug in the process_request hook or in the Response it
                    # returned: answer 500 rather than leak it to the event loop.
                    logger.exception("process_request failed for %s", _peer(remote))
                    response = reject(500, "internal server error")
                    head = response.serialize()
                writer.write(head)
                if response.status != 101:
                    await writer.drain()
                    writer.close()
                    return None
        except InvalidRequest as exc:
            logger.info("refused %s: %d %s", _peer(remote), exc.status, exc.reason)
            writer.write(reject(exc.status, exc.reason, exc.headers).serialize())
            writer.close()
            return None
        except TimeoutError:
            logger.info(
                "dropped %s: no complete request within %s s", _peer(remote), limits.open_timeout
            )
            writer.transport.abort()
            return None
        except (ConnectionError, OSError) as exc:
            logger.debug("lost %s during the handshake: %r", _peer(remote), exc)
            writer.transport.abort()
            return None
        connection = Connection(
            Side.SERVER,
            reader,
            writer,
            limits=limits,
            request=request,
            response=response,
            subprotocol=response.headers.get("Sec-WebSocket-Protocol"),
            logger=logger,
        )
        connection.start(parser.rest)
        return connection

    async def _respond(self, request: Request) -> Response:
        """Ask the hook, then check the upgrade; raises InvalidRequest to refuse it."""
        if self.process_request is not None:
            answer = self.process_request(request)
            if inspect.isawaitable(answer):
                answer = await answer
            if answer is not None:
                return answer
        check_request(request)
        subprotocol = select_subprotocol(request, self.subprotocols)
        return accept(request, subprotocol=subprotocol)

    async def _run_handler(self, connection: Connection) -> None:
        self.connections.add(connection)
        try:
            await self.handler(connection)
        except ConnectionClosed:
            pass  # The handler stopped because the connection closed: not an error.
        except Exception:
            logger.exception("handler failed for %s", _peer(connection.remote_address))
            await connection.close(CloseCode.INTERNAL_ERROR)
        else:
            await connection.close()
        finally:
            self.connections.discard(connection)

    async def close(
        self,
        code: int = CloseCode.GOING_AWAY,
        reason: str = "server shutting down",
        timeout: float | None = 10.0,
    ) -> None:
        """Stop accepting, close every connection with ``code``, wait for handlers.

        Handlers still running after ``timeout`` seconds are cancelled.
        """
        if self._server is not None:
            self._server.close()
        # A client that has not finished its handshake has nothing to lose.
        for task in self._handshakes:
            task.cancel()
        closers = {
            asyncio.create_task(connection.close(code, reason)) for connection in self.connections
        }
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for closer in closers:
            closer.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _read_request(reader: asyncio.StreamReader, parser: RequestParser) -> Request | None:
    """Read until a whole request head arrived; None if the peer closed first."""
    while True:
        data = await reader.read(65536)
        if not data:
            return None
        request = parser.feed(data)
        if request is not None:
            return request


async def serve(
    handler: Handler,
    host: str | None = None,
    port: int | None = None,
    *,
    process_request: ProcessRequest | None = None,
    subprotocols: Sequence[str] = (),
    limits: Limits | None = None,
    ssl: ssl_module.SSLContext | None = None,
    **options: float | int | None,
) -> Server:
    """Start a WebSocket server on ``host``:``port`` and return it, already serving.

    Args:
        handler: coroutine run with each :class:`Connection` once it is open;
            the connection closes (1000) when it returns, 1011 if it raises.
        process_request: hook that sees each parsed request (method, path,
            query, headers, remote address) and may answer it with a Response:
            a plain HTTP reply or a refusal such as 401 or 403.
        subprotocols: the subprotocols the server speaks, by preference.
        limits: a :class:`Limits`; ``options`` override single fields, e.g.
            ``max_size=None`` or ``ping_interval=5``.
        ssl: a server TLS context, for ``wss://``.
    """
    limits = dataclasses.replace(limits or Limits(), **options)  # type: ignore[arg-type]
    server = Server(
        handler, limits=limits, process_request=process_request, subprotocols=subprotocols
    )
    server._server = await asyncio.start_server(server._handle, host, port, ssl=ssl)
    return server
