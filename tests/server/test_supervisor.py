"""The supervisor of ``--workers``: starts, deaths and backoff, stop, rolling restart, checks.

The supervisor runs in the test's event loop with fake workers (``fake_worker.py``), which
record what happens to them in an events file; signals are real, sent to this process while
the supervisor's handlers are installed. Orders and counts are asserted, never durations.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import rfc6455
from server import supervisor
from server.cli import main, parse_args
from server.settings import Settings
from server.supervised import SUPERVISOR_FD
from server.supervisor import Backoff, Supervisor, worker_command
from tests.server.support import GUARD, wait_until

FAKE = Path(__file__).with_name("fake_worker.py")
REPO = Path(__file__).resolve().parents[2]
# Delays that do not slow the tests down; a worker is never healthy for long enough to reset.
FAST = Backoff(first=0.01, most=0.04, reset_after=3600)


class Run:
    """A supervisor of fake workers, running as a task; their events; its log."""

    def __init__(
        self,
        folder: Path,
        caplog: pytest.LogCaptureFixture,
        workers: int,
        *,
        stop_timeout: float = GUARD,
        backoff: Backoff = FAST,
        command: Sequence[str] | None = None,
    ) -> None:
        self.folder = folder
        self.caplog = caplog
        self.listening = asyncio.Event()
        self.listened = 0

        def on_listening() -> None:
            self.listened += 1
            self.listening.set()

        self.supervisor = Supervisor(
            [sys.executable, str(FAKE), str(folder), SUPERVISOR_FD] if command is None else command,
            workers,
            stop_timeout=stop_timeout,
            backoff=backoff,
            on_listening=on_listening,
        )
        self.task = asyncio.create_task(self.supervisor.run())

    def events(self) -> list[tuple[int, str]]:
        """Every ``(pid, event)`` so far, in order."""
        path = self.folder / "events"
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        return [(int(pid), event) for pid, event in (line.split(" ", 1) for line in lines)]

    def pids(self, event: str) -> list[int]:
        """The workers that recorded ``event``, in order."""
        return [pid for pid, seen in self.events() if seen == event]

    def started_in(self, slot: int) -> list[int]:
        """The pids of the workers started in ``slot`` (1, 2, ...), in order."""
        prefix = f"worker {slot} (pid "
        return [
            int(line.removeprefix(prefix).split(")")[0])
            for line in self.log()
            if line.startswith(prefix) and line.endswith(") started")
        ]

    def log(self, level: int = logging.INFO) -> list[str]:
        """The supervisor's log lines at ``level`` or above."""
        return [
            record.getMessage()
            for record in self.caplog.records
            if record.name == "server.supervisor" and record.levelno >= level
        ]

    async def started(self) -> None:
        async with asyncio.timeout(GUARD):
            await self.listening.wait()

    async def status(self) -> int:
        """Wait for ``run()`` to return; its exit status."""
        async with asyncio.timeout(2 * GUARD):
            return await self.task


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CHAT_* variable from the outside; run in tmp_path, where ./data may be created."""
    for name in list(os.environ):
        if name.startswith("CHAT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def supervise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, loop_errors: list[dict[str, Any]]
) -> AsyncIterator[Callable[..., Run]]:
    """``supervise(workers, **options)`` starts a Run in tmp_path; it is stopped at teardown."""
    caplog.set_level(logging.INFO, logger="server.supervisor")
    runs: list[Run] = []

    def start(workers: int, **options: Any) -> Run:
        runs.append(Run(tmp_path, caplog, workers, **options))
        return runs[-1]

    yield start
    for run in runs:
        if not run.task.done():
            run.task.cancel()
        await asyncio.wait([run.task])


def send(signum: signal.Signals) -> None:
    """Send ``signum`` to this process, where the supervisor runs."""
    os.kill(os.getpid(), signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_every_worker_listens_then_a_signal_stops_them_all(
    supervise: Callable[..., Run], signum: signal.Signals
) -> None:
    run = supervise(3)
    await run.started()
    ready = run.pids("ready")
    assert len(ready) == 3
    assert run.listened == 1
    send(signum)
    assert await run.status() == 0
    for pid in ready:
        assert [event for seen, event in run.events() if seen == pid] == [
            "started",
            "ready",
            "SIGTERM",
            "exit 0",
        ]
    assert run.log()[-2:] == ["stopping 3 workers", "stopped"]
    assert not run.log(logging.WARNING)


async def test_a_worker_that_crashes_is_started_again_with_a_doubling_delay(
    supervise: Callable[..., Run], tmp_path: Path
) -> None:
    (tmp_path / "crashes").write_text("5")
    run = supervise(1)
    await run.started()
    await wait_until(lambda: len(run.pids("ready")) == 6)  # 5 crashes, then one that serves
    run.supervisor.stop()
    assert await run.status() == 0
    crashed = run.pids("exit 3")
    assert len(crashed) == 5
    assert run.log(logging.WARNING) == [
        f"worker 1 (pid {pid}) exited with status 3; starting it again in {delay:g} s"
        for pid, delay in zip(crashed, [0.01, 0.02, 0.04, 0.04, 0.04], strict=True)
    ]
    started = [line for line in run.log() if line.endswith(" started")]
    assert started == [f"worker 1 (pid {pid}) started" for pid in run.pids("started")]
    assert len(started) == 6


async def test_the_delay_starts_again_after_a_worker_ran_long_enough(
    supervise: Callable[..., Run], tmp_path: Path
) -> None:
    (tmp_path / "crashes").write_text("3")
    run = supervise(1, backoff=Backoff(first=0.01, most=1, reset_after=0))
    await run.started()
    await wait_until(lambda: len(run.pids("ready")) == 4)
    run.supervisor.stop()
    assert await run.status() == 0
    assert [line.rsplit(" in ", 1)[1] for line in run.log(logging.WARNING)] == ["0.01 s"] * 3


async def test_a_killed_worker_is_logged_with_its_signal_and_started_again(
    supervise: Callable[..., Run],
) -> None:
    run = supervise(2)
    await run.started()
    first, second = run.pids("ready")
    os.kill(first, signal.SIGKILL)
    await wait_until(lambda: len(run.pids("ready")) == 3)
    (warning,) = run.log(logging.WARNING)
    assert warning.endswith(f"(pid {first}) was killed by SIGKILL; starting it again in 0.01 s")
    send(signal.SIGTERM)
    assert await run.status() == 0
    assert set(run.pids("exit 0")) == {second, run.pids("ready")[2]}


async def test_sighup_replaces_the_workers_one_at_a_time(supervise: Callable[..., Run]) -> None:
    run = supervise(2)
    await run.started()
    send(signal.SIGHUP)
    await wait_until(lambda: "restarted 2 workers" in run.log())
    (old_1, new_1), (old_2, new_2) = run.started_in(1), run.started_in(2)
    old, new = [old_1, old_2], [new_1, new_2]
    events = run.events()
    # Each replacement listens before its old worker is told to go, and the next one starts
    # once the old one is gone: never fewer than two workers listening.
    since = events[max(events.index((pid, "ready")) for pid in old) + 1 :]
    assert [event for event in since if event[1] != "started"] == [
        (new[0], "ready"),
        (old[0], "SIGUSR1"),
        (old[0], "exit 0"),
        (new[1], "ready"),
        (old[1], "SIGUSR1"),
        (old[1], "exit 0"),
    ]
    assert events.index((old[0], "exit 0")) < events.index((new[1], "started"))
    assert not run.log(logging.WARNING)
    send(signal.SIGTERM)
    assert await run.status() == 0
    assert sorted(run.pids("SIGTERM")) == sorted(new)


async def test_a_restart_asked_for_during_a_restart_runs_after_it(
    supervise: Callable[..., Run],
) -> None:
    run = supervise(2)
    await run.started()
    run.supervisor.restart()
    await wait_until(lambda: len(run.pids("ready")) == 3)  # the first restart is under way
    run.supervisor.restart()
    run.supervisor.restart()  # asked twice meanwhile: one more restart
    await wait_until(lambda: run.log().count("restarted 2 workers") == 2)
    assert run.log().count("restarting 2 workers, one at a time") == 2
    assert len(run.pids("SIGUSR1")) == 4
    run.supervisor.stop()
    assert await run.status() == 0
    assert len(run.pids("ready")) == 6


async def test_a_replacement_that_does_not_listen_stops_the_restart_and_the_old_one_serves_on(
    supervise: Callable[..., Run], tmp_path: Path
) -> None:
    run = supervise(2)
    await run.started()
    old = run.started_in(1) + run.started_in(2)
    (tmp_path / "fail").touch()
    send(signal.SIGHUP)
    await wait_until(lambda: run.log(logging.ERROR))
    (failed,) = run.pids("exit 2")
    (error,) = run.log(logging.ERROR)
    assert error == (
        f"worker 1 (pid {failed}) exited with status 2 before it listened: the restart stops, "
        f"worker 1 (pid {old[0]}) serves on"
    )
    assert run.pids("SIGUSR1") == []
    (tmp_path / "fail").unlink()
    send(signal.SIGHUP)  # the cause fixed, a restart goes through
    await wait_until(lambda: "restarted 2 workers" in run.log())
    assert run.pids("SIGUSR1") == old
    send(signal.SIGTERM)
    assert await run.status() == 0


async def test_a_worker_that_exits_before_it_first_listens_stops_the_supervisor(
    supervise: Callable[..., Run], tmp_path: Path
) -> None:
    (tmp_path / "fail").touch()
    run = supervise(2)
    assert await run.status() == 2
    assert run.listened == 0
    # One, or both if the other exited before it was stopped; neither is started again.
    errors = run.log(logging.ERROR)
    assert 1 <= len(errors) <= 2
    assert all(line.endswith("exited with status 2 before it listened") for line in errors)
    assert len([line for line in run.log() if line.endswith(" started")]) == 2
    assert not [line for line in run.log() if "starting it again" in line]


async def test_a_worker_that_does_not_stop_in_time_is_killed(
    supervise: Callable[..., Run], tmp_path: Path
) -> None:
    run = supervise(2, stop_timeout=0.2)
    await run.started()
    (tmp_path / "stubborn").touch()
    run.supervisor.stop()
    assert await run.status() == 1
    killed = [line for line in run.log(logging.WARNING) if "killed" in line]
    assert len(killed) == 2
    assert all(line.endswith("did not exit within 0.2 s: killed") for line in killed)
    assert len(run.pids("SIGTERM")) == 2


async def test_workers_stop_once_the_supervisor_is_killed(tmp_path: Path) -> None:
    """Each worker's link ends with the supervisor, however it ends: no worker is left over."""
    script = (
        "import asyncio, sys\n"
        "from server.supervisor import Supervisor\n"
        "command = [sys.executable, *sys.argv[1:]]\n"
        "ready = lambda: print('listening', flush=True)\n"
        "supervisor = Supervisor(command, 2, stop_timeout=10, on_listening=ready)\n"
        "asyncio.run(supervisor.run())\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        str(FAKE),
        str(tmp_path),
        SUPERVISOR_FD,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(GUARD):
            assert await process.stdout.readline() == b"listening\n"
    finally:
        process.kill()
        await process.wait()
    events = tmp_path / "events"

    def orphaned() -> list[str]:
        return [line for line in events.read_text().splitlines() if line.endswith(" orphaned")]

    await wait_until(lambda: len(orphaned()) == 2)
    ready = [line.split()[0] for line in events.read_text().splitlines() if " ready" in line]
    assert sorted(line.split()[0] for line in orphaned()) == sorted(ready)


async def greeted(url: str) -> rfc6455.Connection:
    """A chat client past its connectionId, welcome and history."""
    client = await rfc6455.connect(url, ping_interval=None)
    async with asyncio.timeout(GUARD):
        for _ in range(3):
            await client.recv()
    return client


async def test_a_rolling_restart_of_real_servers_closes_every_client_with_1012(
    supervise: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Real ``python -m server`` workers, each with a database of its own (their messages are
    not shared: the local engine), so that only the supervisor and the close are tested."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    with socket.socket() as reserved:
        # Bound, never listening: the port is the workers' (SO_REUSEPORT too) and no one else's.
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        script = f'exec "$0" -m server --port {port} --db "$1/$$.db" --shutdown-timeout 5'
        run = supervise(2, command=["sh", "-c", script, sys.executable, str(tmp_path)])
        await run.started()
        url = f"ws://127.0.0.1:{port}/"
        clients = [await greeted(url) for _ in range(6)]
        send(signal.SIGHUP)
        for client in clients:
            async with asyncio.timeout(2 * GUARD):
                await client.wait_closed()
            assert (client.close_code, client.close_reason) == (1012, "service restart")
        await wait_until(lambda: "restarted 2 workers" in run.log())
        clients = [await greeted(url) for _ in range(2)]  # the replacements serve
        send(signal.SIGTERM)
        assert await run.status() == 0
        for client in clients:
            await client.wait_closed()
            assert (client.close_code, client.close_reason) == (1001, "server shutting down")
    assert len(run.started_in(1)) == len(run.started_in(2)) == 2
    assert not run.log(logging.WARNING)


async def test_supervise_runs_the_workers_of_the_command_line_and_logs_the_address(
    supervise: Callable[..., Run],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    commands: list[list[str]] = []

    def fake_command(argv: Sequence[str]) -> list[str]:
        commands.append(worker_command(argv))
        return [sys.executable, str(FAKE), str(tmp_path), SUPERVISOR_FD]

    monkeypatch.setattr(supervisor, "worker_command", fake_command)
    settings = Settings(host="::1", port=6000, workers=2, engine="redis://127.0.0.1")
    running = asyncio.create_task(supervisor.supervise(settings, ["--workers", "2"]))
    await wait_until(lambda: "listening" in caplog.text)
    assert commands == [[sys.executable, "-m", "server", "--workers", "2", "--workers", "1"]]
    (line,) = [r.getMessage() for r in caplog.records if "listening" in r.getMessage()]
    assert line == "listening: open http://[::1]:6000/ (WebSocket ws://[::1]:6000/), 2 workers"
    send(signal.SIGTERM)
    async with asyncio.timeout(GUARD):
        assert await running == 0


def test_a_worker_of_the_command_line_is_one_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_WORKERS", "4")
    argv = ["--engine", "redis://127.0.0.1:6379", "--port", "6000", "--workers", "3"]
    command = worker_command(argv)
    assert command[:3] == [sys.executable, "-m", "server"]
    settings = parse_args(command[3:])
    assert (settings.workers, settings.port, settings.engine) == (1, 6000, argv[1])
    assert parse_args(argv).workers == 3
    assert parse_args(["--engine", argv[1], "--port", "6000"]).workers == 4


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["--workers", "2"],
            "--workers 2 needs a Redis --engine: the local engine's messages and seqs are one "
            "process's",
        ),
        (
            ["--workers", "3", "--engine", "redis://127.0.0.1", "--port", "0"],
            "--workers 3 needs a --port other than 0: each worker would get a port of its own",
        ),
    ],
)
def test_what_workers_cannot_share_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    says: str,
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"python -m server: error: {says}\n"


def test_workers_without_so_reuseport_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    with pytest.raises(SystemExit) as exited:
        main(["--workers", "2", "--engine", "redis://127.0.0.1", "--port", "6000"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "python -m server: error: --workers 2: this platform has no SO_REUSEPORT, for workers "
        "to share a port\n"
    )
    assert parse_args(["--workers", "1"]).workers == 1  # one worker is this process
