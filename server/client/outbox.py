"""The outbox: the messages sent and not confirmed yet, kept to be sent again.

Each publish or direct message gets a clientMsgId (a uuid4) and stays in the outbox until the
server answers it: an ``ack`` (``"duplicate": true`` or not), or an error naming it. After a
reconnect, every one still there is sent again as the same frame, with the same clientMsgId.
The server stores a clientMsgId once per sender, so a message whose ack was lost in the drop
is not stored twice: its ack says ``"duplicate": true`` and carries the original seq.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from .commands import Direct, Publish

__all__ = ["Outbox", "Pending"]

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True)
class Pending:
    """A message waiting for its ack, under its clientMsgId."""

    message: Publish | Direct
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def frame(self) -> str:
        """The JSON text that sends it, the same each time."""
        message = self.message
        head: dict[str, str] = (
            {"type": "direct", "to": message.to}
            if isinstance(message, Direct)
            else {"type": "publish", "channel": message.channel}
        )
        return _dumps({**head, "message": message.text, "clientMsgId": self.id})


class Outbox:
    """The pending messages by clientMsgId, oldest first."""

    def __init__(self) -> None:
        self._pending: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[Pending]:
        """The pending messages as they are now: answers may settle some meanwhile."""
        return iter(list(self._pending.values()))

    def __contains__(self, client_msg_id: object) -> bool:
        return self.get(client_msg_id) is not None

    def add(self, message: Publish | Direct) -> Pending:
        """Keep ``message`` under a new clientMsgId, and return it."""
        pending = Pending(message)
        self._pending[pending.id] = pending
        return pending

    def get(self, client_msg_id: object) -> Pending | None:
        """The message a server's answer names, if it is still pending."""
        return self._pending.get(client_msg_id) if isinstance(client_msg_id, str) else None

    def pop(self, client_msg_id: object) -> Pending | None:
        """Settle the message a server's answer names: it is no longer pending."""
        pending = self.get(client_msg_id)
        if pending is not None:
            del self._pending[pending.id]
        return pending
