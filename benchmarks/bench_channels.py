"""Channels benchmark (issue 12): fan-out per subscriber, memory per subscription, rates.

Run ``python benchmarks/bench_channels.py`` (3 rounds, 4 to 5 minutes; ``--quick``: 1 round,
smaller, about a minute; ``--markdown``: the tables as Markdown on stdout, for
benchmarks/README.md; ``--save FILE``: every measurement as JSON). It runs on
``benchmarks/e2e.py``'s machinery: each measurement starts a fresh server pinned with
``taskset`` to the first core, the load (``python -m benchmarks.load``, and this process,
which opens the idle connections) runs on the others, rounds interleave the workloads and the
servers, a measurement disturbed by other processes is taken again once, and the tables give
the median of the rounds with their range. The project's server gets
``--rate-limit 0 --ping-interval 0``, and for the channel workloads a ``--channels`` file
(``NAMESPACES``) with the namespace ``fan``: no member list in ``subscribed`` (every
subscriber would get the list of all those before it, so filling a channel of 1,000 would
send half a million member entries) and no ``joined``/``left`` notices. Other channels
(``room:...``) have the defaults: presence and notices on.

Workloads (their names for ``--only``):

- ``fanout-general`` (e2e's ``broadcast-1000``; against websockets too): one sender
  publishes 64 B to the default channel ``general`` as fast as the 1,000 receivers keep up;
  1,001 connections.
- ``fanout-channel``: the same publish to ``fan:target``, subscribed by the sender and 1,000
  receivers, on a server with 10,000 connections: before the load starts this process opens
  9,000 idle connections, each subscribed to one of 9 other channels of 1,000
  (``fan:other-0`` ...). Every connection is also in ``general``, as every chat client is.
  ``fanout-channel-alone`` is the same channel without the 9,000.
- ``memory`` (e2e's): the server's RSS per idle connection, 5,000 of them, in ``general``
  only. ``memory-ch1``, ``memory-ch3``: each also subscribed to 1 or 3 channels of
  ``--members`` (20) connections, ``room:mJ-G`` with presence and notices on (the
  connections are anonymous: each is a presence member of its own). ``memory-ch3-ids``:
  3 channels, each connection known by a clientId of its own (``hello``);
  ``memory-ch3-shared``: all by one clientId, so each channel has one presence member.
- ``subscribe``: 50 connections subscribe to ``fan:cycle`` and unsubscribe, one request at a
  time, as fast as the server answers (one more connection stays subscribed, so the channel
  lives on); requests per second and server CPU per request.
- ``join-leave``: the same on ``room:cycle`` with 100 more connections subscribed to it and
  listening: each subscribe is a member that joins (each of the members already there gets
  ``joined``, and the subscriber the list of members), each unsubscribe one that leaves.
- ``echo-32B-k1``, ``connect`` (e2e's; against websockets): the 32 B echo over 50
  connections, one message in flight each; handshakes, 20 at a time.

``--before DIR`` adds the project's server from another checkout (``git worktree add DIR
COMMIT``) to the same rounds, so that a change is measured against the code before it: it
runs what websockets runs and, if it has channels (``--channels``), the channel workloads too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import e2e
from benchmarks.loadgen.wire import CHAT_SUBSCRIBED, masked_frame, request_frame

__all__ = ["ChannelWorkload", "main"]

X = e2e.X
PROJECT = e2e.PROJECT
PEER = "websockets"
BEFORE = "before"  # the project's server from --before DIR
# The servers of the workloads that are not the project's channels.
COMPARED = (PROJECT, PEER, BEFORE)
# Issue 12's targets: publish to a channel of 1,000 among 10,000 connections, CPU per delivery
# within 10% of the global broadcast to 1,000; an idle connection in 3 channels with presence.
TARGET_FANOUT_RATIO = 1.10
TARGET_MEMORY_KIB = 8.0
# What benchmarks/README.md recorded after issue 11 ("What the defences of issue 11 cost"):
# rfc6455 ÷ websockets (and the project's memory per idle connection).
RECORDED = {
    "echo-32B-k1": f"1.59{X}",  # messages/s
    "fanout-general": f"0.28{X}",  # server CPU per delivery
    "connect": f"1.08{X}",  # handshakes/s
    "memory": f"0.49{X} (6.48 KiB)",  # KiB per connection
}

NAMESPACES = """\
# bench_channels.py: big channels without a member list in "subscribed" or notices.
[namespaces.fan]
presence = false
join_leave = false
"""

out: TextIO = sys.stdout


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# Workloads


@dataclass(frozen=True)
class ChannelWorkload(e2e.Workload):
    """A workload of the project's channels (``servers`` is the project alone)."""

    # Broadcast: idle connections opened first, each subscribed to one of ``other_channels``.
    others: int = 0
    other_channels: int = 0
    # Memory: channels each idle connection subscribes to besides general, of ``members``.
    subscriptions: int = 0
    members: int = 0
    # Memory: "" anonymous; "distinct": a clientId each; "shared": one clientId for all.
    identity: str = ""

    def describe(self) -> str:
        if self.mode == "memory":
            who = {"": "", "distinct": ", a clientId each", "shared": ", one clientId"}
            return (
                f"memory, {self.connections:,} idle conn, general + {self.subscriptions} "
                f"channels of {self.members}{who[self.identity]}"
            )
        if self.mode == "broadcast":
            others = f" + {self.others:,} in {self.other_channels} others" if self.others else ""
            return f"publish to {self.channel}, 1→{self.connections - 1}{others}"
        return super().describe()


