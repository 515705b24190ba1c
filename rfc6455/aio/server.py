"""``serve()``: accept TCP connections, run the opening handshake, hand each to a handler."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import socket
import ssl as ssl_module
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import cast

from ..addresses import address_key
from ..deflate import Compression, PerMessageDeflate, server_negotiate
from ..exceptions import ConnectionClosed, InvalidRequest
from ..extensions import parse_extensions
from ..forwarded import TrustedProxies
from ..frames import CloseCode
from ..handshake import accept, is_upgrade, reject, select_subprotocol
from ..http11 import Request, RequestParser, Response, body_length
from ..limits import Limits
from ..protocol import Side
from .connection import Connection, _address, _peer, _receive_buffer
from .throttle import ThrottledLog

__all__ = ["ProcessRefusal", "ProcessRequest", "Server", "serve"]

Handler = Callable[[Connection], Awaitable[None]]
# Sees every request before the upgrade: returns a Response to answer it
# (a plain HTTP reply or a refusal), or None to go on with the upgrade.
ProcessRequest = Callable[[Request], Response | Awaitable[Response | None] | None]
# Sees every refusal of a request whose head was parsed (a body over Limits.max_body_size, an
# invalid upgrade...) and the reason: returns the Response to send instead of the plain-text
# one (a JSON error, say), or None to send that one.
ProcessRefusal = Callable[[Request, InvalidRequest], Response | None]

logger = logging.getLogger("rfc6455.server")

# accept(2) errors that mean the process or the system is out of descriptors or memory:
# accepting pauses for _ACCEPT_PAUSE while the connections wait in the backlog, rather than
# failing again at once (asyncio's own loop logs each failure, thousands a second).
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_PAUSE = 0.1
# Connections taken per readiness of a listening socket, and the listen(2) backlog: asyncio's.
_ACCEPT_BATCH = 100
_BACKLOG = 100
# The methods answered on their head alone, whatever body follows: a GET's content "has no
# generally defined semantics" (RFC 9110 §9.3.1), a WebSocket upgrade is a GET whose next
# bytes are frames, and HEAD is a GET without the answer's body. The connection is closed
# after the answer, so an unread body is never taken for a next request.
_HEAD_ONLY = ("GET", "HEAD")
# RFC 9110 §10.1.1: a client that sent "Expect: 100-continue" waits for this (or a final
# answer) before it sends the body; curl waits a second, then sends it anyway.
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# The answer to a handshake over Limits.max_handshakes or max_handshakes_per_address.
_BUSY = "too many handshakes in progress: retry later"
# Seconds a refused request's body is read and dropped after the answer, at most (below).
_LINGER = 5.0


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
        process_refusal: ProcessRefusal | None = None,
        ssl: ssl_module.SSLContext | None = None,
        compression: Compression | None = None,
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        self.handler = handler
        self.trusted_proxies = trusted_proxies
        self._ssl = ssl
        self.compression = compression
        self.limits = limits
        self.process_request = process_request
        self.process_refusal = process_refusal
        self.subprotocols = tuple(subprotocols)
        # The open connections: from the step that writes the 101 until the handler ends.
        self.connections: set[Connection] = set()
        self._paths: Counter[str] = Counter()
        # The handlers running, and the TCP connections still in the opening
        # handshake (dropped at once on close()), in all and by address.
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshakes: set[_Handshake] = set()
        self._handshaking: Counter[str] = Counter()
        self._listeners: list[_Listener] = []
        # The lines that come in floods (a scanner, a reconnect storm): one a second at most.
        self._refused_busy = ThrottledLog(logger, logging.WARNING)
        self._tls_failed = ThrottledLog(logger, logging.INFO)
        self._tls_timed_out = ThrottledLog(logger, logging.INFO)
        self._request_timed_out = ThrottledLog(logger, logging.INFO)
        #: TCP connections answered 503 at once: ``Limits.max_handshakes`` (in all, or from
        #: their address) were in their handshake already.
        self.refused_busy = 0

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (none once the server is closed)."""
        return tuple(listener.sock for listener in self._listeners)

    @property
    def port(self) -> int:
        """The port of the first listening socket (useful after binding port 0)."""
        return int(self._listeners[0].sock.getsockname()[1])

    @property
    def ssl(self) -> ssl_module.SSLContext | None:
        """The TLS context of the connections accepted from now on (None: plaintext)."""
        return self._ssl

    def set_ssl(self, context: ssl_module.SSLContext) -> None:
        """Serve the connections accepted from now on with ``context`` (a certificate reload).

        The connections already open, or in their TLS handshake, keep the context they
        started with.

        Raises:
            ValueError: The server was started without TLS: its clients speak plaintext.
        """
        if self._ssl is None:
            raise ValueError("a server started without ssl cannot switch to TLS")
        self._ssl = context

    def _admit(self, key: str, *, proxy: bool = False) -> bool:
        """Count a new TCP connection from address ``key`` in; False if it is one too many.

        A trusted ``proxy`` brings many clients' handshakes: its own address is not held to
        ``max_handshakes_per_address``, its clients' are once their heads say who they are.
        """
        limits = self.limits
        total, here = limits.max_handshakes, limits.max_handshakes_per_address
        if (total is not None and len(self._handshakes) >= total) or (
            not proxy and here is not None and self._handshaking[key] >= here
        ):
            self._refuse_busy(key)
            return False
        return True

    def _refuse_busy(self, key: str) -> None:
        """Count and log a handshake refused with 503 as one too many in progress."""
        self.refused_busy += 1
        self._refused_busy(
            "refused handshakes: too many in progress: %d in all, %d from %s",
            len(self._handshakes),
            self._handshaking[key],
            key,
            extra={"event": "handshake_refused", "peer": key, "status": 503},
        )

    def _count_handshake(self, key: str, step: int) -> None:
        """One more (``step`` 1) or one fewer (-1) handshake in progress from ``key``."""
        count = self._handshaking[key] + step
        if count:
            self._handshaking[key] = count
        else:
            del self._handshaking[key]

    def connections_on(self, path: str) -> int:
        """How many of ``connections`` were opened on ``path`` (e.g. for a cap per endpoint)."""
        return self._paths[path]

    def _start_handler(self, connection: Connection) -> None:
        # In ``connections`` from the step of the 101 on, not from the handler's first step:
        # a process_request hook counting them (a connection limit) sees every upgrade.
        self.connections.add(connection)
        assert connection.request is not None
        self._paths[connection.request.path] += 1
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
            peer = _peer(connection.remote_address)
            logger.exception(
                "handler failed for %s", peer, extra={"event": "handler_failed", "peer": peer}
            )
            await connection.close(CloseCode.INTERNAL_ERROR)
        else:
            await connection.close()
        finally:
            self.connections.discard(connection)
            assert connection.request is not None
            path = connection.request.path
            self._paths[path] -= 1
            if not self._paths[path]:
                del self._paths[path]
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
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        for log in (
            self._refused_busy,
            self._tls_failed,
            self._tls_timed_out,
            self._request_timed_out,
        ):
            log.close()
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

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Listener:
    """One listening socket: accepts connections and starts their handshakes.

    The accept loop of asyncio's ``create_server``, with two differences: a connection over
    ``Limits.max_handshakes`` (in all, or from its address) is answered 503 and closed before
    a transport or protocol exists for it; and running out of file descriptors pauses
    accepting for ``_ACCEPT_PAUSE`` and is logged once a second, not once per attempt.
    """

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._pending: set[asyncio.Task[None]] = set()
        self._resume: asyncio.TimerHandle | None = None
        self._out_of_resources = ThrottledLog(logger, logging.WARNING)
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        server = self.server
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                self._out_of_resources(
                    "cannot accept connections, pausing: %s", exc, extra={"event": "accept_failed"}
                )
                self._loop.remove_reader(self.sock.fileno())
                self._resume = self._loop.call_later(_ACCEPT_PAUSE, self._resume_accepting)
                return
            conn.setblocking(False)
            host = str(address[0]) if address else ""
            key = address_key(host)
            proxies = server.trusted_proxies
            proxy = proxies is not None and proxies.trusts(host)
            if not server._admit(key, proxy=proxy):
                _refuse_at_once(conn)
                continue
            handshake = _Handshake(server, key, proxy=proxy)
            peer = _address(address)
            task = self._loop.create_task(self._start(conn, peer, handshake))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _start(
        self, conn: socket.socket, peer: tuple[str, int] | None, handshake: _Handshake
    ) -> None:
        """Make the transport (after TLS's handshake, with ``Server.ssl``) and its protocol."""
        ssl = self.server.ssl
        timeout = self.server.limits.tls_handshake_timeout
        try:
            await self._loop.connect_accepted_socket(
                lambda: handshake,
                conn,
                ssl=ssl,
                # None would be asyncio's default (60 s): "no limit" is a day.
                ssl_handshake_timeout=(86400.0 if timeout is None else timeout) if ssl else None,
            )
        except (OSError, asyncio.CancelledError) as exc:
            if isinstance(exc, ssl_module.SSLError):
                # Not TLS (plaintext HTTP, say), or no protocol version or cipher in common.
                reason = (exc.reason or str(exc)).lower().replace("_", " ")
                self.server._tls_failed(
                    "TLS handshake with %s failed: %s",
                    _peer(peer),
                    reason,
                    extra={"event": "tls_failed", "peer": _peer(peer)},
                )
            elif isinstance(exc, ConnectionAbortedError):
                # asyncio's sslproto aborts with it once ssl_handshake_timeout has passed.
                self.server._tls_timed_out(
                    "dropped %s: no TLS handshake within %s s",
                    _peer(peer),
                    timeout,
                    extra={"event": "tls_timeout", "peer": _peer(peer)},
                )
            else:  # the peer left, or the server closes
                logger.debug("could not start a handshake: %r", exc)
            handshake.abort()
            conn.close()

    def _resume_accepting(self) -> None:
        self._resume = None
        self._loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop listening; drop the connections accepted but not yet started."""
        if self._resume is not None:
            self._resume.cancel()
        else:
            self._loop.remove_reader(self.sock.fileno())
        self._out_of_resources.close()
        for task in self._pending:
            task.cancel()
        self.sock.close()


def _refuse_at_once(conn: socket.socket) -> None:
    """Answer 503 on a new socket and close it, without a transport (the reply fits at once)."""
    reply = reject(503, _BUSY, (("Retry-After", "1"),))
    # OSError: the peer is gone already, or its window is full: closing says enough.
    with contextlib.suppress(OSError):
        conn.send(reply.serialize())
    conn.close()


def _listening_sockets(
    host: str | None, port: int | None, reuse_port: bool = False
) -> list[socket.socket]:
    """Bind and listen on every address of ``host`` (every interface for None).

    ``reuse_port`` sets ``SO_REUSEPORT`` first, so that other sockets with it may listen on
    the same port.

    Raises:
        OSError: An address cannot be bound (taken, or not an address of this machine).
        ValueError: ``reuse_port`` on a platform without ``SO_REUSEPORT``.
    """
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port: this platform has no SO_REUSEPORT")
    infos = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # One socket per family, as asyncio does: no IPv4 through the IPv6 one.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"error while attempting to bind on address {address!r}: {exc.strerror}",
                ) from None
            sock.listen(_BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Handshake(asyncio.BufferedProtocol):
    """The server's side of one TCP connection until the upgrade (RFC 6455 §4.2).

    It reads the request (the head; then the body of a plain HTTP request, see
    ``_HEAD_ONLY``), asks the ``process_request`` hook, answers, and on 101 hands
    the transport to a new :class:`Connection` and starts the handler.
    Everything but an asynchronous hook runs in the read callback: no task
    exists until the handler's. The ``open_timeout`` bounds it all, the body
    and the hook included.
    """

    def __init__(self, server: Server, key: str, *, proxy: bool = False) -> None:
        self._server = server
        self._key = key
        self._proxy = proxy
        self._transport: asyncio.Transport | None = None
        self._parser: RequestParser | None = None
        self._remote: tuple[str, int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._hook: asyncio.Task[None] | None = None
        # Where the bytes after the head go: a body being read, or dropped (a refusal).
        self._on_data: Callable[[memoryview], None] | None = None
        self._finished = False
        # Counted from the accept on, so that a burst of accepts cannot pass the limits.
        server._handshakes.add(self)
        server._count_handshake(key, 1)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream's transport, though not a subclass of asyncio.Transport on every loop
        # (uvloop's are not): no isinstance check.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        if self._finished:  # Server.close() came first
            transport.abort()
            return
        self._remote = _address(transport.get_extra_info("peername"))
        scheme = None if transport.get_extra_info("sslcontext") is None else "https"
        self._parser = RequestParser(self._server.limits, self._remote, scheme)
        timeout = self._server.limits.open_timeout
        if timeout is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(timeout, self._timed_out)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive_buffer.view

    def buffer_updated(self, nbytes: int) -> None:
        data = _receive_buffer.view[:nbytes]
        if self._on_data is not None:
            self._on_data(data)
            return
        assert self._parser is not None
        try:
            request = self._parser.feed(data)
        except InvalidRequest as exc:
            self._refuse(exc)
            return
        if request is None:
            return
        if self._proxy:
            try:
                request = self._forwarded(request)
            except InvalidRequest as exc:
                self._refuse(exc, request)
                return
        if request.method in _HEAD_ONLY or is_upgrade(request):
            self._ask(request)
        else:
            self._read_body(request)

    def _forwarded(self, request: Request) -> Request:
        """The request of a trusted proxy, from its client (``forwarded.py``), counted as its.

        Raises:
            InvalidRequest: 503: the client has ``max_handshakes_per_address`` in progress.
        """
        server = self._server
        assert server.trusted_proxies is not None
        assert self._remote is not None
        client = server.trusted_proxies.client(request.headers, self._remote, request.scheme)
        key = address_key(client.address[0])
        here = server.limits.max_handshakes_per_address
        if key != self._key:
            if here is not None and server._handshaking[key] >= here:
                server._refuse_busy(key)
                raise InvalidRequest(503, _BUSY, (("Retry-After", "1"),))
            server._count_handshake(self._key, -1)
            server._count_handshake(key, 1)
            self._key = key
        return dataclasses.replace(
            request, remote_address=client.address, scheme=client.scheme, proxy_address=self._remote
        )

    def _read_body(self, request: Request) -> None:
        """Read the body the head announces (RFC 9112 §6.3), then ask the hook."""
        assert self._parser is not None
        assert self._transport is not None
        try:
            length = body_length(request, self._server.limits.max_body_size)
        except InvalidRequest as exc:
            # The body may be on its way: it is read and dropped once the answer is sent.
            self._refuse(exc, request, linger=True)
            return
        body = bytearray(self._parser.rest[:length])
        if len(body) == length:
            self._ask(dataclasses.replace(request, body=bytes(body)) if length else request)
            return

        def collect(data: memoryview) -> None:
            body.extend(data[: length - len(body)])
            if len(body) == length:
                # Nothing more is read: the answer closes the connection, or reading
                # pauses until an asynchronous hook has answered.
                self._ask(dataclasses.replace(request, body=bytes(body)))

        self._on_data = collect
        if request.version == "HTTP/1.1" and any(
            item.strip(" \t").lower() == "100-continue"
            for item in (request.headers.get("Expect") or "").split(",")
        ):
            self._transport.write(_CONTINUE)

    def _ask(self, request: Request) -> None:
        """Call the ``process_request`` hook, then answer as it says."""
        assert self._transport is not None
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

    def _hook_failed(self, hook: str = "process_request") -> None:
        # A bug in a hook: answer 500 rather than leak it to the event loop.
        logger.exception("%s failed for %s", hook, _peer(self._remote))
        self._send_and_close(reject(500, "internal server error").serialize())

    def _respond(self, request: Request, answer: Response | None) -> None:
        """Answer the request: the hook's response, a refusal, or the upgrade."""
        deflate: PerMessageDeflate | None = None
        try:
            if answer is None:
                subprotocol = select_subprotocol(request, self._server.subprotocols)
                extensions: tuple[tuple[str, str], ...] = ()
                compression = self._server.compression
                # RFC 7692 §5: the first offer this server can honour, or none.
                negotiated = (
                    None
                    if compression is None
                    else server_negotiate(parse_extensions(request.headers), compression)
                )
                if negotiated is not None:
                    extensions = (("Sec-WebSocket-Extensions", negotiated[0]),)
                    deflate = negotiated[1]
                # accept() validates the request (check_request) before anything else.
                answer = accept(request, subprotocol=subprotocol, extra_headers=extensions)
            head = answer.serialize()
        except InvalidRequest as exc:
            self._refuse(exc, request)
            return
        except Exception:
            # A Response from the hook that cannot be serialized.
            self._hook_failed()
            return
        if answer.status != 101:
            self._send_and_close(head)
            return
        self._upgrade(request, answer, head, deflate)

    def _upgrade(
        self, request: Request, response: Response, head: bytes, deflate: PerMessageDeflate | None
    ) -> None:
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
            deflate=deflate,
            logger=logger,
        )
        server._start_handler(connection)
        if parser.rest:
            connection.receive(parser.rest)
        if self._hook is not None:
            transport.resume_reading()

    def _refuse(
        self, exc: InvalidRequest, request: Request | None = None, *, linger: bool = False
    ) -> None:
        """Answer with the refusal, as ``process_refusal`` says if the head was parsed."""
        peer = _peer(self._remote if request is None else request.remote_address)
        logger.info(
            "refused %s: %d %s",
            peer,
            exc.status,
            exc.reason,
            extra={"event": "request_refused", "peer": peer, "status": exc.status},
        )
        hook = self._server.process_refusal
        refusal = reject(exc.status, exc.reason, exc.headers)
        try:
            answer = None if request is None or hook is None else hook(request, exc)
            data = (refusal if answer is None else answer).serialize()
        except Exception:
            self._hook_failed("process_refusal")
            return
        self._send_and_close(data, linger=linger)

    def _send_and_close(self, data: bytes, *, linger: bool = False) -> None:
        transport = self._transport
        assert transport is not None
        if linger and transport.can_write_eof():
            # RFC 9112 §9.6: closing with the client's body unread would reset the
            # connection, and "the client will not be able to read the last HTTP response".
            # Half-close instead, dropping what comes until the client closes too (then
            # eof_received closes) or for _LINGER seconds. TLS cannot half-close.
            transport.write(data)
            transport.write_eof()
            self._on_data = _drop
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(_LINGER, self.abort)
            return
        self._finish()
        transport.write(data)
        transport.close()

    def _timed_out(self) -> None:
        self._server._request_timed_out(
            "dropped %s: no complete request within %s s",
            _peer(self._remote),
            self._server.limits.open_timeout,
            extra={"event": "request_timeout", "peer": _peer(self._remote)},
        )
        self.abort()

    def abort(self) -> None:
        """Drop the connection (Server.close(), the open timeout, the end of a linger)."""
        self._finish()
        if self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool:
        # The peer left before its request was complete, or after a refusal: close.
        return False

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
        if not self._finished:
            self._finished = True
            server = self._server
            server._handshakes.discard(self)
            server._count_handshake(self._key, -1)


