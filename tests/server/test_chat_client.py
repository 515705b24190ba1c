"""Tests for server.client: ``python -m server.client URL``, the chat's console client.

The pure parts (commands, the outbox, resume positions, URIs, what is shown) are tested
alone. The session is tested in process against a fake chat server on ``rfc6455.serve``
that speaks issue 12's channel protocol, where every case can be staged (refusals, acks
held back), and against the real server: in process (general, channels, a lost ack sent
again and stored once), and as ``python -m server`` behind a proxy that cuts connections,
with ``python -m server.client`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import runpy
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

import rfc6455
from rfc6455 import Connection, Request, Response
from rfc6455.aio import console
from rfc6455.aio.console import Output
from rfc6455.handshake import reject
from server.client import ChatClient, cli, render
from server.client.commands import (
    CommandError,
    Direct,
    Help,
    Join,
    Leave,
    Publish,
    Switch,
    Who,
    parse,
)
from server.client.events import parse_event, retry_after
from server.client.outbox import Outbox, Pending
from server.client.positions import Positions
from server.client.uri import resume_uri, with_params
from tests.rfc6455.conftest import GUARD, HOST, Net, wait_until
from tests.server.support import Chat

pytestmark = pytest.mark.usefixtures("loop_errors")

REPO = Path(__file__).resolve().parents[2]
CLIENT_ID = "6b1f3c52-8a4e-4d6b-9e1a-0c2d3e4f5a6b"
TIME = r"\d\d:\d\d:\d\d"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


# What a line typed asks for


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello", Publish("dev", "hello")),
        ("  indented /join x", Publish("dev", "  indented /join x")),
        ("//join x", Publish("dev", "/join x")),
        ("/join ops.eu:1@a-b_c", Join("ops.eu:1@a-b_c")),
        ("/leave  general ", Leave("general")),
        ("/switch x", Switch("x")),
        ("/who", Who("dev")),
        ("/msg bob  hi  there ", Direct("bob", "hi  there")),
        ("/help", Help()),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_a_line(line: str, command: object) -> None:
    assert parse(line, "dev") == command


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/join", "usage: /join CHANNEL"),
        ("/join a b", "usage: /join CHANNEL"),
        ("/leave bad/name", "usage: /leave CHANNEL"),
        ("/switch " + "x" * 129, "usage: /switch CHANNEL"),
        ("/msg bob", "usage: /msg USER TEXT"),
        ("/msg bob   ", "usage: /msg USER TEXT"),
        ("/who dev", "usage: /who"),
        ("/help me", "usage: /help"),
        ("/jion dev", "unknown command /jion; commands: /join C"),
        ("/", "unknown command /;"),
    ],
)
def test_parse_a_wrong_command(line: str, message: str) -> None:
    with pytest.raises(CommandError) as error:
        parse(line, "dev")
    assert str(error.value).startswith(message)


# The outbox


def test_outbox_keeps_each_message_under_one_client_msg_id() -> None:
    outbox = Outbox()
    first = outbox.add(Publish("dev", "one"))
    second = outbox.add(Direct("bob", "two"))
    assert UUID4.fullmatch(first.id)
    assert first.id != second.id
    assert json.loads(first.frame) == {
        "type": "publish",
        "channel": "dev",
        "message": "one",
        "clientMsgId": first.id,
    }
    assert json.loads(second.frame) == {
        "type": "direct",
        "to": "bob",
        "message": "two",
        "clientMsgId": second.id,
    }
    assert first.frame == first.frame  # the same frame each time it is sent
    assert list(outbox) == [first, second]
    assert len(outbox) == 2
    assert outbox.get(first.id) is first
    assert outbox.pop(first.id) is first
    assert outbox.pop(first.id) is None  # a second ack settles nothing
    for other in (None, 7, ["x"], {"a": 1}, "unknown"):
        assert outbox.get(other) is None
        assert outbox.pop(other) is None
        assert other not in outbox
    assert list(outbox) == [second]


def test_outbox_iterates_over_what_it_held() -> None:
    outbox = Outbox()
    pending = [outbox.add(Publish("general", text)) for text in "abc"]
    for item in outbox:
        outbox.pop(item.id)  # an ack while the outbox is being sent again
    assert len(outbox) == 0
    assert [item.message.text for item in pending] == ["a", "b", "c"]


# Where each channel resumes from


def test_positions_follow_the_highest_seq_and_its_epoch() -> None:
    positions = Positions()
    assert positions.since("general") is None
    positions.note({"connectionId": "x"})
    positions.note({"type": "welcome", "epoch": "E/1"})
    assert positions.since("general") is None  # an epoch, no seq yet
    positions.note(
        {
            "type": "history",
            "epoch": "E/1",
            "messages": [{"seq": 3}, {"seq": 4}, "x", 5, {"seq": True}, {"seq": -1}],
            "recovered": False,
        }
    )
    assert positions.since("general") == (4, "E/1")
    for event in (
        {"type": "broadcast", "seq": 7},
        {"type": "ack", "seq": 9, "clientMsgId": "a"},  # today's acks name no channel
        {"type": "broadcast", "channel": "general", "seq": 8},  # lower: 9 stays
        {"type": "broadcast", "channel": "dev", "seq": 100},  # another channel's count
        {"type": "error", "code": "not_persisted", "seq": 50},  # never stored
        {"type": "broadcast", "seq": "100"},
        {"seq": 1000},
    ):
        positions.note(event)
    assert positions.since("general") == (9, "E/1")
    assert positions.since("dev") is None  # no epoch for it yet
    assert [positions.is_new("general", seq) for seq in (8, 9, 10, None, True)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert positions.is_new("dev", 100) is False
    assert positions.is_new("unknown", 1) is True


def test_positions_of_a_channel_subscribed() -> None:
    positions = Positions()
    subscribed = {"type": "subscribed", "channel": "dev", "epoch": "D", "recovered": True}
    positions.note({**subscribed, "messages": [{"seq": 1}, {"seq": 2}]})
    positions.note({"type": "ack", "channel": "dev", "seq": 3, "duplicate": True})
    assert positions.since("dev") == (3, "D")
    positions.note({**subscribed, "messages": [{"seq": 4}]})  # recovered: from 3 on
    assert positions.since("dev") == (4, "D")
    # A gap: the seqs are those of the messages given, even lower ones.
    positions.note({**subscribed, "recovered": False, "messages": [{"seq": 2}]})
    assert positions.since("dev") == (2, "D")
    positions.note({**subscribed, "recovered": False, "messages": []})
    assert positions.since("dev") is None
    positions.note({"type": "broadcast", "channel": "dev", "seq": 6})
    positions.note({**subscribed, "epoch": "D2", "messages": "none"})  # another database
    assert positions.since("dev") is None
    assert positions.since("general") is None


# The URI dialled


@pytest.mark.parametrize(
    ("uri", "since", "resumed"),
    [
        ("ws://h/", None, "ws://h/"),
        ("ws://h/?since=1&epoch=e", None, "ws://h/?since=1&epoch=e"),  # nothing known yet
        ("ws://h/", (0, "e"), "ws://h/?since=0&epoch=e"),
        ("ws://h", (7, "a b&c/d"), "ws://h?since=7&epoch=a%20b%26c%2Fd"),
        ("ws://h:1/p?since=1&a=%20&epoch=x&b", (9, "y"), "ws://h:1/p?a=%20&b&since=9&epoch=y"),
    ],
)
def test_resume_uri(uri: str, since: tuple[int, str] | None, resumed: str) -> None:
    assert resume_uri(uri, since) == resumed
    console.parse_args([resumed])  # still a valid URI


def test_with_params_replaces_those_of_the_same_name() -> None:
    uri = "wss://h/chat?clientId=old&room=1&name=x#frag"
    assert with_params(uri, {"clientId": "c", "name": "Ann Lee"}) == (
        "wss://h/chat?room=1&clientId=c&name=Ann%20Lee#frag"
    )


# What is shown


def pending(message: Publish | Direct) -> Pending:
    return Pending(message, id="m1")


@pytest.mark.parametrize(
    ("event", "message", "lines"),
    [
        ({"connectionId": "c0ffee00-1"}, None, ["* connection c0ffee00-1"]),
        ({"type": "welcome", "message": "Welcome!", "epoch": "E"}, None, ["* Welcome!"]),
        (
            {"type": "hello", "clientId": "9f0e", "name": "ann"},
            None,
            ["* you are ann"],
        ),
        (
            {
                "type": "history",
                "messages": [
                    {"type": "broadcast", "connectionId": "1a2b3c4d-5", "message": "hi"},
                    {"user": "bob", "connectionId": "x", "message": "a\nb"},
                ],
                "recovered": False,
            },
            None,
            ["[general] 2 earlier messages", "[general] 1a2b3c4d: hi", "[general] bob: a\nb"],
        ),
        (
            {"type": "history", "channel": "general", "messages": [], "recovered": True},
            None,
            ["[general] resumed, 0 missed messages"],
        ),
        (
            {
                "type": "subscribed",
                "channel": "dev",
                "messages": [{"clientId": "77aa88bb-c", "name": "cat", "message": 5}],
                "recovered": True,
                "presence": [{"user": "ann", "connections": 2}, {"connectionId": "abcdef123"}],
            },
            None,
            [
                "[dev] joined, resumed, 1 missed message",
                "[dev] cat: 5",
                "[dev] here: ann (2 connections), abcdef12",
            ],
        ),
        (
            {"type": "subscribed", "channel": "dev", "messages": [], "recovered": False},
            None,
            ["[dev] joined, 0 earlier messages"],
        ),
        (
            {"type": "broadcast", "channel": "dm:ann:bob", "user": "bob", "message": "psst"},
            None,
            ["[dm:ann:bob] bob: psst"],
        ),
        ({"type": "broadcast", "message": None}, None, ["[general] someone: null"]),
        (
            {"type": "ack", "seq": 3, "clientMsgId": "m1"},
            Publish("general", "hello"),
            ["[general] you: hello (✓ #3)"],
        ),
        (
            {"type": "ack", "channel": "dm:ann:bob", "seq": 1, "duplicate": True},
            Direct("bob", "psst"),
            ["[dm:ann:bob] you: psst (✓ #1, duplicate)"],
        ),
        ({"type": "ack", "seq": 4, "clientMsgId": "gone"}, None, ["[general] ✓ #4"]),
        (
            {
                "type": "error",
                "code": "invalid_message",
                "message": "too long",
                "clientMsgId": "m1",
            },
            Publish("dev", "x" * 100),
            [f'[dev] not sent "{"x" * 59}…": invalid_message: too long'],
        ),
        (
            {"type": "error", "code": "rate_limited", "retryAfterMs": 1500, "clientMsgId": "m1"},
            Direct("bob", "hi"),
            ['[@bob] rate limited: sending "hi" again in 1.5 s'],
        ),
        (
            {"type": "error", "code": "not_persisted", "seq": 9, "clientMsgId": "m1"},
            Publish("general", "lost"),
            ['[general] not stored "lost": not_persisted'],
        ),
        (
            {"type": "error", "code": "forbidden", "message": "no", "channel": "ops"},
            None,
            ["[ops] error forbidden: no"],
        ),
        (
            {"type": "error", "code": "unknown_type", "message": "what?", "clientMsgId": None},
            None,
            ["* error unknown_type: what?"],
        ),
        (
            {"type": "joined", "channel": "dev", "member": {"user": "ann", "connections": 1}},
            None,
            ["[dev] ann joined"],
        ),
        ({"type": "left", "channel": "dev", "member": {"name": "cat"}}, None, ["[dev] cat left"]),
        (
            {"type": "typing", "channel": "dev", "member": {"user": "ann"}},
            None,
            ["[dev] ann is typing…"],
        ),
        ({"type": "typing", "channel": "dev", "member": "?"}, None, ["[dev] someone is typing…"]),
        ({"type": "presence", "channel": "dev", "members": []}, None, ["[dev] here: nobody"]),
        ({"type": "unsubscribed", "channel": "dev"}, None, ["[dev] unsubscribed"]),
        (
            {"type": "user_left", "connectionId": "1a2b3c4d-9", "totalConnections": 1},
            None,
            ["[general] 1a2b3c4d left (1 connection open)"],
        ),
        (
            {
                "type": "users_left",
                "users": [{"user": "ann"}, {"connectionId": "1a2b3c4d-9"}],
                "more": 9,
                "totalConnections": 3,
            },
            None,
            ["[general] 11 people left: ann, 1a2b3c4d and 9 more (3 connections open)"],
        ),
        (
            {"type": "users_left", "users": [{"user": "ann"}], "more": "x"},
            None,
            ["[general] 1 person left: ann"],
        ),
        ({"type": "something_new"}, None, None),
        ({"no": "type"}, None, None),
    ],
)
def test_render(
    event: dict[str, Any], message: Publish | Direct | None, lines: list[str] | None
) -> None:
    assert render.lines(event, None if message is None else pending(message)) == lines


def test_render_a_failed_resume() -> None:
    event = {"type": "history", "messages": [{"user": "a", "message": "m"}], "recovered": False}
    assert render.lines(event, resuming=True) == [
        "[general] could not resume: the latest 1 message, some missed",
        "[general] a: m",
    ]


def test_events_read_defensively() -> None:
    assert parse_event('{"type": "ack"}') == {"type": "ack"}
    for message in (b"{}", "[1]", "not json", "[" * 100_000):
        assert parse_event(message) is None
    assert retry_after({"retryAfterMs": 250}) == 0.25
    assert retry_after({"retryAfterMs": -5}) == 0
    for bad in ({}, {"retryAfterMs": "1"}, {"retryAfterMs": True}, {"retryAfterMs": 1e400}):
        assert retry_after(bad) == 1.0


# The command line


def test_parse_args_puts_the_identity_in_the_uri() -> None:
    options = cli.parse_args(
        ["ws://h/?clientId=mine&x=1", "--client-id", CLIENT_ID.upper(), "--name", "Ann Lee"]
    )
    assert options.uri == f"ws://h/?x=1&clientId={CLIENT_ID}&name=Ann%20Lee"
    assert options.interactive
    generated = [parse_qs(cli.parse_args(["ws://h/"]).uri.split("?")[1]) for _ in range(2)]
    assert all(UUID4.fullmatch(query["clientId"][0]) for query in generated)
    assert generated[0] != generated[1]  # one per run
    assert "name" not in generated[0]
    options = cli.parse_args(["ws://h/", "--token", "t", "--json", "--linger", "0"])
    assert (options.headers, options.json, options.linger) == (
        (("Authorization", "Bearer t"),),
        True,
        0,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ws://h/", "--client-id", "nope"], "'nope' is not a UUID"),
        (["ws://h/", "--name", ""], "a name is 1-32 printable characters"),
        (["ws://h/", "--name", "x" * 33], "a name is 1-32 printable characters"),
        (["ws://h/", "--name", "a\nb"], "a name is 1-32 printable characters"),
        (["http://h/"], "not a ws:// or wss:// URI"),
        (["ws://h/", "--send", "x"], "unrecognized arguments: --send"),
        ([], "the following arguments are required: URI"),
    ],
)
def test_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == console.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("python -m server.client: error: ")
    assert message in err


def test_python_m_server_client_help(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["server.client", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("server.client", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m server.client ")
    for text in ("/join C", "/leave C", "/switch C", "/who", "/msg USER TEXT", "--client-id"):
        assert text in out
    assert "--resume" not in out  # it resumes by itself
    assert out.isascii()


# The session, in process, against a fake chat server that knows channels

Json = dict[str, Any]


@pytest.fixture
async def net(loop_errors: list[dict[str, Any]]) -> AsyncIterator[Net]:
    network = Net()
    try:
        yield network
    finally:
        await network.aclose()


class FakeChat:
    """Issue 12's channel protocol, as far as the client goes: a server for these tests.

    Each channel has an epoch, a seq count and its messages; a clientMsgId is stored once
    per channel, and a repeat gets the original seq with ``"duplicate": true``. With
    ``hold_acks``, messages are stored and not acknowledged, as when the ack is lost in a
    drop. ``refusals`` maps a channel (subscribe) or a text (publish) to the error it gets,
    once. During an ``outage``, that many subscribes and messages get ``unavailable``, as
    from a server whose engine (Redis) cannot be reached.
    """

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.frames: list[list[Json]] = []  # what each connection sent, parsed
        self.channels: dict[str, list[Json]] = {}
        self.hold_acks = False
        self.refusals: dict[str, Json] = {}
        self.outage = 0
        self._stored: dict[tuple[str, str], int] = {}
        self._members: dict[Connection, set[str]] = {}

    @staticmethod
    def epoch(channel: str) -> str:
        return f"epoch-of-{channel}"

    def process_request(self, request: Request) -> None:
        self.requests.append(request)

    async def handler(self, ws: Connection) -> None:
        assert ws.request is not None
        frames: list[Json] = []
        self.frames.append(frames)
        self._members[ws] = {"general"}
        query = {name: values[0] for name, values in parse_qs(ws.request.query).items()}
        since = int(query["since"]) if "since" in query else None
        await ws.send(json.dumps({"connectionId": str(uuid.uuid4())}))
        await ws.send(
            json.dumps({"type": "welcome", "message": "hi", "epoch": self.epoch("general")})
        )
        history = self._after("general", since, query.get("epoch"))
        await ws.send(json.dumps({"type": "history", "channel": "general", **history}))
        with contextlib.suppress(rfc6455.ConnectionClosed):
            async for text in ws:
                frame = json.loads(text)
                frames.append(frame)
                for reply in await self._answer(ws, frame):
                    await ws.send(json.dumps(reply))
        del self._members[ws]

    async def publish(
        self, channel: str, text: str, by: Connection | None = None, **sender: str
    ) -> int:
        """Store ``text`` in ``channel`` and send it to its members but ``by``; its seq."""
        messages = self.channels.setdefault(channel, [])
        item = {"type": "broadcast", "channel": channel, "message": text, "seq": len(messages) + 1}
        item.update(sender or {"user": "bob"})
        messages.append(item)
        for ws, channels in list(self._members.items()):
            if ws is not by and channel in channels:
                with contextlib.suppress(rfc6455.ConnectionClosed):
                    await ws.send(json.dumps(item))
        return len(messages)

    def drop(self) -> None:
        """Cut every connection: no close frame, the clients see 1006."""
        for ws in list(self._members):
            ws.abort()

    def _after(self, channel: str, since: object, epoch: object) -> Json:
        messages = self.channels.get(channel, [])
        recovered = isinstance(since, int) and epoch == self.epoch(channel)
        after = [item for item in messages if item["seq"] > since] if recovered else messages
        return {"messages": after, "epoch": self.epoch(channel), "recovered": recovered}

    async def _answer(self, ws: Connection, frame: Json) -> list[Json]:
        kind, channel, mine = frame.get("type"), frame.get("channel", ""), self._members[ws]
        if self.outage and kind in ("subscribe", "publish", "direct"):
            self.outage -= 1
            return [
                {
                    "type": "error",
                    "code": "unavailable",
                    "message": "the chat cannot reach its engine: send it again",
                    "clientMsgId": frame.get("clientMsgId"),
                    "channel": channel,
                }
            ]
        if kind == "subscribe":
            if (refusal := self.refusals.pop(channel, None)) is not None:
                return [{"type": "error", **refusal, "clientMsgId": None, "channel": channel}]
            mine.add(channel)
            after = self._after(channel, frame.get("since"), frame.get("epoch"))
            return [{"type": "subscribed", "channel": channel, **after, "lastRead": None}]
        if kind == "unsubscribe":
            mine.discard(channel)
            return [{"type": "unsubscribed", "channel": channel}]
        if kind == "presence":
            members = [{"name": "ann", "connections": 2}, {"user": "bob", "connections": 1}]
            return [{"type": "presence", "channel": channel, "members": members}]
        assert kind in ("publish", "direct"), frame
        client_msg_id = frame["clientMsgId"]
        if kind == "direct":
            channel = "dm:" + ":".join(sorted(["ann", frame["to"]]))
            mine.add(channel)
        if (refusal := self.refusals.pop(frame["message"], None)) is not None:
            return [{"type": "error", **refusal, "clientMsgId": client_msg_id, "channel": channel}]
        if channel not in mine:
            error = {"code": "not_subscribed", "message": f"not in {channel}"}
            return [{"type": "error", **error, "clientMsgId": client_msg_id, "channel": channel}]
        ack = {"type": "ack", "channel": channel, "clientMsgId": client_msg_id}
        if (seq := self._stored.get((channel, client_msg_id))) is not None:
            return [{**ack, "seq": seq, "duplicate": True}]
        sender = {"clientId": CLIENT_ID, "connectionId": "c0nnecti0n"}
        seq = self._stored[channel, client_msg_id] = await self.publish(
            channel, frame["message"], ws, **sender
        )
        return [] if self.hold_acks else [{**ack, "seq": seq}]


async def fake_chat(net: Net) -> tuple[FakeChat, str]:
    fake = FakeChat()
    server = await net.serve(fake.handler, process_request=fake.process_request)
    return fake, net.uri(server)


class Keyboard:
    """What the user types: lines put in by the test, then the end of input."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()

    def type(self, *lines: str) -> None:
        for line in lines:
            self._queue.put_nowait(line)

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def lines(self) -> AsyncIterator[str]:
        while (line := await self._queue.get()) is not None:
            yield line


