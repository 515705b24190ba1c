"""permessage-deflate (issue 14): the codec, the chat's broadcast, idle memory, the parser.

Run ``python benchmarks/bench_deflate.py`` (about 3 minutes; ``--only codec`` and so on for
one part). Parts:

- ``codec``: µs to compress and to inflate one chat-like JSON message of 64 B to 1 MiB,
  and its compressed size: rfc6455's ``PerMessageDeflate`` without context (the shared
  compressor, an inflater per message) and with it, against websockets' ``PerMessageDeflate``
  extension at its defaults (12-bit windows, memLevel 5, context kept) and without context,
  in the same rounds; best of 5 ``timeit`` runs.
- ``parse``: the frame parser without the extension, this checkout against ``--before DIR``
  (a copy of the package before the extension, e.g. ``git archive main rfc6455 | tar -x -C
  DIR``), 20,000 masked 16 B and 8,000 1 KiB text frames in one ``receive_data``.
- ``broadcast``: ``python -m server`` pinned to one core, ``--compression off``, ``on`` and
  ``context``, and the websockets peer with and without its default compression; 200
  receivers on ``/``
  and one sender of 1 KiB chat text, in bursts of 20; the server's CPU per delivery and the
  bytes each receiver read off the wire per message. The receivers are raw sockets that offer
  what Chrome offers and read frame headers only (no inflating), so that they cost this
  process the same either way.
- ``chat-memory``: e2e.py's memory workload (5,000 idle raw connections to the chat, ``/``)
  with each connection offering what Chrome offers, ``--compression off`` and ``on``.
- ``memory``: the server's RSS per idle connection, 2,000 connections to ``/echo`` with raw
  sockets (offering ``permessage-deflate; client_max_window_bits`` as Chrome does), each
  after one compressed 1 KiB message echoed, with ``--compression off``, ``on`` and
  ``context``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import timeit
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.extensions.permessage_deflate import PerMessageDeflate as WsDeflate
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode as WsOpcode

import rfc6455
from benchmarks.e2e import (
    HOST,
    PEERS,
    ROOT,
    close_all,
    free_port,
    open_idle,
    proc_cpu_seconds,
    proc_rss_bytes,
    python_path,
    raise_nofile,
    read_head,
    taskset,
)
from rfc6455.deflate import (
    Compression,
    PerMessageDeflate,
    client_accept,
    client_offer,
    server_negotiate,
)
from rfc6455.extensions import parse_extensions
from rfc6455.frames import Opcode, frame_header, serialize_frame
from rfc6455.http11 import Headers

SIZES = [64, 128, 256, 512, 1024, 4096, 16384, 65536, 2**20]
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
]


def chat_text(size: int, seed: int = 0) -> str:
    """English-like words, ``size`` bytes."""
    rng = random.Random(seed)
    words: list[str] = []
    length = 0
    while length <= size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def chat_json(size: int, seed: int = 0) -> bytes:
    """A chat broadcast as the server sends it, about ``size`` bytes."""
    envelope = {
        "type": "broadcast",
        "channel": "general",
        "connectionId": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "message": "",
        "timestamp": "2026-12-03 12:02:00",
        "seq": 19,
    }
    overhead = len(json.dumps(envelope))
    envelope["message"] = chat_text(max(0, size - overhead), seed)
    return json.dumps(envelope).encode()[:size]


def pair(compression: Compression) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    headers = Headers([("Sec-WebSocket-Extensions", client_offer(compression))])
    negotiated = server_negotiate(parse_extensions(headers), compression)
    assert negotiated is not None
    answer = Headers([("Sec-WebSocket-Extensions", negotiated[0])])
    client = client_accept(parse_extensions(answer), compression)
    assert client is not None
    return negotiated[1], client


def best(function: Callable[[], object], number: int) -> float:
    """µs per call: the best of 5 runs."""
    return min(timeit.repeat(function, number=number, repeat=5)) / number * 1e6


def _cycling(function: Callable[[Any], object], values: list[Any]) -> Callable[[], object]:
    """``function`` called on each of ``values`` in turn."""
    turn = itertools.cycle(values)
    return lambda: function(next(turn))


def codec() -> None:
    print("## codec: µs per message (compressed size in bytes)\n")
    print(
        "| size | rfc6455 no context: compress | inflate | bytes | rfc6455 context: compress "
        "| inflate | bytes | websockets default: encode | decode | bytes "
        "| websockets no context: encode | decode |"
    )
    print("| --: " * 11 + "|")
    for size in SIZES:
        data = chat_json(size)
        # With context, a message sent again refers to its previous copy: time different
        # ones in turn, more than a 15-bit window holds (the text differs, the JSON
        # envelope does not).
        variants = [chat_json(size, seed) for seed in range(max(8, min(2048, 2**17 // size)))]
        number = max(8, min(5000, 2**22 // size))
        row = [f"{size:,} B"]
        for keep in (False, True):
            server, client = pair(Compression(context_takeover=keep, threshold=0))
            payload = server.compress(data)
            assert payload is not None
            assert client.inflate(payload, None) == data
            row += [
                f"{best(_cycling(server.compress, variants), number):.2f}",
                f"{best(functools.partial(client.inflate, payload, None), number):.2f}",
                f"{len(payload):,}",
            ]
        for no_context in (False, True):
            sender = WsDeflate(no_context, no_context, 12, 12, {"memLevel": 5})
            receiver = WsDeflate(no_context, no_context, 12, 12, {"memLevel": 5})
            frame = WsFrame(WsOpcode.TEXT, data)
            frames = [WsFrame(WsOpcode.TEXT, variant) for variant in variants]
            encoded = sender.encode(frame)
            assert receiver.decode(encoded).data == data
            row += [
                f"{best(_cycling(sender.encode, frames), number):.2f}",
                f"{best(functools.partial(receiver.decode, encoded), number):.2f}",
            ]
            if not no_context:
                row.append(f"{len(encoded.data):,}")
        print("| " + " | ".join(row) + " |", flush=True)
    print()


_PARSE = """
import sys, timeit
sys.path.insert(0, sys.argv[1])
from rfc6455.frames import Opcode, frame_header, serialize_frame
from rfc6455.protocol import Protocol, Side
for size, n in ((16, 20000), (1024, 8000)):
    stream = b"".join(serialize_frame(Opcode.TEXT, b"a" * size, mask=True) for _ in range(n))
    def run():
        p = Protocol(Side.SERVER, max_size=None)
        p.receive_data(stream)
        assert len(p.events_received()) == n
    print(min(timeit.repeat(run, number=5, repeat=7)) / 5 / n * 1e6)
