"""What collecting metrics costs (issue 15): the server with them against the server without.

Run ``python benchmarks/bench_metrics.py`` (5 rounds, about 4 minutes; ``--rounds``,
``--duration``, ``--warmup``; ``--markdown``: the table as Markdown on stdout, for
benchmarks/README.md). It runs on ``benchmarks/e2e.py``'s machinery: each measurement starts a
fresh server pinned with ``taskset`` to the first core, the load (``python -m
benchmarks.load``) runs on the others, and the two servers alternate, round after round
(which goes first alternates too):

- ``metrics``: this checkout's server with ``--metrics-port``, its ``/metrics`` scraped every
  second while it is measured (15 times Prometheus's default rate), and once more at the end
  to check that it counted the messages;
- ``without``: the server of ``--base`` (a commit, by default the one before
  ``server/metrics.py`` was added), extracted from git into a temporary folder: no metrics
  at all.

Workloads (e2e's): the 32 B echo over 50 connections with K = 1 and K = 16 messages in
flight, and the broadcast of 64 B to 100 receivers. The table gives, for each, the ratio
``metrics ÷ without`` of the server's CPU time per message (or per delivery) and of the
throughput, round by round: the median and the range of the rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import e2e
from benchmarks.bench_channels import ProjectServer, fmt_ratios, ratios, spread, values

__all__ = ["main"]

WITH = "metrics"
WITHOUT = "without"
SCRAPE_INTERVAL = 1.0


class MetricsServer(ProjectServer):
    """This checkout's server, with its metrics served on a port of their own."""

    def __init__(self, name: str, cores: Sequence[int], workdir: Path) -> None:
        super().__init__(name, cores, workdir)
        self.metrics_port = e2e.free_port()

    def project_options(self) -> list[str]:
        return [*super().project_options(), "--metrics-port", str(self.metrics_port)]

    def scrape(self) -> str:
        url = f"http://{e2e.HOST}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())


@dataclass
class Config(e2e.Config):
    base: Path | None = None  # the checkout without metrics


def measure_scraped(
    server: e2e.Server, workload: e2e.Workload, config: e2e.Config
) -> e2e.Measurement:
    """e2e.measure, scraping ``/metrics`` every second meanwhile; checks what it counted."""
    assert isinstance(server, MetricsServer)
    done = threading.Event()

    def scrape_periodically() -> None:
        while not done.wait(SCRAPE_INTERVAL):
            server.scrape()

    scraper = threading.Thread(target=scrape_periodically, daemon=True)
    scraper.start()
    try:
        measurement = e2e.measure(server, workload, config)
    finally:
        done.set()
        scraper.join()
    received = re.search(
        r"^chat_transport_messages_received_total(?:\{[^}]*\})? (\S+)$", server.scrape(), re.M
    )
    if received is None or float(received.group(1)) <= 0:
        raise RuntimeError("the server with metrics counted no message")
    return measurement


def measure_once(
    name: str, workload: e2e.Workload, config: e2e.Config, tag: str
) -> e2e.Measurement:
    workdir = config.workdir / tag
    if name == WITH:
        return e2e.measure_on(
            MetricsServer(name, config.server_cores, workdir), workload, config, measure_scraped
        )
    assert isinstance(config, Config)
    server = ProjectServer(name, config.server_cores, workdir, config.base)
    return e2e.measure_on(server, workload, config)


def base_commit() -> str:
    """The commit before the one that added ``server/metrics.py``."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "server/metrics.py"],
        cwd=e2e.ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:
        raise SystemExit("bench_metrics: server/metrics.py has no commit: give --base")
    return added[-1] + "^"


def extract(commit: str, folder: Path) -> None:
    """The tree of ``commit``, written into ``folder``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=e2e.ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per run")
    parser.add_argument("--base", help="the commit without metrics (default: the one before)")
    parser.add_argument("--markdown", action="store_true", help="the table as Markdown on stdout")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    e2e.out = sys.stderr
    workloads = [e2e.echo(32, 1), e2e.echo(32, 16), e2e.broadcast(100)]
    server_cores, load_cores = e2e.cpus()
    e2e.raise_nofile(4096)
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        extract(args.base or base_commit(), base)
        runs = Path(tmp) / "runs"
        runs.mkdir()
        config = Config(
            e2e.Timings(args.duration, args.warmup),
            server_cores,
            load_cores,
            "benchmarks.load",
            False,
            runs,
            base=base,
        )
        results = e2e.run_all(workloads, [WITH, WITHOUT], args.rounds, config, measure_once)
    header = e2e.machine(config, load_start, os.getloadavg()[0], time.monotonic() - started)
    rows = []
    for workload in workloads:
        cpu_with = values(results, workload.name, WITH, cpu=True)
        cpu_without = values(results, workload.name, WITHOUT, cpu=True)
        rows.append(
            [
                workload.name,
                spread(cpu_with),
                spread(cpu_without),
                fmt_ratios(ratios(cpu_with, cpu_without)),
                fmt_ratios(
                    ratios(
                        values(results, workload.name, WITH),
                        values(results, workload.name, WITHOUT),
                    )
                ),
            ]
        )
    head = [
        "workload",
        "µs CPU/unit, metrics",
        "µs CPU/unit, without",
        "CPU ÷ (median, range)",
        "throughput ÷",
    ]
    lines = [*header, ""] if args.markdown else header
    print("\n".join(lines))
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        for row in [head, *rows]:
            print("  ".join(f"{cell:<24}" for cell in row))


if __name__ == "__main__":
    main()
