"""HTTP/1.1 message heads for the opening handshake (RFC 9110, RFC 9112).

Sans-I/O: ``RequestParser`` and ``ResponseParser`` take bytes as they arrive and
hand back a ``Request`` or ``Response`` once the blank line ending the head has
been received; whatever followed it (the first WebSocket frames, possibly) is
left in ``rest``. The parsers never read a body: a WebSocket handshake has none.
``body_length`` says how long a request's body is (RFC 9112 §6.3), or refuses
it, so that the server's adapter can read the body of a plain HTTP request
before its ``process_request`` hook sees it (the client reads the start of a
refusal's body itself, in ``aio/client.py``).

Lines may end in CRLF or, leniently, in a bare LF (RFC 9112 §2.2 allows a
recipient to accept a bare LF as a line terminator). A bare CR anywhere else is
refused. Only ASCII is accepted in a head: RFC 9110 §5.5 keeps non-ASCII
``obs-text`` for legacy senders only, and nothing in a WebSocket handshake needs
it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Generic, TypeVar

from .exceptions import InvalidRequest, InvalidResponse, InvalidState
from .limits import Limits
from .typing import BytesLike

__all__ = [
    "Headers",
    "Request",
    "RequestParser",
    "Response",
    "ResponseParser",
    "body_length",
    "check_host",
    "reason_phrase",
]

# RFC 9110 §5.6.2: token = 1*tchar.
_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9110 §5.5: field-content is VCHAR, SP and HTAB (obs-text is refused, see above).
_FIELD_CHARS = r"[\t\x20-\x7e]*"
# RFC 9112 §3.2: request-target; every form of it is a run of visible characters.
_TARGET_CHARS = r"[\x21-\x7e]+"
# RFC 9112 §2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT.
_VERSION_CHARS = r"HTTP/[0-9]\.[0-9]"
# RFC 9110 §8.6: Content-Length = 1*DIGIT.
_LENGTH = re.compile(r"[0-9]+")

# RFC 9110 §7.2: Host = uri-host [ ":" port ], with uri-host from RFC 3986 §3.2.2:
# an IP literal in brackets, or a reg-name (which covers IPv4 addresses).
_HOST = re.compile(r"(?:\[[0-9A-Za-z:.%_~\-]+\]|[0-9A-Za-z!$&'()*+,;=%._~\-]+)(?::[0-9]*)?")

_TOKEN = re.compile(_TCHARS.encode())
_FIELD_VALUE = re.compile(_FIELD_CHARS.encode())
_TARGET = re.compile(_TARGET_CHARS.encode())
_VERSION = re.compile(_VERSION_CHARS.encode())
_SUPPORTED_VERSIONS = (b"HTTP/1.0", b"HTTP/1.1")

# The same grammar on str, to check what we are asked to serialize.
_TOKEN_STR = re.compile(_TCHARS)
_FIELD_VALUE_STR = re.compile(_FIELD_CHARS)
_TARGET_STR = re.compile(_TARGET_CHARS)
_VERSION_STR = re.compile(_VERSION_CHARS)

_DEFAULT_LIMITS = Limits()

# The names of a handshake's usual fields, as browsers and libraries spell
# them: these strings are shared by every request instead of decoded anew.
_FIELD_NAMES = {
    name.encode(): name
    for name in (
        "Host",
        "Upgrade",
        "Connection",
        "Origin",
        "User-Agent",
        "Pragma",
        "Cache-Control",
        "Accept-Encoding",
        "Accept-Language",
        "Cookie",
        "Authorization",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Accept",
        "Content-Length",
        "Content-Type",
        "Date",
        "Server",
    )
}


class Headers:
    """Ordered, case-insensitive, multi-valued HTTP header fields (RFC 9110 §5).

    Iterating yields ``(name, value)`` pairs in arrival order, names spelled as
    received. Two ``Headers`` are equal when they hold the same fields in the
    same order, names compared without regard to case.
    """

    # One flat list, name, value, name, value...: a connection keeps its
    # handshake's fields for its whole life, and a dozen fields are scanned
    # faster than an index is built.
    __slots__ = ("_fields",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[str] = []
        for name, value in items:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Append one field, keeping any earlier field of the same name."""
        self._fields += (name, value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the value of the field ``name``, or ``default`` if it is absent.

        A repeated field gives its values joined by ``", "``, which RFC 9110 §5.3
        makes equivalent for list-based fields; use ``get_all`` for the others
        (``Set-Cookie``, for one).
        """
        values = self.get_all(name)
        if not values:
            return default
        if len(values) == 1:
            return values[0]
        return ", ".join(values)

    def get_all(self, name: str) -> list[str]:
        """Return every value of the field ``name`` in arrival order (maybe none)."""
        key = name.lower()
        fields = self._fields
        return [fields[i + 1] for i in range(0, len(fields), 2) if fields[i].lower() == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_all(name))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        fields = iter(self._fields)
        return zip(fields, fields, strict=True)

    def __len__(self) -> int:
        return len(self._fields) // 2

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return len(self) == len(other) and all(
            a[1] == b[1] and a[0].lower() == b[0].lower() for a, b in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"


def _serialize(start_line: str, headers: Headers, body: bytes) -> bytes:
    """Return the start line, the header fields, the blank line and the body (RFC 9112 §2.1).

    A ``Content-Length`` field is added when there is a body and none was
    given (RFC 9112 §6.3: otherwise only closing the connection ends it).

    Raises:
        ValueError: a field name is not a token or a value holds a character
            that is not allowed there (CR and LF among them: no header injection).
    """
    fields: Iterable[tuple[str, str]] = headers
    if body and "Content-Length" not in headers:
        fields = [*headers, ("Content-Length", str(len(body)))]
    lines = [start_line]
    for name, value in fields:
        if not _TOKEN_STR.fullmatch(name):
            raise ValueError(f"invalid header name: {name!r}")
        if not _FIELD_VALUE_STR.fullmatch(value):
            raise ValueError(f"invalid value for header {name}: {value!r}")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("ascii") + body


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request (RFC 9112 §3): its head, and its body; a handshake request has none.

    ``body`` is what a server read after the head of a plain HTTP request (see
    ``body_length``); empty for an upgrade, a GET or a HEAD, and for a request
    that announced none.

    ``remote_address`` is not on the wire: a server's ``RequestParser`` attaches
    the peer's address, for logging and access checks; behind a trusted proxy it is
    the client's (``forwarded.py``), and ``proxy_address`` the proxy's. ``scheme``
    is ``https`` over TLS, or what a trusted proxy says the client spoke (``http`` or
    ``https``); None for plaintext without its word, which may come from a proxy that
    ended TLS (for comparing an ``Origin`` with ``Host``). Nor is ``state``: a dict
    for the application, where a server's ``process_request`` hook can leave what
    it learned (an authenticated user, say) for the handler, which finds the same
    request at ``Connection.request``; it takes no part in comparisons.
    """

    method: str
    target: str
    headers: Headers
    version: str = "HTTP/1.1"
    remote_address: tuple[str, int] | None = None
    body: bytes = b""
    scheme: str | None = None
    proxy_address: tuple[str, int] | None = None
    state: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    @property
    def path(self) -> str:
        """The path of the request target, still percent-encoded; ``/`` if it is empty."""
        return self._resource().partition("?")[0] or "/"

    @property
    def query(self) -> str:
        """The request target after the first ``?``; ``""`` if there is none."""
        return self._resource().partition("?")[2]

    @property
    def authority(self) -> str | None:
        """The host (and port) the request is for, or None if it names none.

        RFC 9112 §3.2.2: for an absolute-form target (``GET http://host:port/ HTTP/1.1``),
        the server "MUST ignore the received Host header field (if any) and instead use
        the host information of the request-target"; otherwise it is the ``Host`` field.
        """
        if not self.target.startswith("/"):
            scheme, separator, rest = self.target.partition("://")
            if separator and scheme:
                return re.split(r"[/?#]", rest, maxsplit=1)[0]
        return self.headers.get("Host")

    def _resource(self) -> str:
        """The origin-form of the target: an absolute-form target without its scheme and host."""
        target = self.target
        if target.startswith("/"):
            return target
        scheme, separator, rest = target.partition("://")
        if not (separator and scheme):
            return target  # asterisk-form or authority-form: no path
        start = min((i for i in map(rest.find, "/?") if i >= 0), default=len(rest))
        return rest[start:]

    def serialize(self) -> bytes:
        """Return the request as sent on the wire, body included (see ``Response.serialize``).

        Raises:
            ValueError: a part of the request is not valid HTTP/1.1 syntax.
        """
        # RFC 9112 §3: request-line = method SP request-target SP HTTP-version
        if not _TOKEN_STR.fullmatch(self.method):
            raise ValueError(f"invalid method: {self.method!r}")
        if not _TARGET_STR.fullmatch(self.target):
            raise ValueError(f"invalid request target: {self.target!r}")
        if not _VERSION_STR.fullmatch(self.version):
            raise ValueError(f"invalid HTTP version: {self.version!r}")
        start_line = f"{self.method} {self.target} {self.version}"
        return _serialize(start_line, self.headers, self.body)


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP/1.1 response: status, reason phrase, header fields and body (RFC 9112 §4)."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""

    def serialize(self) -> bytes:
        """Return the response as sent on the wire, body included.

        A ``Content-Length`` field is added when there is a body and none was
        given (RFC 9112 §6.3: otherwise only closing the connection ends it).

        Raises:
            ValueError: a part of the response is not valid HTTP/1.1 syntax.
        """
        # RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
        if not 100 <= self.status <= 999:
            raise ValueError(f"invalid status code: {self.status!r}")
        if not _FIELD_VALUE_STR.fullmatch(self.reason):
            raise ValueError(f"invalid reason phrase: {self.reason!r}")
        return _serialize(f"HTTP/1.1 {self.status} {self.reason}", self.headers, self.body)


def reason_phrase(status: int) -> str:
    """The reason phrase of ``status`` (RFC 9110 §15); "" for a status it has none for.

    RFC 9112 §4: the reason phrase may be empty, and a client ignores it.
    """
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def check_host(request: Request) -> None:
    """Check the request's ``Host`` fields (RFC 9112 §3.2).

    "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
    request message that lacks a Host header field and to any request message that
    contains more than one Host header field line or a Host header field with an
    invalid field value." An HTTP/1.0 request may have none.

    Raises:
        InvalidRequest: 400 with the reason.
    """
    hosts = request.headers.get_all("Host")
    if len(hosts) > 1:
        raise InvalidRequest(400, "more than one Host header")
    if not hosts:
        if request.version != "HTTP/1.0":
            raise InvalidRequest(400, "missing Host header")
        return
    if not _HOST.fullmatch(hosts[0]):
        raise InvalidRequest(400, "invalid Host header")


def body_length(request: Request, max_size: int = _DEFAULT_LIMITS.max_body_size) -> int:
    """Return the length of a request's body, for a server that reads it (RFC 9112 §6.3).

    A request with neither ``Content-Length`` nor ``Transfer-Encoding`` has none
    (§6.3 item 7). A server that reads a body does not need chunks: with
    ``Content-Length`` it knows the whole size before the first byte, and refuses
    what it would not hold without reading any of it.

    Args:
        request: the parsed request head.
        max_size: the largest body accepted, in bytes.

    Returns:
        The ``Content-Length``: that many bytes follow the head.

    Raises:
        InvalidRequest: 413 for a ``Content-Length`` over ``max_size``; 411 for a
            chunked body (§6.3: a server "MAY reject a request that contains a
            message body but not a Content-Length by responding with 411 (Length
            Required)"); 501 for another transfer coding, which §6.1 says a server
            that does not understand it "SHOULD respond with"; 400 for a
            ``Content-Length`` that is not a number, or lists different ones
            (§6.3 item 5), for a ``Transfer-Encoding`` whose final coding is not
            chunked (item 4: the length "cannot be determined reliably"), and for
            one in an HTTP/1.0 request (§6.1: its framing is "faulty").
    """
    lengths: list[str] = []
    codings: list[str] = []
    encoded = False
    for name, value in request.headers:  # one pass for both fields
        field_name = name.lower()
        if field_name == "content-length":
            lengths += value.split(",")
        elif field_name == "transfer-encoding":
            encoded = True
            codings += value.split(",")
    # §6.3 item 3: Transfer-Encoding overrides Content-Length; the connection is
    # closed after the answer either way, so no second request hides in the body.
    if encoded:
        if request.version == "HTTP/1.0":
            raise InvalidRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
        # RFC 9110 §5.6.1: empty list elements are ignored; a coding's name is case-insensitive.
        names = [name for item in codings if (name := item.partition(";")[0].strip(" \t"))]
        if not names or names[-1].lower() != "chunked":
            raise InvalidRequest(400, "chunked is not the last transfer coding: no body length")
        if len(names) > 1:
            raise InvalidRequest(501, f"transfer coding {names[0]} is not implemented")
        raise InvalidRequest(411, "a chunked body is not accepted: send Content-Length")
    if not lengths:
        return 0
    # §6.3 item 5: a list of one value repeated is that value.
    values = {item for element in lengths if (item := element.strip(" \t"))}
    if len(values) != 1 or not _LENGTH.fullmatch(value := values.pop()):
        raise InvalidRequest(400, "invalid Content-Length header")
    digits = value.lstrip("0") or "0"
    # Compared as text first: int() refuses more than 4,300 digits, and a line holds 8 KiB.
    if len(digits) > len(str(max_size)) or int(digits) > max_size:
        raise InvalidRequest(413, f"a request body has at most {max_size} bytes")
    return int(digits)


_Head = TypeVar("_Head", Request, Response)


class _HeadParser(ABC, Generic[_Head]):
    """Incremental parser of one message head; the two subclasses parse the start line.

    The buffer holds the line being received. ``_scan`` remembers where the
    search for its LF stopped, so every byte is searched once however the input
    is split (as h11's ``ReceiveBuffer`` does): a head fed one byte at a time
    still parses in linear time.
    """

    # What the start line is called in error messages.
    _start_line_name = "start line"

    def __init__(self, limits: Limits = _DEFAULT_LIMITS) -> None:
        self.rest = b""
        """The bytes that followed the head; set once ``feed`` has returned it."""
        self._max_line = limits.max_line
        self._max_headers = limits.max_headers
        self._max_head = limits.max_head_size
        self._head_size = 0  # bytes of the lines parsed so far
        self._buf = bytearray()
        self._pos = 0  # where the current line starts in _buf
        self._scan = 0  # where the search for the current line's LF resumes
        self._started = False  # the start line has been parsed
        self._blank_skipped = False
        self._headers = Headers()
        self._finished = False

    def feed(self, data: BytesLike) -> _Head | None:
        """Parse the next bytes of the head.

        Args:
            data: the bytes received, in any chunks.

        Returns:
            The message head once its last line has arrived, then the bytes
            after it are in ``rest``; None while more bytes are needed.

        Raises:
            InvalidRequest | InvalidResponse: the head is malformed or over a limit.
            InvalidState: the head was already returned, or refused.
        """
        if self._finished:
            raise InvalidState("the message head was already parsed or refused")
        buf = self._buf
        buf += data
        try:
            while (end := buf.find(b"\n", self._scan)) >= 0:
                line = buf[self._pos : end]
                self._head_size += end + 1 - self._pos
                self._pos = self._scan = end + 1
                if self._head_size > self._max_head:
                    raise self._head_too_large()
                if self._line(line):
                    self.rest = bytes(buf[self._pos :])
                    self._finished = True
                    self._buf = bytearray()
                    return self._build(self._headers)
            self._scan = len(buf)
            pending = len(buf) - self._pos
            if buf.endswith(b"\r"):  # the CR of a CRLF not yet complete
                pending -= 1
            # Refuse an overlong line or head without waiting for its end, which may never come.
            if pending > self._max_line:
                raise self._too_long()
            if self._head_size + pending > self._max_head:
                raise self._head_too_large()
        except BaseException:
            self._finished = True
            raise
        if self._pos:
            del buf[: self._pos]
            self._scan -= self._pos
            self._pos = 0
        return None

    def _line(self, line: bytearray) -> bool:
        """Handle one line, its LF removed; return True at the blank line ending the head."""
        if line.endswith(b"\r"):  # RFC 9112 §2.2: CRLF, or a bare LF
            del line[-1]
        if len(line) > self._max_line:
            raise self._too_long()
        if not line.isascii():
            raise self._error(400, "non-ASCII byte in the message head")
        if not self._started:
            # RFC 9112 §2.2: "SHOULD ignore at least one empty line (CRLF)
            # received prior to the request-line". One, and no more.
            if not line and not self._blank_skipped:
                self._blank_skipped = True
                return False
            self._parse_start_line(bytes(line))
            self._started = True
            return False
        if not line:
            return True
        self._parse_field(line)
        return False

    def _parse_field(self, line: bytearray) -> None:
        """Parse ``field-name ":" OWS field-value OWS`` (RFC 9112 §5) into the headers."""
        if len(self._headers) >= self._max_headers:
            raise self._error(431, "too many header fields")
        if line[0] in b" \t":
            # RFC 9112 §5.2: obs-fold is refused outside message/http; a
            # space after the start line (RFC 9112 §2.2) is refused likewise.
            raise self._error(400, "obsolete line folding in header field")
        colon = line.find(b":")
        if colon < 0:
            raise self._error(400, "header field without a colon")
        name = line[:colon]
        if not _TOKEN.fullmatch(name):
            if name.endswith((b" ", b"\t")):
                # RFC 9112 §5.1: "A server MUST reject, with a response status
                # code of 400 (Bad Request), any received request message that
                # contains whitespace between a header field name and colon."
                raise self._error(400, "whitespace between header field name and colon")
            raise self._error(400, "invalid header field name")
        value = line[colon + 1 :].strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):  # a bare CR or another control character
            raise self._error(400, f"invalid character in header field {name.decode()}")
        known = _FIELD_NAMES.get(bytes(name))
        self._headers.add(known or name.decode(), value.decode())

    def _parse_version(self, version: bytes) -> str:
        """Check an ``HTTP-version`` (RFC 9112 §2.3): 1.0 and 1.1 are understood."""
        if not _VERSION.fullmatch(version):
            raise self._error(400, f"malformed {self._start_line_name}")
        if version not in _SUPPORTED_VERSIONS:
            raise self._error(505, f"unsupported HTTP version {version.decode()}")
        return version.decode()

    def _head_too_large(self) -> Exception:
        return self._error(431, f"message head over {self._max_head} bytes")

    def _too_long(self) -> Exception:
        """The error for a line over ``max_line``: 414 for a request line, else 431."""
        if self._started:
            return self._error(431, "header field line too long")
        return self._error(414, f"{self._start_line_name} too long")

    @abstractmethod
    def _parse_start_line(self, line: bytes) -> None:
        """Parse the start line and keep what ``_build`` needs, or raise ``_error``."""

    @abstractmethod
    def _build(self, headers: Headers) -> _Head:
        """Return the message head, once all of it has been parsed."""

    @abstractmethod
    def _error(self, status: int, reason: str) -> Exception:
        """Return the exception to raise; ``status`` is the HTTP status to answer with."""


