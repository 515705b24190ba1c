"""Peer server: ``aiohttp`` (``web.WebSocketResponse``, C reader), for benchmarks/e2e.py.

Compression off, messages up to 16 MiB, no heartbeat, no access log, everything
else at aiohttp's defaults. aiohttp has no broadcast helper: the chat awaits
``send_str`` for each receiver in turn, as its documentation's examples do
(``send_str`` only waits when a receiver's write buffer is over its limit).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from aiohttp import WSMsgType, web

# Run as a script: the repository, not this folder, is where ``benchmarks`` lives.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.peers import _common

CLIENTS: set[web.WebSocketResponse] = set()


def _response() -> web.WebSocketResponse:
    return web.WebSocketResponse(compress=False, max_msg_size=_common.MAX_SIZE, heartbeat=None)


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = _response()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def chat(request: web.Request) -> web.WebSocketResponse:
    ws = _response()
    await ws.prepare(request)
    CLIENTS.add(ws)
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                await ws.close(code=1003, message=b"binary messages are not supported")
                break
            text = msg.data
            for other in list(CLIENTS):
                if other is not ws and not other.closed:
                    try:  # noqa: SIM105 (a hot loop: no context manager per receiver)
                        await other.send_str(text)
                    except ConnectionError:
                        pass  # It is closing; its own handler removes it.
    finally:
        CLIENTS.discard(ws)
    return ws


async def main(args: argparse.Namespace, stop: asyncio.Event) -> None:
    app = web.Application()
    app.router.add_get(_common.ECHO_PATH, echo)
    app.router.add_get("/", chat)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    _common.ready(runner.addresses[0][1])
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    _common.run(main, __doc__ or "")
