"""Payload masking (RFC 6455 §5.3): octet i of the payload is XORed with octet i % 4 of the key.

Pure Python has no vectorised byte XOR, so the payload becomes one big integer: from_bytes,
one XOR, to_bytes. That's three C loops over the whole payload, and it beat `bytes.translate`
on strided slices with XOR tables (aiohttp, wsproto) at every size we measured
(benchmarks/bench_masking.py). Above a few KiB the payload goes through in cache-sized chunks
against one key integer, built once per call, which roughly doubles throughput. Most of the
remaining cost is the interpreter's byte-at-a-time int/bytes conversion (about 1.2 ns per byte,
so at most about 0.8 GB/s), not memory bandwidth. websockets' C extension reaches about 20 GB/s.
"""

from __future__ import annotations

from .typing import BytesLike

__all__ = ["apply_mask"]

# A module global is faster to call than looking up the int.from_bytes attribute each time.
_from_bytes = int.from_bytes

# Payloads up to this size take the one-shot path. Above it, chunking wins (measured).
_ONE_SHOT_MAX = 4096


def apply_mask(data: BytesLike, mask: bytes) -> bytes:
    """Mask or unmask a payload (RFC 6455 §5.3); the operation is its own inverse.

    Args:
        data: The payload. A memoryview must be C-contiguous.
        mask: The 4-byte masking key. This hot path does not check the length; the frame
            parser always reads exactly 4 bytes.

    Returns:
        ``data`` with octet i XORed with ``mask[i % 4]``.
    """
    n = len(data)
    if n <= _ONE_SHOT_MAX:
        # Big-endian, so the key's first octet lines up with the payload's first octet.
        return (_from_bytes(data) ^ _from_bytes((mask * ((n >> 2) + 1))[:n])).to_bytes(n)
    # Chunks of 2..32 KiB (about n / 16): they stay in L2, far below glibc's 128 KiB mmap
    # threshold, and the key integer is built once. A multiple of 4 keeps the key aligned.
    size = 1 << min(max(n.bit_length() - 4, 11), 15)
    key = _from_bytes(mask * (size >> 2))
    end = n - n % size
    chunks = [(_from_bytes(data[i : i + size]) ^ key).to_bytes(size) for i in range(0, end, size)]
    if end < n:
        tail = n - end
        # The tail starts at a multiple of 4, so it needs the key's top `tail` octets.
        chunks.append((_from_bytes(data[end:]) ^ (key >> ((size - tail) << 3))).to_bytes(tail))
    return b"".join(chunks)