def make_client(uri: str, keyboard: Keyboard, *args: str) -> ChatClient:
    """A chat client on ``uri`` with this test's clientId, printing to StringIO."""
    options = cli.parse_args([uri, "--client-id", CLIENT_ID, "--linger", "0", *args])
    output = Output(io.StringIO(), io.StringIO(), json_lines=options.json, prog="chat")
    client = ChatClient(options, output, keyboard.lines())
    client.reconnect_delays = (0.01, 0.01)
    return client


def printed(client: ChatClient) -> tuple[str, str]:
    out, err = client.output.stdout, client.output.stderr
    assert isinstance(out, io.StringIO)
    assert isinstance(err, io.StringIO)
    return out.getvalue(), err.getvalue()


def shown(client: ChatClient) -> list[str]:
    """What stdout shows, without the times (further lines of a message are indented)."""
    lines = printed(client)[0].splitlines()
    assert all(re.match(f"({TIME}| {{8}}) ", line) for line in lines), lines
    return [line[9:] for line in lines]


def status(client: ChatClient) -> list[str]:
    return printed(client)[1].splitlines()


async def finished(running: asyncio.Task[int]) -> int:
    async with asyncio.timeout(GUARD):
        return await running


async def send_all(ws: Connection, *events: Json) -> None:
    for event in events:
        await ws.send(json.dumps(event))


