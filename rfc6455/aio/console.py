"""``python -m rfc6455 URI``: an interactive and scriptable WebSocket console client.

Interactive mode (the default): every line read from stdin is sent as a text
message, and every message received is printed as it arrives. At the end of
input (Ctrl-D, or the end of a pipe) the replies are still printed until none
came for ``--linger`` seconds, then the connection is closed with 1000; SIGINT
(Ctrl-C; SIGTERM too) closes it at once.

Non-interactive mode (any of ``--send``, ``--expect`` or ``--timeout``): connect,
send the ``--send`` messages in order, wait for ``--expect`` messages or until
``--timeout``, close with 1000, and say through the exit status whether that
worked. Stdin is not read.

Received messages go to stdout, and nothing else does: status lines (connected,
closing, closed) and errors go to stderr, so that ``--json`` output can be piped
as it is. A URI is printed through :func:`redact_uri`, which hides the values of
secret-looking query parameters (``access_token=REDACTED``). A refused handshake
is one line with the server's reason (:func:`describe_refusal`).

The parts are kept apart: :func:`parse_args` gives an :class:`Options`,
:meth:`Console.dial` is the one place that connects, and :class:`Output` is the
one place that prints. A bearer token is an ``-H "Authorization: Bearer ..."``
header, or ``--token`` for short.

The console of an application is built from the same parts: its arguments
start from :func:`console_parser` and :func:`console_options`, it subclasses
:class:`Console` and overrides its hooks (what a line of input does, what a
message received prints, what to do once connected, whether to connect again),
and :func:`run_console` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import codecs
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import threading
import unicodedata
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import NoReturn, TextIO

from ..exceptions import ConnectionClosed, InvalidResponse, WebSocketError
from ..frames import Close, CloseCode
from ..handshake import client_request, generate_key, parse_uri
from ..http11 import Response
from ..protocol import State
from ..typing import Data
from ..version import __version__
from .client import connect
from .connection import Connection

__all__ = [
    "EXIT_CLOSED",
    "EXIT_CONNECT",
    "EXIT_EXPECT",
    "EXIT_OK",
    "EXIT_USAGE",
    "Console",
    "Options",
    "Output",
    "console_options",
    "console_parser",
    "describe_close",
    "describe_connect_error",
    "describe_refusal",
    "main",
    "parse_args",
    "redact_uri",
    "run_console",
    "stdin_lines",
]

EXIT_OK = 0
EXIT_CONNECT = 1  # refused, unreachable, TLS or handshake failure, timed out connecting
EXIT_USAGE = 2  # a bad option or URI (argparse's own status for usage errors)
EXIT_EXPECT = 3  # fewer than --expect messages arrived
EXIT_CLOSED = 4  # the connection did not close normally (a close code other than 1000/1001)

_EPILOG = """\
interactive mode (no --send, --expect or --timeout):
  each line of stdin is sent as a text message; received messages are printed
  with the local time, JSON pretty-printed. At the end of input (Ctrl-D, or
  the end of a pipe) the replies are still printed until none came for
  --linger seconds (default 1), then it closes with 1000. Ctrl-C closes at
  once; a second Ctrl-C drops the connection.

non-interactive mode (any of --send, --expect, --timeout):
  connect, send each --send in order, wait for --expect messages (or until
  --timeout, or until the server closes), close with 1000. Stdin is not read.

received messages go to stdout; status lines and errors go to stderr. In the
URIs printed, the values of secret-looking query parameters (access_token,
token, jwt, password, secret, api_key, key, auth, sig, ... in any case) are
shown as REDACTED; the URI connected to is the one given.
--json prints one object per message:
  {"time": "<local ISO 8601>", "type": "text", "data": <parsed JSON or the string>,
   "json": <whether the text parsed as JSON>}
  {"time": "<local ISO 8601>", "type": "binary", "data": "<base64>", "size": <bytes>}

