"""RecentIds: the clientMsgIds a channel saw lately, so that a message sent twice is stored once.

A client that loses its connection before the ack cannot know whether its message was stored;
it sends it again, with the same clientMsgId, and the server answers the second with the first
one's seq (exactly once within the window). Each channel keeps at most ``most`` ids, each for
``window`` seconds: memory is bounded by the channel's count of ids, not by time.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_MOST", "DEFAULT_WINDOW", "Entry", "RecentIds"]

# Ten minutes cover a reconnect, a laptop lid closed for a coffee, a train tunnel.
DEFAULT_WINDOW = 600.0
# Per channel: 10,000 ids of about 200 bytes each are 2 MB at the most, and at 16 messages a
# second for ten minutes a busy channel still recognises every resend.
DEFAULT_MOST = 10_000


@dataclass(slots=True)
class Entry:
    """A message's seq, and whether it is settled (stored; its duplicates get an ack at once)."""

    seq: int
    expires: float
    settled: bool = False


class RecentIds:
    """The latest (sender, clientMsgId) pairs of one channel, oldest first.

    Args:
        window: Seconds an id is remembered.
        most: The most ids remembered; the oldest goes first.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        window: float = DEFAULT_WINDOW,
        most: int = DEFAULT_MOST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.most = most
        self._clock = clock
        self._entries: collections.OrderedDict[tuple[str, str], Entry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, sender: str, client_msg_id: str) -> Entry | None:
        """The entry of a message already published, if it is remembered still."""
        self.expire()
        return self._entries.get((sender, client_msg_id))

    def add(self, sender: str, client_msg_id: str, seq: int, *, age: float = 0.0) -> Entry:
        """Remember a message just published (``age`` seconds ago, for those loaded)."""
        entry = Entry(seq, self._clock() + self.window - age, settled=age > 0)
        entries = self._entries
        entries[(sender, client_msg_id)] = entry
        while len(entries) > self.most:
            entries.popitem(last=False)
        return entry

    def discard(self, sender: str, client_msg_id: str, seq: int) -> None:
        """Forget a message that could not be stored: sent again, it is stored anew."""
        key = (sender, client_msg_id)
        entry = self._entries.get(key)
        if entry is not None and entry.seq == seq:
            del self._entries[key]

    def expire(self) -> None:
        """Forget the ids older than the window."""
        entries, now = self._entries, self._clock()
        while entries:
            first = next(iter(entries.values()))
            if first.expires > now:
                return
            entries.popitem(last=False)