async def run_to_end(client: ChatClient) -> int:
    return await finished(asyncio.create_task(client.run()))


def without_ids(frames: Iterable[Json]) -> list[Json]:
    """The frames with each clientMsgId checked to be a uuid4, then left out."""
    found = []
    for frame in frames:
        if "clientMsgId" in frame:
            assert UUID4.fullmatch(frame["clientMsgId"]), frame
        found.append({key: value for key, value in frame.items() if key != "clientMsgId"})
    return found


async def test_commands(net: Net) -> None:
    fake, uri = await fake_chat(net)
    keyboard = Keyboard()
    client = make_client(uri, keyboard)
    running = asyncio.create_task(client.run())
    keyboard.type("/join dev")
    await wait_until(lambda: "[dev] joined, 0 earlier messages" in shown(client))
    keyboard.type("/switch dev", "hi dev", "", "/bogus", "/who", "/msg bob psst")
    keyboard.type("/join general", "/leave nowhere", "/help", "/leave dev")
    await wait_until(lambda: "[dev] unsubscribed" in shown(client))
    keyboard.type("/switch dev")
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    (frames,) = fake.frames
    assert without_ids(frames) == [
        {"type": "subscribe", "channel": "dev"},
        {"type": "publish", "channel": "dev", "message": "hi dev"},
        {"type": "presence", "channel": "dev"},
        {"type": "direct", "to": "bob", "message": "psst"},
        {"type": "unsubscribe", "channel": "dev"},
    ]
    assert shown(client)[2:] == [
        "[general] 0 earlier messages",
        "[dev] joined, 0 earlier messages",
        "[dev] you: hi dev (✓ #1)",
        "[dev] here: ann (2 connections), bob",
        "[dm:ann:bob] you: psst (✓ #1)",
        "[dev] unsubscribed",
    ]
    err = status(client)
    assert "writing to dev" in err
    assert (
        "chat: unknown command /bogus; commands: /join C, /leave C, /switch C, /who, "
        in (printed(client)[1])
    )
    assert "already in general; writing to it" in err
    assert "chat: not in nowhere" in err
    assert any(line.startswith("commands: /join C") for line in err)
    assert "writing to dev (not joined: /join dev)" in err
    assert len(client.outbox) == 0
    assert client.joined == {"general"}
    assert fake.requests[0].query == f"clientId={CLIENT_ID}"


