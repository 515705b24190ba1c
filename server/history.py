"""History: the latest broadcast payloads in memory, and what a connecting client gets of them.

A new client gets the last N messages; a client that comes back with ``?since=<seq>&epoch=<id>``
gets every message after ``since`` instead, if they are all still kept. Either way the history
is built in the same event-loop step as the client is registered for live broadcasts, so
nothing falls between the history and the first live message, and nothing is in both.

The ring holds the payloads exactly as broadcast (UTF-8 JSON), so a history item is byte for
byte a broadcast. It is bounded by a count and by a total size, but it never drops a message
the writer has not finished with (committed or dead-lettered): whatever it no longer holds is
therefore in the database, or lost for good, and a resume that reaches further back reads the
database for that part (``Plan.read_after``).

What one client is sent is bounded in bytes as well as in messages: a history holds the latest
messages that fit in ``max_bytes``, and a resume whose missed messages do not fit, or number
more than ``resume_max``, gets the latest messages with ``recovered: false`` instead. Messages
are counted, not seqs: after a crash the server skips the seqs it had reserved, and those hold
no messages a client could have missed.
"""

from __future__ import annotations

import collections
import itertools
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs

__all__ = ["Budget", "History", "Plan", "Resume", "payload_size"]

# A seq as a query parameter: ASCII digits, few enough for any real seq (2**63 has 19).
_SEQ = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True, slots=True)
class Resume:
    """A reconnecting client's position: the last seq it has, in the epoch it had it from."""

    since: int
    epoch: str

    @classmethod
    def from_query(cls, query: str) -> Resume | None:
        """Read ``since`` (a whole number >= 0) and ``epoch`` from a query string.

        Returns:
            None unless both are present and valid: the client then gets a plain history.
        """
        values = parse_qs(query)
        since, epoch = values.get("since", []), values.get("epoch", [])
        if len(since) != 1 or len(epoch) != 1 or not _SEQ.fullmatch(since[0]):
            return None
        return cls(int(since[0]), epoch[0])


@dataclass(frozen=True, slots=True)
class Plan:
    """The history one client gets.

    Attributes:
        messages: Payloads from memory, oldest first.
        recovered: Whether this is exactly everything after the client's ``since``.
        read_after: If not None, the messages with ``read_after < seq <= read_through`` must be
            read from the database and go before ``messages``.
        read_through: See ``read_after``.
        read_count: The most messages that read may bring for the resume to be recovered.
        read_bytes: The most payload bytes it may bring (``payload_size``); None: any.
        fallback: What to send instead (with ``recovered`` False) if that read fails or
            brings more.
    """

    messages: list[bytes]
    recovered: bool
    read_after: int | None = None
    read_through: int = 0
    read_count: int = 0
    read_bytes: int | None = None
    fallback: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class Budget:
    """The bytes that several rings hold together, against the most they may."""

    limit: int
    used: int = 0


def payload_size(payloads: list[bytes]) -> int:
    """What payloads add to a history message: their bytes and the commas between them."""
    return sum(map(len, payloads)) + len(payloads)


