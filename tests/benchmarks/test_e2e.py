"""The peer servers of ``benchmarks/e2e.py`` do the same work as the project's server, and the
driver's own helpers (raw idle connections, /proc readings, the server process) work.

Each peer runs as a real process on a free port, as the benchmark runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect

from benchmarks import bench_loop, e2e

PEERS = Path(e2e.PEERS)


@pytest.fixture(
    params=[
        *(f"{name}@{loop}" for loop in ("asyncio", "uvloop") for name in e2e.PEER_NAMES),
        bench_loop.NODE,
    ]
)
def peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A running peer server (``NAME@LOOP``, or Node's ws); yields its base URL, and checks
    that SIGTERM ends it with 0."""
    if request.param == bench_loop.NODE:
        if not bench_loop.node_ready():
            pytest.skip("no node, or no ws in benchmarks/node (npm ci there)")
        command = ["node", str(bench_loop.NODE_DIR / "ws_peer.js")]
    else:
        name, _, loop = request.param.partition("@")
        pytest.importorskip(name)
        pytest.importorskip(loop)
        command = [sys.executable, str(PEERS / f"{name}_peer.py"), "--loop", loop]
    process = subprocess.Popen(
        [*command, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("ready "), line
        yield f"ws://127.0.0.1:{int(line.split()[1])}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stderr is not None
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_echo(peer: str) -> None:
    with connect(f"{peer}/echo", max_size=None, compression=None) as ws:
        for message in ["héllo", b"\x00\xff", "x" * 300_000, b"\x01" * 100_000]:
            ws.send(message)
            assert ws.recv(timeout=5) == message


def _quiet(ws: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        ws.recv(timeout=0.2)


def test_broadcast_to_the_others(peer: str) -> None:
    with (
        connect(f"{peer}/", compression=None) as a,
        connect(f"{peer}/", compression=None) as b,
        connect(f"{peer}/", compression=None) as c,
    ):
        a.send("from a")
        assert b.recv(timeout=5) == "from a"
        assert c.recv(timeout=5) == "from a"
        b.send('{"ts": 1.5, "ü": "x"}')
        assert a.recv(timeout=5) == '{"ts": 1.5, "ü": "x"}'
        assert c.recv(timeout=5) == '{"ts": 1.5, "ü": "x"}'
        _quiet(a)
        _quiet(b)


def test_idle_connections_and_proc_readings(tmp_path: Path) -> None:
    server = e2e.Server(e2e.PROJECT, sorted(os.sched_getaffinity(0))[:1], tmp_path)
    server.start()
    try:
        rss = e2e.proc_rss_bytes(server.pid)
        assert rss > 1_000_000
        sockets = e2e.open_idle(server.port, "/", 30, batch=7)
        try:
            assert len(sockets) == 30
        finally:
            e2e.close_all(sockets)
        assert e2e.proc_cpu_seconds(server.pid) > 0
    finally:
        server.stop()
    assert server.process is not None
    assert server.process.returncode == 0


def test_workload_names_and_selection() -> None:
    names = [w.name for w in e2e.all_workloads(quick=False, idle=5000)]
    assert names[:2] == ["echo-32B-k1", "echo-32B-k16"]
    assert {"echo-1MiB-k16", "broadcast-100", "broadcast-1000", "connect", "memory"} <= set(names)
    assert [w.name for w in e2e.select(e2e.all_workloads(False, 10), ["broadcast"])] == [
        "broadcast-100",
        "broadcast-1000",
    ]
    assert all(t.workload in names for t in e2e.TARGETS)


def test_run_all_runs_each_workload_on_its_servers(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    def fake(name: str, workload: e2e.Workload, config: e2e.Config, tag: str) -> e2e.Measurement:
        calls.append((workload.name, name))
        return e2e.Measurement(1.0)

    workloads = [
        e2e.Workload("a", "echo", "/echo", 1),
        e2e.Workload("b", "echo", "/echo", 1, servers=(e2e.PROJECT,)),
    ]
    config = e2e.Config(e2e.Timings(1.0, 0.0), [0], [1], "benchmarks.load", False, tmp_path)
    results = e2e.run_all(workloads, [e2e.PROJECT, "websockets"], 2, config, fake)
    # Round 2 starts one server further.
    assert calls == [
        ("a", e2e.PROJECT),
        ("a", "websockets"),
        ("b", e2e.PROJECT),
        ("a", "websockets"),
        ("a", e2e.PROJECT),
        ("b", e2e.PROJECT),
    ]
    assert len(results["b"][e2e.PROJECT]) == 2
    assert results["b"]["websockets"] == []
