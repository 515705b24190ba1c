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

from .deflate import PerMessageDeflate, SharedKey, shared_compress
from .frames import Opcode, serialize_frame
from .typing import BytesLike, Data

__all__ = ["PreparedMessage"]


class PreparedMessage:
    """One text or binary message, with each of its frames made once when first asked.

    Args:
        message: ``str`` for a text message, bytes for binary.
        text: with ``bytes``, send them as a text message (already UTF-8).

    Attributes:
        frame: the plain frame.
        size: its length: about what the message costs a receiver, at most.
        last_key: the ``shared_key`` asked for last, and ``last_frame`` its frame:
            a broadcast to connections alike finds its frame with one test.
    """

    __slots__ = ("_frames", "frame", "last_frame", "last_key", "opcode", "payload", "size")

    def __init__(self, message: Data | BytesLike, *, text: bool = False) -> None:
        if isinstance(message, str):
            self.opcode = Opcode.TEXT
            self.payload: bytes = message.encode()
        else:
            self.opcode = Opcode.TEXT if text else Opcode.BINARY
            self.payload = bytes(message)
        self.frame = serialize_frame(self.opcode, self.payload)
        self.size = len(self.frame)
        self.last_key: SharedKey | None = None
        self.last_frame = self.frame
        self._frames: dict[SharedKey, bytes] | None = None

    def frame_for(self, deflate: PerMessageDeflate | None) -> bytes | None:
        """The frame to write to a connection with ``deflate`` (None: no extension).

        Returns:
            The plain or the shared compressed frame; None when that connection
            compresses with context and must compress the message itself.
        """
        if deflate is None:
            return self.frame
        key = deflate.shared_key
        if key is None:
            return None if len(self.payload) >= deflate.threshold else self.frame
        if key is self.last_key:
            return self.last_frame
        frames = self._frames
        if frames is None:
            frames = self._frames = {}
        frame = frames.get(key)
        if frame is None:
            frame = self.frame
            if len(self.payload) >= deflate.threshold:
                payload = shared_compress(key, self.payload)
                # RFC 7692 §6: compressing is per message; a longer result is not worth it.
                if len(payload) < len(self.payload):
                    frame = serialize_frame(self.opcode | 0x40, payload)
            frames[key] = frame
        self.last_key = key
        self.last_frame = frame
        return frame
