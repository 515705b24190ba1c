"""The composition root: wire the store, the queue, the manager and the server; run; shut down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl

import rfc6455
from rfc6455.forwarded import TrustedProxies
from rfc6455.handshake import is_upgrade

from .access import access_hook
from .api import Api, ApiBackend
from .auth import CHAT_SUBPROTOCOL
from .backend import ChatBackend
from .chat_metrics import ChatMetrics
from .descriptors import raise_descriptor_limit
from .engine import Engine
from .event_loop import running_loop
from .handler import ChatHandler, echo
from .hosts import HostPolicy
from .hub import Hub
from .local_engine import LocalEngine
from .manager import ConnectionManager
from .metrics_page import MetricsPage, serve_metrics
from .namespaces import Namespace, Namespaces
from .persistence import PersistenceQueue
from .settings import Settings
from .supervised import RESTART_SIGNAL, SupervisorLink
from .tls import TLSFileError, server_context
from .web import CHAT_PATH, ECHO_PATH, Router

__all__ = ["App", "addresses_text", "engine_of", "namespaces_of", "run"]

logger = logging.getLogger("server")

# How the clients are closed on RESTART_SIGNAL (App.stop's defaults: on SIGINT and SIGTERM).
_RESTART = (rfc6455.CloseCode.SERVICE_RESTART, "service restart")


def addresses_text(host: str, port: int, *, tls: bool = False) -> str:
    """What the start-up line says after ``listening:``: the page to open, the WebSocket URL.

    ``tls``: served over TLS (``--tls-cert``), so ``https://`` and ``wss://``.
    """
    host = f"[{host}]" if ":" in host else host
    http, ws = ("https", "wss") if tls else ("http", "ws")
    return f"open {http}://{host}:{port}/ (WebSocket {ws}://{host}:{port}/)"


def namespaces_of(settings: Settings) -> Namespaces:
    """The channels' options: the flags' defaults, and the ``--channels`` file over them.

    Raises:
        NamespaceError: The file is not valid.
    """
    defaults = Namespace(
        history=settings.history,
        retention_messages=settings.retention_messages,
        retention_days=settings.retention_days,
    )
    if settings.channels_file is None:
        return Namespaces(defaults)
    return Namespaces.load(settings.channels_file, defaults)


def engine_of(
    settings: Settings, namespaces: Namespaces, metrics: ChatMetrics | None = None
) -> Engine:
    """The engine ``--engine`` names: this process's, or Redis's (imported only then)."""
    if settings.engine == "local":
        return LocalEngine(settings, namespaces, metrics)
    from .redis_engine import RedisEngine

    return RedisEngine(settings, namespaces, metrics=metrics)


class App:
    """One chat server: start it, then stop it gracefully.

    Args:
        settings: What the server was told.
        api_backend: The chat's side of the HTTP API (``api.py``), served when
            ``settings.api_key`` is set; ``backend.ChatBackend`` by default.

    Raises:
        NamespaceError: The ``--channels`` file is not valid.
    """

    def __init__(self, settings: Settings, api_backend: ApiBackend | None = None) -> None:
        self.settings = settings
        self.namespaces = namespaces = namespaces_of(settings)
        # Counted whether or not they are served: a count costs a `+= 1` (chat_metrics.py).
        self.metrics = metrics = ChatMetrics(settings.worker)
        self.manager = ConnectionManager(metrics)
        self.engine: Engine = engine_of(settings, namespaces, metrics)
        self.hub = Hub(self.manager, namespaces, settings.limits.max_send_buffer or 2**20, metrics)
        self.engine.listener = self.hub
        self.chat = ChatHandler(self.manager, self.engine, self.hub, namespaces, settings, metrics)
        if api_backend is None:
            api_backend = ChatBackend(self.engine, self.hub, self.manager, settings.history_bytes)
        paths = frozenset({CHAT_PATH, ECHO_PATH} if settings.echo_enabled else {CHAT_PATH})
        self.api = (
            Api(
                api_backend,
                settings.api_key,
                max_text_chars=settings.max_text_chars,
                max_text_bytes=settings.max_text_bytes,
            )
            if settings.api_key is not None
            else None
        )
        self.metrics_page = MetricsPage(metrics.registry, settings.metrics_token)
        self.router = Router(
            settings.web_root,
            self.health,
            paths,
            HostPolicy(settings.allowed_hosts),
            self.api,
            # On the chat's port only with a token: the figures are not for everyone.
            self.metrics_page if settings.metrics_token is not None else None,
        )
        self.server: rfc6455.Server | None = None
        self.metrics_server: rfc6455.Server | None = None
        self.access = access_hook(self.router, lambda: self.server, settings, metrics)
        metrics.watch(lambda: self.server, self.manager, self.hub.counts, self.engine.figures)

    @property
    def queue(self) -> PersistenceQueue:
        """The local engine's persistence queue (its figures and its epoch, for tests)."""
        assert isinstance(self.engine, LocalEngine)
        return self.engine.queue

    def health(self) -> dict[str, object]:
        """The figures ``GET /healthz`` reports."""
        return {"connections": len(self.manager), **self.engine.health()}

    async def _dispatch(self, connection: rfc6455.Connection) -> None:
        assert connection.request is not None
        metrics = self.metrics
        try:
            if connection.request.path == ECHO_PATH:
                metrics.accepted_echo.value += 1
                await echo(connection, metrics)
            else:
                metrics.accepted_chat.value += 1
                await self.chat(connection)
        except Exception:
            metrics.failed()  # the server closes it with 1011 (rfc6455.serve)
            raise
        # The handler has returned once the connection closed, or closing it.
        metrics.closed(connection)

    def _refusal(
        self, request: rfc6455.Request, exc: rfc6455.InvalidRequest
    ) -> rfc6455.Response | None:
        """Count a handshake the WebSocket server refused itself, then let the Router answer."""
        if is_upgrade(request):
            self.metrics.refused("bad_request")
        return self.router.refusal(request, exc)

    async def start(self) -> int:
        """Open the database, load the latest messages and start listening; returns the port."""
        settings = self.settings
        context = self._tls_context()
        await self.engine.start()
        try:
            self.server = await rfc6455.serve(
                self._dispatch,
                settings.host,
                settings.port,
                process_request=self.access,
                process_refusal=self._refusal,
                subprotocols=(CHAT_SUBPROTOCOL,),
                limits=settings.limits,
                reuse_port=settings.reuse_port,
                ssl=context,
                compression=settings.deflate,
                trusted_proxies=(
                    TrustedProxies(settings.trusted_proxies) if settings.trusted_proxies else None
                ),
            )
            if settings.metrics_port is not None:
                self.metrics_server = await serve_metrics(
                    self.metrics_page,
                    settings.metrics_host,
                    settings.metrics_port + (settings.worker or 0) if settings.metrics_port else 0,
                )
        except BaseException:
            # Cannot listen (port taken, unknown host): close the database and its thread again.
            if self.server is not None:
                await self.server.close()
            await self.engine.stop(0)
            raise
        port = self.server.port
        logger.info("event loop: %s", running_loop(), extra={"event": "event_loop"})
        logger.info(
            "listening: %s",
            addresses_text(settings.host, port, tls=context is not None),
            extra={"event": "listening"},
        )
        return port

    def _tls_context(self) -> ssl.SSLContext | None:
        """The context of ``--tls-cert`` and ``--tls-key``; None without them.

        Raises:
            TLSFileError: They cannot be used (``tls.server_context``).
        """
        cert, key = self.settings.tls_cert, self.settings.tls_key
        return None if cert is None or key is None else server_context(cert, key)

    def reload_tls(self) -> bool:
        """Load the certificate and key again (SIGHUP): the connections accepted from now on
        get them, those open keep theirs. One that fails keeps the old ones, logged.

        Returns:
            Whether the new ones are served.
        """
        assert self.server is not None
        try:
            context = self._tls_context()
        except TLSFileError as exc:
            logger.error(
                "TLS reload failed, still serving the previous certificate: %s",
                exc,
                extra={"event": "tls_reload_failed"},
            )
            return False
        assert context is not None
        self.server.set_ssl(context)
        logger.info(
            "TLS reloaded: new connections get %s",
            self.settings.tls_cert,
            extra={"event": "tls_reloaded"},
        )
        return True

    async def stop(
        self, code: int = rfc6455.CloseCode.GOING_AWAY, reason: str = "server shutting down"
    ) -> None:
        """Stop accepting, close clients with ``code``, then drain the queue into the database.

        Each of the two phases is bounded by ``shutdown_timeout``.
        """
        # Each phase gets the whole timeout: a slow client must not leave the
        # queue without time to drain.
        timeout = self.settings.shutdown_timeout
        if self.server is not None:
            await self.server.close(code, reason, timeout)
        if self.metrics_server is not None:
            await self.metrics_server.close()
        self.access.close()
        if self.api is not None:
            self.api.close()
        self.chat.departures.close()
        await self.engine.stop(timeout)
        figures = self.engine.health()
        logger.info(
            "stopped: %d messages persisted, %d dead-lettered",
            figures.get("persisted", figures.get("archived", 0)),
            figures.get("deadLettered", 0),
            extra={"event": "stopped"},
        )