async def test_a_channel_seen_before_is_joined_from_where_it_stopped(net: Net) -> None:
    fake, uri = await fake_chat(net)
    keyboard = Keyboard()
    client = make_client(uri, keyboard)
    running = asyncio.create_task(client.run())
    keyboard.type("/join dev")
    await wait_until(lambda: "[dev] joined, 0 earlier messages" in shown(client))
    await fake.publish("dev", "one")
    await fake.publish("dev", "two", name="cat")
    await wait_until(lambda: "[dev] cat: two" in shown(client))
    keyboard.type("/leave dev")
    await wait_until(lambda: "[dev] unsubscribed" in shown(client))
    await fake.publish("dev", "three")  # while it was away
    keyboard.type("/join dev")
    await wait_until(lambda: "[dev] bob: three" in shown(client))
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    assert fake.frames[0][-1] == {
        "type": "subscribe",
        "channel": "dev",
        "since": 2,
        "epoch": "epoch-of-dev",
    }
    assert shown(client)[-5:] == [
        "[dev] bob: one",
        "[dev] cat: two",
        "[dev] unsubscribed",
        "[dev] joined, resumed, 1 missed message",
        "[dev] bob: three",
    ]


async def test_after_a_drop_the_channels_resume_and_the_outbox_is_sent_again(net: Net) -> None:
    """Exactly once: a message whose ack was lost is sent again with its clientMsgId."""
    fake, uri = await fake_chat(net)
    fake.refusals["ops"] = {"code": "forbidden", "message": "not for you"}
    keyboard = Keyboard()
    client = make_client(uri, keyboard)
    running = asyncio.create_task(client.run())
    keyboard.type("/join dev", "/join ops")
    await wait_until(lambda: "[ops] error forbidden: not for you" in shown(client))
    await fake.publish("general", "g1")
    await fake.publish("dev", "d1")
    await wait_until(lambda: "[dev] bob: d1" in shown(client))
    keyboard.type("/leave general", "/switch dev")
    fake.hold_acks = True
    keyboard.type("lost ack")
    await wait_until(lambda: len(fake.channels["dev"]) == 2)  # stored, not acknowledged
    fake.hold_acks = False
    fake.drop()
    await wait_until(lambda: "[dev] you: lost ack (✓ #2, duplicate)" in shown(client))
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    first, second = fake.frames
    publish = first[-1]
    assert publish["message"] == "lost ack"
    # general through the URI (and left again), every other channel joined from its seq,
    # not the one refused; then the message, its clientMsgId the same.
    assert fake.requests[1].query == f"clientId={CLIENT_ID}&since=1&epoch=epoch-of-general"
    assert second == [
        {"type": "unsubscribe", "channel": "general"},
        {"type": "subscribe", "channel": "dev", "since": 1, "epoch": "epoch-of-dev"},
        publish,
    ]
    assert [item["message"] for item in fake.channels["dev"]] == ["d1", "lost ack"]
    assert len(client.outbox) == 0
    assert client.joined == {"dev"}
    assert "sending again 1 unconfirmed message(s)" in status(client)
    assert "connection lost: 1006 (abnormal closure)" in status(client)


async def test_a_direct_channel_is_resumed_after_a_drop(net: Net) -> None:
    """The server subscribes a user to the pair's channel with its first message."""
    fake, uri = await fake_chat(net)
    keyboard = Keyboard()
    client = make_client(uri, keyboard)
    running = asyncio.create_task(client.run())
    await wait_until(
        lambda: fake.frames and "general" in fake._members.get(next(iter(fake._members)), set())
    )
    (ws,) = fake._members
    fake._members[ws].add("dm:ann:bob")
    history = fake._after("dm:ann:bob", None, None)
    await ws.send(json.dumps({"type": "subscribed", "channel": "dm:ann:bob", **history}))
    await fake.publish("dm:ann:bob", "psst")
    await wait_until(lambda: "[dm:ann:bob] bob: psst" in shown(client))
    fake.drop()
    await wait_until(lambda: len(fake.frames) == 2 and fake.frames[1])
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    assert fake.frames[1][0] == {
        "type": "subscribe",
        "channel": "dm:ann:bob",
        "since": 1,
        "epoch": "epoch-of-dm:ann:bob",
    }


async def test_lines_typed_while_disconnected_go_out_once_reconnected(net: Net) -> None:
    fake, uri = await fake_chat(net)
    keyboard = Keyboard()
    client = make_client(uri, keyboard)
    client.reconnect_delays = (0.2,)
    running = asyncio.create_task(client.run())
    await wait_until(lambda: "[general] 0 earlier messages" in shown(client))
    fake.drop()
    await wait_until(lambda: any(line.startswith("reconnecting") for line in status(client)))
    keyboard.type("typed while away")
    await wait_until(lambda: "[general] you: typed while away (✓ #1)" in shown(client))
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    first, second = fake.frames
    assert first == []
    assert without_ids(second) == [
        {"type": "publish", "channel": "general", "message": "typed while away"}
    ]


