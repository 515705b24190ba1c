"""``python -m benchmarks.load`` as a real process, against ``python -m server`` processes.

Every run is tiny (3 connections, 1 s, no warm-up) and they all run at the same time, started
by one module fixture, so the whole file takes a few seconds; the tests then check the JSON
reports. Nothing here asserts on speed: only that things were counted, the keys are there and
the percentiles are ordered. Each broadcast run has a server of its own, so that no run sees
another's messages.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.loadgen.stats import Recorder, Result, merge, percentile
from benchmarks.loadgen.wire import (
    StampedFrames,
    is_notice,
    parse_stamp,
    publish_envelope,
    request_frame,
)

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening: open http://127\.0\.0\.1:(\d+)/")
# Hang guard for every wait: far above what any step takes.
GUARD = 60.0
TINY = ["-c", "3", "-d", "1", "--warmup", "0", "--json", "--quiet"]
KEYS = {
    "mode",
    "url",
    "connections",
    "connected",
    "procs",
    "warmup",
    "duration",
    "window_start",
    "window_end",
    "messages",
    "messages_per_s",
    "bytes",
    "bytes_per_s",
    "latency_ms",
    "latency_samples",
    "deliveries",
    "deliveries_per_s",
    "handshakes",
    "handshakes_per_s",
    "errors",
    "interrupted",
    "params",
}


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Server:
    """One ``python -m server`` on 127.0.0.1, port 0; its log goes to a file (a pipe that
    nobody reads would fill up with one line per connection and block it)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.log = directory / "server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "server",
                    "--port",
                    "0",
                    "--ping-interval",
                    "0",
                    "--rate-limit",  # the broadcast runs send as fast as they can
                    "0",
                    "--db",
                    str(directory / "m.db"),
                ],
                cwd=directory,
                env=environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self._port: int | None = None

    @property
    def port(self) -> int:
        deadline = time.monotonic() + GUARD
        while self._port is None:
            match = LISTENING.search(self.log.read_text(errors="replace"))
            if match:
                self._port = int(match.group(1))
            elif self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{self.log.read_text()}")
            else:
                time.sleep(0.02)
        return self._port

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(GUARD)


def start_load(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.load", *args],
        cwd=REPO,
        env=environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str
    # The logs of the servers it ran against, where a test reads them.
    server_logs: tuple[str, ...] = ()

    @property
    def report(self) -> dict[str, Any]:
        lines = self.stdout.splitlines()
        assert len(lines) == 1, f"not one JSON line:\n{self.stdout}\n{self.stderr}"
        value = json.loads(lines[0])
        assert isinstance(value, dict)
        return value


def finish(process: subprocess.Popen[str]) -> Run:
    try:
        stdout, stderr = process.communicate(timeout=GUARD)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"load generator hung:\n{stderr}") from None
    return Run(process.returncode, stdout, stderr)


def free_port() -> int:
    """A port that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def when_measuring(load: subprocess.Popen[str], action: Callable[[], object]) -> Run:
    """Do ``action`` once the load generator shows its first progress line (it is measuring),
    then let it finish."""
    assert load.stderr is not None
    stderr = []
    for _ in range(100):
        line = load.stderr.readline()
        stderr.append(line)
        if not line or "measuring" in line:
            break
    action()
    run = finish(load)
    run.stderr = "".join(stderr) + run.stderr
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Every run of this file, started at once; name -> Run."""
    root = tmp_path_factory.mktemp("load")
    names = ("shared", "broadcast", "broadcast2", "channel", "subscribe", "gone", "a", "b")
    servers = {name: Server(root / name) for name in names}
    try:
        shared = servers["shared"]
        loads = {
            "echo": start_load("echo", shared.url("/echo"), *TINY),
            "echo_binary_k4": start_load(
                "echo", shared.url("/echo"), *TINY, "-k", "4", "--binary", "--fresh-masks"
            ),
            "echo_procs2": start_load("echo", shared.url("/echo"), *TINY, "--procs", "2"),
            "connect": start_load("connect", shared.url("/"), *TINY),
            "broadcast": start_load("broadcast", servers["broadcast"].url("/"), *TINY),
            "broadcast_procs2": start_load(
                "broadcast",
                servers["broadcast2"].url("/"),
                *TINY,
                "--procs",
                "2",
                "--senders",
                "2",
                "--rate",
                "0",
            ),
            "broadcast_channel": start_load(
                "broadcast", servers["channel"].url("/"), *TINY, "--channel", "room:t"
            ),
            # The sender on server a, the two receivers on server b.
            "sender_url": start_load(
                "broadcast",
                servers["b"].url("/"),
                *TINY,
                *("--rate", "50", "--channel", "room:x", "--open-concurrency", "1"),
                *("--sender-url", servers["a"].url("/")),
            ),
            # Two connections subscribe and unsubscribe, one listens.
            "subscribe": start_load(
                "subscribe",
                servers["subscribe"].url("/"),
                *TINY,
                "--senders",
                "2",
                "--channel",
                "room:s",
            ),
            "refused": start_load("echo", f"ws://127.0.0.1:{free_port()}/echo", *TINY),
            # Runs 2 s: at least one progress line, the first comes after 1 s.
            "text": start_load(
                "echo", shared.url("/echo"), "-c", "3", "-d", "1.5", "--warmup", "0.5"
            ),
            "gone": start_load(
                "echo", servers["gone"].url("/echo"), "-c", "3", "-d", "30", "--warmup", "0"
            ),
            "interrupted": start_load(
                "echo", shared.url("/echo"), "-c", "3", "-d", "30", "--warmup", "0"
            ),
        }
        gone = loads.pop("gone")
        interrupted = loads.pop("interrupted")
        results = {
            # The server dies: every connection goes, the generator stops on its own.
            "gone": when_measuring(gone, servers["gone"].stop),
            "interrupted": when_measuring(
                interrupted, lambda: interrupted.send_signal(signal.SIGINT)
            ),
        }
        results.update((name, finish(load)) for name, load in loads.items())
        results["sender_url"].server_logs = (
            servers["a"].log.read_text(),
            servers["b"].log.read_text(),
        )
        yield results
    finally:
        for server in servers.values():
            server.stop()


