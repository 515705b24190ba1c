"""Benchmark the framing core against websockets and wsproto, all in one run.

Run ``python benchmarks/bench_frames.py`` (about a minute). For payloads of 16 B, 1 KiB,
64 KiB and 1 MiB it measures:

1. serialize: one binary frame, as a server (unmasked) and as a client (masked with a fresh
   key from ``os.urandom``);
2. parse: a stream of N masked client frames turned into messages by a server-side sans-I/O
   protocol, fed in one ``receive_data`` call and in 64 KiB chunks, for text (UTF-8 checked)
   and binary messages;
3. mask: ``apply_mask`` on one payload.

websockets runs twice: as installed (its C ``speedups.apply_mask``, when built) and with its
pure-Python ``utils.apply_mask`` patched into ``websockets.frames``, which is where
``Frame.parse`` and ``Frame.serialize`` look the name up.

Every number is the best of REPEAT timing runs (``timeit``, which turns the garbage collector
off while timing); the rows of a table take turns, so that noise from other processes spreads
over all of them. MB/s counts payload bytes (MB = 10**6 bytes), not header bytes.
``ours÷this`` is this row's time divided by rfc6455's: rfc6455's speed as a multiple of this
row's, so above 1 means rfc6455 is faster. Every implementation's output is checked against the
payloads before anything is timed.

With ``--markdown`` the tables and the targets go to stdout as Markdown, ready to paste into
benchmarks/README.md, and the plain-text progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import timeit
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Protocol as TypingProtocol
from typing import TextIO, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websockets.frames as ws_frames
import websockets.utils as ws_utils
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode as WsOpcode
from websockets.protocol import Protocol as WsProtocol
from websockets.protocol import Side as WsSide
from websockets.protocol import State as WsState
from wsproto.connection import Connection as WsprotoConnection
from wsproto.connection import ConnectionType as WsprotoConnectionType
from wsproto.frame_protocol import FrameProtocol as WsprotoFrameProtocol
from wsproto.frame_protocol import XorMaskerSimple

from rfc6455.frames import Opcode, serialize_frame
from rfc6455.masking import apply_mask
from rfc6455.protocol import Protocol, Side

try:
    from websockets.speedups import apply_mask as ws_c_apply_mask
except ImportError:  # websockets installed without its C extension
    HAVE_SPEEDUPS = False
else:
    HAVE_SPEEDUPS = True

SIZES = [16, 1024, 64 * 1024, 1024 * 1024]
# Frames per parsed stream: enough for 10-50 ms per run of rfc6455 on a ~3 GHz core, so one
# run amortizes the protocol's construction and the timer's own overhead.
STREAM_FRAMES = {16: 20_000, 1024: 8_000, 64 * 1024: 200, 1024 * 1024: 12}
CHUNK = 64 * 1024  # a typical socket read (rfc6455.aio reads 64 KiB at a time)
REPEAT = 7
TARGET = 0.02  # seconds per timeit run for the short operations
MASK = bytes.fromhex("37fa213d")

Messages = list[str | bytes]
Parser = Callable[[list[bytes]], Messages]

C_LABEL = "websockets (C speedup)" if HAVE_SPEEDUPS else "websockets (no C speedup built)"
PY_LABEL = "websockets (pure Python)"


@contextmanager
def websockets_pure_python() -> Iterator[None]:
    """Make websockets.frames use utils.apply_mask instead of speedups.apply_mask."""
    # Frame.parse and Frame.serialize look the name up in their module's globals.
    namespace = vars(ws_frames)
    saved = namespace["apply_mask"]
    namespace["apply_mask"] = ws_utils.apply_mask
    try:
        yield
    finally:
        namespace["apply_mask"] = saved


def calibrate(timer: timeit.Timer) -> int:
    """How many calls make one timing run last about TARGET seconds (at least one call)."""
    number = 1
    while (elapsed := timer.timeit(number)) < TARGET / 10:
        number *= 10
    return max(1, round(number * TARGET / elapsed)) if elapsed < TARGET else 1


@dataclass
class Row:
    label: str
    func: Callable[[], object]
    per_run: int = 1  # frames handled per call
    pure: bool = False  # run with websockets_pure_python()


# Results by (section, size, variant, label): best seconds per frame.
RESULTS: dict[tuple[str, int, str, str], float] = {}
# The same, table by table in the order they ran: (section, variant, size, [(label, seconds)]).
TABLES: list[tuple[str, str, int, list[tuple[str, float]]]] = []
TIMES = "\N{MULTIPLICATION SIGN}"
# Where the plain-text tables go: stderr when --markdown puts the Markdown on stdout.
LOG: TextIO = sys.stdout


def run_table(section: str, size: int, variant: str, rows: list[Row]) -> None:
    """Time the rows and print one table; the first row is rfc6455's, the reference.

    The rows take turns: each of the REPEAT rounds times every row once, and each row keeps its
    best round. A burst of activity from another process then slows one round of every row,
    instead of every run of one row.
    """
    timers = [timeit.Timer(row.func) for row in rows]
    numbers = []
    for row, timer in zip(rows, timers, strict=True):
        with context(row):
            numbers.append(calibrate(timer))
    best = [float("inf")] * len(rows)
    for _ in range(REPEAT):
        for i, (row, timer, number) in enumerate(zip(rows, timers, numbers, strict=True)):
            with context(row):
                best[i] = min(best[i], timer.timeit(number) / number / row.per_run)

    print(f"\n{section} · {size_name(size)} · {variant}", file=LOG)
    header = f"{'implementation':<42}{'µs/frame':>10}{'MB/s':>10}{'frames/s':>12}{'ours÷this':>11}"
    print(f"  {header}", file=LOG)
    ours = best[0]
    for row, seconds in zip(rows, best, strict=True):
        RESULTS[section, size, variant, row.label] = seconds
        print(
            f"  {row.label:<42}{seconds * 1e6:>10.3f}{size / seconds / 1e6:>10.1f}"
            f"{1 / seconds:>12,.0f}{seconds / ours:>10.2f}x",
            file=LOG,
        )
    TABLES.append((section, variant, size, [(r.label, t) for r, t in zip(rows, best, strict=True)]))


def context(row: Row) -> AbstractContextManager[None]:
    return websockets_pure_python() if row.pure else nullcontext()


def size_name(size: int) -> str:
    if size >= 1 << 20:
        return f"{size >> 20} MiB"
    if size >= 1 << 10:
        return f"{size >> 10} KiB"
    return f"{size} B"


def text_payload(size: int) -> str:
    """Exactly ``size`` bytes of UTF-8: mostly ASCII chat text, some 2- and 3-byte characters."""
    pattern = "Grüße aus Köln — see you at 8? ça va, señor! €5 "
    raw = (pattern * (size // len(pattern.encode()) + 1)).encode()[:size]
    text = raw.decode(errors="ignore")  # drop a character cut in half at the end
    return text + "." * (size - len(text.encode()))


# 1. Serialize


def serialize_rows(size: int, *, client: bool) -> list[Row]:
    data = os.urandom(size)
    rfc_proto = Protocol(Side.CLIENT if client else Side.SERVER, max_size=None)
    ws_proto = WsProtocol(WsSide.CLIENT if client else WsSide.SERVER, state=WsState.OPEN)
    wsproto_proto = WsprotoFrameProtocol(client=client, extensions=[])
    ws_frame = WsFrame(WsOpcode.BINARY, data)

    def rfc6455_function() -> bytes:
        return serialize_frame(Opcode.BINARY, data, mask=client)

    def rfc6455_protocol() -> list[bytes]:
        rfc_proto.send_binary(data)
        return rfc_proto.data_to_send()

    def websockets_frame() -> bytes:
        return ws_frame.serialize(mask=client, extensions=[])

    def websockets_protocol() -> list[bytes]:
        ws_proto.send_binary(data)
        return ws_proto.data_to_send()

    def wsproto_frame_protocol() -> bytearray:
        return wsproto_proto.send_data(data)

    # Every row's frame must parse back to the payload (masked ones with their own key).
    for one in (rfc6455_function, websockets_frame, wsproto_frame_protocol):
        check_serialized(bytes(one()), data, client=client)
    for many in (rfc6455_protocol, websockets_protocol):
        check_serialized(b"".join(many()), data, client=client)

    rows = [
        Row("rfc6455 serialize_frame", rfc6455_function),
        Row("rfc6455 Protocol.send_binary", rfc6455_protocol),
        Row(f"{C_LABEL} Frame.serialize", websockets_frame),
        Row(f"{C_LABEL} Protocol", websockets_protocol),
    ]
    if client:  # without a mask, websockets runs the same code either way
        rows += [
            Row(f"{PY_LABEL} Frame.serialize", websockets_frame, pure=True),
            Row(f"{PY_LABEL} Protocol", websockets_protocol, pure=True),
        ]
    rows.append(Row("wsproto FrameProtocol.send_data", wsproto_frame_protocol))
    return rows


def check_serialized(frame: bytes, data: bytes, *, client: bool) -> None:
    proto = Protocol(Side.SERVER if client else Side.CLIENT, max_size=None)
    proto.receive_data(frame)
    assert proto.events_received() == [data]


# 2. Parse


def parse_rfc6455(chunks: list[bytes]) -> Messages:
    proto = Protocol(Side.SERVER, max_size=None)
    messages: Messages = []
    for chunk in chunks:
        proto.receive_data(chunk)
        messages += cast(Messages, proto.events_received())
    return messages


class _WsDataFrame(TypingProtocol):
    """What websockets' Protocol returns here: data frames whose payload is bytes.

    Its declared event type is wider (requests, responses, any BytesLike payload); casting the
    list once per chunk, instead of checking each frame, keeps the loop as a user would write it.
    """

    @property
    def opcode(self) -> WsOpcode: ...
    @property
    def data(self) -> bytes: ...


class _WsprotoChunk(TypingProtocol):
    """What wsproto's Connection.events() yields here: TextMessage and BytesMessage events."""

    @property
    def data(self) -> str | bytes: ...
    @property
    def message_finished(self) -> bool: ...