class RequestParser(_HeadParser[Request]):
    """Server side: parse a request head, raising ``InvalidRequest`` with a 4xx/5xx status.

    Statuses: 414 for a request line over ``max_line``; 431 for a header line
    over it, more than ``max_headers`` fields or a head over ``max_head_size``
    bytes; 505 for an ``HTTP/x.y`` other than 1.0 and 1.1; 400 for every other
    malformation, a missing, repeated or invalid ``Host`` included.
    """

    _start_line_name = "request line"

    def __init__(
        self,
        limits: Limits = _DEFAULT_LIMITS,
        remote_address: tuple[str, int] | None = None,
        scheme: str | None = None,
    ) -> None:
        super().__init__(limits)
        self._remote_address = remote_address
        self._scheme = scheme

    def _parse_start_line(self, line: bytes) -> None:
        # RFC 9112 §3: request-line = method SP request-target SP HTTP-version
        parts = line.split(b" ")
        if len(parts) != 3:
            raise self._error(400, "malformed request line")
        method, target, version = parts
        self._version = self._parse_version(version)
        if not _TOKEN.fullmatch(method):
            raise self._error(400, "invalid method in request line")
        if not _TARGET.fullmatch(target):
            raise self._error(400, "invalid request target in request line")
        self._method = method.decode()
        self._target = target.decode()

    def _build(self, headers: Headers) -> Request:
        request = Request(
            self._method,
            self._target,
            headers,
            self._version,
            self._remote_address,
            scheme=self._scheme,
        )
        check_host(request)
        return request

    def _error(self, status: int, reason: str) -> Exception:
        return InvalidRequest(status, reason)


class ResponseParser(_HeadParser[Response]):
    """Client side: parse a response head, raising ``InvalidResponse``.

    The response body, if any, is not read: it is left in ``rest``.
    """

    _start_line_name = "status line"

    def _parse_start_line(self, line: bytes) -> None:
        # RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ];
        # the SP before an empty reason phrase is often left out, so it is optional.
        parts = line.split(b" ", 2)
        if len(parts) < 2:
            raise self._error(400, "malformed status line")
        self._parse_version(parts[0])
        status = parts[1]
        if not (len(status) == 3 and status.isdigit()):  # RFC 9110 §15: 3DIGIT
            raise self._error(400, "invalid status code in status line")
        reason = parts[2] if len(parts) == 3 else b""
        if not _FIELD_VALUE.fullmatch(reason):
            raise self._error(400, "invalid reason phrase in status line")
        self._status = int(status)
        self._reason = reason.decode()

    def _build(self, headers: Headers) -> Response:
        return Response(self._status, self._reason, headers)

    def _error(self, status: int, reason: str) -> Exception:
        return InvalidResponse(reason)
