"""``serve()``: accept TCP connections, run the opening handshake, hand each to a handler."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

from ..exceptions import ConnectionClosed, InvalidRequest
from ..frames import CloseCode
from ..handshake import accept, reject, select_subprotocol
from ..http11 import Request, RequestParser, Response
from ..limits import Limits
from ..protocol import Side
from .connection import Connection, _address, _peer, _receive_buffer

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
        # The open connections: from the step that writes the 101 until the handler ends.
        self.connections: set[Connection] = set()
        # The handlers running, and the TCP connections still in the opening
        # handshake (dropped at once on close()).
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshakes: set[_Handshake] = set()
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

    def _start_handler(self, connection: Connection) -> None:
        # In ``connections`` from the step of the 101 on, not from the handler's first step:
        # a process_request hook counting them (a connection limit) sees every upgrade.
        self.connections.add(connection)
        self._tasks.add(asyncio.get_running_loop().create_task(self._run_handler(connection)))

    async def _run_handler(self, connection: Connection) -> None:
        """Run the handler, then close the connection: 1000, or 1011 if it raised."""
        try:
            await self.handler(connection)
        except ConnectionClosed:
            pass  # The handler stopped because the connection closed: not an error.
        except asyncio.CancelledError:
            # Server.close() cancels handlers that outlive its timeout. End this
            # task normally: on Python 3.11, asyncio's done callback for it calls
            # task.exception(), which raises CancelledError in the event loop.
            connection.abort()
        except Exception:
            logger.exception("handler failed for %s", _peer(connection.remote_address))
            await connection.close(CloseCode.INTERNAL_ERROR)
        else:
            await connection.close()
        finally:
            self.connections.discard(connection)
            self._tasks.discard(asyncio.current_task())

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
        for handshake in list(self._handshakes):
            handshake.abort()
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


class _Handshake(asyncio.BufferedProtocol):
    """The server's side of one TCP connection until the upgrade (RFC 6455 §4.2).

    It reads the request, asks the ``process_request`` hook, answers, and on
    101 hands the transport to a new :class:`Connection` and starts the
    handler. Everything but an asynchronous hook runs in the read callback:
    no task exists until the handler's.
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser: RequestParser | None = None
        self._remote: tuple[str, int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._hook: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._remote = _address(transport.get_extra_info("peername"))
        self._parser = RequestParser(self._server.limits, self._remote)
        self._server._handshakes.add(self)
        timeout = self._server.limits.open_timeout
        if timeout is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(timeout, self._timed_out)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive_buffer.view

    def buffer_updated(self, nbytes: int) -> None:
        assert self._parser is not None
        assert self._transport is not None
        try:
            request = self._parser.feed(_receive_buffer.view[:nbytes])
        except InvalidRequest as exc:
            self._refuse(exc)
            return
        if request is None:
            return
        hook = self._server.process_request
        if hook is None:
            self._respond(request, None)
            return
        try:
            answer = hook(request)
        except Exception:
            self._hook_failed()
            return
        if isinstance(answer, Response | None):
            self._respond(request, answer)
        else:
            # Nothing more is read until the answer: what follows the head waits in the parser.
            self._transport.pause_reading()
            self._hook = asyncio.get_running_loop().create_task(self._await_hook(request, answer))

    async def _await_hook(self, request: Request, answer: Awaitable[Response | None]) -> None:
        try:
            response = await answer
        except Exception:
            self._hook_failed()
        else:
            self._respond(request, response)

    def _hook_failed(self) -> None:
        # A bug in the process_request hook: answer 500 rather than leak it to the event loop.
        logger.exception("process_request failed for %s", _peer(self._remote))
        self._send_and_close(reject(500, "internal server error").serialize())

    def _respond(self, request: Request, answer: Response | None) -> None:
        """Answer the request: the hook's response, a refusal, or the upgrade."""
        try:
            if answer is None:
                subprotocol = select_subprotocol(request, self._server.subprotocols)
                answer = accept(request, subprotocol=subprotocol)  # check_request() first
            head = answer.serialize()
        except InvalidRequest as exc:
            self._refuse(exc)
            return
        except Exception:
            # A Response from the hook that cannot be serialized.
            self._hook_failed()
            return
        if answer.status != 101:
            self._send_and_close(head)
            return
        self._upgrade(request, answer, head)

    def _upgrade(self, request: Request, response: Response, head: bytes) -> None:
        transport = self._transport
        parser = self._parser
        assert transport is not None
        assert parser is not None
        self._finish()
        if transport.is_closing():
            return  # The peer left while an asynchronous hook ran.
        transport.write(head)
        server = self._server
        connection = Connection(
            Side.SERVER,
            transport,
            limits=server.limits,
            request=request,
            response=response,
            subprotocol=response.headers.get("Sec-WebSocket-Protocol"),
            logger=logger,
        )
        server._start_handler(connection)
        if parser.rest:
            connection.receive(parser.rest)
        if self._hook is not None:
            transport.resume_reading()

    def _refuse(self, exc: InvalidRequest) -> None:
        logger.info("refused %s: %d %s", _peer(self._remote), exc.status, exc.reason)
        self._send_and_close(reject(exc.status, exc.reason, exc.headers).serialize())

    def _send_and_close(self, data: bytes) -> None:
        assert self._transport is not None
        self._finish()
        self._transport.write(data)
        self._transport.close()

    def _timed_out(self) -> None:
        logger.info(
            "dropped %s: no complete request within %s s",
            _peer(self._remote),
            self._server.limits.open_timeout,
        )
        self.abort()

    def abort(self) -> None:
        """Drop the connection (Server.close(), the open timeout)."""
        self._finish()
        if self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool:
        return False  # The peer left before its request was complete: close.

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            logger.debug("lost %s during the handshake: %r", _peer(self._remote), exc)
        self._finish()

    def _finish(self) -> None:
        """The handshake is over, however it ended."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._hook is not None and self._hook is not asyncio.current_task():
            self._hook.cancel()
        self._server._handshakes.discard(self)


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
    loop = asyncio.get_running_loop()
    server._server = await loop.create_server(
        lambda: _Handshake(server),
        host,
        port,  # type: ignore[arg-type]  # None picks a free port, as in start_server()
        ssl=ssl,
    )
    return server
