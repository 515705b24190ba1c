"""A worker's side of ``--workers``: tell the supervisor it listens; stop once it is gone.

The supervisor (``supervisor.py``) starts each worker with one end of a socket pair, whose
file descriptor the environment variable ``SUPERVISOR_FD`` names. The worker sends one byte
on it once it listens: the supervisor waits for that byte, it never polls. The supervisor
sends nothing back, so the only thing the worker ever reads there is the end of file that
comes when the supervisor's process ends, however it ends (``kill -9`` included): the worker
then stops gracefully rather than hold the port unsupervised. ``SUPERVISOR_SLOT`` names the
worker's slot (0 to N-1): the ``worker`` label of its metrics, and its metrics port's offset.

``RESTART_SIGNAL`` asks a server to stop as SIGTERM does, but to close its clients with 1012
"service restart" (RFC 6455 §7.4.1, the IANA registry's code), which tells them to connect
again: the supervisor's rolling restart sends it to each old worker once its replacement
listens. It is SIGUSR1, not SIGHUP: a standalone server's SIGHUP is kept for reloading a TLS
certificate.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable, MutableMapping

__all__ = ["RESTART_SIGNAL", "SUPERVISOR_FD", "SUPERVISOR_SLOT", "SupervisorLink"]

SUPERVISOR_FD = "SERVER_SUPERVISOR_FD"
SUPERVISOR_SLOT = "SERVER_SUPERVISOR_SLOT"
RESTART_SIGNAL = signal.SIGUSR1


class SupervisorLink:
    """The worker's end of the socket pair it shares with its supervisor.

    Args:
        sock: That end.
        slot: The worker's slot among the supervisor's (0 to N-1).
    """

    def __init__(self, sock: socket.socket, slot: int = 0) -> None:
        self._sock = sock
        self.slot = slot
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] = os.environ
    ) -> SupervisorLink | None:
        """The link ``SUPERVISOR_FD`` names (the variable is removed), or None: no supervisor.

        Raises:
            ValueError: The variable does not name a socket's file descriptor.
        """
        text = environ.pop(SUPERVISOR_FD, None)
        slot = environ.pop(SUPERVISOR_SLOT, "0")
        if text is None:
            return None
        if not slot.isdigit():
            raise ValueError(f"{SUPERVISOR_SLOT}={slot!r} is not a slot number")
        try:
            sock = socket.socket(fileno=int(text))
        except (ValueError, OSError):
            raise ValueError(f"{SUPERVISOR_FD}={text!r} is not a socket's descriptor") from None
        return cls(sock, int(slot))

    def ready(self) -> None:
        """Tell the supervisor that this worker listens."""
        self._sock.sendall(b"\n")

    def watch(self, lost: Callable[[], object]) -> None:
        """Call ``lost()`` once, in the running event loop, when the supervisor is gone."""
        self._loop = asyncio.get_running_loop()

        def readable() -> None:
            # The supervisor never writes: readable means its end was closed.
            self._unwatch()
            lost()

        self._loop.add_reader(self._sock.fileno(), readable)

    def _unwatch(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None

    def close(self) -> None:
        """Stop watching and close this end."""
        self._unwatch()
        self._sock.close()
