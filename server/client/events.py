"""What the chat server sends, read defensively: one JSON object per text message."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from rfc6455.typing import Data

__all__ = ["GENERAL", "channel_of", "parse_event", "retry_after"]

# The default channel: every client is subscribed to it from the start.
GENERAL = "general"

# rate_limited without a usable retryAfterMs: wait this long (seconds) before sending again.
_RETRY_AFTER = 1.0


def parse_event(message: Data) -> dict[str, object] | None:
    """The JSON object of a text message; None for anything else (binary, not JSON, a list)."""
    if isinstance(message, bytes):
        return None
    try:
        value = json.loads(message)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def channel_of(event: Mapping[str, object]) -> str:
    """The channel an event is about: general when it names none (a server before channels)."""
    channel = event.get("channel")
    return channel if isinstance(channel, str) else GENERAL


def retry_after(event: Mapping[str, object]) -> float:
    """Seconds to wait before sending again what a ``rate_limited`` error refused."""
    value = event.get("retryAfterMs")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return max(value, 0) / 1000
    return _RETRY_AFTER
