"""Plain HTTP on the WebSocket port: the web client's files, ``/healthz`` and the API.

Requests that ask for a WebSocket upgrade on a known path go on to the
handshake; everything else is answered here, before any upgrade: under
``/api/`` by the HTTP API (``api.py``) when there is one, as any unknown path
otherwise.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from rfc6455 import Headers, InvalidRequest, Request, Response
from rfc6455.handshake import is_upgrade, reject

from .api import API_PREFIX, Api
from .hosts import HostPolicy, host_name
from .metrics_page import METRICS_PATH, MetricsPage

__all__ = ["CHAT_PATH", "ECHO_PATH", "Router"]

CHAT_PATH = "/"
ECHO_PATH = "/echo"

# Types of the files the web client ships; anything else is served as bytes.
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


class Router:
    """Answers what is not a WebSocket upgrade; the first step of ``access.Access``.

    Args:
        web_root: the folder whose files are served (``web_client/``).
        health: returns the figures ``/healthz`` reports.
        websocket_paths: the paths that accept a WebSocket upgrade.
        hosts: the host names requests may name (``hosts.py``); others get 421.
        api: answers the requests under ``/api/``; None: there is no API.
        metrics: answers ``/metrics`` (``--metrics-token``); None: it is not served here.
    """

    def __init__(
        self,
        web_root: Path,
        health: Callable[[], Mapping[str, object]],
        websocket_paths: frozenset[str] = frozenset({CHAT_PATH, ECHO_PATH}),
        hosts: HostPolicy | None = None,
        api: Api | None = None,
        metrics: MetricsPage | None = None,
    ) -> None:
        self.web_root = web_root.resolve()
        self.health = health
        self.websocket_paths = websocket_paths
        self.hosts = hosts or HostPolicy()
        self.api = api
        self.metrics = metrics

    def __call__(self, request: Request) -> Response | Awaitable[Response] | None:
        """None lets a WebSocket upgrade go on; any other request gets its answer, an API
        request maybe once the chat has it."""
        if not self.hosts.allows(request):
            # RFC 9110 §15.5.20: the server will not answer for this host (DNS rebinding).
            name = host_name(request.authority or "")
            return reject(421, f"this server does not answer for the host {name}")
        if is_upgrade(request):
            if request.path in self.websocket_paths:
                return None
            return reject(404, f"no WebSocket endpoint at {request.path}")
        if self.api is not None and request.path.startswith(API_PREFIX):
            return self.api(request)
        if self.metrics is not None and request.path == METRICS_PATH:
            return self.metrics(request)
        if request.method not in ("GET", "HEAD"):
            return reject(405, "only GET and HEAD are served", (("Allow", "GET, HEAD"),))
        if request.path == "/healthz":
            response = _response(
                200, "application/json", json.dumps({"status": "ok", **self.health()}).encode()
            )
        else:
            response = self._static(request.path)
        if request.method == "HEAD":
            return Response(response.status, response.reason, response.headers)
        return response

    def refusal(self, request: Request, exc: InvalidRequest) -> Response | None:
        """The server's ``process_refusal`` hook: the API's refusals in JSON, others as they are."""
        if self.api is not None and request.path.startswith(API_PREFIX):
            return self.api.refusal(request, exc)
        return None

    def _static(self, path: str) -> Response:
        """A file under ``web_root``; ``..``, absolute and hidden paths are refused."""
        relative = PurePosixPath(unquote(path).lstrip("/") or "index.html")
        if (
            "\\" in str(relative)
            or "\x00" in str(relative)
            or any(part in ("..", "") or part.startswith(".") for part in relative.parts)
        ):
            return reject(404, "not found")
        file = self.web_root.joinpath(*relative.parts)
        try:
            # The resolved path must stay inside the web root (no symlink escapes).
            resolved = file.resolve(strict=True)
            resolved.relative_to(self.web_root)
            body = resolved.read_bytes()
        except (OSError, ValueError):
            return reject(404, "not found")
        content_type = _CONTENT_TYPES.get(resolved.suffix) or (
            mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
        )
        return _response(200, content_type, body)


def _response(status: int, content_type: str, body: bytes) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            # No page of this server may be framed by another site (clickjacking): the
            # header for old browsers, CSP's frame-ancestors for the others (a <meta> CSP
            # cannot say it).
            ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", "frame-ancestors 'none'"),
            ("Connection", "close"),
        ]
    )
    return Response(status, "OK", headers, body)
