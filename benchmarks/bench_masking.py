"""Compare pure-Python masking techniques (RFC 6455 §5.3) with rfc6455.masking.apply_mask.

Run ``python benchmarks/bench_masking.py`` (about 15 s). For each payload size it prints the
best of several ``timeit.repeat`` runs, as µs per call and MB/s (10**6 bytes). ``vs ours`` is
the rfc6455 time divided by the row's time, so a value above 1 means faster than ``apply_mask``.
Before timing, every candidate is checked against the naive definition.

With ``--markdown`` the results also go to stdout as one Markdown table (technique by size, MB/s
and ``vs ours``), ready to paste into benchmarks/README.md; the plain text goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rfc6455.masking import apply_mask
from rfc6455.typing import BytesLike

Masker = Callable[[BytesLike, bytes], bytes]

SIZES = [16, 1024, 64 * 1024, 1024 * 1024]
REPEAT = 7
TARGET = 0.04  # seconds per timeit run

_from_bytes = int.from_bytes
_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]  # _TABLES[k][b] == b ^ k


# (a) One big integer for the whole payload: from_bytes, XOR, to_bytes.
def bigint(data: BytesLike, mask: bytes) -> bytes:
    n = len(data)
    return (_from_bytes(data) ^ _from_bytes((mask * ((n >> 2) + 1))[:n])).to_bytes(n)


# (b) XOR tables with bytes.translate on strided slices of an immutable copy, gathered into a
# new bytearray.
def translate_bytes(data: BytesLike, mask: bytes) -> bytes:
    src = bytes(data)
    out = bytearray(len(src))
    for j in range(4):
        out[j::4] = src[j::4].translate(_TABLES[mask[j]])
    return bytes(out)


# (b) The same with bytearray.translate in place. Its loop has no "did anything change?"
# branch, and strided slicing of a bytearray is faster too. This is apply_mask's large path.
def translate_bytearray(data: BytesLike, mask: bytes) -> bytes:
    out = bytearray(data)
    a, b, c, d = mask
    out[0::4] = out[0::4].translate(_TABLES[a])
    out[1::4] = out[1::4].translate(_TABLES[b])
    out[2::4] = out[2::4].translate(_TABLES[c])
    out[3::4] = out[3::4].translate(_TABLES[d])
    return bytes(out)


# (c) Big integers in 2..32 KiB chunks (about n / 16: in L2 and below glibc's 128 KiB mmap
# threshold) against one key integer built per call; one shot up to 4 KiB.
def _chunks(data: BytesLike, mask: bytes, n: int) -> bytes:
    size = 1 << min(max(n.bit_length() - 4, 11), 15)
    key = _from_bytes(mask * (size >> 2))
    end = n - n % size
    out = [(_from_bytes(data[i : i + size]) ^ key).to_bytes(size) for i in range(0, end, size)]
    if end < n:
        tail = n - end
        out.append((_from_bytes(data[end:]) ^ (key >> ((size - tail) << 3))).to_bytes(tail))
    return b"".join(out)


def bigint_chunked(data: BytesLike, mask: bytes) -> bytes:
    n = len(data)
    if n <= 4096:
        return (_from_bytes(data) ^ _from_bytes((mask * ((n >> 2) + 1))[:n])).to_bytes(n)
    return _chunks(data, mask, n)


# (c) Hybrid: one big integer up to 1 KiB, bytes.translate (b) above.
def hybrid_translate_bytes(data: BytesLike, mask: bytes) -> bytes:
    if len(data) <= 1024:
        return bigint(data, mask)
    return translate_bytes(data, mask)


# (d) A key integer without from_bytes: the 32-bit key times a base-2**32 repunit (one set bit
# every 32), shifted down from one precomputed for the largest size. Little-endian, so the
# extra top octets can be sliced off.
_REPUNIT_WORDS = max(SIZES) // 4 + 1
_REPUNIT = ((1 << (32 * _REPUNIT_WORDS)) - 1) // 0xFFFFFFFF


def bigint_repunit(data: BytesLike, mask: bytes) -> bytes:
    n = len(data)
    words = (n >> 2) + 1
    key = _from_bytes(mask, "little") * (_REPUNIT >> (32 * (_REPUNIT_WORDS - words)))
    return (_from_bytes(data, "little") ^ key).to_bytes(4 * words, "little")[:n]


# (d) XOR 8 bytes at a time through a memoryview cast to 'Q': one bytecode loop per word.
def words64(data: BytesLike, mask: bytes) -> bytes:
    n = len(data)
    body = n - n % 8
    key = _from_bytes(mask * 2, sys.byteorder)
    out = bytearray(n)
    dst = memoryview(out)[:body].cast("Q")
    for i, word in enumerate(memoryview(data)[:body].cast("B").cast("Q")):
        dst[i] = word ^ key
    out[body:] = bigint(bytes(data[body:]), mask)
    return bytes(out)


def peers() -> list[tuple[str, Masker]]:
    """Other libraries' maskers, where they are installed."""
    found: list[tuple[str, Masker]] = []
    try:
        from websockets.speedups import apply_mask as ws_c
    except ImportError:
        pass
    else:
        found.append(("websockets.speedups (C)", ws_c))
    try:
        from websockets.utils import apply_mask as ws_py
    except ImportError:
        pass
    else:
        found.append(("websockets.utils (Python)", ws_py))
    try:
        from wsproto.frame_protocol import XorMaskerSimple
    except ImportError:
        pass
    else:

        def wsproto_masker(data: BytesLike, mask: bytes) -> bytes:
            # A fresh masker per frame; it returns a bytearray, converted like ours.
            return bytes(XorMaskerSimple(mask).process(bytearray(data)))

        found.append(("wsproto XorMaskerSimple", wsproto_masker))
    return found


