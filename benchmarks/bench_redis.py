"""Scale-out benchmark (issue 13): the Redis engine against the local one, in the same rounds.

Run ``python benchmarks/bench_redis.py`` (3 rounds, about 8 minutes; ``--quick``: 1 round,
smaller, about a minute; ``--markdown``: the tables as Markdown on stdout, for
benchmarks/README.md; ``--save FILE``: every measurement as JSON). It runs on
``benchmarks/e2e.py``'s machinery (``run_all``, ``CpuSampler``, ``run_load``, the
``Measurement``): rounds interleave the servers (A B C D, then B C D A, ...), every
measurement starts its servers afresh, and a fresh ``redis-server`` too (on a free port,
``--save ''``, no AOF, in the measurement's folder), the tables give the median of the rounds
and their range, and ratios are taken round by round against a peer measured in the same
round. CPU is utime + stime from ``/proc/PID/stat`` of each process (the redis-server's too),
sampled every 20 ms and taken over the load's window. **others** is what other processes
(other sessions' tests...) took of the server's core or of the load's core during the window:
the core's busy time from ``/proc/stat`` less the CPU of this benchmark's processes on it (as
bench_persistence.py counts it; the run-queue wait of e2e.py would count the two workers of
``--workers 2`` waiting for each other). A measurement where it is over 10% of the window is
taken again once.

Where things run, on a machine of 2 cores (``taskset``): the measured server, and node A of
``cross``, on the first core; the load (``python -m benchmarks.load``, or this process) and
the ``redis-server`` on the other (``--redis-with servers``: the ``redis-server`` on the
first core, with the servers).

The servers (``python -m server --ping-interval 0 --rate-limit 0``, as in e2e.py, with the
``--channels`` file of bench_channels.py: the namespace ``fan`` without presence or notices):

- ``local``: the local engine (SQLite, one process);
- ``redis``: ``--engine redis://...``, one node (its archive a SQLite file);
- ``cross``: two nodes on one Redis (and one SQLite archive, as on one host): the senders on
  node A, the receivers on node B, which is the one measured: every delivery crossed Redis
  from one node to the other (the load's ``--sender-url``);
- ``workers-1``, ``workers-2``: ``--workers N`` with the Redis engine: the supervisor and its
  workers, all on the first core; the measured CPU is theirs together;
- ``rfc6455``, ``websockets``: e2e.py's servers, for the local engine's regression check.

Workloads (their names for ``--only``):

- ``publish``: ``--senders`` (50) connections opened by this process, each with a clientId
  of its own, subscribed to a channel of its own (``fan:pub-I``, so no message is delivered
  to anyone: this is the publishing path alone) and keeping ``--window`` (64) publishes
  unacknowledged (each ack lets it send the next). Acks per second are messages published
  per second: the local engine acks once SQLite committed, the Redis engine once the script
  ran. Redis's CPU per message includes the archivers' reads of the streams.
- ``fanout``: bench_channels' ``fanout-channel-alone``: one sender publishes 64 B to
  ``fan:target`` as fast as the ``--receivers`` (1,000) keep up; server CPU per delivery.
- ``latency``: one sender publishes 64 B to ``fan:lat`` at ``--rate`` (1,000) messages/s to
  ``--latency-receivers`` (100): p50 and p99 from the send time stamped in each message to
  its arrival (on node B for ``cross``: from node A through Redis).
- ``fanout-general``, ``echo-32B-k1`` (e2e's broadcast to 1,000 and 32 B echo): the local
  engine against websockets, as bench_channels.py measures them.

The scale table and the projection for 8 and 16 cores are derived from ``publish`` and
``fanout`` with ``workers-1`` and ``workers-2``; the assumptions are printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import e2e
from benchmarks.loadgen.client import Client, open_client
from benchmarks.loadgen.stats import percentile
from benchmarks.loadgen.wire import CHAT_SUBSCRIBED, filler, masked_frame, request_frame
from rfc6455.typing import Data

__all__ = ["Deployment", "RedisServer", "RedisWorkload", "main"]

X = e2e.X
HOST = e2e.HOST
LOCAL, REDIS, CROSS, WORKERS_1, WORKERS_2 = "local", "redis", "cross", "workers-1", "workers-2"
PROJECT, PEER = e2e.PROJECT, "websockets"
SERVERS = (LOCAL, REDIS, CROSS, WORKERS_1, WORKERS_2, PROJECT, PEER)
WORKERS = {WORKERS_1: 1, WORKERS_2: 2}
# Issue 13's targets.
TARGET_PUBLISH_PER_S = 20_000
TARGET_CROSS_CPU_RATIO = 1.3
TARGET_CROSS_P99_MS = 2.0
# benchmarks/README.md, "Channels (issue 12)", run C and the runs on the merged code:
# rfc6455 ÷ websockets, messages/s (echo) and server CPU per delivery (broadcast).
RECORDED = {
    "echo-32B-k1": f"1.61{X} (1.65{X} to 1.67{X} merged)",
    "fanout-general": f"0.26{X} (0.25{X} to 0.27{X} merged)",
}
# Within this of the recorded ratio is noise: bench_channels' rounds moved by ±10%.
NOISE = 0.10
# Subscribes the load keeps waiting at once. redis-py's connection pool allows 100
# connections and the engine takes one per command in flight: more subscribes at once than
# that, and the engine takes "Too many connections" for Redis lost (benchmarks/README.md).
OPEN_CONCURRENCY = 32
NAMESPACES = """\
# bench_redis.py (as bench_channels.py): big channels without member lists or notices.
[namespaces.fan]
presence = false
join_leave = false
"""
_ACK = '{"type":"ack",'
_ERROR = '{"type":"error",'
_CODE = '"code":"'
_perf_ns = time.perf_counter_ns

out: TextIO = sys.stdout


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def stop_on_sigterm() -> None:
    """SIGTERM ends the run as Ctrl-C does: the servers of the measurement are stopped."""

    def interrupted(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)


# Workloads


@dataclass(frozen=True)
class RedisWorkload(e2e.Workload):
    """A workload of this benchmark; ``publish`` runs in this process (``window``: publishes
    each sender keeps unacknowledged)."""

    window: int = 0

    @property
    def metric(self) -> str:
        return "acks_per_s" if self.mode == "publish" else super().metric

    @property
    def unit(self) -> str:
        return "messages/s" if self.mode == "publish" else super().unit

    def describe(self) -> str:
        if self.mode == "publish":
            return (
                f"publish with acks, {self.senders} senders, {self.window} unacknowledged each, "
                "a channel each"
            )
        if self.mode == "broadcast":
            rate = f"{self.rate:,.0f} msg/s" if self.rate else "max rate"
            return f"publish to {self.channel}, 1→{self.connections - 1}, {rate}"
        return super().describe()


@dataclass(frozen=True)
class Sizes:
    senders: int = 50
    window: int = 64
    receivers: int = 1000
    latency_receivers: int = 100
    rate: int = 1000


def workloads(sizes: Sizes) -> list[e2e.Workload]:
    """Every workload, in the order a round runs them."""
    engines = (LOCAL, REDIS, CROSS, WORKERS_1, WORKERS_2)
    return [
        RedisWorkload(
            "publish",
            "publish",
            "/",
            sizes.senders,
            senders=sizes.senders,
            window=sizes.window,
            servers=(LOCAL, REDIS, WORKERS_1, WORKERS_2),
        ),
        RedisWorkload(
            "fanout",
            "broadcast",
            "/",
            sizes.receivers + 1,
            size=e2e.BROADCAST_SIZE,
            rate=e2e.BROADCAST_RATE,
            senders=1,
            channel="fan:target",
            servers=engines,
        ),
        RedisWorkload(
            "latency",
            "broadcast",
            "/",
            sizes.latency_receivers + 1,
            size=e2e.BROADCAST_SIZE,
            rate=float(sizes.rate),
            senders=1,
            channel="fan:lat",
            servers=(LOCAL, REDIS, CROSS),
        ),
        dataclasses.replace(
            e2e.broadcast(sizes.receivers), name="fanout-general", servers=(PROJECT, PEER)
        ),
        dataclasses.replace(e2e.echo(32, 1), servers=(PROJECT, PEER)),
    ]


# The processes


class RedisServer:
    """A ``redis-server`` on a free port of 127.0.0.1, pinned to ``cores``, in ``folder``
    (``--save ''``, no AOF: what the engine's speed is measured with; see
    tests/server/redis_service.py, which this follows)."""

    def __init__(self, cores: Sequence[int], folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("bench_redis.py needs redis-server (Debian's redis-server)")
        self.binary = binary
        self.cores = cores
        self.folder = folder
        self.port = e2e.free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 20.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            *e2e.taskset(self.cores),
            self.binary,
            *("--bind", HOST, "--port", str(self.port), "--dir", str(self.folder)),
            *("--save", "", "--appendonly", "no", "--protected-mode", "no"),
            *("--loglevel", "warning"),
        ]
        with open(self.folder / "redis.log", "ab") as log_file:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: see {self.folder}/redis.log")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), 1) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(20)


class Node(e2e.Server):
    """``python -m server`` with e2e's options, an engine, the ``--channels`` file, and
    ``--workers`` (a supervisor: ``pids`` then has its workers too)."""

    def __init__(
        self,
        name: str,
        cores: Sequence[int],
        workdir: Path,
        *,
        engine: str = "local",
        workers: int = 0,
        namespaces: Path | None = None,
        db: Path | None = None,
    ) -> None:
        super().__init__(name, cores, workdir)
        self.engine = engine
        self.workers = workers
        self.namespaces = namespaces
        self.db = db
        self.worker_pids: list[int] = []

    def command(self) -> list[str]:
        options = self.project_options()
        if self.db is not None:
            options += ["--db", str(self.db)]  # the last --db wins: a shared archive
        options += ["--engine", self.engine, "--log-level", "WARNING"]
        if self.namespaces is not None:
            options += ["--channels", str(self.namespaces)]
        if self.workers:
            options += ["--workers", str(self.workers)]
        return ["-m", "server", *options]

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        if not self.workers:
            return
        # The port answers once one worker listens: wait for all of them (a listening
        # socket each, with SO_REUSEPORT).
        deadline = time.monotonic() + timeout
        while listening_sockets(self.port) < self.workers:
            if time.monotonic() > deadline or self.process is None or self.process.poll():
                raise RuntimeError(f"{self.name}: not every worker listens: {self.tail()}")
            time.sleep(0.05)
        self.worker_pids = children(self.pid)

    def pids(self) -> dict[str, int]:
        """The processes whose CPU is the server's: the supervisor and its workers."""
        found = {"server": self.pid}
        found.update((f"worker-{i}", pid) for i, pid in enumerate(self.worker_pids))
        return found


