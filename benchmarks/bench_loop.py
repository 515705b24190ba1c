"""The event loop (issue 15): every server on asyncio and on uvloop, and Node's ``ws``.

Run ``python benchmarks/bench_loop.py`` (3 rounds, about 8 minutes; ``--rounds``,
``--only WORKLOAD``, ``--markdown``, ``--save FILE`` as in ``benchmarks/e2e.py``). It runs on
e2e's machinery: each measurement starts a fresh server pinned with ``taskset`` to the first
core, the load generator (``python -m benchmarks.load``, on asyncio for every server) runs on
the other, rounds interleave the servers (each round starts one further), and a measurement
disturbed by other processes is taken again once.

The servers: the project (``python -m server``) and the peers of ``benchmarks/peers/``, each
``@asyncio`` and ``@uvloop`` (``CHAT_LOOP``, which the peers read as the project does), and
``node-ws``: ``benchmarks/node/ws_peer.js``, Node's ``ws`` (``npm ci`` in ``benchmarks/node``
installs it; the run is skipped for it when node or ws is missing). ``--before CHECKOUT`` adds
the project's server of another checkout as ``before@LOOP``, to measure a change against the
peers in the same rounds.

Workloads: ``echo-32B-k1``, ``echo-32B-k16`` and ``broadcast-1000`` (e2e's: 50 connections
with 1 or 16 messages of 32 B in flight each; 64 B from one sender to 1,000 receivers as
fast as they keep up), and with ``--only`` also ``echo-1KiB-k1`` and ``broadcast-100``.

The tables: each server's median and range (min to max over the rounds) of messages or
deliveries per second and of server CPU per message or delivery; then the ratios of the
project to each other server on the same loop, rfc6455@uvloop to node-ws, and each server on
uvloop to itself on asyncio, each the median and range of the ratios taken round by round
(the two of one ratio ran in the same round, minutes apart at most).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# Run as a script: the repository, not this folder, is where ``benchmarks`` lives.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import e2e
from benchmarks.bench_channels import Config, ProjectServer

LOOPS = ("asyncio", "uvloop")
NODE = "node-ws"
NODE_DIR = e2e.ROOT / "benchmarks" / "node"
UVLOOP = f"{e2e.PROJECT}@uvloop"
# The project's server from another checkout (--before), on each loop.
BEFORE = "before"

WORKLOADS = [e2e.echo(32, 1), e2e.echo(32, 16), e2e.broadcast(1000)]
MORE = [e2e.echo(e2e.KiB, 1), e2e.broadcast(100)]


class NodeServer(e2e.Server):
    """``node benchmarks/node/ws_peer.js``: the endpoints of the Python peers, in ``ws``."""

    interpreter = "node"

    def command(self) -> list[str]:
        return [str(NODE_DIR / "ws_peer.js"), "--host", e2e.HOST, "--port", str(self.port)]


def node_ready() -> bool:
    return shutil.which("node") is not None and (NODE_DIR / "node_modules" / "ws").is_dir()


def server_names(
    libraries: Sequence[str], node: bool, loops: Sequence[str] = LOOPS, before: bool = False
) -> list[str]:
    """``library@loop`` for every library (and ``before``) and loop, then ``node-ws``."""
    libraries = [*libraries, BEFORE] if before else list(libraries)
    return [f"{library}@{loop}" for loop in loops for library in libraries] + [NODE] * node


def measure_once(
    name: str, workload: e2e.Workload, config: e2e.Config, tag: str
) -> e2e.Measurement:
    """e2e.measure_once for ``library@loop``, ``before@loop`` and ``node-ws``."""
    workdir = config.workdir / tag
    library, _, loop = name.partition("@")
    server: e2e.Server
    if name == NODE:
        server = NodeServer(NODE, config.server_cores, workdir)
    elif library == BEFORE:
        assert isinstance(config, Config)
        server = ProjectServer(e2e.PROJECT, config.server_cores, workdir, config.before)
        server.loop = loop
    else:
        server = e2e.Server(library, config.server_cores, workdir, loop=loop)
    return e2e.measure_on(server, workload, config)


def spread(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    """Median, min and max of the values present."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return statistics.median(present), min(present), max(present)


def fmt_spread(values: Sequence[float | None], ratio: bool = False) -> str:
    found = spread(values)
    if found is None:
        return "—"
    middle, low, high = found
    if ratio:
        return f"{middle:.2f}{e2e.X} ({low:.2f} to {high:.2f})"
    return f"{e2e.fmt(middle, 2)} ({e2e.fmt(low, 2)} to {e2e.fmt(high, 2)})"


def per_round(
    ours: Sequence[e2e.Measurement], theirs: Sequence[e2e.Measurement], cpu: bool
) -> list[float | None]:
    """Ratios of ``ours`` to ``theirs`` round by round: throughput, or CPU per unit."""

    def of(m: e2e.Measurement) -> float | None:
        return m.cpu_per_unit_us if cpu else m.value

    return [e2e.ratio(of(a), of(b)) for a, b in zip(ours, theirs, strict=False)]


