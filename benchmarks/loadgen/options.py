"""What to run (the command line's values) and how it is split across worker processes."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MODES", "Options", "Share", "split"]

MODES = ("echo", "broadcast", "connect", "subscribe")
_WITH_SENDERS = frozenset({"broadcast", "subscribe"})


@dataclass(frozen=True, slots=True)
class Options:
    """One run, as given on the command line (see ``benchmarks/load.py`` for the meanings)."""

    mode: str
    url: str
    connections: int = 50
    in_flight: int = 1
    size: int = 32
    duration: float = 10.0
    warmup: float = 1.0
    senders: int = 1
    rate: float = 100.0
    binary: bool = False
    procs: int = 1
    window: int = 16
    fresh_masks: bool = False
    quiet: bool = False
    # The chat channel that broadcast publishes to and subscribe cycles on (None: broadcast
    # sends plain text, which the chat publishes to its default channel).
    channel: str | None = None
    # Broadcast: the URL the senders connect to (None: ``url``, as the receivers): another
    # server of the same chat, so that every delivery crosses from one to the other.
    sender_url: str | None = None
    # Connections being opened at a time (with a channel: until their subscribe is answered).
    open_concurrency: int = 64
    # Latency samples kept in memory across all processes (reservoir sampling beyond).
    sample_cap: int = 1_000_000


@dataclass(frozen=True, slots=True)
class Share:
    """What one worker process runs: its connections and which of them send."""

    index: int
    connections: int
    # Global indices of this worker's senders (broadcast), carried in each message so that
    # receivers can tell senders apart; the first len(senders) connections send. In
    # subscribe mode, the connections that subscribe and unsubscribe again and again.
    senders: tuple[int, ...]
    # Messages/s of each sender (0: as fast as the window allows).
    sender_rate: float
    sample_cap: int


def split(options: Options) -> list[Share]:
    """Split the connections (and senders) as evenly as possible across the processes."""
    connections = options.connections
    procs = max(1, min(options.procs, connections))
    senders = min(options.senders, connections) if options.mode in _WITH_SENDERS else 0
    sender_rate = options.rate / senders if senders else 0.0
    base, extra = divmod(connections, procs)
    cap = math.ceil(options.sample_cap / procs)
    return [
        Share(
            index=i,
            connections=base + (i < extra),
            # Round robin: worker i gets ceil((senders - i) / procs) <= its connections.
            senders=tuple(range(i, senders, procs)),
            sender_rate=sender_rate,
            sample_cap=cap,
        )
        for i in range(procs)
    ]
