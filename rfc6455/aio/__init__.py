"""The asyncio adapter: the only part of the package that imports asyncio."""

from __future__ import annotations

from .broadcast import broadcast
from .client import connect
from .connection import Connection
from .server import Server, serve

__all__ = ["Connection", "Server", "broadcast", "connect", "serve"]
