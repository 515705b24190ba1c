"""``benchmarks/bench_deflate.py`` still runs: tiny counts, no assertion on speed."""

from __future__ import annotations

import pytest

from benchmarks import bench_deflate


def test_chat_json_is_the_size_asked() -> None:
    for size in (64, 1024, 4096):
        assert len(bench_deflate.chat_json(size)) == size


def test_broadcast_delivers_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    names = "rfc6455 --compression off,rfc6455 --compression on"
    bench_deflate.broadcast(receivers=3, messages=20, rounds=1, only=names)
    out = capsys.readouterr().out
    assert "| rfc6455 --compression on |" in out


def test_memory_reports_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    bench_deflate.memory(connections=50, rounds=1)
    out = capsys.readouterr().out
    for mode in ("off", "on", "context"):
        assert f"| {mode} |" in out


def test_parse_compares_two_trees(capsys: pytest.CaptureFixture[str]) -> None:
    bench_deflate.parse(bench_deflate.ROOT)
    assert "masked 1 KiB text" in capsys.readouterr().out


def test_chat_memory_reports_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    bench_deflate.chat_memory(connections=30, rounds=1)
    out = capsys.readouterr().out
    assert "| off |" in out
    assert "| on |" in out
