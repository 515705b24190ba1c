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
from typing import Any

import pytest

from rfc6455 import ConnectionClosed, Limits
from rfc6455.frames import Opcode
from tests.server.support import GUARD, Chat, Json, check_refusal, upgrade, wait_until
from tests.server.test_auth import SECRET, token
from tests.server.test_protection import check_rate_limited, read_close, slowloris
from tests.server.test_slow_consumer import join_without_reading

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
