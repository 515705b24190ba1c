"""``python -m server`` as a real process, driven by the ``rfc6455`` and ``websockets`` clients.

The server listens on 127.0.0.1, port 0; the port is read from its start-up log line. It runs
in ``tmp_path`` with the repository on ``PYTHONPATH``, no ``CHAT_*`` variable inherited, and a
local time zone 5:30 ahead of UTC, so that local time cannot pass for UTC.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import resource
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import ConnectionClosed as WebsocketsClosed

import rfc6455
from tests.server.support import (
    GUARD,
    check_broadcast,
    check_id,
    check_timestamp,
    check_user_left,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening: open http://127\.0\.0\.1:(\d+)/")


class ServerProcess:
    """One ``python -m server`` child; its stderr is collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.stdout = b""
        # Called with each stderr line as soon as it is read.
        self.on_line: Callable[[str], object] = lambda line: None
        self._readers = [
            asyncio.create_task(self._read_stderr()),
            asyncio.create_task(self._read_stdout()),
        ]

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode())
            self.on_line(self.lines[-1])

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self.stdout = await self.process.stdout.read()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    async def port(self) -> int:
        """The port of the start-up line, once it is logged."""
        await wait_until(lambda: LISTENING.search(self.stderr) or self.process.returncode)
        match = LISTENING.search(self.stderr)
        assert match is not None, self.stderr
        return int(match.group(1))

    async def wait(self) -> int:
        """Wait for the exit and for the end of its output; return the exit status."""
        async with asyncio.timeout(GUARD):
            status = await self.process.wait()
            await asyncio.gather(*self._readers)
        return status

    def lines_with(self, *words: str) -> list[str]:
        return [line for line in self.lines if all(word in line for word in words)]

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await asyncio.gather(*self._readers)


@pytest.fixture
async def spawn(
    tmp_path: Path, loop_errors: list[dict[str, Any]]
) -> AsyncIterator[Callable[..., Any]]:
    """Return ``spawn(*args, **env)``, which starts ``python -m server`` in tmp_path."""
    processes: list[ServerProcess] = []

    async def start(
        *args: str, nofile: int | None = None, pass_fds: tuple[int, ...] = (), **env: str
    ) -> ServerProcess:
        """``nofile``: the child's soft and hard limit of file descriptors; ``pass_fds``: those
        it inherits."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        path = environ.get("PYTHONPATH")
        environ["PYTHONPATH"] = str(REPO) if not path else f"{REPO}{os.pathsep}{path}"
        environ["TZ"] = "IST-05:30"
        environ.update(env)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            *args,
            cwd=tmp_path,
            env=environ,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=None if nofile is None else partial(limit_descriptors, nofile),
            pass_fds=pass_fds,
        )
        server = ServerProcess(process)
        processes.append(server)
        return server

    yield start
    for server in processes:
        await server.kill()


def limit_descriptors(count: int) -> None:
    """In the child, before exec: at most ``count`` file descriptors, soft and hard."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


def rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT connection_id, message, timestamp FROM messages ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


async def greeted_by_websockets(ws: ClientConnection) -> str:
    """Read the greetings and the history; return the connection id."""
    async with asyncio.timeout(GUARD):
        first = json.loads(await ws.recv())
        second = json.loads(await ws.recv())
        third = json.loads(await ws.recv())
    assert second["type"] == "welcome"
    assert third["type"] == "history"
    return check_id(first["connectionId"])