"""


def parse(before: Path | None) -> None:
    if before is None:
        print("## parse: skipped (no --before)\n")
        return
    print("## parse without the extension: µs per frame, 5 alternating rounds\n")
    results: dict[str, list[list[float]]] = {"before": [], "after": []}
    for _ in range(5):
        for name, path in (("before", before), ("after", ROOT)):
            output = subprocess.run(
                [sys.executable, "-c", _PARSE, str(path)],
                capture_output=True,
                text=True,
                check=True,
                cwd="/",
            ).stdout.split()
            results[name].append([float(value) for value in output])
    print("| frames | before (best) | after (best) | after ÷ before |")
    print("| --- | --: | --: | --: |")
    for column, label in enumerate(("masked 16 B text", "masked 1 KiB text")):
        old = min(row[column] for row in results["before"])
        new = min(row[column] for row in results["after"])
        print(f"| {label} | {old:.3f} | {new:.3f} | {new / old:.3f} |")
    print()


class Process:
    """A server (the project or a peer) pinned to the first core, on a free port."""

    def __init__(self, command: list[str], workdir: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env["PYTHONPATH"] = python_path()
        self.log = open(workdir / f"server-{self.port}.log", "wb")  # noqa: SIM115
        command = [part.replace("PORT", str(self.port)) for part in command]
        cores = sorted(os.sched_getaffinity(0))[:1]
        self.process = subprocess.Popen(
            [*taskset(cores), sys.executable, *command],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"server did not start: {command}") from None
                time.sleep(0.05)
        time.sleep(0.3)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)
        self.log.close()


def project(mode: str, workdir: Path) -> list[str]:
    return [
        *("-m", "server", "--host", HOST, "--port", "PORT"),
        *("--db", str(workdir / f"m-{mode}-{time.monotonic_ns()}.db")),
        *("--ping-interval", "0", "--rate-limit", "0", "--compression", mode),
        *("--max-connections", "0", "--max-echo-connections", "0"),
    ]


def peer(mode: str) -> list[str]:
    return [
        str(PEERS / "websockets_peer.py"),
        *("--host", HOST, "--port", "PORT", "--compression", mode),
    ]


class _Receiver(asyncio.Protocol):
    """A receiver that reads frames' headers only: what it costs is the same with or
    without compression, so that the server's CPU is not skewed by slower receivers."""

    def __init__(self, request: bytes, on_message: Callable[[], None]) -> None:
        self.request = request
        self.on_message = on_message
        self.buffer = bytearray()
        self.open = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.wire = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.wire += len(data)
        buffer = self.buffer
        buffer += data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.open = True
            self.opened.set_result(None)
            del buffer[: end + 4]
        pos = 0
        while len(buffer) - pos >= 2:
            length = buffer[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if len(buffer) - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                start += 2
            elif length == 127:
                if len(buffer) - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                start += 8
            if len(buffer) < start + length:
                break
            # The benchmark's messages, not the welcome and the acks.
            if buffer[pos] & 0x0F == 1 and length > 300:
                self.on_message()
            pos = start + length
        del buffer[:pos]


def _upgrade(port: int, offer: bool) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    return (
        f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra if offer else ''}\r\n"
    ).encode()


