"""``python -m server.client URL``: the chat's console client.

It is the generic console of :mod:`rfc6455.aio.console` (its options, its output, its
handling of Ctrl-C and of the end of input) with the chat's hooks: commands typed
(:mod:`.commands`), an outbox of unconfirmed messages (:mod:`.outbox`), the resume
positions of each channel (:mod:`.positions`, :mod:`.uri`), the events shown as short lines
(:mod:`.render`), and reconnecting (:mod:`.session`).
"""

from __future__ import annotations

from .cli import main, parse_args
from .session import ChatClient

__all__ = ["ChatClient", "main", "parse_args"]
