"""Channel names: what a name may be, its namespace, and the direct-message channels.

A name is 1 to 128 characters of ``[A-Za-z0-9_.:@-]``; the part before the first ``:`` is its
namespace (none for ``general``). ``dm:<a>:<b>`` is the channel of two users' direct messages,
the two names sorted, so that both name the same channel; a user whose name cannot be part of a
channel name (or has a ``:``) has no direct messages.
"""

from __future__ import annotations

import re

from .store import DEFAULT_CHANNEL

__all__ = [
    "DEFAULT_CHANNEL",
    "DIRECT_NAMESPACE",
    "MAX_NAME",
    "check_name",
    "direct_channel",
    "direct_users",
    "namespace_of",
]

#: The most characters of a channel name.
MAX_NAME = 128
#: The namespace of direct messages.
DIRECT_NAMESPACE = "dm"

_NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
_USER = re.compile(r"[A-Za-z0-9_.@-]+")


def check_name(name: object) -> str | None:
    """Why ``name`` is not a channel name, or None if it is one."""
    if not isinstance(name, str):
        return "a channel name is a string"
    if not _NAME.fullmatch(name):
        return f"a channel name is 1 to {MAX_NAME} characters of A-Z, a-z, 0-9, _ . : @ -"
    return None


def namespace_of(name: str) -> str:
    """The part of ``name`` before its first ``:``; ``""`` if it has none."""
    head, colon, _ = name.partition(":")
    return head if colon else ""


def direct_channel(user: str, other: str) -> str | None:
    """The channel of ``user``'s and ``other``'s direct messages; None if either cannot have one."""
    if not (_USER.fullmatch(user) and _USER.fullmatch(other)):
        return None
    first, second = sorted((user, other))
    name = f"{DIRECT_NAMESPACE}:{first}:{second}"
    return name if len(name) <= MAX_NAME else None


def direct_users(name: str) -> tuple[str, str] | None:
    """The two users of a direct-message channel; None if ``name`` is not one."""
    parts = name.split(":")
    if len(parts) != 3 or parts[0] != DIRECT_NAMESPACE:
        return None
    first, second = parts[1], parts[2]
    if direct_channel(first, second) != name:
        return None
    return first, second
