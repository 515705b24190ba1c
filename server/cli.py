"""Command line: flags and environment variables to Settings, then ``app.run``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from rfc6455 import Limits

from .app import run
from .auth import AUTH_MODES, authenticator
from .origin import parse_origins
from .retry import RetryPolicy
from .settings import Settings

__all__ = ["main", "parse_args"]

_DEFAULTS = Settings()
_LIMITS = Limits()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr and exit status 2, instead of the usage text."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {bounds}")
        return value

    return parse


def _non_negative(what: str) -> Callable[[str], float]:
    """Return a parser of a finite number >= 0; ``what`` names it in errors ("a number of ...")."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{text} must be {what} >= 0")
        return value

    return parse


_seconds = _non_negative("a number of seconds")
_rate = _non_negative("a number per second")


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(text: str) -> str:
    # A type check rather than ``choices``: argparse never checks a default against its
    # choices, so CHAT_LOG_LEVEL=verbose would get through and crash logging.basicConfig.
    level = text.upper()
    if level not in _LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(_LOG_LEVELS)}")
    return level


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _boolean(text: str) -> bool:
    word = text.lower()
    if word not in _TRUE + _FALSE:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(_TRUE + _FALSE)}")
    return word in _TRUE


def _optional(value: float) -> float | None:
    """0 turns a limit off."""
    return value or None


def _option(
    parser: argparse.ArgumentParser,
    flag: str,
    env: str,
    default: object,
    help: str,
    **kwargs: object,
) -> None:
    """Add a flag whose default comes from ``env``; argparse checks both the same way."""
    parser.add_argument(
        flag,
        default=os.environ.get(env, str(default)),
        help=f"{help} (env {env}; default: %(default)s)",
        **kwargs,  # type: ignore[arg-type]
    )


