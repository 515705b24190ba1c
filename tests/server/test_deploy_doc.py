"""``docs/deploy.md``, run: its nginx configuration in front of two "hosts" on loopback.

Each host is a supervisor of two workers (``workers_service.py``) on a port of its own, both on
the session's Redis and on one PostgreSQL database of the test's own, with the page's options
that mean something on loopback (``--allowed-hosts chat.example.com``, ``--trusted-proxies``
with nginx's address). nginx (Debian's) runs the page's configuration block, its
addresses and files replaced by the test's (each replacement must match exactly once, so that
the page and the test change together), inside a main configuration of the test's own (a
folder of its own, in the foreground). Its certificate is made for ``chat.example.com`` by
``openssl``. The clients are ``websockets``'s, which connect to 127.0.0.1 while their URI and
``Host`` name ``chat.example.com``.

Without nginx or openssl the test is skipped, with the reason; in CI (``CI`` set) it fails
instead: ``make deps`` installs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import InvalidStatus

from tests.server.postgres_service import PostgresService
from tests.server.support import wait_until
from tests.server.test_subprocess import spawn  # noqa: F401  (the fixture)
from tests.server.workers_service import (
    WAIT,
    Supervisor,
    Supervisors,
    create_database,
    reserved_port,
)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "docs" / "deploy.md"
NAME = "chat.example.com"
# Debian puts nginx in /usr/sbin, which an unprivileged user's PATH may lack.
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])

Json = dict[str, Any]


def binary(name: str) -> str:
    """The path of a tool the test needs; skipped without it, failing in CI."""
    path = shutil.which(name, path=SEARCH)
    if path is None:
        message = f"{name} is not installed (Debian's {name} package)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; in CI this test must run")
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def documented_nginx() -> str:
    """The page's nginx configuration: its one ``nginx`` block."""
    blocks: list[str] = re.findall(
        r"```nginx\n(.*?)```", DEPLOY.read_text(encoding="utf-8"), re.DOTALL
    )
    (block,) = blocks
    return block


def replaced(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert text.count(old) == 1, f"docs/deploy.md's nginx block should hold {old!r} once"
        text = text.replace(old, new)
    return text


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate of NAME and its key."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            binary("openssl"),
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={NAME}",
            "-addext",
            f"subjectAltName=DNS:{NAME}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class Nginx:
    """nginx in the foreground, with the page's configuration in front of the hosts' ports."""

    def __init__(self, folder: Path, upstreams: tuple[int, int]) -> None:
        self.folder = folder
        folder.mkdir()
        self.cert, key = certificate(folder)
        self.http, self.https = free_port(), free_port()
        site = replaced(
            documented_nginx(),
            {
                "10.0.0.11:5000": f"127.0.0.1:{upstreams[0]}",
                "10.0.0.12:5000": f"127.0.0.1:{upstreams[1]}",
                "listen 80;": f"listen 127.0.0.1:{self.http};",
                "listen 443 ssl;": f"listen 127.0.0.1:{self.https} ssl;",
                f"/etc/letsencrypt/live/{NAME}/fullchain.pem": str(self.cert),
                f"/etc/letsencrypt/live/{NAME}/privkey.pem": str(key),
            },
        )
        temp = "".join(
            f"    {kind}_temp_path {folder / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # As root, the workers would be nobody, who cannot enter the test's folder.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (folder / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
            f"error_log {folder / 'error.log'} info;\n"
            "events {\n    worker_connections 256;\n}\n"
            f"http {{\n    access_log {folder / 'access.log'};\n{temp}{site}}}\n",
            encoding="utf-8",
        )
        self.process: asyncio.subprocess.Process | None = None

    def command(self) -> list[str]:
        conf = self.folder / "nginx.conf"
        error_log = self.folder / "error.log"
        return [binary("nginx"), "-p", str(self.folder), "-e", str(error_log), "-c", str(conf)]

    async def start(self) -> None:
        """Check the configuration (``nginx -t``), start, and wait until it listens."""
        checked = await asyncio.create_subprocess_exec(
            *self.command(), "-t", stderr=asyncio.subprocess.PIPE
        )
        _, errors = await checked.communicate()
        assert checked.returncode == 0, errors.decode(errors="replace")
        self.process = await asyncio.create_subprocess_exec(
            *self.command(), stdin=asyncio.subprocess.DEVNULL
        )
        await wait_until(self._listens, WAIT)

    def _listens(self) -> bool:
        assert self.process is not None
        assert self.process.returncode is None, self.log()
        try:
            with socket.create_connection(("127.0.0.1", self.https), timeout=1):
                return True
        except OSError:
            return False

    def log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGQUIT)  # nginx's graceful stop
            try:
                async with asyncio.timeout(WAIT):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def tls(self) -> ssl.SSLContext:
        """A client context that trusts this nginx's certificate."""
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture
async def supervise(
    tmp_path: Path, loop_errors: list[dict[str, Any]]
) -> AsyncIterator[Callable[..., Any]]:
    supervisors = Supervisors(tmp_path)
    yield supervisors.start
    await supervisors.close()


