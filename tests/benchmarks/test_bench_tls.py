"""``benchmarks/bench_tls.py`` still runs: one short round, no assertion on speed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks import bench_tls

SCRIPT = Path(bench_tls.__file__)


def test_script_prints_every_row() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "1", "--seconds", "0.2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[:2] for row in rows[1:]] == [
        ["| handshakes", "TLS"],
        ["| handshakes", "plaintext"],
        ["| echo 1 KiB", "TLS"],
        ["| echo 1 KiB", "plaintext"],
    ]
