"""``python -m server.client URL``: the chat console's command line."""

from __future__ import annotations

import argparse
import dataclasses
import uuid
from collections.abc import Sequence

from rfc6455.aio.console import Options, console_options, console_parser, run_console

from .session import ChatClient
from .uri import with_params

__all__ = ["main", "parse_args"]

_EPILOG = """\
lines typed (stdin):
  TEXT              publish TEXT to the current channel (//TEXT publishes /TEXT)
  /join C           subscribe to channel C (from where it stopped if seen before)
                    and write to it
  /leave C          unsubscribe from C (and write to general if C was current)
  /switch C         make C the current channel (at first: general)
  /who              who is in the current channel
  /msg USER TEXT    a direct message to USER
  /help             these commands

what the server sends is printed as short lines ("[channel] name: text", joins,
leaves, typing, errors); --json prints it as JSON lines instead, as
python -m rfc6455 --json does. Status lines and errors go to stderr.

every message sent (TEXT, /msg) has a clientMsgId and stays in an outbox until
the server acknowledges it ("[channel] you: TEXT (ack #seq)") or an error names
it (printed); after rate_limited it is sent again once retryAfterMs has passed.
While the chat cannot reach its engine (unavailable), what it refused, messages
and subscribes, is sent again after 0.5 s, then 1, 2, 4, 8 and 10 s, until it
answers again ("chat unavailable: will retry" is shown once).

when the connection drops (1006) or the server closes it with 1001, 1011, 1012
or 1013, the client connects again after 0.5 s, then 1, 2, 4 and 8 s: at most 5
attempts in a row (counted again once a message arrives). general resumes
through since=&epoch= in the URI, every other channel joined is subscribed to
again with since/epoch, then the outbox is sent again with the same clientMsgIds
(the server stores each once). Lines typed meanwhile are sent once connected.
No reconnect after Ctrl-C, the end of input, another close code, or when the
first connection failed.

--client-id and --name are sent as ?clientId=&name=; without --client-id, a
clientId is made for the run, so that what is sent again after a reconnect is
known to come from the same sender.

exit status:
  0  closed normally (Ctrl-C, the end of input)
  1  could not connect, or every attempt to reconnect failed
  2  usage error: a bad option, URI or header
  4  the last connection did not close normally (e.g. 1008, or dropped: 1006)
"""

# The protocol's display names: 1-32 printable characters.
_MAX_NAME = 32


def _client_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def _name(text: str) -> str:
    if not 1 <= len(text) <= _MAX_NAME or not text.isprintable():
        raise argparse.ArgumentTypeError(f"a name is 1-{_MAX_NAME} printable characters")
    return text


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse the command line; exit with status 2 and one line on stderr if it is wrong.

    The URI of the options carries the identity: ``clientId`` (given or new) and ``name``.
    """
    parser = console_parser(
        "python -m server.client",
        "Chat console client: channels, direct messages, an outbox, resuming after a drop.",
        _EPILOG,
    )
    parser.add_argument(
        "--client-id",
        metavar="UUID",
        type=_client_id,
        help="the clientId to send (default: a new one for this run)",
    )
    parser.add_argument(
        "--name", metavar="NAME", type=_name, help="the display name to send (1-32 characters)"
    )
    args = parser.parse_args(argv)
    options = console_options(parser, args)
    identity = {"clientId": args.client_id or str(uuid.uuid4())}
    if args.name is not None:
        identity["name"] = args.name
    return dataclasses.replace(options, uri=with_params(options.uri, identity))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chat console: ``python -m server.client URL [options]``; return the exit status."""
    options = parse_args(argv)
    return run_console(options, lambda output: ChatClient(options, output), prog="chat")