@dataclass(frozen=True)
class Sizes:
    receivers: int = 1000
    others: int = 9000
    other_channels: int = 9
    idle: int = 5000
    members: int = 20
    cyclers: int = 50
    listeners: int = 100


def workloads(sizes: Sizes, before_has_channels: bool = False) -> list[e2e.Workload]:
    """Every workload, in the order a round runs them."""
    project = (PROJECT, BEFORE) if before_has_channels else (PROJECT,)
    fanout = ChannelWorkload(
        "fanout-channel",
        "broadcast",
        "/",
        sizes.receivers + 1,
        size=e2e.BROADCAST_SIZE,
        rate=e2e.BROADCAST_RATE,
        senders=1,
        channel="fan:target",
        servers=project,
        others=sizes.others,
        other_channels=sizes.other_channels,
    )
    memory = ChannelWorkload(
        "memory-ch1", "memory", "/", sizes.idle, servers=project, members=sizes.members
    )
    cycle = ChannelWorkload(
        "subscribe", "subscribe", "/", sizes.cyclers + 1, senders=sizes.cyclers, servers=project
    )
    return [
        dataclasses.replace(
            e2e.broadcast(sizes.receivers), name="fanout-general", servers=COMPARED
        ),
        fanout,
        dataclasses.replace(fanout, name="fanout-channel-alone", others=0, other_channels=0),
        dataclasses.replace(cycle, channel="fan:cycle"),
        dataclasses.replace(
            cycle,
            name="join-leave",
            connections=sizes.cyclers + sizes.listeners,
            channel="room:cycle",
        ),
        e2e.Workload("memory", "memory", "/", sizes.idle, servers=COMPARED),
        dataclasses.replace(memory, subscriptions=1),
        dataclasses.replace(memory, name="memory-ch3", subscriptions=3),
        dataclasses.replace(memory, name="memory-ch3-ids", subscriptions=3, identity="distinct"),
        dataclasses.replace(memory, name="memory-ch3-shared", subscriptions=3, identity="shared"),
        dataclasses.replace(e2e.echo(32, 1), servers=COMPARED),
        e2e.Workload("connect", "connect", "/echo", e2e.CONNECT_CONCURRENCY, servers=COMPARED),
    ]


# Idle connections in channels


def wait_for(sock: socket.socket, marker: bytes, count: int, timeout: float = 30.0) -> None:
    """Read from ``sock`` until ``marker`` has come ``count`` times."""
    deadline = time.monotonic() + timeout
    seen, tail = 0, b""
    while seen < count:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(262144)
        if not data:
            raise RuntimeError("connection closed while waiting for the server's answers")
        data = tail + data
        seen += data.count(marker)
        tail = data[-(len(marker) - 1) :]


def drain(sockets: Sequence[socket.socket]) -> None:
    """Read whatever has arrived on each connection, without waiting."""
    for sock in sockets:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while sock.recv(262144):
                pass
        sock.setblocking(True)


