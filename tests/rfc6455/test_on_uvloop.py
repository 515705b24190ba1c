"""The asyncio adapter on uvloop: its transports are not ``asyncio.Transport`` subclasses.

The package never imports uvloop; the server's ``--loop`` runs it there (``server/event_loop.py``).
"""

from __future__ import annotations

import asyncio

import pytest

import rfc6455

uvloop = pytest.importorskip("uvloop")


async def echo(connection: rfc6455.Connection) -> None:
    async for message in connection:
        await connection.send(message)


async def exchange() -> tuple[list[str | bytes], int | None]:
    async with await rfc6455.serve(echo, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        async with await rfc6455.connect(url, ping_interval=None) as client:
            sent: list[str | bytes] = ["small", "é" * 40_000, b"\x00" * 70_000]
            received = []
            for message in sent:
                await client.send(message)
                received.append(await client.recv())
            await client.close(4000, "done")
        return received, client.close_code


def test_client_and_server_echo_and_close_on_uvloop() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        received, code = runner.run(exchange())
    assert received == ["small", "é" * 40_000, b"\x00" * 70_000]
    assert code == 4000
