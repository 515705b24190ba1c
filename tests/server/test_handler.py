"""Seqs, history, resume, acks and structured messages, end to end over real sockets.

Each test starts an ``App`` on 127.0.0.1 with its database in ``tmp_path`` (``start_chat``).
"No gap, no duplicate" is checked on seqs: with one sender, its messages' seqs are consecutive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from typing import Any

import pytest

from server.retry import RetryPolicy
from tests.server.support import Chat, Client, Json, check_broadcast, locked, wait_until

# Retries often, for long enough that no test ever exhausts it.
PATIENT = RetryPolicy(attempts=1000, base_delay=0.01, max_delay=0.02)
# Gives up fast: two attempts 10 ms apart.
IMPATIENT = RetryPolicy(attempts=2, base_delay=0.01)


def seqs(messages: list[Json]) -> list[int]:
    return [message["seq"] for message in messages]


async def send_many(sender: Client, texts: list[str]) -> None:
    for text in texts:
        await sender.send(text)


# Seqs and acks.


async def test_seqs_are_consecutive_and_acked_to_their_sender(chat: Chat) -> None:
    a, b = await chat.join(), await chat.join()
    await a.send("plain")
    await a.send(json.dumps({"message": "structured ✓", "clientMsgId": "m-1"}))
    await a.send(json.dumps({"message": "no id"}))
    first = await b.expect_broadcast(a, "plain")
    second = await b.expect_broadcast(a, "structured ✓")  # the text only, not the JSON
    third = await b.expect_broadcast(a, "no id")
    assert seqs([first, second, third]) == [1, 2, 3]
    assert "clientMsgId" not in second
    assert await a.wait_acks(3) == [
        {"type": "ack", "channel": "general", "seq": 1, "clientMsgId": None},
        {"type": "ack", "channel": "general", "seq": 2, "clientMsgId": "m-1"},
        {"type": "ack", "channel": "general", "seq": 3, "clientMsgId": None},
    ]
    await chat.stop()
    conn = sqlite3.connect(chat.db_path)
    try:
        rows = conn.execute("SELECT seq, message, client_msg_id FROM messages").fetchall()
    finally:
        conn.close()
    assert rows == [(1, "plain", None), (2, "structured ✓", "m-1"), (3, "no id", None)]


async def test_an_ack_means_committed(start_chat: Any) -> None:
    chat = await start_chat(retry=PATIENT)
    a, b = await chat.join(), await chat.join()
    with locked(chat.db_path):
        await a.send(json.dumps({"message": "waits", "clientMsgId": "w"}))
        await b.expect_broadcast(a, "waits")  # broadcast at once...
        await wait_until(lambda: chat.app.queue.failed_attempts >= 2)
        await b.send("marker")
        await a.expect_broadcast(b, "marker")
        assert a.acks == []  # ...but not acknowledged while it cannot be committed
    assert await a.wait_acks(1) == [
        {"type": "ack", "channel": "general", "seq": 1, "clientMsgId": "w"}
    ]
    assert chat.rows()[0][:3] == (1, a.id, "waits")


@pytest.mark.parametrize(
    "client_msg_id", ["x" * 129, 7, None, ["list"]], ids=["too long", "number", "null", "list"]
)
async def test_a_bad_client_msg_id_is_an_error_and_nothing_else(
    chat: Chat, client_msg_id: object
) -> None:
    a, b = await chat.join(), await chat.join()
    await a.send(json.dumps({"message": "refused", "clientMsgId": client_msg_id}))
    error = await a.recv_any()
    assert error["type"] == "error"
    assert error["code"] == "invalid_message"
    assert "128" in error["message"]
    await a.send("accepted")
    await b.expect_broadcast(a, "accepted")  # the refused one was not broadcast
    assert await a.wait_acks(1) == [
        {"type": "ack", "channel": "general", "seq": 1, "clientMsgId": None}
    ]
    await chat.stop()
    assert [row[2] for row in chat.rows()] == ["accepted"]


@pytest.mark.parametrize(
    "text", ['["message", "x"]', '{"message": 5}', '{"text": "x"}', "42", '"json string"']
)
async def test_json_that_is_not_a_structured_message_is_plain_text(chat: Chat, text: str) -> None:
    a, b = await chat.join(), await chat.join()
    await a.send(text)
    await b.expect_broadcast(a, text)
    assert (await a.wait_acks(1))[0]["clientMsgId"] is None


async def test_a_dead_lettered_message_is_never_acked(start_chat: Any) -> None:
    chat = await start_chat(retry=IMPATIENT)
    a, b = await chat.join(), await chat.join()
    with locked(chat.db_path):
        await a.send(json.dumps({"message": "lost", "clientMsgId": "l-1"}))
        await b.expect_broadcast(a, "lost")
        assert await a.recv_any() == {
            "type": "error",
            "code": "not_persisted",
            "channel": "general",
            "seq": 1,
            "clientMsgId": "l-1",
        }
    await a.send("kept")
    await b.expect_broadcast(a, "kept")
    assert await a.wait_acks(1) == [
        {"type": "ack", "channel": "general", "seq": 2, "clientMsgId": None}
    ]
    assert chat.dead_letters()[0]["seq"] == 1
    assert chat.dead_letters()[0]["client_msg_id"] == "l-1"


async def test_a_clean_restart_keeps_seqs_consecutive(start_chat: Any, tmp_path: Any) -> None:
    db = tmp_path / "restart.db"
    first = await start_chat(db_path=db)
    a, b = await first.join(), await first.join()
    await send_many(a, ["one", "two"])
    await b.expect_broadcast(a, "one")
    epoch = (await b.expect_broadcast(a, "two"), b.welcome["epoch"])[1]
    await first.stop()
    second = await start_chat(db_path=db)
    c, d = await second.join(), await second.join()
    assert c.welcome["epoch"] == epoch  # the same database, the same epoch
    assert c.history is not None
    assert [(m["seq"], m["message"]) for m in c.history["messages"]] == [(1, "one"), (2, "two")]
    await c.send("three")
    assert (await d.expect_broadcast(c, "three"))["seq"] == 3


async def test_an_old_database_is_migrated_and_its_messages_are_history(
    start_chat: Any, tmp_path: Any
) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    try:
        conn.execute(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, connection_id TEXT"
            " NOT NULL, message TEXT NOT NULL, timestamp TEXT NOT NULL, created_at TEXT NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO messages (connection_id, message, timestamp, created_at)"
            " VALUES ('old', ?, '2024-01-01 00:00:00', '2024-01-01T00:00:00.000000+00:00')",
            [("before 1",), ("before 2",)],
        )
        conn.commit()
    finally:
        conn.close()
    chat = await start_chat(db_path=db, retention_days=0)
    a, b = await chat.join(), await chat.join()
    assert a.history is not None
    assert [(m["seq"], m["message"]) for m in a.history["messages"]] == [
        (1, "before 1"),
        (2, "before 2"),
    ]
    await a.send("after")
    assert (await b.expect_broadcast(a, "after"))["seq"] == 3


# History on connect.


async def test_history_is_the_last_n_broadcasts_oldest_first(start_chat: Any) -> None:
    chat = await start_chat(history=5)
    a, b = await chat.join(), await chat.join()
    live = []
    for n in range(8):
        await a.send(f"m{n}")
        live.append(await b.expect_broadcast(a, f"m{n}"))
    c = await chat.join()
    assert c.history is not None
    assert c.history["recovered"] is False
    assert c.history["messages"] == live[-5:]  # exactly what was broadcast


async def test_history_0_sends_no_history(start_chat: Any) -> None:
    chat = await start_chat(history=0)
    a, b = await chat.join(), await chat.join()
    await a.send("before")
    await b.expect_broadcast(a, "before")
    c = await chat.join()  # join() checks that the welcome is followed by no history...
    await a.send("marker")
    await c.expect_broadcast(a, "marker")  # ...and the next message is the marker
    # A resume still gets its messages.
    d = await chat.join(f"since=0&epoch={a.welcome['epoch']}")
    assert d.history is not None
    assert [m["message"] for m in d.history["messages"]] == ["before", "marker"]
    assert d.history["recovered"] is True


async def test_history_and_live_meet_without_gap_or_duplicate(start_chat: Any) -> None:
    """20 clients connect while a sender streams at full rate."""
    chat = await start_chat(history=20, rate_limit=0)
    sender = await chat.join()
    streaming = True

    async def stream() -> None:
        n = 0
        while streaming:
            await sender.send(f"s{n}")
            n += 1
            if n % 20 == 0:
                await asyncio.sleep(0)  # let the server read, broadcast and greet in between

    task = asyncio.create_task(stream())
    try:
        await wait_until(lambda: chat.app.queue.last_seq >= 20)
        for _ in range(20):
            client = await chat.join()
            assert client.history is not None
            history = client.history["messages"]
            live = [await client.recv() for _ in range(30)]
            got = seqs(history) + seqs(live)
            assert len(history) == 20
            assert got == list(range(got[0], got[0] + 50)), got
            for message in history + live:
                check_broadcast(message, sender.id, f"s{message['seq'] - 1}")
            await client.connection.close()
    finally:
        streaming = False
        await task


# Resume.


async def reconnect_after_500(
    chat: Chat, query_for: Any, *, concurrent: bool = False
) -> tuple[Client, int, list[str]]:
    """x leaves; a sends 500 messages; x comes back with ``query_for(epoch, last seq)``."""
    x, a = await chat.join(), await chat.join()
    await a.send("seen by x")
    last = (await x.expect_broadcast(a, "seen by x"))["seq"]
    epoch = x.welcome["epoch"]
    await x.connection.close()
    await a.recv()  # user_left
    texts = [f"missed {n}" for n in range(500)]
    await send_many(a, texts)
    await a.wait_acks(501)
    if concurrent:
        # Live messages keep coming while x resumes.
        more = asyncio.create_task(send_many(a, [f"live {n}" for n in range(100)]))
        back = await chat.join(query_for(epoch, last))
        await more
    else:
        back = await chat.join(query_for(epoch, last))
    return back, last, texts


async def test_resume_gets_exactly_the_missed_messages(start_chat: Any) -> None:
    chat = await start_chat(rate_limit=0)
    back, last, texts = await reconnect_after_500(
        chat, lambda epoch, last: f"since={last}&epoch={epoch}"
    )
    assert back.history is not None
    assert back.history["recovered"] is True
    missed = back.history["messages"]
    assert [m["message"] for m in missed] == texts  # all 500, in order, once
    assert seqs(missed) == list(range(last + 1, last + 501))


async def test_resume_reads_the_database_for_what_memory_no_longer_holds(
    start_chat: Any,
) -> None:
    """A tiny ring: the 500 come from the database, the newest from memory, live ones held."""
    chat = await start_chat(history_memory=2000, rate_limit=0)
    back, last, texts = await reconnect_after_500(
        chat, lambda epoch, last: f"since={last}&epoch={epoch}", concurrent=True
    )
    assert back.history is not None
    assert back.history["recovered"] is True
    history = back.history["messages"]
    assert [m["message"] for m in history[:500]] == texts
    got = seqs(history)
    while got[-1] < chat.app.queue.last_seq:  # then live, from where the history ended
        got.append((await back.recv())["seq"])
    assert got == list(range(last + 1, last + 601))


async def test_resume_with_another_epoch_gets_the_last_n(start_chat: Any) -> None:
    chat = await start_chat(rate_limit=0)
    back, _, _ = await reconnect_after_500(chat, lambda epoch, last: f"since={last}&epoch=other")
    assert back.history is not None
    assert back.history["recovered"] is False
    assert [m["message"] for m in back.history["messages"]] == [
        f"missed {n}" for n in range(450, 500)
    ]


@pytest.mark.parametrize(
    "query",
    [
        "since=1000000&epoch=EPOCH",  # ahead of the server
        "since=-1&epoch=EPOCH",
        "since=abc&epoch=EPOCH",
        "since=1",  # no epoch
    ],
)
async def test_an_impossible_resume_gets_the_last_n(chat: Chat, query: str) -> None:
    a, b = await chat.join(), await chat.join()
    await a.send("hello")
    await b.expect_broadcast(a, "hello")
    c = await chat.join(query.replace("EPOCH", a.welcome["epoch"]))
    assert c.history is not None
    assert c.history["recovered"] is False
    assert [m["message"] for m in c.history["messages"]] == ["hello"]


async def test_resume_beyond_the_maximum_gets_the_last_n(start_chat: Any) -> None:
    chat = await start_chat(resume_max=100, rate_limit=0)
    back, _, _ = await reconnect_after_500(chat, lambda epoch, last: f"since={last}&epoch={epoch}")
    assert back.history is not None
    assert back.history["recovered"] is False
    assert len(back.history["messages"]) == 50


# Retention.


async def test_retention_prunes_the_database_and_the_history(start_chat: Any) -> None:
    chat = await start_chat(retention_messages=5, prune_interval=0.02)
    a, b = await chat.join(), await chat.join()
    await send_many(a, [f"m{n}" for n in range(12)])
    await a.wait_acks(12)
    await wait_until(lambda: len(chat.rows()) == 5)
    assert [row[0] for row in chat.rows()] == [8, 9, 10, 11, 12]
    c = await chat.join()
    assert c.history is not None
    assert seqs(c.history["messages"]) == [8, 9, 10, 11, 12]
    # The messages after seq 2 are no longer all kept: a resume from there cannot recover.
    d = await chat.join(f"since=2&epoch={a.welcome['epoch']}")
    assert d.history is not None
    assert d.history["recovered"] is False
    e = await chat.join(f"since=9&epoch={a.welcome['epoch']}")
    assert e.history is not None
    assert (e.history["recovered"], seqs(e.history["messages"])) == (True, [10, 11, 12])
    assert b.acks == []


# Broadcast after commit.


async def test_broadcast_after_commit_shows_only_committed_messages_in_order(
    start_chat: Any,
) -> None:
    chat = await start_chat(broadcast_after_commit=True, retry=PATIENT)
    a, b, c = await chat.join(), await chat.join(), await chat.join()
    with locked(chat.db_path):
        await send_many(a, [f"a{n}" for n in range(5)])
        await send_many(c, [f"c{n}" for n in range(5)])
        await wait_until(lambda: chat.app.queue.failed_attempts >= 2)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                message = await b.recv()
                raise AssertionError(f"broadcast before the commit: {message}")
        assert chat.rows() == []
    received = [await b.recv() for _ in range(10)]
    assert seqs(received) == list(range(1, 11))  # live order is seq order
    assert sorted(m["message"] for m in received) == sorted(
        [f"a{n}" for n in range(5)] + [f"c{n}" for n in range(5)]
    )
    assert [row[0] for row in chat.rows()] == list(range(1, 11))
    assert seqs(await a.wait_acks(5)) == [m["seq"] for m in received if m["message"][0] == "a"]


async def test_broadcast_after_commit_never_shows_a_dead_lettered_message(
    start_chat: Any,
) -> None:
    chat = await start_chat(broadcast_after_commit=True, retry=IMPATIENT)
    a, b = await chat.join(), await chat.join()
    with locked(chat.db_path):
        await a.send("lost")
        assert (await a.recv_any())["code"] == "not_persisted"
    await a.send("kept")
    kept = await b.expect_broadcast(a, "kept")  # the very next message: "lost" never came
    assert kept["seq"] == 2
    c = await chat.join()
    assert c.history is not None
    assert [m["message"] for m in c.history["messages"]] == ["kept"]