async def http(nginx: Nginx, path: str, host: str, *, secure: bool = True) -> tuple[int, str]:
    """One request through nginx with this ``Host``; its status and the rest of the answer."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        nginx.https if secure else nginx.http,
        ssl=nginx.tls() if secure else None,
        server_hostname=NAME if secure else None,
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(WAIT):
            answer = (await reader.read()).decode(errors="replace")
    finally:
        writer.close()
    status = int(answer.split(" ", 2)[1])
    return status, answer


async def open_chat(
    nginx: Nginx, origin: str, source: str = "127.0.0.1", headers: tuple[tuple[str, str], ...] = ()
) -> ClientConnection:
    """A chat client through nginx, as a page of ``origin`` opens it, from address ``source``.

    ``headers``: more request headers (forged ones, say).
    """
    ws = await websockets_connect(
        f"wss://{NAME}:{nginx.https}/?clientId={uuid.uuid4()}",
        host="127.0.0.1",
        port=nginx.https,
        ssl=nginx.tls(),
        origin=origin,  # type: ignore[arg-type]
        additional_headers=headers,
        proxy=None,
        compression=None,
        open_timeout=WAIT,
        local_addr=(source, 0),
    )
    return ws


async def recv(ws: ClientConnection) -> Json:
    async with asyncio.timeout(WAIT):
        message = json.loads(await ws.recv())
    assert isinstance(message, dict)
    return message


async def greeted(ws: ClientConnection) -> str:
    """Its connectionId, past the welcome and the history."""
    connection_id = (await recv(ws))["connectionId"]
    assert (await recv(ws))["type"] == "welcome"
    assert (await recv(ws))["type"] == "history"
    assert isinstance(connection_id, str)
    return connection_id


async def test_the_documented_nginx_serves_two_hosts_over_tls(
    supervise: Callable[..., Any],
    redis_url: str,
    postgres: PostgresService,
    tmp_path: Path,
) -> None:
    db = await create_database(postgres, f"deploy_{uuid.uuid4().hex}")
    # The unit's options, but --host and --workers: loopback, and two each.
    options: tuple[str, ...] = ("--engine", redis_url, "--db", db, "--allowed-hosts", NAME)
    options += ("--trusted-proxies", "127.0.0.1/32")
    with reserved_port() as port_a, reserved_port() as port_b:
        host_a: Supervisor = await supervise(*options, port=port_a)
        host_b: Supervisor = await supervise(*options, port=port_b)
        nginx = Nginx(tmp_path / "nginx", (port_a, port_b))
        try:
            await nginx.start()
            await chat_through(nginx, host_a, host_b, db)
        finally:
            await nginx.stop()


async def chat_through(nginx: Nginx, host_a: Supervisor, host_b: Supervisor, db: str) -> None:
    # Plain HTTP is sent to HTTPS.
    status, answer = await http(nginx, "/healthz", NAME, secure=False)
    assert status == 301
    assert f"\r\nLocation: https://{NAME}/healthz\r\n" in answer
    # The Host goes through as the client sent it: the server checks it.
    authority = f"{NAME}:{nginx.https}"
    status, answer = await http(nginx, "/healthz", authority)
    assert status == 200, answer
    health = json.loads(answer.split("\r\n\r\n", 1)[1])
    assert (health["engine"], health["redis"]) == ("redis", "up")
    assert (await http(nginx, "/healthz", "evil.example"))[0] == 421

    # A page of this site, on a port other than 443, may open the chat; another site may not.
    origin = f"https://{authority}"
    with pytest.raises(InvalidStatus) as refused:
        await open_chat(nginx, "https://evil.example")
    assert refused.value.response.status_code == 403

    clients = [await open_chat(nginx, origin) for _ in range(4)]
    ids = [await greeted(ws) for ws in clients]
    # least_conn alternates between the hosts while every connection stays open.
    await wait_until(lambda: all(i in host_a.workers or i in host_b.workers for i in ids), WAIT)
    assert {i in host_a.workers for i in ids} == {True, False}

    for number, ws in enumerate(clients):
        await ws.send(json.dumps({"message": f"hello {number}", "clientMsgId": f"m{number}"}))
    for number, ws in enumerate(clients):
        texts: set[str] = set()
        acked = False
        while len(texts) < len(clients) - 1 or not acked:
            message = await recv(ws)
            if message["type"] == "broadcast":
                texts.add(message["message"])
            elif message["type"] == "ack":
                acked = message["clientMsgId"] == f"m{number}"
        others = {f"hello {n}" for n in range(len(clients)) if n != number}
        assert texts == others

    for host in (host_a, host_b):
        host.signal(signal.SIGTERM)
    for host in (host_a, host_b):
        assert await host.wait() == 0
    for ws in clients:
        async with asyncio.timeout(WAIT):
            await ws.wait_closed()
        assert (ws.close_code, ws.close_reason) == (1001, "server shutting down")
    assert await archived_texts(db) == {f"hello {n}" for n in range(len(clients))}


async def archived_texts(db: str) -> set[str]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(db) as conn:
        cursor = await conn.execute("SELECT message FROM messages WHERE channel = 'general'")
        return {text for (text,) in await cursor.fetchall()}


async def test_behind_the_documented_nginx_the_server_sees_each_client(
    spawn: Callable[..., Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    # One server behind both of the page's upstreams, with per-client limits: each client
    # comes from an address of its own on loopback (127.0.0.2, .3), nginx from 127.0.0.1.
    server = await spawn(
        *("--port", "0", "--db", str(tmp_path / "m.db"), "--allowed-hosts", NAME),
        *("--trusted-proxies", "127.0.0.1/32", "--log-format", "json"),
        *("--max-connections-per-ip", "2", "--max-handshakes-per-ip", "1"),
    )
    port = await server.port()
    nginx = Nginx(tmp_path / "nginx", (port, port))
    try:
        await nginx.start()
        await each_client_through(nginx, server, port)
    finally:
        await nginx.stop()


async def each_client_through(nginx: Nginx, server: Any, port: int) -> None:
    origin = f"https://{NAME}:{nginx.https}"
    # Two chats from 127.0.0.2: its limit; a third is refused, as the client's, not nginx's.
    first = [await open_chat(nginx, origin, "127.0.0.2") for _ in range(2)]
    ids = [await greeted(ws) for ws in first]
    with pytest.raises(InvalidStatus) as refused:
        await open_chat(nginx, origin, "127.0.0.2")
    assert refused.value.response.status_code == 429
    # Another client is not counted with it, even with a forged X-Forwarded-For and
    # Forwarded: nginx appends the address it sees, and drops Forwarded.
    forged = (("X-Forwarded-For", "127.0.0.2"), ("Forwarded", "for=127.0.0.2"))
    other = await open_chat(nginx, origin, "127.0.0.3", forged)
    other_id = await greeted(other)
    # A page of the plaintext site is not this one: the scheme came from X-Forwarded-Proto.
    with pytest.raises(InvalidStatus) as refused:
        await open_chat(nginx, f"http://{NAME}:{nginx.https}", "127.0.0.3")
    assert refused.value.response.status_code == 403

    def events(name: str) -> list[Json]:
        lines = [json.loads(line) for line in server.lines if line.startswith("{")]
        return [line for line in lines if line["event"] == name]

    await wait_until(lambda: len(events("connect")) == 3, WAIT)
    peers = {line["connection_id"]: line["peer"] for line in events("connect")}
    assert peers == {ids[0]: "127.0.0.2:0", ids[1]: "127.0.0.2:0", other_id: "127.0.0.3:0"}
    await wait_until(lambda: len(events("refused")) == 2, WAIT)
    too_many, wrong_origin = events("refused")
    assert (too_many["status"], too_many["peer"]) == (429, "127.0.0.2:0")
    assert too_many["proxy"].startswith("127.0.0.1:")
    assert (wrong_origin["status"], wrong_origin["peer"]) == (403, "127.0.0.3:0")

    # Straight to the server, not through nginx: the forged headers are the client's words.
    async with asyncio.timeout(WAIT):
        direct = await websockets_connect(
            f"ws://127.0.0.1:{port}/?clientId={uuid.uuid4()}",
            additional_headers=(("X-Forwarded-For", "203.0.113.9"),),
            proxy=None,
            local_addr=("127.0.0.4", 0),
        )
    direct_id = (await recv(direct))["connectionId"]
    await wait_until(lambda: len(events("connect")) == 4, WAIT)
    assert events("connect")[-1]["connection_id"] == direct_id
    assert events("connect")[-1]["peer"].startswith("127.0.0.4:")
    for ws in [*first, other, direct]:
        await ws.close()
