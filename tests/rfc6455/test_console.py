"""Tests for rfc6455.aio.console: ``python -m rfc6455 URI``, the console client.

What a user runs is tested as a subprocess against servers on 127.0.0.1 (an
in-process ``rfc6455.serve``, and the real ``python -m server`` once): the
exit status, stdout and stderr are what is checked. The paths that a
subprocess cannot reach deterministically, and the formatting, are tested in
process with :class:`Console` writing to ``StringIO``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import runpy
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trustme

import rfc6455
from rfc6455 import Close, Connection, Headers, InvalidResponse, Request, Response
from rfc6455.aio import console
from rfc6455.aio.console import Console, Options, Output
from rfc6455.handshake import accept_key, reject
from tests.rfc6455.conftest import GUARD, HOST, Net, Tls, echo, wait_until

pytestmark = pytest.mark.usefixtures("loop_errors")

REPO = Path(__file__).resolve().parents[2]
TIME = r"\d\d:\d\d:\d\d"
LISTENING = re.compile(r"listening: open http://127\.0\.0\.1:(\d+)/")


def environ() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) if not path else f"{REPO}{os.pathsep}{path}"
    return env


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str

    @property
    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]


async def run_console(*args: str, cwd: Path) -> Result:
    """Run ``python -m rfc6455 ARGS`` to its end, stdin closed."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "rfc6455", *args),
        cwd=cwd,
        env=environ(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(GUARD):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


class Interactive:
    """``python -m rfc6455 URI`` with stdin, stdout and stderr on pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stderr_lines: list[str] = []
        self._stderr = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr_lines.append(line.decode())

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    async def connected(self) -> None:
        """Wait for the "connected" line: the signal handlers are installed by then."""
        await wait_until(lambda: "connected to" in self.stderr or self.process.returncode)
        assert "connected to" in self.stderr, self.stderr

    async def write(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        await self.process.stdin.drain()

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        await self.process.stdin.wait_closed()

    async def read_lines(self, count: int) -> list[str]:
        assert self.process.stdout is not None
        async with asyncio.timeout(GUARD):
            return [(await self.process.stdout.readline()).decode() for _ in range(count)]

    async def wait(self) -> tuple[int, str]:
        """Wait for the exit; return the status and whatever is left on stdout."""
        assert self.process.stdout is not None
        async with asyncio.timeout(GUARD):
            rest = await self.process.stdout.read()
            status = await self.process.wait()
            await self._stderr
        return status, rest.decode()

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        self._stderr.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr


@pytest.fixture
async def interactive(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Return ``start(*args)``, which starts an interactive console client."""
    started: list[Interactive] = []

    async def start(*args: str) -> Interactive:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "rfc6455", *args),
            cwd=tmp_path,
            env=environ(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        client = Interactive(process)
        started.append(client)
        return client

    yield start
    for client in started:
        await client.kill()


class Recorder:
    """An echo handler that records each request, message, and how each connection closed.

    A message that arrives just before the client's close frame is recorded but
    may not be echoed: the connection is closing by the time the echo is sent.
    """

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.messages: list[str | bytes] = []
        self.closes: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()

    def process_request(self, request: Request) -> None:
        self.requests.append(request)

    async def handler(self, ws: Connection) -> None:
        with contextlib.suppress(rfc6455.ConnectionClosed):
            async for message in ws:
                self.messages.append(message)
                await ws.send(message)
        self.closes.put_nowait((ws.close_code, ws.close_reason))

    async def closed(self) -> tuple[int | None, str | None]:
        async with asyncio.timeout(GUARD):
            return await self.closes.get()


@pytest.fixture
async def recorder(net: Net) -> tuple[Recorder, str]:
    """An echo server that records; return it and its URI."""
    recorder = Recorder()
    server = await net.serve(recorder.handler, process_request=recorder.process_request)
    return recorder, net.uri(server)


def one_error_line(stderr: str) -> str:
    """The single line of a failure: no traceback, nothing else."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# Non-interactive mode, as a subprocess


async def test_send_expect_json(recorder: tuple[Recorder, str], tmp_path: Path) -> None:
    server, uri = recorder
    result = await run_console(uri, "--send", "hi", "--expect", "1", "--json", cwd=tmp_path)
    assert result.status == 0, result
    (line,) = result.json_lines
    assert set(line) == {"time", "type", "data", "json"}
    assert line["type"] == "text"
    assert line["data"] == "hi"
    assert line["json"] is False
    datetime.fromisoformat(line["time"])  # local time, with its offset
    assert "closing: 1000 (normal closure)" in result.stderr
    assert "closed: server answered 1000 (normal closure)" in result.stderr
    assert await server.closed() == (1000, "")


async def test_sends_in_order_json_parsed(recorder: tuple[Recorder, str], tmp_path: Path) -> None:
    _, uri = recorder
    args = ("--send", '{"a": [1, 2]}', "--send", "plain", "--send", "3", "--send", "NaN")
    result = await run_console(uri, *args, "--expect", "4", "--json", cwd=tmp_path)
    assert result.status == 0, result
    assert [(line["data"], line["json"]) for line in result.json_lines] == [
        ({"a": [1, 2]}, True),
        ("plain", False),
        (3, True),
        ("NaN", False),  # not JSON, though Python's json module would take it
    ]


async def test_human_output_pretty_prints_json(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    _, uri = recorder
    result = await run_console(
        uri, "--send", '{"type": "x", "n": [1]}', "--send", "a\tb", "--expect", "2", cwd=tmp_path
    )
    assert result.status == 0, result
    lines = result.stdout.splitlines()
    assert re.fullmatch(TIME + r" \{", lines[0])
    indent = " " * 9
    assert lines[1:6] == [
        indent + '  "type": "x",',
        indent + '  "n": [',
        indent + "    1",
        indent + "  ]",
        indent + "}",
    ]
    assert re.fullmatch(TIME + r" a\\tb", lines[6])  # control characters are escaped


async def test_binary_message_as_json(net: Net, tmp_path: Path) -> None:
    async def handler(ws: Connection) -> None:
        await ws.send(b"\x00\x01\xfe\xff")
        await ws.wait_closed()

    server = await net.serve(handler)
    result = await run_console(net.uri(server), "--expect", "1", "--json", cwd=tmp_path)
    assert result.status == 0, result
    (line,) = result.json_lines
    assert (line["type"], line["data"], line["size"]) == ("binary", "AAH+/w==", 4)


async def test_send_only_closes_cleanly(recorder: tuple[Recorder, str], tmp_path: Path) -> None:
    server, uri = recorder
    result = await run_console(uri, "--send", "one", "--send", "two", cwd=tmp_path)
    assert result.status == 0, result
    assert await server.closed() == (1000, "")


async def test_expect_not_met_within_timeout(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    server, uri = recorder
    args = ("--send", "only one", "--expect", "2", "--timeout", "0.5", "--json")
    result = await run_console(uri, *args, cwd=tmp_path)
    assert result.status == console.EXIT_EXPECT, result
    # The echo comes in time unless the machine is very slow: nothing here is timed.
    received = [line["data"] for line in result.json_lines]
    assert received in ([], ["only one"])
    assert f"rfc6455: expected 2 messages, received {len(received)}" in result.stderr
    assert "Traceback" not in result.stderr
    if "connected to" in result.stderr:
        assert await server.closed() == (1000, "")  # still closed cleanly


async def test_server_closes_before_expectation(net: Net, tmp_path: Path) -> None:
    async def handler(ws: Connection) -> None:
        await ws.send("first")
        await ws.close(1001, "bye")

    server = await net.serve(handler)
    result = await run_console(net.uri(server), "--expect", "2", cwd=tmp_path)
    assert result.status == console.EXIT_EXPECT, result
    assert 'closed by server: 1001 (going away) "bye"' in result.stderr
    assert "expected 2 messages, received 1" in result.stderr


async def test_server_closes_abnormally(net: Net, tmp_path: Path) -> None:
    async def handler(ws: Connection) -> None:
        await ws.close(1011, "oops")

    server = await net.serve(handler)
    result = await run_console(net.uri(server), "--timeout", "5", cwd=tmp_path)
    assert result.status == console.EXIT_CLOSED, result
    assert 'closed by server: 1011 (internal error) "oops"' in result.stderr


async def test_connection_refused(tmp_path: Path) -> None:
    # A bound socket that does not listen refuses connections, and keeps its port ours.
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        uri = f"ws://{HOST}:{sock.getsockname()[1]}/"
        result = await run_console(uri, "--send", "hi", "--expect", "1", cwd=tmp_path)
    assert result.status == console.EXIT_CONNECT, result
    assert one_error_line(result.stderr) == f"rfc6455: cannot connect to {uri}: connection refused"
    assert result.stdout == ""


async def test_connection_refused_interactive(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        result = await run_console(f"ws://{HOST}:{sock.getsockname()[1]}/", cwd=tmp_path)
    assert result.status == console.EXIT_CONNECT, result
    assert "connection refused" in one_error_line(result.stderr)


async def test_handshake_refused_403(net: Net, tmp_path: Path) -> None:
    def hook(request: Request) -> Response:
        return reject(403, "no token")

    server = await net.serve(echo, process_request=hook)
    uri = net.uri(server)
    result = await run_console(uri, "--expect", "1", cwd=tmp_path)
    assert result.status == console.EXIT_CONNECT, result
    assert one_error_line(result.stderr) == (
        f"rfc6455: handshake with {uri} refused: 403 Forbidden: no token"
    )


BEARER_EXPIRED = (
    'Bearer realm="chat", error="invalid_token", error_description="the token has expired"'
)
SECRETS = ("s3cr3t-one", "s3cr3t-two", "s3cr3t-three")
# Secrets in the query, in several spellings, and a parameter that is not one.
SECRET_QUERY = f"access_token={SECRETS[0]}&Token={SECRETS[1]}&room=lobby&API_KEY={SECRETS[2]}"
REDACTED_QUERY = "access_token=REDACTED&Token=REDACTED&room=lobby&API_KEY=REDACTED"


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


async def test_handshake_refused_401_shows_the_bearer_error(net: Net, tmp_path: Path) -> None:
    """The chat server's refusal: the error description of its challenge, on one line."""

    def hook(request: Request) -> Response:
        return reject(401, "unauthorized", [("WWW-Authenticate", BEARER_EXPIRED)])

    server = await net.serve(echo, process_request=hook)
    uri = net.uri(server, f"/?{SECRET_QUERY}")
    result = await run_console(uri, cwd=tmp_path)
    assert result.status == console.EXIT_CONNECT, result
    assert one_error_line(result.stderr) == (
        f"rfc6455: handshake with {net.uri(server, '/?' + REDACTED_QUERY)} refused: "
        "401 Unauthorized: invalid token: the token has expired"
    )
    assert_no_secret(result.stderr)


async def test_secrets_in_the_uri_are_not_printed(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    """The status lines show the URI redacted; the server gets it as it was given."""
    server, uri = recorder
    result = await run_console(
        f"{uri}?{SECRET_QUERY}", "--send", "hi", "--expect", "1", cwd=tmp_path
    )
    assert result.status == 0, result
    assert f"connected to {uri}?{REDACTED_QUERY}\n" in result.stderr
    assert_no_secret(result.stderr)
    (request,) = server.requests
    assert request.query == SECRET_QUERY


async def test_secrets_in_error_lines_are_not_printed(net: Net, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        uri = f"ws://{HOST}:{sock.getsockname()[1]}/?{SECRET_QUERY}"
        result = await run_console(uri, cwd=tmp_path)
    assert result.status == console.EXIT_CONNECT, result
    assert REDACTED_QUERY in one_error_line(result.stderr)
    assert_no_secret(result.stderr)
    # A usage error quotes the URI: redacted too.
    result = await run_console(f"ws://{HOST}/?{SECRET_QUERY}#fragment", cwd=tmp_path)
    assert result.status == console.EXIT_USAGE, result
    assert "fragment" in one_error_line(result.stderr)
    assert_no_secret(result.stderr)


async def test_open_timeout(net: Net, tmp_path: Path) -> None:
    """A server that accepts TCP and never answers the upgrade."""
    hold = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()

    plain = await net.plain_server(silent)
    uri = net.uri(plain)
    try:
        result = await run_console(uri, "--expect", "1", "--timeout", "0.3", cwd=tmp_path)
    finally:
        hold.set()
    assert result.status == console.EXIT_CONNECT, result
    assert one_error_line(result.stderr) == f"rfc6455: timed out connecting to {uri}"


async def test_headers_and_subprotocol_reach_the_server(net: Net, tmp_path: Path) -> None:
    recorder = Recorder()
    server = await net.serve(
        recorder.handler, process_request=recorder.process_request, subprotocols=["chat.v2"]
    )
    result = await run_console(
        net.uri(server, "/room?x=1"),
        *("-H", "Authorization: Bearer s3cret", "--header", "X-Trace:  a, b "),
        *("--subprotocol", "chat.v1", "--subprotocol", "chat.v2"),
        *("--send", "hi", "--expect", "1"),
        cwd=tmp_path,
    )
    assert result.status == 0, result
    (request,) = recorder.requests
    assert request.path == "/room"
    assert request.query == "x=1"
    assert request.headers.get("Authorization") == "Bearer s3cret"
    assert request.headers.get("X-Trace") == "a, b"
    assert request.headers.get("Sec-WebSocket-Protocol") == "chat.v1, chat.v2"
    assert "subprotocol chat.v2" in result.stderr


async def test_token_sends_a_bearer_authorization_header(net: Net, tmp_path: Path) -> None:
    recorder = Recorder()
    server = await net.serve(recorder.handler, process_request=recorder.process_request)
    result = await run_console(
        net.uri(server), "--token", "abc.def", "--send", "hi", "--expect", "1", cwd=tmp_path
    )
    assert result.status == 0, result
    (request,) = recorder.requests
    assert request.headers.get_all("Authorization") == ["Bearer abc.def"]


def test_token_and_an_authorization_header_exclude_each_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        console.parse_args(["ws://h/", "--token", "t", "-H", "authorization: Basic x"])
    assert exit_info.value.code == console.EXIT_USAGE
    assert "--token" in one_error_line(capsys.readouterr().err)


# Interactive mode, as a subprocess driven through pipes


async def test_interactive_through_a_pipe(
    recorder: tuple[Recorder, str], interactive: Callable[..., Any]
) -> None:
    server, uri = recorder
    client = await interactive(uri, "--linger", "0")
    await client.write("hello\n")
    (line,) = await client.read_lines(1)
    assert re.fullmatch(TIME + r" hello\n", line)
    await client.write('{"a": 1}\r\n')  # a CRLF line ending is one line break too
    assert [line[9:] for line in await client.read_lines(3)] == ["{\n", '  "a": 1\n', "}\n"]
    await client.write("no newline at the end")
    await client.close_stdin()
    status, rest = await client.wait()
    assert status == 0, client.stderr
    # Its echo may not come: the client closes right after sending it.
    assert re.fullmatch(f"({TIME} no newline at the end\n)?", rest)
    assert "closing: 1000 (normal closure)\n" in client.stderr_lines
    assert "closed: server answered 1000 (normal closure)\n" in client.stderr_lines
    assert await server.closed() == (1000, "")
    assert server.messages == ["hello", '{"a": 1}', "no newline at the end"]


async def test_interactive_sigint(
    recorder: tuple[Recorder, str], interactive: Callable[..., Any]
) -> None:
    server, uri = recorder
    client = await interactive(uri)
    await client.connected()
    await client.write("before\n")
    await client.read_lines(1)
    client.process.send_signal(signal.SIGINT)
    status, _ = await client.wait()
    assert status == 0, client.stderr
    assert "closing: 1000 (normal closure)\n" in client.stderr_lines
    assert "closed: server answered 1000 (normal closure)\n" in client.stderr_lines
    assert "Traceback" not in client.stderr
    assert await server.closed() == (1000, "")


async def test_interactive_server_closes(net: Net, interactive: Callable[..., Any]) -> None:
    async def handler(ws: Connection) -> None:
        await ws.recv()
        await ws.close(1001, "going down")

    server = await net.serve(handler)
    client = await interactive(net.uri(server))
    await client.write("anything\n")
    status, _ = await client.wait()  # stdin is still open
    assert status == 0, client.stderr
    assert client.stderr_lines[-1] == 'closed by server: 1001 (going away) "going down"\n'
    assert not any(line.startswith("closing") for line in client.stderr_lines)


async def test_piped_input_prints_the_replies(net: Net, interactive: Callable[..., Any]) -> None:
    """``printf 'x\\n' | python -m rfc6455 ws://…/echo``: the echo comes after the input ended."""

    async def slow_echo(ws: Connection) -> None:
        message = await ws.recv()
        await asyncio.sleep(0.1)  # the client has read the end of its input by then
        await ws.send(message)
        await ws.close(1000, "done")

    server = await net.serve(slow_echo)
    # A generous --linger: the server closes first, so the run takes no longer.
    client = await interactive(net.uri(server, "/echo"), "--linger", "5")
    await client.write("x\n")
    await client.close_stdin()
    status, rest = await client.wait()
    assert status == 0, client.stderr
    assert re.fullmatch(f"{TIME} x\n", rest), rest
    assert "end of input: closing after 5 s without a message\n" in client.stderr_lines
    assert client.stderr_lines[-1] == 'closed by server: 1000 (normal closure) "done"\n'


async def test_linger_lasts_while_messages_keep_coming(net: Net) -> None:
    """Each message starts the quiet period again; after it, the client closes with 1000."""
    closes: asyncio.Queue[int | None] = asyncio.Queue()

    async def ticker(ws: Connection) -> None:
        await ws.recv()
        for n in range(4):  # 1.2 s in all, more than --linger; 0.3 s apart, far less
            await asyncio.sleep(0.3)
            await ws.send(f"tick {n}")
        await ws.wait_closed()
        closes.put_nowait(ws.close_code)

    server = await net.serve(ticker)
    client = make_console(Options(net.uri(server), linger=1.0, json=True), ["go"])
    async with asyncio.timeout(GUARD):
        assert await client.run() == 0
    out, err = printed(client)
    assert [json.loads(line)["data"] for line in out.splitlines()] == [
        f"tick {n}" for n in range(4)
    ]
    assert err.splitlines()[-3:] == [
        "end of input: closing after 1 s without a message",
        "closing: 1000 (normal closure)",
        "closed: server answered 1000 (normal closure)",
    ]
    async with asyncio.timeout(GUARD):
        assert await closes.get() == 1000


async def test_interrupt_while_lingering(recorder: tuple[Recorder, str]) -> None:
    """Ctrl-C after the end of input closes at once, however long --linger is."""
    server, uri = recorder
    client = make_console(Options(uri, linger=GUARD * 10), ["one"])
    running = asyncio.create_task(client.run())
    await wait_until(lambda: "end of input" in printed(client)[1])
    client.interrupt()
    async with asyncio.timeout(GUARD):
        assert await running == 0
    assert await server.closed() == (1000, "")


# End to end, with the chat server


async def test_chat_server_end_to_end(tmp_path: Path, loop_errors: list[Any]) -> None:
    chat = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "server", "--port", "0", "--db", str(tmp_path / "m.db")),
        cwd=tmp_path,
        env={k: v for k, v in environ().items() if not k.startswith("CHAT_")},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert chat.stderr is not None
        async with asyncio.timeout(GUARD):
            while not (match := LISTENING.search((await chat.stderr.readline()).decode())):
                pass
        drain = asyncio.create_task(chat.stderr.read())  # the server must never block on stderr
        uri = f"ws://{HOST}:{match.group(1)}/"
        async with await rfc6455.connect(uri, ping_interval=None) as other:
            async with asyncio.timeout(GUARD):
                await other.recv()  # its connection id
                await other.recv()  # welcome
                await other.recv()  # history
            args = ("--send", "hello, chat", "--expect", "2", "--json")
            result = await run_console(uri, *args, cwd=tmp_path)
            assert result.status == 0, result
            first, second = (line["data"] for line in result.json_lines)
            assert set(first) == {"connectionId"}
            assert second["type"] == "welcome"
            async with asyncio.timeout(GUARD):
                broadcast = json.loads(str(await other.recv()))
                left = json.loads(str(await other.recv()))
            assert broadcast["message"] == "hello, chat"
            assert broadcast["connectionId"] == first["connectionId"]
            assert left["type"] == "user_left"
            assert left["closeStatus"] == 1000
        chat.send_signal(signal.SIGINT)
        async with asyncio.timeout(GUARD):
            assert await chat.wait() == 0
            await drain
    finally:
        if chat.returncode is None:
            chat.kill()
            await chat.wait()


# Usage errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://localhost/"], "not a ws:// or wss:// URI"),
        (["ws://"], "no host"),
        (["ws://h/", "-H", "no colon"], "is not of the form 'Name: value'"),
        (["ws://h/", "-H", "Bad Name: x"], "invalid header name"),
        (["ws://h/", "-H", "X-A: \x01"], "invalid value for header X-A"),
        (["ws://h/", "-H", "Sec-WebSocket-Key: x"], "is set by the client itself"),
        (["ws://h/", "--subprotocol", "a b"], "invalid subprotocol name"),
        (["ws://h/", "--timeout", "0"], "must be a number of seconds > 0"),
        (["ws://h/", "--timeout", "soon"], "is not a number of seconds"),
        (["ws://h/", "--timeout", "-1"], "must be a number of seconds > 0"),
        (["ws://h/", "--linger", "-1"], "must be a number of seconds >= 0"),
        (["ws://h/", "--linger", "nan"], "must be a number of seconds >= 0"),
        (["ws://h/", "--expect", "-1"], "must be >= 0"),
        (["ws://h/", "--expect", "two"], "is not a whole number"),
        (["ws://h/", "--max-size", "-1"], "must be >= 0"),
        (["ws://h/", "--max-size", "1k"], "is not a whole number of bytes"),
        ([], "the following arguments are required: URI"),
    ],
)
def test_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        console.main(args)
    assert exit_info.value.code == console.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in one_error_line(captured.err)


