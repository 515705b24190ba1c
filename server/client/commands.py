"""What a line typed into the chat console asks for: a command, or a message to publish."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "HELP",
    "Command",
    "CommandError",
    "Direct",
    "Help",
    "Join",
    "Leave",
    "Publish",
    "Switch",
    "Who",
    "parse",
]

HELP = (
    "commands: /join C, /leave C, /switch C, /who, /msg USER TEXT, /help; "
    "any other line is published to the current channel (//text publishes /text)"
)

# The protocol's channel names: 1-128 characters of [A-Za-z0-9_.:@-].
_CHANNEL = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


@dataclass(frozen=True)
class Publish:
    """Publish ``text`` to ``channel``."""

    channel: str
    text: str


@dataclass(frozen=True)
class Direct:
    """Send ``text`` to the user ``to`` alone."""

    to: str
    text: str


@dataclass(frozen=True)
class Join:
    """Subscribe to ``channel``."""

    channel: str


@dataclass(frozen=True)
class Leave:
    """Unsubscribe from ``channel``."""

    channel: str


@dataclass(frozen=True)
class Switch:
    """Make ``channel`` the one plain lines are published to."""

    channel: str


@dataclass(frozen=True)
class Who:
    """Ask who is in ``channel``."""

    channel: str


@dataclass(frozen=True)
class Help:
    """Show the commands."""


Command = Publish | Direct | Join | Leave | Switch | Who | Help


# The commands whose one argument is a channel.
_ON_A_CHANNEL: dict[str, Callable[[str], Command]] = {
    "join": Join,
    "leave": Leave,
    "switch": Switch,
}


class CommandError(ValueError):
    """A line that starts like a command and is not one; the message says why."""


def parse(line: str, channel: str) -> Command | None:
    """What ``line`` asks for; ``channel`` is the current channel. None for a blank line.

    Raises:
        CommandError: an unknown command, or one with missing or wrong arguments.
    """
    if not line.strip():
        return None
    if not line.startswith("/") or line.startswith("//"):
        return Publish(channel, line.removeprefix("/") if line.startswith("//") else line)
    name, _, rest = line[1:].partition(" ")
    rest = rest.strip()
    if name in _ON_A_CHANNEL:
        if not _CHANNEL.fullmatch(rest):
            raise CommandError(
                f"usage: /{name} CHANNEL (1-128 characters of letters, digits and _.:@-)"
            )
        return _ON_A_CHANNEL[name](rest)
    if name == "msg":
        to, _, text = rest.partition(" ")
        if not to or not text.strip():
            raise CommandError("usage: /msg USER TEXT")
        return Direct(to, text.lstrip())
    if name in ("who", "help"):
        if rest:
            raise CommandError(f"usage: /{name}")
        return Who(channel) if name == "who" else Help()
    raise CommandError(f"unknown command /{name}; {HELP}")