async def test_an_error_naming_a_message_takes_it_out_of_the_outbox(net: Net) -> None:
    fake, uri = await fake_chat(net)
    fake.refusals["bad"] = {"code": "invalid_message", "message": "a message must not be bad"}
    keyboard = Keyboard()
    client = make_client(uri, keyboard)
    running = asyncio.create_task(client.run())
    keyboard.type("bad", "/switch nowhere", "lost")
    await wait_until(lambda: len(shown(client)) == 5)  # greeted, then the two errors
    fake.drop()
    await wait_until(lambda: len(fake.frames) == 2)
    keyboard.type("/who")
    await wait_until(lambda: fake.frames[1] == [{"type": "presence", "channel": "nowhere"}])
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    assert shown(client)[3:5] == [
        '[general] not sent "bad": invalid_message: a message must not be bad',
        '[nowhere] not sent "lost": not_subscribed: not in nowhere',
    ]
    assert len(client.outbox) == 0


async def test_rate_limited_is_sent_again_after_retry_after(net: Net) -> None:
    fake, uri = await fake_chat(net)
    fake.refusals["slow"] = {"code": "rate_limited", "retryAfterMs": 10}
    keyboard = Keyboard()
    client = make_client(uri, keyboard)
    running = asyncio.create_task(client.run())
    keyboard.type("slow")
    await wait_until(lambda: "[general] you: slow (✓ #1)" in shown(client))
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    (frames,) = fake.frames
    assert len(frames) == 2
    assert frames[0] == frames[1]  # the same clientMsgId
    assert shown(client)[3] == '[general] rate limited: sending "slow" again in 0.01 s'


async def test_rate_limited_then_a_drop(net: Net) -> None:
    """Sent again by the reconnect, not by the timer of the connection that dropped."""
    fake, uri = await fake_chat(net)
    fake.refusals["slow"] = {"code": "rate_limited", "retryAfterMs": 60_000}
    keyboard = Keyboard()
    client = make_client(uri, keyboard)
    running = asyncio.create_task(client.run())
    keyboard.type("slow")
    await wait_until(lambda: "rate limited" in printed(client)[0])
    fake.drop()
    await wait_until(lambda: "[general] you: slow (✓ #1)" in shown(client))
    keyboard.end()
    assert await finished(running) == console.EXIT_OK  # its timer cancelled
    assert fake.frames[0] == fake.frames[1]


def unavailable_delays(client: ChatClient, delays: tuple[float, ...]) -> list[float]:
    """Give ``client`` these delays after ``unavailable``; the list of those it waits."""
    client.unavailable_delays = delays
    waited: list[float] = []
    send_again = client._send_unavailable_again

    async def spy(ws: Connection | None, delay: float) -> None:
        waited.append(delay)
        await send_again(ws, delay)

    client._send_unavailable_again = spy  # type: ignore[method-assign]
    return waited


async def test_unavailable_is_sent_again_after_a_backoff(net: Net) -> None:
    """The same frame after each delay, the last repeated; an ack starts them again."""
    fake, uri = await fake_chat(net)
    keyboard = Keyboard()
    client = make_client(uri, keyboard)
    waited = unavailable_delays(client, (0.01, 0.02))
    running = asyncio.create_task(client.run())
    await wait_until(lambda: "[general] 0 earlier messages" in shown(client))
    fake.outage = 3
    keyboard.type("one")
    await wait_until(lambda: "[general] you: one (✓ #1)" in shown(client))
    assert waited == [0.01, 0.02, 0.02]
    fake.outage = 1
    keyboard.type("two")
    await wait_until(lambda: "[general] you: two (✓ #2)" in shown(client))
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    assert waited == [0.01, 0.02, 0.02, 0.01]
    (frames,) = fake.frames
    assert [frame["message"] for frame in frames] == ["one"] * 4 + ["two"] * 2
    assert frames[0] == frames[3]  # the same clientMsgId each time
    assert [item["message"] for item in fake.channels["general"]] == ["one", "two"]
    assert shown(client)[3:] == ["[general] you: one (✓ #1)", "[general] you: two (✓ #2)"]
    # One status line for each outage, not one for each refusal.
    assert status(client).count("chat unavailable: will retry") == 2
    assert len(client.outbox) == 0


async def test_unavailable_messages_and_subscribes_are_kept(net: Net) -> None:
    """Several refused in one outage: one status line, each sent again, stored once."""
    fake, uri = await fake_chat(net)
    keyboard = Keyboard()
    client = make_client(uri, keyboard)
    unavailable_delays(client, (0.01,))
    running = asyncio.create_task(client.run())
    await wait_until(lambda: "[general] 0 earlier messages" in shown(client))
    fake.outage = 4
    keyboard.type("one", "/msg bob two", "/join dev", "three")
    await wait_until(lambda: "[dev] you: three (✓ #1)" in shown(client))
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    (frames,) = fake.frames
    assert without_ids(frames[:4]) == [
        {"type": "publish", "channel": "general", "message": "one"},
        {"type": "direct", "to": "bob", "message": "two"},
        {"type": "subscribe", "channel": "dev"},
        {"type": "publish", "channel": "dev", "message": "three"},
    ]
    assert sorted(map(json.dumps, frames[4:])) == sorted(map(json.dumps, frames[:4]))
    assert [item["message"] for item in fake.channels["general"]] == ["one"]
    assert [item["message"] for item in fake.channels["dm:ann:bob"]] == ["two"]
    assert [item["message"] for item in fake.channels["dev"]] == ["three"]
    assert set(shown(client)[3:]) == {
        "[general] you: one (✓ #1)",
        "[dm:ann:bob] you: two (✓ #1)",
        "[dev] joined, 0 earlier messages",
        "[dev] you: three (✓ #1)",
    }
    assert status(client).count("chat unavailable: will retry") == 1
    assert not any("not sent" in line or "unavailable" in line for line in shown(client))
    assert client.joined == {"general", "dev"}
    assert len(client.outbox) == 0


async def test_unavailable_then_a_drop(net: Net) -> None:
    """Sent again by the reconnect, not by the timer of the connection that dropped."""
    fake, uri = await fake_chat(net)
    keyboard = Keyboard()
    client = make_client(uri, keyboard)
    unavailable_delays(client, (60.0,))
    running = asyncio.create_task(client.run())
    await wait_until(lambda: "[general] 0 earlier messages" in shown(client))
    fake.outage = 1
    keyboard.type("held")
    await wait_until(lambda: "chat unavailable: will retry" in status(client))
    fake.drop()
    await wait_until(lambda: "[general] you: held (✓ #1)" in shown(client))
    keyboard.end()
    assert await finished(running) == console.EXIT_OK  # its timer cancelled
    assert fake.frames[0] == fake.frames[1]
    assert len(fake.frames[1]) == 1


async def test_json_prints_what_the_server_sent(net: Net) -> None:
    _, uri = await fake_chat(net)
    keyboard = Keyboard()
    client = make_client(uri, keyboard, "--json")
    running = asyncio.create_task(client.run())
    keyboard.type("hi")
    await wait_until(lambda: '"type": "ack"' in printed(client)[0])
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    lines = [json.loads(line) for line in printed(client)[0].splitlines()]
    assert [line["type"] for line in lines] == ["text"] * 4
    connection, welcome, history, ack = (line["data"] for line in lines)
    assert set(connection) == {"connectionId"}
    assert welcome["type"] == "welcome"
    assert history["type"] == "history"
    assert ack == {"type": "ack", "channel": "general", "clientMsgId": ack["clientMsgId"], "seq": 1}
    assert len(client.outbox) == 0


