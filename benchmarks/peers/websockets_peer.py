"""Peer server: ``websockets`` (new asyncio API, C speedups), for benchmarks/e2e.py.

Compression off (``--compression on``: websockets' default permessage-deflate, with
context takeover and 12-bit windows), messages up to 16 MiB, no keepalive pings, everything else at
websockets' defaults. The broadcast uses ``websockets.asyncio.server.broadcast``,
websockets' own way to send one message to many clients without waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

# Run as a script: the repository, not this folder, is where ``benchmarks`` lives.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peers import _common

CLIENTS: set[ServerConnection] = set()


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def chat(ws: ServerConnection) -> None:
    CLIENTS.add(ws)
    try:
        async for message in ws:
            if not isinstance(message, str):
                await ws.close(1003, "binary messages are not supported")
                return
            broadcast((c for c in CLIENTS if c is not ws), message)
    finally:
        CLIENTS.discard(ws)


async def handler(ws: ServerConnection) -> None:
    try:
        if ws.request is not None and ws.request.path == _common.ECHO_PATH:
            await echo(ws)
        else:
            await chat(ws)
    except ConnectionClosed:
        pass


async def main(args: argparse.Namespace, stop: asyncio.Event) -> None:
    async with serve(
        handler,
        args.host,
        args.port,
        compression="deflate" if args.compression == "on" else None,
        max_size=_common.MAX_SIZE,
        ping_interval=None,
    ) as server:
        _common.ready(server.sockets[0].getsockname()[1])
        await stop.wait()


if __name__ == "__main__":
    _common.run(main, __doc__ or "")
