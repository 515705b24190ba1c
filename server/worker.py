"""Worker: one thread running blocking jobs in order, for the event loop (aiosqlite's design).

Jobs go to the thread through a queue; their results come back to the caller's event loop
through ``call_soon_threadsafe``; a sentinel stops the thread once it has run the jobs queued
before it (aiosqlite ``core.py``, ``_connection_worker_thread``). A SQLite connection belongs to
the thread that made it, so the job that opens one and all that use it go to the same worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

__all__ = ["Worker"]

logger = logging.getLogger("server.worker")

T = TypeVar("T")

_Job: TypeAlias = tuple["asyncio.Future[Any] | None", Callable[[], Any]]


class Worker:
    """One thread running jobs in order: the only thread that touches its SQLite connection.

    Args:
        name: The thread's name.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # Daemon: a worker stuck in a database call must not keep the process alive.
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def call(self, function: Callable[[], T]) -> T:
        """Run ``function()`` in the worker thread and return its result or raise its error."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((future, function))
        return await future

    def shutdown(self, final: Callable[[], object] | None = None) -> None:
        """Let the thread finish the queued jobs, then ``final()``, then exit."""
        if final is not None:
            self._jobs.put((None, final))
        self._jobs.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function = job
            try:
                result = function()
            except BaseException as exc:
                if future is None:
                    logger.debug("worker job %r failed: %s", function, exc)
                else:
                    _settle(future, None, exc)
            else:
                if future is not None:
                    _settle(future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """Resolve ``future`` from the worker thread, on its own event loop."""

    def settle() -> None:
        if future.done():  # the caller was cancelled
            return
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)

    # A closed event loop raises RuntimeError: nobody is waiting for the result any more.
    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(settle)
