"""The opening handshake of RFC 6455 §4, both sides, sans-I/O.

Server: ``check_request`` validates an upgrade request (§4.2.1) and returns its
key, or raises ``InvalidRequest`` carrying the status to answer with; then
``accept`` builds the 101 reply (§4.2.2) and ``reject`` any error reply.

Client: ``parse_uri`` reads a ``ws://`` or ``wss://`` URI (§3),
``client_request`` builds the upgrade request (§4.1) and ``check_response``
validates the server's reply (§4.1, "the client MUST validate the server's
response"); ``refused`` is its error for a status other than 101.

Extensions (permessage-deflate, RFC 7692) are negotiated by ``deflate``: the
server's ``accept`` carries its answer in ``extra_headers``, and a client that
offered one checks the reply's ``Sec-WebSocket-Extensions`` there.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from .exceptions import InvalidRequest, InvalidResponse
from .http11 import Headers, Request, Response, check_host, reason_phrase

__all__ = [
    "GUID",
    "WebSocketURI",
    "accept",
    "accept_key",
    "check_request",
    "check_response",
    "client_request",
    "generate_key",
    "is_upgrade",
    "offered_subprotocols",
    "parse_uri",
    "refused",
    "reject",
    "select_subprotocol",
]

# RFC 6455 §1.3: the GUID appended to the key before hashing.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_REG_NAME = re.compile(r"[0-9A-Za-z!$&'()*+,;=%._~\-]+")
# RFC 9110 §5.6.2: token, the syntax of a subprotocol name (RFC 6455 §4.1).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Characters left alone when percent-encoding a path or query (RFC 3986 §3.3-3.4);
# "%" is kept so that a resource already encoded is not encoded twice.
_PATH_SAFE = "/%:@!$&'()*+,;="
_QUERY_SAFE = _PATH_SAFE + "?"


def accept_key(key: str) -> str:
    """Return the ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key``.

    RFC 6455 §4.2.2 step 5: base64 of the SHA-1 of the key followed by the GUID.
    """
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def generate_key() -> str:
    """Return a fresh ``Sec-WebSocket-Key``.

    RFC 6455 §4.1: "a randomly selected 16-byte value that has been base64-encoded".
    """
    return base64.b64encode(secrets.token_bytes(16)).decode("ascii")


def _tokens(headers: Headers, name: str) -> list[str]:
    """Return the elements of the comma-separated list field ``name``, across repeats.

    RFC 9110 §5.6.1: a recipient MUST accept and ignore empty list elements.
    """
    return [
        item
        for value in headers.get_all(name)
        for element in value.split(",")
        if (item := element.strip(" \t"))
    ]


def _has_token(headers: Headers, name: str, token: str) -> bool:
    """Tell whether the list field ``name`` holds ``token``, compared without case."""
    return any(item.lower() == token for item in _tokens(headers, name))


def is_upgrade(request: Request) -> bool:
    """Tell whether ``request`` asks for a WebSocket upgrade (``Upgrade: websocket``).

    A GET without it is a plain HTTP request, e.g. for a static file.
    """
    return _has_token(request.headers, "Upgrade", "websocket")


def check_request(request: Request) -> str:
    """Validate a client's opening handshake (RFC 6455 §4.2.1).

    Args:
        request: the parsed request head.

    Returns:
        The ``Sec-WebSocket-Key``, for ``accept_key``.

    Raises:
        InvalidRequest: the status to answer with, a one-line reason and any
            header the reply needs: 405 (with ``Allow: GET``) for a method
            other than GET; 426 (with ``Sec-WebSocket-Version: 13``) for a
            version other than 13; 400 for every other fault, a missing
            ``Sec-WebSocket-Version`` included (the request is then not a
            WebSocket handshake of any version, rather than one of a version
            we lack).
    """
    headers = request.headers
    # §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
    if request.method != "GET":
        raise InvalidRequest(405, f"method {request.method} not allowed", (("Allow", "GET"),))
    if request.version != "HTTP/1.1":
        raise InvalidRequest(400, f"{request.version} cannot upgrade; HTTP/1.1 is required")
    # §4.2.1 item 2: a |Host| header field, valid as RFC 9112 §3.2 says.
    check_host(request)
    # §4.2.1 item 1 is a GET, whose content "has no generally defined semantics"
    # (RFC 9110 §9.3.1): bytes after the head are WebSocket frames, so a request
    # announcing a body would have it read as frames.
    for name, value in headers:  # one pass for both fields
        field = name.lower()
        if field == "transfer-encoding" or (field == "content-length" and value != "0"):
            raise InvalidRequest(400, "a WebSocket upgrade request has no body")
    # §4.2.1 item 3: an |Upgrade| header field containing "websocket".
    if not _has_token(headers, "Upgrade", "websocket"):
        raise InvalidRequest(400, "missing Upgrade: websocket header")
    # §4.2.1 item 4: a |Connection| header field that includes the token "Upgrade".
    if not _has_token(headers, "Connection", "upgrade"):
        raise InvalidRequest(400, "missing Connection: Upgrade header")
    # §4.2.1 item 5: a |Sec-WebSocket-Key| that "when decoded, is 16 bytes in length".
    keys = headers.get_all("Sec-WebSocket-Key")
    if len(keys) != 1:
        problem = "missing" if not keys else "more than one"
        raise InvalidRequest(400, f"{problem} Sec-WebSocket-Key header")
    key = keys[0]
    try:
        raw = base64.b64decode(key, validate=True)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        raw = b""
    if len(raw) != 16:
        raise InvalidRequest(400, "invalid Sec-WebSocket-Key header")
    # §4.2.1 item 6: |Sec-WebSocket-Version| "MUST be 13". §4.2.2: if the version
    # is not one the server understands it "MUST abort the WebSocket handshake
    # described in this section and instead send an appropriate HTTP error code
    # (such as 426 Upgrade Required) and a |Sec-WebSocket-Version| header field
    # indicating the version(s) the server is capable of understanding."
    versions = headers.get_all("Sec-WebSocket-Version")
    if not versions:
        raise InvalidRequest(400, "missing Sec-WebSocket-Version header")
    if versions != ["13"]:
        raise InvalidRequest(
            426,
            f"unsupported WebSocket version {', '.join(versions)}; 13 is required",
            (("Sec-WebSocket-Version", "13"),),
        )
    return key


def offered_subprotocols(request: Request) -> list[str]:
    """Return the subprotocols a client offers, in its order of preference (RFC 6455 §4.1).

    They are the elements of its ``Sec-WebSocket-Protocol`` fields.
    """
    return _tokens(request.headers, "Sec-WebSocket-Protocol")


def select_subprotocol(request: Request, supported: Sequence[str]) -> str | None:
    """Choose a subprotocol for the connection (RFC 6455 §4.2.2, /subprotocol/).

    Args:
        request: the client's request; its ``Sec-WebSocket-Protocol`` fields
            list the subprotocols offered.
        supported: the server's subprotocols, the one it prefers first.

    Returns:
        The first of ``supported`` that the client offered (names are compared
        exactly), or None if there is none.
    """
    offered = set(offered_subprotocols(request))
    return next((name for name in supported if name in offered), None)


def accept(
    request: Request,
    *,
    subprotocol: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """Return the 101 reply accepting the upgrade (RFC 6455 §4.2.2 item 5).

    Args:
        request: the client's request; it is validated again with ``check_request``.
        subprotocol: the subprotocol chosen, e.g. by ``select_subprotocol``.
        extra_headers: header fields appended to the reply.

    Raises:
        InvalidRequest: the request is not a valid upgrade.
        ValueError: the client did not offer ``subprotocol``; §4.2.2 says the
            value "MUST be one of the values" it sent.
    """
    key = check_request(request)
    headers = Headers(
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(key)),
        ]
    )
    if subprotocol is not None:
        if subprotocol not in _tokens(request.headers, "Sec-WebSocket-Protocol"):
            raise ValueError(f"the client did not offer subprotocol {subprotocol!r}")
        headers.add("Sec-WebSocket-Protocol", subprotocol)
    for name, value in extra_headers:
        headers.add(name, value)
    return Response(101, "Switching Protocols", headers)


def reject(status: int, reason: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """Return a plain-text error reply: ``reason`` and a newline as the body.

    The reply closes the connection, since the server reads no request body.
    Pass an ``InvalidRequest``'s ``status``, ``reason`` and ``headers`` as they are.
    """
    response_headers = Headers(
        [("Content-Type", "text/plain; charset=utf-8"), ("Connection", "close")]
    )
    for name, value in headers:
        response_headers.add(name, value)
    return Response(
        status, reason_phrase(status), response_headers, (reason + "\n").encode("utf-8")
    )


@dataclass(frozen=True)
class WebSocketURI:
    """A parsed ``ws://`` or ``wss://`` URI (RFC 6455 §3).

    ``host`` is lowercase, IDNA-encoded, and without brackets around an IPv6
    address, ready for ``socket.create_connection``. ``resource`` is the path
    (``/`` if empty) and the query, percent-encoded: the request target.
    """

    secure: bool
    host: str
    port: int
    resource: str


def parse_uri(uri: str) -> WebSocketURI:
    """Parse a WebSocket URI (RFC 6455 §3).

    Non-ASCII characters in the host are IDNA-encoded, and in the path and query
    percent-encoded as UTF-8.

    Raises:
        ValueError: ``uri`` is not a valid ``ws://`` or ``wss://`` URI: another
            scheme, no host, a bad port, a user name, a fragment, or whitespace.
    """
    # urlsplit silently drops tabs and newlines and strips spaces: refuse them first.
    if any(char.isspace() or not char.isprintable() for char in uri):
        raise ValueError(f"whitespace or control character in URI {uri!r}")
    parts = urlsplit(uri)
    if parts.scheme not in ("ws", "wss"):  # urlsplit lowercases the scheme
        raise ValueError(f"not a ws:// or wss:// URI: {uri!r}")
    # §3: "Fragment identifiers are meaningless in the context of WebSocket URIs
    # and MUST NOT be used on these URIs."
    if "#" in uri:
        raise ValueError(f"fragment in WebSocket URI {uri!r}")
    if "@" in parts.netloc:
        raise ValueError(f"user info in WebSocket URI {uri!r}; send an Authorization header")
    host = parts.hostname  # lowercase, without the brackets of an IP literal
    if not host:
        raise ValueError(f"no host in WebSocket URI {uri!r}")
    if "[" in parts.netloc:
        ipaddress.IPv6Address(host)  # raises ValueError
    else:
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError as exc:
                raise ValueError(f"invalid host in WebSocket URI {uri!r}") from exc
        if not _REG_NAME.fullmatch(host):
            raise ValueError(f"invalid host in WebSocket URI {uri!r}")
    secure = parts.scheme == "wss"
    port = parts.port  # raises ValueError unless 0-65535
    if port is None:
        port = 443 if secure else 80  # §3: the default ports
    resource = quote(parts.path or "/", safe=_PATH_SAFE)  # §3: "/" if the path is empty
    if parts.query:
        resource += "?" + quote(parts.query, safe=_QUERY_SAFE)
    return WebSocketURI(secure, host, port, resource)


def client_request(
    uri: WebSocketURI,
    key: str,
    *,
    subprotocols: Sequence[str] = (),
    headers: Iterable[tuple[str, str]] = (),
) -> Request:
    """Return the client's opening handshake request (RFC 6455 §4.1).

    Args:
        uri: where to connect, from ``parse_uri``.
        key: the ``Sec-WebSocket-Key``, from ``generate_key``.
        subprotocols: the subprotocols offered, the preferred one first.
        headers: header fields appended as given, e.g. ``Authorization``.

    Raises:
        ValueError: a subprotocol name is not a token.
    """
    # §4.1 item 4: the Host header has the port only if it is not the default.
    host = f"[{uri.host}]" if ":" in uri.host else uri.host
    if uri.port != (443 if uri.secure else 80):
        host = f"{host}:{uri.port}"
    request_headers = Headers(
        [
            ("Host", host),
            ("Upgrade", "websocket"),  # §4.1 item 5
            ("Connection", "Upgrade"),  # §4.1 item 6
            ("Sec-WebSocket-Key", key),  # §4.1 item 7
            ("Sec-WebSocket-Version", "13"),  # §4.1 item 9
        ]
    )
    if subprotocols:  # §4.1 item 10: tokens, each unique
        for name in subprotocols:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"invalid subprotocol name: {name!r}")
        request_headers.add("Sec-WebSocket-Protocol", ", ".join(subprotocols))
    for name, value in headers:
        request_headers.add(name, value)
    return Request("GET", uri.resource, request_headers)


def refused(response: Response) -> InvalidResponse:
    """The error for a reply whose status is not 101: the server refused the upgrade (§4.1)."""
    return InvalidResponse(
        f"server refused the WebSocket upgrade: {response.status} {response.reason}", response
    )


def check_response(
    response: Response, key: str, subprotocols: Sequence[str] = (), *, extensions: bool = False
) -> str | None:
    """Validate the server's reply to the opening handshake (RFC 6455 §4.1).

    Args:
        response: the parsed response head.
        key: the ``Sec-WebSocket-Key`` that was sent.
        subprotocols: the subprotocols that were offered.
        extensions: whether extensions were offered: then the caller checks
            ``Sec-WebSocket-Extensions`` (``deflate.client_accept``).

    Returns:
        The subprotocol the server selected, or None.

    Raises:
        InvalidResponse: the server refused the upgrade or its reply is invalid;
            §4.1 says the client then "MUST _Fail the WebSocket Connection_".
            It carries ``response``.
    """
    headers = response.headers
    # §4.1: "If the status code received from the server is not 101, the client
    # handles the response per HTTP procedures": this client gives up.
    if response.status != 101:
        raise refused(response)
    # §4.1 item 2: |Upgrade| must be a case-insensitive match for "websocket".
    upgrade = _tokens(headers, "Upgrade")
    if len(upgrade) != 1 or upgrade[0].lower() != "websocket":
        raise InvalidResponse("missing or invalid Upgrade header; expected websocket", response)
    # §4.1 item 3: |Connection| must contain the token "Upgrade".
    if not _has_token(headers, "Connection", "upgrade"):
        raise InvalidResponse("missing or invalid Connection header; expected Upgrade", response)
    # §4.1 item 4: |Sec-WebSocket-Accept| must be the key's accept value.
    if headers.get_all("Sec-WebSocket-Accept") != [accept_key(key)]:
        raise InvalidResponse("missing or invalid Sec-WebSocket-Accept header", response)
    # §4.1 item 5: an extension "not present in the client's handshake" fails
    # the connection: without an offer, any extension.
    if not extensions and _tokens(headers, "Sec-WebSocket-Extensions"):
        raise InvalidResponse("server selected an extension, and none was offered", response)
    # §4.1 item 6: a subprotocol "that was not present in the client's handshake"
    # fails the connection; so does more than one, as only one can be selected.
    selected = _tokens(headers, "Sec-WebSocket-Protocol")
    if not selected:
        return None
    if len(selected) > 1:
        raise InvalidResponse(
            f"server selected several subprotocols: {', '.join(selected)}", response
        )
    if selected[0] not in subprotocols:
        raise InvalidResponse(
            f"server selected subprotocol {selected[0]}, which was not offered", response
        )
    return selected[0]
