"""Type aliases shared by the package."""

from __future__ import annotations

__all__ = ["BytesLike", "Data"]

# Anything that can be written to a transport or masked.
BytesLike = bytes | bytearray | memoryview

# A WebSocket message: str for text, bytes for binary (RFC 6455 §5.6).
Data = str | bytes