def parse_websockets(chunks: list[bytes]) -> Messages:
    # The sans-I/O Protocol yields frames and leaves UTF-8 to the I/O layer's assembler, which
    # decodes text; do the same here so that all rows check UTF-8. Frames in these streams are
    # never fragmented, so a frame is a message.
    proto = WsProtocol(WsSide.SERVER, state=WsState.OPEN, max_size=None)
    messages: Messages = []
    append = messages.append
    text = WsOpcode.TEXT
    for chunk in chunks:
        proto.receive_data(chunk)
        for frame in cast(list[_WsDataFrame], proto.events_received()):
            append(frame.data.decode() if frame.opcode is text else frame.data)
    return messages


def parse_wsproto_frame_protocol(chunks: list[bytes]) -> Messages:
    # FrameProtocol decodes text (incrementally) but hands over a frame's payload in pieces as
    # it arrives; join them into messages, as its users must.
    proto = WsprotoFrameProtocol(client=False, extensions=[])
    messages: Messages = []
    append = messages.append
    parts: list[str | bytes] = []
    for chunk in chunks:
        proto.receive_bytes(chunk)
        for frame in proto.received_frames():
            payload = cast(str | bytes, frame.payload)
            if not frame.message_finished:
                parts.append(payload)
            elif parts:
                parts.append(payload)
                append(join(parts))
                parts = []
            else:
                append(payload)
    return messages


