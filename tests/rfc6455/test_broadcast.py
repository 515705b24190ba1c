"""Tests for rfc6455.aio.broadcast over real loopback sockets."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

import rfc6455
from rfc6455 import Connection, broadcast
from rfc6455.aio.connection import _batchers
from tests.rfc6455.conftest import GUARD, Net

pytestmark = pytest.mark.usefixtures("loop_errors")


async def three_pairs(net: Net) -> tuple[list[Connection], list[Connection]]:
    """Three clients, and the server's side of each, in the same order."""
    accepted: asyncio.Queue[Connection] = asyncio.Queue()

    async def handler(ws: Connection) -> None:
        accepted.put_nowait(ws)
        await ws.wait_closed()

    server = await net.serve(handler)
    clients = [await net.connect(server) for _ in range(3)]
    async with asyncio.timeout(GUARD):
        connections = [await accepted.get() for _ in clients]
    return clients, connections


async def test_broadcast_skips_closed_connections(net: Net) -> None:
    clients, connections = await three_pairs(net)
    await clients[0].close()
    await connections[0].wait_closed()
    assert broadcast(connections, "to all") == 2
    assert broadcast(connections, b"\x00\x01") == 2
    for client in clients[1:]:
        assert await client.recv() == "to all"
        assert await client.recv() == b"\x00\x01"


async def test_a_failing_connection_does_not_hold_back_the_others(
    net: Net, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Frames sent in one turn of the loop are written together at its end; a bug
    # while writing to one connection must not keep the others' frames back.
    clients, connections = await three_pairs(net)

    def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(connections[0], "_flush", broken)
    assert broadcast(connections, "to all") == 3
    async with asyncio.timeout(GUARD):
        for client in clients[1:]:
            assert await client.recv() == "to all"
        await connections[0].wait_closed()
    assert "internal error while sending" in caplog.text


def test_a_closed_loop_is_not_kept_alive_by_its_write_batcher() -> None:
    async def main() -> None:
        server = await rfc6455.serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0)
        async with server, await rfc6455.connect(f"ws://127.0.0.1:{server.port}/") as client:
            await client.send("batched")
        assert len(_batchers) >= 1

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    loop.close()
    alive = weakref.ref(loop)
    del loop
    gc.collect()
    assert alive() is None