exit status:
  0  success: connected, sent, got the --expect messages, closed normally
  1  could not connect: refused, unreachable, TLS error, handshake refused
     (e.g. 401, 403, 404: the server's reason is shown) or timed out
  2  usage error: a bad option, URI or header
  3  fewer than --expect messages arrived (--timeout, Ctrl-C or the server closed)
  4  the connection closed abnormally: a close code other than 1000/1001
     (e.g. 1011), or dropped without a close frame (1006); 3 wins over 4
"""

# Close codes of a normal end, both ways (RFC 6455 §7.4.1); 1005 is a close
# frame without a code.
_OK_CODES = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD})

# Sent by the client itself: another value would make the handshake invalid.
_RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "Host",
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Extensions",
    )
)

_CLOSE_CODES = frozenset(CloseCode)

# How much of a binary message the human-readable output shows.
_HEX_PREVIEW = 32

# Wide enough for "HH:MM:SS ": continuation lines of a message are indented by it.
_INDENT = " " * 9


@dataclasses.dataclass(frozen=True)
class Options:
    """What the command line asks for."""

    uri: str
    headers: tuple[tuple[str, str], ...] = ()
    subprotocols: tuple[str, ...] = ()
    # None: no limit.
    max_size: int | None = 2**20
    # Seconds for the whole non-interactive run, connecting included; None: no limit.
    timeout: float | None = None
    sends: tuple[str, ...] = ()
    expect: int | None = None
    json: bool = False
    # Interactive: after the end of input, close once no message came for this long.
    linger: float = 1.0
    # wss://: the client TLS context (--cafile, --insecure); None: the default one, which
    # checks the certificate against the system's CAs, and the host name.
    tls: ssl.SSLContext | None = None
    # --insecure: the context checks nothing, which the run says in a warning line.
    insecure: bool = False

    @property
    def interactive(self) -> bool:
        """No --send, --expect or --timeout: read stdin, until its end or Ctrl-C."""
        return not self.sends and self.expect is None and self.timeout is None


# Command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr and exit status 2, instead of the usage text."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form 'Name: value'")
    if name.lower() in _RESERVED_HEADERS:
        raise argparse.ArgumentTypeError(
            f"{name} is set by the client itself (use --subprotocol for Sec-WebSocket-Protocol)"
        )
    return name, value


def _size(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value or None


def _seconds(text: str, *, zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds {bound}")
    return value


def _seconds_or_zero(text: str) -> float:
    return _seconds(text, zero=True)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _basic_credentials(text: str) -> str:
    """``--user NAME:PASSWORD``: the ``Authorization`` value of HTTP basic auth (RFC 7617 §2)."""
    # The text is not repeated in an error: it holds a password.
    name, colon, _ = text.partition(":")
    if not colon or not name:
        raise argparse.ArgumentTypeError("not of the form NAME:PASSWORD")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        # RFC 7617 §2: the user-id and password contain no control characters.
        raise argparse.ArgumentTypeError("a name or password has no control characters")
    # RFC 7617 §2.1: the server's charset="UTF-8" is the encoding used.
    return "Basic " + base64.b64encode(text.encode()).decode("ascii")


def _client_context(
    parser: argparse.ArgumentParser, cafile: str | None, insecure: bool
) -> ssl.SSLContext | None:
    """The TLS context of ``--cafile`` or ``--insecure``; None for the default one."""
    if insecure:
        if cafile is not None:
            parser.error("--cafile and --insecure exclude each other")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if cafile is None:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).lower().replace("_", " ")
        parser.error(f"--cafile: {cafile} holds no usable certificate: {reason}")
    except OSError as exc:
        parser.error(f"--cafile: cannot read {cafile}: {exc.strerror or exc}")


def console_parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A parser of the arguments every console has; :func:`console_options` reads them.

    They are the URI, ``-H``, ``--token``, ``--user``, ``--subprotocol``, ``--max-size``,
    ``--linger``, ``--json``, ``--cafile`` and ``--insecure``. A usage error is one line on
    stderr and status 2.
    """
    parser = _Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rfc6455-chat {__version__}")
    parser.add_argument("uri", metavar="URI", help="ws:// or wss:// URI, e.g. ws://localhost:5000/")
    parser.add_argument(
        "-H",
        "--header",
        dest="headers",
        metavar="'NAME: VALUE'",
        type=_header,
        action="append",
        default=[],
        help="extra request header, e.g. 'Authorization: Bearer TOKEN' (repeatable)",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help="bearer token (RFC 6750): sends 'Authorization: Bearer TOKEN'; "
        "a command line is visible to other users of the machine, -H from a script is not",
    )
    parser.add_argument(
        "--user",
        metavar="NAME:PASSWORD",
        type=_basic_credentials,
        help="HTTP basic authentication (RFC 7617), as curl -u: sends 'Authorization: Basic "
        "...'; visible to other users of the machine, as --token",
    )
    parser.add_argument(
        "--cafile",
        metavar="FILE",
        help="wss://: check the server's certificate against the CAs of this PEM file "
        "instead of the system's (a private CA, a test one)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="wss://: check neither the server's certificate nor its host name "
        "(a warning says so): anyone on the way can read and change the messages",
    )
    parser.add_argument(
        "--subprotocol",
        dest="subprotocols",
        metavar="NAME",
        action="append",
        default=[],
        help="subprotocol to offer, preferred first (repeatable)",
    )
    parser.add_argument(
        "--max-size",
        metavar="BYTES",
        type=_size,
        default=2**20,
        help="largest message accepted; a larger one closes with 1009 (default 1048576; 0: none)",
    )
    parser.add_argument(
        "--linger",
        metavar="S",
        type=_seconds_or_zero,
        default=1.0,
        help="interactive: after the end of input, print the replies until none came "
        "for S seconds, then close (default 1; 0: close at once)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print each message as one line of JSON (shape below)",
    )
    return parser


def console_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Options:
    """The :class:`Options` of :func:`console_parser`'s arguments, checked.

    A bad URI, header or subprotocol name, or ``--token`` beside an
    ``Authorization`` header, is a usage error (``parser.error``).
    """
    headers = list(args.headers)
    if args.token is not None and args.user is not None:
        parser.error("--token and --user exclude each other")
    for flag, value in (("--token", args.token), ("--user", args.user)):
        if value is None:
            continue
        if any(name.lower() == "authorization" for name, _ in headers):
            parser.error(f"{flag} and an Authorization header (-H) exclude each other")
        headers.append(("Authorization", value if flag == "--user" else f"Bearer {value}"))
    options = Options(
        uri=args.uri,
        headers=tuple(headers),
        subprotocols=tuple(args.subprotocols),
        max_size=args.max_size,
        json=args.json,
        linger=args.linger,
        tls=_client_context(parser, args.cafile, args.insecure),
        insecure=args.insecure,
    )
    # Build the request once, so that a bad URI, subprotocol name or header
    # value is a usage error rather than a failed connection.
    try:
        target = parse_uri(options.uri)
        client_request(
            target, generate_key(), subprotocols=options.subprotocols, headers=options.headers
        ).serialize()
    except ValueError as exc:
        # parse_uri's messages quote the URI: with its secrets hidden, as everywhere.
        parser.error(str(exc).replace(repr(options.uri), repr(redact_uri(options.uri))))
    return options


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse the command line; exit with status 2 and one line on stderr if it is wrong."""
    parser = console_parser(
        "python -m rfc6455",
        "WebSocket console client: send lines typed on stdin, print what arrives.",
        _EPILOG,
    )
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=_seconds,
        help="non-interactive: seconds for the whole run, connecting included; "
        "the closing handshake after it takes at most 10 s more",
    )
    parser.add_argument(
        "--send",
        dest="sends",
        metavar="TEXT",
        action="append",
        default=[],
        help="non-interactive: text message to send once connected (repeatable, sent in order)",
    )
    parser.add_argument(
        "--expect",
        metavar="N",
        type=_count,
        help="non-interactive: wait for N messages, then close; fewer is exit status 3",
    )
    args = parser.parse_args(argv)
    return dataclasses.replace(
        console_options(parser, args),
        timeout=args.timeout,
        sends=tuple(args.sends),
        expect=args.expect,
    )


# Output


def _code_name(code: int) -> str:
    """``1000 (normal closure)``: the code and what RFC 6455 §7.4 calls it."""
    if code == CloseCode.NO_STATUS_RCVD:
        name = "no status code"
    elif code in _CLOSE_CODES:
        name = CloseCode(code).name.lower().replace("_", " ")
    elif 3000 <= code < 4000:
        name = "registered"  # §7.4.2: libraries, frameworks, applications (IANA)
    elif 4000 <= code < 5000:
        name = "private use"  # §7.4.2
    else:
        name = "unknown"
    return f"{code} ({name})"


def describe_close(close: Close) -> str:
    """``1001 (going away) "server shutting down"``."""
    text = _code_name(close.code)
    return f"{text} {json.dumps(close.reason, ensure_ascii=False)}" if close.reason else text


# At most this many characters of a server's text on a line: a reason, not a page.
_UNTRUSTED_WIDTH = 200

# RFC 9110 §11.6.1: where a challenge of the Bearer scheme (RFC 6750 §3) starts
# in a WWW-Authenticate value, and each of its auth-params, name=token or
# name="quoted-string".
_BEARER = re.compile(r"(?:^|,)\s*Bearer(?=[\s,]|$)", re.IGNORECASE)
_AUTH_PARAM = re.compile(
    r'\s*,?\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)'
)


def describe_refusal(response: Response) -> str:
    """``401 Unauthorized: invalid token: the token has expired``: a refusal and its reason.

    The reason is the ``error`` and ``error_description`` of a ``WWW-Authenticate:
    Bearer`` challenge (RFC 6750 §3), else the first line of the body (but not of
    an HTML page: that is markup). It is the server's text, so it is made one
    line of printable characters (others escaped) of at most ~200 characters.
    """
    text = f"{response.status} {response.reason}".rstrip()
    reason = _bearer_error(response) or _first_line(response)
    if reason:
        text += f": {reason}"
    return _one_line(text)


def _bearer_error(response: Response) -> str:
    """``invalid token: the token has expired``, from the first Bearer challenge that has one."""
    # A "Bearer" in another challenge's quoted string is a false start: it has no params.
    values = response.headers.get_all("WWW-Authenticate")
    for start in (match for value in values for match in _BEARER.finditer(value)):
        params: dict[str, str] = {}
        pos = start.end()
        while (param := _AUTH_PARAM.match(start.string, pos)) is not None:
            name, text = param.groups()
            if text.startswith('"'):
                text = re.sub(r"\\(.)", r"\1", text[1:-1])  # RFC 9110 §5.6.4: quoted-pair
            params.setdefault(name.lower(), text)
            pos = param.end()
        error = params.get("error", "").replace("_", " ")
        found = ": ".join(part for part in (error, params.get("error_description", "")) if part)
        if found:
            return found
    return ""


def _first_line(response: Response) -> str:
    """The first line of a refusal's body that is not blank, unless the body is HTML."""
    media_type = (response.headers.get("Content-Type") or "").partition(";")[0]
    if media_type.strip().lower() == "text/html":
        return ""
    for line in response.body.decode("utf-8", "replace").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _one_line(text: str) -> str:
    """Untrusted ``text`` as one line: non-printable characters escaped, then cut with "…"."""
    pieces: list[str] = []
    width = 0
    for char in text:
        piece = char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        width += len(piece)
        if width > _UNTRUSTED_WIDTH:
            pieces.append("…")
            break
        pieces.append(piece)
    return "".join(pieces)


def _printable(text: str) -> str:
    """Escape control characters but newlines: a message must not drive the terminal."""
    if text.isprintable():
        return text
    return "".join(
        char
        if char == "\n" or unicodedata.category(char) != "Cc"
        else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def _columns(line: str) -> int:
    """How many terminal columns ``line`` takes (East Asian wide characters take two)."""
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
        for char in line
    )


class Output:
    """Where everything is printed: messages to ``stdout``, status lines to ``stderr``.

    Args:
        stdout: receives the messages, and nothing else.
        stderr: receives status lines and errors.
        json_lines: print messages as JSON lines rather than for a human.
        above_input: both streams are the terminal the user is typing on:
            insert each line above the line being typed instead of breaking it.
        prog: the name that error lines start with.
    """

    def __init__(
        self,
        stdout: TextIO,
        stderr: TextIO,
        *,
        json_lines: bool = False,
        above_input: bool = False,
        prog: str = "rfc6455",
    ) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.json_lines = json_lines
        self.above_input = above_input
        self.prog = prog

    def message(self, message: Data) -> None:
        """Print one received message."""
        if self.json_lines:
            self._write(self.stdout, _json_line(message, datetime.now().astimezone()), raw=True)
            return
        if isinstance(message, bytes):
            preview = message[:_HEX_PREVIEW].hex(" ")
            more = " …" if len(message) > _HEX_PREVIEW else ""
            body = f"[binary, {len(message)} bytes] {preview}{more}".rstrip()
        else:
            try:
                body = json.dumps(_parse_json(message), indent=2, ensure_ascii=False)
            except _NOT_JSON:
                body = message
        self.line(body)

    def line(self, text: str) -> None:
        """Print ``text`` to stdout after the local time, its further lines indented under it."""
        body = text.replace("\n", "\n" + _INDENT)
        self._write(self.stdout, f"{datetime.now():%H:%M:%S} {body}")

    def status(self, text: str) -> None:
        """Print a status line: connected, closing, closed."""
        self._write(self.stderr, text)

    def error(self, text: str) -> None:
        """Print an error: one line."""
        self._write(self.stderr, f"{self.prog}: {text}")

    def leave_input_line(self, *, interrupted: bool) -> None:
        """The user stopped typing (Ctrl-C or Ctrl-D): print on plain lines from now on."""
        if self.above_input:
            self.above_input = False
            if interrupted:  # the terminal echoed "^C" on the input line: go past it
                self._write(self.stderr, "", raw=True)

    def _write(self, stream: TextIO, text: str, *, raw: bool = False) -> None:
        if not raw:
            text = _printable(text)
        if self.above_input:
            text = _insert_above(text)
        else:
            text += "\n"
        stream.write(text)
        stream.flush()


def _insert_above(text: str) -> str:
    """Terminal codes that print ``text`` above the line being typed, which stays as it was.

    The cursor is saved, ``rows`` new lines make room (scrolling at the bottom
    of the screen), the cursor goes back up to the input line, ``rows`` blank
    lines are inserted there (pushing the input line down), ``text`` fills
    them, and the cursor is restored and moved down by ``rows`` to where the
    input line now is (the move stops at the bottom row, which is where it is
    if the screen scrolled). The approach of websockets' interactive client,
    extended to several rows. Text taller than the screen is printed as it is.
    """
    size = shutil.get_terminal_size()
    width = max(size.columns, 1)
    rows = sum(max(1, -(-_columns(line) // width)) for line in text.split("\n"))
    if rows >= size.lines:
        return text + "\n"
    return f"\0337{chr(10) * rows}\033[{rows}A\033[{rows}L{text}\n\0338\033[{rows}B"


# Not JSON, or nested too deeply to print: shown as the string it is.
_NOT_JSON = (ValueError, RecursionError)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # json.loads would accept NaN and Infinity


def _parse_json(text: str) -> object:
    return json.loads(text, parse_constant=_reject_constant)


def _json_line(message: Data, now: datetime) -> str:
    """The --json line of one message (ASCII only, so any terminal or pipe takes it)."""
    time = now.isoformat(timespec="milliseconds")
    if isinstance(message, bytes):
        data = base64.b64encode(message).decode("ascii")
        return json.dumps({"time": time, "type": "binary", "data": data, "size": len(message)})
    try:
        return json.dumps(
            {"time": time, "type": "text", "data": _parse_json(message), "json": True}
        )
    except _NOT_JSON:
        return json.dumps({"time": time, "type": "text", "data": message, "json": False})


# Query (and fragment) parameters whose values are secrets: a name that, once
# lowercased and without "-", "_" and ".", ends with one of these. So
# access_token, id_token, client_secret, api-key, apikey, X-Amz-Signature...
_SECRET_NAMES = (
    "token",
    "jwt",
    "password",
    "passwd",
    "pwd",
    "secret",
    "key",
    "auth",
    "authorization",
    "sig",
    "signature",
    "credential",
    "credentials",
)
# A parameter of a query or fragment: name=value after "?", "&", ";" or "#".
_PARAMETER = re.compile(r"(?<=[?&;#])([^=?&;#]*)=([^&;#]*)")
# The password of user info (scheme://user:password@host), which parse_uri refuses.
_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*:)[^/?#@]*@")
_REDACTED = "REDACTED"


def redact_uri(uri: str) -> str:
    """``uri`` as printed: the values of secret-looking parameters replaced by ``REDACTED``.

    ``ws://h/?access_token=abc&room=1`` is printed as
    ``ws://h/?access_token=REDACTED&room=1``; the URI dialled is unchanged.
    """
    return _PARAMETER.sub(_redact_parameter, _PASSWORD.sub(rf"\1{_REDACTED}@", uri))


def _redact_parameter(match: re.Match[str]) -> str:
    name, value = match.groups()
    words = re.sub(r"[-_.]", "", urllib.parse.unquote_plus(name)).lower()
    if value and words.endswith(_SECRET_NAMES):
        return f"{name}={_REDACTED}"
    return match.group()


def describe_connect_error(exc: BaseException, uri: str) -> str:
    """One line that says why connecting to ``uri`` failed (its secrets redacted)."""
    uri = redact_uri(uri)
    if isinstance(exc, TimeoutError):
        return f"timed out connecting to {uri}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host of {uri}: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate of {uri} not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).lower().replace("_", " ")  # WRONG_VERSION_NUMBER
        return f"TLS error with {uri}: {reason}"
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to {uri}: connection refused"
    if isinstance(exc, OSError):
        return f"cannot connect to {uri}: {exc.strerror or exc}"
    response = exc.response if isinstance(exc, InvalidResponse) else None
    if response is not None and response.status != 101:
        return f"handshake with {uri} refused: {describe_refusal(response)}"
    return f"handshake with {uri} failed: {exc}"


# Stdin


def stdin_lines(fd: int) -> AsyncIterator[str]:
    """Yield the lines read from ``fd``, without the line break, until its end.

    A daemon thread does the blocking reads, which works the same for a
    terminal, a pipe and a file, and leaves the file descriptor blocking (a
    non-blocking terminal would also make writes to stdout fail, as they share
    it). Bytes that are not UTF-8 become U+FFFD.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(item: str | None) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is reading anymore
            return False
        return True

    def read() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            *lines, pending = (pending + decoder.decode(chunk, final=not chunk)).split("\n")
            for line in lines:
                if not put(line.removesuffix("\r")):
                    return
            if not chunk:
                if pending:
                    put(pending)
                put(None)
                return

    threading.Thread(target=read, name="rfc6455-stdin", daemon=True).start()

    async def lines() -> AsyncIterator[str]:
        while (line := await queue.get()) is not None:
            yield line

    return lines()


# The session


class Console:
    """One run of the console client: connect, exchange messages, close.

    A console of an application overrides the hooks: :meth:`on_open`,
    :meth:`on_message`, :meth:`on_line` and :meth:`reconnect`. Here they send
    each line as it is, print each message, and connect once.

    Args:
        options: from :func:`parse_args`.
        output: where to print.
        lines: what to send in interactive mode (stdin's lines if omitted).
    """

    def __init__(
        self,
        options: Options,
        output: Output,
        lines: AsyncIterator[str] | None = None,
    ) -> None:
        self.options = options
        self.output = output
        self.lines = lines
        self.received = 0
        self.interrupted = asyncio.Event()  # set by interrupt()
        self._dialing: asyncio.Task[Connection] | None = None
        self._connection: Connection | None = None
        self._closed_by_us = False
        # Interactive: one task reads the input into a queue (see _send_lines).
        self._input: asyncio.Queue[str | None] | None = None
        self._reading: asyncio.Task[None] | None = None
        self._input_ended = False
        # --linger counts from this loop time: the end of input, or the last message since.
        self._quiet_since = 0.0

    def interrupt(self) -> None:
        """Ctrl-C: stop connecting, or close with 1000; a second time, drop the connection."""
        if self.interrupted.is_set() and self._connection is not None:
            self._connection.abort()
        self.interrupted.set()
        if self._dialing is not None:
            self._dialing.cancel()

    @property
    def input_ended(self) -> bool:
        """Whether the interactive input has ended (Ctrl-D, or the end of a pipe)."""
        return self._input_ended

    async def on_open(self, ws: Connection) -> None:
        """Hook: ``ws`` is open, and its messages are being received; nothing to send here."""

    def on_message(self, message: Data) -> None:
        """Hook: print a message received."""
        self.output.message(message)

    async def on_line(self, ws: Connection, line: str) -> None:
        """Hook: send a line of input (or a ``--send``) as a text message."""
        await ws.send(line)

    async def reconnect(self, ended: Connection) -> tuple[Connection, str] | None:
        """Hook: after ``ended`` closed, the next connection and its URI; None: stop (here)."""
        return None

    async def dial(self, uri: str) -> Connection:
        """Connect to ``uri`` and handshake, with the headers and limits of the options."""
        options = self.options
        return await connect(
            uri,
            headers=options.headers,
            subprotocols=options.subprotocols,
            max_size=options.max_size,
            ssl=options.tls,
        )

    async def dial_until(self, uri: str, deadline: float | None) -> Connection:
        """Dial ``uri`` by the deadline; Ctrl-C cancels it (CancelledError)."""
        dialing = self._dialing = asyncio.create_task(self.dial(uri))
        try:
            async with asyncio.timeout_at(deadline):
                ws = self._connection = await dialing
        finally:
            self._dialing = None
        return ws

    async def run(self) -> int:
        """Run the whole session and return the exit status."""
        options = self.options
        loop = asyncio.get_running_loop()
        deadline = None if options.timeout is None else loop.time() + options.timeout
        if options.insecure:
            self.output.error("warning: --insecure: the server's certificate is not checked")
        try:
            ws = await self.dial_until(options.uri, deadline)
        except asyncio.CancelledError:
            if not self.interrupted.is_set():
                raise
            self.output.leave_input_line(interrupted=True)
            self.output.error(f"interrupted while connecting to {redact_uri(options.uri)}")
            return EXIT_CONNECT
        # A TimeoutError is an OSError; ValueError: a host name that cannot be encoded.
        except (OSError, ValueError, WebSocketError) as exc:
            self.output.error(describe_connect_error(exc, options.uri))
            return EXIT_CONNECT
        try:
            status = await self._session(ws, options.uri, deadline)
            while (again := await self.reconnect(ws)) is not None:
                ws, uri = again
                status = await self._session(ws, uri, deadline)
        finally:
            if self._reading is not None:
                self._reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reading
        expect = options.expect
        if expect is not None and self.received < expect:
            self.output.error(f"expected {expect} messages, received {self.received}")
            return EXIT_EXPECT
        return status

    async def _session(self, ws: Connection, uri: str, deadline: float | None) -> int:
        """Exchange messages on one connection until it ends; return its exit status."""
        options = self.options
        connected = f"connected to {redact_uri(uri)}"
        if ws.subprotocol is not None:
            connected += f", subprotocol {ws.subprotocol}"
        elif options.subprotocols:
            connected += ", no subprotocol selected"
        if self.output.above_input:
            connected += " (Ctrl-D or Ctrl-C to close)"
        self.output.status(connected)

        self._closed_by_us = False
        receiving = asyncio.create_task(self._receive(ws))
        try:
            with contextlib.suppress(ConnectionClosed):
                await self.on_open(ws)
            if options.interactive:
                await self._interact(ws, receiving)
            else:
                await self._automate(ws, receiving, deadline)
            await self._close(ws)
            # Interactive: the messages that came before the server's close frame
            # are still printed. Non-interactive: it was cancelled at the deadline.
            await asyncio.wait({receiving})
        except BaseException:
            ws.abort()
            raise
        finally:
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving  # raises what printing raised, e.g. BrokenPipeError
        return self._report(ws)

    async def _receive(self, ws: Connection) -> None:
        expect = self.options.expect
        with contextlib.suppress(ConnectionClosed):
            while expect is None or self.received < expect:
                message = await ws.recv()
                self._quiet_since = asyncio.get_running_loop().time()
                self.received += 1
                self.on_message(message)

    async def _interact(self, ws: Connection, receiving: asyncio.Task[None]) -> None:
        """Send the input lines until their end (then linger), Ctrl-C, or the server closes."""
        sending = asyncio.create_task(self._send_lines(ws))
        interrupted = asyncio.create_task(self.interrupted.wait())
        try:
            await asyncio.wait(
                {receiving, sending, interrupted}, return_when=asyncio.FIRST_COMPLETED
            )
            if not receiving.done() and (self._input_ended or self.interrupted.is_set()):
                self.output.leave_input_line(interrupted=self.interrupted.is_set())
            if self._input_ended:
                await self._linger(receiving, interrupted)
        finally:
            for task in (sending, interrupted):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _linger(self, receiving: asyncio.Task[None], interrupted: asyncio.Task[bool]) -> None:
        """The input ended: print the replies until none came for --linger seconds.

        A pipe ends as soon as its last line is sent, before the replies to it
        arrive. Ctrl-C, or the server closing, ends the wait at once.
        """
        linger = self.options.linger
        if linger and not receiving.done() and not interrupted.done():
            self.output.status(f"end of input: closing after {linger:g} s without a message")
        loop = asyncio.get_running_loop()
        while not (receiving.done() or interrupted.done()):
            quiet = loop.time() - self._quiet_since
            if quiet >= linger:
                return
            await asyncio.wait(
                {receiving, interrupted},
                timeout=linger - quiet,
                return_when=asyncio.FIRST_COMPLETED,
            )

    async def _read_input(self, queue: asyncio.Queue[str | None]) -> None:
        if self.lines is None:
            try:
                fd = sys.stdin.fileno()
            except (AttributeError, OSError, ValueError):  # no stdin at all (`<&-`)
                fd = None  # as if it had ended
            if fd is not None:
                self.lines = stdin_lines(fd)
        if self.lines is not None:
            async for line in self.lines:
                queue.put_nowait(line)
        queue.put_nowait(None)

    async def _send_lines(self, ws: Connection) -> None:
        """Send the input lines until their end; return early if the connection closes.

        The input is read into a queue for the whole run: a line typed between
        two connections waits for the next one.
        """
        if self._input is None:
            self._input = asyncio.Queue()
            self._reading = asyncio.create_task(self._read_input(self._input))
        while (line := await self._input.get()) is not None:
            try:
                await self.on_line(ws, line)
            except ConnectionClosed:
                return
        self._input_ended = True
        self._quiet_since = asyncio.get_running_loop().time()

    async def _automate(
        self, ws: Connection, receiving: asyncio.Task[None], deadline: float | None
    ) -> None:
        """Send the --send messages, then wait for --expect messages or the deadline."""
        options = self.options
        interrupted = asyncio.create_task(self.interrupted.wait())
        try:
            async with asyncio.timeout_at(deadline):
                for text in options.sends:
                    await self.on_line(ws, text)
                if options.expect is not None or deadline is not None:
                    await asyncio.wait(
                        {receiving, interrupted}, return_when=asyncio.FIRST_COMPLETED
                    )
        except (TimeoutError, ConnectionClosed):
            pass  # the deadline passed, or the server closed first: _report tells
        finally:
            interrupted.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await interrupted
            # Only what arrived in time counts.
            receiving.cancel()

    async def _close(self, ws: Connection) -> None:
        """Close with 1000 unless the server did first; wait for the end (``close_timeout``)."""
        if ws.state is State.OPEN:
            self._closed_by_us = True
            self.output.status(f"closing: {_code_name(CloseCode.NORMAL_CLOSURE)}")
        await ws.close(CloseCode.NORMAL_CLOSURE)

    def _report(self, ws: Connection) -> int:
        """Print how the connection ended; return its exit status (run() checks --expect)."""
        sent, rcvd = ws.protocol.close_sent, ws.protocol.close_rcvd
        if self._closed_by_us:
            if rcvd is None:
                self.output.status("closed: no answer from the server (1006)")
            else:
                self.output.status(f"closed: server answered {describe_close(rcvd)}")
        elif rcvd is not None:
            self.output.status(f"closed by server: {describe_close(rcvd)}")
        elif sent is not None:
            # We failed the connection (RFC 6455 §7.1.7): a protocol error, a
            # message over --max-size, a keepalive timeout.
            self.output.status(f"connection failed: sent {describe_close(sent)}")
        else:
            self.output.status(f"connection lost: {_code_name(CloseCode.ABNORMAL_CLOSURE)}")
        clean = rcvd is not None and rcvd.code in _OK_CODES
        if not clean or (sent is not None and sent.code not in _OK_CODES):
            return EXIT_CLOSED
        return EXIT_OK


# Entry point


def _on_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, callback)


async def _main(make: Callable[[Output], Console], output: Output) -> int:
    console = make(output)
    _on_signals(console.interrupt)
    return await console.run()


def run_console(
    options: Options, make: Callable[[Output], Console], *, prog: str = "rfc6455"
) -> int:
    """Run a console on stdin, stdout and stderr until it ends; return the exit status.

    Args:
        options: what the command line asked for.
        make: makes the console, given where it prints.
        prog: the name that error lines start with.
    """
    for stream in (sys.stdout, sys.stderr):
        # A message in a script the terminal cannot show must not crash the client.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    above_input = options.interactive and all(
        stream is not None and stream.isatty() for stream in (sys.stdin, sys.stdout, sys.stderr)
    )
    output = Output(
        sys.stdout, sys.stderr, json_lines=options.json, above_input=above_input, prog=prog
    )
    try:
        return asyncio.run(_main(make, output))
    except BrokenPipeError:
        # stdout was closed by the reader (e.g. `| head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_CONNECT


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console client: ``python -m rfc6455 URI [options]``; return the exit status."""
    options = parse_args(argv)
    return run_console(options, lambda output: Console(options, output))