def naive(data: BytesLike, mask: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def best_time(func: Masker, data: bytes, mask: bytes) -> float:
    """Best seconds per call over REPEAT runs of about TARGET seconds each."""
    timer = timeit.Timer(lambda: func(data, mask))
    number = 1
    while (elapsed := timer.timeit(number)) < TARGET / 10:
        number *= 10
    number = max(1, math.ceil(number * TARGET / elapsed))
    return min(timer.repeat(REPEAT, number)) / number


def size_name(size: int) -> str:
    if size >= 1 << 20:
        return f"{size >> 20} MiB"
    if size >= 1 << 10:
        return f"{size >> 10} KiB"
    return f"{size} B"


def print_markdown(results: dict[str, dict[int, tuple[float, float]]]) -> None:
    """One row per technique, one column per size: MB/s and, in parentheses, ``vs ours``."""
    print(f"| technique | {' | '.join(size_name(size) for size in SIZES)} |")
    print(f"|---|{'--:|' * len(SIZES)}")
    for i, (name, by_size) in enumerate(results.items()):
        cells = []
        for size in SIZES:
            if size not in by_size:
                cells.append("—")
                continue
            mbps, vs = by_size[size]
            cells.append(f"{mbps:,.0f} MB/s ({vs:.2f})")
        label = f"**{name}**" if i == 0 else name
        print(f"| {label} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="also print the results as a Markdown table on stdout (plain text on stderr)",
    )
    markdown: bool = parser.parse_args().markdown
    log = sys.stderr if markdown else sys.stdout

    # Freeing one large block raises glibc's dynamic mmap threshold, so 1 MiB results then come
    # from the heap, not from fresh pages. Without this, whichever row runs first pays for the
    # page faults and looks about half as fast.
    bytearray(24 * 1024 * 1024)
    candidates: list[tuple[str, Masker]] = [
        ("rfc6455.masking.apply_mask", apply_mask),
        ("(a) bigint, one shot", bigint),
        ("(b) bytes.translate, strided", translate_bytes),
        ("(b) bytearray.translate, in place", translate_bytearray),
        ("(c) bigint, 2-32 KiB chunks", bigint_chunked),
        ("(c) bigint <=1K, bytes.translate", hybrid_translate_bytes),
        ("(d) bigint, repunit key", bigint_repunit),
        ("(d) memoryview 'Q' loop", words64),
        *peers(),
    ]
    mask = bytes.fromhex("37fa213d")
    for size in [0, 1, 3, 5, 9, 511, 512, 1025, 4097, 70001]:
        data = os.urandom(size)
        expected = naive(data, mask)
        for name, func in candidates:
            assert func(data, mask) == expected, (name, size)

    width = max(len(name) for name, _ in candidates)
    started = datetime.datetime.now(datetime.UTC)
    load = os.getloadavg()[0]
    print(
        f"Python {sys.version.split()[0]}, best of {REPEAT} runs, MB = 10**6 bytes;"
        f" {started:%Y-%m-%d %H:%M} UTC, 1-minute load {load:.2f}",
        file=log,
    )
    # MB/s and vs ours, by technique and size.
    results: dict[str, dict[int, tuple[float, float]]] = {name: {} for name, _ in candidates}
    for size in SIZES:
        data = os.urandom(size)
        print(f"\n{size} bytes", file=log)
        print(f"{'technique':<{width}}  {'µs/call':>10}  {'MB/s':>6}  {'vs ours':>7}", file=log)
        ours = 0.0
        for name, func in candidates:
            if func is words64 and size > 64 * 1024:
                continue  # about a second per call at 1 MiB; the trend is clear by then
            seconds = best_time(func, data, mask)
            ours = ours or seconds
            results[name][size] = (size / seconds / 1e6, ours / seconds)
            print(
                f"{name:<{width}}  {seconds * 1e6:>10.3f}  {size / seconds / 1e6:>6.0f}"
                f"  {ours / seconds:>7.2f}",
                file=log,
            )
    elapsed = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    print(f"\nTotal {elapsed:.0f} s; 1-minute load {os.getloadavg()[0]:.2f} at the end", file=log)
    if markdown:
        print_markdown(results)


if __name__ == "__main__":
    main()
