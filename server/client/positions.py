"""The resume convention, on the client's side: per channel, the last seq seen and its epoch.

They come from ``welcome`` (general's epoch), ``history`` and ``subscribed`` (a channel's
epoch and messages), every ``broadcast`` and every ``ack``. A new epoch is another count of
seqs, so the seq of the old one is forgotten; so is it after ``recovered: false`` (a gap),
the seqs then being those of the messages given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeGuard

from .events import GENERAL, channel_of

__all__ = ["Positions"]


@dataclass
class _Position:
    epoch: str | None = None
    seq: int | None = None


class Positions:
    """Where each channel would resume from."""

    def __init__(self) -> None:
        self._channels: dict[str, _Position] = {}

    def since(self, channel: str) -> tuple[int, str] | None:
        """The highest seq seen in ``channel`` and its epoch; None until both are known."""
        position = self._channels.get(channel)
        if position is None or position.seq is None or position.epoch is None:
            return None
        return position.seq, position.epoch

    def is_new(self, channel: str, seq: object) -> bool:
        """Whether ``seq`` is above the highest seen in ``channel``: not a message shown already."""
        position = self._channels.get(channel)
        known = None if position is None else position.seq
        return known is None or not _is_seq(seq) or seq > known

    def note(self, event: Mapping[str, object]) -> None:
        """Take the epoch and the seqs that an event from the server carries."""
        kind, channel = event.get("type"), channel_of(event)
        if kind == "welcome":
            self._epoch(GENERAL, event.get("epoch"))
        elif kind in ("history", "subscribed"):
            self._epoch(channel, event.get("epoch"))
            if event.get("recovered") is not True:
                self._position(channel).seq = None
            items = event.get("messages")
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict):
                    self._seen(channel, item.get("seq"))
        elif kind in ("broadcast", "ack"):
            self._seen(channel, event.get("seq"))

    def _position(self, channel: str) -> _Position:
        return self._channels.setdefault(channel, _Position())

    def _epoch(self, channel: str, epoch: object) -> None:
        position = self._position(channel)
        if isinstance(epoch, str) and epoch != position.epoch:
            position.epoch, position.seq = epoch, None

    def _seen(self, channel: str, seq: object) -> None:
        if _is_seq(seq):
            position = self._position(channel)
            if position.seq is None or seq > position.seq:
                position.seq = seq


def _is_seq(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
