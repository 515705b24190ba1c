"""The Origin check of the chat endpoint, against Cross-Site WebSocket Hijacking.

A browser sends the ``Origin`` of the page that opens a WebSocket (RFC 6455 §4.1 item 8, §10.2)
and lets any page open one to any server: without a check, a page on another site could open
the chat from a visitor's browser, with the visitor's network position (a server on localhost
or an intranet) and the credentials the browser adds by itself (basic authentication). So a
handshake is allowed when it has no ``Origin`` (not a browser: the console client, scripts),
when its Origin names the host it was sent to (the page served by this server: the Origin's
``host[:port]`` equals the ``Host`` header, a default port or not, and its scheme is the one
the client spoke when the server knows it: ``https`` over TLS, or what a trusted proxy says,
``--trusted-proxies``), or when the Origin is listed in
``--allowed-origins``. ``null`` (a page opened as a file, a sandboxed frame) must be listed to be
allowed, and ``*`` allows every Origin.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from rfc6455 import Request

__all__ = ["OriginPolicy", "parse_origins"]

ANY = "*"
NULL = "null"
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def parse_origins(text: str) -> frozenset[str]:
    """Read a comma-separated list of origins: ``scheme://host[:port]``, ``null`` or ``*``.

    Raises:
        ValueError: An item is not an origin (it has a path, a query, no host...).
    """
    origins = set()
    for item in text.split(","):
        origin = item.strip()
        if not origin:
            continue
        if origin not in (ANY, NULL) and not _is_origin(origin.lower()):
            raise ValueError(f"{origin!r} is not an origin such as https://example.com")
        origins.add(origin.lower())
    return frozenset(origins)


def _is_origin(text: str) -> bool:
    """RFC 6454 §6.2: an origin is scheme "://" host [ ":" port ], nothing more."""
    try:
        parts = urlsplit(text)
        port = parts.port  # a port that is not a number from 0 to 65535 raises ValueError
    except ValueError:
        return False
    netloc = parts.hostname if port is None else parts.netloc
    return bool(parts.scheme and parts.hostname) and text == f"{parts.scheme}://{netloc}"


class OriginPolicy:
    """Decides whether a handshake's ``Origin`` may open the chat.

    Args:
        allowed: Origins allowed besides the server's own host (``parse_origins``).
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = frozenset(allowed)

    def allows(self, request: Request) -> bool:
        """True if the request has no Origin, its Origin is the server's host, or is listed."""
        origins = request.headers.get_all("Origin")
        if not origins:
            return True
        if len(origins) > 1:
            return False  # RFC 6454 §7.3: a user agent sends at most one Origin field
        origin = origins[0].strip().lower()
        if ANY in self.allowed or origin in self.allowed:
            return True
        host = (request.headers.get("Host") or "").strip().lower()
        # RFC 6454 §6.2: the serialization is scheme "://" host [ ":" port ]; its authority is
        # what the browser put in the Host header (RFC 9110 §7.2) for a page of this server.
        scheme, separator, authority = origin.partition("://")
        if not (separator and scheme and host):
            return False
        # A page of http://chat.example is not of the https:// site (RFC 6454 §5), but over
        # plaintext without a trusted proxy's word the server cannot tell which it serves.
        if request.scheme is not None and scheme != request.scheme:
            return False
        return _without_default_port(authority, scheme) == _without_default_port(host, scheme)


def _without_default_port(authority: str, scheme: str) -> str:
    """``host:443`` as ``host`` for https (RFC 9110 §4.2: the same origin), ``:80`` for http."""
    port = _DEFAULT_PORTS.get(scheme)
    return authority.removesuffix(f":{port}") if port else authority