def check_report(run: Run, mode: str) -> dict[str, Any]:
    assert run.status == 0, run.stderr
    report = run.report
    assert set(report) == KEYS
    assert report["mode"] == mode
    assert report["errors"] == {}
    assert report["interrupted"] is False
    assert report["duration"] > 0
    assert report["window_start"] < report["window_end"]
    latency = report["latency_ms"]
    assert set(latency) == {"p50", "p90", "p99", "max"}
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert report["latency_samples"] > 0
    return report


@pytest.mark.parametrize("name", ["echo", "echo_binary_k4", "echo_procs2"])
def test_echo(runs: dict[str, Run], name: str) -> None:
    report = check_report(runs[name], "echo")
    assert report["connections"] == report["connected"] == 3
    assert report["messages"] > 0
    assert report["messages_per_s"] > 0
    assert report["bytes"] == report["messages"] * 32
    assert report["latency_samples"] == report["messages"]
    assert report["deliveries"] == report["handshakes"] == 0
    assert report["procs"] == (2 if name == "echo_procs2" else 1)


def test_broadcast(runs: dict[str, Run]) -> None:
    report = check_report(runs["broadcast"], "broadcast")
    assert report["connected"] == 3
    assert report["messages"] > 0
    # One sender, two receivers: each message reaches the two others, none comes back.
    assert 0 < report["deliveries"] <= 2 * report["messages"] + 2
    assert report["deliveries_per_s"] > 0
    assert report["latency_samples"] == report["deliveries"]


def test_broadcast_procs2_as_fast_as_possible(runs: dict[str, Run]) -> None:
    report = check_report(runs["broadcast_procs2"], "broadcast")
    assert report["procs"] == 2
    assert report["params"]["senders"] == 2
    assert report["messages"] > 0
    assert report["deliveries"] > 0


def test_broadcast_to_a_channel(runs: dict[str, Run]) -> None:
    """Every connection subscribes to the channel; the sender publishes to it."""
    report = check_report(runs["broadcast_channel"], "broadcast")
    assert report["params"]["channel"] == "room:t"
    assert report["connected"] == 3
    assert report["messages"] > 0
    assert 0 < report["deliveries"] <= 2 * report["messages"] + 2
    assert report["latency_samples"] == report["deliveries"]


def test_broadcast_senders_on_another_server(runs: dict[str, Run]) -> None:
    """With --sender-url the sender connects there, the receivers to the URL. These two
    servers share no engine: the receivers get nothing, which the report says."""
    run = runs["sender_url"]
    assert run.status == 1, run.stderr
    report = run.report
    assert report["connected"] == 3
    assert report["messages"] > 0
    assert report["deliveries"] == 0
    assert report["params"]["sender_url"].startswith("ws://127.0.0.1:")
    assert report["params"]["open_concurrency"] == 1
    a, b = run.server_logs
    assert a.count(" connect ") == 1
    assert b.count(" connect ") == 2


def test_sender_url_is_for_broadcast() -> None:
    run = finish(start_load("echo", "ws://127.0.0.1:1/", *TINY, "--sender-url", "ws://h/"))
    assert run.status == 2
    assert "--sender-url is for broadcast mode" in run.stderr


def test_subscribe(runs: dict[str, Run]) -> None:
    """Subscribes and unsubscribes are answered and timed; each is a member who joins or
    leaves, which the listener (and the other cycler, while subscribed) is told."""
    report = check_report(runs["subscribe"], "subscribe")
    assert report["connected"] == 3
    assert report["params"]["senders"] == 2
    assert report["messages"] > 0
    assert report["latency_samples"] == report["messages"]
    assert 0 < report["deliveries"] <= 2 * report["messages"] + 2
    assert report["handshakes"] == 0


def test_subscribe_needs_a_channel() -> None:
    run = finish(start_load("subscribe", "ws://127.0.0.1:1/", *TINY))
    assert run.status == 2
    assert "subscribe mode needs --channel" in run.stderr