async def run(settings: Settings, link: SupervisorLink | None = None) -> int:
    """Run until a signal says stop, then shut down gracefully; returns the exit status.

    SIGINT and SIGTERM close the clients with 1001 "server shutting down"; ``RESTART_SIGNAL``
    (SIGUSR1) with 1012 "service restart", which tells them to connect again (to another
    worker, or to this server once restarted).
    With TLS, SIGHUP loads the certificate and key again (``App.reload_tls``).

    Args:
        settings: What the server was told.
        link: The supervisor of this worker (``--workers``): told once the server listens;
            its end stops the server as SIGTERM does.
    """
    app = App(settings)
    stop = asyncio.Event()
    restarting = False

    def restart() -> None:
        nonlocal restarting
        restarting = True
        stop.set()

    def reload() -> None:
        if app.server is not None:  # else start() loads the files still
            app.reload_tls()

    def orphaned() -> None:
        logger.warning("the supervisor is gone")
        stop.set()

    loop = asyncio.get_running_loop()
    # Before start(), which logs the start-up line: a signal sent as soon as that line
    # appears must still get a graceful shutdown, not the default action (death).
    signals = {signal.SIGINT: stop.set, signal.SIGTERM: stop.set, RESTART_SIGNAL: restart}
    if settings.tls_cert is not None:
        signals[signal.SIGHUP] = reload
    for signum, handler in signals.items():
        loop.add_signal_handler(signum, handler)
    if link is not None:
        link.watch(orphaned)
    limits = settings.limits
    raise_descriptor_limit(settings.max_connections, limits.max_handshakes or 0)
    started = False
    try:
        await app.start()
        started = True
        if link is not None:
            link.ready()
        await stop.wait()
        if restarting:
            logger.info("restarting: closing clients with %d %r", *_RESTART)
        else:
            logger.info("shutting down", extra={"event": "shutting_down"})
    finally:
        for signum in signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        if link is not None:
            link.close()
        if started:
            await (app.stop(*_RESTART) if restarting else app.stop())
    return 0
