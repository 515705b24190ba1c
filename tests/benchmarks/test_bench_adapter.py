"""``benchmarks/bench_adapter.py`` still runs: tiny counts, no assertion on speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks import bench_adapter

SCRIPT = Path(bench_adapter.__file__)


async def test_echo_cost_echoes_every_message() -> None:
    # echo_cost itself asserts that every message was answered with one write.
    assert await bench_adapter.echo_cost(200) > 0


async def test_handshake_cost_closes_every_connection() -> None:
    assert await bench_adapter.handshake_cost(20) > 0


def test_script_prints_both_costs() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "1", "--messages", "100", "--handshakes", "5"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "per message" in out
    assert "per connection" in out
