"""Every option of ``python -m server``, declared once: flag, variable, parser, help.

``cli`` builds its argument parser from ``OPTIONS``, reads the environment variables with the
same parsers, and puts each value where ``Option.dest`` says in ``Settings``; the README's table
of options is ``markdown_table()`` (a test checks that it matches). Defaults are not repeated
here: they are ``Settings()``'s, with the reason for each beside it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rfc6455.forwarded import Network, parse_networks

from .api import check_key
from .auth import AUTH_MODES
from .event_loop import FAST_EXTRA, LOOP_MODES
from .hosts import parse_hosts
from .logs import LOG_FORMATS
from .origin import parse_origins
from .settings import COMPRESSION_MODES, ECHO_MODES, Settings

__all__ = ["LOG_LEVELS", "OPTIONS", "Option", "default_text", "markdown_table"]

Parse = Callable[[str], Any]


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its flag, its environment variable, how its text is read, where it goes.

    Attributes:
        flag: The command-line flag, ``--port``.
        env: The environment variable that sets it when the flag is not given.
        dest: The ``Settings`` field it sets; ``limits.x`` and ``retry.x`` go into those.
        parse: Turns the text into the value; raises ``argparse.ArgumentTypeError``.
        doc: What it means, for ``--help`` and the README (Markdown backticks allowed).
        shown: The README's default when ``default_text`` is not what a reader needs.
        switch: An on/off option: the flag alone means on.
        metavar: The name of the value in ``--help``.
    """

    flag: str
    env: str
    dest: str
    parse: Parse
    doc: str
    shown: str | None = None
    switch: bool = False
    metavar: str | None = None


def _whole(low: int, high: int | None = None, *, zero_is_none: bool = False) -> Parse:
    """A whole number from ``low`` to ``high``; ``zero_is_none``: 0 gives None (no limit)."""

    def parse(text: str) -> int | None:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {bounds}")
        return None if zero_is_none and value == 0 else value

    return parse


def _non_negative(what: str, *, zero_is_none: bool = False) -> Parse:
    """A finite number >= 0; ``what`` names it in errors ("a number of seconds")."""

    def parse(text: str) -> float | None:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{text} must be {what} >= 0")
        return None if zero_is_none and value == 0 else value

    return parse


def _choice(choices: Sequence[str], *, upper: bool = False) -> Parse:
    def parse(text: str) -> str:
        value = text.upper() if upper else text.lower()
        if value not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return value

    return parse


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _boolean(text: str) -> bool:
    word = text.lower()
    if word not in _TRUE + _FALSE:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(_TRUE + _FALSE)}")
    return word in _TRUE


