"""``GET /metrics``: the registry's text for Prometheus, on the chat's port or a port of its own.

Two ways to serve it (``docs/metrics.md``), neither by default:

- ``--metrics-token``: on the chat's port, to requests with ``Authorization: Bearer <token>``
  (RFC 6750 §2.1), compared in constant time; 401 with a ``WWW-Authenticate`` challenge
  otherwise (RFC 6750 §3).
- ``--metrics-port`` (and ``--metrics-host``, loopback by default): a listener that serves
  only ``/metrics`` (the token, if also given, is asked for there too); under ``--workers N``
  worker K listens on the port plus K, so that each is scraped, not one at random.
"""

from __future__ import annotations

import hmac
import logging

import rfc6455
from rfc6455 import Headers, Request, Response
from rfc6455.handshake import reject

from .auth import bearer_challenge
from .metrics import CONTENT_TYPE, Registry

__all__ = ["METRICS_PATH", "MetricsPage", "serve_metrics"]

logger = logging.getLogger("server.metrics")

METRICS_PATH = "/metrics"


class MetricsPage:
    """Answers ``GET /metrics`` (and ``HEAD``) with the registry's exposition.

    Args:
        registry: What is exposed.
        token: The Bearer token a request must carry; None: none is asked for.
    """

    def __init__(self, registry: Registry, token: str | None = None) -> None:
        self.registry = registry
        self._token = None if token is None else token.encode()

    def __call__(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return reject(405, "only GET and HEAD are served", (("Allow", "GET, HEAD"),))
        if self._token is not None and not self._authorized(request):
            challenge = bearer_challenge(realm="metrics")
            return reject(401, "a token is required", (("WWW-Authenticate", challenge),))
        body = self.registry.exposition().encode()
        headers = Headers(
            [
                ("Content-Type", CONTENT_TYPE),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("Connection", "close"),
            ]
        )
        return Response(200, "OK", headers, b"" if request.method == "HEAD" else body)

    def _authorized(self, request: Request) -> bool:
        assert self._token is not None
        scheme, _, credentials = (request.headers.get("Authorization") or "").partition(" ")
        # RFC 9110 §11.1: the scheme is case-insensitive.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip(" ").encode(), self._token
        )


async def serve_metrics(page: MetricsPage, host: str, port: int) -> rfc6455.Server:
    """Listen on ``host``:``port`` for ``/metrics`` only: any other path gets 404, an
    upgrade too.

    Raises:
        OSError: It cannot listen there.
    """

    def answer(request: Request) -> Response:
        if request.path != METRICS_PATH:
            return reject(404, "not found")
        return page(request)

    async def never(connection: rfc6455.Connection) -> None:  # pragma: no cover
        raise AssertionError("every request is answered before an upgrade")

    server = await rfc6455.serve(never, host, port, process_request=answer)
    logger.info("metrics: http://%s:%d%s", host, server.port, METRICS_PATH)
    return server