class Subscriptions:
    """Sends idle connections (raw sockets, e2e.open_idle) to their channels.

    Connection ``n`` (counted over every call) subscribes to ``channels(n)``, after a
    ``hello`` with ``client_id(n)`` if that is not None, and the call returns once each has
    its answers (a few connections at a time, so that the server's replies never pile up).
    """

    def __init__(
        self,
        channels: Callable[[int], Sequence[str]],
        client_id: Callable[[int], str | None] = lambda n: None,
        batch: int = 100,
    ) -> None:
        self.channels = channels
        self.client_id = client_id
        self.batch = batch
        self.count = 0
        self.key = os.urandom(4)

    def __call__(self, sockets: list[socket.socket]) -> None:
        marker = CHAT_SUBSCRIBED.encode()
        for start in range(0, len(sockets), self.batch):
            group = sockets[start : start + self.batch]
            expected = []
            for sock in group:
                n, self.count = self.count, self.count + 1
                frames = [request_frame("subscribe", c, self.key) for c in self.channels(n)]
                client_id = self.client_id(n)
                if client_id is not None:
                    hello = json.dumps({"type": "hello", "clientId": client_id})
                    frames.insert(0, masked_frame(hello, self.key))
                sock.sendall(b"".join(frames))
                expected.append(len(frames) - (client_id is not None))
            for sock, count in zip(group, expected, strict=True):
                wait_for(sock, marker, count)
        drain(sockets)


def memory_subscriptions(workload: ChannelWorkload) -> Subscriptions:
    members, k = workload.members, workload.subscriptions
    shared = str(uuid.uuid4())
    client_id: Callable[[int], str | None] = {
        "": lambda n: None,
        "distinct": lambda n: str(uuid.uuid4()),
        "shared": lambda n: shared,
    }[workload.identity]
    return Subscriptions(lambda n: [f"room:m{j}-{n // members}" for j in range(k)], client_id)


class ProjectServer(e2e.Server):
    """``python -m server`` with e2e's options, from this checkout or from ``checkout``
    (``--before``), with the ``--channels`` file ``namespaces`` or without."""

    def __init__(
        self,
        name: str,
        cores: Sequence[int],
        workdir: Path,
        checkout: Path | None = None,
        namespaces: Path | None = None,
    ) -> None:
        super().__init__(name, cores, workdir)
        self.checkout = checkout
        self.namespaces = namespaces

    def command(self) -> list[str]:
        options = self.project_options()
        if self.namespaces is not None:
            options += ["--channels", str(self.namespaces), "--log-level", "WARNING"]
        if self.checkout is None:
            return ["-m", "server", *options]
        return ["-c", _FROM_CHECKOUT, str(self.checkout), *options]


# Runs ``server`` from the checkout named first: ahead of this one, which PYTHONPATH names.
_FROM_CHECKOUT = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'server'; "
    "runpy.run_module('server', run_name='__main__', alter_sys=True)"
)


