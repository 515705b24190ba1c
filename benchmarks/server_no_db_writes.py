"""``python -m server`` with its database writes turned off. **For benchmarks only.**

``python -m benchmarks.server_no_db_writes [the options of python -m server]`` runs the real
chat server with one change: ``Store.insert_many``, the one call that writes chat messages
to SQLite (the rows of a batch, the seq reservation and the channels' last seqs, in one
transaction and one fsync),
does nothing and returns at once. Everything else runs as usual: each message still gets its
seq, is queued, goes through the writer task and the database thread, and its sender still
gets an ack after the (now empty) "commit". So the difference between this server and
``python -m server`` under the same load is exactly the cost of writing to SQLite, which is
what ``benchmarks/bench_persistence.py`` compares ("persistence off").

The database is still opened at start-up (schema, epoch, first seq reservation); nothing is
written to it afterwards, so its messages are lost and the server must not be used for a chat.
The server itself has no option to turn persistence off, on purpose.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping

from server.cli import main
from server.store import ChannelRow, MessageRecord, Store

__all__ = ["skip_insert"]


def skip_insert(
    self: Store,
    records: Iterable[MessageRecord],
    *,
    reserve: int | None = None,
    positions: Mapping[str, ChannelRow] | None = None,
    committed: int | None = None,
    reads: Mapping[tuple[str, str], int] | None = None,
) -> None:
    """``Store.insert_many`` without the database: the batch is dropped."""


if __name__ == "__main__":
    setattr(Store, "insert_many", skip_insert)  # noqa: B010 (a method, replaced on purpose)
    logging.getLogger("server").warning(
        "benchmark only: chat messages are NOT written to the database (%s)", __name__
    )
    sys.exit(main())
