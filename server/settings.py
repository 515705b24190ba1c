"""Everything the server can be told, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rfc6455 import Compression, Limits
from rfc6455.forwarded import Network

from .messages import MAX_TEXT_BYTES, MAX_TEXT_CHARS
from .retry import RetryPolicy

__all__ = ["COMPRESSION_MODES", "ECHO_MODES", "WEB_ROOT", "Settings"]

# The browser client: inside the package once installed from a wheel (pyproject.toml maps
# web_client/ to server/web_client/), beside it in a checkout or an editable install.
_INSTALLED_WEB_ROOT = Path(__file__).resolve().parent / "web_client"
WEB_ROOT = (
    _INSTALLED_WEB_ROOT
    if _INSTALLED_WEB_ROOT.is_dir()
    else _INSTALLED_WEB_ROOT.parent.parent / "web_client"
)

# ``--echo``: auto is on, unless clients must authenticate (then an anonymous endpoint is a
# decision, not a default).
ECHO_MODES = ("auto", "on", "off")

# ``--compression``: permessage-deflate without context takeover, with it, or none.
COMPRESSION_MODES = ("on", "context", "off")


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one server process; ``cli`` builds it from flags and the environment."""

    # Loopback by default: exposing a chat server is a decision, not an accident.
    host: str = "127.0.0.1"
    # The web client's default URL is ws://localhost:5000 (the original design).
    port: int = 5000
    # HTTPS and WSS on the port (tls.py): a PEM certificate chain and its key, loaded again
    # on SIGHUP; None: plaintext. Usually a proxy ends TLS (docs/deploy.md); this is without one.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # A SQLite file, or (with a Redis engine) a PostgreSQL URL, which may carry a password.
    db_path: Path | str = field(default=Path("data/messages.db"), repr=False)
    # The chat's engine: "local" (this process, SQLite) or a redis:// or rediss:// URL, an
    # engine several processes share. A URL may carry a password: never shown.
    engine: str = field(default="local", repr=False)
    # Redis engine: a node's presence entries expire this long after their last refresh.
    presence_ttl: float = 60.0
    # Processes serving the port, under a supervisor (supervisor.py); 1: this process serves.
    workers: int = 1
    log_level: str = "INFO"
    # "text" for a terminal or a plain file; "json" for a log pipeline (logs.py).
    log_format: str = "text"
    # The event loop (event_loop.py): uvloop when it is installed, else asyncio's.
    loop: str = "auto"
    retry: RetryPolicy = RetryPolicy()
    # 10,000 messages of a chat burst fit in a few MiB of memory.
    queue_capacity: int = 10_000
    # One SQLite transaction per batch: 500 rows commit in about a millisecond.
    batch_size: int = 500
    # How long SIGTERM may take: closing clients, then draining the queue.
    shutdown_timeout: float = 10.0
    limits: Limits = Limits()
    # A chat message's text, in characters and in bytes as broadcast (messages.py).
    max_text_chars: int = MAX_TEXT_CHARS
    max_text_bytes: int = MAX_TEXT_BYTES
    # user_left notices a second, one by one; more are announced together once a second
    # (departures.py); 0: every one at once. Five a second is more than anyone reads.
    leave_rate: float = 5.0
    # A screenful of context for a newcomer, in one small frame.
    history: int = 50
    # Namespaces' options (namespaces.py); without a file every channel has the defaults.
    channels_file: Path | None = None
    # A resume sends at most this many messages: a few minutes of a busy room, a few MB.
    resume_max: int = 10_000
    # The most bytes of messages one history (plain or resume) holds: what one client may
    # cost the server at once on connect, the same as --max-send-buffer lets it lag by.
    history_bytes: int = 2**20
    # Broadcast at once (latency) rather than after the commit (nothing seen is ever lost).
    broadcast_after_commit: bool = False
    # Per chat connection (not /echo), see ratelimit.py; 0 turns every rate limit off. Nobody
    # types 20 messages a second, and a burst of 40 lets a paste of lines or the resend of what
    # a reconnecting client had queued through.
    rate_limit: float = 20.0
    rate_burst: int = 40
    # Bytes per second (0: no byte limit): a chat needs far less; the 2 MiB burst lets two
    # messages of the default 1 MiB --max-message-size through back to back.
    byte_rate: int = 2**20
    byte_burst: int = 2 * 2**20
    # Handshake access (access.py), 0 turning a limit off. WebSocket connections, chat and /echo:
    # ten thousand idle clients take about 60 MiB here, and a message broadcast to as many is
    # about what one event loop can write in a few milliseconds.
    max_connections: int = 10_000
    # /echo's share of them: it needs no credentials, so anonymous clients must not be able to
    # take every place (--max-connections) from the chat's users. Autobahn uses one at a time.
    max_echo_connections: int = 100
    # Per address, chat only: off, since clients behind one NAT or proxy share an address.
    max_connections_per_ip: int = 0
    connect_rate_per_ip: float = 0.0
    # New connections at once: a few tabs reopened together, or a reconnect storm after a restart.
    connect_burst_per_ip: int = 10
    # Browser pages of other sites allowed to open the chat (origin.py), besides the server's.
    allowed_origins: frozenset[str] = frozenset()
    # Reverse proxies whose Forwarded / X-Forwarded-For name the client (rfc6455.forwarded):
    # none, since from anyone else those headers are whatever the client wrote.
    trusted_proxies: tuple[Network, ...] = ()
    # Host names the server may be reached as, besides IP addresses and localhost (hosts.py).
    allowed_hosts: frozenset[str] = frozenset()
    # The /echo endpoint (tests and benchmarks): "auto", "on" or "off" (404).
    echo: str = "auto"
    # permessage-deflate (RFC 7692) when a client offers it: browsers do, and the chat's JSON
    # shrinks several times over. "on" keeps no zlib object between messages, so an idle
    # connection costs what it did without it, and a broadcast is compressed once.
    compression: str = "on"
    # "none", "jwt" (jwt_secret) or "basic" (users_file); see auth.py.
    auth: str = "none"
    jwt_secret: str = field(default="", repr=False)
    users_file: Path | None = None
    # --auth basic: failed logins a minute per address, and as many at once (logins.py). One who
    # mistypes gets ten tries in a row, then one every 6 s; a guesser gets 600 an hour from an
    # address, not the 50 a second that scrypt at 40 ms lets two cores check.
    max_login_failures: int = 10
    # The HTTP API for the application's backend (api.py): off without a key, since it can
    # publish as the server and disconnect anyone. A secret: never shown, nor logged.
    api_key: str | None = field(default=None, repr=False)
    # A million short messages are a few hundred MB of SQLite; 30 days is a month of context.
    retention_messages: int = 1_000_000
    retention_days: int = 30
    web_root: Path = WEB_ROOT
    welcome: str = "Welcome to the chat server!"
    # Memory for every channel's latest broadcasts, from which histories and resumes are
    # served: a few thousand messages, a few MB's worth of a busy server's last minutes.
    history_memory: int = 16 * 2**20
    # Seconds between two retention passes: old messages outlive their limit by at most this.
    prune_interval: float = 60.0
    # GET /metrics (metrics_page.py), off unless one is given: on the chat's port to requests
    # with this Bearer token (a secret: never shown), or on a listener of its own, loopback
    # by default since the figures are the operator's; worker K of --workers adds K to the port.
    metrics_token: str | None = field(default=None, repr=False)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    # This process's number among --workers (0 to N-1), set by ``cli`` in a worker: the
    # ``worker`` label of its metrics; None: a single process.
    worker: int | None = None
    # SO_REUSEPORT on the listening sockets: set by ``cli`` in a worker of ``--workers``, so
    # that the workers share the port; a standalone server's port is its own.
    reuse_port: bool = False

    @property
    def deflate(self) -> Compression | None:
        """What ``--compression`` gives ``rfc6455.serve``: None for ``off``."""
        if self.compression == "off":
            return None
        return Compression(context_takeover=self.compression == "context")

    @property
    def echo_enabled(self) -> bool:
        """Whether ``/echo`` is served: ``--echo on``, or ``auto`` without authentication."""
        return self.echo == "on" or (self.echo == "auto" and self.auth == "none")
