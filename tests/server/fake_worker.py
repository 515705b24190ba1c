"""A fake worker for ``test_supervisor.py``: ``python fake_worker.py FOLDER VARIABLE``.

It speaks the worker's side of the link (``server/supervised.py``): one byte on the socket that
the environment variable ``VARIABLE`` names once "listening", then it waits for a signal or
for the supervisor's end. Each step is a line ``PID EVENT`` appended to ``FOLDER/events``.
Files in ``FOLDER`` say how it behaves:

- ``fail``: it exits with status 2 before it listens (a port taken, say);
- ``crashes``: a number; while it is above 0, it is decreased and the worker exits with
  status 3 once it listens;
- ``stubborn``: SIGTERM and SIGUSR1 are ignored.

Otherwise SIGTERM and SIGUSR1 make it exit 0.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType


def main() -> None:
    folder, variable = Path(sys.argv[1]), sys.argv[2]
    pid = os.getpid()

    def event(text: str) -> None:
        with (folder / "events").open("a", encoding="utf-8") as events:
            events.write(f"{pid} {text}\n")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        event(signal.Signals(signum).name)
        if not (folder / "stubborn").exists():
            event("exit 0")
            sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)
    link = socket.socket(fileno=int(os.environ[variable]))
    event("started")
    if (folder / "fail").exists():
        event("exit 2")
        sys.exit(2)
    event("ready")  # before the byte: whatever the supervisor does next comes after it
    link.sendall(b"\n")
    crashes = folder / "crashes"
    if crashes.exists() and (left := int(crashes.read_text())) > 0:
        crashes.write_text(str(left - 1))
        event("exit 3")
        sys.exit(3)
    while link.recv(1):  # b"": the supervisor is gone
        pass
    event("orphaned")


if __name__ == "__main__":
    main()
