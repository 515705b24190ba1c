"""``python -m server --workers N`` as a real child process, for the tests of several workers.

``Supervisors(folder).start(*args, port=...)`` starts a supervisor in ``folder`` with the
repository on ``PYTHONPATH`` and no ``CHAT_*`` variable inherited, and returns it once it logs
that every worker listens; ``close()`` kills those still running (their workers stop with them:
their link to it closes). Its stderr, its workers' too, is read line by line: a worker's line
for each chat connection (``server.handler[PID]: connect <connectionId> from ...``) tells the
test which worker serves which client.

``reserved_port()`` holds a port bound with ``SO_REUSEPORT``, never listening, for the test:
the workers bind it too (they set ``SO_REUSEPORT``), and no one else can take it meanwhile.
``create_database`` makes a PostgreSQL database of the test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.server.postgres_service import PostgresService
from tests.server.support import wait_until

__all__ = ["WAIT", "Supervisor", "Supervisors", "create_database", "reserved_port"]

REPO = Path(__file__).resolve().parents[2]
# The bound of every wait: far above what a step takes (starting a worker takes a second or
# two on a loaded machine), so that it fires only when something is broken.
WAIT = 60.0
# A worker's line for each chat connection: its pid, and the connection's id.
CONNECT = re.compile(r"\[(\d+)\]: connect ([0-9a-f-]{36}) from ")
LISTENING = "server.supervisor: listening: open http"  # https:// with --tls-cert


class Supervisor:
    """The ``python -m server --workers N`` child; its stderr (its workers' too), line by line."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.lines: list[str] = []
        # Each chat connection's worker, from the workers' log lines.
        self.workers: dict[str, int] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if match := CONNECT.search(line):
                self.workers[match.group(2)] = int(match.group(1))

    def logged(self, text: str) -> int:
        """How many lines hold ``text``."""
        return sum(text in line for line in self.lines)

    async def worker_of(self, connection_id: str) -> int:
        """The pid of the worker that serves ``connection_id`` (logged before it is sent)."""
        await wait_until(lambda: connection_id in self.workers, WAIT)
        return self.workers[connection_id]

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def wait(self) -> int:
        """Wait for the exit and the end of the output; the exit status."""
        async with asyncio.timeout(WAIT):
            status = await self.process.wait()
            await self._reader
        return status

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await self._reader


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A port of 127.0.0.1 held bound (SO_REUSEPORT too, never listening) until the end."""
    with socket.socket() as reserved:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind(("127.0.0.1", 0))
        port: int = reserved.getsockname()[1]
        yield port


class Supervisors:
    """Starts ``python -m server --workers N`` children in ``folder``; ``close()`` kills those
    still running (their workers stop with them: their links to it close)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: list[Supervisor] = []

    async def start(self, *args: str, port: int, workers: int = 2) -> Supervisor:
        """Start ``python -m server --workers N --port P --shutdown-timeout 5 *args``; return
        it once every worker listens."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        environ["PYTHONPATH"] = str(REPO)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server",
            "--workers",
            str(workers),
            "--port",
            str(port),
            "--shutdown-timeout",
            "5",
            *args,
            cwd=self.folder,
            env=environ,
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        supervisor = Supervisor(process, port)
        self.running.append(supervisor)
        await wait_until(
            lambda: supervisor.logged(LISTENING) or process.returncode is not None, WAIT
        )
        assert process.returncode is None, "".join(supervisor.lines)
        return supervisor

    async def close(self) -> None:
        for supervisor in self.running:
            await supervisor.kill()


async def create_database(service: PostgresService, name: str) -> str:
    """A new database on the server; its URL."""
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(service.url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return service.url_of(name)
