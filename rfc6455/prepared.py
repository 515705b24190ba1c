"""A message encoded once for many server connections, plain and compressed.

A broadcast writes the same frame to every receiver (server frames are not
masked, RFC 6455 §5.1). With permessage-deflate the frame depends on what each
connection negotiated: :meth:`PreparedMessage.frame_for` gives the plain
frame to a connection without the extension (or for a message under its
threshold), and to every connection that compresses without context the
compressed frame of its parameters, compressed once for all of them
(RFC 7692 §7.1.1: with no context takeover, a message's compressed form
depends on it alone).
"""

from __future__ import annotations

from .deflate import PerMessageDeflate, shared_compress
from .frames import Opcode, serialize_frame
from .typing import BytesLike, Data

__all__ = ["PreparedMessage"]


class PreparedMessage:
    """One text or binary message, with each of its frames made once when first asked.

    Args:
        message: ``str`` for a text message, bytes for binary.
        text: with ``bytes``, send them as a text message (already UTF-8).
    """

    __slots__ = ("_compressed", "frame", "opcode", "payload")

    def __init__(self, message: Data | BytesLike, *, text: bool = False) -> None:
        if isinstance(message, str):
            self.opcode = Opcode.TEXT
            self.payload: bytes = message.encode()
        else:
            self.opcode = Opcode.TEXT if text else Opcode.BINARY
            self.payload = bytes(message)
        #: The plain frame.
        self.frame = serialize_frame(self.opcode, self.payload)
        self._compressed: dict[tuple[int, int, int], bytes] | None = None

    @property
    def size(self) -> int:
        """The plain frame's length: what the message costs a receiver at most, about."""
        return len(self.frame)

    def frame_for(self, deflate: PerMessageDeflate | None) -> bytes | None:
        """The frame to write to a connection with ``deflate`` (None: no extension).

        Returns:
            The plain or the shared compressed frame; None when that connection
            compresses with context and must compress the message itself.
        """
        if deflate is None or len(self.payload) < deflate.threshold:
            return self.frame
        key = deflate.shared_key
        if key is None:
            return None
        compressed = self._compressed
        if compressed is None:
            compressed = self._compressed = {}
        frame = compressed.get(key)
        if frame is None:
            payload = shared_compress(key, self.payload)
            # RFC 7692 §6: compressing is per message; a longer result is not worth sending.
            frame = compressed[key] = (
                serialize_frame(self.opcode | 0x40, payload)
                if len(payload) < len(self.payload)
                else self.frame
            )
        return frame
