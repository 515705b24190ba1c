"""The chat console's session: the generic console of ``rfc6455`` with the chat's hooks.

A line typed is a command or a message (:mod:`.commands`); messages go through the outbox
(:mod:`.outbox`). What the server sends moves the resume positions (:mod:`.positions`),
settles the outbox, and is printed (:mod:`.render`; with ``--json``, as JSON lines).

When the connection drops or the server goes away, it connects again after a delay that
grows, resuming general through the URI; once connected it subscribes again to every other
channel joined, with since/epoch, and sends again what the outbox holds.

While the chat cannot reach its engine (an ``unavailable`` error), a message or a subscribe
it refused is kept and sent again after a delay that doubles up to 10 s, until an ack or a
subscription shows that the chat is back; one status line says so, not one per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping

from rfc6455 import CloseCode, Connection, ConnectionClosed, WebSocketError
from rfc6455.aio.console import (
    EXIT_CONNECT,
    Console,
    Options,
    Output,
    describe_connect_error,
    redact_uri,
)
from rfc6455.typing import Data

from . import commands, render
from .commands import Direct, Help, Join, Leave, Publish, Switch, Who
from .events import GENERAL, channel_of, parse_event, retry_after
from .outbox import Outbox, Pending
from .positions import Positions
from .uri import resume_uri

__all__ = ["RECONNECT_CODES", "RECONNECT_DELAYS", "UNAVAILABLE_DELAYS", "ChatClient"]

# Reconnect after these: a dropped connection, and the server going away, failing,
# restarting or overloaded. Not after 1000 (the server meant it), nor after codes that the
# same client would only get again (1002, 1003, 1007, 1008, 1009, 4xxx, ...).
RECONNECT_CODES = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.ABNORMAL_CLOSURE,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
    }
)

# The delay before each attempt in a row; as many attempts as delays.
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)

# The delay before sending again what ``unavailable`` refused, each time in a row; the last
# one is repeated: the chat is expected back, and a reconnect sends everything again anyway.
UNAVAILABLE_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 10.0)

# What an ``unavailable`` refusal shows, once until the chat answers again.
UNAVAILABLE_STATUS = "chat unavailable: will retry"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ChatClient(Console):
    """One run of the chat console: channels, the outbox, reconnecting.

    Args:
        options: from :func:`server.client.cli.parse_args`; the URI carries the identity.
        output: where to print.
        lines: what the user types (stdin's lines if omitted).
    """

    def __init__(
        self, options: Options, output: Output, lines: AsyncIterator[str] | None = None
    ) -> None:
        super().__init__(options, output, lines)
        self.channel = GENERAL  # where plain lines are published
        self.joined = {GENERAL}  # the channels to be in, again after a reconnect
        self.positions = Positions()
        self.outbox = Outbox()
        self.reconnect_delays: tuple[float, ...] = RECONNECT_DELAYS
        self.unavailable_delays: tuple[float, ...] = UNAVAILABLE_DELAYS
        self.gave_up = False
        self._ws: Connection | None = None  # while connected
        self._subscribing: set[str] = set()  # subscribes not answered yet
        self._resuming: set[str] = set()  # channels asked to resume, until they answer
        self._attempts = 0  # reconnects in a row without a message received
        self._retries: set[asyncio.Task[None]] = set()  # rate-limited messages, waiting
        # Refused as unavailable, to be sent again by one timer: clientMsgIds, channels.
        self._unavailable_ids: set[str] = set()
        self._unavailable_channels: set[str] = set()
        self._unavailable_timer: asyncio.Task[None] | None = None
        self._unavailable_count = 0  # such refusals in a row: the next delay's index
        self._unavailable_shown = False  # its status line, until an answer shows it back

    async def run(self) -> int:
        """Run the whole session and return the exit status: 1 if reconnecting gave up."""
        try:
            status = await super().run()
        finally:
            for task in self._retries:
                task.cancel()
            await asyncio.gather(*self._retries, return_exceptions=True)
        return EXIT_CONNECT if self.gave_up else status

    async def on_open(self, ws: Connection) -> None:
        """Be in the channels joined again, from where they stopped; send the outbox again."""
        self._ws = ws
        self._subscribing.clear()
        self._stop_unavailable_timer()  # every channel and message goes again here
        self._resuming = {GENERAL} if self.positions.since(GENERAL) is not None else set()
        if GENERAL not in self.joined:  # the server subscribes every client to it
            await ws.send(_dumps({"type": "unsubscribe", "channel": GENERAL}))
        for channel in sorted(self.joined - {GENERAL}):
            await self._subscribe(ws, channel)
        if self.outbox:
            self.output.status(f"sending again {len(self.outbox)} unconfirmed message(s)")
            for pending in self.outbox:  # as it is now: acks may come meanwhile
                await ws.send(pending.frame)

    def on_message(self, message: Data) -> None:
        """Take the positions, settle the outbox, print (a broadcast seen already: not again)."""
        self._attempts = 0
        event = parse_event(message)
        if event is None:
            self.output.message(message)
            return
        channel = channel_of(event)
        seen = event.get("type") == "broadcast" and not self.positions.is_new(
            channel, event.get("seq")
        )
        self.positions.note(event)
        if event.get("type") == "subscribed" and channel.startswith("dm:"):
            # The server subscribes both users to their pair's channel with its first
            # message: it is resumed after a reconnect like one joined.
            self.joined.add(channel)
        resuming = channel in self._resuming
        pending, show = self._settle(event)
        if self.options.json:
            self.output.message(message)
        elif not seen and show:
            self._show(message, event, pending, resuming=resuming)

    def _show(
        self, message: Data, event: Mapping[str, object], pending: Pending | None, *, resuming: bool
    ) -> None:
        """Print an event as short lines; one this client does not know, as it is."""
        lines = render.lines(event, pending, resuming=resuming)
        if lines is None:
            self.output.message(message)
        for line in lines or ():
            self.output.line(line)

    async def on_line(self, ws: Connection, line: str) -> None:
        """Do what a typed line asks: a command, or a message through the outbox."""
        try:
            command = commands.parse(line, self.channel)
        except commands.CommandError as exc:
            self.output.error(str(exc))
            return
        match command:
            case Publish() | Direct():
                await ws.send(self.outbox.add(command).frame)
            case Join(channel) if channel in self.joined:
                self.channel = channel
                self.output.status(f"already in {channel}; writing to it")
            case Join(channel):
                # As in IRC: the channel joined is the one written to.
                self.joined.add(channel)
                self.channel = channel
                await self._subscribe(ws, channel)
            case Leave(channel) if channel not in self.joined:
                self.output.error(f"not in {channel}")
            case Leave(channel):
                self.joined.discard(channel)
                self._subscribing.discard(channel)
                if self.channel == channel:
                    self.channel = GENERAL
                await ws.send(_dumps({"type": "unsubscribe", "channel": channel}))
            case Switch(channel):
                self.channel = channel
                hint = "" if channel in self.joined else f" (not joined: /join {channel})"
                self.output.status(f"writing to {channel}{hint}")
            case Who(channel):
                await ws.send(_dumps({"type": "presence", "channel": channel}))
            case Help():
                self.output.status(commands.HELP)

    async def reconnect(self, ended: Connection) -> tuple[Connection, str] | None:
        """After a drop or a server going away, connect again, waiting longer each time.

        Returns the connection and its URI; None when it is not worth it, on Ctrl-C, or
        when every attempt failed (``gave_up``).
        """
        self._ws = None
        self._stop_unavailable_timer()
        if not self._worth_reconnecting(ended):
            return None
        delays = self.reconnect_delays
        while self._attempts < len(delays):
            delay = delays[self._attempts]
            self._attempts += 1
            uri = resume_uri(self.options.uri, self.positions.since(GENERAL))
            self.output.status(
                f"reconnecting in {delay:g} s (attempt {self._attempts} of {len(delays)})"
            )
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.interrupted.wait()
                if not self.interrupted.is_set():
                    return await self.dial_until(uri, None), uri
            except asyncio.CancelledError:
                if not self.interrupted.is_set():
                    raise
            # A TimeoutError is an OSError; ValueError: a host name that cannot be encoded.
            except (OSError, ValueError, WebSocketError) as exc:
                self.output.error(describe_connect_error(exc, uri))
                continue
            self.output.leave_input_line(interrupted=True)
            self.output.error(f"interrupted while reconnecting to {redact_uri(uri)}")
            return None
        self.gave_up = True
        self.output.error(f"gave up after {len(delays)} attempts to reconnect")
        return None

    def _worth_reconnecting(self, ws: Connection) -> bool:
        """Whether the connection that just ended should be made again."""
        if self.interrupted.is_set() or self.input_ended:
            return False
        rcvd, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
        if rcvd is not None:
            return rcvd.code in RECONNECT_CODES
        # No close frame came: dropped, or failed by this side. A keepalive timeout (1011)
        # is a lost connection; a protocol error or a message over --max-size would only
        # happen again.
        return sent is None or sent.code == CloseCode.INTERNAL_ERROR

    async def _subscribe(self, ws: Connection, channel: str) -> None:
        """Subscribe to ``channel``, from where it stopped if it was seen before."""
        request: dict[str, object] = {"type": "subscribe", "channel": channel}
        if (since := self.positions.since(channel)) is not None:
            request["since"], request["epoch"] = since
            self._resuming.add(channel)
        self._subscribing.add(channel)
        await ws.send(_dumps(request))

    def _settle(self, event: Mapping[str, object]) -> tuple[Pending | None, bool]:
        """What an answer changes (the outbox, the subscriptions); the message it names, and
        whether to show the answer (not each ``unavailable`` that is retried)."""
        kind, channel = event.get("type"), channel_of(event)
        if kind in ("ack", "history", "subscribed"):
            # The chat answers: what it refused as unavailable waits the shortest again.
            self._unavailable_count = 0
            self._unavailable_shown = False
        if kind == "ack":
            return self.outbox.pop(event.get("clientMsgId")), True
        if kind in ("history", "subscribed"):
            self._subscribing.discard(channel)
            self._resuming.discard(channel)
        elif kind == "error":
            if event.get("code") == "unavailable" and self._unavailable(event, channel):
                return self.outbox.get(event.get("clientMsgId")), False
            return self._refused(event, channel), True
        return None, True

    def _unavailable(self, event: Mapping[str, object], channel: str) -> bool:
        """Keep what ``unavailable`` refused, to send it again later; whether it was ours."""
        pending = self.outbox.get(event.get("clientMsgId"))
        if pending is not None:
            self._unavailable_ids.add(pending.id)
        elif "channel" in event and channel in self._subscribing:
            self._subscribing.discard(channel)  # still joined: subscribed to again later
            self._unavailable_channels.add(channel)
        else:
            return False  # a presence, a message settled already: shown as it is
        if not self._unavailable_shown:
            self._unavailable_shown = True
            self.output.status(UNAVAILABLE_STATUS)
        if self._unavailable_timer is None:
            delays = self.unavailable_delays
            delay = delays[min(self._unavailable_count, len(delays) - 1)]
            self._unavailable_count += 1
            timer = asyncio.create_task(self._send_unavailable_again(self._ws, delay))
            self._unavailable_timer = timer
            self._retries.add(timer)
            timer.add_done_callback(self._retries.discard)
        return True

    async def _send_unavailable_again(self, ws: Connection | None, delay: float) -> None:
        """After ``delay``, subscribe and send again on ``ws`` what ``unavailable`` refused."""
        await asyncio.sleep(delay)
        self._unavailable_timer = None  # what is refused from now on waits for the next
        channels, ids = self._unavailable_channels, self._unavailable_ids
        self._unavailable_channels, self._unavailable_ids = set(), set()
        if ws is None or ws is not self._ws:
            return
        with contextlib.suppress(ConnectionClosed):
            for channel in sorted(channels):
                if channel in self.joined and channel not in self._subscribing:
                    await self._subscribe(ws, channel)
            for pending in self.outbox:  # oldest first, the same frames
                if pending.id in ids:
                    await ws.send(pending.frame)

    def _stop_unavailable_timer(self) -> None:
        """Forget what waits to be sent again: a new connection sends it all again."""
        if self._unavailable_timer is not None:
            self._unavailable_timer.cancel()
            self._unavailable_timer = None
        self._unavailable_channels.clear()
        self._unavailable_ids.clear()

    def _refused(self, event: Mapping[str, object], channel: str) -> Pending | None:
        """An error: a message it names leaves the outbox (rate_limited: sent again later)."""
        code, client_msg_id = event.get("code"), event.get("clientMsgId")
        if code == "rate_limited":
            pending = self.outbox.get(client_msg_id)
            if pending is not None:
                self._send_later(pending, retry_after(event))
            return pending
        pending = self.outbox.pop(client_msg_id)
        if pending is None and "channel" in event and channel in self._subscribing:
            self._subscribing.discard(channel)
            if code != "already_subscribed":
                self.joined.discard(channel)  # refused: not subscribed again after a reconnect
        return pending

    def _send_later(self, pending: Pending, delay: float) -> None:
        task = asyncio.create_task(self._resend(self._ws, pending, delay))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _resend(self, ws: Connection | None, pending: Pending, delay: float) -> None:
        """Send ``pending`` again on ``ws`` after ``delay``, unless a reconnect did already."""
        await asyncio.sleep(delay)
        if ws is not None and ws is self._ws and pending.id in self.outbox:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(pending.frame)