def _switch(parser: argparse.ArgumentParser, flag: str, env: str, default: bool, help: str) -> None:
    """Add an on/off option: the flag alone means on, or it takes a boolean like its variable."""
    _option(
        parser, flag, env, default, help, type=_boolean, nargs="?", const="true", metavar="BOOL"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m server",
        description="WebSocket chat server (RFC 6455, pure Python). "
        "Every option can also be set by the environment variable named in its help.",
    )
    _option(parser, "--host", "CHAT_HOST", _DEFAULTS.host, "address to listen on")
    _option(
        parser,
        "--port",
        "CHAT_PORT",
        _DEFAULTS.port,
        "TCP port, 0 for any free one",
        type=_int_range(0, 65535),
    )
    _option(
        parser, "--db", "CHAT_DB", _DEFAULTS.db_path, "SQLite database file; its folder is created"
    )
    _option(
        parser,
        "--log-level",
        "CHAT_LOG_LEVEL",
        _DEFAULTS.log_level,
        "log level",
        type=_log_level,
        metavar="{" + ",".join(_LOG_LEVELS) + "}",
    )
    _option(
        parser,
        "--retry-attempts",
        "CHAT_RETRY_ATTEMPTS",
        _DEFAULTS.retry.attempts,
        "attempts to write a batch before it is dead-lettered",
        type=_int_range(1),
    )
    _option(
        parser,
        "--retry-delay",
        "CHAT_RETRY_DELAY",
        _DEFAULTS.retry.base_delay,
        "seconds; failed attempt n waits n x this delay",
        type=_seconds,
    )
    _option(
        parser,
        "--queue-capacity",
        "CHAT_QUEUE_CAPACITY",
        _DEFAULTS.queue_capacity,
        "messages waiting for the database before senders are slowed down",
        type=_int_range(1),
    )
    _option(
        parser,
        "--batch-size",
        "CHAT_BATCH_SIZE",
        _DEFAULTS.batch_size,
        "messages written per transaction",
        type=_int_range(1),
    )
    _option(
        parser,
        "--shutdown-timeout",
        "CHAT_SHUTDOWN_TIMEOUT",
        _DEFAULTS.shutdown_timeout,
        "seconds to close clients, and again to drain the queue, on SIGINT/SIGTERM",
        type=_seconds,
    )
    _option(
        parser,
        "--history",
        "CHAT_HISTORY",
        _DEFAULTS.history,
        "messages a new client gets on connect, 0 for none",
        type=_int_range(0),
    )
    _option(
        parser,
        "--resume-max",
        "CHAT_RESUME_MAX",
        _DEFAULTS.resume_max,
        "most messages a reconnecting client (?since=SEQ&epoch=ID) gets; "
        "one further behind gets the latest history instead; 0 turns resuming off",
        type=_int_range(0),
    )
    # nargs="?": the flag alone means true; CHAT_BROADCAST_AFTER_COMMIT=1 or =0 says either.
    _switch(
        parser,
        "--broadcast-after-commit",
        "CHAT_BROADCAST_AFTER_COMMIT",
        _DEFAULTS.broadcast_after_commit,
        "broadcast each message only once it is committed to the database (slower, but "
        "nothing a client saw can be lost in a crash)",
    )
    _option(
        parser,
        "--retention-messages",
        "CHAT_RETENTION_MESSAGES",
        _DEFAULTS.retention_messages,
        "keep at most this many messages in the database, 0 for no limit",
        type=_int_range(0),
    )
    _option(
        parser,
        "--retention-days",
        "CHAT_RETENTION_DAYS",
        _DEFAULTS.retention_days,
        "delete messages older than this many days, 0 to keep them forever",
        type=_int_range(0),
    )
    _option(
        parser,
        "--max-message-size",
        "CHAT_MAX_MESSAGE_SIZE",
        _LIMITS.max_size,
        "largest message in bytes, 0 for no limit (larger ones close with 1009)",
        type=_int_range(0),
    )
    _option(
        parser,
        "--ping-interval",
        "CHAT_PING_INTERVAL",
        _LIMITS.ping_interval,
        "seconds between keepalive pings, 0 to turn them off",
        type=_seconds,
    )
    _option(
        parser,
        "--ping-timeout",
        "CHAT_PING_TIMEOUT",
        _LIMITS.ping_timeout,
        "seconds to wait for a pong before closing with 1011, 0 to wait forever",
        type=_seconds,
    )
    _option(
        parser,
        "--open-timeout",
        "CHAT_OPEN_TIMEOUT",
        _LIMITS.open_timeout,
        "seconds a client has to complete the opening handshake",
        type=_seconds,
    )
    _option(
        parser,
        "--max-send-buffer",
        "CHAT_MAX_SEND_BUFFER",
        _LIMITS.max_send_buffer,
        "bytes a client may leave unread; more is sent meanwhile closes it with 1008 "
        f"'slow consumer'; 0 for no limit, else at least {_LIMITS.write_limit}",
        type=_int_range(0),
    )
    _option(
        parser,
        "--rate-limit",
        "CHAT_RATE_LIMIT",
        _DEFAULTS.rate_limit,
        "messages per second a chat client may send on average, 0 turns every rate limit off",
        type=_rate,
    )
    _option(
        parser,
        "--rate-burst",
        "CHAT_RATE_BURST",
        _DEFAULTS.rate_burst,
        "messages a chat client may send at once after a quiet spell",
        type=_int_range(1),
    )
    _option(
        parser,
        "--byte-rate",
        "CHAT_BYTE_RATE",
        _DEFAULTS.byte_rate,
        "bytes per second a chat client may send on average, 0 for no byte limit",
        type=_int_range(0),
    )
    _option(
        parser,
        "--byte-burst",
        "CHAT_BYTE_BURST",
        _DEFAULTS.byte_burst,
        "bytes a chat client may send at once after a quiet spell",
        type=_int_range(1),
    )
    _access_options(parser)
    return parser


def _origins(text: str) -> frozenset[str]:
    try:
        return parse_origins(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _auth_mode(text: str) -> str:
    if text not in AUTH_MODES:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(AUTH_MODES)}")
    return text