def has_channels(checkout: Path) -> bool:
    """Whether the server of ``checkout`` has ``--channels``."""
    done = subprocess.run(
        [sys.executable, "-c", _FROM_CHECKOUT, str(checkout), "--help"],
        cwd=e2e.ROOT,
        env={**os.environ, "PYTHONPATH": e2e.python_path()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "--channels" in done.stdout


@dataclass
class Config(e2e.Config):
    before: Path | None = None  # --before


def measure_once(
    name: str, workload: e2e.Workload, config: e2e.Config, tag: str
) -> e2e.Measurement:
    """e2e.measure_once, the server of ``--before``, and the channel workloads on a server
    with ``NAMESPACES``."""
    channels = isinstance(workload, ChannelWorkload)
    if name not in (PROJECT, BEFORE) or (name == PROJECT and not channels):
        return e2e.measure_once(name, workload, config, tag)
    checkout = None
    if name == BEFORE:
        assert isinstance(config, Config)
        checkout = config.before
    namespaces = None
    if channels:
        namespaces = config.workdir / "namespaces.toml"
        if not namespaces.exists():
            namespaces.write_text(NAMESPACES)
    workdir = config.workdir / tag
    server = ProjectServer(name, config.server_cores, workdir, checkout, namespaces)
    return e2e.measure_on(server, workload, config, measure_channels if channels else e2e.measure)


def measure_channels(
    server: e2e.Server, workload: e2e.Workload, config: e2e.Config
) -> e2e.Measurement:
    """A channel workload: memory with subscriptions, or e2e.measure after opening
    ``workload.others`` idle connections in other channels."""
    assert isinstance(workload, ChannelWorkload)
    if workload.mode == "memory":
        return e2e.measure_memory(server, workload, memory_subscriptions(workload))
    others: list[socket.socket] = []
    try:
        if workload.others:
            started = time.monotonic()
            per_channel = -(-workload.others // workload.other_channels)
            others = e2e.open_idle(server.port, "/", workload.others)
            Subscriptions(lambda n: [f"fan:other-{n // per_channel}"])(others)
            log(f"  {workload.others:,} others subscribed in {time.monotonic() - started:.1f} s")
        m = e2e.measure(server, workload, config)
        m.raw["others"] = len(others)
        return m
    finally:
        # Killed before the idle connections go: a graceful stop would wait for each to
        # answer its close frame, and the chat would announce every departure in general.
        server.stop(kill=True)
        e2e.close_all(others)


# The tables


Results = e2e.Results


def values(
    results: Results, workload: str, server: str = PROJECT, cpu: bool = False
) -> list[float]:
    ms = results.get(workload, {}).get(server, [])
    picked = [m.cpu_per_unit_us if cpu else m.value for m in ms]
    return [v for v in picked if v is not None]


def med(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def spread(xs: Sequence[float], digits: int = 2) -> str:
    """The median, and the range of the rounds when there are several."""
    if not xs:
        return "—"
    middle = e2e.fmt(statistics.median(xs), digits)
    if len(xs) == 1:
        return middle
    return f"{middle} ({e2e.fmt(min(xs), digits)} to {e2e.fmt(max(xs), digits)})"


def ratios(ours: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """The ratios of the rounds (the i-th of each), where both were measured."""
    return [a / b for a, b in zip(ours, theirs, strict=False) if b]


def fmt_ratios(xs: Sequence[float]) -> str:
    if not xs:
        return "—"
    middle = e2e.fmt_ratio(statistics.median(xs))
    if len(xs) == 1:
        return middle
    return f"{middle} ({min(xs):.2f} to {max(xs):.2f})"


Table = tuple[str, list[str], list[list[str]]]


def before_cells(results: Results, name: str, cpu: bool, ours: Sequence[float]) -> list[str]:
    """The server of ``--before`` on a workload (CPU per unit or the value), and ours ÷ it."""
    old = values(results, name, BEFORE, cpu)
    return [spread(old), fmt_ratios(ratios(ours, old))]


def fanout_table(results: Results, chosen: dict[str, e2e.Workload], before: bool) -> Table:
    rows = []
    base = values(results, "fanout-general", cpu=True)
    for name in ("fanout-general", "fanout-channel", "fanout-channel-alone"):
        if name not in chosen:
            continue
        ms = results[name][PROJECT]
        cpu = values(results, name, cpu=True)
        w = chosen[name]
        what = w.describe()
        if not isinstance(w, ChannelWorkload):
            what = f"publish to general, 1→{w.connections - 1} (today's broadcast)"
        row = [
            what,
            spread(values(results, name), 0),
            spread([m.cpu_util * 100 for m in ms if m.cpu_util is not None], 0),
            spread(cpu),
            fmt_ratios(ratios(cpu, base)) if name != "fanout-general" else "1",
            e2e.fmt_pct(max((m.noise for m in ms), default=None)),
        ]
        rows.append(row + before_cells(results, name, True, cpu) if before else row)
    header = [
        "workload",
        "deliveries/s",
        "server CPU %",
        "server µs per delivery",
        "÷ general",
        "waited (max)",
    ]
    if before:
        header += [f"{BEFORE} µs per delivery", f"÷ {BEFORE}"]
    return ("Fan-out: server CPU per delivery; medians of the rounds (range)", header, rows)


def memory_rows(results: Results, chosen: dict[str, e2e.Workload], before: bool) -> Table:
    rows = []
    for name in ("memory", "memory-ch1", "memory-ch3", "memory-ch3-ids", "memory-ch3-shared"):
        if name not in chosen:
            continue
        w = chosen[name]
        what = (
            w.describe()
            if isinstance(w, ChannelWorkload)
            else (f"memory, {w.connections:,} idle conn, general only (today's)")
        )
        ours = values(results, name)
        row = [what, spread(ours)]
        rows.append(row + before_cells(results, name, False, ours) if before else row)
    derived = derived_memory(results, PROJECT)
    old = derived_memory(results, BEFORE)
    for label, value in derived.items():
        if value is not None:
            row = [label, e2e.fmt(value, 2)]
            if before:
                row += [e2e.fmt(old[label], 2), ""]
            rows.append(row)
    header = ["what", "KiB"]
    if before:
        header += [f"{BEFORE} KiB", f"÷ {BEFORE}"]
    return ("Memory: server RSS per idle connection, KiB; medians of the rounds (range)",
            header, rows)  # fmt: skip


GENERAL_AND_2 = "general + 2 channels (3 in all), between ch1 and ch3: (ch1 + ch3) ÷ 2"


def derived_memory(results: Results, server: str) -> dict[str, float | None]:
    """Per subscription and per presence member, from the medians (KiB)."""
    m0 = med(values(results, "memory", server))
    m1 = med(values(results, "memory-ch1", server))
    m3 = med(values(results, "memory-ch3", server))
    ids = med(values(results, "memory-ch3-ids", server))
    shared = med(values(results, "memory-ch3-shared", server))

    return {
        "per extra subscription, (ch1 less general only)": (
            m1 - m0 if m1 is not None and m0 is not None else None
        ),
        "per extra subscription, (ch3 less general only) ÷ 3": (
            (m3 - m0) / 3 if m3 is not None and m0 is not None else None
        ),
        "per presence member, (a clientId each less one clientId) ÷ 4 channels": (
            (ids - shared) / 4 if ids is not None and shared is not None else None
        ),
        GENERAL_AND_2: (m1 + m3) / 2 if m1 is not None and m3 is not None else None,
    }


def rates_table(results: Results, chosen: dict[str, e2e.Workload], before: bool) -> Table:
    rows = []
    for name in ("subscribe", "join-leave"):
        if name not in chosen:
            continue
        ms = results[name][PROJECT]
        notices = [
            m.raw.get("deliveries", 0) / m.raw["messages"] for m in ms if m.raw.get("messages")
        ]
        cpu = values(results, name, cpu=True)
        row = [
            chosen[name].describe(),
            spread(values(results, name), 0),
            spread([m.cpu_util * 100 for m in ms if m.cpu_util is not None], 0),
            spread(cpu),
            spread([1e6 / v for v in cpu], 0),
            spread([m.p50_ms for m in ms if m.p50_ms is not None]),
            spread([m.p99_ms for m in ms if m.p99_ms is not None]),
            spread(notices, 1),
        ]
        rows.append(row + before_cells(results, name, True, cpu) if before else row)
    header = [
        "workload",
        "requests/s",
        "server CPU %",
        "server µs per request",
        "requests per CPU-second",
        "p50 ms",
        "p99 ms",
        "notices per request",
    ]
    if before:
        header += [f"{BEFORE} µs per request", f"÷ {BEFORE}"]
    return (
        "Subscribe/unsubscribe and join/leave: requests (each subscribe or unsubscribe) per "
        "second; medians of the rounds (range)",
        header,
        rows,
    )


def peer_table(results: Results, chosen: dict[str, e2e.Workload], before: bool) -> Table:
    rows = []
    for name, kind in (
        ("echo-32B-k1", "value"),
        ("fanout-general", "cpu"),
        ("connect", "value"),
        ("memory", "value"),
    ):
        if name not in chosen:
            continue
        cpu = kind == "cpu"
        ours, theirs = values(results, name, PROJECT, cpu), values(results, name, PEER, cpu)
        unit = "server µs per delivery" if cpu else chosen[name].unit
        row = [
            chosen[name].describe(),
            unit,
            spread(ours),
            spread(theirs),
            fmt_ratios(ratios(ours, theirs)),
            RECORDED[name],
        ]
        rows.append(row + before_cells(results, name, cpu, ours) if before else row)
    header = ["workload", "unit", PROJECT, PEER, f"÷ {PEER} (range)", "recorded after issue 11"]
    if before:
        header += [BEFORE, f"÷ {BEFORE} (range)"]
    return (
        f"Against {PEER}, same rounds; the ratio is each round's, then their median (range)",
        header,
        rows,
    )


def targets(results: Results, sizes: Sizes) -> list[tuple[str, str, str]]:
    """(target, measured, verdict)."""
    found = []
    base = values(results, "fanout-general", cpu=True)
    fan = ratios(values(results, "fanout-channel", cpu=True), base)
    if fan:
        r = statistics.median(fan)
        found.append(
            (
                f"publish to a channel of {sizes.receivers:,} among "
                f"{sizes.receivers + sizes.others:,} connections: server CPU per delivery "
                f"≤ {TARGET_FANOUT_RATIO}{X} the broadcast to {sizes.receivers:,} in general",
                fmt_ratios(fan),
                "met"
                if r <= TARGET_FANOUT_RATIO
                else f"not met: {r / TARGET_FANOUT_RATIO - 1:.0%} over",
            )
        )
    m3 = values(results, "memory-ch3")
    if m3:
        found.append(
            (
                "idle connection in general + 3 channels with presence (4 in all) "
                f"≤ {TARGET_MEMORY_KIB:g} KiB",
                spread(m3) + " KiB",
                memory_verdict(statistics.median(m3)),
            )
        )
    two = derived_memory(results, PROJECT)[GENERAL_AND_2]
    if two is not None:
        found.append(
            (
                "idle connection in 3 channels with presence (general + 2, between the runs "
                f"with 1 and 3) ≤ {TARGET_MEMORY_KIB:g} KiB",
                f"{e2e.fmt(two, 2)} KiB",
                memory_verdict(two),
            )
        )
    return found


def memory_verdict(kib: float) -> str:
    if kib <= TARGET_MEMORY_KIB:
        return "met"
    return f"not met: {kib / TARGET_MEMORY_KIB - 1:.0%} over"


def print_text(table: Table) -> None:
    e2e.print_text(*table)


def print_markdown(table: Table) -> None:
    e2e.print_markdown(*table)


# The run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, help="rounds (default 3; quick 1)")
    parser.add_argument("--quick", action="store_true", help="one round, shorter windows")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="WORKLOAD",
        help="run only this workload, or those named WORKLOAD-... (repeatable): fanout, "
        "fanout-general, memory, memory-ch3, subscribe, join-leave, echo, connect",
    )
    parser.add_argument("--no-peer", action="store_true", help=f"the project alone, without {PEER}")
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="another checkout of the project, whose server runs what websockets runs",
    )
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 4)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per run (default 1)")
    defaults = Sizes()
    for field in dataclasses.fields(Sizes):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=int, help=f"default {getattr(defaults, field.name)}")
    parser.add_argument("--retries", type=int, default=1, help="see e2e.py (default 1)")
    parser.add_argument("--noise", type=float, default=0.10, help="see e2e.py (default 0.10)")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables on stdout")
    parser.add_argument("--save", type=Path, help="write every measurement here as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    global out
    args = parse_args(argv)
    if args.markdown:
        out = sys.stderr
        e2e.out = sys.stderr
    quick = Sizes(idle=1000) if args.quick else Sizes()
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
        duration=args.duration or (2.0 if args.quick else 4.0),
        warmup=args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0),
    )
    before_has_channels = args.before is not None and has_channels(args.before)
    chosen_list = e2e.select(workloads(sizes, before_has_channels), args.only)
    chosen = {w.name: w for w in chosen_list}
    servers = [PROJECT] if args.no_peer else [PROJECT, PEER]
    if args.before is not None:
        servers.append(BEFORE)
    server_cores, load_cores = e2e.cpus()
    os.sched_setaffinity(0, load_cores)  # this process opens the idle connections
    e2e.raise_nofile(2 * max(sizes.idle, sizes.others) + 2 * sizes.receivers + 1000)
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-channels-") as tmp:
        config = Config(
            timings,
            server_cores,
            load_cores,
            "benchmarks.load",
            False,
            Path(tmp),
            retries=args.retries,
            noise_limit=args.noise,
            before=None if args.before is None else args.before.resolve(),
        )
        results = e2e.run_all(chosen_list, servers, rounds, config, measure_once)
    seconds = time.monotonic() - started
    header = e2e.machine(config, load_start, os.getloadavg()[0], seconds)
    before = args.before is not None
    tables = [
        fanout_table(results, chosen, before),
        memory_rows(results, chosen, before),
        rates_table(results, chosen, before),
    ]
    if not args.no_peer:
        tables.append(peer_table(results, chosen, before))
    for table in tables:
        if table[2]:
            print_text(table)
            if args.markdown:
                print_markdown(table)
    verdicts = targets(results, sizes)
    e2e.report_targets(verdicts, header, markdown=args.markdown, out=out)
    if args.save:
        e2e.save_run(args.save, header, rounds, timings, chosen_list, results, sizes=asdict(sizes))


if __name__ == "__main__":
    main()