def _drop(data: memoryview) -> None:
    """What comes after a refused request: nothing of it is read."""


async def serve(
    handler: Handler,
    host: str | None = None,
    port: int | None = None,
    *,
    process_request: ProcessRequest | None = None,
    process_refusal: ProcessRefusal | None = None,
    subprotocols: Sequence[str] = (),
    limits: Limits | None = None,
    ssl: ssl_module.SSLContext | None = None,
    reuse_port: bool = False,
    compression: Compression | None = Compression(),
    trusted_proxies: TrustedProxies | None = None,
    **options: float | int | None,
) -> Server:
    """Start a WebSocket server on ``host``:``port`` and return it, already serving.

    Args:
        handler: coroutine run with each :class:`Connection` once it is open;
            the connection closes (1000) when it returns, 1011 if it raises.
        process_request: hook that sees each parsed request (method, path,
            query, headers, remote address; the body of a plain HTTP request
            other than GET and HEAD, up to ``Limits.max_body_size``) and may
            answer it with a Response: a plain HTTP reply or a refusal such as
            401 or 403.
        process_refusal: hook that sees each request the server refuses
            itself once its head is parsed (413 for a body over
            ``max_body_size``, 411 for a chunked one, 400 for an invalid
            upgrade...) with the ``InvalidRequest``, and may answer it with a
            Response of its own instead of the plain-text one.
        subprotocols: the subprotocols the server speaks, by preference.
        limits: a :class:`Limits`; ``options`` override single fields, e.g.
            ``max_size=None`` or ``ping_interval=5``.
        ssl: a server TLS context, for ``wss://`` (and ``https://``);
            ``Server.set_ssl`` replaces it for the connections accepted after.
        reuse_port: set ``SO_REUSEPORT`` on the listening sockets, so that several
            servers (processes) with it listen on one port, the kernel spreading the
            connections among them; a server without it cannot share their port.
        compression: permessage-deflate (RFC 7692), accepted when a client
            offers it: by default without context takeover either way; None
            turns it off.
        trusted_proxies: reverse proxies whose ``Forwarded`` / ``X-Forwarded-For`` and
            ``X-Forwarded-Proto`` name the client (``rfc6455.forwarded``): a request
            through one has the client's ``remote_address`` and ``scheme``, and counts
            toward ``max_handshakes_per_address`` as the client's once its head is read.

    Raises:
        OSError: An address cannot be bound (taken, or not an address of this machine).
        ValueError: ``reuse_port`` on a platform without ``SO_REUSEPORT``.
    """
    limits = dataclasses.replace(limits or Limits(), **options)  # type: ignore[arg-type]
    server = Server(
        handler,
        limits=limits,
        process_request=process_request,
        subprotocols=subprotocols,
        process_refusal=process_refusal,
        ssl=ssl,
        compression=compression,
        trusted_proxies=trusted_proxies,
    )
    loop = asyncio.get_running_loop()
    # getaddrinfo may ask a DNS server: not in the event loop.
    sockets = await loop.run_in_executor(None, _listening_sockets, host, port, reuse_port)
    server._listeners = [_Listener(server, sock) for sock in sockets]
    return server
