"""End-to-end benchmark: the project's server against peer servers, over loopback.

Run ``python benchmarks/e2e.py`` (about 15 minutes; ``--quick``: one round of a few
workloads, under 2 minutes). For every workload and round it starts each server afresh on a
free port, pinned with ``taskset`` to the first core this process may use, and drives it with
``python -m benchmarks.load`` pinned to the other cores (``--procs`` = their number):

- ``rfc6455``: the project, ``python -m server`` (``/echo`` is its echo endpoint, ``/`` the
  chat, which also wraps each message in JSON and persists it to SQLite: that is part of its
  real work);
- ``websockets``, ``aiohttp``, ``wsproto``: ``benchmarks/peers/*_peer.py``, the same two
  endpoints written with each library (``/``: each text message, unchanged, to every other
  client).

Workloads (each measured for 4 s after a 1 s warm-up, or 2 s after 0.5 s with ``--quick``):
echo with 32 B, 1 KiB, 64 KiB and 1 MiB text messages over 50 connections, with K = 1 and
K = 16 messages in flight per connection; broadcast of 64 B text from one sender to 100 and
1,000 receivers on ``/``, as fast as the receivers keep up (``--rate 0``); handshakes per
second (``connect`` mode, 20 loops, on ``/echo``); memory per idle connection (the server's
RSS before and after this process opens 5,000 idle WebSocket connections to ``/`` with raw
sockets, in batches of 50).

Rounds interleave the servers (A B C D A B C D ..., starting one further each round) so that
noise from other processes spreads over all of them; the tables give the median of the
rounds. A measurement in which the server or the generator waited for a CPU (run-queue time
from ``/proc/PID/task/*/schedstat``) for over 10% of the window is taken again, once. The
server's CPU time is utime + stime from ``/proc/PID/stat``, sampled every 20 ms and taken
over the load generator's measured window (``window_start`` to ``window_end`` of its report,
in ``time.monotonic()`` seconds, or else the ``duration`` seconds that end when it prints
its report). Ratios are ``rfc6455 ÷ peer``: for a throughput (messages/s, deliveries/s,
handshakes/s) above 1 means the project is faster; for CPU per message or delivery and for
memory per connection, below 1 means the project spends less.

With ``--markdown`` the tables go to stdout as Markdown (for benchmarks/README.md), the
progress and plain-text tables to stderr. ``--save FILE`` writes every round's raw numbers
as JSON.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import itertools
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benchmarks" / "peers"
PROJECT = "rfc6455"
SERVERS = (PROJECT, "websockets", "aiohttp", "wsproto")
PEER_NAMES = SERVERS[1:]
HOST = "127.0.0.1"
MAX_MESSAGE = 16 * 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KiB = 1024
MiB = 1024 * 1024
X = "\N{MULTIPLICATION SIGN}"

# Where the plain-text output goes: stderr when --markdown puts the Markdown on stdout.
out: TextIO = sys.stdout


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# Workloads


@dataclass(frozen=True)
class Workload:
    """One measurement, run against every server in every round."""

    name: str  # for --only and the tables
    mode: str  # echo | broadcast | connect | memory | subscribe
    path: str
    connections: int
    k: int = 1
    size: int = 0
    rate: float = 0.0
    senders: int = 0
    # Seconds of warm-up at least: 50 x 16 x 1 MiB in flight take about 2 s to get going.
    min_warmup: float = 0.0
    # The chat channel of a broadcast or subscribe run (the load generator's --channel).
    channel: str | None = None
    # The servers it runs on (empty: all of them); the chat's channels are the project's own.
    servers: tuple[str, ...] = ()

    @property
    def metric(self) -> str:
        return {
            "echo": "messages_per_s",
            "broadcast": "deliveries_per_s",
            "connect": "handshakes_per_s",
            "memory": "kib_per_connection",
            "subscribe": "messages_per_s",
        }[self.mode]

    @property
    def unit(self) -> str:
        return {
            "echo": "messages/s",
            "broadcast": "deliveries/s",
            "connect": "handshakes/s",
            "memory": "KiB/connection",
            "subscribe": "requests/s",
        }[self.mode]

    def describe(self) -> str:
        if self.mode == "echo":
            return f"echo {size_name(self.size)}, {self.connections} conn, K={self.k}"
        if self.mode == "broadcast":
            rate = f"{self.rate:g} msg/s" if self.rate else "max rate"
            return f"broadcast {size_name(self.size)} 1→{self.connections - 1}, {rate}"
        if self.mode == "connect":
            return f"handshakes, {self.connections} at a time"
        if self.mode == "subscribe":
            listeners = self.connections - self.senders
            return f"subscribe/unsubscribe {self.channel}, {self.senders} conn, {listeners} listen"
        return f"memory, {self.connections:,} idle conn"

    def runs_on(self, server: str) -> bool:
        return not self.servers or server in self.servers


def save_run(
    path: Path,
    header: Sequence[str],
    rounds: int,
    timings: Any,
    workloads: Sequence[Any],
    results: dict[str, dict[str, list[Any]]],
    **extra: object,
) -> None:
    """Write a run's figures as JSON (``--save``): the machine, the rounds, ``extra`` (the
    sizes...), the timings, the workloads and every measurement."""
    path.write_text(
        json.dumps(
            {
                "machine": list(header),
                "rounds": rounds,
                **extra,
                "timings": asdict(timings),
                "workloads": [{"type": type(w).__name__, **asdict(w)} for w in workloads],
                "results": {
                    w: {s: [asdict(m) for m in ms] for s, ms in by.items()}
                    for w, by in results.items()
                },
            },
            indent=1,
        )
    )


def report_targets(
    verdicts: Sequence[tuple[str, str, str]],
    header: Sequence[str],
    *,
    markdown: bool,
    out: TextIO,
) -> None:
    """Print (target, measured, verdict) rows and the machine's lines, as text on ``out`` and,
    with ``markdown``, as a table on stdout."""
    print("\nTargets", file=out)
    for target, measured, verdict in verdicts:
        print(f"  {target}: {measured}, {verdict}", file=out)
    print("", file=out)
    for line in header:
        print(f"  {line}", file=out)
    if markdown:
        print("\nTargets:\n\n| target | measured | met? |\n|---|--:|---|")
        for target, measured, verdict in verdicts:
            print(f"| {target} | {measured} | {verdict} |")
        print("\n" + "\n".join(f"- {line}" for line in header))


def size_name(size: int) -> str:
    if size >= MiB:
        return f"{size // MiB} MiB"
    if size >= KiB:
        return f"{size // KiB} KiB"
    return f"{size} B"


def size_tag(size: int) -> str:
    return size_name(size).replace(" ", "")


def echo(size: int, k: int) -> Workload:
    in_flight = 50 * k * size
    warmup = 3.0 if in_flight > 100 * MiB else 1.5 if in_flight > 10 * MiB else 0.0
    name = f"echo-{size_tag(size)}-k{k}"
    return Workload(name, "echo", "/echo", 50, k=k, size=size, min_warmup=warmup)


def broadcast(receivers: int) -> Workload:
    # One more connection than receivers: the sender, which the chat does not send back to.
    return Workload(
        f"broadcast-{receivers}",
        "broadcast",
        "/",
        receivers + 1,
        size=BROADCAST_SIZE,
        rate=BROADCAST_RATE,
        senders=1,
    )


# Rate 0: the sender goes as fast as the receivers keep up, at most the generator's window (64
# messages) ahead of them. That loads the server as much as the one load-generator process
# can take, and never lets messages pile up in the servers' write buffers (where a write
# would cost less than a real send and CPU per delivery would stop meaning one write each).
BROADCAST_RATE = 0.0
BROADCAST_SIZE = 64
CONNECT_CONCURRENCY = 20


def all_workloads(quick: bool, idle: int) -> list[Workload]:
    if quick:
        sizes_k = [(32, 1), (32, 16), (64 * KiB, 1), (MiB, 1)]
        fanouts = [100]
    else:
        sizes_k = [(s, k) for s in (32, KiB, 64 * KiB, MiB) for k in (1, 16)]
        fanouts = [100, 1000]
    return [
        *(echo(size, k) for size, k in sizes_k),
        *(broadcast(n) for n in fanouts),
        Workload("connect", "connect", "/echo", CONNECT_CONCURRENCY),
        Workload("memory", "memory", "/", idle),
    ]


def select(workloads: list[Workload], only: Sequence[str]) -> list[Workload]:
    """Workloads named ``o`` or ``o-...`` for one ``o`` of ``only`` (all when empty)."""
    if not only:
        return workloads
    chosen = [w for w in workloads if any(w.name == o or w.name.startswith(o + "-") for o in only)]
    if not chosen:
        names = ", ".join(w.name for w in workloads)
        raise SystemExit(f"--only matched no workload; they are: {names}")
    return chosen


# CPUs and limits


def cpus() -> tuple[list[int], list[int]]:
    """The server's core and the load generator's cores."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        raise SystemExit("needs at least 2 cores: one for the server, one for the load")
    return available[:1], available[1:]


