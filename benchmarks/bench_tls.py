"""TLS benchmark (issue 14): handshakes/s and 1 KiB echo over wss://, rfc6455 against websockets.

Run ``python benchmarks/bench_tls.py`` (about a minute and a half; ``--rounds 1``: half a
minute). Each round starts every server afresh, pinned to the first core this process may
use, and drives it from this process, pinned to the second:

- ``rfc6455``: the project's ``python -m server --echo on --tls-cert --tls-key``, its
  ``/echo`` (what a deployment without a proxy runs, access checks included);
- ``websockets``: ``websockets.asyncio.server.serve`` echoing, started by this script with
  ``--serve-websockets``, with the same certificate and TLS settings (``server.tls``'s context:
  TLS 1.2+, ALPN ``http/1.1``), compression off, no keepalive pings;

each over TLS and, for reference, over plaintext. The certificate (ECDSA P-256, trustme's) is
made for the run. The client is the same for every server: ``rfc6455.connect`` with a context
that trusts the run's CA (no session resumption: every handshake is a full one).

Workloads, each measured for ``--seconds`` (3) after a 0.5 s warm-up:

- handshakes: 16 loops, each connecting to ``/echo`` (TCP, TLS, the WebSocket upgrade),
  then closing with 1000 and waiting for the server's close, again and again;
- echo: 50 connections, each sending a 1 KiB text message and waiting for its echo, again
  and again (one message in flight per connection).

Both report the rate seen by the client and the server's CPU time per operation (utime +
stime from ``/proc/PID/stat`` over the window): with two cores the client's own TLS work may
bound the rate, whereas the server's CPU per operation is what the server costs. Rounds
interleave the servers, one further each round; the table gives the median of the rounds, and
ratios are rfc6455 ÷ websockets (above 1: faster, for a rate; below 1: cheaper, for CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import rfc6455  # noqa: E402
from server.tls import server_context  # noqa: E402

HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HANDSHAKE_LOOPS = 16
ECHO_CONNECTIONS = 50
MESSAGE = "x" * 1024
WARM_UP = 0.5
SERVERS = ("rfc6455", "websockets")

# One loop of a workload: runs until the window's end, counting what it did while
# ``counting()`` is true.
Worker = Callable[[Callable[[], bool]], Coroutine[Any, Any, int]]


@dataclass(frozen=True)
class Result:
    rate: float  # operations a second, as the client saw them
    cpu_us: float  # server CPU microseconds per operation


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cores() -> tuple[int, int]:
    """The server's core and the client's: the first two this process may use."""
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        sys.exit("bench_tls: needs two cores, one for the server and one for the client")
    return mine[0], mine[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start(
    name: str, tls: tuple[Path, Path] | None, folder: Path, core: int
) -> tuple[subprocess.Popen[bytes], int]:
    """Start server ``name`` pinned to ``core``; return it and its port once it listens."""
    port = free_port()
    if name == "rfc6455":
        # Its log of every connection at INFO is left out: websockets logs none by default.
        command = [sys.executable, "-m", "server", "--port", str(port), "--echo", "on"]
        command += ["--db", str(folder / "bench.db"), "--log-level", "WARNING"]
        command += ["--ping-interval", "0", "--max-handshakes-per-ip", "0"]
        command += ["--max-echo-connections", "0"]
        if tls is not None:
            command += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    else:
        command = [sys.executable, __file__, "--serve-websockets", "--port", str(port)]
        if tls is not None:
            command += ["--cert", str(tls[0]), "--key", str(tls[1])]
    process = subprocess.Popen(
        ["taskset", "-c", str(core), *command],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
        else:
            return process, port
    process.kill()
    sys.exit(f"bench_tls: {name} did not start")


async def measure(pid: int, seconds: float, workers: list[Worker]) -> Result:
    """Run ``workers`` (each counting its operations while the window lasts) for a warm-up and
    ``seconds``; the rate and the server's CPU per operation over the window."""
    loop = asyncio.get_running_loop()
    window: dict[str, float] = {}

    def counting() -> bool:
        now = loop.time()
        return window.get("start", float("inf")) <= now < window.get("end", float("inf"))

    tasks = [asyncio.create_task(worker(counting)) for worker in workers]
    await asyncio.sleep(WARM_UP)
    cpu, window["start"] = cpu_seconds(pid), loop.time()
    await asyncio.sleep(seconds)
    window["end"] = loop.time()
    cpu = cpu_seconds(pid) - cpu
    counts = await asyncio.gather(*tasks)
    total = sum(counts)
    return Result(total / seconds, cpu / total * 1e6 if total else float("nan"))


