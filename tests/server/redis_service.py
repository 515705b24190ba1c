"""A real ``redis-server`` for the tests (Debian's ``redis-server`` package), on a free port.

``RedisServer`` starts one in a folder of its own (``--save ''``: no snapshots; AOF when a test
asks for it), waits until it answers PING, and can be stopped, killed and started again on the
same port and folder, so a test can take Redis away from running chat servers and give it back.
``redis_server`` is one for the session, emptied (``FLUSHALL``) before each test that uses
``redis_url``; tests that stop theirs make their own with ``redis_factory``.

Without the binary the tests that need it are skipped, with the reason; in CI (the ``CI``
environment variable is set) they fail instead: there a suite must never be skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_factory", "redis_server", "redis_url"]

_HOST = "127.0.0.1"
# Seconds to wait for a server to answer, or to exit.
_WAIT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process, started and stopped by the test.

    Args:
        folder: Its working folder (the AOF goes there).
        aof: Whether it keeps an append-only file (``appendfsync always``).
    """

    def __init__(self, folder: Path, *, aof: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server is not installed (Debian's redis-server package)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        self.binary = binary
        self.folder = folder
        self.aof = aof
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{_HOST}:{self.port}/0"

    def start(self) -> None:
        """Start it (again, on the same port and folder) and wait until it answers."""
        command = [
            self.binary,
            "--bind",
            _HOST,
            "--port",
            str(self.port),
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "yes" if self.aof else "no",
            "--appendfsync",
            "always",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ]
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + _WAIT
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: see {self.folder / 'redis.log'}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop it (SIGTERM: it writes its AOF and exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(_WAIT)
        self.process = None

    def kill(self) -> None:
        """Kill it (SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(_WAIT)
        self.process = None

    def command(self, *args: str) -> bytes:
        """Run one command with a plain socket (RESP), for the test's own checks."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection((_HOST, self.port), timeout=_WAIT) as sock:
            sock.sendall(b"".join(parts))
            return sock.recv(65536)

    def _answers(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, emptied for this test."""
    redis_server.command("FLUSHALL")
    return redis_server.url


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``make(aof=False)``: a redis-server of the test's own, stopped at its end."""
    servers: list[RedisServer] = []

    def make(*, aof: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", aof=aof)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.kill()