async def broadcast_once(
    pid: int, port: int, offer: bool, receivers: int, messages: int
) -> dict[str, Any]:
    """Deliver ``messages`` 1 KiB texts from one sender to ``receivers``.

    The receivers offer what Chrome offers (``permessage-deflate; client_max_window_bits``)
    or nothing; the sender is an rfc6455 client, compressing when ``offer``.

    Returns:
        The bytes the receivers read and the server's CPU seconds while delivering.
    """
    loop = asyncio.get_running_loop()
    got = [0]
    target = [0]
    done = asyncio.Event()

    def on_message() -> None:
        got[0] += 1
        if got[0] >= target[0]:
            done.set()

    clients: list[_Receiver] = []
    for _ in range(receivers):
        _, client = await loop.create_connection(
            lambda: _Receiver(_upgrade(port, offer), on_message), HOST, port
        )
        await client.opened
        clients.append(client)
    compression = Compression() if offer else None
    sender = await rfc6455.connect(f"ws://{HOST}:{port}/", compression=compression)
    await asyncio.sleep(0.5)  # welcome and history messages
    texts = [f"bench-{i} " + chat_text(1000, i) for i in range(messages)]
    wire = sum(client.wire for client in clients)
    cpu = proc_cpu_seconds(pid)
    for start in range(0, messages, 20):
        target[0] = min(messages, start + 20) * receivers
        done.clear()
        for text in texts[start : start + 20]:
            await sender.send(text)
        await asyncio.wait_for(done.wait(), 60)
    cpu = proc_cpu_seconds(pid) - cpu
    wire = sum(client.wire for client in clients) - wire
    await sender.close()
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    return {"wire": wire, "cpu": cpu}


