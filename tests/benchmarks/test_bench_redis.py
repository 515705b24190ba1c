"""``benchmarks/bench_redis.py`` still runs: every workload on every server at its smallest, no
assertion on speed.

One round with a handful of connections and half-second windows (about 30 s): a real
``redis-server`` per measurement, real ``python -m server`` processes (one node, two nodes on
one Redis, ``--workers 1`` and ``--workers 2``), the load generator publishing from node A to
node B, the publishers of this process. What is checked is that each measured something
without errors, that the CPU of Redis, of node A and of every worker was sampled, and that the
tables, the projection and the targets are printed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_redis

SCRIPT = Path(bench_redis.__file__)
SMALLEST = [
    *("--quick", "--duration", "0.5", "--warmup", "0.2"),
    *("--senders", "3", "--window", "4", "--receivers", "5"),
    *("--latency-receivers", "3", "--rate", "100"),
]
ENGINES = {"local", "redis", "cross", "workers-1", "workers-2"}

pytestmark = [
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores, as the benchmark"),
    pytest.mark.skipif(
        shutil.which("redis-server") is None and not os.environ.get("CI"),
        reason="redis-server is not installed (Debian's redis-server package)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("redis") is None and not os.environ.get("CI"),
        reason="redis-py is not installed (the redis extra)",
    ),
]


def test_smallest_run_measures_every_workload(tmp_path: Path) -> None:
    saved = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *SMALLEST, "--markdown", "--save", str(saved)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "FAILED" not in done.stderr
    for title in ("Publishing", "Fan-out", "Latency", "Scale", "Assumptions", "Targets"):
        assert title in done.stdout
    run = json.loads(saved.read_text())
    results = run["results"]
    assert set(results) == {"publish", "fanout", "latency", "fanout-general", "echo-32B-k1"}
    assert set(results["fanout"]) >= ENGINES
    for name, by_server in results.items():
        for server, rounds in by_server.items():
            if not rounds:
                continue  # a server the workload does not run on
            (measurement,) = rounds
            assert measurement["value"] > 0, (name, server)
            assert measurement["errors"] == 0, (name, server, measurement["raw"].get("errors"))
            # CPU is read in clock ticks (10 ms): the latency workload's 50 messages to 3
            # receivers may cost node B less than one, the other workloads many.
            cpu = measurement["cpu_per_unit_us"]
            assert cpu >= 0 if name == "latency" else cpu > 0, (name, server)
    for name in ("redis", "workers-1", "workers-2"):
        raw = results["publish"][name][0]["raw"]
        assert raw["acks"] > 0
        assert raw["cpu_s.redis"] > 0, name
    assert "cpu_s.redis" not in results["publish"]["local"][0]["raw"]
    # Every worker of --workers 2 was sampled beside its supervisor.
    workers = results["fanout"]["workers-2"][0]["raw"]
    assert {"cpu_s.server", "cpu_s.worker-0", "cpu_s.worker-1"} <= set(workers)
    # Across nodes: the receivers on node B got what node A's sender published.
    cross = results["fanout"]["cross"][0]["raw"]
    assert cross["params"]["sender_url"] != cross["url"]
    assert cross["deliveries"] > 0
    assert cross["cpu_s.node-a"] > 0
    assert results["latency"]["cross"][0]["p99_ms"] > 0
