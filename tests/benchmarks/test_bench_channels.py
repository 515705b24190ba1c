"""``benchmarks/bench_channels.py`` still runs: its channel workloads at their smallest, no
assertion on speed.

One round of each with a handful of connections and half-second windows (about 20 s): real
``python -m server`` processes with the benchmark's namespaces, the load generator publishing
to a channel and cycling subscriptions, idle connections subscribed by this process. What is
checked is that each workload measured something without errors and that the tables and the
targets are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_channels

SCRIPT = Path(bench_channels.__file__)
SMALLEST = [
    *("--quick", "--no-peer", "--duration", "0.5", "--warmup", "0.2"),
    *("--only", "fanout", "--only", "subscribe", "--only", "join-leave", "--only", "memory"),
    *("--receivers", "5", "--others", "20", "--other-channels", "2"),
    *("--idle", "60", "--members", "10", "--cyclers", "2", "--listeners", "3"),
]
WORKLOADS = {
    "fanout-general",
    "fanout-channel",
    "fanout-channel-alone",
    "subscribe",
    "join-leave",
    "memory",
    "memory-ch1",
    "memory-ch3",
    "memory-ch3-ids",
    "memory-ch3-shared",
}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores, as the benchmark")
def test_smallest_run_measures_every_channel_workload(tmp_path: Path) -> None:
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
    for title in ("Fan-out", "Memory", "Subscribe/unsubscribe and join/leave", "Targets"):
        assert title in done.stdout
    run = json.loads(saved.read_text())
    results = run["results"]
    assert set(results) == WORKLOADS
    for name, by_server in results.items():
        (measurement,) = by_server["rfc6455"]
        assert measurement["value"] > 0, name
        assert measurement["errors"] == 0, (name, measurement["raw"].get("errors"))
    fanout = results["fanout-channel"]["rfc6455"][0]
    assert fanout["raw"]["others"] == 20
    assert fanout["raw"]["deliveries"] > 0
    assert fanout["cpu_per_unit_us"] > 0
    # Every join was announced to the listeners; nothing is announced in the fan namespace.
    assert results["join-leave"]["rfc6455"][0]["raw"]["deliveries"] > 0
    assert results["subscribe"]["rfc6455"][0]["raw"]["deliveries"] == 0
