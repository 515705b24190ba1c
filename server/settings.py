"""Everything the server can be told, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rfc6455 import Limits

from .retry import RetryPolicy

__all__ = ["WEB_ROOT", "Settings"]

# The browser client shipped beside the server package.
WEB_ROOT = Path(__file__).resolve().parent.parent / "web_client"


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of one server process; ``cli`` builds it from flags and the environment."""

    # Loopback by default: exposing a chat server is a decision, not an accident.
    host: str = "127.0.0.1"
    # The web client's default URL is ws://localhost:5000 (the original design).
    port: int = 5000
    db_path: Path = Path("data/messages.db")
    log_level: str = "INFO"
    retry: RetryPolicy = RetryPolicy()
    # 10,000 messages of a chat burst fit in a few MiB of memory.
    queue_capacity: int = 10_000
    # One SQLite transaction per batch: 500 rows commit in about a millisecond.
    batch_size: int = 500
    # How long SIGTERM may take: closing clients, then draining the queue.
    shutdown_timeout: float = 10.0
    limits: Limits = Limits()
    # A screenful of context for a newcomer, in one small frame.
    history: int = 50
    # A resume sends at most this many messages: a few minutes of a busy room, a few MB.
    resume_max: int = 10_000
    # Broadcast at once (latency) rather than after the commit (nothing seen is ever lost).
    broadcast_after_commit: bool = False
    # A million short messages are a few hundred MB of SQLite; 30 days is a month of context.
    retention_messages: int = 1_000_000
    retention_days: int = 30
    web_root: Path = WEB_ROOT
    welcome: str = "Welcome to the chat server!"
    # Memory for the latest broadcasts, from which histories and resumes are served.
    history_memory: int = 16 * 2**20
    # Seconds between two retention passes: old messages outlive their limit by at most this.
    prune_interval: float = 60.0
