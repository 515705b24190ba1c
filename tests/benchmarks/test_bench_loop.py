"""``benchmarks/bench_loop.py``: which servers run, what each is compared with, the tables."""

from __future__ import annotations

from pathlib import Path

from benchmarks import bench_loop, e2e

X = e2e.X


def test_every_library_on_both_loops_then_node() -> None:
    assert bench_loop.server_names(["rfc6455", "aiohttp"], node=True) == [
        "rfc6455@asyncio",
        "aiohttp@asyncio",
        "rfc6455@uvloop",
        "aiohttp@uvloop",
        "node-ws",
    ]
    assert bench_loop.NODE not in bench_loop.server_names(["rfc6455"], node=False)


def test_the_project_is_compared_on_its_own_loop_and_each_loop_with_asyncio() -> None:
    servers = bench_loop.server_names(["rfc6455", "aiohttp"], node=True)
    assert bench_loop.pairs(servers) == [
        ("rfc6455@asyncio", "aiohttp@asyncio"),
        ("rfc6455@uvloop", "aiohttp@uvloop"),
        ("rfc6455@uvloop", "node-ws"),
        ("rfc6455@uvloop", "rfc6455@asyncio"),
        ("aiohttp@uvloop", "aiohttp@asyncio"),
    ]


def test_the_loop_reaches_each_server_as_chat_loop(tmp_path: Path) -> None:
    server = e2e.Server("aiohttp", [0], tmp_path, loop="uvloop")
    assert server.loop == "uvloop"
    assert e2e.Server("rfc6455", [0], tmp_path).loop == "asyncio"
    node = bench_loop.NodeServer(bench_loop.NODE, [0], tmp_path)
    assert node.interpreter == "node"
    assert node.command()[0].endswith("ws_peer.js")


def test_ratios_are_taken_round_by_round() -> None:
    workload = e2e.echo(32, 1)
    results: e2e.Results = {
        workload.name: {
            "rfc6455@uvloop": [e2e.Measurement(200.0, cpu_per_unit_us=5.0),
                               e2e.Measurement(300.0, cpu_per_unit_us=4.0)],
            "rfc6455@asyncio": [e2e.Measurement(100.0, cpu_per_unit_us=10.0),
                                e2e.Measurement(100.0, cpu_per_unit_us=8.0)],
        }
    }  # fmt: skip
    (_, _, figures), (_, _, ratios) = bench_loop.tables(
        [workload], ["rfc6455@asyncio", "rfc6455@uvloop"], results
    )
    assert figures[1] == ["rfc6455@uvloop", "250 (200 to 300)", "4.50 (4.00 to 5.00)"]
    assert ratios == [
        ["rfc6455@uvloop ÷ rfc6455@asyncio", f"2.50{X} (2.00 to 3.00)", f"0.50{X} (0.50 to 0.50)"]
    ]