async def test_what_is_not_a_chat_event_is_printed_as_it_is(net: Net) -> None:
    async def odd(ws: Connection) -> None:
        await ws.send('{"type": "new_kind", "n": 1}')
        await ws.send("plain text")
        await ws.send(b"\x01\x02")
        await ws.close(1000)

    server = await net.serve(odd)
    client = make_client(net.uri(server), Keyboard())
    assert await finished(asyncio.create_task(client.run())) == console.EXIT_OK
    assert shown(client) == [
        "{",
        '  "type": "new_kind",',
        '  "n": 1',
        "}",
        "plain text",
        "[binary, 2 bytes] 01 02",
    ]


async def test_a_broadcast_shown_already_is_not_shown_again(net: Net) -> None:
    """One whose seq is not above the highest seen in its channel; --json prints it still."""

    async def handler(ws: Connection) -> None:
        await send_all(
            ws,
            {"type": "welcome", "epoch": "e"},
            {"type": "history", "messages": [{"seq": 2, "user": "a", "message": "two"}]},
            {"type": "broadcast", "seq": 2, "user": "a", "message": "two"},
            {"type": "broadcast", "seq": 1, "user": "a", "message": "one"},
            {"type": "broadcast", "channel": "dev", "seq": 1, "user": "a", "message": "dev one"},
            {"type": "broadcast", "seq": 3, "user": "a", "message": "three"},
        )
        await ws.close(1000)

    server = await net.serve(handler)
    readable = make_client(net.uri(server), Keyboard())
    assert await run_to_end(readable) == console.EXIT_OK
    assert shown(readable)[-4:] == [
        "[general] 1 earlier message",
        "[general] a: two",
        "[dev] a: dev one",
        "[general] a: three",
    ]
    raw = make_client(net.uri(server), Keyboard(), "--json")
    assert await run_to_end(raw) == console.EXIT_OK
    assert len(printed(raw)[0].splitlines()) == 6


# Reconnecting: when, where to, how often


class Scripted:
    """A server that plays one handler per connection and records each request."""

    def __init__(self, *handlers: Callable[[Connection], Any]) -> None:
        self.handlers = list(handlers)
        self.requests: list[Request] = []

    def process_request(self, request: Request) -> Response | None:
        self.requests.append(request)
        if len(self.requests) > len(self.handlers):
            return reject(503, "no more connections in this script")
        return None

    async def handler(self, ws: Connection) -> None:
        await self.handlers[len(self.requests) - 1](ws)

    @property
    def queries(self) -> list[str]:
        return [request.query for request in self.requests]


async def scripted(net: Net, *handlers: Callable[[Connection], Any]) -> tuple[Scripted, str]:
    script = Scripted(*handlers)
    server = await net.serve(script.handler, process_request=script.process_request)
    return script, net.uri(server, "/room?x=1")


async def test_reconnects_resuming_general_with_since_and_epoch(net: Net) -> None:
    """The highest seq of general, the last epoch; the other query parameters kept."""

    async def first(ws: Connection) -> None:
        await send_all(
            ws,
            {"connectionId": "c1"},
            {"type": "welcome", "message": "hi", "epoch": "E/1"},
            {"type": "history", "epoch": "E/1", "messages": [{"seq": 3}, {"seq": 4}]},
            {"type": "broadcast", "seq": 7},
            {"type": "ack", "seq": 9, "clientMsgId": "not ours"},
            {"type": "broadcast", "seq": 8},
            {"type": "broadcast", "channel": "dev", "seq": 100},
        )
        await ws.close(1001, "restarting")

    async def second(ws: Connection) -> None:
        await ws.send('{"type": "history", "recovered": true, "messages": []}')
        await ws.wait_closed()

    script, uri = await scripted(net, first, second)
    uri = uri.replace("?x=1", "?since=2&x=1&epoch=old")
    keyboard = Keyboard()
    client = make_client(uri, keyboard)
    running = asyncio.create_task(client.run())
    await wait_until(lambda: "[general] resumed, 0 missed messages" in shown(client))
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    assert script.queries == [
        f"since=2&x=1&epoch=old&clientId={CLIENT_ID}",
        f"x=1&clientId={CLIENT_ID}&since=9&epoch=E%2F1",
    ]
    dialled = uri.split("?")[0] + "?" + script.queries[1]
    assert status(client) == [
        f"connected to {uri}&clientId={CLIENT_ID}",
        'closed by server: 1001 (going away) "restarting"',
        "reconnecting in 0.01 s (attempt 1 of 2)",
        f"connected to {dialled}",
        "closing: 1000 (normal closure)",
        "closed: server answered 1000 (normal closure)",
    ]


async def test_reconnects_after_a_drop_and_forgets_the_seqs_of_another_epoch(net: Net) -> None:
    async def first(ws: Connection) -> None:
        await send_all(ws, {"type": "welcome", "epoch": "A"}, {"type": "broadcast", "seq": 5})
        ws.abort()  # 1006

    async def second(ws: Connection) -> None:
        # Another database: seq 5 of epoch A means nothing in epoch B.
        await send_all(
            ws,
            {"type": "welcome", "epoch": "B"},
            {"type": "history", "messages": [{"seq": 1}, {"seq": 2}], "recovered": False},
        )
        await ws.close(1011, "oops")

    async def third(ws: Connection) -> None:
        await ws.send('{"type": "broadcast", "seq": 3}')
        await ws.close(1000)

    script, uri = await scripted(net, first, second, third)
    client = make_client(uri, Keyboard())
    assert await run_to_end(client) == console.EXIT_OK
    identity = f"x=1&clientId={CLIENT_ID}"
    assert script.queries == [
        identity,
        f"{identity}&since=5&epoch=A",
        f"{identity}&since=2&epoch=B",
    ]
    assert client.positions.since("general") == (3, "B")
    err = status(client)
    assert "connection lost: 1006 (abnormal closure)" in err
    assert 'closed by server: 1011 (internal error) "oops"' in err
    assert err[-1] == "closed by server: 1000 (normal closure)"
    assert "[general] could not resume: the latest 2 messages, some missed" in shown(client)


@pytest.mark.parametrize("code", [1000, 1003, 1008, 4000])
async def test_no_reconnect_after_a_deliberate_close(net: Net, code: int) -> None:
    async def first(ws: Connection) -> None:
        await send_all(ws, {"type": "welcome", "epoch": "e"}, {"type": "broadcast", "seq": 1})
        await ws.close(code)

    script, uri = await scripted(net, first)
    client = make_client(uri, Keyboard())
    await run_to_end(client)
    assert len(script.requests) == 1
    assert not any(line.startswith("reconnecting") for line in status(client))


async def test_no_reconnect_after_a_failure_of_our_own(net: Net) -> None:
    async def first(ws: Connection) -> None:
        await ws.send("x" * 101)
        await ws.wait_closed()

    script, uri = await scripted(net, first)
    client = make_client(uri, Keyboard(), "--max-size", "100")
    assert await run_to_end(client) == console.EXIT_CLOSED
    assert len(script.requests) == 1
    assert status(client)[-1].startswith("connection failed: sent 1009 (message too big)")


SECRET_QUERY = "access_token=s3cr3t-one&room=lobby"


