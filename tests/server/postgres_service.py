"""A real PostgreSQL server for the tests, from the binaries of Debian's ``postgresql`` package.

``initdb`` makes a cluster in a temporary folder (trust authentication, UTF-8, ``fsync=off``:
a test database need not survive a power loss); ``pg_ctl`` starts it on a free port of
127.0.0.1, with its unix socket in that folder, waits until it accepts connections, and stops
it at the end of the session. PostgreSQL refuses to run as root: as root (in CI), the folder
belongs to ``nobody`` (or a system user made for it, if there is none) and the binaries run as
that user; as anyone else, as oneself.

Without the binaries, the tests that need the server are skipped, with the reason; in CI (the
``CI`` environment variable is set), they fail instead: there a suite must never be skipped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PostgresService", "find_bindir", "postgres", "running_postgres"]

# The user the server runs as when the tests run as root; made if there is no ``nobody``.
_USER = "nobody"
_FALLBACK_USER = "chat-postgres"
# pg_ctl -w gives up after this many seconds (its default is 60).
_WAIT = 120
_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class PostgresService:
    """A running server: its URL (user ``postgres``, database ``postgres``) and its cluster.

    Attributes:
        url: ``postgresql://postgres@127.0.0.1:PORT/postgres``.
        port: The TCP port on 127.0.0.1.
        data: The cluster's folder.
        bindir: Where ``pg_ctl`` is.
    """

    url: str
    port: int
    data: Path
    bindir: Path

    def url_of(self, database: str) -> str:
        """The URL of another database of this server."""
        return _url(self.port, database)

    def restart(self) -> None:
        """Restart the server (``pg_ctl restart -m fast``): every connection to it breaks."""
        _pg_ctl(self, "restart", "-m", "fast")

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``)."""
        _pg_ctl(self, "stop", "-m", "fast")


def find_bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: Debian's newest, ``pg_config``'s, or the PATH's."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(Path(path).parent.name) if Path(path).parent.name.isdigit() else 0,
        reverse=True,
    )
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            result = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            )
            candidates.append(result.stdout.strip())
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        bindir = Path(candidate)
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


@contextlib.contextmanager
def running_postgres(bindir: Path) -> Iterator[PostgresService]:
    """Make a cluster, run its server until the block ends, then remove it.

    Raises:
        subprocess.CalledProcessError: If ``initdb`` or ``pg_ctl`` fails; its output is in the
            error's ``output``, with the server's log.
    """
    root_user = os.geteuid() == 0
    # As root, in /tmp: the server's user must be able to reach the folder (TMPDIR may not).
    root = Path(tempfile.mkdtemp(prefix="chat-postgres-", dir="/tmp" if root_user else None))
    try:
        if root_user:
            user = pwd.getpwnam(_server_user())
            os.chown(root, user.pw_uid, user.pw_gid)
        data = root / "data"
        _run(
            root,
            [
                str(bindir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
        )
        service = _start(bindir, data)
        try:
            yield service
        finally:
            service.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start(bindir: Path, data: Path) -> PostgresService:
    """Start on a free port; another process may take the port first, so try three."""
    for attempt in range(3):
        port = _free_port()
        # Appended: the last value of a setting wins, so a second attempt overrides the first.
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                f"\nlisten_addresses = '{_HOST}'\nport = {port}\n"
                f"unix_socket_directories = '{data.parent}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        service = PostgresService(_url(port, "postgres"), port, data, bindir)
        try:
            _pg_ctl(service, "start")
        except subprocess.CalledProcessError:
            if attempt == 2:
                raise
        else:
            return service
    raise AssertionError("unreachable: the last attempt returns or raises")


def _server_user() -> str:
    """The unprivileged user the server runs as under root: ``nobody``, or one made for it."""
    for name in (_USER, _FALLBACK_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _FALLBACK_USER],
        check=True,
    )
    return _FALLBACK_USER


def _url(port: int, database: str) -> str:
    return f"postgresql://postgres@{_HOST}:{port}/{database}"


def _pg_ctl(service: PostgresService, *command: str) -> None:
    log = service.data.parent / "server.log"
    _run(
        service.data.parent,
        [
            str(service.bindir / "pg_ctl"),
            "--pgdata",
            str(service.data),
            "--log",
            str(log),
            "--wait",
            "--timeout",
            str(_WAIT),
            *command,
        ],
        log,
    )


def _run(cwd: Path, command: list[str], log: Path | None = None) -> None:
    """Run a PostgreSQL binary, as ``_server_user()`` if we are root, in ``cwd`` (which it can
    enter)."""
    user = _server_user() if os.geteuid() == 0 else None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
    result = subprocess.run(
        command, cwd=cwd, env=env, user=user, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if log is not None and log.exists():
            output += f"\n--- {log}:\n" + log.read_text(errors="replace")
        raise subprocess.CalledProcessError(result.returncode, command, output)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresService]:
    """A PostgreSQL server for the whole session; skipped without one, but never in CI."""
    bindir = find_bindir()
    missing = None
    if bindir is None:
        missing = (
            "PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)"
        )
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            missing = "psycopg is not installed: python -m pip install -e '.[postgres]'"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; in CI this suite must run")
        pytest.skip(missing)
    assert bindir is not None
    with running_postgres(bindir) as service:
        yield service
