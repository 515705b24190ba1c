"""File descriptors: enough for ``--max-connections``, or a warning that says so.

Each connection is a file descriptor, and the usual soft limit (``ulimit -n``) is 1,024,
below the default ``--max-connections``: past it, ``accept()`` fails and clients are left
waiting. At start-up the server raises its soft limit as far as the hard limit allows (as Go
programs and nginx's ``worker_rlimit_nofile`` do), and warns when that is still short.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["RESERVE", "raise_descriptor_limit"]

logger = logging.getLogger("server")

# Descriptors besides the connections: the database, its WAL and shared memory, the lock
# file, the dead-letter file, the listening sockets, the log, the event loop's own.
RESERVE = 64


def raise_descriptor_limit(connections: int, handshakes: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; warn if it is below what is needed.

    Args:
        connections: ``--max-connections`` (0: no cap, so no warning).
        handshakes: The most connections in their opening handshake at once.

    Returns:
        The soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + handshakes + RESERVE
    target = max(soft, needed) if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # a hard limit the kernel does not grant
            logger.debug("cannot raise the descriptor limit to %d: %s", target, exc)
    if connections and soft < needed:
        logger.warning(
            "--max-connections %d needs about %d file descriptors, but this process may open "
            "%d (ulimit -n, hard limit %s): connections beyond that wait or fail; raise the "
            "limit or lower --max-connections",
            connections,
            needed,
            soft,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
        )
    return soft