async def test_gives_up_after_the_attempts_and_redacts(net: Net) -> None:
    async def first(ws: Connection) -> None:
        await send_all(ws, {"type": "welcome", "epoch": "e"}, {"type": "broadcast", "seq": 1})
        await ws.close(1012, "restart")

    script, uri = await scripted(net, first)  # later connections: 503
    client = make_client(f"{uri}&{SECRET_QUERY}", Keyboard())
    assert await run_to_end(client) == console.EXIT_CONNECT
    assert len(script.requests) == 3
    assert script.queries[1] == f"x=1&{SECRET_QUERY}&clientId={CLIENT_ID}&since=1&epoch=e"
    redacted = f"{uri}&access_token=REDACTED&room=lobby&clientId={CLIENT_ID}&since=1&epoch=e"
    assert status(client)[-3:] == [
        "reconnecting in 0.01 s (attempt 2 of 2)",
        f"chat: handshake with {redacted} refused: "
        "503 Service Unavailable: no more connections in this script",
        "chat: gave up after 2 attempts to reconnect",
    ]
    assert "s3cr3t" not in printed(client)[1]


async def test_the_attempts_are_counted_again_once_a_message_arrives(net: Net) -> None:
    async def drops(ws: Connection) -> None:
        await ws.send('{"type": "broadcast", "seq": 1}')
        ws.abort()

    script, uri = await scripted(net, drops, drops, drops)
    client = make_client(uri, Keyboard())
    assert await run_to_end(client) == console.EXIT_CONNECT
    assert len(script.requests) == 5  # three that worked, then the two attempts of the last
    assert status(client).count("reconnecting in 0.01 s (attempt 1 of 2)") == 3


async def test_no_reconnect_after_the_end_of_input(net: Net) -> None:
    """A drop while lingering after the end of input: the session is over."""

    async def drops(ws: Connection) -> None:
        await ws.recv()
        ws.abort()

    script, uri = await scripted(net, drops, drops)
    keyboard = Keyboard()
    keyboard.type("one")
    keyboard.end()
    client = make_client(uri, keyboard, "--linger", str(GUARD * 10))
    assert await run_to_end(client) == console.EXIT_CLOSED
    assert status(client)[-1] == "connection lost: 1006 (abnormal closure)"
    assert len(script.requests) == 1
    assert len(client.outbox) == 1  # never acknowledged


async def test_interrupted_while_waiting_to_reconnect(net: Net) -> None:
    async def first(ws: Connection) -> None:
        await ws.close(1012)

    script, uri = await scripted(net, first)
    client = make_client(uri, Keyboard())
    client.reconnect_delays = (GUARD,)
    running = asyncio.create_task(client.run())
    await wait_until(lambda: any(line.startswith("reconnecting") for line in status(client)))
    client.interrupt()
    async with asyncio.timeout(GUARD / 2):
        assert await running == console.EXIT_CLOSED  # how the last connection ended: 1012
    assert (
        status(client)[-1] == f"chat: interrupted while reconnecting to {uri}&clientId={CLIENT_ID}"
    )
    assert len(script.requests) == 1


# Against the real chat server


async def test_against_the_chat_server(chat: Chat) -> None:
    """Today's server: the publish form in general, its acks, the others' messages."""
    other = await chat.join()
    keyboard = Keyboard()
    client = make_client(chat.url(), keyboard, "--name", "ann")
    running = asyncio.create_task(client.run())
    await wait_until(lambda: "[general] 0 earlier messages" in shown(client))
    await other.send("hi from the other")
    await wait_until(lambda: f"[general] {other.id[:8]}: hi from the other" in shown(client))
    keyboard.type("hello")
    broadcast = await other.recv()
    assert (broadcast["type"], broadcast["message"]) == ("broadcast", "hello")
    await wait_until(lambda: "[general] you: hello (✓ #2)" in shown(client))
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    assert client.positions.since("general") == (2, chat.app.queue.meta.epoch)
    assert len(client.outbox) == 0
    left = await other.recv()
    assert (left["type"], left["closeStatus"]) == ("user_left", 1000)


async def test_channels_against_the_chat_server(chat: Chat) -> None:
    other = await chat.connect("/?clientId=0d5c2b8e-3f41-4a7e-9c6d-2b1a0f9e8d7c&name=bob")

    async def other_gets(kind: str) -> Json:
        """The next message of that type that the other client receives."""
        async with asyncio.timeout(GUARD):
            while (message := parse_event(await other.recv())) is None or message.get(
                "type"
            ) != kind:
                pass
        return message

    await other.send(json.dumps({"type": "subscribe", "channel": "dev"}))
    await other_gets("subscribed")
    keyboard = Keyboard()
    client = make_client(chat.url(), keyboard, "--name", "ann")
    running = asyncio.create_task(client.run())
    keyboard.type("/join dev")
    await wait_until(lambda: "[dev] joined, 0 earlier messages" in shown(client))
    await other.send(json.dumps({"type": "publish", "channel": "dev", "message": "hi ann"}))
    await wait_until(lambda: "[dev] bob: hi ann" in shown(client))
    keyboard.type("/switch dev", "hi bob", "/who")
    broadcast = await other_gets("broadcast")
    assert (broadcast["channel"], broadcast["name"], broadcast["message"]) == (
        "dev",
        "ann",
        "hi bob",
    )
    await wait_until(lambda: "[dev] you: hi bob (✓ #2)" in shown(client))
    keyboard.type("/leave dev")
    await wait_until(lambda: "[dev] unsubscribed" in shown(client))
    keyboard.end()
    assert await finished(running) == console.EXIT_OK
    # The members: in the answer to the subscribe, then in the one to /who.
    here = [line for line in shown(client) if line.startswith("[dev] here: ")]
    assert len(here) == 2
    for line in here:
        assert sorted(line.removeprefix("[dev] here: ").split(", ")) == ["ann", "bob"]
    since = client.positions.since("dev")
    assert since is not None
    assert since[0] == 2
    assert len(client.outbox) == 0


async def test_exactly_once_against_the_chat_server(net: Net, chat: Chat) -> None:
    """A message whose ack is lost in a drop is sent again, and stored once: "duplicate"."""
    proxy = GatedProxy(chat)
    plain = await net.plain_server(proxy.serve)
    sender = await Sender.connect(chat.url())
    keyboard = Keyboard()
    client = make_client(net.uri(plain), keyboard)
    running = asyncio.create_task(client.run())
    try:
        await wait_until(lambda: "[general] 0 earlier messages" in shown(client))
        proxy.deaf = True
        keyboard.type("only once")
        assert await sender.next_broadcast() == "only once"
        await wait_until(lambda: [row[2] for row in chat.rows()] == ["only once"])  # committed
        proxy.cut()  # its ack went nowhere
        proxy.deaf = False
        await wait_until(lambda: "[general] you: only once (✓ #1, duplicate)" in shown(client))
        keyboard.end()
        assert await finished(running) == console.EXIT_OK
        await sender.send_acked(["marker"])
        assert sender.broadcasts == []  # not broadcast again
    finally:
        proxy.cut()
        await sender.ws.close()
    assert len(client.outbox) == 0
    assert [row[2] for row in chat.rows()] == ["only once", "marker"]
    assert "sending again 1 unconfirmed message(s)" in status(client)