def raise_nofile(needed: int) -> None:
    """Allow ``needed`` open files, up to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        log(f"warning: RLIMIT_NOFILE is {soft}, fewer than the {needed} files needed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def python_path() -> str:
    """The repository first, for ``-m server`` and ``-m benchmarks.load``."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def taskset(cores: Sequence[int]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cores))]


# The server under test


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    # Fields 14 and 15 of proc(5); ``fields`` starts at field 3 (state).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_wait_seconds(pid: int) -> float:
    """Time the threads of ``pid`` spent runnable but waiting for a CPU (schedstat, field 2).

    A server pinned to one core waits when other processes run on that core: its throughput
    then drops while its CPU time does not rise, which CPU time alone cannot tell.
    """
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[1])
    return total / 1e9


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class CpuSampler:
    """Samples a process's CPU time and run-queue wait every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (time, CPU, wait)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            now = time.monotonic()
            cpu = proc_cpu_seconds(self.pid)
            self.samples.append((now, cpu, proc_wait_seconds(self.pid)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def at(self, when: float, column: int = 1) -> float:
        """CPU time (column 1) or wait (2) at ``when``, interpolated between two samples."""
        samples = self.samples
        if not samples:
            raise RuntimeError("no CPU samples")
        if when <= samples[0][0]:
            return samples[0][column]
        for before, after in itertools.pairwise(samples):
            t0, v0, t1, v1 = before[0], before[column], after[0], after[column]
            if t0 <= when <= t1:
                return v0 if t1 == t0 else v0 + (v1 - v0) * (when - t0) / (t1 - t0)
        return samples[-1][column]

    def between(self, start: float, end: float) -> tuple[float, float]:
        """CPU seconds and run-queue wait seconds from ``start`` to ``end``."""
        return (
            self.at(end) - self.at(start),
            self.at(end, 2) - self.at(start, 2),
        )


class Server:
    """One server process, pinned to ``cores``, on a free port; logs go to ``workdir``.

    ``loop``: the event loop it runs on, as ``CHAT_LOOP`` (the project's ``--loop``, which
    the peers read too; benchmarks/bench_loop.py): asyncio's unless told otherwise, so that
    the project does not run on uvloop where the peers do not just because it is installed.
    """

    # What runs ``command()``.
    interpreter = sys.executable

    def __init__(
        self, name: str, cores: Sequence[int], workdir: Path, loop: str = "asyncio"
    ) -> None:
        self.name = name
        self.cores = cores
        self.workdir = workdir
        self.loop = loop
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{name}.log"

    def command(self) -> list[str]:
        if self.name == PROJECT:
            return ["-m", "server", *self.project_options()]
        return [str(PEERS / f"{self.name}_peer.py"), "--host", HOST, "--port", str(self.port)]

    def project_options(self) -> list[str]:
        """The options ``python -m server`` runs with."""
        return [
            *("--host", HOST, "--port", str(self.port)),
            *("--db", str(self.workdir / "m.db")),
            *("--ping-interval", "0", "--max-message-size", str(MAX_MESSAGE)),
            # The broadcast workloads send far more than a chat client may (20 msg/s).
            *("--rate-limit", "0"),
        ]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def url(self, path: str) -> str:
        return f"ws://{HOST}:{self.port}{path}"

    def start(self, timeout: float = 20.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env["PYTHONPATH"] = python_path()
        env["CHAT_LOOP"] = self.loop
        with open(self.log_path, "ab") as log_file:
            # taskset execs the command: the pid is the server's own.
            self.process = subprocess.Popen(
                [*taskset(self.cores), self.interpreter, *self.command()],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start-up: {self.tail()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
            except OSError:
                time.sleep(0.05)
            else:
                time.sleep(0.2)  # let it take the probe's EOF before anything is measured
                return
        raise RuntimeError(f"{self.name} did not listen within {timeout} s: {self.tail()}")

    def stop(self, *, kill: bool = False, timeout: float = 20.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"  {self.name} ignored SIGTERM for {timeout} s: killed")
            process.kill()
            process.wait()

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])


# The load generator


@dataclass
class Timings:
    duration: float
    warmup: float


def load_command(
    module: str, workload: Workload, url: str, timings: Timings, procs: int, binary: bool
) -> list[str]:
    args = [workload.mode, url, "-c", str(workload.connections)]
    if workload.mode == "echo":
        args += ["-k", str(workload.k), "-s", str(workload.size)]
        if binary:
            args.append("--binary")
    elif workload.mode == "broadcast":
        args += ["-s", str(workload.size), "--senders", str(workload.senders)]
        args += ["--rate", f"{workload.rate:g}"]
    elif workload.mode == "subscribe":
        args += ["--senders", str(workload.senders)]
    if workload.channel is not None:
        args += ["--channel", workload.channel]
    warmup = max(timings.warmup, workload.min_warmup)
    args += ["-d", f"{timings.duration:g}", "--warmup", f"{warmup:g}"]
    return ["-m", module, *args, "--procs", str(procs), "--json", "--quiet"]


@dataclass
class LoadRun:
    result: dict[str, Any]
    printed_at: float  # time.monotonic() when its stdout began: the end of its window
    sampler: CpuSampler  # the generator's (first) process


def run_load(command: list[str], cores: Sequence[int], timeout: float) -> LoadRun:
    """Run the load generator; its JSON result and when it printed it."""
    process = subprocess.Popen(
        [*taskset(cores), sys.executable, *command],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": python_path()},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    chunks: list[bytes] = []
    first: list[float] = []
    errors: list[bytes] = []

    def read_stdout() -> None:
        assert process.stdout is not None
        fd = process.stdout.fileno()
        while chunk := os.read(fd, 65536):
            if not first:
                first.append(time.monotonic())
            chunks.append(chunk)

    def read_stderr() -> None:
        assert process.stderr is not None
        errors.append(process.stderr.read())

    readers = [threading.Thread(target=read_stdout), threading.Thread(target=read_stderr)]
    for reader in readers:
        reader.start()
    sampler = CpuSampler(process.pid)
    try:
        with sampler:
            process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"load generator timed out after {timeout:g} s") from None
    finally:
        for reader in readers:
            reader.join()
    stderr = b"".join(errors).decode(errors="replace").strip()
    text = b"".join(chunks).decode(errors="replace")
    # Exit status 1 means it counted errors: the report still stands, errors included.
    start, end = text.find("{"), text.rfind("}")
    try:
        result = json.loads(text[start : end + 1]) if first and start >= 0 else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        tail = " | ".join(stderr.splitlines()[-5:])
        raise RuntimeError(
            f"load generator exited with {process.returncode} without a JSON report: {tail}"
        )
    return LoadRun(result, first[0], sampler)


# Idle connections, for the memory workload


def read_head(sock: socket.socket) -> bytes:
    """Read an HTTP response head (and whatever came after it) from a blocking socket."""
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("connection closed during the handshake")
        head += data
    return head


def upgrade_request(port: int, path: str, extensions: str | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    offer = "" if extensions is None else f"Sec-WebSocket-Extensions: {extensions}\r\n"
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{offer}\r\n"
    ).encode()


def open_idle(
    port: int, path: str, count: int, batch: int = 50, extensions: str | None = None
) -> list[socket.socket]:
    """Open ``count`` WebSocket connections with raw sockets; each got its 101 response.

    ``extensions``: a ``Sec-WebSocket-Extensions`` offer to make (bench_deflate.py).

    Batches stay under the listen backlog (asyncio's default is 100), so that no SYN is
    dropped and retried a second later.
    """
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            group = [
                socket.create_connection((HOST, port), timeout=30)
                for _ in range(min(batch, count - len(sockets)))
            ]
            sockets += group
            for sock in group:
                sock.sendall(upgrade_request(port, path, extensions))
            for sock in group:
                head = read_head(sock)
                if not head.startswith(b"HTTP/1.1 101"):
                    raise RuntimeError(f"upgrade refused: {head.splitlines()[0]!r}")
    except BaseException:
        close_all(sockets)
        raise
    return sockets


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
    sockets.clear()


# One measurement


@dataclass
class Measurement:
    value: float  # the workload's metric
    cpu_s: float | None = None  # server CPU seconds over the measured window
    window_s: float | None = None
    cpu_per_unit_us: float | None = None  # µs of server CPU per message/delivery/handshake
    p50_ms: float | None = None
    p99_ms: float | None = None
    waited_s: float | None = None  # server run-queue wait over the window: other load
    load_waited_s: float | None = None  # the same for the load generator's process
    errors: int = 0
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def noise(self) -> float:
        """The larger share of the window that the server or the generator spent waiting
        for a CPU that other processes had."""
        if not self.window_s:
            return 0.0
        waits = [w for w in (self.waited_s, self.load_waited_s) if w is not None]
        return max(waits, default=0.0) / self.window_s

    @property
    def cpu_util(self) -> float | None:
        if self.cpu_s is None or not self.window_s:
            return None
        return self.cpu_s / self.window_s


@dataclass
class Config:
    timings: Timings
    server_cores: list[int]
    load_cores: list[int]
    load_module: str
    binary: bool
    workdir: Path
    retries: int = 1
    noise_limit: float = 0.10


def count_errors(errors: object) -> int:
    if isinstance(errors, dict):
        return sum(int(v) for v in errors.values() if isinstance(v, int | float))
    if isinstance(errors, int | float):
        return int(errors)
    return 0


def measure(server: Server, workload: Workload, config: Config) -> Measurement:
    if workload.mode == "memory":
        return measure_memory(server, workload)
    timings = config.timings
    command = load_command(
        config.load_module,
        workload,
        server.url(workload.path),
        timings,
        len(config.load_cores),
        config.binary,
    )
    timeout = timings.duration + timings.warmup + workload.min_warmup + 120
    with CpuSampler(server.pid) as sampler:
        run = run_load(command, config.load_cores, timeout)
    result = run.result
    start, end = result.get("window_start"), result.get("window_end")
    if isinstance(start, int | float) and isinstance(end, int | float) and end > start:
        # The generator's own window, in time.monotonic() seconds (one clock machine-wide).
        window = float(end - start)
    else:
        # It prints its report the moment its window ends, and says how long it was.
        window = float(result.get("duration") or timings.duration)
        end = run.printed_at
        start = end - window
    cpu, waited = sampler.between(start, end)
    load_waited = run.sampler.between(start, end)[1]
    if workload.mode in ("echo", "subscribe"):
        units = float(result.get("messages") or 0)
    elif workload.mode == "broadcast":
        units = float(result.get("deliveries") or 0)
    else:
        units = float(result.get("handshakes_per_s") or 0) * window
    latency = result.get("latency_ms") or {}
    return Measurement(
        value=float(result.get(workload.metric) or 0),
        cpu_s=cpu,
        window_s=window,
        cpu_per_unit_us=cpu / units * 1e6 if units else None,
        waited_s=waited,
        load_waited_s=load_waited,
        p50_ms=latency.get("p50"),
        p99_ms=latency.get("p99"),
        errors=count_errors(result.get("errors")),
        raw=result,
    )


def measure_memory(
    server: Server,
    workload: Workload,
    prepare: Callable[[list[socket.socket]], None] | None = None,
) -> Measurement:
    """The server's RSS per idle connection; ``prepare`` is given the connections once they
    are open (the warm-up ones, then the measured ones), to send them somewhere."""
    # A few connections first, so that what the first one loads (modules, caches) is in
    # the baseline rather than spread over the measured ones.
    warm = open_idle(server.port, workload.path, 20)
    try:
        if prepare is not None:
            prepare(warm)
        time.sleep(0.5)
        before = proc_rss_bytes(server.pid)
        started = time.monotonic()
        sockets = open_idle(server.port, workload.path, workload.connections)
        if prepare is not None:
            prepare(sockets)
        opened_in = time.monotonic() - started
        try:
            time.sleep(1.0)
            after = proc_rss_bytes(server.pid)
        finally:
            # Kill the server before the clients leave: the project's chat would announce
            # every departure to every remaining client, 12.5 million writes for 5,000.
            server.stop(kill=True)
            close_all(sockets)
    finally:
        close_all(warm)
    per = (after - before) / workload.connections / 1024
    return Measurement(
        value=per,
        raw={"rss_before": before, "rss_after": after, "opened_in_s": opened_in},
    )


# The run


Results = dict[str, dict[str, list[Measurement]]]  # workload -> server -> rounds
# Starts a fresh server, measures one workload on it, stops it: (server, workload, config, tag).
MeasureOnce = Callable[[str, Workload, Config, str], Measurement]


def measure_once(name: str, workload: Workload, config: Config, tag: str) -> Measurement:
    """Start a fresh server, measure it, stop it."""
    return measure_on(Server(name, config.server_cores, config.workdir / tag), workload, config)


def measure_on(
    server: Server,
    workload: Workload,
    config: Config,
    how: Callable[[Server, Workload, Config], Measurement] = measure,
) -> Measurement:
    """Start ``server`` (not started yet), measure it (``how``), stop it."""
    server.workdir.mkdir(parents=True)
    try:
        server.start()
        return how(server, workload, config)
    finally:
        server.stop()


def run_all(
    workloads: list[Workload],
    servers: Sequence[str],
    rounds: int,
    config: Config,
    measure_one: MeasureOnce = measure_once,
) -> Results:
    """Every workload on every server it runs on, round after round, the servers taking turns.

    A measurement during which the server or the generator waited for a CPU (other processes
    on the machine) for more than ``config.noise_limit`` of the window is taken again, up to
    ``config.retries`` times and within a budget of a sixth of all measurements; the least
    disturbed attempt is kept.
    """
    results: Results = {w.name: {s: [] for s in servers} for w in workloads}
    total = sum(w.runs_on(s) for w in workloads for s in servers) * rounds
    budget = total // 6
    done = 0
    started = time.monotonic()
    for round_no in range(rounds):
        shift = round_no % len(servers)
        order = [*servers[shift:], *servers[:shift]]
        for workload in workloads:
            for name in filter(workload.runs_on, order):
                done += 1
                label = f"[{done}/{total}] round {round_no + 1} {workload.name} {name}"
                best: Measurement | None = None
                for attempt in range(config.retries + 1):
                    if attempt:
                        if budget <= 0:
                            break
                        budget -= 1
                    try:
                        m = measure_one(name, workload, config, f"{name}-{done}-{attempt}")
                    except Exception as exc:
                        log(f"{label}: FAILED: {exc}")
                        continue
                    log(f"{label}: {summary(workload, m)}")
                    if best is None or m.noise < best.noise:
                        best = m
                    if m.noise <= config.noise_limit:
                        break
                    if attempt < config.retries and budget > 0:
                        log(f"{label}: disturbed by other processes; again")
                if best is not None:
                    results[workload.name][name].append(best)
    log(f"measured in {time.monotonic() - started:.0f} s")
    return results


def summary(workload: Workload, m: Measurement) -> str:
    text = f"{m.value:,.1f} {workload.unit}"
    if m.cpu_util is not None:
        text += f", server CPU {m.cpu_util:.0%}"
    if m.waited_s is not None and m.window_s:
        text += f", waited for a CPU {m.noise:.0%}"
    if m.cpu_per_unit_us is not None:
        text += f", {m.cpu_per_unit_us:.2f} µs/unit"
    if m.p50_ms is not None and m.p99_ms is not None:
        text += f", p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms"
    if m.errors:
        text += f", {m.errors} errors"
    return text


# Medians and ratios


def median(values: Iterator[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Row:
    """The medians of one workload on one server."""

    value: float | None
    cpu_util: float | None
    cpu_per_unit_us: float | None
    p50_ms: float | None
    p99_ms: float | None
    noise: float | None
    errors: int
    rounds: int


def medians(results: Results) -> dict[str, dict[str, Row]]:
    table: dict[str, dict[str, Row]] = {}
    for workload, by_server in results.items():
        table[workload] = {}
        for server, ms in by_server.items():
            table[workload][server] = Row(
                value=median(m.value for m in ms),
                cpu_util=median(m.cpu_util for m in ms),
                cpu_per_unit_us=median(m.cpu_per_unit_us for m in ms),
                p50_ms=median(m.p50_ms for m in ms),
                p99_ms=median(m.p99_ms for m in ms),
                noise=median(m.noise if m.window_s else None for m in ms),
                errors=sum(m.errors for m in ms),
                rounds=len(ms),
            )
    return table


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


@dataclass(frozen=True)
class Target:
    text: str
    workload: str
    peer: str
    kind: str  # "value" (the metric) or "cpu" (CPU per unit)
    goal: float
    at_least: bool  # True: ratio >= goal; False: ratio <= goal


TARGETS = [
    Target(f"echo 32 B, 50 conn, K=1: ≥ 1.5{X} websockets' messages/s", "echo-32B-k1",
           "websockets", "value", 1.5, True),
    Target(f"echo 32 B, 50 conn, K=1: ≥ 1.0{X} aiohttp's messages/s", "echo-32B-k1",
           "aiohttp", "value", 1.0, True),
    Target(f"echo 64 KiB, K=1: ≥ 0.8{X} websockets", "echo-64KiB-k1", "websockets", "value",
           0.8, True),
    Target(f"echo 64 KiB, K=16: ≥ 0.8{X} websockets", "echo-64KiB-k16", "websockets", "value",
           0.8, True),
    Target(f"echo 1 MiB, K=1: ≥ 0.5{X} websockets", "echo-1MiB-k1", "websockets", "value",
           0.5, True),
    Target(f"echo 1 MiB, K=16: ≥ 0.5{X} websockets", "echo-1MiB-k16", "websockets", "value",
           0.5, True),
    Target(f"broadcast 1→100: server CPU per delivery ≤ 0.5{X} websockets'", "broadcast-100",
           "websockets", "cpu", 0.5, False),
    Target(f"broadcast 1→1,000: server CPU per delivery ≤ 0.5{X} websockets'", "broadcast-1000",
           "websockets", "cpu", 0.5, False),
    Target(f"handshake rate ≥ 1.5{X} websockets", "connect", "websockets", "value", 1.5, True),
    Target(f"memory per idle connection ≤ 0.5{X} websockets'", "memory", "websockets", "value",
           0.5, False),
]  # fmt: skip


def target_ratio(table: dict[str, dict[str, Row]], target: Target) -> float | None:
    rows = table.get(target.workload)
    if rows is None or PROJECT not in rows or target.peer not in rows:
        return None
    ours, theirs = rows[PROJECT], rows[target.peer]
    if target.kind == "cpu":
        return ratio(ours.cpu_per_unit_us, theirs.cpu_per_unit_us)
    return ratio(ours.value, theirs.value)


def verdict(value: float | None, target: Target) -> str:
    if value is None:
        return "not measured"
    sign = "≥" if target.at_least else "≤"
    met = value >= target.goal if target.at_least else value <= target.goal
    if met:
        return f"met ({value:.2f}{X} {sign} {target.goal}{X})"
    if target.at_least:
        short = 1 - value / target.goal
        return f"not met: {value:.2f}{X}, {short:.0%} short of {target.goal}{X}"
    return f"not met: {value:.2f}{X}, {value / target.goal - 1:.0%} over {target.goal}{X}"


# Output


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "—"
    if digits == 0 and abs(value) >= 100:
        return f"{value:,.0f}{suffix}"
    if abs(value) >= 100:
        return f"{value:,.0f}{suffix}"
    if abs(value) >= 10:
        return f"{value:.1f}{suffix}"
    return f"{value:.{max(digits, 2)}f}{suffix}"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}{X}"


def tables(
    workloads: list[Workload], servers: Sequence[str], table: dict[str, dict[str, Row]]
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for the throughput, CPU and latency tables."""
    peers = [s for s in servers if s != PROJECT]
    out_tables = []

    header = ["workload", "unit", *servers, *(f"÷ {p}" for p in peers)]
    rows = []
    for w in workloads:
        r = table[w.name]
        ours = r[PROJECT].value if PROJECT in r else None
        rows.append(
            [
                w.describe(),
                w.unit,
                *(fmt(r[s].value) for s in servers),
                *(fmt_ratio(ratio(ours, r[p].value)) for p in peers),
            ]
        )
    out_tables.append(("Throughput (memory: KiB per connection), medians", header, rows))

    header = [
        "workload",
        *(f"{s} µs (CPU)" for s in servers),
        *(f"÷ {p}" for p in peers),
        "waited",
    ]
    rows = []
    for w in workloads:
        if w.mode == "memory":
            continue
        r = table[w.name]
        ours = r[PROJECT].cpu_per_unit_us if PROJECT in r else None
        rows.append(
            [
                w.describe(),
                *(f"{fmt(r[s].cpu_per_unit_us, 2)} ({fmt_pct(r[s].cpu_util)})" for s in servers),
                *(fmt_ratio(ratio(ours, r[p].cpu_per_unit_us)) for p in peers),
                fmt_pct(max((r[s].noise or 0.0 for s in servers), default=None)),
            ]
        )
    out_tables.append(
        (
            "Server CPU per message (echo), delivery (broadcast) or handshake, in µs, "
            "with the server's CPU use in parentheses; medians. waited: the largest share "
            "of the window that a server or the generator waited for a CPU (other load)",
            header,
            rows,
        )
    )

    header = ["workload", *servers]
    rows = []
    for w in workloads:
        if w.mode not in ("echo", "broadcast"):
            continue
        r = table[w.name]
        rows.append(
            [w.describe(), *(f"{fmt(r[s].p50_ms, 2)} / {fmt(r[s].p99_ms, 2)}" for s in servers)]
        )
    out_tables.append(("Latency p50 / p99 in ms, medians", header, rows))
    return out_tables


def fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def print_text(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    print(f"\n{title}", file=out)
    for line in [header, *rows]:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                        enumerate(zip(line, widths, strict=True))), file=out)  # fmt: skip


