"""A client that reads nothing while others chat, against a real ``python -m server``.

The server runs in its own process so that its memory can be read from ``/proc/PID/status``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rfc6455
from tests.server.support import GUARD, HOST, check_user_left, upgrade_head, wait_until
from tests.server.test_subprocess import spawn  # noqa: F401  (the fixture)

FAST = 50
SIZE = 8192
# 14 MiB of messages of 8 KiB, at most 200 a second: most of it for nobody to read.
STREAM_BYTES = 14 * 2**20
INTERVAL = 0.005


def rss(pid: int) -> int:
    """The process's resident memory, in bytes (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def greeted(connection: rfc6455.Connection) -> str:
    async with asyncio.timeout(GUARD):
        first = json.loads(await connection.recv())
        assert json.loads(await connection.recv())["type"] == "welcome"
    return str(first["connectionId"])


async def join_without_reading(port: int, target: str = "/") -> tuple[socket.socket, str]:
    """Join the chat on a socket with a tiny receive buffer; read the id, then nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (HOST, port))
    await loop.sock_sendall(sock, upgrade_head(target, f"{HOST}:{port}"))
    data = b""
    async with asyncio.timeout(GUARD):
        while b'"welcome"' not in data:
            data += await loop.sock_recv(sock, 4096)
    assert data.startswith(b"HTTP/1.1 101 "), data
    start = data.index(b'{"connectionId":"') + len(b'{"connectionId":"')
    return sock, data[start : start + 36].decode()


async def test_slow_consumer_is_cut_off_and_memory_stays_bounded(
    spawn: Callable[..., Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    server = await spawn(
        *("--port", "0", "--db", str(tmp_path / "slow.db")),
        # Only the slow consumer may hold memory: no history kept, no rate limit to stay under,
        # a small queue, and a log line per slow consumer.
        *("--rate-limit", "0", "--history", "0", "--resume-max", "0", "--queue-capacity", "500"),
    )
    port = await server.port()
    pid = server.process.pid
    url = f"ws://{HOST}:{port}/"
    fast = [await rfc6455.connect(url, ping_interval=None, max_size=None) for _ in range(FAST)]
    sender = await rfc6455.connect(url, ping_interval=None)
    slow: socket.socket | None = None
    try:
        for connection in fast:
            await greeted(connection)
        sender_id = await greeted(sender)
        slow, slow_id = await join_without_reading(port)
        slow_port = slow.getsockname()[1]
        before = rss(pid)
        peak = before
        texts: list[str] = []

        async def stream() -> None:
            # A volume, not a duration: a loaded machine streams slower, never less.
            while len(texts) * SIZE < STREAM_BYTES:
                text = f"{len(texts)} " + "m" * SIZE
                texts.append(text)
                await sender.send(text)
                await asyncio.sleep(INTERVAL)
            await sender.send("done")

        async def read(connection: rfc6455.Connection) -> list[dict[str, Any]]:
            received = []
            async with asyncio.timeout(6 * GUARD):
                while True:
                    message = json.loads(await connection.recv())
                    received.append(message)
                    if message.get("message") == "done":
                        return received

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss(pid))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        readers = [asyncio.create_task(read(connection)) for connection in fast]
        await stream()
        results = await asyncio.gather(*readers)
        sampler.cancel()
        peak = max(peak, rss(pid))

        # The slow consumer was cut off with 1008 and announced as left, once, to everyone.
        await wait_until(lambda: server.lines_with("is a slow consumer"))
        (line,) = server.lines_with("is a slow consumer")
        assert f":{slow_port} " in line, line
        (disconnect,) = server.lines_with(f"disconnect {slow_id}")
        assert "server closed 1008 'slow consumer'" in disconnect  # not 1006
        for received in results:
            broadcasts = [m for m in received if m["type"] == "broadcast"]
            # Every message, in order, at full speed for the readers that keep up.
            assert [m["message"] for m in broadcasts] == [*texts, "done"]
            seqs = [m["seq"] for m in broadcasts]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            assert all(m["connectionId"] == sender_id for m in broadcasts)
            (left,) = [m for m in received if m["type"] == "user_left"]
            check_user_left(left, slow_id, FAST + 1)
        # Without the limit the server would hold what the slow consumer did not read:
        # most of the stream.
        streamed = len(texts) * SIZE
        # Measured: 3 MiB more at the peak with the limit, 13 MiB without (14 MiB streamed).
        assert streamed > 12 * 2**20
        assert peak - before < 8 * 2**20, (before, peak)
    finally:
        if slow is not None:
            slow.close()
        for connection in [*fast, sender]:
            connection.abort()
            await connection.wait_closed()