def listening_sockets(port: int) -> int:
    """Sockets listening on 127.0.0.1:``port`` (``/proc/net/tcp``)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return sum(1 for line in f if line.split()[1:2] == [local] and line.split()[3] == "0A")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (``/proc/PID/task/*/children``)."""
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return sorted(found)


class Deployment:
    """What one server name runs for one measurement: Redis if need be, one or two nodes.

    ``url`` is where the receivers (or publishers) connect, ``sender_url`` where a
    broadcast's senders do (node A of ``cross``); ``measured`` are the processes whose CPU is
    the server's, ``others`` those measured beside it (Redis, node A).
    """

    def __init__(self, name: str, config: Config, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        server, load = config.server_cores, config.load_cores
        namespaces = workdir / "namespaces.toml"
        self.redis_with = config.redis_with
        redis_cores = server if config.redis_with == "servers" else load
        self.redis = RedisServer(redis_cores, workdir / "redis") if name != LOCAL else None
        engine = "local" if self.redis is None else self.redis.url
        db = workdir / "archive.db"
        self.node = Node(
            name,
            server,
            workdir,
            engine=engine,
            workers=WORKERS.get(name, 0),
            namespaces=namespaces,
            db=db,
        )
        self.sender_node = (
            Node("node-a", server, workdir, engine=engine, namespaces=namespaces, db=db)
            if name == CROSS
            else None
        )
        self.namespaces = namespaces

    @property
    def url(self) -> str:
        return self.node.url("/")

    @property
    def sender_url(self) -> str | None:
        return None if self.sender_node is None else self.sender_node.url("/")

    def start(self) -> None:
        self.workdir.mkdir(parents=True)
        self.namespaces.write_text(NAMESPACES)
        if self.redis is not None:
            self.redis.start()
        self.node.start()
        if self.sender_node is not None:
            self.sender_node.start()

    def stop(self) -> None:
        # Killed: a graceful stop would close every client and announce each departure.
        for node in (self.sender_node, self.node):
            if node is not None:
                node.stop(kill=True)
                for pid in node.worker_pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if self.redis is not None:
            self.redis.stop()

    def measured(self) -> dict[str, int]:
        return self.node.pids()

    def others(self) -> dict[str, int]:
        found = {}
        if self.redis is not None:
            found["redis"] = self.redis.pid
        if self.sender_node is not None:
            found["node-a"] = self.sender_node.pid
        return found

    def on_server_cores(self) -> set[str]:
        """The processes (of ``measured`` and ``others``) pinned to the server's cores."""
        beside = ["node-a"] if self.sender_node is not None else []
        if self.redis is not None and self.redis_with == "servers":
            beside.append("redis")
        return {*self.measured(), *beside}


class CoreSampler(e2e.CpuSampler):
    """Samples the busy time of ``cores`` (``/proc/stat``: user, nice, system and steal, as
    bench_persistence.py counts it), as ``CpuSampler`` samples a process's CPU time."""

    def __init__(self, cores: Sequence[int], interval: float = 0.02) -> None:
        super().__init__(0, interval)
        self.cores = cores

    def _sample(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.samples.append((time.monotonic(), busy_seconds(self.cores), 0.0))


class Samplers:
    """An ``e2e.CpuSampler`` for each of several processes, and a ``CoreSampler`` for the
    server's and the load's cores (``core.server``, ``core.load``)."""

    def __init__(self, pids: dict[str, int], config: e2e.Config) -> None:
        self.samplers: dict[str, e2e.CpuSampler] = {
            name: e2e.CpuSampler(pid) for name, pid in pids.items()
        }
        self.samplers["core.server"] = CoreSampler(config.server_cores)
        self.samplers["core.load"] = CoreSampler(config.load_cores)

    def __enter__(self) -> Samplers:
        for sampler in self.samplers.values():
            sampler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for sampler in self.samplers.values():
            sampler.__exit__()

    def between(self, start: float, end: float) -> dict[str, tuple[float, float]]:
        """Each process's CPU seconds and run-queue wait seconds from ``start`` to ``end``."""
        return {name: s.between(start, end) for name, s in self.samplers.items()}


# One measurement


@dataclass
class Config(e2e.Config):
    open_concurrency: int = OPEN_CONCURRENCY
    redis_with: str = "load"  # the core redis-server is pinned to: "load" or "servers"


def measure_once(
    name: str, workload: e2e.Workload, config: e2e.Config, tag: str
) -> e2e.Measurement:
    """Start what ``name`` runs, measure ``workload`` on it, stop it."""
    if name in (PROJECT, PEER):
        return e2e.measure_once(name, workload, config, tag)
    assert isinstance(config, Config)
    deployment = Deployment(name, config, config.workdir / tag)
    try:
        deployment.start()
        if workload.mode == "publish":
            return measure_publish(deployment, workload, config)
        return measure_broadcast(deployment, workload, config)
    finally:
        deployment.stop()


def busy_seconds(cores: Sequence[int]) -> float:
    """CPU seconds ``cores`` spent running processes since boot (``/proc/stat``: user, nice,
    system and steal; not irq and softirq, mostly the benchmark's own loopback traffic)."""
    total = 0
    wanted = {f"cpu{core}" for core in cores}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if name in wanted:
                user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, fields[:8])
                total += user + nice + system + steal
    return total / e2e.CLOCK_TICKS


def cpu_fields(
    deployment: Deployment,
    samplers: Samplers,
    start: float,
    end: float,
    units: float,
    load_cpu: float,
) -> dict[str, float]:
    """Over the window: the measured server's CPU, each process's, and what other processes
    took of each core (``others.server``, ``others.load``): the core's busy time less the CPU
    of the processes of this benchmark on it (``load_cpu``: the load generator's or this
    process's)."""
    measured = set(deployment.measured())
    spent = samplers.between(start, end)
    cpu = {name: used for name, (used, _wait) in spent.items()}
    on_server = deployment.on_server_cores()
    server_busy, load_busy = cpu.pop("core.server"), cpu.pop("core.load")
    fields = {
        "cpu_s": sum(cpu[n] for n in measured),
        # Run-queue wait of the measured processes (with --workers 2, each waits for the other).
        "runqueue_wait_s": max(spent[n][1] for n in measured),
        "others.server": max(0.0, server_busy - sum(cpu[n] for n in on_server)),
        "others.load": max(
            0.0, load_busy - load_cpu - sum(v for n, v in cpu.items() if n not in on_server)
        ),
        "units": units,
    }
    for name, used in cpu.items():
        fields[f"cpu_s.{name}"] = used
    return fields


def measurement(
    value: float, fields: dict[str, float], window: float, units: float, **rest: object
) -> e2e.Measurement:
    cpu = fields["cpu_s"]
    return e2e.Measurement(
        value=value,
        cpu_s=cpu,
        window_s=window,
        cpu_per_unit_us=cpu / units * 1e6 if units else None,
        # e2e's "waited", here what other processes took of the server's and the load's cores.
        waited_s=fields["others.server"],
        load_waited_s=fields["others.load"],
        **rest,  # type: ignore[arg-type]
    )


def measure_broadcast(
    deployment: Deployment, workload: e2e.Workload, config: Config
) -> e2e.Measurement:
    """The load generator's broadcast to a channel, on one node or from node A to node B."""
    timings = config.timings
    command = e2e.load_command(
        config.load_module,
        workload,
        deployment.url,
        timings,
        len(config.load_cores),
        config.binary,
    )
    command += ["--open-concurrency", str(config.open_concurrency)]
    if deployment.sender_url is not None:
        command += ["--sender-url", deployment.sender_url]
    timeout = timings.duration + timings.warmup + 180
    pids = {**deployment.measured(), **deployment.others(), "driver": os.getpid()}
    with Samplers(pids, config) as samplers:
        run = e2e.run_load(command, config.load_cores, timeout)
    result = run.result
    start, end = result.get("window_start"), result.get("window_end")
    if not (isinstance(start, int | float) and isinstance(end, int | float) and end > start):
        raise RuntimeError("the load generator measured no window")
    units = float(result.get("deliveries") or 0)
    load_cpu = run.sampler.between(start, end)[0]
    fields = cpu_fields(deployment, samplers, start, end, units, load_cpu)
    latency = result.get("latency_ms") or {}
    raw = {**result, **fields, "messages": result.get("messages")}
    return measurement(
        float(result.get("deliveries_per_s") or 0),
        fields,
        float(end - start),
        units,
        p50_ms=latency.get("p50"),
        p99_ms=latency.get("p99"),
        errors=e2e.count_errors(result.get("errors")),
        raw=raw,
    )


# The publishing load, in this process


class PublishLoad:
    """``senders`` connections, each subscribed to a channel of its own and keeping
    ``window`` publishes unacknowledged."""

    def __init__(self, url: str, senders: int, window: int) -> None:
        self.url = url
        self.window = window
        self.key = os.urandom(4)  # one masking key for the process, as the load generator
        self.publishers = [Publisher(self, i) for i in range(senders)]
        self.clients: list[Client] = []
        self.running = False
        self.recording = False
        self.subscribed = 0
        self.acks = 0
        self.samples: list[int] = []  # send-to-ack, ns, over the window
        self.errors: Counter[str] = Counter()

    async def connect(self, concurrency: int, timeout: float = 60.0) -> None:
        limit = asyncio.Semaphore(concurrency)

        async def one(publisher: Publisher) -> Client:
            async with limit:
                client = await open_client(
                    f"{self.url}?clientId={publisher.client_id}", 10.0, publisher
                )
                publisher.client = client
                client.on_close = self._lost
                client.send_frame(request_frame("subscribe", publisher.channel, self.key))
                return client

        self.clients = list(await asyncio.gather(*(one(p) for p in self.publishers)))
        deadline = time.monotonic() + timeout
        while self.subscribed < len(self.publishers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.subscribed} of {len(self.publishers)} subscribed")
            await asyncio.sleep(0.01)

    def _lost(self, client: Client) -> None:
        if self.running:
            self.errors[f"closed_{client.close_code}"] += 1

    def start(self) -> None:
        self.running = True
        for publisher in self.publishers:
            for _ in range(self.window):
                publisher.send()

    def close(self) -> None:
        self.running = False
        for client in self.clients:
            client.abort()


class Publisher:
    """One connection of ``PublishLoad``: its message callback and its publishes."""

    __slots__ = ("channel", "client", "client_id", "head", "index", "load", "sent", "sent_at")

    def __init__(self, load: PublishLoad, index: int) -> None:
        self.load = load
        self.index = index
        self.channel = f"fan:pub-{index}"
        self.client_id = str(uuid.uuid4())  # a sender the engine recognises: ids deduplicated
        self.sent = 0
        self.sent_at: deque[int] = deque()
        self.client: Client | None = None
        self.head = (
            f'{{"type":"publish","channel":"{self.channel}","message":"m{index} {filler(24)} '
        )

    def send(self) -> None:
        assert self.client is not None
        n = self.sent
        self.sent = n + 1
        self.sent_at.append(_perf_ns())
        text = f'{self.head}{n}","clientMsgId":"{n}"}}'
        self.client.send_frame(masked_frame(text, self.load.key))

    def __call__(self, message: Data) -> None:
        load = self.load
        if type(message) is not str:
            load.errors["binary"] += 1
            return
        if message.startswith(_ACK):
            load.acks += 1
        elif message.startswith(_ERROR):
            start = message.find(_CODE) + len(_CODE)
            code = message[start : message.find('"', start)]
            load.errors[f"error_{code}"] += 1
        else:
            if message.startswith(CHAT_SUBSCRIBED):
                load.subscribed += 1
            return  # the greeting, general's history
        # An ack or an error answers the oldest publish in flight: send the next.
        if self.sent_at:
            sent_at = self.sent_at.popleft()
            if load.recording:
                load.samples.append(_perf_ns() - sent_at)
        if load.running:
            self.send()


def measure_publish(
    deployment: Deployment, workload: e2e.Workload, config: Config
) -> e2e.Measurement:
    """Publishes acknowledged per second, the servers' and Redis's CPU per message."""
    assert isinstance(workload, RedisWorkload)
    timings = config.timings
    load = PublishLoad(deployment.url, workload.senders, workload.window)
    # This process is the load: its CPU is counted as the load generator's.
    pids = {**deployment.measured(), **deployment.others(), "driver": os.getpid()}

    async def drive() -> tuple[float, float, int]:
        try:
            await load.connect(config.open_concurrency)
            load.start()
            await asyncio.sleep(timings.warmup)
            acks0, start = load.acks, time.monotonic()
            load.recording = True
            await asyncio.sleep(timings.duration)
            load.recording = False
            return start, time.monotonic(), load.acks - acks0
        finally:
            load.close()
            await asyncio.sleep(0.1)  # let the transports see they are closed

    with Samplers(pids, config) as samplers:
        start, end, acks = asyncio.run(drive())
    window = end - start
    fields = cpu_fields(deployment, samplers, start, end, float(acks), 0.0)
    samples = sorted(load.samples)
    return measurement(
        acks / window,
        fields,
        window,
        float(acks),
        p50_ms=percentile(samples, 50) / 1e6 if samples else None,
        p99_ms=percentile(samples, 99) / 1e6 if samples else None,
        errors=sum(load.errors.values()),
        raw={**fields, "acks": acks, "errors": dict(load.errors)},
    )


# The tables


Results = e2e.Results
Table = tuple[str, list[str], list[list[str]]]


def ms_of(results: Results, workload: str, server: str) -> list[e2e.Measurement]:
    return results.get(workload, {}).get(server, [])


def column(ms: Sequence[e2e.Measurement], what: str) -> list[float]:
    """One figure of each round: ``value``, ``cpu_us`` (server µs per unit), ``cpu_pct``,
    ``p50``, ``p99``, ``<process>_us`` (that process's µs per unit, from ``raw``),
    ``all_us`` (every process measured, per unit), ``nodes_us`` (the same less Redis: the
    chat servers), ``<process>_per_msg_us`` (per message
    sent: a broadcast's deliveries are ``messages`` times the receivers)."""
    found: list[float | None] = []
    for m in ms:
        units = m.raw.get("units") or 0
        messages = m.raw.get("messages") or m.raw.get("acks") or 0
        if what == "value":
            found.append(m.value)
        elif what == "cpu_us":
            found.append(m.cpu_per_unit_us)
        elif what == "cpu_pct":
            found.append(None if m.cpu_util is None else m.cpu_util * 100)
        elif what == "p50":
            found.append(m.p50_ms)
        elif what == "p99":
            found.append(m.p99_ms)
        elif what in ("all_us", "nodes_us"):
            total = sum(
                v
                for k, v in m.raw.items()
                if k.startswith("cpu_s.")
                and k != "cpu_s.driver"
                and (what == "all_us" or k != "cpu_s.redis")
            )
            found.append(total / units * 1e6 if units else None)
        elif what.endswith("_per_msg_us"):
            cpu = m.raw.get(f"cpu_s.{what[: -len('_per_msg_us')]}")
            found.append(cpu / messages * 1e6 if cpu is not None and messages else None)
        elif what.endswith("_us"):
            cpu = m.raw.get(f"cpu_s.{what[: -len('_us')]}")
            found.append(cpu / units * 1e6 if cpu is not None and units else None)
        elif what.endswith("_pct"):
            cpu = m.raw.get(f"cpu_s.{what[: -len('_pct')]}")
            found.append(cpu / m.window_s * 100 if cpu is not None and m.window_s else None)
    return [v for v in found if v is not None]


def spread(xs: Sequence[float], digits: int = 2) -> str:
    """The median, and the range of the rounds when there are several."""
    if not xs:
        return "—"
    middle = e2e.fmt(statistics.median(xs), digits)
    if len(xs) == 1:
        return middle
    return f"{middle} ({e2e.fmt(min(xs), digits)} to {e2e.fmt(max(xs), digits)})"


def med(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def paired(
    results: Results, workload: str, ours: str, theirs: str, what: str, diff: bool = False
) -> list[float]:
    """Round by round: ours ÷ theirs (or ours - theirs), where both were measured."""
    a = column(ms_of(results, workload, ours), what)
    b = column(ms_of(results, workload, theirs), what)
    if diff:
        return [x - y for x, y in zip(a, b, strict=False)]
    return [x / y for x, y in zip(a, b, strict=False) if y]


def versus_local(results: Results, workload: str, name: str, what: str, diff: bool = False) -> str:
    """``name`` against the local engine, round by round: the ratio (or the difference)."""
    if name == LOCAL:
        return "0" if diff else "1"
    found = paired(results, workload, name, LOCAL, what, diff)
    return fmt_diffs(found) if diff else fmt_ratios(found)


def fmt_ratios(xs: Sequence[float]) -> str:
    if not xs:
        return "—"
    middle = e2e.fmt_ratio(statistics.median(xs))
    if len(xs) == 1:
        return middle
    return f"{middle} ({min(xs):.2f} to {max(xs):.2f})"


def fmt_diffs(xs: Sequence[float]) -> str:
    if not xs:
        return "—"
    middle = f"{statistics.median(xs):+.2f}"
    if len(xs) == 1:
        return middle
    return f"{middle} ({min(xs):+.2f} to {max(xs):+.2f})"


def per_second(us: Sequence[float]) -> list[float]:
    """What one core (or one Redis) could do: 10**6 µs ÷ µs per unit."""
    return [1e6 / u for u in us if u]


def waited(ms: Sequence[e2e.Measurement]) -> str:
    return e2e.fmt_pct(max((m.noise for m in ms), default=None))


LABELS = {
    LOCAL: "local engine",
    REDIS: "Redis engine, one node",
    CROSS: "Redis engine, node A → node B",
    WORKERS_1: "Redis engine, --workers 1",
    WORKERS_2: "Redis engine, --workers 2",
}


def publish_table(results: Results) -> Table:
    rows = []
    for name in (LOCAL, REDIS, WORKERS_1, WORKERS_2):
        ms = ms_of(results, "publish", name)
        if not ms:
            continue
        server_us = column(ms, "cpu_us")
        redis_us = column(ms, "redis_us")
        rows.append(
            [
                LABELS[name],
                spread(column(ms, "value"), 0),
                versus_local(results, "publish", name, "value"),
                spread(column(ms, "cpu_pct"), 0),
                spread(server_us),
                spread(per_second(server_us), 0),
                spread(column(ms, "redis_pct"), 0) if redis_us else "—",
                spread(redis_us) if redis_us else "—",
                spread(per_second(redis_us), 0) if redis_us else "—",
                f"{spread(column(ms, 'p50'))} / {spread(column(ms, 'p99'))}",
                waited(ms),
            ]
        )
    header = [
        "server",
        "messages/s (acks)",
        "÷ local",
        "server CPU %",
        "server µs per message",
        "messages/s at 100% of a core",
        "Redis CPU %",
        "Redis µs per message",
        "messages/s at 100% of Redis",
        "ack p50 / p99 ms",
        "others (max)",
    ]
    return (
        "Publishing: acknowledged messages per second; medians of the rounds (range)",
        header,
        rows,
    )


def fanout_table(results: Results) -> Table:
    rows = []
    for name in (LOCAL, REDIS, CROSS, WORKERS_1, WORKERS_2):
        ms = ms_of(results, "fanout", name)
        if not ms:
            continue
        redis = column(ms, "redis_per_msg_us")
        rows.append(
            [
                LABELS[name],
                spread(column(ms, "value"), 0),
                spread(column(ms, "cpu_pct"), 0),
                spread(column(ms, "cpu_us")),
                versus_local(results, "fanout", name, "cpu_us"),
                spread(column(ms, "node-a_per_msg_us")) if name == CROSS else "—",
                spread(redis) if redis else "—",
                spread(column(ms, "nodes_us")),
                versus_local(results, "fanout", name, "nodes_us"),
                spread(column(ms, "all_us")),
                f"{spread(column(ms, 'p50'))} / {spread(column(ms, 'p99'))}",
                waited(ms),
            ]
        )
    header = [
        "server",
        "deliveries/s",
        "server CPU %",
        "server µs per delivery",
        "÷ local",
        "node A µs per message",
        "Redis µs per message",
        "servers µs per delivery (node A + B)",
        "÷ local",
        "with Redis, µs per delivery",
        "p50 / p99 ms",
        "others (max)",
    ]
    return (
        "Fan-out: server CPU per delivery (node B for cross; the supervisor and its "
        "workers together); medians of the rounds (range)",
        header,
        rows,
    )


def latency_table(results: Results) -> Table:
    rows = []
    for name in (LOCAL, REDIS, CROSS):
        ms = ms_of(results, "latency", name)
        if not ms:
            continue
        rows.append(
            [
                LABELS[name],
                spread(column(ms, "p50")),
                spread(column(ms, "p99")),
                versus_local(results, "latency", name, "p99", diff=True),
                spread(column(ms, "cpu_pct"), 0),
                spread(column(ms, "cpu_us")),
                spread(column(ms, "node-a_pct"), 0) if name == CROSS else "—",
                spread(column(ms, "node-a_per_msg_us")) if name == CROSS else "—",
                waited(ms),
            ]
        )
    header = [
        "server",
        "p50 ms",
        "p99 ms",
        "p99 less local's, ms",
        "server CPU %",
        "server µs per delivery",
        "node A CPU %",
        "node A µs per message",
        "others (max)",
    ]
    return (
        "Latency: from the send time stamped in a message to its arrival; medians of the "
        "rounds (range), the difference round by round",
        header,
        rows,
    )


def peer_table(results: Results, chosen: dict[str, e2e.Workload]) -> Table:
    rows = []
    for name, what in (("echo-32B-k1", "value"), ("fanout-general", "cpu_us")):
        if name not in chosen:
            continue
        ours, theirs = ms_of(results, name, PROJECT), ms_of(results, name, PEER)
        if not ours or not theirs:
            continue
        unit = "server µs per delivery" if what == "cpu_us" else chosen[name].unit
        rows.append(
            [
                chosen[name].describe(),
                unit,
                spread(column(ours, what)),
                spread(column(theirs, what)),
                fmt_ratios(paired(results, name, PROJECT, PEER, what)),
                RECORDED[name],
            ]
        )
    header = ["workload", "unit", PROJECT, PEER, f"÷ {PEER} (range)", "recorded (issue 12)"]
    return (
        f"The local engine against {PEER}, same rounds; the ratio is each round's, then "
        "their median (range)",
        header,
        rows,
    )


@dataclass(frozen=True)
class Scale:
    """What ``--workers 1`` and ``--workers 2`` cost per unit (medians), and Redis's."""

    unit: str
    per_unit: dict[int, float]  # workers -> all their processes' µs per unit
    redis_per_message: dict[int, float]  # workers -> Redis µs per message
    units_per_message: float


def scales(results: Results) -> list[Scale]:
    found = []
    for workload, unit in (("fanout", "delivery"), ("publish", "message")):
        per_unit: dict[int, float] = {}
        redis: dict[int, float] = {}
        per_message: list[float] = []
        for name, n in WORKERS.items():
            ms = ms_of(results, workload, name)
            cpu = med(column(ms, "cpu_us"))
            r = med(column(ms, "redis_per_msg_us"))
            if cpu is not None:
                per_unit[n] = cpu
            if r is not None:
                redis[n] = r
            for m in ms:
                messages = m.raw.get("messages") or m.raw.get("acks") or 0
                if messages:
                    per_message.append((m.raw.get("units") or 0) / messages)
        if len(per_unit) == 2:
            found.append(Scale(unit, per_unit, redis, med(per_message) or 1.0))
    return found


# Cores on a bigger machine: one for Redis, the rest for workers (one each).
PROJECTED_CORES = (8, 16)


def projection(scale: Scale, cores: int) -> tuple[float, float, float]:
    """(units/s the workers could do, units/s one Redis could carry, the lower of the two)
    on ``cores`` cores: ``cores - 1`` workers at the ``--workers 2`` cost per unit, and Redis
    on the last core with a cost per message that grows with the nodes subscribed (a line
    through the one- and two-worker figures)."""
    workers = cores - 1
    nodes_cost = scale.per_unit[2]
    by_workers = workers * 1e6 / nodes_cost
    r1, r2 = scale.redis_per_message.get(1), scale.redis_per_message.get(2)
    if r1 is None or r2 is None:
        return by_workers, float("inf"), by_workers
    # A step below zero is noise (another node cannot make a message cheaper): none then.
    redis_us = r1 + max(0.0, r2 - r1) * (workers - 1)
    by_redis = 1e6 / max(redis_us, 1e-9) * scale.units_per_message
    return by_workers, by_redis, min(by_workers, by_redis)


def scale_table(results: Results) -> Table:
    rows = []
    for scale in scales(results):
        one, two = scale.per_unit[1], scale.per_unit[2]
        row = [
            f"per {scale.unit}"
            + (
                f" ({scale.units_per_message:,.0f} per message)" if scale.unit == "delivery" else ""
            ),
            e2e.fmt(one, 2),
            e2e.fmt(two, 2),
            e2e.fmt_ratio(two / one),
            " / ".join(e2e.fmt(scale.redis_per_message.get(n), 2) for n in (1, 2)),
        ]
        for cores in PROJECTED_CORES:
            by_workers, by_redis, both = projection(scale, cores)
            row.append(
                f"{e2e.fmt(both)} ({'Redis' if by_redis < by_workers else 'workers'}: "
                f"workers {e2e.fmt(by_workers)}, Redis {e2e.fmt(by_redis)})"
            )
        rows.append(row)
    header = [
        "server CPU",
        "--workers 1 µs",
        "--workers 2 µs",
        "2 ÷ 1",
        "Redis µs per message, 1 / 2 workers",
        *(f"projected per second, {c} cores" for c in PROJECTED_CORES),
    ]
    return (
        "Scale: the supervisor and all its workers' CPU per unit (medians); projected: "
        "cores less 1 workers at the --workers 2 cost, Redis on one core, its cost per message "
        "growing by the one-to-two-node step for each node more",
        header,
        rows,
    )


ASSUMPTIONS = [
    "the workers are CPU-bound and share nothing but Redis: each added core adds one worker "
    "at the --workers 2 cost per unit (no hyper-threads, enough memory bandwidth and NIC)",
    "the clients (the load) run elsewhere; the kernel spreads connections evenly",
    "Redis runs its commands on one core: its cost per message grows by the measured "
    "one-to-two-node step for each node subscribed to a channel's topic (every node has "
    "subscribers of every busy channel: the worst case for fan-out)",
    "messages as in the workloads: 64 B to 1,000 subscribers of one channel, or publishes to "
    "channels nobody else reads",
]


def targets(results: Results) -> list[tuple[str, str, str]]:
    found = []
    rate = column(ms_of(results, "publish", REDIS), "value")
    if rate:
        r = statistics.median(rate)
        verdict = (
            "met"
            if r >= TARGET_PUBLISH_PER_S
            else f"not met: {1 - r / TARGET_PUBLISH_PER_S:.0%} short"
        )
        local = paired(results, "publish", REDIS, LOCAL, "value")
        found.append(
            (
                f"publishing through Redis ≥ {TARGET_PUBLISH_PER_S:,} messages/s from one node, "
                "with acks",
                f"{spread(rate, 0)}/s; {fmt_ratios(local)} the local engine",
                verdict,
            )
        )
    cpu = paired(results, "fanout", CROSS, LOCAL, "cpu_us")
    if cpu:
        r = statistics.median(cpu)
        found.append(
            (
                "server CPU per delivery to subscribers on another node ≤ "
                f"{TARGET_CROSS_CPU_RATIO}{X} a local delivery (node B ÷ local engine)",
                fmt_ratios(cpu),
                "met"
                if r <= TARGET_CROSS_CPU_RATIO
                else f"not met: {r / TARGET_CROSS_CPU_RATIO - 1:.0%} over",
            )
        )
    both = paired(results, "fanout", CROSS, LOCAL, "nodes_us")
    if both:
        r = statistics.median(both)
        found.append(
            (
                "the same with node A's CPU too (node A + node B ÷ local engine)",
                fmt_ratios(both),
                "met"
                if r <= TARGET_CROSS_CPU_RATIO
                else f"not met: {r / TARGET_CROSS_CPU_RATIO - 1:.0%} over",
            )
        )
    p99 = paired(results, "latency", CROSS, LOCAL, "p99", diff=True)
    if p99:
        d = statistics.median(p99)
        found.append(
            (
                f"p99 publish on node A to receipt on node B ≤ local p99 + {TARGET_CROSS_P99_MS:g} "
                "ms",
                f"{fmt_diffs(p99)} ms",
                "met"
                if d <= TARGET_CROSS_P99_MS
                else f"not met: {d - TARGET_CROSS_P99_MS:.2f} ms over",
            )
        )
    for name, what, recorded in (
        ("echo-32B-k1", "value", 1.61),
        ("fanout-general", "cpu_us", 0.26),
    ):
        ratio = paired(results, name, PROJECT, PEER, what)
        if ratio:
            r = statistics.median(ratio)
            change = r / recorded - 1
            better = change > 0 if what == "value" else change < 0
            found.append(
                (
                    f"the local engine's {name} ÷ websockets within noise (±{NOISE:.0%}) of "
                    f"the recorded {recorded}{X}",
                    fmt_ratios(ratio),
                    "met" if abs(change) <= NOISE or better else f"not met: {change:+.0%}",
                )
            )
    return found


# The run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, help="rounds (default 3; quick 1)")
    parser.add_argument("--quick", action="store_true", help="one round, smaller, shorter")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="WORKLOAD",
        help="run only this workload, or those named WORKLOAD-... (repeatable): publish, "
        "fanout, latency, fanout-general, echo",
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated, from {', '.join(SERVERS)} (default: all)",
    )
    parser.add_argument("--no-peer", action="store_true", help=f"without {PEER} (nor {PROJECT})")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 4)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per run (default 1)")
    defaults = Sizes()
    for f in dataclasses.fields(Sizes):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, type=int, help=f"default {getattr(defaults, f.name)}")
    parser.add_argument(
        "--open-concurrency",
        type=int,
        default=OPEN_CONCURRENCY,
        help=f"connections opened (and subscribes waiting) at a time (default {OPEN_CONCURRENCY})",
    )
    parser.add_argument(
        "--redis-with",
        choices=("load", "servers"),
        default="load",
        help="the core redis-server runs on: the load's (default) or the servers'",
    )
    parser.add_argument("--retries", type=int, default=1, help="see e2e.py (default 1)")
    parser.add_argument("--noise", type=float, default=0.10, help="see e2e.py (default 0.10)")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables on stdout")
    parser.add_argument("--save", type=Path, help="write every measurement here as JSON")
    return parser.parse_args(argv)


def commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(e2e.ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or "unknown"


def redis_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "redis-server not installed"
    done = subprocess.run([binary, "--version"], capture_output=True, text=True)
    words = dict(w.split("=", 1) for w in done.stdout.split() if "=" in w)
    parser = "hiredis" if importlib.util.find_spec("hiredis") else "its Python parser"
    return f"redis-server {words.get('v', '?')}, redis-py {e2e.package_version('redis')} ({parser})"


def main(argv: Sequence[str] | None = None) -> None:
    global out
    args = parse_args(argv)
    stop_on_sigterm()
    if args.markdown:
        out = sys.stderr
        e2e.out = sys.stderr
    if importlib.util.find_spec("redis") is None:
        raise SystemExit("bench_redis.py needs redis-py: python -m pip install -e '.[redis]'")
    quick = Sizes(senders=20, receivers=200, latency_receivers=50) if args.quick else Sizes()
    sizes = dataclasses.replace(
        quick,
        **{
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(Sizes)
            if getattr(args, f.name) is not None
        },
    )
    rounds = args.rounds or (1 if args.quick else 3)
    timings = e2e.Timings(
        duration=args.duration or (1.5 if args.quick else 4.0),
        warmup=args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0),
    )
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        raise SystemExit(f"--servers: unknown {sorted(unknown)}")
    if args.no_peer:
        servers = [s for s in servers if s not in (PROJECT, PEER)]
    chosen_list = [
        w for w in e2e.select(workloads(sizes), args.only) if any(w.runs_on(s) for s in servers)
    ]
    chosen = {w.name: w for w in chosen_list}
    server_cores, load_cores = e2e.cpus()
    os.sched_setaffinity(0, load_cores)  # this process is the publishing load
    e2e.raise_nofile(4 * sizes.receivers + 1000)
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        config = Config(
            timings,
            server_cores,
            load_cores,
            "benchmarks.load",
            False,
            Path(tmp),
            retries=args.retries,
            noise_limit=args.noise,
            open_concurrency=args.open_concurrency,
            redis_with=args.redis_with,
        )
        results = e2e.run_all(chosen_list, servers, rounds, config, measure_once)
    seconds = time.monotonic() - started
    header = [
        *e2e.machine(config, load_start, os.getloadavg()[0], seconds),
        f"commit {commit()}; {redis_version()}; node A with the server, "
        f"Redis with the {args.redis_with}",
    ]
    tables = [
        publish_table(results),
        fanout_table(results),
        latency_table(results),
        scale_table(results),
        peer_table(results, chosen),
    ]
    for table in tables:
        if table[2]:
            e2e.print_text(*table)
            if args.markdown:
                e2e.print_markdown(*table)
    if scales(results):
        print("\nAssumptions of the projection:", file=out)
        for line in ASSUMPTIONS:
            print(f"  - {line}", file=out)
        if args.markdown:
            print("\nAssumptions of the projection:\n")
            print("\n".join(f"- {line}" for line in ASSUMPTIONS))
    e2e.report_targets(targets(results), header, markdown=args.markdown, out=out)
    if args.save:
        e2e.save_run(args.save, header, rounds, timings, chosen_list, results, sizes=asdict(sizes))


if __name__ == "__main__":
    main()