def broadcast(receivers: int, messages: int, rounds: int, only: str | None = None) -> None:
    print(f"## broadcast: 1 KiB chat text to {receivers} receivers, {messages} messages\n")
    configs: list[tuple[str, Callable[[Path], list[str]], bool]] = [
        ("rfc6455 --compression off", lambda w: project("off", w), False),
        ("rfc6455 --compression on", lambda w: project("on", w), True),
        ("rfc6455 --compression context", lambda w: project("context", w), True),
        ("websockets, no compression", lambda w: peer("off"), False),
        ("websockets, deflate (its default)", lambda w: peer("on"), True),
    ]
    if only is not None:
        configs = [config for config in configs if config[0] in only.split(",")]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in configs}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for round_ in range(rounds):
            turn = round_ % len(configs)
            for name, command, offer in configs[turn:] + configs[:turn]:
                server = Process(command(workdir), workdir)
                try:
                    pid = server.process.pid
                    outcome = asyncio.run(
                        broadcast_once(pid, server.port, offer, receivers, messages)
                    )
                finally:
                    server.stop()
                deliveries = receivers * messages
                results[name].append(
                    (outcome["cpu"] / deliveries * 1e6, outcome["wire"] / deliveries)
                )
                print(
                    f"  {name}: {results[name][-1][0]:.2f} µs, {results[name][-1][1]:.0f} B",
                    file=sys.stderr,
                    flush=True,
                )

    def median(name: str, column: int = 0) -> float:
        return sorted(row[column] for row in results[name])[rounds // 2]

    base = median(configs[0][0])
    print(
        f"| server | CPU per delivery, µs (median; rounds) | ÷ {configs[0][0]} "
        "| bytes read per delivery |"
    )
    print("| --- | --: | --: | --: |")
    for name, rows in results.items():
        cpu = median(name)
        shown = ", ".join(f"{row[0]:.2f}" for row in rows)
        # CPU time comes in 10 ms ticks: a tiny run may measure none.
        ratio = f"{cpu / base:.2f}" if base else "n/a"
        print(f"| {name} | {cpu:.2f} ({shown}) | {ratio} | {median(name, 1):.0f} |")
    print()


def _handshake(port: int, offer: bool) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    sock.sendall(
        (
            f"GET /echo HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra if offer else ''}\r\n"
        ).encode()
    )
    return sock


def memory(connections: int, rounds: int) -> None:
    print(f"## memory: server RSS per idle /echo connection, {connections} connections\n")
    raise_nofile(connections + 100)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    text = chat_json(1024)
    payload = (compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    key = b"\x01\x02\x03\x04"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    # RFC 7692 §6.1: RSV1 on the (only) frame of a compressed text message.
    message = frame_header(Opcode.TEXT | 0x40, len(payload), mask_key=key) + masked
    plain_message = serialize_frame(Opcode.TEXT, text, mask=True)
    results: dict[str, list[float]] = {"off": [], "on": [], "context": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for round_ in range(rounds):
            modes = list(results)
            for mode in modes[round_ % 3 :] + modes[: round_ % 3]:
                server = Process(project(mode, workdir), workdir)
                sockets: list[socket.socket] = []
                try:
                    before = proc_rss_bytes(server.process.pid)
                    while len(sockets) < connections:
                        group = [_handshake(server.port, True) for _ in range(50)]
                        for sock in group:
                            head = read_head(sock)
                            compressed = b"permessage-deflate" in head
                            assert compressed is (mode != "off"), head[:300]
                            sock.sendall(message if compressed else plain_message)
                        for sock in group:
                            reply = sock.recv(65536)
                            assert reply, "no echo"
                        sockets += group
                    time.sleep(1.0)
                    after = proc_rss_bytes(server.process.pid)
                finally:
                    for sock in sockets:
                        sock.close()
                    server.stop()
                results[mode].append((after - before) / connections / 1024)
                print(f"  {mode}: {results[mode][-1]:.2f} KiB", file=sys.stderr, flush=True)
    print("| --compression | KiB per connection (median) | rounds | ÷ off |")
    print("| --- | --: | --- | --: |")
    base = sorted(results["off"])[rounds // 2]
    for mode, values in results.items():
        median = sorted(values)[rounds // 2]
        shown = ", ".join(f"{value:.2f}" for value in values)
        ratio = f"{median / base:.2f}" if base > 0 else "n/a"  # a tiny run may not move RSS
        print(f"| {mode} | {median:.2f} | {shown} | {ratio} |")
    print()


CHROME_OFFER = "permessage-deflate; client_max_window_bits"


def chat_memory(connections: int, rounds: int) -> None:
    """e2e.py's memory workload, its connections offering what Chrome offers."""
    print(f"## chat memory: server RSS per idle connection to /, {connections} connections\n")
    raise_nofile(connections + 100)
    results: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for round_ in range(rounds):
            modes = list(results)
            for mode in modes[round_ % 2 :] + modes[: round_ % 2]:
                server = Process(project(mode, workdir), workdir)
                # As e2e.measure_memory: a few first, so that what the first loads is in the
                # baseline.
                warm = open_idle(server.port, "/", 20, extensions=CHROME_OFFER)
                sockets: list[socket.socket] = []
                try:
                    time.sleep(0.5)
                    before = proc_rss_bytes(server.process.pid)
                    sockets = open_idle(server.port, "/", connections, extensions=CHROME_OFFER)
                    time.sleep(1.0)
                    after = proc_rss_bytes(server.process.pid)
                finally:
                    # Killed before the clients leave, as e2e does: no departures to announce.
                    server.process.kill()
                    server.process.wait()
                    server.log.close()
                    close_all([*warm, *sockets])
                results[mode].append((after - before) / connections / 1024)
                print(f"  {mode}: {results[mode][-1]:.2f} KiB", file=sys.stderr, flush=True)
    print("| --compression | KiB per connection (median) | rounds |")
    print("| --- | --: | --- |")
    for mode, values in results.items():
        shown = ", ".join(f"{value:.2f}" for value in values)
        print(f"| {mode} | {sorted(values)[rounds // 2]:.2f} | {shown} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("codec", "parse", "broadcast", "memory", "chat-memory"))
    parser.add_argument("--before", type=Path, help="the package before the extension")
    parser.add_argument("--receivers", type=int, default=200)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", help="broadcast: comma-separated names of the rows to run")
    args = parser.parse_args()
    if args.only in (None, "codec"):
        codec()
    if args.only in (None, "parse"):
        parse(args.before)
    if args.only in (None, "broadcast"):
        broadcast(args.receivers, args.messages, args.rounds, args.servers)
    if args.only in (None, "memory"):
        memory(args.connections, args.rounds)
    if args.only in (None, "chat-memory"):
        chat_memory(5000, args.rounds)


if __name__ == "__main__":
    main()