async def recv_websockets(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not an ack."""
    async with asyncio.timeout(GUARD):
        while (message := json.loads(await ws.recv()))["type"] == "ack":
            pass
    assert isinstance(message, dict)
    return message


async def recv_rfc6455(connection: rfc6455.Connection, *, acks: bool = False) -> dict[str, Any]:
    """The next message; acks are skipped unless ``acks``."""
    async with asyncio.timeout(GUARD):
        while True:
            data = await connection.recv()
            assert isinstance(data, str)
            message = json.loads(data)
            assert isinstance(message, dict)
            if acks or message.get("type") != "ack":
                return message


def address(value: Any) -> str:
    return f"{value[0]}:{value[1]}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_chat_then_signal_shuts_down_cleanly(
    spawn: Callable[..., Any], tmp_path: Path, signum: signal.Signals
) -> None:
    db = tmp_path / "db" / "messages.db"
    server = await spawn("--port", "0", "--db", str(db))
    url = f"ws://127.0.0.1:{await server.port()}/"

    async with (
        await rfc6455.connect(url, ping_interval=None) as mine,
        websockets_connect(url) as theirs,
        websockets_connect(url) as leaver,
    ):
        mine_id = check_id(json.loads(str(await mine.recv()))["connectionId"])
        assert json.loads(str(await mine.recv()))["type"] == "welcome"
        assert json.loads(str(await mine.recv()))["type"] == "history"
        theirs_id = await greeted_by_websockets(theirs)
        leaver_id = await greeted_by_websockets(leaver)

        before = datetime.now(UTC)
        await mine.send("from rfc6455 ✓")
        first = check_broadcast(await recv_websockets(theirs), mine_id, "from rfc6455 ✓")
        check_broadcast(await recv_websockets(leaver), mine_id, "from rfc6455 ✓")
        await theirs.send('from websockets 😀 "quoted"\n')
        second = check_broadcast(
            await recv_rfc6455(mine), theirs_id, 'from websockets 😀 "quoted"\n'
        )
        check_broadcast(await recv_websockets(leaver), theirs_id, 'from websockets 😀 "quoted"\n')
        after = datetime.now(UTC)
        check_timestamp(first["timestamp"], before, after)  # UTC, though local time is not
        check_timestamp(second["timestamp"], before, after)

        await leaver.close(4001, "bye now")
        check_user_left(await recv_rfc6455(mine), leaver_id, 2, (4001, "bye now"))
        check_user_left(await recv_websockets(theirs), leaver_id, 2, (4001, "bye now"))

        server.process.send_signal(signum)
        with pytest.raises(rfc6455.ConnectionClosed) as closed:
            await recv_rfc6455(mine)
        assert closed.value.code == 1001
        assert closed.value.reason == "server shutting down"
        with pytest.raises(WebsocketsClosed) as closed_too:
            await recv_websockets(theirs)
        assert closed_too.value.rcvd is not None
        assert closed_too.value.rcvd.code == 1001
        assert closed_too.value.rcvd.reason == "server shutting down"
        assert await server.wait() == 0

    assert rows(db) == [
        (mine_id, "from rfc6455 ✓", first["timestamp"]),
        (theirs_id, 'from websockets 😀 "quoted"\n', second["timestamp"]),
    ]
    assert server.stdout == b""
    assert "Traceback" not in server.stderr
    # One line per connect and per disconnect: id, remote address, close code and reason.
    clients = [
        (mine_id, address(mine.local_address)),
        (theirs_id, address(theirs.local_address)),
        (leaver_id, address(leaver.local_address)),
    ]
    for client_id, remote in clients:
        assert len(server.lines_with("server: connect " + client_id, remote)) == 1, server.stderr
        assert len(server.lines_with("server: disconnect " + client_id)) == 1, server.stderr
    (leaver_line,) = server.lines_with(
        "server: disconnect " + leaver_id, address(leaver.local_address)
    )
    assert "client closed 4001 'bye now'" in leaver_line
    for client_id, remote in clients[:2]:
        (line,) = server.lines_with("server: disconnect " + client_id, remote)
        assert " 1001" in line
    assert len(server.lines_with("server: shutting down\n")) == 1
    assert server.lines_with("stopped: 2 messages persisted, 0 dead-lettered")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_as_soon_as_the_startup_line_is_logged(
    spawn: Callable[..., Any], tmp_path: Path, signum: signal.Signals
) -> None:
    """The start-up line means ready: a signal right after it still shuts down gracefully."""
    server = await spawn("--port", "0", "--db", str(tmp_path / "m.db"))

    def signal_when_listening(line: str) -> None:
        if LISTENING.search(line):
            server.process.send_signal(signum)

    server.on_line = signal_when_listening
    await server.port()
    assert await server.wait() == 0, server.stderr
    assert server.lines_with("stopped: 0 messages persisted")


async def test_the_restart_signal_closes_clients_with_1012_and_exits_0(
    spawn: Callable[..., Any], tmp_path: Path
) -> None:
    server = await spawn("--port", "0", "--db", str(tmp_path / "m.db"))
    url = f"ws://127.0.0.1:{await server.port()}/"
    async with await rfc6455.connect(url, ping_interval=None) as client:
        for _ in range(3):  # connectionId, welcome, history
            await recv_rfc6455(client)
        server.process.send_signal(signal.SIGUSR1)
        with pytest.raises(rfc6455.ConnectionClosed) as closed:
            await recv_rfc6455(client)
    assert (closed.value.code, closed.value.reason) == (1012, "service restart")
    assert await server.wait() == 0, server.stderr
    assert server.lines_with("server: restarting: closing clients with 1012 'service restart'")
    assert server.lines_with("stopped: 0 messages persisted")


async def test_a_worker_says_when_it_listens_and_stops_once_its_supervisor_is_gone(
    spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """The socket of SERVER_SUPERVISOR_FD: one byte once listening, then its end means stop."""
    supervisor, worker = socket.socketpair()
    with supervisor:
        with worker:
            server = await spawn(
                "--port",
                "0",
                "--db",
                str(tmp_path / "m.db"),
                pass_fds=(worker.fileno(),),
                SERVER_SUPERVISOR_FD=str(worker.fileno()),
            )
        loop = asyncio.get_running_loop()
        supervisor.setblocking(False)
        async with asyncio.timeout(GUARD):
            assert await loop.sock_recv(supervisor, 1) == b"\n"
        port = await server.port()  # logged before the byte is sent
        # A worker's lines name its pid; it shares its port (SO_REUSEPORT).
        assert server.lines_with(f"server[{server.process.pid}]: listening")
        async with await rfc6455.connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as client:
            for _ in range(3):
                await recv_rfc6455(client)
            with socket.socket() as sharing:
                sharing.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sharing.bind(("127.0.0.1", port))
            supervisor.close()
            with pytest.raises(rfc6455.ConnectionClosed) as closed:
                await recv_rfc6455(client)
    assert closed.value.code == 1001
    assert await server.wait() == 0, server.stderr
    assert server.lines_with("the supervisor is gone")


async def test_configured_by_environment_variables(
    spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """CHAT_PORT=0 and the default database, ./data/messages.db, created in the working folder."""
    server = await spawn(CHAT_PORT="0", CHAT_RETRY_ATTEMPTS="3")
    url = f"ws://127.0.0.1:{await server.port()}/"
    async with websockets_connect(url) as a, websockets_connect(url) as b:
        a_id = await greeted_by_websockets(a)
        await greeted_by_websockets(b)
        await a.send("persisted by default")
        message = check_broadcast(await recv_websockets(b), a_id, "persisted by default")
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait() == 0
    assert rows(tmp_path / "data" / "messages.db") == [
        (a_id, "persisted by default", message["timestamp"])
    ]


def uvloop_version() -> str:
    uvloop = pytest.importorskip("uvloop")
    return str(uvloop.__version__)


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--loop", "uvloop"], {}), ([], {"CHAT_LOOP": "uvloop"}), ([], {})],
    ids=["flag", "variable", "auto"],
)
async def test_on_uvloop_it_chats_echoes_and_stops_cleanly(
    spawn: Callable[..., Any], tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    version = uvloop_version()
    server = await spawn("--port", "0", "--db", str(tmp_path / "m.db"), *args, **env)
    base = f"ws://127.0.0.1:{await server.port()}"
    assert len(server.lines_with(f"server: event loop: uvloop {version}\n")) == 1
    async with (
        websockets_connect(base + "/") as a,
        websockets_connect(base + "/") as b,
        websockets_connect(base + "/echo") as echo,
    ):
        a_id = await greeted_by_websockets(a)
        await greeted_by_websockets(b)
        await a.send("on uvloop")
        check_broadcast(await recv_websockets(b), a_id, "on uvloop")
        await echo.send(b"\x00" * 70_000)
        assert await echo.recv() == b"\x00" * 70_000
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait() == 0, server.stderr
    assert "Traceback" not in server.stderr
    assert server.lines_with("stopped: 1 messages persisted, 0 dead-lettered")


def uvloop_blocker(tmp_path: Path) -> dict[str, str]:
    """The environment of a child in which ``import uvloop`` fails, as without the extra."""
    folder = tmp_path / "no-uvloop"
    folder.mkdir()
    (folder / "uvloop.py").write_text('raise ImportError("no module named uvloop")\n')
    return {"PYTHONPATH": f"{folder}{os.pathsep}{REPO}"}


async def test_loop_asyncio_is_logged(spawn: Callable[..., Any], tmp_path: Path) -> None:
    server = await spawn(
        "--port",
        "0",
        "--db",
        str(tmp_path / "m.db"),
        "--loop",
        "asyncio",
        **uvloop_blocker(tmp_path),
    )
    url = f"ws://127.0.0.1:{await server.port()}/echo"
    assert len(server.lines_with("server: event loop: asyncio\n")) == 1
    async with websockets_connect(url) as echo:
        await echo.send("on asyncio")
        assert await echo.recv() == "on asyncio"
    server.process.send_signal(signal.SIGTERM)
    assert await server.wait() == 0, server.stderr


async def test_auto_without_uvloop_runs_on_asyncio(
    spawn: Callable[..., Any], tmp_path: Path
) -> None:
    server = await spawn("--port", "0", "--db", str(tmp_path / "m.db"), **uvloop_blocker(tmp_path))
    await server.port()
    assert len(server.lines_with("server: event loop: asyncio\n")) == 1
    server.process.send_signal(signal.SIGTERM)
    assert await server.wait() == 0, server.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--loop", "uvloop"], {}), ([], {"CHAT_LOOP": "uvloop"})],
    ids=["flag", "variable"],
)
async def test_uvloop_without_it_exits_2_naming_the_extra(
    spawn: Callable[..., Any], tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    server = await spawn(
        "--port", "0", "--db", str(tmp_path / "m.db"), *args, **env, **uvloop_blocker(tmp_path)
    )
    assert await server.wait() == 2
    assert server.stdout == b""
    assert server.lines == [
        "python -m server: error: --loop uvloop: uvloop is not installed "
        "(pip install 'rfc6455-chat[fast]')\n"
    ]


def taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--port", "70000"], {}),
        ([], {"CHAT_PORT": "abc"}),
        (["--retry-delay", "-1"], {}),
        ([], {"CHAT_LOG_LEVEL": "verbose"}),
        (["--db", "FILE/messages.db"], {}),
        (["--db", "FOLDER"], {}),
        (["--port", "TAKEN"], {}),
    ],
)
async def test_bad_values_exit_2_with_one_line(
    spawn: Callable[..., Any], tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    regular = tmp_path / "regular-file"
    regular.write_text("not a folder")
    folder = tmp_path / "folder.db"
    folder.mkdir()
    with taken_port() as taken:
        replacements = {
            "FILE": str(regular),
            "FOLDER": str(folder),
            "TAKEN": str(taken.getsockname()[1]),
        }
        for old, new in replacements.items():
            args = [arg.replace(old, new) for arg in args]
        if "--db" not in args:
            args += ["--db", str(tmp_path / "m.db")]
        if "--port" not in args and "CHAT_PORT" not in env:
            args += ["--port", "0"]
        server = await spawn(*args, **env)
        status = await server.wait()
    assert status == 2, server.stderr
    assert server.stdout == b""
    (line,) = server.lines
    assert line.startswith("python -m server: error: ")
    assert line.endswith("\n")


async def test_sigkill_loses_no_acknowledged_message_and_reuses_no_seq(
    spawn: Callable[..., Any], tmp_path: Path
) -> None:
    """kill -9 at a random moment while a sender streams; then restart and resume from 0."""
    seed = int(os.environ.get("KILL_TEST_SEED") or random.randrange(2**32))
    print(f"KILL_TEST_SEED={seed}")  # shown when the test fails: rerun with it to reproduce
    rng = random.Random(seed)
    db = tmp_path / "kill.db"
    # The sender streams as fast as it can: far over the rate limit.
    server = await spawn("--port", "0", "--db", str(db), "--rate-limit", "0")
    url = f"ws://127.0.0.1:{await server.port()}/"
    acked: dict[str, int] = {}  # clientMsgId -> seq
    seen: list[int] = []  # every seq the receiver saw broadcast
    sent = 0

    def window_open() -> bool:
        """At most 2,000 messages unacknowledged, so that acks keep up with what is sent."""
        return sent - len(acked) <= 2000

    async def send_all(sender: rfc6455.Connection) -> None:
        nonlocal sent
        while True:
            await wait_until(window_open)
            message = {"message": f"text {sent}", "clientMsgId": f"id-{sent}"}
            await sender.send(json.dumps(message))
            sent += 1

    async def record_acks(sender: rfc6455.Connection) -> None:
        while True:
            message = await recv_rfc6455(sender, acks=True)
            assert message["type"] == "ack", message
            assert message["clientMsgId"] not in acked
            acked[message["clientMsgId"]] = message["seq"]

    async def record_broadcasts(receiver: rfc6455.Connection) -> None:
        while True:
            message = await recv_rfc6455(receiver)
            seen.append(message["seq"])

    async with (
        await rfc6455.connect(url, ping_interval=None) as sender,
        await rfc6455.connect(url, ping_interval=None) as receiver,
    ):
        for connection in (sender, receiver):
            for _ in range(3):  # connectionId, welcome, history
                welcome = await recv_rfc6455(connection)
        epoch = welcome["epoch"]
        sending = asyncio.create_task(send_all(sender))
        receiving = [
            asyncio.create_task(record_acks(sender)),
            asyncio.create_task(record_broadcasts(receiver)),
        ]
        await wait_until(lambda: len(acked) >= 50)
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        server.process.send_signal(signal.SIGKILL)
        await server.wait()
        done, _ = await asyncio.wait(receiving, timeout=GUARD)
        assert len(done) == len(receiving)  # each ended with its connection
        for task in done:
            assert isinstance(task.exception(), rfc6455.ConnectionClosed)
        sending.cancel()
        await asyncio.wait([sending])
    assert acked
    print(f"sent {sent}, acknowledged {len(acked)}, broadcast {len(seen)}")
    assert seen == sorted(set(seen))

    server = await spawn(
        "--port", "0", "--db", str(db), "--resume-max", "1000000", "--history-bytes", str(2**30)
    )
    url = f"ws://127.0.0.1:{await server.port()}/?since=0&epoch={epoch}"
    async with await rfc6455.connect(url, ping_interval=None, max_size=None) as client:
        client_id = (await recv_rfc6455(client))["connectionId"]
        assert (await recv_rfc6455(client))["epoch"] == epoch
        history = await recv_rfc6455(client)
        assert history["recovered"] is True
        stored = {m["seq"]: m["message"] for m in history["messages"]}
        seqs = [m["seq"] for m in history["messages"]]
        assert seqs == sorted(set(seqs))  # no seq twice
        # Every acknowledged message is there, once, under the seq its ack gave.
        for client_msg_id, seq in acked.items():
            assert stored[seq] == "text " + client_msg_id.removeprefix("id-")
        await client.send(json.dumps({"message": "after the crash", "clientMsgId": "after"}))
        ack = await recv_rfc6455(client, acks=True)
        assert ack["clientMsgId"] == "after"
        assert ack["seq"] > max([*seen, *acked.values()])
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait() == 0
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT client_msg_id, seq, connection_id FROM messages").fetchall()
    finally:
        conn.close()
    by_id = {cid: (seq, conn_id) for cid, seq, conn_id in rows}
    assert len(by_id) == len(rows)  # each clientMsgId once
    for client_msg_id, seq in acked.items():
        assert by_id[client_msg_id][0] == seq
    assert by_id["after"][1] == client_id