def _required_text(what: str) -> Parse:
    """Text that may not be blank: an empty CHAT_HOST= must not mean "every interface"."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{what} must not be empty")
        return text

    return parse


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("a file name must not be empty")
    return Path(text)


def _database(text: str) -> Path | str:
    """A SQLite file, or a PostgreSQL URL (kept as text: a Path would fold its slashes)."""
    if text.startswith(("postgresql://", "postgres://")):
        if not urlsplit(text).hostname and "host=" not in text:
            raise argparse.ArgumentTypeError("a PostgreSQL URL names its host")
        return text
    return _path(text)


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _api_key(text: str) -> str:
    try:
        return check_key(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _engine(text: str) -> str:
    if text == "local":
        return text
    try:
        url = urlsplit(text)
        valid = url.scheme.lower() in ("redis", "rediss") and bool(url.hostname)
        url.port  # noqa: B018 (a port out of range or not a number raises)
    except ValueError:
        valid = False
    # The URL is not repeated: it may carry a password.
    if not valid:
        raise argparse.ArgumentTypeError(
            "the engine must be local or a redis://HOST[:PORT] or rediss:// URL"
        )
    return text


def _listed(parse_list: Callable[[str], frozenset[str]]) -> Parse:
    def parse(text: str) -> frozenset[str]:
        try:
            return parse_list(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _networks(text: str) -> tuple[Network, ...]:
    try:
        return parse_networks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_seconds = _non_negative("a number of seconds")
_seconds_or_off = _non_negative("a number of seconds", zero_is_none=True)
_rate = _non_negative("a number per second")


def _presence_ttl(text: str) -> float:
    seconds: float = _seconds(text)
    if not 1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError("the presence TTL is 1 to 3600 seconds")
    return seconds


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

OPTIONS: tuple[Option, ...] = (
    Option("--host", "CHAT_HOST", "host", _required_text("a host"), "address to listen on"),
    Option(
        "--port",
        "CHAT_PORT",
        "port",
        _whole(0, 65535),
        "TCP port; `0` picks a free one (logged at start-up)",
    ),
    Option(
        "--tls-cert",
        "CHAT_TLS_CERT",
        "tls_cert",
        _optional_path,
        "PEM certificate chain (the certificate, then its intermediates): serve HTTPS and "
        "WSS on `--port`, with `--tls-key`; SIGHUP loads both again (TLS, below)",
        shown="",
    ),
    Option(
        "--tls-key",
        "CHAT_TLS_KEY",
        "tls_key",
        _optional_path,
        "the PEM private key of `--tls-cert`, without a pass phrase",
        shown="",
    ),
    Option(
        "--tls-handshake-timeout",
        "CHAT_TLS_HANDSHAKE_TIMEOUT",
        "limits.tls_handshake_timeout",
        _seconds_or_off,
        "with `--tls-cert`: seconds a client has to complete the TLS handshake, before "
        "`--open-timeout` starts (`0`: no timeout)",
    ),
    Option(
        "--db",
        "CHAT_DB",
        "db_path",
        _database,
        "SQLite file (its folder is created), or with a Redis `--engine` a "
        "`postgresql://` URL: the archive servers on several hosts share. One server with "
        "the local engine at a time may use a file",
    ),
    Option(
        "--engine",
        "CHAT_ENGINE",
        "engine",
        _engine,
        "`local` (this process, the SQLite `--db`) or a `redis://HOST[:PORT]` (`rediss://`: "
        "TLS) URL: an engine several servers share (`--workers`)",
    ),
    Option(
        "--presence-ttl",
        "CHAT_PRESENCE_TTL",
        "presence_ttl",
        _presence_ttl,
        "with a Redis `--engine`: seconds after which the members of a node that stopped "
        "refreshing them (crashed) leave; each node refreshes its own every 5/12 of it",
    ),
    Option(
        "--workers",
        "CHAT_WORKERS",
        "workers",
        _whole(1),
        "server processes sharing the port, under a supervisor that restarts them (below); "
        "more than 1 needs a Redis `--engine` and a `--port` other than 0",
    ),
    Option(
        "--log-level",
        "CHAT_LOG_LEVEL",
        "log_level",
        _choice(LOG_LEVELS, upper=True),
        "`DEBUG`, `INFO`, `WARNING` or `ERROR`",
        metavar="{" + ",".join(LOG_LEVELS) + "}",
    ),
    Option(
        "--log-format",
        "CHAT_LOG_FORMAT",
        "log_format",
        _choice(LOG_FORMATS),
        "`text` (readable lines) or `json` (one object a line: time, level, event, connection "
        "id, user, channel, peer, close code and reason; docs/deploy.md, Logs)",
        metavar="{" + ",".join(LOG_FORMATS) + "}",
    ),
    Option(
        "--loop",
        "CHAT_LOOP",
        "loop",
        _choice(LOOP_MODES),
        f"the event loop: `uvloop` (`{FAST_EXTRA}`), `asyncio`, or `auto`: uvloop when it is "
        "installed, else asyncio; the start-up log says which",
        metavar="{" + ",".join(LOOP_MODES) + "}",
    ),
    Option(
        "--retry-attempts",
        "CHAT_RETRY_ATTEMPTS",
        "retry.attempts",
        _whole(1),
        "attempts to write a batch before it is dead-lettered",
    ),
    Option(
        "--retry-delay",
        "CHAT_RETRY_DELAY",
        "retry.base_delay",
        _seconds,
        "seconds; failed attempt *n* waits *n* × this delay",  # noqa: RUF001
    ),
    Option(
        "--queue-capacity",
        "CHAT_QUEUE_CAPACITY",
        "queue_capacity",
        _whole(1),
        "messages waiting for the database before senders are slowed down",
    ),
    Option(
        "--batch-size",
        "CHAT_BATCH_SIZE",
        "batch_size",
        _whole(1),
        "messages written per transaction",
    ),
    Option(
        "--shutdown-timeout",
        "CHAT_SHUTDOWN_TIMEOUT",
        "shutdown_timeout",
        _seconds,
        "seconds to close clients, and again to drain the queue, on SIGINT/SIGTERM",
    ),
    Option(
        "--max-message-size",
        "CHAT_MAX_MESSAGE_SIZE",
        "limits.max_size",
        _whole(0, zero_is_none=True),
        "largest WebSocket message in bytes (`0`: no limit); larger ones close with 1009",
    ),
    Option(
        "--ping-interval",
        "CHAT_PING_INTERVAL",
        "limits.ping_interval",
        _seconds_or_off,
        "seconds between keepalive pings (`0`: off)",
    ),
    Option(
        "--ping-timeout",
        "CHAT_PING_TIMEOUT",
        "limits.ping_timeout",
        _seconds_or_off,
        "seconds to wait for a pong before closing with 1011 (`0`: forever)",
    ),
    Option(
        "--open-timeout",
        "CHAT_OPEN_TIMEOUT",
        "limits.open_timeout",
        _seconds_or_off,
        "seconds a client has to complete the opening handshake (`0`: no timeout, which "
        "lets a slowloris hold a connection forever)",
    ),
    Option(
        "--max-head-size",
        "CHAT_MAX_HEAD_SIZE",
        "limits.max_head_size",
        _whole(1024),
        "bytes of a request's head (request line and headers); a larger one gets `431`",
    ),
    Option(
        "--max-handshakes",
        "CHAT_MAX_HANDSHAKES",
        "limits.max_handshakes",
        _whole(0, zero_is_none=True),
        "connections still in their opening handshake, in all, beyond which a new one gets "
        "`503` at once (`0`: no cap); each holds at most `--max-head-size` bytes for "
        "`--open-timeout` seconds",
    ),
    Option(
        "--max-handshakes-per-ip",
        "CHAT_MAX_HANDSHAKES_PER_IP",
        "limits.max_handshakes_per_address",
        _whole(0, zero_is_none=True),
        "connections still in their opening handshake from one address (IPv6: its /64) "
        "beyond which a new one gets `503` (`0`: no cap): a slowloris cannot take them all, "
        "and a real handshake takes milliseconds, so even a proxy's reconnect storm stays "
        "well under it",
    ),
    Option(
        "--max-send-buffer",
        "CHAT_MAX_SEND_BUFFER",
        "limits.max_send_buffer",
        _whole(0, zero_is_none=True),
        "bytes that may wait for a client behind what it is being sent; sending more "
        'meanwhile closes it with 1008 "slow consumer" (`0`: no limit, else at least 65536); '
        "1 MiB is thousands of chat messages, far more than a client that keeps up ever "
        "lags by",
    ),
    Option(
        "--rate-limit",
        "CHAT_RATE_LIMIT",
        "rate_limit",
        _rate,
        "messages a second a chat client may send on average (`0` turns every rate limit "
        "off); nobody types 20 a second",
    ),
    Option(
        "--rate-burst",
        "CHAT_RATE_BURST",
        "rate_burst",
        _whole(1),
        "messages a chat client may send at once after a quiet spell: a pasted list, or what "
        "a reconnecting client resends",
    ),
    Option(
        "--byte-rate",
        "CHAT_BYTE_RATE",
        "byte_rate",
        _whole(0),
        "bytes a second a chat client may send on average (`0`: no byte limit)",
    ),
    Option(
        "--byte-burst",
        "CHAT_BYTE_BURST",
        "byte_burst",
        _whole(1),
        "bytes a chat client may send at once",
    ),
    Option(
        "--max-text-chars",
        "CHAT_MAX_TEXT_CHARS",
        "max_text_chars",
        _whole(1),
        "characters in a chat message's text; a longer one gets `invalid_message`",
    ),
    Option(
        "--max-text-bytes",
        "CHAT_MAX_TEXT_BYTES",
        "max_text_bytes",
        _whole(1),
        "bytes of a chat message's text as the server sends it (UTF-8, JSON-escaped): what "
        "one message may cost every client; a larger one gets `invalid_message`",
    ),
    Option(
        "--leave-rate",
        "CHAT_LEAVE_RATE",
        "leave_rate",
        _rate,
        "`user_left` notices a second, on average; those who leave beyond it are announced "
        "together once a second (`users_left`); `0`: every one at once",
    ),
    Option(
        "--history",
        "CHAT_HISTORY",
        "history",
        _whole(0),
        "messages a new subscriber of a channel gets (`0`: no history message on connect)",
    ),
    Option(
        "--channels",
        "CHAT_CHANNELS",
        "channels_file",
        _optional_path,
        "a TOML file of namespace options: history, retention, presence, who may publish "
        "(`docs/protocol.md`)",
        shown="",
    ),
    Option(
        "--resume-max",
        "CHAT_RESUME_MAX",
        "resume_max",
        _whole(0),
        "most messages a reconnecting client is sent; one that missed more gets the last "
        "`--history` instead (`0`: no resuming). Messages are counted, not seqs: seqs skipped "
        "after a crash hold none",
    ),
    Option(
        "--history-bytes",
        "CHAT_HISTORY_BYTES",
        "history_bytes",
        _whole(1),
        "most bytes of messages in one history, plain or resume: a history holds the latest "
        "that fit; a resume whose missed messages do not fit gets the latest with "
        "`recovered: false`",
    ),
    Option(
        "--history-memory",
        "CHAT_HISTORY_MEMORY",
        "history_memory",
        _whole(1),
        "bytes of every channel's latest messages kept in memory, all channels together: "
        "histories and resumes are served from them (over it, the database is read)",
    ),
    Option(
        "--broadcast-after-commit",
        "CHAT_BROADCAST_AFTER_COMMIT",
        "broadcast_after_commit",
        _boolean,
        "broadcast a message only once it is committed (the flag alone, or "
        "`1`/`true`/`yes`/`on`; `0`/`false`/`no`/`off` for the default)",
        switch=True,
    ),
    Option(
        "--retention-messages",
        "CHAT_RETENTION_MESSAGES",
        "retention_messages",
        _whole(0),
        "keep at most this many messages (`0`: no limit)",
    ),
    Option(
        "--retention-days",
        "CHAT_RETENTION_DAYS",
        "retention_days",
        _whole(0),
        "delete messages older than this (`0`: keep them forever)",
    ),
    Option(
        "--max-connections",
        "CHAT_MAX_CONNECTIONS",
        "max_connections",
        _whole(0),
        "open WebSocket connections, chat and `/echo`, beyond which a handshake gets `503` "
        "(`0`: no cap); 10,000 idle clients take about 60 MiB, and a broadcast to as many is "
        "what one event loop writes in a few ms. The server raises its file descriptor limit "
        "to fit, as far as the hard limit allows, and warns when it cannot",
    ),
    Option(
        "--max-echo-connections",
        "CHAT_MAX_ECHO_CONNECTIONS",
        "max_echo_connections",
        _whole(0),
        "open `/echo` connections (part of `--max-connections`) beyond which an `/echo` "
        "handshake gets `503` (`0`: no cap of its own): anonymous echo clients cannot take "
        "the places of the chat's users",
    ),
    Option(
        "--max-connections-per-ip",
        "CHAT_MAX_CONNECTIONS_PER_IP",
        "max_connections_per_ip",
        _whole(0),
        "chat connections one address (IPv6: its /64) may have open; more get `429`. Off: "
        "clients behind one NAT or proxy share an address",
        shown="`0` (off)",
    ),
    Option(
        "--connect-rate-per-ip",
        "CHAT_CONNECT_RATE_PER_IP",
        "connect_rate_per_ip",
        _rate,
        "new chat connections a second per address, on average (token bucket); more get "
        "`429` with `Retry-After`",
        shown="`0` (off)",
    ),
    Option(
        "--connect-burst-per-ip",
        "CHAT_CONNECT_BURST_PER_IP",
        "connect_burst_per_ip",
        _whole(1),
        "new chat connections per address at once: a few tabs reopened, a reconnect after a "
        "restart",
    ),
    Option(
        "--allowed-origins",
        "CHAT_ALLOWED_ORIGINS",
        "allowed_origins",
        _listed(parse_origins),
        "comma-separated Origins (`https://host[:port]`, `null`, `*`) of browser pages "
        "allowed to open the chat besides the server's own (below)",
        shown="none",
    ),
    Option(
        "--trusted-proxies",
        "CHAT_TRUSTED_PROXIES",
        "trusted_proxies",
        _networks,
        "comma-separated networks of reverse proxies (`127.0.0.1/32,::1`, `10.0.0.0/8`): for "
        "a connection from one, the client's address is read from `Forwarded` or "
        "`X-Forwarded-For` and its scheme from `X-Forwarded-Proto`, for the per-IP limits, "
        "the logs and the Origin check; from any other address they are ignored "
        "(docs/deploy.md, Behind a proxy)",
        shown="none",
    ),
    Option(
        "--allowed-hosts",
        "CHAT_ALLOWED_HOSTS",
        "allowed_hosts",
        _listed(parse_hosts),
        "comma-separated host names the server may be reached as besides IP addresses and "
        "`localhost` (`chat.example.com`; `.example.com` for it and its subdomains; `*` for "
        "any); a request for another `Host` gets `421` (DNS rebinding, below)",
        shown="none",
    ),
    Option(
        "--echo",
        "CHAT_ECHO",
        "echo",
        _choice(ECHO_MODES),
        "`on`, `off` or `auto`: the `/echo` endpoint, for conformance tests and benchmarks; "
        "`auto` turns it on unless `--auth` is set",
        metavar="{" + ",".join(ECHO_MODES) + "}",
    ),
    Option(
        "--compression",
        "CHAT_COMPRESSION",
        "compression",
        _choice(COMPRESSION_MODES),
        "permessage-deflate (RFC 7692) for clients that offer it (browsers do): `on` without "
        "context takeover (no memory kept between messages; a broadcast is compressed once), "
        "`context` with it (smaller messages, some 110 KiB per connection), or `off`; "
        "messages under 256 bytes go uncompressed",
        metavar="{" + ",".join(COMPRESSION_MODES) + "}",
    ),
    Option(
        "--auth",
        "CHAT_AUTH",
        "auth",
        _choice(AUTH_MODES),
        "`jwt` or `basic` (below)",
        metavar="{" + ",".join(AUTH_MODES) + "}",
    ),
    Option(
        "--jwt-secret",
        "CHAT_JWT_SECRET",
        "jwt_secret",
        str,
        "`--auth jwt`: the HS256 secret, at least 32 bytes (RFC 7518 §3.2); prefer the "
        "variable, a command line is visible to every user",
        shown="",
    ),
    Option(
        "--users",
        "CHAT_USERS",
        "users_file",
        _optional_path,
        "`--auth basic`: the users file",
        shown="",
    ),
    Option(
        "--max-login-failures",
        "CHAT_MAX_LOGIN_FAILURES",
        "max_login_failures",
        _whole(0),
        "`--auth basic`: failed logins a minute per address (IPv6: its /64), and as many at "
        "once; beyond, `429` with `Retry-After` and no password check (`0`: off)",
    ),
    Option(
        "--api-key",
        "CHAT_API_KEY",
        "api_key",
        _api_key,
        "the key of the HTTP API for the application's backend under `/api/` (off without "
        "it; `docs/http-api.md`), sent as `Authorization: Bearer KEY`: at least 16 characters "
        "of `A-Z a-z 0-9 - . _ ~ + /`; prefer the variable, a command line is visible to every "
        "user",
        shown="",
    ),
    Option(
        "--metrics-token",
        "CHAT_METRICS_TOKEN",
        "metrics_token",
        _api_key,
        "serve `GET /metrics` (Prometheus, `docs/metrics.md`) on `--port` to requests with "
        "`Authorization: Bearer TOKEN` (at least 16 characters, as `--api-key`); with "
        "`--metrics-port`, asked for there too",
        shown="",
    ),
    Option(
        "--metrics-host",
        "CHAT_METRICS_HOST",
        "metrics_host",
        _required_text("a host"),
        "address of the `--metrics-port` listener",
    ),
    Option(
        "--metrics-port",
        "CHAT_METRICS_PORT",
        "metrics_port",
        _whole(0, 65535),
        "serve `GET /metrics` on a listener of its own (nothing else there; `0` picks a free "
        "port, logged); with `--workers N`, worker K (0 to N-1) listens on this port + K",
        shown="off",
    ),
)


def _value_at(settings: Settings, dest: str) -> object:
    value: object = settings
    for name in dest.split("."):
        value = getattr(value, name)
    return value


def default_text(option: Option) -> str:
    """The default of ``option`` as it would be typed (``Settings()``'s value)."""
    value = _value_at(Settings(), option.dest)
    if value is None:
        return "" if option.parse is _optional_path else "0"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, frozenset):
        return ",".join(sorted(value))
    return str(value)


def markdown_table() -> str:
    """The README's table of options, one row per option."""
    rows = [
        "| option | environment | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for option in OPTIONS:
        text = default_text(option)
        shown = option.shown if option.shown is not None else f"`{text}`" if text else ""
        rows.append(f"| `{option.flag}` | `{option.env}` | {shown} | {option.doc} |")
    return "\n".join(rows) + "\n"
