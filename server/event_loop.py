"""``--loop``: the event loop the server runs on, asyncio's own or uvloop's.

uvloop (the ``fast`` extra) replaces asyncio's loop with one written on libuv in Cython; the
server's code and the ``rfc6455`` package do not change, they run on whichever loop runs them
(``rfc6455`` never imports uvloop). It is imported only when chosen: ``auto`` takes it when it
is installed, ``asyncio`` never looks for it, ``uvloop`` insists on it. The workers of
``--workers N`` are started with the supervisor's arguments and environment, so they choose
alike, and each logs its loop with its ``listening`` line; the supervisor itself, which
carries no traffic, runs on asyncio's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from importlib import metadata
from typing import Any, TypeVar

__all__ = ["FAST_EXTRA", "LOOP_MODES", "LoopUnavailable", "choose", "run", "running_loop"]

LOOP_MODES = ("auto", "asyncio", "uvloop")
# What installs uvloop: the error of ``--loop uvloop`` without it says this.
FAST_EXTRA = "pip install 'rfc6455-chat[fast]'"

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class LoopUnavailable(Exception):
    """``--loop uvloop`` was asked for and uvloop is not installed."""


def choose(mode: str) -> LoopFactory:
    """What makes the loop that ``mode`` (one of ``LOOP_MODES``) stands for on this machine.

    Raises:
        LoopUnavailable: ``mode`` is ``uvloop`` and it cannot be imported.
    """
    if mode != "asyncio":
        try:
            import uvloop
        except ImportError:
            if mode == "uvloop":
                raise LoopUnavailable(
                    f"--loop uvloop: uvloop is not installed ({FAST_EXTRA})"
                ) from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(mode: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on a new loop of ``mode``, as ``asyncio.run`` does.

    Raises:
        LoopUnavailable: As ``choose``.
    """
    with asyncio.Runner(loop_factory=choose(mode)) as runner:
        return runner.run(main)


def running_loop() -> str:
    """The running loop, for the start-up log: ``uvloop 0.23.0`` or ``asyncio``."""
    if type(asyncio.get_running_loop()).__module__.startswith("uvloop"):
        return f"uvloop {metadata.version('uvloop')}"
    return "asyncio"