def _access_options(parser: argparse.ArgumentParser) -> None:
    """Who may open a WebSocket (access.py): limits, Origin, authentication, /echo."""
    _option(
        parser,
        "--max-connections",
        "CHAT_MAX_CONNECTIONS",
        _DEFAULTS.max_connections,
        "open WebSocket connections (chat and /echo) beyond which handshakes get 503, 0 for no cap",
        type=_int_range(0),
    )
    _option(
        parser,
        "--max-connections-per-ip",
        "CHAT_MAX_CONNECTIONS_PER_IP",
        _DEFAULTS.max_connections_per_ip,
        "chat connections one address (IPv6: /64) may have open, more get 429; 0 for no limit",
        type=_int_range(0),
    )
    _option(
        parser,
        "--connect-rate-per-ip",
        "CHAT_CONNECT_RATE_PER_IP",
        _DEFAULTS.connect_rate_per_ip,
        "new chat connections a second one address may open on average, more get 429; 0: no limit",
        type=_rate,
    )
    _option(
        parser,
        "--connect-burst-per-ip",
        "CHAT_CONNECT_BURST_PER_IP",
        _DEFAULTS.connect_burst_per_ip,
        "new chat connections one address may open at once after a quiet spell",
        type=_int_range(1),
    )
    _option(
        parser,
        "--allowed-origins",
        "CHAT_ALLOWED_ORIGINS",
        ",".join(sorted(_DEFAULTS.allowed_origins)),
        "comma-separated Origins (https://host[:port], null, or *) of browser pages allowed to "
        "open the chat besides the server's own; others get 403",
        type=_origins,
    )
    _switch(
        parser,
        "--no-echo",
        "CHAT_NO_ECHO",
        not _DEFAULTS.echo,
        "turn the /echo endpoint off (404), for production",
    )
    _option(
        parser,
        "--auth",
        "CHAT_AUTH",
        _DEFAULTS.auth,
        "authentication of chat clients: none, jwt (HS256 bearer tokens) or basic (users file)",
        type=_auth_mode,
        metavar="{" + ",".join(AUTH_MODES) + "}",
    )
    # No default shown: the secret must not appear in --help output.
    parser.add_argument(
        "--jwt-secret",
        default=os.environ.get("CHAT_JWT_SECRET", ""),
        help="--auth jwt: the HS256 secret, at least 32 bytes (env CHAT_JWT_SECRET, better: "
        "a command line is visible to every user of the machine)",
    )
    _option(
        parser,
        "--users",
        "CHAT_USERS",
        "",
        "--auth basic: the users file (python -m server.users add FILE NAME)",
    )


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Build Settings from ``argv`` and the environment; exits with status 2 on a bad value."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    db_path = Path(args.db)
    try:
        _check_writable(db_path.parent)
    except OSError as exc:
        parser.error(f"--db: cannot write to {db_path.parent}: {exc.strerror or exc}")
    # The limit is checked once the transport pauses writing, above write_limit.
    if 0 < args.max_send_buffer < _LIMITS.write_limit:
        parser.error(
            f"--max-send-buffer: {args.max_send_buffer} is out of range: "
            f"must be 0 or at least {_LIMITS.write_limit}"
        )
    try:
        authenticator(args.auth, args.jwt_secret, Path(args.users) if args.users else None)
    except (ValueError, ImportError) as exc:
        parser.error(f"--auth {args.auth}: {exc}")
    limits = Limits(
        max_size=args.max_message_size or None,
        ping_interval=_optional(args.ping_interval),
        ping_timeout=_optional(args.ping_timeout),
        open_timeout=_optional(args.open_timeout),
        max_send_buffer=args.max_send_buffer or None,
    )
    return Settings(
        host=args.host,
        port=args.port,
        db_path=db_path,
        log_level=args.log_level,
        retry=RetryPolicy(attempts=args.retry_attempts, base_delay=args.retry_delay),
        queue_capacity=args.queue_capacity,
        batch_size=args.batch_size,
        shutdown_timeout=args.shutdown_timeout,
        limits=limits,
        history=args.history,
        resume_max=args.resume_max,
        broadcast_after_commit=args.broadcast_after_commit,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        byte_rate=args.byte_rate,
        byte_burst=args.byte_burst,
        retention_messages=args.retention_messages,
        retention_days=args.retention_days,
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections_per_ip,
        connect_rate_per_ip=args.connect_rate_per_ip,
        connect_burst_per_ip=args.connect_burst_per_ip,
        allowed_origins=args.allowed_origins,
        echo=not args.no_echo,
        auth=args.auth,
        jwt_secret=args.jwt_secret,
        users_file=Path(args.users) if args.users else None,
    )


def _check_writable(folder: Path) -> None:
    """Create the database folder and prove a file can be written in it."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m server``."""
    settings = parse_args(argv)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(run(settings))
    except OSError as exc:
        # The port is taken, or the host is not an address of this machine.
        print(f"python -m server: error: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"python -m server: error: cannot open {settings.db_path}: {exc}", file=sys.stderr)
        return 2
