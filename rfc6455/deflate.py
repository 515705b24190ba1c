"""permessage-deflate (RFC 7692): negotiation, and compressing messages with zlib.

Negotiation happens in the opening handshake: the client offers
(``client_offer``), the server picks the first offer it can honour
(``server_negotiate``, §5 and §7.1) or answers without the extension, and the
client checks the answer (``client_accept``), failing on one that breaks the
rules. Either side then holds a :class:`PerMessageDeflate`, which the
:class:`~rfc6455.protocol.Protocol` calls once per message: RSV1 marks a
compressed message on its first frame (§6).

By default (``Compression()``) neither side keeps a compression context
between messages (``server_no_context_takeover`` and
``client_no_context_takeover``, §7.1.1): a message is compressed by a zlib
object shared by every connection of the thread and flushed with
``Z_FULL_FLUSH``, and inflated by one made for that message, so no zlib
object lives on an idle connection, and a message compressed once can be
sent to every connection that agreed on the same parameters
(:attr:`PerMessageDeflate.shared_key`).

Inflating is bounded: ``max_size`` caps the inflated size of a message and is
checked while inflating (zlib is never asked for more than one byte past
what is left), so a small message that would inflate to gigabytes costs at
most ``max_size`` bytes before the connection fails with 1009.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from .exceptions import InvalidPayloadData, InvalidResponse, PayloadTooBig
from .extensions import ExtensionElement, serialize_extension
from .typing import BytesLike

__all__ = [
    "EXTENSION_NAME",
    "Compression",
    "Inflation",
    "PerMessageDeflate",
    "SharedKey",
    "client_accept",
    "client_offer",
    "server_negotiate",
    "shared_compress",
]

EXTENSION_NAME = "permessage-deflate"

# RFC 7692 §7.2.1: a compressed message's payload is the deflate output with
# its final empty block's "0x00 0x00 0xff 0xff" removed; §7.2.2: the receiver
# appends them again before inflating.
_TAIL = b"\x00\x00\xff\xff"

_PARAMETERS = frozenset(
    {
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    }
)
# RFC 7692 §7.1.2.1: "a decimal integer value without leading zeroes between 8 to 15".
_WINDOW_BITS = {str(bits): bits for bits in range(8, 16)}
# zlib's deflateInit2 refuses a raw window of 8 bits (it used to write streams
# that need 9): a peer that asks for 8 gets nothing compressed by us, and an
# inflater always has at least 9, which reads any stream written with 8.
_MIN_ZLIB_BITS = 9
# Inflating goes this many bytes of input and of output at a time (see
# Inflation.feed): a chat message takes one step, and a step's copies
# are what a bomb costs on top of its max_size.
_IN_STEP = 16 * 1024
_OUT_STEP = 64 * 1024


@dataclass(frozen=True, slots=True)
class Compression:
    """How an endpoint uses permessage-deflate; ``None`` in its place turns it off.

    Attributes:
        context_takeover: keep each direction's zlib context between messages
            (a better ratio, and some 110 KiB per connection at 15 bits);
            False asks for ``server_no_context_takeover`` and
            ``client_no_context_takeover`` (RFC 7692 §7.1.1), so that no zlib
            object lives between messages.
        window_bits: the LZ77 window this side compresses with, and asks the
            peer to compress with when context is kept (§7.1.2); 9 to 15.
        threshold: messages shorter than this many bytes are sent
            uncompressed (§6: compressing is per message): chat JSON under
            256 B saves under 70 bytes, for some 5 to 15 µs of zlib at each end.
        level: zlib's compression level, 1 (fast) to 9 (small). 1: a 1 KiB chat
            message comes out 2% larger than at zlib's default of 6, and 16 KiB of
            it 9% larger in a third of the time or less (``benchmarks/README.md``).
        mem_level: zlib's memLevel, 1 to 9: memory for the compressor's state.
    """

    context_takeover: bool = False
    window_bits: int = 15
    threshold: int = 256
    level: int = 1
    mem_level: int = 8

    def __post_init__(self) -> None:
        if not _MIN_ZLIB_BITS <= self.window_bits <= 15:
            raise ValueError("Compression.window_bits must be 9 to 15")
        if self.threshold < 0:
            raise ValueError("Compression.threshold must be >= 0")
        if not 0 <= self.level <= 9 or not 1 <= self.mem_level <= 9:
            raise ValueError("Compression.level is 0 to 9 and mem_level 1 to 9")


# The server's answers, interned: there are a few hundred at most (two flags, two
# window sizes), and each connection would otherwise hold a copy of its own.
_ANSWERS: dict[tuple[tuple[str, str | None], ...], ExtensionElement] = {}
# And its header value, which each connection's response holds.
_HEADERS: dict[ExtensionElement, str] = {}
# The extension itself, when it keeps no state: the connections share it.
_STATELESS: dict[tuple[ExtensionElement, Compression], PerMessageDeflate] = {}
# (window bits, level, memLevel, threshold): what decides a message's compressed form.
SharedKey = tuple[int, int, int, int]
_KEYS: dict[SharedKey, SharedKey] = {}


class _SharedCompressors(threading.local):
    """One zlib compressor per parameter set and thread, for messages without context."""

    def __init__(self) -> None:
        self.by_key: dict[SharedKey, zlib._Compress] = {}


_shared = _SharedCompressors()


def _compressor(bits: int, level: int, mem_level: int) -> zlib._Compress:
    return zlib.compressobj(level, zlib.DEFLATED, -bits, mem_level)


def _inflater(bits: int) -> zlib._Decompress:
    return zlib.decompressobj(-max(bits, _MIN_ZLIB_BITS))


class PerMessageDeflate:
    """permessage-deflate on one connection, as negotiated (RFC 7692 §6, §7).

    Args:
        response: the agreed element, as the server's response carries it.
        compression: this side's settings.
        compress_bits: the window this side compresses with, or None when it
            may not compress at all (a window of 8 bits, see ``_MIN_ZLIB_BITS``).
        compress_context: whether this side keeps its context between messages.
        inflate_bits: the window the peer compresses with.
        inflate_context: whether the peer may refer to earlier messages.
    """

    __slots__ = (
        "_compress_bits",
        "_compress_context",
        "_compressor",
        "_inflate_bits",
        "_inflate_context",
        "_inflater",
        "compression",
        "response",
        "shared_key",
        "threshold",
    )

    def __init__(
        self,
        response: ExtensionElement,
        compression: Compression,
        *,
        compress_bits: int | None,
        compress_context: bool,
        inflate_bits: int,
        inflate_context: bool,
    ) -> None:
        self.response = response
        self.compression = compression
        self.threshold = compression.threshold
        self._compress_bits = compress_bits
        self._compress_context = compress_context
        self._inflate_bits = inflate_bits
        self._inflate_context = inflate_context
        self._compressor: zlib._Compress | None = None
        self._inflater: zlib._Decompress | None = None
        #: Connections whose ``shared_key`` is the same object (and not None) turn a
        #: message into the same frame: a broadcast compresses it once for them all.
        self.shared_key: SharedKey | None = None
        if compress_bits is not None and not compress_context:
            key = (compress_bits, compression.level, compression.mem_level, self.threshold)
            self.shared_key = _KEYS.setdefault(key, key)  # one tuple for every connection

    def __repr__(self) -> str:
        return f"PerMessageDeflate({serialize_extension(self.response.name, self.response.params)})"

    # Sending (RFC 7692 §7.2.1)

    def compress(self, data: BytesLike) -> bytes | None:
        """The payload of ``data`` as a compressed message, or None to send it as it is.

        None for a message under ``threshold`` bytes, when this side may not
        compress, and (without context, where dropping the output costs
        nothing) when compressing would not make it shorter.
        """
        if len(data) < self.threshold or self._compress_bits is None:
            return None
        key = self.shared_key
        if key is None:
            compressor = self._compressor
            if compressor is None:
                compressor = self._compressor = _compressor(
                    self._compress_bits, self.compression.level, self.compression.mem_level
                )
            return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
        payload = shared_compress(key, data)
        return payload if len(payload) < len(data) else None

    # Receiving (RFC 7692 §7.2.2)

    @property
    def stateless(self) -> bool:
        """Whether it keeps nothing between messages, so connections may share it."""
        return self.shared_key is not None and not self._inflate_context

    def inflate(self, data: BytesLike, max_size: int | None) -> bytes:
        """Inflate a whole compressed message, at most ``max_size`` bytes of it.

        Raises:
            PayloadTooBig: it inflates to more than ``max_size`` bytes.
            InvalidPayloadData: it is not valid deflate data.
        """
        inflation = self.start(max_size)
        if len(data) < _IN_STEP:
            # One call to zlib: the tail (§7.2.2) is worth a copy of a small message.
            output = inflation.feed(bytes(data) + _TAIL)
            self._ended(inflation._inflater)
            return output
        output = inflation.feed(data)
        rest = inflation.finish()
        return output + rest if rest else output

    def start(self, max_size: int | None) -> Inflation:
        """Begin inflating a message of at most ``max_size`` inflated bytes."""
        inflater = self._inflater
        if inflater is None:
            inflater = _inflater(self._inflate_bits)
            if self._inflate_context:
                self._inflater = inflater
        return Inflation(self, inflater, max_size)

    def _ended(self, inflater: zlib._Decompress) -> None:
        # After a final block (BFINAL, §7.2.3.4) the next message starts a new stream.
        if inflater.eof and self._inflater is inflater:
            self._inflater = None


class Inflation:
    """One compressed message being inflated, within its ``max_size`` (RFC 7692 §7.2.2).

    The protocol holds it from the message's first frame to its last, so that
    nothing of it is left on the connection between messages.
    """

    __slots__ = ("_extension", "_inflater", "_remaining")

    def __init__(
        self, extension: PerMessageDeflate, inflater: zlib._Decompress, max_size: int | None
    ) -> None:
        self._extension = extension
        self._inflater = inflater
        self._remaining = max_size

    def feed(self, data: BytesLike) -> bytes:
        """Inflate the next piece of the message's payload.

        zlib is never asked for more than one byte past what is left of
        ``max_size``: if it gives that byte, the message is too big, whether
        the rest of the input still waits (``unconsumed_tail``) or zlib still
        holds the output of input it took (websockets #1715 missed the
        latter). It is fed ``_IN_STEP`` bytes and asked for ``_OUT_STEP`` at
        a time, so that a bomb costs the ``max_size`` bytes of output it is
        allowed, not copies of its input and of zlib's output blocks as well.

        Raises:
            PayloadTooBig: the message inflates to more than ``max_size`` bytes.
            InvalidPayloadData: it is not valid deflate data.
        """
        if len(data) <= _IN_STEP:
            return self._step(data)
        view = memoryview(data)
        return b"".join([self._step(view[i : i + _IN_STEP]) for i in range(0, len(view), _IN_STEP)])

    def _step(self, chunk: BytesLike) -> bytes:
        """Inflate at most ``_IN_STEP`` bytes, asking zlib for ``_OUT_STEP`` at a time."""
        inflater = self._inflater
        remaining = self._remaining
        pieces: list[bytes] = []
        try:
            while True:
                step = _OUT_STEP if remaining is None else min(_OUT_STEP, remaining + 1)
                output = inflater.decompress(chunk, step)
                if remaining is not None:
                    if len(output) > remaining:
                        raise PayloadTooBig("message over max_size bytes once inflated")
                    remaining -= len(output)
                chunk = inflater.unconsumed_tail
                # Less than asked for, and no input left: zlib holds nothing more.
                if not chunk and len(output) < step:
                    break
                pieces.append(output)
        except zlib.error as exc:
            raise InvalidPayloadData(f"invalid compressed data: {exc}") from None
        self._remaining = remaining
        if pieces:
            pieces.append(output)
            return b"".join(pieces)
        return output

    def finish(self) -> bytes:
        """End the message: inflate the tail the sender removed (§7.2.2)."""
        output = self.feed(_TAIL)
        self._extension._ended(self._inflater)
        return output


def shared_compress(key: SharedKey, data: BytesLike) -> bytes:
    """Compress a message without context, with this thread's compressor for ``key``.

    ``Z_FULL_FLUSH`` ends the output on a byte boundary, as ``Z_SYNC_FLUSH``
    does (the 4 bytes removed here), and also empties the window, so that the
    next message, whichever connection it is for, refers to nothing before it.
    """
    compressor = _shared.by_key.get(key)
    if compressor is None:
        compressor = _shared.by_key[key] = _compressor(key[0], key[1], key[2])
    return (compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH))[:-4]


def _read_params(params: Sequence[tuple[str, str | None]]) -> dict[str, str | None] | None:
    """The parameters by name; None if one is unknown or repeated (§7.1: declined)."""
    found: dict[str, str | None] = {}
    for name, value in params:
        if name not in _PARAMETERS or name in found:
            return None
        found[name] = value
    return found


def _flag(params: dict[str, str | None], name: str) -> bool | None:
    """Whether a valueless parameter is there; None if it came with a value."""
    if name not in params:
        return False
    return True if params[name] is None else None


def server_negotiate(
    offers: Sequence[ExtensionElement], compression: Compression
) -> tuple[str, PerMessageDeflate] | None:
    """Accept the first permessage-deflate offer this server can honour (RFC 7692 §5, §7.1).

    An offer with an unknown, repeated or invalid parameter is declined, and
    so is one asking for ``server_max_window_bits=8`` (zlib cannot compress
    with it); the next one is tried.

    Returns:
        The ``Sec-WebSocket-Extensions`` value of the response and the
        extension, or None to answer without it.
    """
    for offer in offers:
        if offer.name != EXTENSION_NAME:
            continue
        accepted = _accept_offer(offer, compression)
        if accepted is not None:
            return _HEADERS[accepted.response], accepted
    return None


def _accept_offer(offer: ExtensionElement, compression: Compression) -> PerMessageDeflate | None:
    params = _read_params(offer.params)
    if params is None:
        return None
    server_no_context = _flag(params, "server_no_context_takeover")
    client_no_context = _flag(params, "client_no_context_takeover")
    if server_no_context is None or client_no_context is None:
        return None
    # §7.1.2.1: a value is required; §7.1.2.2: client_max_window_bits may come without one.
    server_bits: int | None = None
    if "server_max_window_bits" in params:
        server_bits = _WINDOW_BITS.get(params["server_max_window_bits"] or "")
        if server_bits is None or server_bits < _MIN_ZLIB_BITS:
            return None
    client_bits: int | None = None
    client_bits_offered = "client_max_window_bits" in params
    if client_bits_offered and params["client_max_window_bits"] is not None:
        client_bits = _WINDOW_BITS.get(params["client_max_window_bits"] or "")
        if client_bits is None:
            return None
    keep = compression.context_takeover
    response: list[tuple[str, str | None]] = []
    # §7.1.1.1: accepted by including it; §7.1.1.2: a server may ask it unasked.
    compress_context = keep and not server_no_context
    if not compress_context:
        response.append(("server_no_context_takeover", None))
    inflate_context = keep
    if not inflate_context:
        response.append(("client_no_context_takeover", None))
    compress_bits = compression.window_bits
    if server_bits is not None:
        # §7.1.2.1: "the same or smaller value as the offer".
        compress_bits = min(server_bits, compress_bits)
        response.append(("server_max_window_bits", str(compress_bits)))
    inflate_bits = client_bits or 15
    if keep and client_bits_offered:
        # §7.1.2.2: only if offered; the client's inflater then holds less.
        inflate_bits = min(inflate_bits, compression.window_bits)
        response.append(("client_max_window_bits", str(inflate_bits)))
    answer = tuple(response)
    element = _ANSWERS.get(answer)
    if element is None:
        element = _ANSWERS[answer] = ExtensionElement(EXTENSION_NAME, answer)
        _HEADERS[element] = serialize_extension(EXTENSION_NAME, answer)
    shared = _STATELESS.get((element, compression))
    if shared is not None:
        return shared
    extension = PerMessageDeflate(
        element,
        compression,
        compress_bits=compress_bits,
        compress_context=compress_context,
        inflate_bits=inflate_bits,
        inflate_context=inflate_context,
    )
    if extension.stateless:
        # Nothing of it changes between messages (an Inflation holds a message's
        # state): every connection with this answer and these settings shares it.
        _STATELESS[element, compression] = extension
    return extension


def client_offer(compression: Compression) -> str:
    """The ``Sec-WebSocket-Extensions`` value a client offers (RFC 7692 §5.1, §7.1).

    It always accepts any ``client_max_window_bits`` (§7.1.2.2), and without
    context takeover asks for none in either direction.
    """
    bits = compression.window_bits
    params: list[tuple[str, str | None]] = [
        ("client_max_window_bits", None if bits == 15 else str(bits))
    ]
    if not compression.context_takeover:
        params += [("server_no_context_takeover", None), ("client_no_context_takeover", None)]
    if bits < 15:
        params.append(("server_max_window_bits", str(bits)))
    return serialize_extension(EXTENSION_NAME, params)


def client_accept(
    elements: Sequence[ExtensionElement], compression: Compression
) -> PerMessageDeflate | None:
    """Check the server's answer to ``client_offer`` (RFC 7692 §5.1, §7.1).

    Returns:
        The extension, or None if the server declined it.

    Raises:
        InvalidResponse: the answer breaks RFC 7692: another extension, the
            extension twice, an unknown, repeated or invalid parameter, or one
            that contradicts the offer; §5.1 says the client then "MUST
            _Fail the WebSocket Connection_".
    """
    if not elements:
        return None
    if len(elements) > 1 or elements[0].name != EXTENSION_NAME:
        names = ", ".join(element.name for element in elements)
        raise InvalidResponse(f"server selected extensions that were not offered: {names}")
    response = elements[0]
    params = _read_params(response.params)
    if params is None:
        raise InvalidResponse("server's permessage-deflate has unknown or repeated parameters")
    server_no_context = _flag(params, "server_no_context_takeover")
    client_no_context = _flag(params, "client_no_context_takeover")
    if server_no_context is None or client_no_context is None:
        raise InvalidResponse("server's permessage-deflate has a no_context_takeover with a value")
    keep = compression.context_takeover
    if not keep and not server_no_context:
        # §7.1.1.1: the offer asked for it, and accepting the offer means including it.
        raise InvalidResponse("server's permessage-deflate omits server_no_context_takeover")
    bits = compression.window_bits
    server_bits = _response_bits(params, "server_max_window_bits")
    if bits < 15 and (server_bits is None or server_bits > bits):
        # §7.1.2.1: an offer with server_max_window_bits is accepted with it, same or smaller.
        raise InvalidResponse(f"server's permessage-deflate needs server_max_window_bits <= {bits}")
    client_bits = _response_bits(params, "client_max_window_bits")
    if client_bits is not None and client_bits > bits:
        raise InvalidResponse(f"server's permessage-deflate needs client_max_window_bits <= {bits}")
    compress_bits = min(bits, client_bits or 15)
    return PerMessageDeflate(
        response,
        compression,
        compress_bits=compress_bits if compress_bits >= _MIN_ZLIB_BITS else None,
        compress_context=keep and not client_no_context,
        inflate_bits=server_bits or 15,
        inflate_context=not server_no_context,
    )


def _response_bits(params: dict[str, str | None], name: str) -> int | None:
    """A window size of the response: 8 to 15, or None when absent."""
    if name not in params:
        return None
    bits = _WINDOW_BITS.get(params[name] or "")
    if bits is None:
        raise InvalidResponse(f"server's permessage-deflate has an invalid {name}")
    return bits
