"""Issue 7's mixed abuse run: hostile clients beside 20 well-behaved ones for 30 seconds.

Every well-behaved client must receive every message in seq order, and every hostile one must
get its documented answer: a slow reader 1008 "slow consumer", a flooder 1008 "rate limit"
after its rate_limited errors, a slowloris a dropped connection after the open timeout, an
oversize message 1009, invalid UTF-8 1007, a binary message 1003, a missing or bad token 401
with a Bearer challenge, a page of another site 403. The chat runs with --auth jwt: every
client that joins shows a valid token (as ``?access_token=``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rfc6455
from rfc6455 import ConnectionClosed, Limits
from rfc6455.frames import Opcode, serialize_frame
from server.logs import JsonFormatter
from tests.server.support import (
    GUARD,
    HOST,
    Chat,
    Json,
    check_refusal,
    upgrade,
    upgrade_head,
    wait_until,
)
from tests.server.test_auth import SECRET, token
from tests.server.test_protection import check_rate_limited, read_close, slowloris
from tests.server.test_slow_consumer import join_without_reading, rss
from tests.server.test_subprocess import spawn  # noqa: F401  (the fixture)

GOOD = 20
RUN_SECONDS = 30.0
# Each good client sends 5 messages a second, under the 20 a second of the rate limit.
GOOD_INTERVAL = 0.2
# 8 KiB each, 40 KiB/s a client (the byte limit is 1 MiB/s): 800 KiB/s in all, so a reader that
# stops fills the megabytes of kernel buffers of a loopback connection within seconds.
GOOD_SIZE = 8192
ROUNDS_AT = (0.5, 8.0, 16.0)  # seconds into the run at which each kind of hostile comes
MAX_SIZE = 65536
# Every client that joins authenticates (the chat runs with --auth jwt).
QUERY = f"access_token={token()}"


class Good:
    """A well-behaved client: sends under the limits and records everything it receives."""

    def __init__(self, chat: Chat, client: Any) -> None:
        self.chat = chat
        self.client = client
        self.received: list[Json] = []

    async def talk(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while loop.time() < until:
            await self.client.send(f"{self.client.id} {n} " + "g" * GOOD_SIZE)
            n += 1
            await asyncio.sleep(GOOD_INTERVAL)

    async def listen(self, end: str) -> None:
        """Record every message until the broadcast of ``end`` (or, for its sender, the ack)."""
        connection = self.client.connection
        async with asyncio.timeout(RUN_SECONDS + 3 * GUARD):
            while True:
                message = json.loads(await connection.recv())
                self.received.append(message)
                if message.get("message") == end or message.get("clientMsgId") == end:
                    return


async def hostile_round(chat: Chat, good: list[Good], caplog: pytest.LogCaptureFixture) -> set[str]:
    """One of each hostile client; check each answer; return the ids that joined the chat."""
    joined: set[str] = set()

    async def slow_reader() -> None:
        sock, connection_id = await join_without_reading(chat.port, "/?" + QUERY)
        joined.add(connection_id)
        port = sock.getsockname()[1]
        # It reads nothing more; the good clients' traffic fills what it leaves unread.
        try:
            await wait_until(
                lambda: any(
                    "is a slow consumer" in record.getMessage()
                    and f":{port} " in record.getMessage()
                    for record in caplog.records
                ),
                within=RUN_SECONDS,
            )
        finally:
            sock.close()

    async def flooder() -> None:
        client = await chat.join(QUERY)
        joined.add(client.id)
        errors = 0
        try:
            for n in range(200):
                await client.send(f"flood {n}")
            while True:
                message = await client.recv()
                if message.get("code") == "rate_limited":
                    check_rate_limited(message, at_most_ms=1000)
                    errors += 1
        except ConnectionClosed:
            pass
        await client.connection.wait_closed()
        assert errors == 3
        assert (client.connection.close_code, client.connection.close_reason) == (
            1008,
            "rate limit",
        )

    async def oversize() -> None:
        client = await chat.join(QUERY)
        joined.add(client.id)
        await client.send("o" * (MAX_SIZE + 1))
        await client.connection.wait_closed()
        assert client.connection.close_code == 1009

    async def invalid_utf8() -> None:
        raw = await chat.join_raw(QUERY)
        joined.add(raw.id)
        await raw.send_frame(Opcode.TEXT, b"caf\xc3")
        code, _ = await read_close(raw)
        assert code == 1007
        await raw.close()

    async def binary() -> None:
        client = await chat.join(QUERY)
        joined.add(client.id)
        await client.connection.send(b"\x00\x01")
        await client.connection.wait_closed()
        assert (client.connection.close_code, client.connection.close_reason) == (
            1003,
            "binary messages are not supported",
        )

    async def bad_tokens() -> None:
        for headers in [(), ("Authorization: Bearer not.a.token",)]:
            reply = await upgrade(chat, "/", *headers)
            check_refusal(reply, 401)
            assert reply.headers["www-authenticate"].startswith("Bearer ")
        forged = token(secret="another secret, also 32 bytes long")
        check_refusal(await upgrade(chat, "/", f"Authorization: Bearer {forged}"), 401)

    async def wrong_origin() -> None:
        reply = await upgrade(chat, "/?" + QUERY, "Origin: https://evil.example")
        check_refusal(reply, 403)

    async def slowloris_50() -> None:
        dropped = await slowloris(chat.port, 50, asyncio.Event())
        assert all(result in (b"", None) for result in dropped)

    await asyncio.gather(
        slow_reader(),
        flooder(),
        oversize(),
        invalid_utf8(),
        binary(),
        bad_tokens(),
        wrong_origin(),
        slowloris_50(),
    )
    return joined


async def test_abuse_run(start_chat: Any, caplog: pytest.LogCaptureFixture) -> None:
    chat = await start_chat(
        auth="jwt",
        jwt_secret=SECRET,
        limits=Limits(
            open_timeout=2.0,
            max_size=MAX_SIZE,
            # The smallest allowed: the slow reader is found within seconds at this traffic.
            max_send_buffer=65536,
            ping_interval=None,
        ),
    )
    good = [Good(chat, await chat.join(QUERY)) for _ in range(GOOD)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = "end of the run"
    listeners = [asyncio.create_task(g.listen(end)) for g in good]

    async def rounds() -> set[str]:
        joined: set[str] = set()
        for at in ROUNDS_AT:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            joined |= await hostile_round(chat, good, caplog)
        return joined

    hostiles = asyncio.create_task(rounds())
    try:
        await asyncio.gather(*(g.talk(start + RUN_SECONDS) for g in good))
        joined = await hostiles
        # The last word: every listener stops once it has it, so it has everything before it.
        closer = good[0].client
        await closer.connection.send(json.dumps({"message": end, "clientMsgId": end}))
        await asyncio.gather(*listeners)
    finally:
        for task in [hostiles, *listeners]:
            task.cancel()
        await asyncio.gather(hostiles, *listeners, return_exceptions=True)

    await wait_until(lambda: chat.app.queue.depth == 0)
    rows = chat.rows()  # (seq, connection_id, message, ...)
    through = next(row[0] for row in rows if row[2] == end)
    for g in good:
        assert g.client.connection.state.name == "OPEN"
        broadcasts = [m["seq"] for m in g.received if m["type"] == "broadcast"]
        # In seq order, and every message but its own (those it gets acks for).
        assert broadcasts == sorted(broadcasts)
        others = [row[0] for row in rows if row[0] <= through and row[1] != g.client.id]
        assert broadcasts == others
        errors = [m for m in g.received if m["type"] == "error"]
        assert errors == []
        left = [m["connectionId"] for m in g.received if m["type"] == "user_left"]
        assert sorted(left) == sorted(joined)  # each hostile announced once
    assert len(joined) == 5 * len(ROUNDS_AT)


# The hostile-client suite of issue 11: each attack that once worked, over real sockets.


def errors_of(messages: list[Json]) -> list[Json]:
    return [m for m in messages if m.get("type") == "error"]


async def test_a_lone_surrogate_costs_no_one_else_a_message(start_chat: Any) -> None:
    # It used to be accepted; the database then refused the whole batch it landed in, and
    # the error path raised again while encoding the reply.
    chat = await start_chat(rate_limit=0)
    attacker = await chat.join()
    senders = [await chat.join() for _ in range(10)]
    for n in range(20):
        for i, sender in enumerate(senders):
            await sender.send(json.dumps({"message": f"{i}-{n}", "clientMsgId": f"{i}-{n}"}))
        await attacker.send('{"message": "hi", "clientMsgId": "\\ud800"}')
        await attacker.send('{"message": "lone \\udfff", "clientMsgId": "a-' + str(n) + '"}')
    refusals: list[Json] = []
    while len(refusals) < 40:
        if (message := await attacker.recv())["type"] == "error":
            refusals.append(message)
    assert {m["code"] for m in refusals} == {"invalid_message"}
    # The second kind names its message; the first had no valid id to name.
    assert [m["clientMsgId"] for m in refusals] == [x for n in range(20) for x in (None, f"a-{n}")]
    for i, sender in enumerate(senders):
        acks: list[Json] = []
        while len(acks) < 20:  # exactly one answer per message, an ack, in order
            message = await sender.recv_any()
            assert message["type"] in ("ack", "broadcast"), message
            if message["type"] == "ack":
                acks.append(message)
        assert [a["clientMsgId"] for a in acks] == [f"{i}-{n}" for n in range(20)]
    await wait_until(lambda: chat.app.queue.depth == 0)
    assert chat.app.queue.dead_lettered == 0
    assert len(chat.rows()) == 200


async def test_control_characters_cannot_make_a_broadcast_six_times_its_size(
    start_chat: Any,
) -> None:
    # 1 MiB of U+0001 became a 6 MiB broadcast, which cut off every reader with 1008.
    chat = await start_chat(rate_limit=0)
    attacker = await chat.join()
    readers = [await chat.join() for _ in range(5)]
    await attacker.send("\x01" * (2**20 - 100))
    await attacker.send("\x01" * 16_000)
    await attacker.send('"' * 16_384)  # the largest quoting: 32 KiB as broadcast, allowed
    await attacker.send("x" * 16_385)
    refused = [await attacker.recv() for _ in range(3)]
    assert [m["code"] for m in refused] == ["invalid_message"] * 3
    assert "at most 16384 characters" in refused[0]["message"]
    assert "control characters" in refused[1]["message"]
    assert "at most 16384 characters" in refused[2]["message"]
    for reader in readers:
        message = await reader.expect_broadcast(attacker, '"' * 16_384)
        assert reader.connection.state.name == "OPEN", message
    await wait_until(lambda: chat.app.queue.depth == 0)
    assert [row[2] for row in chat.rows()] == ['"' * 16_384]


async def test_a_reader_of_a_large_history_is_not_a_slow_consumer(start_chat: Any) -> None:
    # A history larger than --max-send-buffer used to cut off the newcomer at its next frame.
    chat = await start_chat(
        rate_limit=0,
        limits=Limits(max_send_buffer=65536),
        max_text_chars=70_000,
        max_text_bytes=70_000,
    )
    writer = await chat.join()
    for n in range(14):  # ~900 KiB of history, well within --history-bytes
        await writer.send(f"{n} " + "h" * 64_000)
    await writer.wait_acks(14)
    newcomer = await chat.join()
    assert newcomer.history is not None
    assert len(newcomer.history["messages"]) == 14
    for n in range(20):  # live messages behind the history frame
        await writer.send(f"live {n}")
    for n in range(20):
        await newcomer.expect_broadcast(writer, f"live {n}")
    assert newcomer.connection.state.name == "OPEN"


async def test_a_history_and_a_resume_are_bounded_in_bytes(start_chat: Any) -> None:
    chat = await start_chat(
        rate_limit=0,
        history=50,
        history_bytes=200_000,
        max_text_chars=60_000,
        max_text_bytes=60_000,
    )
    writer = await chat.join()
    for n in range(10):
        await writer.send(f"{n} " + "b" * 50_000)
    acks = await writer.wait_acks(10)
    plain = await chat.join()
    assert plain.history is not None
    # The latest that fit in 200,000 bytes: three of about 50 KB.
    assert [m["message"][:2] for m in plain.history["messages"]] == ["7 ", "8 ", "9 "]
    epoch = writer.welcome["epoch"]
    near = await chat.join(f"since={acks[7]['seq']}&epoch={epoch}")
    assert near.history is not None
    assert (near.history["recovered"], len(near.history["messages"])) == (True, 2)
    far = await chat.join(f"since={acks[0]['seq']}&epoch={epoch}")
    assert far.history is not None
    assert far.history["recovered"] is False
    assert [m["message"][:2] for m in far.history["messages"]] == ["7 ", "8 ", "9 "]


def fill(db: Path, count: int, size: int) -> str:
    """Put ``count`` messages of ``size`` bytes in a server's database; return its epoch."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO messages (seq, connection_id, message, timestamp, created_at)"
            " VALUES (?, 'old', ?, '2024-01-01 00:00:00', '2024-01-01T00:00:00.000000+00:00')",
            ((seq, f"{seq} " + "m" * size) for seq in range(1, count + 1)),
        )
        conn.execute("UPDATE meta SET reserved_seq = ?", (count,))
        conn.execute("COMMIT")
        (epoch,) = conn.execute("SELECT epoch FROM meta").fetchone()
    finally:
        conn.close()
    return str(epoch)


