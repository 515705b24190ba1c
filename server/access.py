"""The ``process_request`` hook: the Router, then who may open a WebSocket, before the upgrade.

For every request, the Router first (``web.py``: a Host this server does not answer for gets
421, anything but an upgrade its answer). Then for every upgrade to a known path, in this order
(the cheap checks first, the password last):

1. ``--max-connections``: 503 when that many WebSocket connections are open, chat and /echo
   alike (a cap on the process's memory and file descriptors, whatever the endpoint);
   ``--max-echo-connections``: 503 for /echo when that many are open there, so that anonymous
   echo clients cannot take the places of the chat's users.

Then for the chat endpoint only (``/echo`` carries no user data and no credentials, and
conformance suites and benchmarks open hundreds of connections a second through it):

2. the Origin (``origin.py``): 403 for a browser page of another site; then an anonymous
   identity in the query (``?clientId=&name=``, ``commands.identity_from_query``): 400 for one
   ``hello`` would refuse;
3. ``--connect-rate-per-ip``: 429 for an address opening connections too fast;
4. ``--max-connections-per-ip``: 429 for an address with that many chat connections open;
5. ``--auth``: 401 without valid credentials (``auth.py``); with ``basic``, 429 for an address
   out of failed logins or with its most password checks in flight, 503 when the server has
   its most in flight (``logins.py``), each without a check.

The counts are exact: ``Server.connections`` holds a connection from the step of its 101 on,
and nothing is awaited between the last count and the upgrade (after a password check in a
worker thread the limits are counted again). Every refusal gets one log line with the path,
never the query (an ``access_token`` may be in it) nor a credential; a flood of 429s or
503s one line a second (``refusals.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

from rfc6455 import Request, Response, Server
from rfc6455.addresses import address_key
from rfc6455.handshake import is_upgrade, reject

from .auth import (
    Authenticator,
    BasicAuthenticator,
    Identity,
    Unauthorized,
    authenticator,
    remember,
)
from .chat_metrics import ChatMetrics
from .commands import CommandError, identity_from_query
from .iplimits import ConnectRate
from .origin import OriginPolicy
from .refusals import Refusals
from .settings import Settings
from .web import CHAT_PATH, ECHO_PATH, Router

__all__ = ["RETRY_FULL", "RETRY_PER_IP", "Access", "access_hook"]

logger = logging.getLogger("server.access")

# Retry-After (RFC 9110 §10.2.3) when the server is full: long enough for a few clients to
# leave, short enough that a reconnecting client is not kept out for long.
RETRY_FULL = 10
# Retry-After when an address has its most connections open: one of them has to close first.
RETRY_PER_IP = 10

_KEY = "server.access.address"


class Access:
    """The server's ``process_request`` hook.

    Args:
        router: Answers plain HTTP requests and upgrades to unknown paths.
        server: The WebSocket server, once it runs (its ``connections``).
        max_connections: Open connections beyond which handshakes get 503; None: no cap.
        max_echo: Open /echo connections beyond which /echo handshakes get 503; None: no cap.
        origins: Who may open the chat from a browser.
        max_per_ip: Chat connections open at once per address; None: no limit.
        connect_rate: New chat connections a second per address; None: no limit.
        authenticator: Checks credentials; None: anybody may chat.
        metrics: Counts the refusals by reason (``chat_metrics.REFUSALS``).
    """

    def __init__(
        self,
        router: Router,
        server: Callable[[], Server | None],
        *,
        max_connections: int | None = None,
        max_echo: int | None = None,
        origins: OriginPolicy | None = None,
        max_per_ip: int | None = None,
        connect_rate: ConnectRate | None = None,
        authenticator: Authenticator | None = None,
        metrics: ChatMetrics | None = None,
    ) -> None:
        self.router = router
        self.metrics = metrics or ChatMetrics()
        self.server = server
        self.max_connections = max_connections
        self.max_echo = max_echo
        self.origins = origins or OriginPolicy()
        self.max_per_ip = max_per_ip
        self.connect_rate = connect_rate
        self.authenticator = authenticator
        self._refusals = Refusals(logger)

    def __call__(self, request: Request) -> Response | Awaitable[Response | None] | None:
        """None lets the upgrade go on; a Response answers the request; an awaitable decides
        once a password has been checked (or the API answers)."""
        answer = self.router(request)
        if not is_upgrade(request):
            return answer
        if answer is not None:
            assert isinstance(answer, Response)  # an upgrade's refusal is at once (421, 404)
            return self._refused(request, answer, "host" if answer.status == 421 else "not_found")
        if (full := self._full(request.path)) is not None:
            return self._refused(request, *full)
        if request.path != CHAT_PATH:
            return None
        if not self.origins.allows(request):
            origin = request.headers.get("Origin", "")
            return self._refused(request, reject(403, f"origin {origin} is not allowed"), "origin")
        try:
            identity_from_query(request.query)
        except CommandError as exc:
            return self._refused(request, reject(400, str(exc)), "bad_request")
        key = address_key(request.remote_address[0]) if request.remote_address else ""
        request.state[_KEY] = key
        if self.connect_rate is not None and (wait := self.connect_rate.admit(key)):
            seconds = math.ceil(wait)
            headers = (("Retry-After", str(seconds)),)
            reason = f"too many new connections from {key}: retry in {seconds} s"
            return self._refused(request, reject(429, reason, headers), "connect_rate")
        if (crowded := self._crowded(key)) is not None:
            return self._refused(request, crowded, "per_ip")
        if self.authenticator is None:
            return None
        try:
            identity = self.authenticator(request)
        except Unauthorized as exc:
            return self._unauthorized(request, exc)
        if isinstance(identity, Identity):
            remember(request, identity)
            return None
        return self._checked(request, key, identity)

    async def _checked(
        self, request: Request, key: str, pending: Awaitable[Identity]
    ) -> Response | None:
        """Wait for a password check, then count again: others may have connected meanwhile."""
        try:
            identity = await pending
        except Unauthorized as exc:
            return self._unauthorized(request, exc)
        if (full := self._full(request.path)) is not None:
            return self._refused(request, *full)
        if (crowded := self._crowded(key)) is not None:
            return self._refused(request, crowded, "per_ip")
        remember(request, identity)
        return None

    def _unauthorized(self, request: Request, exc: Unauthorized) -> Response:
        """401 for credentials refused; 429 or 503 for password checks out of their limits."""
        response = exc.response()
        return self._refused(request, response, "auth" if response.status == 401 else "login_limit")

    def close(self) -> None:
        """Stop the password checks' worker threads (``--auth basic``) and log the refusals
        counted but not logged yet; once the server is."""
        if isinstance(self.authenticator, BasicAuthenticator):
            self.authenticator.close()
        self._refusals.close()

    def _refused(self, request: Request, response: Response, reason: str) -> Response:
        """Count a refusal by ``reason`` and log it (``server.refusals``: the path, never the
        query, where an ``access_token`` may be, nor a credential)."""
        self.metrics.refused(reason)
        self._refusals(request, response.status, response.body.decode().strip())
        return response

    def _full(self, path: str) -> tuple[Response, str] | None:
        """503 if ``max_connections`` are open, or ``max_echo`` on /echo; with the reason."""
        server = self.server()
        if server is None:
            return None
        headers = (("Retry-After", str(RETRY_FULL)),)
        limit = self.max_connections
        if limit is not None and len(server.connections) >= limit:
            full = reject(503, f"the server is full ({limit} connections): retry later", headers)
            return full, "max_connections"
        limit = self.max_echo
        if path == ECHO_PATH and limit is not None and server.connections_on(path) >= limit:
            full = reject(503, f"/echo is full ({limit} connections): retry later", headers)
            return full, "max_echo_connections"
        return None

    def _crowded(self, key: str) -> Response | None:
        """429 if the address ``key`` has ``max_per_ip`` chat connections open."""
        limit = self.max_per_ip
        if limit is None:
            return None
        # A walk over the open connections, only while this limit is on: counters kept beside
        # them could drift from the truth (an upgrade that never happens after the hook).
        server = self.server()
        open_here = sum(
            1
            for connection in (server.connections if server is not None else ())
            if connection.request is not None and connection.request.state.get(_KEY) == key
        )
        if open_here < limit:
            return None
        headers = (("Retry-After", str(RETRY_PER_IP)),)
        return reject(429, f"{limit} connections are open from {key}", headers)


def access_hook(
    router: Router,
    server: Callable[[], Server | None],
    settings: Settings,
    metrics: ChatMetrics | None = None,
) -> Access:
    """The hook ``settings`` ask for.

    Raises:
        ValueError, ImportError: See ``auth.authenticator`` (the command line checked them).
    """
    rate = settings.connect_rate_per_ip
    return Access(
        router,
        server,
        max_connections=settings.max_connections or None,
        max_echo=settings.max_echo_connections or None,
        origins=OriginPolicy(settings.allowed_origins),
        max_per_ip=settings.max_connections_per_ip or None,
        connect_rate=ConnectRate(rate, settings.connect_burst_per_ip) if rate else None,
        authenticator=authenticator(
            settings.auth, settings.jwt_secret, settings.users_file, settings.max_login_failures
        ),
        metrics=metrics,
    )
