"""Command line: flags and environment variables to Settings, then ``app.run``.

Every option is declared once, in ``options.OPTIONS``; this module turns the table into an
argument parser, reads the environment variables with the same parsers, and checks what one
option cannot check alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from rfc6455 import Limits, __version__

from . import event_loop
from .app import namespaces_of, run
from .auth import authenticator
from .engine import EngineUnavailable
from .event_loop import LoopUnavailable
from .logs import configure
from .namespaces import NamespaceError
from .options import OPTIONS, Option, default_text
from .persistence import DatabaseInUse
from .settings import Settings
from .supervised import SupervisorLink
from .supervisor import check_workers, supervise
from .tls import TLSFileError, server_context

__all__ = ["main", "parse_args"]

_PROG = "python -m server"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr and exit status 2, instead of the usage text."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _help(option: Option) -> str:
    # No default shown where the README shows none: a secret, a file.
    shown = "" if option.shown == "" else f"; default: {default_text(option) or 'none'}"
    # %% : argparse formats help strings with %.
    return f"{option.doc.replace('`', '')} (env {option.env}{shown})".replace("%", "%%")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=_PROG,
        description="WebSocket chat server (RFC 6455, pure Python). "
        "Every option can also be set by the environment variable named in its help.",
    )
    parser.add_argument("--version", action="version", version=f"rfc6455-chat {__version__}")
    for option in OPTIONS:
        # No default: whether the flag was given decides if the variable is read.
        kwargs: dict[str, Any] = {"nargs": "?", "const": "true"} if option.switch else {}
        parser.add_argument(
            option.flag,
            type=option.parse,
            default=argparse.SUPPRESS,
            metavar="BOOL" if option.switch else option.metavar,
            help=_help(option),
            **kwargs,
        )
    return parser


def _values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Each option's value, from its flag, else its environment variable, by ``dest``."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        name = option.flag.removeprefix("--").replace("-", "_")
        if hasattr(args, name):
            values[option.dest] = getattr(args, name)
        elif option.env in os.environ:
            try:
                values[option.dest] = option.parse(os.environ[option.env])
            except argparse.ArgumentTypeError as exc:
                parser.error(f"{option.env}: {exc}")
    return values


def _settings(values: dict[str, Any]) -> Settings:
    """Settings with ``values`` set, ``limits.x`` and ``retry.x`` into their parts."""
    parts: dict[str, dict[str, Any]] = {"limits": {}, "retry": {}}
    top: dict[str, Any] = {}
    for dest, value in values.items():
        part, dot, name = dest.partition(".")
        if dot:
            parts[part][name] = value
        else:
            top[dest] = value
    defaults = Settings()
    return Settings(
        **top,
        limits=dataclasses.replace(defaults.limits, **parts["limits"]),
        retry=dataclasses.replace(defaults.retry, **parts["retry"]),
    )


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Build Settings from ``argv`` and the environment; exits with status 2 on a bad value."""
    parser = _build_parser()
    settings = _settings(_values(parser, parser.parse_args(argv)))
    database = settings.db_path
    if isinstance(database, str):
        if settings.engine == "local":
            parser.error(
                "--db: the local engine keeps its messages in a SQLite file; "
                "a PostgreSQL archive goes with a Redis --engine"
            )
    else:
        try:
            _check_writable(database.parent)
        except OSError as exc:
            parser.error(f"--db: cannot write to {database.parent}: {exc.strerror or exc}")
    # The limit is checked once the transport pauses writing, above write_limit.
    buffer, write_limit = settings.limits.max_send_buffer, Limits().write_limit
    if buffer is not None and buffer < write_limit:
        parser.error(
            f"--max-send-buffer: {buffer} is out of range: must be 0 or at least {write_limit}"
        )
    if (settings.tls_cert is None) != (settings.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if settings.tls_cert is not None and settings.tls_key is not None:
        try:
            server_context(settings.tls_cert, settings.tls_key)
        except TLSFileError as exc:
            parser.error(str(exc))
    try:
        authenticator(settings.auth, settings.jwt_secret, settings.users_file)
    except (ValueError, ImportError) as exc:
        parser.error(str(exc))
    try:
        namespaces_of(settings)
    except NamespaceError as exc:
        parser.error(f"--channels: {exc}")
    try:
        check_workers(settings)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        event_loop.choose(settings.loop)
    except LoopUnavailable as exc:
        parser.error(str(exc))
    return settings


def _check_writable(folder: Path) -> None:
    """Create the database folder and prove a file can be written in it."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m server``."""
    settings = parse_args(argv)
    try:
        link = SupervisorLink.from_environment()
    except ValueError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    if link is not None:
        settings = dataclasses.replace(settings, reuse_port=True, worker=link.slot)
    # The workers of one supervisor share its stderr: each line names its worker's pid.
    configure(settings.log_level, settings.log_format, worker=link is not None)
    if settings.workers > 1:
        # The supervisor carries no traffic, and uvloop cannot start a worker in a process
        # group of its own (no process_group in its subprocess_exec); the workers, started
        # with these arguments and this environment, run on the loop chosen.
        return event_loop.run(
            "asyncio", supervise(settings, sys.argv[1:] if argv is None else argv)
        )
    try:
        return event_loop.run(settings.loop, run(settings, link))
    except OSError as exc:
        # The port is taken, or the host is not an address of this machine.
        print(f"{_PROG}: error: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except DatabaseInUse as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"{_PROG}: error: cannot open {settings.db_path}: {exc}", file=sys.stderr)
        return 2
    except TLSFileError as exc:
        # The files changed since parse_args checked them.
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (EngineUnavailable, ImportError) as exc:
        # Redis or the archive cannot be reached, or their driver is not installed.
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