def parse_wsproto_connection(chunks: list[bytes]) -> Messages:
    # The same through wsproto's post-handshake Connection, which wraps FrameProtocol and turns
    # frames into TextMessage / BytesMessage events: the layer that matches our Protocol.
    conn = WsprotoConnection(WsprotoConnectionType.SERVER)
    messages: Messages = []
    append = messages.append
    parts: list[str | bytes] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        for event in cast(Iterator[_WsprotoChunk], conn.events()):
            if not event.message_finished:
                parts.append(event.data)
            elif parts:
                parts.append(event.data)
                append(join(parts))
                parts = []
            else:
                append(event.data)
    return messages


def join(parts: list[str | bytes]) -> str | bytes:
    if isinstance(parts[0], str):
        return "".join(cast(list[str], parts))
    return b"".join(cast(list[bytes], parts))


PARSERS: list[tuple[str, Parser, bool]] = [
    ("rfc6455 Protocol", parse_rfc6455, False),
    (f"{C_LABEL} Protocol", parse_websockets, False),
    (f"{PY_LABEL} Protocol", parse_websockets, True),
    ("wsproto FrameProtocol", parse_wsproto_frame_protocol, False),
    ("wsproto Connection", parse_wsproto_connection, False),
]


def parse_rows(size: int, *, text: bool, chunked: bool) -> list[Row]:
    count = STREAM_FRAMES[size]
    message: str | bytes = text_payload(size) if text else os.urandom(size)
    data = message.encode() if isinstance(message, str) else message
    opcode = WsOpcode.TEXT if text else WsOpcode.BINARY
    # Encode with websockets, not with the code under test; a fresh key for every frame.
    stream = b"".join(WsFrame(opcode, data).serialize(mask=True) for _ in range(count))
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)] if chunked else [stream]
    expected = [message] * count
    rows = []
    for label, parser, pure in PARSERS:
        row = Row(label, bind(parser, chunks), per_run=count, pure=pure)
        with context(row):
            assert parser(chunks) == expected, label
        rows.append(row)
    return rows