def print_markdown(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}:\n")
    print("| " + " | ".join(header) + " |")
    print("|---|" + "--:|" * (len(header) - 1))
    for line in rows:
        print("| " + " | ".join(line) + " |")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def speedups() -> str:
    try:
        import websockets.speedups  # noqa: F401
    except ImportError:
        return "without its C speedups"
    return "with its C speedups"


def machine(config: Config, load_start: float, load_end: float, seconds: float) -> list[str]:
    return [
        datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}",
        f"CPU {cpu_model()}, {os.cpu_count()} logical cores; server on core "
        f"{','.join(map(str, config.server_cores))}, load generator on "
        f"{','.join(map(str, config.load_cores))} (--procs {len(config.load_cores)})",
        f"websockets {package_version('websockets')} ({speedups()}), "
        f"aiohttp {package_version('aiohttp')}, wsproto {package_version('wsproto')}",
        f"{seconds / 60:.1f} min; 1-minute load {load_start:.2f} at the start, "
        f"{load_end:.2f} at the end",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    global out
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument(
        "--quick", action="store_true", help="one round of fewer, shorter workloads"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="WORKLOAD",
        help="run only this workload, or those named WORKLOAD-... (repeatable): "
        "echo, echo-32B-k1, broadcast-1000, connect, memory, ...",
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated, from {', '.join(SERVERS)} (default: all)",
    )
    parser.add_argument("--markdown", action="store_true", help="Markdown tables on stdout")
    parser.add_argument("--save", type=Path, help="write every round's numbers here as JSON")
    parser.add_argument("--duration", type=float, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per run")
    parser.add_argument(
        "--idle", type=int, help="idle connections for the memory workload (default 5000)"
    )
    parser.add_argument("--binary", action="store_true", help="echo binary, not text, messages")
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="times to repeat a measurement disturbed by other processes (default 1)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.10,
        help="share of the window waiting for a CPU that counts as disturbed (default 0.10)",
    )
    parser.add_argument(
        "--load-module", default="benchmarks.load", help="the load generator, run with -m"
    )
    args = parser.parse_args(argv)

    if args.markdown:
        out = sys.stderr
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(SERVERS)
    if unknown or PROJECT not in servers:
        raise SystemExit(f"--servers: unknown {sorted(unknown)} or without {PROJECT}")
    rounds = args.rounds or (1 if args.quick else 3)
    idle = args.idle or (1000 if args.quick else 5000)
    timings = Timings(
        duration=args.duration or (2.0 if args.quick else 4.0),
        warmup=args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0),
    )
    workloads = select(all_workloads(args.quick, idle), args.only)
    server_cores, load_cores = cpus()
    # This process opens the idle connections: it runs beside the load generator.
    os.sched_setaffinity(0, load_cores)
    raise_nofile(2 * idle + 1000)

    load_start = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        config = Config(
            timings,
            server_cores,
            load_cores,
            args.load_module,
            args.binary,
            Path(tmp),
            retries=args.retries,
            noise_limit=args.noise,
        )
        results = run_all(workloads, servers, rounds, config)
    seconds = time.monotonic() - started
    load_end = os.getloadavg()[0]

    header = machine(config, load_start, load_end, seconds)
    table = medians(results)
    for title, head, rows in tables(workloads, servers, table):
        print_text(title, head, rows)
        if args.markdown:
            print_markdown(title, head, rows)
    targets = [t for t in TARGETS if t.workload in table and t.peer in servers]
    print("\nTargets", file=out)
    for t in targets:
        print(f"  {t.text}: {verdict(target_ratio(table, t), t)}", file=out)
    print("", file=out)
    for line in header:
        print(f"  {line}", file=out)
    if args.markdown:
        print("\nTargets:\n\n| target | rfc6455 ÷ peer | met? |\n|---|--:|---|")
        for t in targets:
            value = target_ratio(table, t)
            print(f"| {t.text} | {fmt_ratio(value)} | {verdict(value, t)} |")
        print("\n" + "\n".join(f"- {line}" for line in header))
    if args.save:
        save_run(args.save, header, rounds, timings, workloads, results)


if __name__ == "__main__":
    main()
