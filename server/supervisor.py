"""The supervisor of ``--workers N``: N server processes that share one port, kept running.

A worker is a child ``python -m server`` with the supervisor's own arguments and
``--workers 1`` after them (the last of a flag wins, and a flag wins over ``CHAT_WORKERS``):
a new interpreter running exactly what a single server runs, the command line a user can
read in ``ps`` and run alone, inheriting nothing of the supervisor (event loop, signal
handlers, threads) but its environment. ``multiprocessing``'s spawn method would start the
same interpreter, only to run a function with pickled settings. The command is a
parameter of ``Supervisor``, so that tests run small fake workers.

Each worker gets one end of a socket pair (``supervised.py``): it sends one byte there once it
listens, which the supervisor waits for without polling, and the end of file that the
supervisor's death brings, however it dies, stops the workers rather than leave them on the
port unsupervised. The workers set ``SO_REUSEPORT``, and the kernel spreads the connections
among them.

- A worker that exits (a crash, a kill) is logged with its status or signal and started
  again after a delay that doubles from 0.5 s to 30 s, back to 0.5 s for a worker that had
  run for a minute. One that exits before it first listens (the port taken, Redis
  unreachable) stops the supervisor with its status: what a single server would do.
- SIGTERM or SIGINT: every worker gets SIGTERM and stops gracefully (its clients closed with
  1001, its queue drained); the supervisor exits 0 once all have, or kills those still
  running after the stop timeout (a worker's two phases of ``--shutdown-timeout``, plus a
  margin) and exits 1.
- SIGHUP: a rolling restart, one worker at a time. Its replacement starts, and once it
  listens the old worker gets ``RESTART_SIGNAL``: it closes its clients with 1012 "service
  restart", they connect again (to the other workers) and resume where they were, and it
  exits. Then the next. A replacement that exits before it listens ends the restart there,
  and the old worker serves on. A SIGHUP during a restart asks for one more after it.

Workers run in a process group of their own, so that a Ctrl-C in a terminal reaches the
supervisor only, which stops them in order (a worker that stopped by itself would be taken
for a crash and started again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .app import addresses_text
from .settings import Settings
from .supervised import RESTART_SIGNAL, SUPERVISOR_FD, SUPERVISOR_SLOT

__all__ = ["Backoff", "Supervisor", "check_workers", "supervise", "worker_command"]

logger = logging.getLogger("server.supervisor")

# What a worker may take to stop beyond its two phases of --shutdown-timeout (closing the
# clients, draining the queue): the interpreter's start-up if it was just started, its exit.
_STOP_MARGIN = 5.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a worker that died waits before it is started again.

    Attributes:
        first: Seconds after a first death; each death in a row doubles the delay.
        most: The longest delay.
        reset_after: Seconds a worker must have run to count as healthy: the delay after
            its death is ``first`` again.
    """

    # Long enough not to spin on a worker that crashes at once, short enough to go unnoticed.
    first: float = 0.5
    # A worker that keeps crashing is tried twice a minute: the others serve meanwhile.
    most: float = 30.0
    reset_after: float = 60.0


def check_workers(settings: Settings) -> None:
    """Check that ``settings.workers`` processes can serve together.

    Raises:
        ValueError: They cannot, and why, in one line.
    """
    workers = settings.workers
    if workers == 1:
        return
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError(
            f"--workers {workers}: this platform has no SO_REUSEPORT, for workers to share a port"
        )
    if settings.engine == "local":
        raise ValueError(
            f"--workers {workers} needs a Redis --engine: the local engine's messages and seqs "
            "are one process's"
        )
    if settings.port == 0:
        raise ValueError(
            f"--workers {workers} needs a --port other than 0: each worker would get a port of "
            "its own"
        )
    metrics_port = settings.metrics_port
    if metrics_port and metrics_port + workers - 1 > 65535:
        raise ValueError(
            f"--workers {workers}: worker {workers - 1} would listen for metrics on "
            f"{metrics_port + workers - 1}, beyond 65535"
        )


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line of a worker of ``python -m server ARGV``."""
    return [sys.executable, "-m", "server", *argv, "--workers", "1"]


def _ending(status: int) -> str:
    """How a process ended, from its return code (negative: the signal that killed it)."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        return f"was killed by {signal.Signals(-status).name}"
    except ValueError:
        return f"was killed by signal {-status}"