def bind(parser: Parser, chunks: list[bytes]) -> Callable[[], Messages]:
    return lambda: parser(chunks)


# 3. Mask


def mask_rows(size: int) -> list[Row]:
    data = os.urandom(size)
    array = bytearray(data)  # wsproto's masker takes a bytearray (and copies it)
    expected = bytes(b ^ MASK[i % 4] for i, b in enumerate(data))

    def rfc6455_mask() -> bytes:
        return apply_mask(data, MASK)

    def websockets_c_mask() -> bytes:
        return ws_c_apply_mask(data, MASK)

    def websockets_py_mask() -> bytes:
        return ws_utils.apply_mask(data, MASK)

    def wsproto_mask() -> bytearray:
        return XorMaskerSimple(MASK).process(array)

    rows = [Row("rfc6455 apply_mask (translate/bigint)", rfc6455_mask)]
    if HAVE_SPEEDUPS:
        rows.append(Row("websockets speedups.apply_mask (C)", websockets_c_mask))
    rows += [
        Row("websockets utils.apply_mask (bigint)", websockets_py_mask),
        Row("wsproto XorMaskerSimple (translate)", wsproto_mask),
    ]
    for row in rows:
        assert bytes(cast(bytes, row.func())) == expected, row.label
    return rows


# Targets from issue 2


def targets() -> list[tuple[str, float, float]]:
    """The issue's targets from this run: (what, rfc6455's speed as a multiple, goal)."""

    def ratio(size: int, label: str) -> float:
        section, variant = "parse", "text, one receive_data"
        return (
            RESULTS[section, size, variant, label] / RESULTS[section, size, variant, PARSERS[0][0]]
        )

    lines = [
        (f"parse masked 16 B text ≥ 1.5{TIMES} {C_LABEL}", ratio(16, f"{C_LABEL} Protocol"), 1.5)
    ]
    for label in ("wsproto FrameProtocol", "wsproto Connection"):
        lines.append((f"parse masked 1 KiB text ≥ 2.5{TIMES} {label}", ratio(1024, label), 2.5))
    lines.append(
        (f"parse masked 1 KiB text ≥ 0.7{TIMES} {C_LABEL}", ratio(1024, f"{C_LABEL} Protocol"), 0.7)
    )
    mask = "one payload"
    ours = RESULTS["mask", 1 << 20, mask, "rfc6455 apply_mask (translate/bigint)"]
    fastest_py = min(
        RESULTS["mask", 1 << 20, mask, "websockets utils.apply_mask (bigint)"],
        RESULTS["mask", 1 << 20, mask, "wsproto XorMaskerSimple (translate)"],
    )
    # bench_masking.py compares more pure-Python techniques than the peers' two.
    lines.append((f"unmask 1 MiB ≥ 1{TIMES} the fastest pure-Python peer", fastest_py / ours, 1.0))
    return lines


def verdict(value: float, goal: float) -> str:
    if value >= goal:
        return "met"
    return "within 5% noise" if value >= 0.95 * goal else "MISSED"


def print_targets() -> None:
    print("\nTargets (issue 2), from this run:", file=LOG)
    for name, value, goal in targets():
        print(f"  {name:<62}{value:>6.2f}{TIMES}  {verdict(value, goal)}", file=LOG)


