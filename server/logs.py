"""The server's log lines on stderr: readable text (``--log-format text``) or JSON lines.

A line that says what happened to a connection gives its facts as ``extra=`` fields (below);
the text format shows its message as it always has, the JSON format adds the fields, so that
a log pipeline (journald, Loki, Elasticsearch) can filter on them without parsing prose. No
line carries a token, a password, an API key or the text of a chat message: the fields are
the ones of ``FIELDS``, nothing else a record holds.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

__all__ = ["FIELDS", "LOG_FORMATS", "JsonFormatter", "configure"]

LOG_FORMATS = ("text", "json")

#: The ``extra=`` fields a JSON line carries when its record has them. ``event`` is a stable
#: name for what happened (``connect``, ``disconnect``, ``refused``, ``tls_failed``...);
#: ``repeated`` is how many lines like it a throttled summary stands for.
FIELDS = (
    "event",
    "connection_id",
    "user",
    "channel",
    "peer",
    "proxy",
    "path",
    "status",
    "close_code",
    "close_reason",
    "initiator",
    "open",
    "repeated",
)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC), level, logger, event, message, fields.

    A record without an ``event`` gets its logger's name (``server.app``) as the event.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str, *, worker: bool = False) -> None:
    """Send the log to stderr at ``level``, in ``log_format`` (one of ``LOG_FORMATS``).

    Args:
        worker: The process is a worker of ``--workers``: its text lines name its pid (the
            workers share the supervisor's stderr); JSON lines always carry ``pid``.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        name = "%(name)s[%(process)d]" if worker else "%(name)s"
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {name}: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # A library's warning (warnings.warn) becomes a line of the same format, not a bare one.
    logging.captureWarnings(True)