class _Worker:
    """One worker process: whether it listens yet, and when it exits."""

    def __init__(self, slot: int, process: asyncio.subprocess.Process, link: socket.socket) -> None:
        self.slot = slot
        self.process = process
        self._link = link
        self._loop = loop = asyncio.get_running_loop()
        self.started = loop.time()
        # True once the worker said it listens; False if it exited first.
        self._listening: asyncio.Future[bool] = loop.create_future()
        self._exited = loop.create_task(process.wait())
        link.setblocking(False)
        loop.add_reader(link.fileno(), self._readable)
        self._exited.add_done_callback(self._gone)

    def __str__(self) -> str:
        return f"worker {self.slot + 1} (pid {self.process.pid})"

    def _readable(self) -> None:
        self._loop.remove_reader(self._link.fileno())
        try:
            said = self._link.recv(1) == b"\n"
        except OSError:
            said = False
        if said and not self._listening.done():
            self._listening.set_result(True)
        # Else the end of file: the worker is exiting, and _gone says it never listened.

    def _gone(self, _: object) -> None:
        self._readable()  # the byte may have come with the exit
        if not self._listening.done():
            self._listening.set_result(False)
        self._link.close()

    def add_exit_callback(self, callback: Callable[[], object]) -> None:
        self._exited.add_done_callback(lambda _: callback())

    async def listening(self) -> bool:
        """Wait until it listens (True) or exits first (False)."""
        # Shielded: a caller cancelled must not cancel what others wait for.
        return await asyncio.shield(self._listening)

    async def wait(self) -> int:
        """Wait for its exit; return its return code."""
        return await asyncio.shield(self._exited)

    def signal(self, signum: int) -> None:
        """Send ``signum`` unless it has exited."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)


class Supervisor:
    """Keeps ``workers`` processes of ``command`` running (the module's docstring says how).

    Args:
        command: A worker's command line; the worker finds its link in ``SUPERVISOR_FD``.
        workers: How many run at once.
        stop_timeout: Seconds a worker may take to stop, after SIGTERM or
            ``RESTART_SIGNAL``, before it is killed.
        backoff: The delays before a worker that died is started again.
        on_listening: Called once, when every worker has first said it listens.
    """

    def __init__(
        self,
        command: Sequence[str],
        workers: int,
        *,
        stop_timeout: float,
        backoff: Backoff = Backoff(),
        on_listening: Callable[[], object] = lambda: None,
    ) -> None:
        self._command = tuple(command)
        self._count = workers
        self._stop_timeout = stop_timeout
        self._backoff = backoff
        self._on_listening = on_listening
        # Each slot's worker: the one started again after a death, or a replacement.
        self._slots: dict[int, _Worker] = {}
        # Held while a slot's worker is being replaced, or started again.
        self._locks = [asyncio.Lock() for _ in range(workers)]
        # Every worker not yet exited: those of the slots, and those being replaced or retired.
        self._alive: set[_Worker] = set()
        self._starting = workers
        self._listening = asyncio.Event()
        self._stopping = asyncio.Event()
        self._restarting = asyncio.Event()
        self._status = 0

    def stop(self) -> None:
        """Stop every worker gracefully, then return from ``run``."""
        self._stopping.set()

    def restart(self) -> None:
        """Replace every worker, one at a time (after the restart in progress, if any)."""
        self._restarting.set()

    async def run(self) -> int:
        """Start the workers and keep them running until ``stop``; SIGTERM and SIGINT call
        ``stop``, SIGHUP ``restart``.

        Returns:
            The exit status: 0 once every worker stopped gracefully, 1 if one had to be
            killed, or the status of a worker that exited before it first listened.
        """
        loop = asyncio.get_running_loop()
        signals = {signal.SIGINT: self.stop, signal.SIGTERM: self.stop, signal.SIGHUP: self.restart}
        for signum, handler in signals.items():
            loop.add_signal_handler(signum, handler)
        stopping = loop.create_task(self._stopping.wait())
        tasks = [loop.create_task(self._keep(slot)) for slot in range(self._count)]
        tasks.append(loop.create_task(self._roll()))
        try:
            await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, *tasks):
                task.cancel()
            await asyncio.wait([stopping, *tasks])
            killed = await self._stop_all()
            for signum in signals:
                loop.remove_signal_handler(signum)
        for task in tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
        return self._status or int(killed)

    async def _start(self, slot: int) -> _Worker:
        parent, child = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command,
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, SUPERVISOR_FD: str(child.fileno()), SUPERVISOR_SLOT: str(slot)},
                pass_fds=(child.fileno(),),
                process_group=0,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        worker = _Worker(slot, process, parent)
        self._alive.add(worker)
        worker.add_exit_callback(lambda: self._alive.discard(worker))
        logger.info("%s started", worker, extra={"event": "worker_started"})
        return worker

    async def _keep(self, slot: int) -> None:
        """Start the worker of ``slot``; start it again whenever it dies."""
        self._slots[slot] = worker = await self._start(slot)
        if not await worker.listening():
            status = await worker.wait()
            logger.error(
                "%s %s before it listened",
                worker,
                _ending(status),
                extra={"event": "worker_failed"},
            )
            self._status = status if status > 0 else 1
            self.stop()
            return
        self._starting -= 1
        if not self._starting:
            self._listening.set()
            self._on_listening()
        loop = asyncio.get_running_loop()
        delay = self._backoff.first
        while True:
            worker = self._slots[slot]
            status = await worker.wait()
            if self._slots[slot] is not worker:
                continue  # retired by a restart: the slot's worker is its replacement
            if loop.time() - worker.started >= self._backoff.reset_after:
                delay = self._backoff.first
            logger.warning(
                "%s %s; starting it again in %g s",
                worker,
                _ending(status),
                delay,
                extra={"event": "worker_exited"},
            )
            await asyncio.sleep(delay)
            delay = min(2 * delay, self._backoff.most)
            async with self._locks[slot]:
                if self._slots[slot] is worker:  # not replaced by a restart meanwhile
                    self._slots[slot] = await self._start(slot)

    async def _roll(self) -> None:
        """Run a rolling restart whenever one is asked for, once every worker listens."""
        await self._listening.wait()
        while True:
            await self._restarting.wait()
            self._restarting.clear()
            logger.info("restarting %d workers, one at a time", self._count)
            for slot in range(self._count):
                if not await self._replace(slot):
                    break
            else:
                logger.info("restarted %d workers", self._count)

    async def _replace(self, slot: int) -> bool:
        """Replace the worker of ``slot``; False if its replacement did not start."""
        async with self._locks[slot]:
            replacement = await self._start(slot)
            if not await replacement.listening():
                status = await replacement.wait()
                logger.error(
                    "%s %s before it listened: the restart stops, %s serves on",
                    replacement,
                    _ending(status),
                    self._slots[slot],
                )
                return False
            old = self._slots[slot]
            self._slots[slot] = replacement
        logger.info("%s listens in place of %s", replacement, old)
        await self._end(old, RESTART_SIGNAL)
        return True

    async def _end(self, worker: _Worker, signum: int) -> bool:
        """Send ``signum`` and wait for the exit; kill it after the stop timeout.

        Returns:
            Whether it exited in time.
        """
        worker.signal(signum)
        try:
            async with asyncio.timeout(self._stop_timeout):
                await worker.wait()
        except TimeoutError:
            logger.warning("%s did not exit within %g s: killed", worker, self._stop_timeout)
            worker.signal(signal.SIGKILL)
            await worker.wait()
            return False
        return True

    async def _stop_all(self) -> bool:
        """Stop every worker gracefully; True if one had to be killed."""
        workers = list(self._alive)
        logger.info("stopping %d workers", len(workers))
        ended = await asyncio.gather(*(self._end(worker, signal.SIGTERM) for worker in workers))
        logger.info("stopped")
        return not all(ended)


async def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """Run ``settings.workers`` workers of ``python -m server ARGV``; returns the exit status."""

    def listening() -> None:
        logger.info(
            "listening: %s, %d workers",
            addresses_text(settings.host, settings.port, tls=settings.tls_cert is not None),
            settings.workers,
            extra={"event": "listening"},
        )

    supervisor = Supervisor(
        worker_command(argv),
        settings.workers,
        stop_timeout=2 * settings.shutdown_timeout + _STOP_MARGIN,
        on_listening=listening,
    )
    return await supervisor.run()