def environ() -> dict[str, str]:
    """This checkout first on the path; no CHAT_ variable of the caller's."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CHAT_")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) if not path else f"{REPO}{os.pathsep}{path}"
    return env


LISTENING = re.compile(r"listening: open http://127\.0\.0\.1:(\d+)/")


class ChatProcess:
    """``python -m server`` in a subprocess, restartable on the same port with another database."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self._drain: asyncio.Task[bytes] | None = None

    async def start(self, db: str) -> None:
        # --rate-limit 0: the test's sender sends its messages in bursts.
        command = [sys.executable, "-m", "server", "--port", str(self.port), "--rate-limit", "0"]
        process = self.process = await asyncio.create_subprocess_exec(
            *command, "--db", str(self.tmp_path / db), "--shutdown-timeout", "5",
            cwd=self.tmp_path,
            env=environ(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stderr is not None
        async with asyncio.timeout(GUARD):
            while not (match := LISTENING.search((await process.stderr.readline()).decode())):
                assert not process.stderr.at_eof(), "the chat server did not start"
        self.port = int(match.group(1))
        self._drain = asyncio.create_task(process.stderr.read())  # never block on stderr

    async def stop(self) -> None:
        """SIGTERM: every client is closed with 1001; exit status 0."""
        process, self.process = self.process, None
        assert process is not None
        assert self._drain is not None
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(GUARD):
            assert await process.wait() == 0
            await self._drain

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._drain is not None:
            await self._drain


class GatedProxy:
    """A TCP proxy in front of the chat server: it can cut its connections and hold new ones.

    Each request target is recorded, so the test sees the ``?since=&epoch=`` of each connect.
    While ``deaf``, what the server sends is not passed on: an ack lost before a drop.
    """

    def __init__(self, chat: ChatProcess | Chat) -> None:
        self.chat = chat
        self.gate = asyncio.Event()
        self.gate.set()
        self.deaf = False
        self.targets: list[str] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.gate.wait()
        head = await reader.readuntil(b"\r\n\r\n")
        self.targets.append(head.split(b" ", 2)[1].decode())
        up_reader, up_writer = await asyncio.open_connection(HOST, self.chat.port)
        self._writers += [writer, up_writer]
        up_writer.write(head)
        pipes = {
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer, down=True)),
        }
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.wait(pipes)
            up_writer.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, down: bool = False
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if not (down and self.deaf):
                    writer.write(data)
                    await writer.drain()

    def cut(self) -> None:
        """Drop every connection (no close frame: the client sees 1006)."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()


class Sender:
    """Another chat client, connected to the server itself: it sends and sees broadcasts."""

    def __init__(self, ws: Connection, epoch: str) -> None:
        self.ws = ws
        self.epoch = epoch
        self.broadcasts: list[str] = []  # the others' messages it received

    @classmethod
    async def connect(cls, uri: str) -> Sender:
        """Connect, and read the greeting."""
        ws = await rfc6455.connect(uri, ping_interval=None)
        async with asyncio.timeout(GUARD):
            await ws.recv()  # its connection id
            welcome = json.loads(str(await ws.recv()))
            await ws.recv()  # history
        return cls(ws, welcome["epoch"])

    async def next_broadcast(self) -> str:
        """The text of the next broadcast it receives."""
        async with asyncio.timeout(GUARD):
            while (message := json.loads(str(await self.ws.recv()))).get("type") != "broadcast":
                pass
        text: str = message["message"]
        return text

    async def send_acked(self, texts: Sequence[str]) -> list[int]:
        """Send structured messages and wait for their acks; return their seqs."""
        ids = [str(uuid.uuid4()) for _ in texts]  # a repeated one would be a duplicate
        for text, client_msg_id in zip(texts, ids, strict=True):
            await self.ws.send(json.dumps({"message": text, "clientMsgId": client_msg_id}))
        acks: list[int] = []
        async with asyncio.timeout(GUARD):
            while len(acks) < len(texts):
                message = json.loads(str(await self.ws.recv()))
                if message.get("type") == "broadcast":
                    self.broadcasts.append(message["message"])
                elif message.get("type") == "ack":  # user_left notices may come too
                    assert message["clientMsgId"] == ids[len(acks)]
                    assert "duplicate" not in message
                    acks.append(message["seq"])
        return acks


class ClientProcess:
    """``python -m server.client URL --json`` with its stdin, stdout and stderr on pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stderr_lines: list[str] = []
        self._stderr = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(cls, uri: str, cwd: Path) -> ClientProcess:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "server.client", uri, "--json", "--client-id", CLIENT_ID),
            cwd=cwd,
            env=environ(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr_lines.append(line.decode())

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    async def received(self, count: int) -> list[Any]:
        """The next ``count`` messages printed: what the server sent."""
        assert self.process.stdout is not None
        async with asyncio.timeout(GUARD):
            lines = [await self.process.stdout.readline() for _ in range(count)]
        return [json.loads(line)["data"] for line in lines]

    async def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def end(self) -> int:
        """Close stdin (the end of input); wait for the exit and return its status."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        async with asyncio.timeout(GUARD):
            status = await self.process.wait()
            await self._stderr
        return status

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._stderr.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr


async def test_resume_against_the_chat_server(net: Net, tmp_path: Path) -> None:
    """Dropped, the client gets what it missed and sends what was typed meanwhile, once each.

    A restart with a new database is another epoch: a fresh history.
    """
    chat = ChatProcess(tmp_path)
    await chat.start("first.db")
    proxy = GatedProxy(chat)
    plain = await net.plain_server(proxy.serve)
    sender = await Sender.connect(f"ws://{HOST}:{chat.port}/")
    epoch = sender.epoch
    client = None
    try:
        before = await sender.send_acked(["before 1", "before 2"])
        client = await ClientProcess.start(net.uri(plain), tmp_path)
        _, welcome, history = await client.received(3)
        assert welcome["epoch"] == epoch
        assert [item["seq"] for item in history["messages"]] == before
        live = await sender.send_acked(["live"])
        assert (await client.received(1))[0]["seq"] == live[0]

        # Dropped; a line typed meanwhile, and 60 messages (more than a new client's
        # history) sent by the others.
        proxy.gate.clear()
        proxy.cut()
        await wait_until(lambda: "connection lost: 1006 (abnormal closure)" in client.stderr)
        await client.type("typed while away")
        missed = await sender.send_acked([f"missed {n}" for n in range(60)])
        proxy.gate.set()
        _, _, history, ack = await client.received(4)
        assert proxy.targets[1] == f"/?clientId={CLIENT_ID}&since={live[0]}&epoch={epoch}"
        assert history["recovered"] is True
        assert [item["seq"] for item in history["messages"]] == missed
        assert [item["message"] for item in history["messages"]] == [
            f"missed {n}" for n in range(60)
        ]
        assert ack == {
            "type": "ack",
            "channel": "general",
            "seq": missed[-1] + 1,
            "clientMsgId": ack["clientMsgId"],
        }
        # Its broadcast came before its ack, so before this: once.
        after = await sender.send_acked(["after"])
        assert (await client.received(1))[0]["seq"] == after[0]
        assert sender.broadcasts == ["typed while away"]

        # A restart with a new database: another epoch, so a fresh history.
        proxy.gate.clear()
        await chat.stop()  # 1001 to the client, which reconnects
        await chat.start("second.db")
        proxy.gate.set()
        _, welcome, history = await client.received(3)
        assert proxy.targets[2] == f"/?clientId={CLIENT_ID}&since={after[0]}&epoch={epoch}"
        assert welcome["epoch"] != epoch
        assert history == {
            "type": "history",
            "channel": "general",
            "messages": [],
            "epoch": welcome["epoch"],
            "recovered": False,
        }
        assert await client.end() == 0, client.stderr
        assert 'closed by server: 1001 (going away) "server shutting down"' in client.stderr
        assert client.stderr.count("reconnecting in 0.5 s (attempt 1 of 5)") == 2
        assert "Traceback" not in client.stderr
    finally:
        proxy.cut()
        proxy.gate.set()
        await sender.ws.close()
        if client is not None:
            await client.kill()
        await chat.kill()
