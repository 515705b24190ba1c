"""What the peer servers share: the command line, the file limit, the start-up line, SIGTERM.

Each peer serves, on one port, ``/echo`` (every message sent back unchanged) and
``/`` (every text message sent unchanged to every *other* connected client: the
project's chat without its JSON envelope and its SQLite persistence). Run one as
``python benchmarks/peers/NAME.py --port P``; it prints ``ready PORT`` on stdout when
it listens and exits with status 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
from collections.abc import Awaitable, Callable

from server import event_loop

__all__ = ["ECHO_PATH", "MAX_SIZE", "parse_args", "raise_nofile", "ready", "run"]

ECHO_PATH = "/echo"
# The project's server runs with --max-message-size 16777216 in the benchmarks.
MAX_SIZE = 16 * 1024 * 1024


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--compression",
        choices=("off", "on"),
        default="off",
        help="permessage-deflate at the library's defaults (benchmarks/bench_deflate.py)",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default=os.environ.get("CHAT_LOOP", "asyncio"),
        help="the event loop, as the project's --loop; default: CHAT_LOOP, else asyncio "
        "(benchmarks/e2e.py sets it for every server)",
    )
    return parser.parse_args()


def raise_nofile() -> None:
    """Allow as many open files as the hard limit does (5,000 idle clients need 5,000)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ready(port: int) -> None:
    print(f"ready {port}", flush=True)


def run(main: Callable[[argparse.Namespace, asyncio.Event], Awaitable[None]], doc: str) -> None:
    """Parse the command line and run ``main(args, stop)``; ``stop`` is set on SIGTERM/SIGINT."""
    args = parse_args(doc)
    raise_nofile()

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await main(args, stop)

    event_loop.run(args.loop, wrapper())