def pairs(servers: Sequence[str]) -> list[tuple[str, str]]:
    """(ours, theirs): the project to every other library on its loop, rfc6455@uvloop to
    node-ws, every library on uvloop to itself on asyncio."""
    found = []
    for loop in LOOPS:
        ours = f"{e2e.PROJECT}@{loop}"
        found += [(ours, s) for s in servers if s.endswith(f"@{loop}") and s != ours]
    if NODE in servers:
        found.append((UVLOOP, NODE))
    found += [(s, s.replace("@uvloop", "@asyncio")) for s in servers if s.endswith("@uvloop")]
    return [(a, b) for a, b in found if a in servers and b in servers]


def tables(
    workloads: Sequence[e2e.Workload], servers: Sequence[str], results: e2e.Results
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows): the figures of each server, then the ratios."""
    names = [w.describe() for w in workloads]
    figures = []
    for server in servers:
        row = [server]
        for w in workloads:
            ms = results[w.name][server]
            row.append(fmt_spread([m.value for m in ms]))
            row.append(fmt_spread([m.cpu_per_unit_us for m in ms]))
        figures.append(row)
    header = ["server"]
    for name, w in zip(names, workloads, strict=True):
        header += [f"{name}: {w.unit}", f"{name}: CPU µs"]
    ratios = []
    for ours, theirs in pairs(servers):
        row = [f"{ours} ÷ {theirs}"]
        for w in workloads:
            a, b = results[w.name][ours], results[w.name][theirs]
            row.append(fmt_spread(per_round(a, b, cpu=False), ratio=True))
            row.append(fmt_spread(per_round(a, b, cpu=True), ratio=True))
        ratios.append(row)
    ratio_header = ["ratio"]
    for name in names:
        ratio_header += [f"{name}: throughput", f"{name}: CPU per unit"]
    return [
        ("Median (min to max) over the rounds", header, figures),
        (
            "Ratios, median (min to max) of the rounds' ratios: throughput above 1 and CPU "
            "per unit below 1 mean the first is better",
            ratio_header,
            ratios,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="WORKLOAD",
        help="this workload only, or those named WORKLOAD-... (repeatable): "
        + ", ".join(w.name for w in WORKLOADS + MORE),
    )
    parser.add_argument(
        "--libraries",
        default=",".join(e2e.SERVERS),
        help=f"comma-separated, from {', '.join(e2e.SERVERS)} (default: all)",
    )
    parser.add_argument("--no-node", action="store_true", help="leave out node-ws")
    parser.add_argument(
        "--loops", default=",".join(LOOPS), help="comma-separated, from asyncio, uvloop"
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="CHECKOUT",
        help="also the project's server from this checkout, as before@LOOP",
    )
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run")
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="times to repeat a measurement disturbed by other processes (default 1)",
    )
    parser.add_argument("--markdown", action="store_true", help="Markdown tables on stdout")
    parser.add_argument("--save", type=Path, help="write every round's numbers here as JSON")
    args = parser.parse_args(argv)

    libraries = [s.strip() for s in args.libraries.split(",") if s.strip()]
    if e2e.PROJECT not in libraries or set(libraries) - set(e2e.SERVERS):
        raise SystemExit(f"--libraries: from {', '.join(e2e.SERVERS)}, with {e2e.PROJECT}")
    node = not args.no_node and node_ready()
    if not args.no_node and not node:
        e2e.log(f"node-ws left out: no node, or no ws in {NODE_DIR} (npm ci there)")
    loops = [s.strip() for s in args.loops.split(",") if s.strip()]
    if not loops or set(loops) - set(LOOPS):
        raise SystemExit("--loops: from asyncio, uvloop")
    servers = server_names(libraries, node, loops, before=args.before is not None)
    workloads = e2e.select(WORKLOADS + MORE, args.only) if args.only else WORKLOADS
    server_cores, load_cores = e2e.cpus()
    os.sched_setaffinity(0, load_cores)
    e2e.raise_nofile(4000)

    load_start = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        config = Config(
            e2e.Timings(duration=args.duration, warmup=args.warmup),
            server_cores,
            load_cores,
            "benchmarks.load",
            False,
            Path(tmp),
            retries=args.retries,
            before=args.before,
        )
        results = e2e.run_all(workloads, servers, args.rounds, config, measure_once)
    header = e2e.machine(config, load_start, os.getloadavg()[0], time.monotonic() - started)
    header.append(f"uvloop {e2e.package_version('uvloop')}, node {node_version()}")

    if args.markdown:
        e2e.out = sys.stderr
    for title, head, rows in tables(workloads, servers, results):
        e2e.print_text(title, head, rows)
        if args.markdown:
            e2e.print_markdown(title, head, rows)
    for line in header:
        print(f"  {line}", file=e2e.out)
    if args.markdown:
        print("\n" + "\n".join(f"- {line}" for line in header))
    if args.save:
        e2e.save_run(args.save, header, args.rounds, config.timings, workloads, results)


def node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return "not installed"
    return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