async def handshakes(uri: str, context: ssl.SSLContext | None, pid: int, seconds: float) -> Result:
    async def loop_(counting: Callable[[], bool]) -> int:
        done = 0
        deadline = asyncio.get_running_loop().time() + WARM_UP + seconds
        while asyncio.get_running_loop().time() < deadline:
            ws = await rfc6455.connect(uri, ssl=context, ping_interval=None)
            await ws.close()
            done += counting()
        return done

    return await measure(pid, seconds, [loop_] * HANDSHAKE_LOOPS)


async def echo(uri: str, context: ssl.SSLContext | None, pid: int, seconds: float) -> Result:
    connections = [
        await rfc6455.connect(uri, ssl=context, ping_interval=None) for _ in range(ECHO_CONNECTIONS)
    ]

    def worker(ws: rfc6455.Connection) -> Worker:
        async def run(counting: Callable[[], bool]) -> int:
            done = 0
            deadline = asyncio.get_running_loop().time() + WARM_UP + seconds
            while asyncio.get_running_loop().time() < deadline:
                await ws.send(MESSAGE)
                await ws.recv()
                done += counting()
            return done

        return run

    try:
        return await measure(pid, seconds, [worker(ws) for ws in connections])
    finally:
        await asyncio.gather(*(ws.close() for ws in connections))


def make_certificate(folder: Path) -> tuple[tuple[Path, Path], ssl.SSLContext]:
    import trustme  # the test extra

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", HOST)
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return (cert, key), client


def run(rounds: int, seconds: float) -> dict[tuple[str, bool, str], list[Result]]:
    server_core, client_core = cores()
    os.sched_setaffinity(0, {client_core})
    results: dict[tuple[str, bool, str], list[Result]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files, client = make_certificate(folder)
        configs = [(name, tls) for tls in (True, False) for name in SERVERS]
        for number in range(rounds):
            for name, tls in configs[number % len(configs) :] + configs[: number % len(configs)]:
                process, port = start(name, files if tls else None, folder, server_core)
                try:
                    scheme, context = ("wss", client) if tls else ("ws", None)
                    uri = f"{scheme}://localhost:{port}/echo"
                    for workload, bench in (("handshakes", handshakes), ("echo 1 KiB", echo)):
                        result = asyncio.run(bench(uri, context, process.pid, seconds))
                        results.setdefault((name, tls, workload), []).append(result)
                        print(
                            f"round {number + 1} {name:10} {'tls' if tls else 'plain':5} "
                            f"{workload:10} {result.rate:9.0f}/s {result.cpu_us:7.1f} µs CPU",
                            file=sys.stderr,
                        )
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(20)
    return results


def report(results: dict[tuple[str, bool, str], list[Result]]) -> str:
    lines = [
        "| workload | transport | rfc6455 /s | websockets /s | ratio | rfc6455 server CPU µs/op "
        "| websockets server CPU µs/op | ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workload in ("handshakes", "echo 1 KiB"):
        for tls in (True, False):
            ours = results[("rfc6455", tls, workload)]
            theirs = results[("websockets", tls, workload)]
            rate = [statistics.median(r.rate for r in rs) for rs in (ours, theirs)]
            cpu = [statistics.median(r.cpu_us for r in rs) for rs in (ours, theirs)]
            lines.append(
                f"| {workload} | {'TLS' if tls else 'plaintext'} | {rate[0]:,.0f} | {rate[1]:,.0f} "
                f"| {rate[0] / rate[1]:.2f} | {cpu[0]:.0f} | {cpu[1]:.0f} | {cpu[0] / cpu[1]:.2f} |"
            )
    return "\n".join(lines)


async def serve_websockets(port: int, cert: str | None, key: str | None) -> None:
    """The websockets peer: echo on every path, over TLS with ``server.tls``'s context."""
    from websockets.asyncio.server import ServerConnection, serve

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    context = None if cert is None or key is None else server_context(Path(cert), Path(key))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with serve(
        handler, HOST, port, ssl=context, compression=None, ping_interval=None, max_size=2**24
    ):
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--serve-websockets", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_websockets:
        asyncio.run(serve_websockets(args.port, args.cert, args.key))
        return
    print(report(run(args.rounds, args.seconds)))


if __name__ == "__main__":
    main()