# Markdown output (--markdown)


def format_us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:.3f}" if us < 10 else f"{us:.1f}" if us < 1000 else f"{us:,.0f}"


def format_mbps(size: int, seconds: float) -> str:
    mbps = size / seconds / 1e6
    return f"{mbps:.1f}" if mbps < 100 else f"{mbps:,.0f}"


def print_markdown(header: list[str]) -> None:
    """Print the run's facts, its tables (one per section and variant) and the targets."""
    for line in header:
        print(f"- {line}")
    variants: dict[tuple[str, str], list[tuple[int, list[tuple[str, float]]]]] = {}
    for section, variant, size, results in TABLES:
        variants.setdefault((section, variant), []).append((size, results))
    for (section, variant), tables in variants.items():
        print(f"\n#### {section}: {variant}\n")
        print("| size | implementation | µs/frame | MB/s | ours÷this |")
        print("|---|---|--:|--:|--:|")
        for size, results in tables:
            ours = results[0][1]
            for i, (label, seconds) in enumerate(results):
                name = f"**{label}**" if label.startswith("rfc6455") else label
                print(
                    f"| {size_name(size) if i == 0 else ''} | {name} | {format_us(seconds)}"
                    f" | {format_mbps(size, seconds)} | {seconds / ours:.2f}{TIMES} |"
                )
    print("\n#### targets (issue 2)\n")
    print("| target | this run | met? |")
    print("|---|--:|---|")
    for name, value, goal in targets():
        print(f"| {name} | {value:.2f}{TIMES} | {verdict(value, goal)} |")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    global LOG
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the tables and targets as Markdown on stdout (progress on stderr)",
    )
    markdown: bool = parser.parse_args().markdown
    if markdown:
        LOG = sys.stderr

    # Freeing one large block raises glibc's dynamic mmap threshold, so the MiB-sized buffers
    # below come from the heap instead of fresh pages (see bench_masking.py).
    bytearray(24 * 1024 * 1024)

    started = datetime.datetime.now(datetime.UTC)
    load = os.getloadavg()[0]
    masker = vars(ws_frames)["apply_mask"]
    source = "speedups (C)" if HAVE_SPEEDUPS and masker is ws_c_apply_mask else masker.__module__
    header = [
        f"{started:%Y-%m-%d %H:%M} UTC",
        f"Python {platform.python_version()} ({platform.python_implementation()}), {sys.platform}",
        f"CPU {cpu_model()}, {os.cpu_count()} logical cores",
        f"websockets {version('websockets')} (C speedup {'on' if HAVE_SPEEDUPS else 'missing'};"
        f" websockets.frames.apply_mask from {source}), wsproto {version('wsproto')}",
    ]
    print(f"rfc6455 framing benchmark, {header[0]}, load {load:.2f}", file=LOG)
    for line in header[1:]:
        print(line, file=LOG)
    print(
        f"Best of {REPEAT} runs; MB = 10**6 payload bytes; ours÷this > 1: rfc6455 is faster.",
        file=LOG,
    )

    for size in SIZES:
        run_table("serialize", size, "server, unmasked", serialize_rows(size, client=False))
        run_table("serialize", size, "client, masked", serialize_rows(size, client=True))
    for size in SIZES:
        frames = f"{STREAM_FRAMES[size]} masked frames"
        print(f"\n(parse streams: {frames} of {size_name(size)})", file=LOG)
        run_table(
            "parse", size, "text, one receive_data", parse_rows(size, text=True, chunked=False)
        )
        run_table("parse", size, "text, 64 KiB chunks", parse_rows(size, text=True, chunked=True))
        run_table(
            "parse", size, "binary, one receive_data", parse_rows(size, text=False, chunked=False)
        )
    for size in SIZES:
        run_table("mask", size, "one payload", mask_rows(size))

    print_targets()
    elapsed = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    end_load = os.getloadavg()[0]
    loads = f"1-minute load {load:.2f} at the start, {end_load:.2f} at the end"
    print(f"\nTotal {elapsed:.0f} s; {loads}", file=LOG)
    if markdown:
        header.append(f"{elapsed:.0f} s; {loads}")
        print_markdown(header)


if __name__ == "__main__":
    main()