async def stopped(server: Any) -> None:
    server.process.send_signal(signal.SIGTERM)
    assert await server.wait() == 0


async def test_memory_stays_flat_whatever_resumes_do_not_read(
    spawn: Callable[..., Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    # 8 paused resumes of a 40 MiB history took a server from 59 to 509 MB; start-up read
    # 10,000 full rows (a 300 MiB database peaked at 627 MB).
    db = tmp_path / "big.db"
    args = ("--port", "0", "--db", str(db), "--ping-interval", "0")
    empty = await spawn(*args)
    await empty.port()
    baseline = rss(empty.process.pid)
    await stopped(empty)
    epoch = fill(db, 100, 2**20)  # 100 MiB of messages of 1 MiB, from before the text limit
    server = await spawn(*args)
    port = await server.port()
    started = rss(server.process.pid)
    # The ring holds at most 16 MiB, and the read that fills it no more.
    assert started - baseline < 48 * 2**20, (baseline, started)
    resumes = [await join_without_reading(port, f"/?since=0&epoch={epoch}") for _ in range(8)]
    await asyncio.sleep(0.5)
    # Each got the latest messages that fit in 1 MiB (recovered: false), not 100 MiB.
    assert rss(server.process.pid) - started < 24 * 2**20, (started, rss(server.process.pid))
    for sock, _ in resumes:
        sock.close()
    await stopped(server)


async def test_tiny_fragments_cost_about_their_size(
    spawn: Callable[..., Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    # An unfinished 1 MiB message in 1- or 2-byte fragments cost the server 36-56 MB, on
    # /echo, without credentials.
    server = await spawn("--port", "0", "--db", str(tmp_path / "m.db"), "--ping-interval", "0")
    port = await server.port()
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(upgrade_head("/echo", f"{HOST}:{port}"))
    await reader.readuntil(b"\r\n\r\n")
    before = rss(server.process.pid)
    size = 2**19
    first = serialize_frame(Opcode.TEXT, b"f", fin=False, mask=True)
    fragment = serialize_frame(Opcode.CONT, b"f", fin=False, mask=True)
    writer.write(first)
    for _ in range(0, size, 4096):
        writer.write(fragment * 4096)
        await writer.drain()
    await asyncio.sleep(0.5)
    grown = rss(server.process.pid) - before
    assert grown < 4 * 2**20, grown  # the old parts list: 36 times 512 KiB, 18 MiB
    writer.write(serialize_frame(Opcode.CONT, b"", mask=True))
    async with asyncio.timeout(GUARD):
        head = await reader.readexactly(10)  # the echo: 127-length header, then the payload
    assert head[0] == 0x81
    assert int.from_bytes(head[2:10], "big") == size + 1
    writer.close()
    await stopped(server)


async def test_resuming_after_a_crash_recovers(
    spawn: Callable[..., Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    # After kill -9 the next seq starts above the reservation, and every client that came
    # back, even one that missed nothing, got recovered: false.
    args = ("--port", "0", "--db", str(tmp_path / "m.db"), "--ping-interval", "0")
    server = await spawn(*args)
    url = f"ws://{HOST}:{await server.port()}/"
    client = await rfc6455.connect(url, ping_interval=None)
    welcome = json.loads((await client.recv(), await client.recv(), await client.recv())[1])
    acks = []
    for n in range(3):
        await client.send(json.dumps({"message": f"before {n}", "clientMsgId": str(n)}))
        acks.append(json.loads(await client.recv()))
    await server.kill()  # SIGKILL
    server = await spawn(*args)
    url = f"ws://{HOST}:{await server.port()}/"
    writer = await rfc6455.connect(url, ping_interval=None)
    for _ in range(3):
        await writer.recv()
    await writer.send(json.dumps({"message": "after the crash", "clientMsgId": "x"}))
    after = json.loads(await writer.recv())
    assert after["seq"] > 10_000  # above the reservation: seqs were skipped
    for since, expected in (
        (acks[2]["seq"], ["after the crash"]),
        (acks[0]["seq"], ["before 1", "before 2", "after the crash"]),
    ):
        back = await rfc6455.connect(
            f"{url}?since={since}&epoch={welcome['epoch']}", ping_interval=None
        )
        await back.recv()
        await back.recv()
        history = json.loads(await back.recv())
        assert history["recovered"] is True
        assert [m["message"] for m in history["messages"]] == expected
        await back.close()
    await writer.close()
    await client.close()
    await stopped(server)


async def test_dns_rebinding_is_refused_and_the_real_names_are_not(start_chat: Any) -> None:
    # Host: evil.example:P with Origin http://evil.example:P passed the Origin check.
    chat = await start_chat(allowed_hosts=frozenset({"chat.example.com", ".example.org"}))
    port = chat.port

    for host in (f"evil.example:{port}", "evil.example", f"localhost.evil.example:{port}"):
        for target in ("/", "/echo"):
            reply = await chat.request(upgrade_head(target, host, f"Origin: http://{host}"))
            check_refusal(reply, 421)
        page = await chat.request(f"GET /index.html HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert page.status == 421, host
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"app.localhost:{port}",
        f"[::1]:{port}",
        f"chat.example.com:{port}",
        f"a.example.org:{port}",
        "example.org",
    ):
        raw = await chat.open_raw()
        raw.writer.write(upgrade_head("/", host, f"Origin: http://{host}"))
        async with asyncio.timeout(GUARD):
            head = await raw.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), (host, head)
        raw.drop()


async def test_connect_and_drop_loops_send_few_notices(start_chat: Any) -> None:
    # Each connect and drop was a user_left to every client: 6,634 a user in 10 s.
    chat = await start_chat(history=0)
    observer = await chat.join()
    left: list[str] = []
    notices = 0
    for _ in range(150):
        raw = await chat.join_raw()
        left.append(raw.id)
        raw.drop()
    await asyncio.sleep(0.05)
    while True:
        try:
            async with asyncio.timeout(2.5):
                message = await observer.recv()
        except TimeoutError:
            break
        notices += 1
        if message["type"] == "user_left":
            announced = [message["connectionId"]]
        else:
            assert message["type"] == "users_left", message
            announced = [user["connectionId"] for user in message["users"]]
            assert len(announced) <= 100
            announced += ["unnamed"] * message["more"]
        for connection_id in announced:
            if connection_id != "unnamed":
                assert connection_id == left[0]  # in the order they left
            left.pop(0)
    assert left == []  # every departure announced, exactly once
    assert notices <= 20 + 5 + 3  # the burst, the rate for the run, then one a second


async def test_a_close_frame_then_a_reset_is_no_error(
    start_chat: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Every browser tab that closes with unread data does this; it logged ERROR with a
    # traceback (OSError from write_eof()).
    chat = await start_chat(history=0, rate_limit=0)
    a = await chat.join()
    for n in range(60):
        raw = await chat.join_raw()
        await a.send(f"unread {n}")  # something the raw client never reads
        await raw.send_frame(Opcode.CLOSE, (1001).to_bytes(2, "big") + b"bye")
        raw.reset()
    await a.send("still fine")
    b = await chat.join()
    await a.send("and another")
    await b.expect_broadcast(a, "and another")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "Traceback" not in caplog.text


async def test_a_close_reason_cannot_forge_a_log_line(
    start_chat: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    chat = await start_chat()
    client = await chat.join()
    forged = "bye\n2026-01-01 00:00:00 ERROR server: forged\r\x1b[2K"
    await client.connection.close(4000, forged)
    await wait_until(
        lambda: any("disconnect " + client.id in r.getMessage() for r in caplog.records)
    )
    (line,) = [
        r.getMessage() for r in caplog.records if "disconnect " + client.id in r.getMessage()
    ]
    assert not {"\n", "\r", "\x1b"} & set(line)
    assert "client closed 4000 'bye\\n2026-01-01 00:00:00 ERROR server: forged\\r\\x1b[2K'" in line


async def test_handshakes_in_progress_are_capped_per_address_and_in_size(
    start_chat: Any,
) -> None:
    chat = await start_chat(limits=Limits(max_handshakes_per_address=10, open_timeout=2.0))
    stop = asyncio.Event()
    attack = asyncio.create_task(slowloris(chat.port, 25, stop))
    await wait_until(lambda: attack.done() or len(chat.app.server._handshakes) >= 10)  # type: ignore[union-attr]
    await asyncio.sleep(0.2)
    assert len(chat.app.server._handshakes) == 10  # type: ignore[union-attr]
    # Another address is not held back.
    other = await chat.join_raw(source="127.0.0.2")
    assert other.id
    other.drop()
    results = await attack
    # 15 of the 25 were answered 503 at once; the 10 in progress were dropped at the end.
    assert sum(1 for r in results if r is not None and r.startswith(b"HTTP/1.1 503 ")) == 15
    # A head over 16 KiB is refused as such, before its end.
    reply = await chat.request(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(b"X-%d: %s\r\n" % (n, b"v" * 1000) for n in range(17))
    )
    assert (reply.status, reply.body) == (431, b"message head over 16384 bytes\n")


async def test_http_requests_get_what_rfc_9112_says(start_chat: Any) -> None:
    chat = await start_chat(history=0)
    port = chat.port
    # §3.2.2: "a server MUST accept the absolute-form in requests" (it got 404).
    target = f"http://127.0.0.1:{port}/index.html"
    page = await chat.request(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    assert page.status == 200
    assert page.body == (chat.app.settings.web_root / "index.html").read_bytes()
    # The absolute-form's host is the one checked (§3.2.2: the Host field is ignored).
    other = await chat.request(
        f"GET http://evil.example:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    )
    assert other.status == 421
    # §3.2: 400 for a request without Host, or with two (they got 200).
    for head in (b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"):
        reply = await chat.request(head)
        check_refusal(reply, 400)
    # An upgrade with a body: its bytes were read as frames (an empty message was stored).
    body = serialize_frame(Opcode.TEXT, b"smuggled", mask=True)
    head = upgrade_head("/", f"127.0.0.1:{port}", f"Content-Length: {len(body)}")
    reply = await chat.request(head + body)
    assert check_refusal(reply, 400) == "a WebSocket upgrade request has no body\n"
    await wait_until(lambda: chat.app.queue.depth == 0)
    assert chat.rows() == []
    # No page may be framed by another site.
    index = await chat.get("/")
    assert index.headers["x-frame-options"] == "DENY"
    assert index.headers["content-security-policy"] == "frame-ancestors 'none'"


async def test_the_server_logs_the_code_and_reason_of_the_closes_it_starts(
    start_chat: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Server-initiated closes were logged as 1006 with an empty reason.
    caplog.set_level(logging.INFO)
    chat = await start_chat(limits=Limits(ping_interval=0.2, ping_timeout=0.2, max_size=100))
    silent = await chat.join_raw()  # never answers a ping
    big = await chat.join()
    await big.send("x" * 101)

    def line_of(connection_id: str) -> str:
        lines = [
            r.getMessage()
            for r in caplog.records
            if f"disconnect {connection_id}" in r.getMessage()
        ]
        return lines[0] if lines else ""

    await wait_until(lambda: line_of(silent.id) and line_of(big.id))
    assert "server closed 1011 'keepalive ping timeout'" in line_of(silent.id)
    assert "client closed 1009 'message over 100 bytes'" not in line_of(big.id)
    assert "server closed 1009 'message over 100 bytes'" in line_of(big.id)
    # And in the JSON lines: the code the server sent, not 1006.
    (silent_record,) = [
        r
        for r in caplog.records
        if getattr(r, "event", "") == "disconnect" and getattr(r, "connection_id", "") == silent.id
    ]
    line = json.loads(JsonFormatter().format(silent_record))
    assert (line["event"], line["initiator"], line["close_code"]) == ("disconnect", "server", 1011)
    assert line["close_reason"] == "keepalive ping timeout"
    await silent.close()


async def test_an_empty_or_blank_message_is_refused(start_chat: Any) -> None:
    chat = await start_chat(history=0)
    a, b = await chat.join(), await chat.join()
    for text in ("", "   ", "\n\t", json.dumps({"message": " ", "clientMsgId": "blank"})):
        await a.send(text)
    errors = [await a.recv() for _ in range(4)]
    assert [e["code"] for e in errors] == ["invalid_message"] * 4
    assert errors[3]["clientMsgId"] == "blank"
    await a.send("not blank")
    await b.expect_broadcast(a, "not blank")  # and nothing before it


async def test_a_second_server_on_the_same_database_refuses_to_start(
    spawn: Callable[..., Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    # Both ran; neither saw the other's messages, and their seqs forked (1 and 20,001).
    db = str(tmp_path / "m.db")
    first = await spawn("--port", "0", "--db", db)
    await first.port()
    second = await spawn("--port", "0", "--db", db)
    assert await second.wait() == 2
    (line,) = second.lines
    assert line == (
        f"python -m server: error: {db} is in use by another server "
        f"(pid {first.process.pid}): stop it, or give this one another --db\n"
    )
    await stopped(first)
    third = await spawn("--port", "0", "--db", db)
    await third.port()  # the first one's lock went with it
    await stopped(third)


async def test_running_out_of_descriptors_is_logged_once_a_second(
    spawn: Callable[..., Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    # asyncio logged "socket.accept() out of system resource" thousands of times a second
    # (133 MB of log in 57 s), and nothing said the limit was below --max-connections.
    server = await spawn(
        *("--port", "0", "--db", str(tmp_path / "m.db"), "--log-format", "json"), nofile=64
    )
    port = await server.port()
    (warning,) = server.lines_with("--max-connections 10000 needs about")
    assert "may open 64 (ulimit -n, hard limit 64)" in warning
    streams = []
    for _ in range(80):  # more than the descriptors left
        streams.append(await asyncio.open_connection(HOST, port))
    await asyncio.sleep(2.5)
    pauses = [json.loads(line) for line in server.lines_with('"event": "accept_failed"')]
    assert 1 <= len(pauses) <= 4, pauses
    # Accepting is tried again every 0.1 s: the lines after the first sum the failures up.
    assert pauses[0]["message"].startswith("cannot accept connections, pausing: [Errno 24]")
    assert "repeated" not in pauses[0]
    assert all(pause["repeated"] >= 5 for pause in pauses[1:])
    assert pauses[1]["message"].endswith("more like it in the last 1 s)")
    for _, writer in streams:
        writer.close()
    await asyncio.sleep(0.3)
    # Accepting resumed: a client gets in.
    client = await rfc6455.connect(f"ws://{HOST}:{port}/", ping_interval=None)
    assert "connectionId" in json.loads(await client.recv())
    await client.close()
    await stopped(server)
