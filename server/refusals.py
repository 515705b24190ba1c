"""One log line per refused request, and one a second for refusals that come in floods.

A refusal of the chat's handshake or of the HTTP API is logged with the client's address (behind
a trusted proxy, the one it names), the path (never the query: an ``access_token`` may be in
it), the status and the reason sent, never a credential. The refusals for being too many (429:
an address over its rate or connection limits; 503: the server full) are what a reconnect storm
or a flood makes by the thousand: those are logged once a second with a count, per status.
"""

from __future__ import annotations

import logging

from rfc6455 import Request
from rfc6455.aio.throttle import ThrottledLog

__all__ = ["FLOOD_STATUSES", "Refusals"]

#: The statuses of refusals for being too many.
FLOOD_STATUSES = (429, 503)


class Refusals:
    """Logs the refusals of one part of the server.

    Args:
        logger: Where the lines go (``server.access``, ``server.api``).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._floods: dict[int, ThrottledLog] = {}

    def __call__(self, request: Request, status: int, reason: str) -> None:
        """Log that ``request`` got ``status`` with ``reason``."""
        address = request.remote_address
        peer = "unknown" if address is None else f"{address[0]}:{address[1]}"
        extra = {"event": "refused", "peer": peer, "path": request.path, "status": status}
        if request.proxy_address is not None:
            extra["proxy"] = f"{request.proxy_address[0]}:{request.proxy_address[1]}"
        args = ("refused %s %s: %d %s", peer, request.path, status, reason)
        if status not in FLOOD_STATUSES:
            self.logger.info(*args, extra=extra)
            return
        flood = self._floods.get(status)
        if flood is None:
            flood = self._floods[status] = ThrottledLog(self.logger, logging.INFO)
        flood(*args, extra=extra)

    def close(self) -> None:
        """Log what the floods counted but did not log yet; once the server has stopped."""
        for flood in self._floods.values():
            flood.close()
        self._floods.clear()