def test_connect(runs: dict[str, Run]) -> None:
    report = check_report(runs["connect"], "connect")
    assert report["handshakes"] > 0
    assert report["handshakes_per_s"] > 0
    assert report["latency_samples"] == report["handshakes"]
    assert report["messages"] == report["deliveries"] == 0


def test_text_report_and_progress(runs: dict[str, Run]) -> None:
    run = runs["text"]
    assert run.status == 0, run.stderr
    assert run.stdout.startswith("echo ws://127.0.0.1:")
    assert "round trips" in run.stdout
    assert "errors       none" in run.stdout
    assert "messages/s" in run.stderr  # the live progress


def test_nothing_listening(runs: dict[str, Run]) -> None:
    run = runs["refused"]
    assert run.status == 1
    report = run.report
    assert report["connected"] == 0
    assert report["errors"] == {"connect_refused": 3}
    assert report["messages"] == 0
    assert report["latency_ms"] == dict.fromkeys(("p50", "p90", "p99", "max"))


def test_server_gone(runs: dict[str, Run]) -> None:
    """The server dies mid-run: the errors are counted, the report printed, status 1."""
    run = runs["gone"]
    assert run.status == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "errors       closed_1006 3" in run.stdout
    assert "round trips" in run.stdout


def test_interrupt_prints_partial_report(runs: dict[str, Run]) -> None:
    """SIGINT (Ctrl-C) stops the run: the partial report, then status 130."""
    run = runs["interrupted"]
    assert run.status == 130, run.stderr
    assert "(interrupted)" in run.stdout
    assert "errors       none" in run.stdout
    assert "Traceback" not in run.stderr


# The pieces, in this process


def test_stamp_round_trip() -> None:
    frames = StampedFrames(7, 100, b"\x01\x02\x03\x04")
    text = frames.text(123456789)
    assert len(text) == 100
    assert parse_stamp(text) == (7, 123456789)
    envelope = {"type": "broadcast", "connectionId": "x", "message": text, "timestamp": "t"}
    assert parse_stamp(json.dumps(envelope, separators=(",", ":"))) == (7, 123456789)
    assert parse_stamp(json.dumps({"message": text, "type": "broadcast"})) == (7, 123456789)
    assert parse_stamp(json.dumps({"type": "history", "message": text})) is None
    assert parse_stamp('{"type":"welcome","message":"hi"}') is None
    assert parse_stamp("hello") is None
    assert parse_stamp(text.encode()) is None
    assert parse_stamp("#LG x y") is None


def test_stamped_frame_is_the_masked_text() -> None:
    from rfc6455.masking import apply_mask

    key = b"\x10\x20\x30\x40"
    frames = StampedFrames(3, 300, key)
    frame = frames.frame(42)
    header = frame[: len(frame) - 300]
    assert header[-4:] == key
    assert apply_mask(frame[len(header) :], key) == frames.text(42).encode()


def test_stamped_publish_is_the_masked_request() -> None:
    """In a channel each message is a publish request; its head is masked where it lies."""
    from rfc6455.masking import apply_mask

    key = b"\x10\x20\x30\x40"
    for channel in ("room:a", "room:ab", "room:abc", "room:abcd"):  # every offset mod 4
        frames = StampedFrames(5, 64, key, publish_envelope(channel))
        text = frames.text(987654321)
        request = json.loads(text)
        assert request == {"type": "publish", "channel": channel, "message": request["message"]}
        assert len(request["message"]) == 64
        assert parse_stamp(request["message"]) == (5, 987654321)
        frame = frames.frame(987654321)
        payload = frame[len(frame) - len(text) :]
        assert frame[len(frame) - len(text) - 4 : len(frame) - len(text)] == key
        assert apply_mask(payload, key) == text.encode()


def test_request_frame() -> None:
    from rfc6455.masking import apply_mask

    key = b"\x01\x02\x03\x04"
    frame = request_frame("subscribe", "room:x", key)
    text = '{"type":"subscribe","channel":"room:x"}'
    assert apply_mask(frame[len(frame) - len(text) :], key) == text.encode()


def test_notices() -> None:
    assert is_notice('{"connectionId":"abc"}')
    assert is_notice('{"type":"welcome","message":"hi"}')
    assert is_notice('{"type":"user_left","connectionId":"a","totalConnections":1}')
    assert not is_notice('{"type":"broadcast","connectionId":"a","message":"m"}')
    assert not is_notice("abc")
    assert not is_notice(b"{}")


def test_percentiles_and_reservoir() -> None:
    assert [percentile(list(range(1, 101)), p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([5], 50) == 5
    recorder = Recorder(cap=100)
    recorder.sample(1)  # outside the window: dropped
    recorder.start_window()
    for ns in range(1000):
        recorder.sample(ns)
    recorder.end_window()
    result = recorder.result(connected=1, interrupted=False)
    assert result.seen == 1000
    assert len(result.samples) == 100 * 8
    merged = merge([result, Result(duration=1.0, messages=10)], cap=100)
    assert merged["latency_samples"] == 100
    assert merged["messages_per_s"] == 10.0
    latency = merged["latency_ms"]
    assert latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