def test_parse_args() -> None:
    options = console.parse_args(
        ["ws://h/", "-H", "A: 1", "-H", "A: 2", "--send", "x", "--max-size", "0", "--json"]
    )
    assert options == Options(
        "ws://h/", headers=(("A", "1"), ("A", "2")), max_size=None, sends=("x",), json=True
    )
    assert not options.interactive
    assert console.parse_args(["ws://h/"]).interactive
    assert console.parse_args(["ws://h/"]).linger == 1.0
    assert console.parse_args(["ws://h/", "--linger", "0"]).linger == 0
    assert not console.parse_args(["ws://h/", "--expect", "0"]).interactive
    assert not console.parse_args(["ws://h/", "--timeout", "1"]).interactive


def test_console_parser_and_options_of_another_console(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The shared arguments, with a console's own beside them; checked alike."""
    parser = console.console_parser("python -m other", "Other console.", "epilog text")
    parser.add_argument("--room")
    args = parser.parse_args(["ws://h/", "--token", "t", "--room", "r", "--linger", "0"])
    assert args.room == "r"
    assert console.console_options(parser, args) == Options(
        "ws://h/", headers=(("Authorization", "Bearer t"),), linger=0
    )
    with pytest.raises(SystemExit) as exit_info:
        console.console_options(parser, parser.parse_args(["http://h/"]))
    assert exit_info.value.code == console.EXIT_USAGE
    assert one_error_line(capsys.readouterr().err).startswith("python -m other: error: ")


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        console.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for code in range(5):
        assert re.search(rf"^  {code}  ", out, re.MULTILINE), code
    assert '"type": "binary"' in out


# In process: Console and Output


def make_console(options: Options, lines: Sequence[str] | None = None) -> Console:
    async def feed() -> AsyncIterator[str]:
        for line in lines or ():
            yield line

    output = Output(io.StringIO(), io.StringIO(), json_lines=options.json)
    return Console(options, output, None if lines is None else feed())


def printed(client: Console) -> tuple[str, str]:
    out, err = client.output.stdout, client.output.stderr
    assert isinstance(out, io.StringIO)
    assert isinstance(err, io.StringIO)
    return out.getvalue(), err.getvalue()


async def test_console_interactive_lines(recorder: tuple[Recorder, str]) -> None:
    server, uri = recorder
    client = make_console(Options(uri, linger=0), ["one", "two"])
    assert await client.run() == 0
    out, err = printed(client)
    assert err.splitlines()[-2:] == [
        "closing: 1000 (normal closure)",
        "closed: server answered 1000 (normal closure)",
    ]
    assert await server.closed() == (1000, "")
    assert server.messages == ["one", "two"]
    # --linger 0: the end of input closes at once; the echoes that came before the
    # server's close frame are printed, the others were never sent.
    assert re.fullmatch(rf"({TIME} one\n({TIME} two\n)?)?", out)


async def test_console_interrupt(recorder: tuple[Recorder, str]) -> None:
    server, uri = recorder
    blocked = asyncio.Event()

    async def lines() -> AsyncIterator[str]:
        yield "sent"
        await blocked.wait()  # like a terminal nobody types on
        yield "never sent"  # pragma: no cover

    client = Console(Options(uri), Output(io.StringIO(), io.StringIO()), lines())
    running = asyncio.create_task(client.run())
    await wait_until(lambda: "sent" in printed(client)[0])
    client.interrupt()
    async with asyncio.timeout(GUARD):
        assert await running == 0
    assert await server.closed() == (1000, "")


async def test_console_second_interrupt_drops_the_connection(net: Net) -> None:
    close_seen = asyncio.Event()
    hold = asyncio.Event()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Accept the upgrade, then read the close frame and never answer it."""
        head = await reader.readuntil(b"\r\n\r\n")
        key = re.search(rb"Sec-WebSocket-Key: (\S+)", head, re.IGNORECASE)
        assert key is not None
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key.group(1).decode()).encode()
            + b"\r\n\r\n"
        )
        assert (await reader.readexactly(1))[0] == 0x88  # FIN + close
        close_seen.set()
        await hold.wait()

    plain = await net.plain_server(never_answers)

    async def lines() -> AsyncIterator[str]:
        await hold.wait()
        yield "never sent"  # pragma: no cover

    client = Console(Options(net.uri(plain)), Output(io.StringIO(), io.StringIO()), lines())
    running = asyncio.create_task(client.run())
    await wait_until(lambda: "connected" in printed(client)[1])
    client.interrupt()
    await wait_until(close_seen.is_set)
    client.interrupt()
    try:
        async with asyncio.timeout(GUARD):
            assert await running == console.EXIT_CLOSED
    finally:
        hold.set()
    assert printed(client)[1].splitlines()[-2:] == [
        "closing: 1000 (normal closure)",
        "closed: no answer from the server (1006)",
    ]


async def test_console_interrupt_while_connecting(net: Net) -> None:
    hold = asyncio.Event()
    accepted = asyncio.Event()

    async def callback(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await hold.wait()

    plain = await net.plain_server(callback)
    client = make_console(Options(net.uri(plain), expect=1))
    running = asyncio.create_task(client.run())
    await wait_until(accepted.is_set)
    client.interrupt()
    async with asyncio.timeout(GUARD):
        assert await running == console.EXIT_CONNECT
    hold.set()
    assert printed(client)[1] == f"rfc6455: interrupted while connecting to {net.uri(plain)}\n"


async def test_console_redacts_while_connecting(net: Net) -> None:
    """The lines printed while connecting: interrupted, timed out."""
    hold = asyncio.Event()
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await hold.wait()

    plain = await net.plain_server(silent)
    uri = net.uri(plain, f"/?{SECRET_QUERY}")
    try:
        interrupted = make_console(Options(uri, expect=1))
        running = asyncio.create_task(interrupted.run())
        await wait_until(accepted.is_set)
        interrupted.interrupt()
        async with asyncio.timeout(GUARD):
            assert await running == console.EXIT_CONNECT
        timed_out = make_console(Options(uri, expect=1, timeout=0.2))
        assert await timed_out.run() == console.EXIT_CONNECT
    finally:
        hold.set()
    for client in (interrupted, timed_out):
        line = one_error_line(printed(client)[1])
        assert REDACTED_QUERY in line
        assert_no_secret(line)


async def test_console_refused_with_an_endless_body(net: Net) -> None:
    """A refusal whose body never ends: one line, cut short, and no hang."""

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n\x1b[2J" + b"x" * 1000)
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()

    plain = await net.plain_server(endless)
    client = make_console(Options(net.uri(plain), expect=1))
    async with asyncio.timeout(GUARD):
        assert await client.run() == console.EXIT_CONNECT
    line = one_error_line(printed(client)[1])
    prefix = f"rfc6455: handshake with {net.uri(plain)} refused: 403 Forbidden: \\x1b[2J"
    assert line.startswith(prefix)
    assert line.endswith("x…")
    assert len(line) <= len(f"rfc6455: handshake with {net.uri(plain)} refused: ") + 201


async def test_console_interrupt_while_waiting(recorder: tuple[Recorder, str]) -> None:
    _, uri = recorder
    client = make_console(Options(uri, sends=("a",), expect=2))
    running = asyncio.create_task(client.run())
    await wait_until(lambda: "a" in printed(client)[0])
    client.interrupt()
    async with asyncio.timeout(GUARD):
        assert await running == console.EXIT_EXPECT


async def test_console_timeout_without_expect_is_success(recorder: tuple[Recorder, str]) -> None:
    _, uri = recorder
    client = make_console(Options(uri, sends=("a", "b"), timeout=0.5, json=True))
    assert await client.run() == 0
    out, _ = printed(client)
    # What came within the 0.5 s is printed (both echoes, unless the machine is very slow).
    assert [json.loads(line)["data"] for line in out.splitlines()] in ([], ["a"], ["a", "b"])


async def test_console_max_size(net: Net) -> None:
    async def handler(ws: Connection) -> None:
        await ws.send("x" * 100)
        await ws.send("x" * 101)
        await ws.wait_closed()

    server = await net.serve(handler)
    client = make_console(Options(net.uri(server), max_size=100, expect=2))
    assert await client.run() == console.EXIT_EXPECT
    out, err = printed(client)
    assert out.endswith(" " + "x" * 100 + "\n")
    assert "connection failed: sent 1009 (message too big)" in err


async def test_console_server_drops_the_connection(net: Net) -> None:
    async def handler(ws: Connection) -> None:
        await ws.send("bye")
        ws.abort()

    async def never() -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""  # pragma: no cover

    server = await net.serve(handler)
    client = Console(Options(net.uri(server)), Output(io.StringIO(), io.StringIO()), never())
    assert await client.run() == console.EXIT_CLOSED
    out, err = printed(client)
    assert "bye" in out
    assert err.splitlines()[-1] == "connection lost: 1006 (abnormal closure)"


class Shouting(Console):
    """A console of an application: its own greeting, lines, printing, and one reconnect."""

    def __init__(self, options: Options, output: Output, lines: AsyncIterator[str]) -> None:
        super().__init__(options, output, lines)
        self.seen: list[str | bytes] = []
        self.ended: list[Connection] = []

    async def on_open(self, ws: Connection) -> None:
        await ws.send("hello")

    def on_message(self, message: str | bytes) -> None:
        self.seen.append(message)

    async def on_line(self, ws: Connection, line: str) -> None:
        await ws.send(line.upper())

    async def reconnect(self, ended: Connection) -> tuple[Connection, str] | None:
        self.ended.append(ended)
        if len(self.ended) > 1:
            return None
        uri = self.options.uri + "?again"
        return await self.dial_until(uri, None), uri


async def test_console_hooks(net: Net) -> None:
    received: list[str | bytes] = []

    async def handler(ws: Connection) -> None:
        received.append(await ws.recv())
        message = await ws.recv()
        received.append(message)
        await ws.send(message)
        ws.abort()

    lines: asyncio.Queue[str] = asyncio.Queue()

    async def feed() -> AsyncIterator[str]:
        while True:
            yield await lines.get()

    server = await net.serve(handler)
    uri = net.uri(server)
    client = Shouting(Options(uri), Output(io.StringIO(), io.StringIO()), feed())
    running = asyncio.create_task(client.run())
    lines.put_nowait("one")
    await wait_until(lambda: client.seen == ["ONE"])
    lines.put_nowait("two")  # the second connection's line
    async with asyncio.timeout(GUARD):
        assert await running == console.EXIT_CLOSED  # dropped, twice
    assert received == ["hello", "ONE", "hello", "TWO"]
    assert client.seen == ["ONE", "TWO"]
    assert len(client.ended) == 2
    assert f"connected to {uri}?again\n" in printed(client)[1]
    assert not client.input_ended


async def test_stdin_lines_from_a_pipe() -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, "a\r\nb\n\ncafé \xff".encode("latin-1")[:-1] + b"\xff")
        os.close(write_fd)
        lines = console.stdin_lines(read_fd)
        async with asyncio.timeout(GUARD):
            assert [line async for line in lines] == ["a", "b", "", "caf\ufffd \ufffd"]
    finally:
        os.close(read_fd)


def test_output_formats() -> None:
    out, err = io.StringIO(), io.StringIO()
    output = Output(out, err)
    output.message(b"\x00" * 40)
    output.message("\x1b[31mred\x07")
    output.message("[1, 2]")
    output.message("[" * 100_000)  # not JSON
    lines = out.getvalue().splitlines()
    hex_part = " ".join(["00"] * 32)
    assert re.fullmatch(rf"{TIME} \[binary, 40 bytes\] {hex_part} …", lines[0])
    assert re.fullmatch(rf"{TIME} \\x1b\[31mred\\x07", lines[1])
    assert lines[2:6] == [lines[2][:9] + "[", "           1,", "           2", "         ]"]
    assert lines[-1].endswith("[" * 100_000)
    output.status("status")
    output.error("bad")
    assert err.getvalue() == "status\nrfc6455: bad\n"


def test_output_line_and_prog() -> None:
    """A line of another console: the time, its further lines indented; its own name on errors."""
    out, err = io.StringIO(), io.StringIO()
    output = Output(out, err, prog="chat")
    output.line("[general] ann: two\nlines \x07")
    first, second = out.getvalue().splitlines()
    assert re.fullmatch(rf"{TIME} \[general\] ann: two", first)
    assert second == " " * 9 + "lines \\x07"
    output.error("bad")
    assert err.getvalue() == "chat: bad\n"


def test_output_json_lines() -> None:
    out = io.StringIO()
    output = Output(out, io.StringIO(), json_lines=True)
    output.message("é")
    output.message('"quoted"')
    output.message(b"")
    output.message("-Infinity")
    output.message("[" * 100_000 + "]" * 100_000)  # JSON too deep to print: a string
    first, second, third, infinity, fourth = (
        json.loads(line) for line in out.getvalue().splitlines()
    )
    assert infinity["data"] == "-Infinity"  # Python's json would take it; JSON does not
    assert out.getvalue().isascii()
    assert (first["data"], first["json"]) == ("é", False)
    assert (second["data"], second["json"]) == ("quoted", True)
    assert (third["type"], third["data"], third["size"]) == ("binary", "", 0)
    assert fourth["json"] is False


def test_output_above_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "get_terminal_size", lambda: os.terminal_size((10, 24)))
    out, err = io.StringIO(), io.StringIO()
    output = Output(out, err, above_input=True)
    output.status("x" * 25)  # three rows at 10 columns
    assert err.getvalue() == "\0337\n\n\n\033[3A\033[3L" + "x" * 25 + "\n\0338\033[3B"
    output.status("界" * 5 + "\n")  # wide characters: 10 columns, one row; then an empty row
    assert err.getvalue().endswith("\033[2L" + "界" * 5 + "\n\n\0338\033[2B")
    tall = "\n".join(["tall"] * 24)
    output.status(tall)  # as tall as the screen: printed as it is
    assert err.getvalue().endswith("\0338\033[2B" + tall + "\n")
    output.leave_input_line(interrupted=True)
    output.leave_input_line(interrupted=True)  # once is enough
    output.status("plain")
    assert err.getvalue().endswith(tall + "\n\nplain\n")


@pytest.mark.parametrize(
    ("close", "text"),
    [
        (Close(1000, ""), "1000 (normal closure)"),
        (Close(1001, "server shutting down"), '1001 (going away) "server shutting down"'),
        (Close(1005, ""), "1005 (no status code)"),
        (Close(3000, ""), "3000 (registered)"),
        (Close(4001, "é"), '4001 (private use) "é"'),
        (Close(2999, ""), "2999 (unknown)"),
    ],
)
def test_describe_close(close: Close, text: str) -> None:
    assert console.describe_close(close) == text


def test_connect_errors() -> None:
    uri = "wss://h/"
    describe = console.describe_connect_error
    assert describe(TimeoutError(), uri) == f"timed out connecting to {uri}"
    refused = ConnectionRefusedError(111, "Connection refused")
    assert describe(refused, uri) == f"cannot connect to {uri}: connection refused"
    gai = socket.gaierror(-2, "Name or service not known")
    assert describe(gai, uri).endswith("Name or service not known")
    assert describe(OSError(113, "No route to host"), uri).endswith("No route to host")
    assert describe(ValueError("label too long"), uri).endswith("label too long")


def test_connect_error_of_an_invalid_101() -> None:
    """A 101 that is not a valid upgrade is a failure, not a refusal."""
    response = Response(101, "Switching Protocols", Headers())
    error = InvalidResponse("missing or invalid Upgrade header; expected websocket", response)
    assert console.describe_connect_error(error, "ws://h/") == (
        "handshake with ws://h/ failed: missing or invalid Upgrade header; expected websocket"
    )


@pytest.mark.parametrize(
    ("uri", "printed"),
    [
        ("ws://h/?access_token=abc&room=1", "ws://h/?access_token=REDACTED&room=1"),
        (
            "ws://h/p?TOKEN=a&jwt=b&password=c&secret=d&api_key=e&apikey=f&key=g&auth=h",
            "ws://h/p?TOKEN=REDACTED&jwt=REDACTED&password=REDACTED&secret=REDACTED"
            "&api_key=REDACTED&apikey=REDACTED&key=REDACTED&auth=REDACTED",
        ),
        (
            "ws://h/?sig=a&Signature=b&X-Amz-Signature=c&id_token=d&client-secret=e",
            "ws://h/?sig=REDACTED&Signature=REDACTED&X-Amz-Signature=REDACTED"
            "&id_token=REDACTED&client-secret=REDACTED",
        ),
        ("ws://h/?access%5Ftoken=a%20b", "ws://h/?access%5Ftoken=REDACTED"),  # encoded name
        ("ws://h/?a=1;token=x&b=2", "ws://h/?a=1;token=REDACTED&b=2"),
        ("ws://h/?token=&token&since=3&epoch=e", "ws://h/?token=&token&since=3&epoch=e"),
        ("ws://h/?x=1#access_token=t", "ws://h/?x=1#access_token=REDACTED"),
        ("ws://user:pw@h/?room=1", "ws://user:REDACTED@h/?room=1"),
        ("ws://[::1]:80/token=x", "ws://[::1]:80/token=x"),  # a path, not a query
        ("ws://h/", "ws://h/"),
    ],
)
def test_redact_uri(uri: str, printed: str) -> None:
    assert console.redact_uri(uri) == printed


@pytest.mark.parametrize(
    ("status", "headers", "body", "text"),
    [
        (
            401,
            [("WWW-Authenticate", BEARER_EXPIRED)],
            b"unauthorized\n",
            "401 Unauthorized: invalid token: the token has expired",
        ),
        (
            401,
            [("WWW-Authenticate", "bearer error=insufficient_scope")],
            b"",
            "401 Unauthorized: insufficient scope",
        ),
        (
            401,
            [("WWW-Authenticate", 'Bearer error_description="say \\"hi\\", then go"')],
            b"",
            '401 Unauthorized: say "hi", then go',
        ),
        # "Bearer" in another challenge's quoted string; then the real one, in another field.
        (
            401,
            [
                ("WWW-Authenticate", 'Basic realm="a, Bearer b"'),
                ("WWW-Authenticate", 'Newauth x=1, Bearer realm="r", error="invalid_token"'),
            ],
            b"",
            "401 Unauthorized: invalid token",
        ),
        # A challenge without an error: the body says why.
        (
            401,
            [("WWW-Authenticate", 'Bearer realm="chat"')],
            b"log in first\n",
            "401 Unauthorized: log in first",
        ),
        (403, [], b"\n  no token \nsecond line", "403 Forbidden: no token"),
        (403, [("Content-Type", "text/html; charset=utf-8")], b"<html>\n", "403 Forbidden"),
        (404, [], b"", "404 Not Found"),
        (
            403,
            [],
            b"\x1b]0;pwned\x07 \xe2\x80\xae\xff",
            "403 Forbidden: \\x1b]0;pwned\\x07 \\u202e\ufffd",
        ),
        (403, [], b"a" * 300, "403 Forbidden: " + "a" * 185 + "…"),
    ],
    ids=[
        "bearer",
        "error_only",
        "quoted_pair",
        "several_challenges",
        "bearer_without_error",
        "first_line",
        "html",
        "no_body",
        "escaped",
        "truncated",
    ],
)
def test_describe_refusal(
    status: int, headers: list[tuple[str, str]], body: bytes, text: str
) -> None:
    phrase = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}[status]
    assert console.describe_refusal(Response(status, phrase, Headers(headers), body)) == text


def test_describe_refusal_without_a_reason_phrase() -> None:
    assert console.describe_refusal(Response(418, "", Headers(), b"short\n")) == "418: short"


async def test_tls_certificate_not_trusted(net: Net, tls: Tls) -> None:
    server = await net.serve(echo, ssl=tls.server)
    uri = f"wss://{HOST}:{server.port}/"
    client = make_console(Options(uri, expect=1))
    assert await client.run() == console.EXIT_CONNECT
    error = one_error_line(printed(client)[1])
    assert error.startswith(f"rfc6455: TLS certificate of {uri} not accepted: self")


async def test_tls_to_a_plain_server(net: Net) -> None:
    server = await net.serve(echo)
    uri = f"wss://{HOST}:{server.port}/"
    client = make_console(Options(uri, expect=1))
    assert await client.run() == console.EXIT_CONNECT
    error = one_error_line(printed(client)[1])
    assert error == f"rfc6455: TLS error with {uri}: wrong version number"


async def test_console_subprotocols(net: Net) -> None:
    server = await net.serve(echo, subprotocols=["b"])
    chosen = make_console(Options(net.uri(server), subprotocols=("a", "b"), sends=("x",)))
    assert await chosen.run() == 0
    assert printed(chosen)[1].startswith(f"connected to {net.uri(server)}, subprotocol b\n")
    refused = make_console(Options(net.uri(server), subprotocols=("c",), sends=("x",)))
    assert await refused.run() == 0
    assert ", no subprotocol selected\n" in printed(refused)[1]


async def test_console_server_closes(net: Net) -> None:
    async def handler(ws: Connection) -> None:
        await ws.send('{"bye": true}')
        await ws.close(4000, "done")

    server = await net.serve(handler)
    client = make_console(Options(net.uri(server), timeout=GUARD, json=True))
    assert await client.run() == console.EXIT_CLOSED  # 4000 is not a normal closure
    out, err = printed(client)
    assert json.loads(out)["data"] == {"bye": True}
    assert err.splitlines()[-1] == 'closed by server: 4000 (private use) "done"'


async def test_console_reads_stdin(
    recorder: tuple[Recorder, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, uri = recorder
    read_fd, write_fd = os.pipe()
    try:
        monkeypatch.setattr(sys, "stdin", SimpleNamespace(fileno=lambda: read_fd))
        os.write(write_fd, b"from stdin\n")
        os.close(write_fd)
        client = make_console(Options(uri, linger=0))
        assert await client.run() == 0
    finally:
        os.close(read_fd)
    assert await server.closed() == (1000, "")
    assert server.messages == ["from stdin"]


def test_main_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        uri = f"ws://{HOST}:{sock.getsockname()[1]}/"
        assert console.main([uri]) == console.EXIT_CONNECT
    captured = capsys.readouterr()
    assert captured.out == ""
    assert one_error_line(captured.err) == f"rfc6455: cannot connect to {uri}: connection refused"


def test_python_m_rfc6455(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["rfc6455", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("rfc6455", run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m rfc6455 ")


def test_tls_options_give_the_context(tmp_path: Path) -> None:
    uri = "wss://localhost:1/"
    assert console.parse_args([uri]).tls is None  # connect()'s default: the system's CAs
    insecure = console.parse_args([uri, "--insecure"])
    assert insecure.insecure
    assert insecure.tls is not None
    assert (insecure.tls.verify_mode, insecure.tls.check_hostname) == (ssl.CERT_NONE, False)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    trusting = console.parse_args([uri, "--cafile", str(tmp_path / "ca.pem")])
    assert trusting.tls is not None
    assert not trusting.insecure
    assert len(trusting.tls.get_ca_certs()) == 1  # that CA, and not the system's


async def test_insecure_connects_to_an_untrusted_server_with_a_warning(net: Net, tls: Tls) -> None:
    server = await net.serve(echo, ssl=tls.server)
    options = console.parse_args([f"wss://{HOST}:{server.port}/", "--insecure", "--send", "x"])
    client = make_console(options)
    assert await client.run() == console.EXIT_OK
    stderr = printed(client)[1]
    assert stderr.startswith(
        "rfc6455: warning: --insecure: the server's certificate is not checked\n"
    )
