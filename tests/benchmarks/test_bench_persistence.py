"""``benchmarks/bench_persistence.py`` still runs: its smallest mode, no assertion on speed.

One run of every part with a handful of connections and half-second windows (about 10 s in
all): real ``python -m server`` processes, the server without database writes, the
persistence layer in a child process and the load generator. What is checked is that each
part measured something, that every acknowledged message was found in the database after the
server was killed, and that the Markdown tables and the targets are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_persistence
from benchmarks.server_no_db_writes import skip_insert
from server.store import MessageRecord, Store

SCRIPT = Path(bench_persistence.__file__)
SMALLEST = [
    "--quick",
    *("--rounds", "1", "--latency-rounds", "1"),
    *("--warmup", "0.2", "--duration", "0.5"),
    *("--senders", "4", "--window", "8", "--receivers", "4", "--rate", "100"),
]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores, as the benchmark")
def test_smallest_run_measures_every_part(tmp_path: Path) -> None:
    saved = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *SMALLEST, "--markdown", "--save", str(saved)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    for title in ("Durable throughput, end to end", "persistence layer alone", "on vs off"):
        assert title in done.stdout
    assert "| target | measured | met? |" in done.stdout
    run = json.loads(saved.read_text())
    on = [t for t in run["throughput"] if t["mode"] == "on"]
    off = [t for t in run["throughput"] if t["mode"] == "off"]
    assert on
    assert off
    for t in on + off:
        assert t["acks"] > 0
        assert t["deliveries_per_s"] > 0
        assert not t["errors"]
    # Killed with SIGKILL: every ack's message is in the database, and nothing is invented.
    assert on[0]["missing"] == 0
    assert on[0]["rows"] >= on[0]["acked_total"] > 0
    assert off[0]["rows"] is None
    for layer in run["layer"] + run["layer_paced"]:
        assert layer["committed"] > 0
        assert layer["missing"] == 0
        assert layer["rows"] >= layer["acked_total"]
    assert run["layer_paced"][0]["rate"] == 100
    assert {x["mode"] for x in run["latency"]} == {"on", "off"}
    for x in run["latency"]:
        assert x["p99_ms"] >= x["p50_ms"] > 0
        assert x["errors"] == 0


def test_the_wrapper_drops_writes(tmp_path: Path) -> None:
    with Store(tmp_path / "m.db") as store:
        skip_insert(store, [MessageRecord.create("c", "hi", seq=1)], reserve=10)
        assert store.count() == 0
        assert store.meta.reserved == 0