class History:
    """The latest broadcast payloads, and the bounds of what the chat still keeps.

    Args:
        epoch: The database's epoch.
        max_messages: The most payloads held.
        max_bytes: The most payload bytes held.
        finished: The highest seq the writer is done with (everything stored at start-up).
        pruned: The highest seq deleted by retention.
        evicted: The highest seq stored but not held: ``load()`` brings the latest of them.
        budget: Shared with other rings, which count their bytes in it too.
    """

    def __init__(
        self,
        epoch: str,
        *,
        max_messages: int,
        max_bytes: int,
        finished: int,
        pruned: int,
        evicted: int = 0,
        budget: Budget | None = None,
    ) -> None:
        self.epoch = epoch
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._entries: collections.deque[tuple[int, bytes]] = collections.deque()
        self._bytes = 0
        self._budget = Budget(max_bytes) if budget is None else budget
        self._finished = finished
        # Every message above this seq is in the ring (or was never stored).
        self._evicted = evicted
        self._pruned = pruned

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def pruned(self) -> int:
        """The highest seq deleted by retention."""
        return self._pruned

    @property
    def evicted(self) -> int:
        """Every message above this seq is held (or was never stored)."""
        return self._evicted

    def load(self, stored: list[tuple[int, bytes]], *, complete: bool, through: int) -> None:
        """Put the latest stored payloads before those held, oldest first.

        Args:
            stored: (seq, payload) pairs in seq order, all at most ``through``.
            complete: Whether these are all the stored messages up to ``through``.
            through: ``evicted`` when the read began: if the ring has dropped messages since,
                what was read no longer joins what it holds, and is left out.
        """
        if self._evicted != through:
            return
        if complete:
            self._evicted = self._pruned
        elif stored:
            self._evicted = stored[0][0] - 1
        self._entries.extendleft(reversed(stored))
        self._resize(sum(len(payload) for _, payload in stored))
        self._trim()

    def append(self, seq: int, payload: bytes) -> None:
        """Add the payload of a message just broadcast (seqs must increase)."""
        self._entries.append((seq, payload))
        self._resize(len(payload))
        self._trim()

    @property
    def size(self) -> int:
        """The payload bytes held."""
        return self._bytes

    def shrink(self, most: int) -> None:
        """Drop the oldest payloads the writer is done with until at most ``most`` bytes are
        held (those it is not done with stay)."""
        entries = self._entries
        while entries and self._bytes > most and entries[0][0] <= self._finished:
            seq, payload = entries.popleft()
            self._resize(-len(payload))
            self._evicted = seq

    def release(self) -> None:
        """Give the ring's bytes back to the budget: the ring is no longer used."""
        self._resize(-self._bytes)
        self._entries.clear()

    def _resize(self, delta: int) -> None:
        self._bytes += delta
        self._budget.used += delta

    def settled(self) -> bool:
        """Whether the writer is done with every payload held."""
        return not self._entries or self._entries[-1][0] <= self._finished

    def finished(self, seq: int) -> None:
        """The writer is done with every message up to ``seq``: the ring may drop them."""
        self._finished = max(self._finished, seq)
        self._trim()

    def pruned_through(self, seq: int) -> None:
        """Retention deleted every message up to ``seq``: forget them here too."""
        self._pruned = max(self._pruned, seq)
        self._evicted = max(self._evicted, seq)
        entries = self._entries
        while entries and entries[0][0] <= seq:
            self._resize(-len(entries.popleft()[1]))

    def last(self, n: int, max_bytes: int | None = None) -> list[bytes]:
        """The latest payloads held, at most ``n`` of them and ``max_bytes``, oldest first."""
        latest: list[bytes] = []
        room = max_bytes
        for _, payload in itertools.islice(reversed(self._entries), max(0, n)):
            if room is not None:
                room -= len(payload) + 1
                if room < 0:
                    break
            latest.append(payload)
        latest.reverse()
        return latest

    def plan(
        self,
        resume: Resume | None,
        *,
        last: int,
        count: int,
        resume_max: int,
        max_bytes: int | None = None,
    ) -> Plan | None:
        """Decide what a connecting client gets; to be used in the step that registers it.

        Args:
            resume: The client's position, if it asked to resume.
            last: The last seq handed out.
            count: How many messages a client that does not resume gets (``--history``).
            resume_max: The most messages a resume may send (``--resume-max``).
            max_bytes: The most payload bytes a history may hold (``--history-bytes``).

        Returns:
            None if the client gets no history at all (no resume, and ``count`` is 0).
        """
        if resume is None:
            return Plan(self.last(count, max_bytes), recovered=False) if count > 0 else None
        fallback = Plan(self.last(count, max_bytes), recovered=False)
        since = resume.since
        if resume.epoch != self.epoch or since < self._pruned or since > last:
            return fallback
        newer = self._after(since, resume_max)
        if newer is None:
            return fallback
        room = None if max_bytes is None else max_bytes - payload_size(newer)
        if room is not None and room < 0:
            return fallback
        if since >= self._evicted:
            return Plan(newer, recovered=True)
        return Plan(
            newer,
            recovered=True,
            read_after=since,
            read_through=self._evicted,
            read_count=resume_max - len(newer),
            read_bytes=room,
            fallback=fallback.messages,
        )

    def _after(self, seq: int, most: int) -> list[bytes] | None:
        """The payloads held with a seq above ``seq``, oldest first; None if over ``most``."""
        newer: list[bytes] = []
        for entry_seq, payload in reversed(self._entries):
            if entry_seq <= seq:
                break
            if len(newer) == most:
                return None
            newer.append(payload)
        newer.reverse()
        return newer

    def _trim(self) -> None:
        entries = self._entries
        while (
            entries
            and (len(entries) > self.max_messages or self._bytes > self.max_bytes)
            and entries[0][0] <= self._finished
        ):
            seq, payload = entries.popleft()
            self._resize(-len(payload))
            self._evicted = seq
