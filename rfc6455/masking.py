"""Payload masking (RFC 6455 §5.3): octet i of the payload is XORed with octet i % 4 of the key.

Below 512 bytes one big-integer XOR (from_bytes, ^, to_bytes) wins because it makes the fewest
calls; the key is spread over the payload's length by one multiplication. From 512 bytes up,
``bytearray.translate`` wins: a precomputed XOR table per key octet, applied to the strided
slices ``out[j::4]`` (benchmarks/bench_masking.py). Either way the limit is the interpreter's
byte-at-a-time C loops (about 1 ns per byte, so about 0.9 GB/s), not memory bandwidth.
websockets' C extension XORs 8 bytes at a time and does 20 to 50 GB/s.
"""

from __future__ import annotations

import struct

from .typing import BytesLike

__all__ = ["SHIFT", "SPREAD", "apply_mask", "unmask_payload", "unpack_key"]

# A module global is faster to call than the int.from_bytes attribute.
_from_bytes = int.from_bytes
unpack_key = struct.Struct("!I").unpack_from

# _XOR_TABLES[k][b] == b ^ k: 64 KiB, built in well under a millisecond with one integer XOR
# per table (k * 0x0101...01 repeats octet k 256 times).
_IDENTITY = _from_bytes(bytes(range(256)))
_REPEAT_OCTET = _from_bytes(b"\x01" * 256)
_XOR_TABLES = [(_IDENTITY ^ k * _REPEAT_OCTET).to_bytes(256) for k in range(256)]

# From this size up translate beats the big integer. Its twelve C calls cost more up front,
# but each byte is cheaper (measured crossover about 512 to 640 bytes on CPython 3.11).
_TRANSLATE_MIN = 512

# The key k, read as a big-endian 32-bit integer, repeated over n octets is
# k * SPREAD[n] >> SHIFT[n]: SPREAD[n] has a set bit every 32 (ceil(n / 4) of them) and the
# shift drops the octets past n. One multiplication instead of building a repeated key.
# Public with unpack_key (the key at an offset, as that integer): the parser's short path
# unmasks a small frame with them inline, a function call less per frame.
SPREAD = [((1 << (32 * ((n + 3) >> 2))) - 1) // 0xFFFFFFFF for n in range(_TRANSLATE_MIN)]
SHIFT = [(-n % 4) * 8 for n in range(_TRANSLATE_MIN)]


def apply_mask(data: BytesLike, mask: bytes) -> bytes:
    """Mask or unmask a payload (RFC 6455 §5.3); the operation is its own inverse.

    Args:
        data: The payload. A memoryview must be C-contiguous.
        mask: The 4-byte masking key.

    Returns:
        ``data`` with octet i XORed with ``mask[i % 4]``.
    """
    n = len(data)
    if n < _TRANSLATE_MIN:
        # Big-endian, so the key's first octet lines up with the payload's first octet.
        return (_from_bytes(data) ^ _from_bytes(mask) * SPREAD[n] >> SHIFT[n]).to_bytes(n)
    out = bytearray(data)
    _translate(out, _from_bytes(mask))
    return bytes(out)


def unmask_payload(buffer: BytesLike, start: int, stop: int) -> bytes | bytearray:
    """Unmask ``buffer[start:stop]``, a frame's payload, whose key is the 4 bytes before it.

    The same as ``apply_mask(buffer[start:stop], buffer[start - 4:start])`` with fewer
    copies: the parser's hot path. From 512 bytes up the result is the bytearray that was
    unmasked in place, since text is decoded from it as well; binary data needs ``bytes()``.
    """
    n = stop - start
    key: int = unpack_key(buffer, start - 4)[0]
    if n < _TRANSLATE_MIN:
        return (_from_bytes(buffer[start:stop]) ^ key * SPREAD[n] >> SHIFT[n]).to_bytes(n)
    out = buffer[start:stop]
    if type(out) is not bytearray:
        out = bytearray(out)
    _translate(out, key)
    return out


def _translate(out: bytearray, key: int) -> None:
    """XOR ``out`` in place with the key (as a big-endian integer), one slice per key octet."""
    # bytearray.translate: unlike bytes.translate, its loop has no "changed?" branch.
    out[0::4] = out[0::4].translate(_XOR_TABLES[key >> 24])
    out[1::4] = out[1::4].translate(_XOR_TABLES[key >> 16 & 0xFF])
    out[2::4] = out[2::4].translate(_XOR_TABLES[key >> 8 & 0xFF])
    out[3::4] = out[3::4].translate(_XOR_TABLES[key & 0xFF])
