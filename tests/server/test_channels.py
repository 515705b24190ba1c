"""Channels with real sockets and the real database: subscribe, publish, resume, exactly once.

Every test runs against each engine (``start``): the one-process SQLite engine, and Redis (a
real redis-server, emptied for each test, with the messages archived to SQLite). The few tests
of the local engine's own workings (its queue's commits, its rings and their budget, a crash's
skipped seqs, a database from before channels) use ``start_chat``, the local engine only; what
Redis adds (several nodes, gaps, outages) is in ``test_redis_engine.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import rfc6455
from server import handler
from server.store import TIMESTAMP_FORMAT
from tests.server.support import HOST, Chat, Client, locked, upgrade_head, wait_until
from tests.server.test_api import KEY as API_KEY
from tests.server.test_api import Client as ApiClient
from tests.server.test_auth import SECRET, token

Start = Callable[..., Any]


@pytest.fixture(params=["local", "redis"])
def start(request: pytest.FixtureRequest, start_chat: Start) -> Start:
    """``start_chat`` for the engine of this run of the test: the one-process SQLite engine,
    or Redis (a real redis-server, emptied for the test)."""
    engine = "local"
    if request.param == "redis":
        engine = request.getfixturevalue("redis_url")

    async def start(**settings: Any) -> Chat:
        settings.setdefault("engine", engine)
        chat: Chat = await start_chat(**settings)
        return chat

    return start


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages]


async def publish_acked(client: Client, channel: str, text: str, msg_id: str) -> dict[str, Any]:
    await client.publish(channel, text, msg_id)
    return await client.expect("ack", clientMsgId=msg_id)


# Subscribe, publish, unsubscribe


async def test_channels_are_kept_apart_with_seqs_of_their_own(start: Start) -> None:
    chat = await start()
    a, b, c = await chat.join(), await chat.join(), await chat.join()
    for client, channel in ((a, "room:a"), (b, "room:b"), (c, "room:a")):
        subscribed = await client.subscribe(channel)
        assert subscribed["messages"] == []
        assert subscribed["recovered"] is False
        assert subscribed["lastRead"] is None
        assert subscribed["epoch"] != a.welcome["epoch"]
    ack = await publish_acked(a, "room:a", "in a", "m1")
    assert ack == {"type": "ack", "channel": "room:a", "seq": 1, "clientMsgId": "m1"}
    got = await c.expect("broadcast", channel="room:a")
    assert (got["message"], got["seq"], got["connectionId"]) == ("in a", 1, a.id)
    assert (await publish_acked(b, "room:b", "in b", "m2"))["seq"] == 1
    assert (await publish_acked(b, "general", "in general", "m3"))["seq"] == 1
    # a and c are in general too; nothing of room:b reaches them.
    for client in (a, c):
        general = await client.expect("broadcast", channel="general")
        assert general["message"] == "in general"
        assert all(m.get("channel") != "room:b" for m in client.seen)


async def test_unsubscribed_means_nothing_more_of_the_channel(start: Start) -> None:
    chat = await start()
    a, b = await chat.join(), await chat.join()
    await a.subscribe("room")
    await b.subscribe("room")
    await b.request("unsubscribe", channel="room")
    assert await b.expect("unsubscribed") == {"type": "unsubscribed", "channel": "room"}
    await publish_acked(a, "room", "after", "m1")
    await publish_acked(a, "general", "marker", "m2")
    await b.expect("broadcast", message="marker")
    assert [m for m in b.seen if m.get("channel") == "room"] == []
    await b.request("unsubscribe", channel="room")
    error = await b.expect("error")
    assert (error["code"], error["channel"]) == ("not_subscribed", "room")


async def test_a_client_can_leave_general_too(start: Start) -> None:
    chat = await start()
    a, b = await chat.join(), await chat.join()
    await b.request("unsubscribe", channel="general")
    await b.expect("unsubscribed", channel="general")
    await b.subscribe("room")
    await a.subscribe("room")
    await a.send("plain text goes to general")
    await publish_acked(a, "room", "marker", "m1")
    await b.expect("broadcast", message="marker")
    assert [m for m in b.seen if m.get("channel") == "general"] == []
    await b.send("and b is not in general")
    error = await b.expect("error")
    assert (error["code"], error["channel"]) == ("not_subscribed", "general")


ERRORS = [
    ({"type": "subscribe"}, "bad_request"),
    ({"type": "subscribe", "channel": 5}, "bad_channel"),
    ({"type": "subscribe", "channel": "has space"}, "bad_channel"),
    ({"type": "subscribe", "channel": "x" * 129}, "bad_channel"),
    ({"type": "subscribe", "channel": "ok", "since": 3}, "bad_request"),
    ({"type": "subscribe", "channel": "ok", "since": -1, "epoch": "e"}, "bad_request"),
    ({"type": "subscribe", "channel": "ok", "since": True, "epoch": "e"}, "bad_request"),
    ({"type": "subscribe", "channel": "general"}, "already_subscribed"),
    ({"type": "publish", "channel": "elsewhere", "message": "hi"}, "not_subscribed"),
    ({"type": "publish", "channel": "general"}, "bad_request"),
    ({"type": "publish", "channel": "general", "message": " "}, "invalid_message"),
    (
        {"type": "publish", "channel": "general", "message": "a", "clientMsgId": 7},
        "invalid_message",
    ),
    ({"type": "launch"}, "unknown_type"),
    ({"type": 7}, "bad_request"),
    ({"type": "hello", "clientId": "not-a-uuid"}, "bad_request"),
    ({"type": "hello", "clientId": str(uuid.uuid4()), "name": "\x07bell"}, "bad_request"),
    ({"type": "hello", "clientId": str(uuid.uuid4()), "name": "x" * 33}, "bad_request"),
    ({"type": "read", "channel": "general", "seq": 1}, "forbidden"),
    ({"type": "presence", "channel": "elsewhere"}, "not_subscribed"),
    ({"type": "typing", "channel": "elsewhere"}, "not_subscribed"),
    ({"type": "direct", "to": "bob", "message": "hi"}, "forbidden"),
    ({"type": "unsubscribe", "channel": "elsewhere"}, "not_subscribed"),
]


@pytest.mark.parametrize(("request_", "code"), ERRORS)
async def test_bad_requests_get_an_error_and_the_connection_stays(
    start: Start, request_: dict[str, Any], code: str
) -> None:
    chat = await start(rate_limit=0)
    a = await chat.join()
    await a.send(json.dumps(request_))
    error = await a.expect("error")
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    await publish_acked(a, "general", "still here", "m1")


async def test_at_most_128_channels_at_once(start: Start) -> None:
    chat = await start(rate_limit=0)
    a = await chat.join()
    for n in range(handler.MAX_CHANNELS - 1):  # general is one
        await a.request("subscribe", channel=f"c{n}")
    await a.request("subscribe", channel="one-too-many")
    error = await a.expect("error")
    assert (error["code"], error["channel"]) == ("too_many_channels", "one-too-many")
    assert len([m for m in a.seen if m["type"] == "subscribed"]) == handler.MAX_CHANNELS - 1
    await a.request("unsubscribe", channel="c0")
    await a.expect("unsubscribed", channel="c0")
    await a.subscribe("one-too-many")


async def test_every_error_costs_a_token_so_a_stream_of_them_ends_in_1008(start: Start) -> None:
    chat = await start(rate_limit=10, rate_burst=10)
    a = await chat.join()
    for _ in range(30):
        await a.request("launch")
    codes = []
    with contextlib.suppress(rfc6455.ConnectionClosed):  # the server fails the connection
        while True:
            codes.append((await a.recv_any())["code"])
    assert "unknown_type" in codes
    assert "rate_limited" in codes
    assert codes.count("unknown_type") <= 6  # half the burst: each one cost two tokens
    assert a.connection.protocol.close_rcvd is not None
    assert a.connection.protocol.close_rcvd.code == 1008


# History and resume, per channel


async def test_a_subscriber_gets_the_latest_then_resumes_exactly(start: Start) -> None:
    chat = await start(history=5)
    a = await chat.join()
    await a.subscribe("room")
    for n in range(1, 21):
        await a.publish("room", f"m{n}", f"id{n}")
    await a.expect("ack", seq=20)
    b = await chat.join()
    first = await b.subscribe("room")
    assert [m["message"] for m in first["messages"]] == [f"m{n}" for n in range(16, 21)]
    assert first["recovered"] is False
    epoch = first["epoch"]
    await b.request("unsubscribe", channel="room")
    await b.expect("unsubscribed")
    for n in range(21, 31):
        await a.publish("room", f"m{n}", f"id{n}")
    await a.expect("ack", seq=30)
    again = await b.subscribe("room", since=20, epoch=epoch)
    assert (seqs(again["messages"]), again["recovered"]) == (list(range(21, 31)), True)
    await b.request("unsubscribe", channel="room")
    await b.expect("unsubscribed")
    wrong = await b.subscribe("room", since=20, epoch="another")
    assert (seqs(wrong["messages"]), wrong["recovered"]) == (list(range(26, 31)), False)


async def test_a_channel_read_from_the_database_after_a_restart(start: Start) -> None:
    chat = await start(history=3)
    a = await chat.join()
    await a.subscribe("room")
    for n in range(1, 11):
        await a.publish("room", f"m{n}", f"id{n}")
    await a.expect("ack", seq=10)
    await chat.stop()
    again = await start(db_path=chat.db_path, history=3)
    b = await again.join()
    latest = await b.subscribe("room")
    epoch = latest["epoch"]
    assert [m["message"] for m in latest["messages"]] == ["m8", "m9", "m10"]
    await b.request("unsubscribe", channel="room")
    await b.expect("unsubscribed")
    resumed = await b.subscribe("room", since=2, epoch=epoch)
    assert (seqs(resumed["messages"]), resumed["recovered"]) == (list(range(3, 11)), True)
    assert (await publish_acked(b, "room", "m11", "id11"))["seq"] == 11


async def test_no_gap_and_no_duplicate_while_others_publish_at_full_rate(start: Start) -> None:
    chat = await start(rate_limit=0, history=10)
    publisher = await chat.join()
    await publisher.subscribe("busy")
    total = 400

    async def publish_all() -> None:
        for n in range(1, total + 1):
            await publisher.publish("busy", f"m{n}")

    task = asyncio.create_task(publish_all())
    subscribers = []
    for _ in range(5):
        await asyncio.sleep(0.005)
        client = await chat.join()
        subscribed = await client.subscribe("busy")
        subscribers.append((client, subscribed))
    await task
    for client, subscribed in subscribers:
        got = seqs(subscribed["messages"])
        while not got or got[-1] < total:
            got.append((await client.expect("broadcast", channel="busy"))["seq"])
        start_seq = got[0]
        assert got == list(range(start_seq, total + 1)), got


# Exactly once


async def test_a_message_sent_again_is_stored_once(start: Start) -> None:
    chat = await start()
    a, b = await chat.join(f"clientId={uuid.uuid4()}&name=Ann"), await chat.join()
    first = await publish_acked(a, "general", "once", "same-id")
    second = await publish_acked(a, "general", "once", "same-id")
    assert second == {**first, "duplicate": True}
    await publish_acked(a, "general", "marker", "other")
    await b.expect("broadcast", message="marker")
    assert [m["message"] for m in b.seen if m["type"] == "broadcast"] == ["once"]
    await chat.archived()
    assert [row[2] for row in chat.rows()] == ["once", "marker"]


async def test_exactly_once_across_a_reconnect_and_a_restart(start: Start) -> None:
    client_id = str(uuid.uuid4())
    chat = await start()
    a = await chat.join(f"clientId={client_id}")
    await a.subscribe("room")
    ack = await publish_acked(a, "room", "typed before the drop", "outbox-1")
    await a.connection.close()
    again = await chat.join(f"clientId={client_id}")
    await again.subscribe("room")
    resent = await publish_acked(again, "room", "typed before the drop", "outbox-1")
    assert (resent["seq"], resent.get("duplicate")) == (ack["seq"], True)
    await chat.stop()
    restarted = await start(db_path=chat.db_path)
    third = await restarted.join(f"clientId={client_id}")
    await third.subscribe("room")
    after_restart = await publish_acked(third, "room", "typed before the drop", "outbox-1")
    assert (after_restart["seq"], after_restart.get("duplicate")) == (ack["seq"], True)
    # Another sender's message with the same id is its own.
    other = await restarted.join(f"clientId={uuid.uuid4()}")
    await other.subscribe("room")
    assert (await publish_acked(other, "room", "mine", "outbox-1")).get("duplicate") is None


async def test_a_duplicate_of_a_message_not_yet_committed_is_acked_with_it(
    start_chat: Start,
) -> None:
    from tests.server.test_handler import PATIENT

    chat = await start_chat(retry=PATIENT)
    a = await chat.join(f"clientId={uuid.uuid4()}")
    with locked(chat.db_path):
        await a.publish("general", "slow", "dup")
        await a.publish("general", "slow", "dup")
        await wait_until(lambda: chat.app.queue.failed_attempts >= 1)
        assert a.acks == []
    acks = [await a.expect("ack"), await a.expect("ack")]
    assert [ack["seq"] for ack in acks] == [1, 1]
    assert [ack.get("duplicate") for ack in acks] == [None, True]
    await chat.archived()
    assert len(chat.rows()) == 1


# Presence, typing, read positions, hello


async def test_presence_is_by_member_not_by_connection(start: Start) -> None:
    chat = await start()
    ann_id, bob_id = str(uuid.uuid4()), str(uuid.uuid4())
    watcher = await chat.join()
    await watcher.subscribe("room")
    tab1 = await chat.join(f"clientId={ann_id}&name=Ann")
    subscribed = await tab1.subscribe("room")
    members = subscribed["presence"]
    assert {m.get("clientId") for m in members} == {None, ann_id}
    joined = await watcher.expect("joined", channel="room")
    assert joined["member"]["clientId"] == ann_id
    assert joined["member"]["name"] == "Ann"
    assert joined["member"]["connections"] == 1
    tab2 = await chat.join(f"clientId={ann_id}&name=Ann")
    await tab2.subscribe("room")
    bob = await chat.join(f"clientId={bob_id}&name=Bob")
    await bob.subscribe("room")
    second = await watcher.expect("joined", channel="room")
    assert second["member"]["clientId"] == bob_id  # Ann's second tab was not announced
    await watcher.request("presence", channel="room")
    snapshot = await watcher.expect("presence", channel="room")
    by_id = {m.get("clientId"): m for m in snapshot["members"]}
    assert by_id[ann_id]["connections"] == 2
    assert by_id[bob_id]["connections"] == 1
    await tab1.connection.close()
    await tab2.request("unsubscribe", channel="room")
    left = await watcher.expect("left", channel="room")
    assert left["member"] == {"clientId": ann_id, "name": "Ann"}
    assert [m for m in watcher.seen if m["type"] == "left"] == []  # one left, for the last tab


async def test_general_does_not_announce_arrivals(start: Start) -> None:
    chat = await start()
    a = await chat.join()
    await chat.join()
    await publish_acked(a, "general", "marker", "m")
    assert [m for m in a.seen if m["type"] == "joined"] == []
    await a.request("presence", channel="general")
    assert len((await a.expect("presence"))["members"]) == 2


async def test_typing_reaches_the_others_at_most_once_in_two_seconds(start: Start) -> None:
    chat = await start()
    a, b = await chat.join(f"clientId={uuid.uuid4()}&name=Ann"), await chat.join()
    await a.subscribe("room")
    await b.subscribe("room")
    for _ in range(3):
        await a.request("typing", channel="room")
    await publish_acked(a, "room", "marker", "m")
    typing = await b.expect("typing", channel="room")
    assert typing["member"]["name"] == "Ann"
    await b.expect("broadcast", message="marker")
    assert [m for m in b.seen if m["type"] == "typing"] == []  # the other two were dropped
    assert [m for m in a.seen if m["type"] == "typing"] == []  # not echoed


async def test_read_positions_come_back_with_subscribed(start: Start) -> None:
    client_id = str(uuid.uuid4())
    chat = await start()
    a = await chat.join(f"clientId={client_id}")
    await a.subscribe("room")
    for n in range(1, 6):
        await a.publish("room", f"m{n}", f"id{n}")
    await a.expect("ack", seq=5)
    await a.request("read", channel="room", seq=3)
    await a.request("read", channel="room", seq=2)  # positions only move forward
    await a.request("read", channel="room", seq=9)
    assert (await a.expect("error"))["code"] == "bad_request"  # no message 9 yet
    await a.request("unsubscribe", channel="room")
    await a.expect("unsubscribed")
    again = await a.subscribe("room")
    assert again["lastRead"] == 3
    await chat.stop()
    restarted = await start(db_path=chat.db_path)
    b = await restarted.join(f"clientId={client_id}")
    assert (await b.subscribe("room"))["lastRead"] == 3


async def test_hello_gives_an_identity_later(start: Start) -> None:
    chat = await start()
    a, b = await chat.join(), await chat.join()
    await a.subscribe("room")
    await b.subscribe("room")
    client_id = str(uuid.uuid4())
    await a.request("hello", clientId=client_id, name="Ann <b>")
    assert await a.expect("hello") == {"type": "hello", "clientId": client_id, "name": "Ann <b>"}
    left = await b.expect("left", channel="room")
    assert left["member"] == {"connectionId": a.id}
    joined = await b.expect("joined", channel="room")
    assert joined["member"]["clientId"] == client_id
    await a.publish("room", "hi", "m")
    broadcast = await b.expect("broadcast", channel="room")
    assert (broadcast["clientId"], broadcast["name"]) == (client_id, "Ann <b>")


# Namespaces


async def test_namespaces_from_a_toml_file(start: Start, tmp_path: Path) -> None:
    options = tmp_path / "channels.toml"
    options.write_text(
        "[defaults]\nhistory = 2\n"
        '[namespaces.news]\npublish = "api"\njoin_leave = false\n'
        "[namespaces.small]\nmax_members = 1\npresence = false\n",
        encoding="utf-8",
    )
    chat = await start(channels_file=options)
    a, b = await chat.join(), await chat.join()
    await a.subscribe("news:today")
    await b.subscribe("news:today")
    await a.publish("news:today", "not mine to say", "m1")
    error = await a.expect("error", clientMsgId="m1")
    assert (error["code"], error["channel"]) == ("forbidden", "news:today")
    subscribed = await a.subscribe("small:room")
    assert "presence" not in subscribed
    await b.request("subscribe", channel="small:room")
    assert (await b.expect("error"))["code"] == "forbidden"
    await a.request("presence", channel="small:room")
    assert (await a.expect("error"))["code"] == "forbidden"
    assert [m for m in a.seen if m["type"] == "joined"] == []  # news announces nobody


async def test_only_authenticated_users_where_anonymous_is_off(
    start: Start, tmp_path: Path
) -> None:
    options = tmp_path / "channels.toml"
    options.write_text("[namespaces.staff]\nanonymous = false\n", encoding="utf-8")
    chat = await start(channels_file=options)
    a = await chat.join()
    await a.request("subscribe", channel="staff:room")
    error = await a.expect("error")
    assert (error["code"], error["channel"]) == ("forbidden", "staff:room")


# Storage


def old_database(path: Path, count: int) -> str:
    """A database as the server before channels wrote it; returns its epoch."""
    epoch = str(uuid.uuid4())
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            """
            CREATE TABLE messages (
                seq INTEGER PRIMARY KEY, connection_id TEXT NOT NULL, message TEXT NOT NULL,
                timestamp TEXT NOT NULL, created_at TEXT NOT NULL, client_msg_id TEXT,
                user TEXT);
            CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), epoch TEXT NOT NULL,
                reserved_seq INTEGER NOT NULL, pruned_seq INTEGER NOT NULL);
            """
        )
        now = datetime.now(UTC)  # recent: retention keeps them
        conn.executemany(
            "INSERT INTO messages VALUES (?, 'old', ?, ?, ?, NULL, NULL)",
            [
                (seq, f"old {seq}", now.strftime(TIMESTAMP_FORMAT), now.isoformat())
                for seq in range(1, count + 1)
            ],
        )
        conn.execute("INSERT INTO meta VALUES (1, ?, ?, 0)", (epoch, count))
        conn.commit()
    finally:
        conn.close()
    return epoch


async def test_a_database_from_before_channels_becomes_generals(
    start_chat: Start, tmp_path: Path
) -> None:
    db = tmp_path / "old.db"
    epoch = old_database(db, 30)
    chat = await start_chat(db_path=db)
    resumed = await chat.join(f"since=25&epoch={epoch}")
    assert resumed.welcome["epoch"] == epoch
    assert resumed.history is not None
    assert resumed.history["recovered"] is True
    assert [m["message"] for m in resumed.history["messages"]] == [
        f"old {seq}" for seq in range(26, 31)
    ]
    assert {m["channel"] for m in resumed.history["messages"]} == {"general"}
    ack = await publish_acked(resumed, "general", "new", "m")
    assert ack["seq"] == 31


async def test_seqs_of_every_channel_survive_a_crash_without_reuse(
    start_chat: Start, tmp_path: Path
) -> None:
    chat = await start_chat()
    a = await chat.join()
    await a.subscribe("room")
    for n in range(1, 6):
        await a.publish("room", f"m{n}", f"id{n}")
    await a.expect("ack", seq=5)
    await chat.stop()
    # What a crash leaves: more reserved than committed (the clean stop made them equal).
    conn = sqlite3.connect(chat.db_path)
    try:
        conn.execute("UPDATE meta SET reserved_seq = committed_seq + 100")
        conn.commit()
    finally:
        conn.close()
    again = await start_chat(db_path=chat.db_path)
    b = await again.join()
    subscribed = await b.subscribe("room")
    assert seqs(subscribed["messages"]) == [1, 2, 3, 4, 5]
    ack = await publish_acked(b, "room", "after the crash", "m6")
    assert ack["seq"] == 106  # past every seq the crashed server may have handed out
    await b.request("unsubscribe", channel="room")
    await b.expect("unsubscribed")
    resumed = await b.subscribe("room", since=5, epoch=subscribed["epoch"])
    assert (seqs(resumed["messages"]), resumed["recovered"]) == ([106], True)


# Authenticated users: direct messages, the channels claim


async def user(chat: Chat, name: str, **claims: Any) -> Client:
    return await chat.join(f"access_token={token(sub=name, **claims)}")


async def test_a_direct_message_reaches_both_users_and_nobody_else(start: Start) -> None:
    chat = await start(auth="jwt", jwt_secret=SECRET)
    alice, alice_tab = await user(chat, "alice"), await user(chat, "alice")
    bob, bob_tab, carol = (
        await user(chat, "bob"),
        await user(chat, "bob"),
        await user(chat, "carol"),
    )
    await alice.request("direct", to="bob", message="psst", clientMsgId="d1")
    ack = await alice.expect("ack", clientMsgId="d1")
    assert (ack["channel"], ack["seq"]) == ("dm:alice:bob", 1)
    epoch = await epoch_of(chat, ack["channel"])
    for client in (alice_tab, bob, bob_tab):
        subscribed = await client.expect("subscribed", channel="dm:alice:bob")
        assert (subscribed["messages"], subscribed["epoch"]) == ([], epoch)
        got = await client.expect("broadcast", channel="dm:alice:bob")
        assert (got["message"], got["user"]) == ("psst", "alice")
    await carol.request("subscribe", channel="dm:alice:bob")
    assert (await carol.expect("error"))["code"] == "forbidden"
    # Bob answers through the channel he is now subscribed to, and resumes it later.
    await bob.publish("dm:alice:bob", "hi alice", "d2")
    assert (await alice.expect("broadcast", channel="dm:alice:bob"))["message"] == "hi alice"
    later = await user(chat, "bob")
    resumed = await later.subscribe("dm:alice:bob", since=0, epoch=epoch)
    assert [m["message"] for m in resumed["messages"]] == ["psst", "hi alice"]
    assert resumed["recovered"] is True
    await publish_acked(carol, "general", "marker", "m")
    await bob.expect("broadcast", message="marker")
    assert [m for m in carol.seen if m.get("channel", "").startswith("dm:")] == []


async def epoch_of(chat: Chat, channel: str) -> str:
    return (await chat.app.engine.position(channel)).epoch


async def test_direct_messages_need_a_user_who_can_have_them(start: Start) -> None:
    chat = await start(auth="jwt", jwt_secret=SECRET)
    alice = await user(chat, "alice")
    await alice.request("direct", to="bob:evil", message="hi", clientMsgId="d")
    error = await alice.expect("error")
    assert (error["code"], error["clientMsgId"]) == ("unknown_user", "d")


async def test_the_channels_claim_limits_what_a_user_may_subscribe_to(
    start: Start, tmp_path: Path
) -> None:
    options = tmp_path / "channels.toml"
    options.write_text("[namespaces.vip]\nrequire_claim = true\n", encoding="utf-8")
    chat = await start(auth="jwt", jwt_secret=SECRET, channels_file=options)
    limited = await user(chat, "ann", channels=["room:*", "general"])
    await limited.subscribe("room:one")
    await limited.request("subscribe", channel="other")
    assert (await limited.expect("error"))["code"] == "forbidden"
    free = await user(chat, "bob")
    await free.subscribe("other")
    await free.request("subscribe", channel="vip:lounge")
    assert (await free.expect("error"))["code"] == "forbidden"
    # Not allowed in general either: no history at connect, and no general after it.
    connection = await chat.connect(f"/?access_token={token(sub='cat', channels=['vip:*'])}")
    assert "connectionId" in json.loads(str(await connection.recv()))
    assert json.loads(str(await connection.recv()))["type"] == "welcome"
    allowed = Client(connection, "cat", {})
    await allowed.subscribe("vip:lounge")
    await allowed.publish("general", "hi", "m")
    assert (await allowed.expect("error"))["code"] == "not_subscribed"


# The server API on the real engine


async def api_chat(start: Start, **settings: Any) -> tuple[Chat, ApiClient]:
    chat = await start(api_key=API_KEY, **settings)
    return chat, ApiClient(chat)


async def test_the_api_publishes_exactly_once_after_the_commit(start: Start) -> None:
    chat, api = await api_chat(start)
    a = await chat.join()
    await a.subscribe("news:today")
    body = {"channel": "news:today", "message": "from the backend", "idempotencyKey": "k1"}
    first = await api.post("/api/publish", body)
    assert first.status == 200, first
    published = first.json()
    assert published == {"channel": "news:today", "seq": 1, "epoch": published["epoch"]}
    got = await a.expect("broadcast", channel="news:today")
    assert (got["message"], got["seq"], got["connectionId"]) == ("from the backend", 1, "api")
    assert published["epoch"] == await epoch_of(chat, "news:today")
    again = (await api.post("/api/publish", body)).json()
    assert again == {**published, "duplicate": True}
    await api.post("/api/publish", {**body, "idempotencyKey": "k2", "message": "second"})
    assert (await a.expect("broadcast", channel="news:today"))["message"] == "second"
    assert [m for m in a.seen if m.get("channel") == "news:today"] == []


async def test_the_api_publishes_where_only_the_server_may(start: Start, tmp_path: Path) -> None:
    options = tmp_path / "channels.toml"
    options.write_text('[namespaces.news]\npublish = "api"\n', encoding="utf-8")
    chat, api = await api_chat(start, channels_file=options)
    a = await chat.join()
    await a.subscribe("news:x")
    assert (await api.post("/api/publish", {"channel": "news:x", "message": "ok"})).status == 200
    assert (await a.expect("broadcast", channel="news:x"))["message"] == "ok"
    bad = await api.post("/api/publish", {"channel": "no spaces", "message": "x"})
    bad.error(400, "bad_channel")


async def test_the_api_reads_channels_presence_and_history(start: Start) -> None:
    chat, api = await api_chat(start)
    ann = await chat.join(f"clientId={uuid.uuid4()}&name=Ann")
    await ann.subscribe("room")
    for n in range(1, 8):
        await ann.publish("room", f"m{n}", f"id{n}")
    await ann.expect("ack", seq=7)
    channels = (await api.get("/api/channels")).json()["channels"]
    assert {"channel": "room", "subscribers": 1} in channels
    assert {"channel": "general", "subscribers": 1} in channels
    members = (await api.get("/api/presence?channel=room")).json()["members"]
    assert [m["name"] for m in members] == ["Ann"]
    (await api.get("/api/presence?channel=empty")).error(404, "unknown_channel")
    latest = (await api.get("/api/history?channel=room&limit=3")).json()
    assert [m["seq"] for m in latest["messages"]] == [5, 6, 7]
    assert latest["epoch"] == await epoch_of(chat, "room")
    page = (await api.get("/api/history?channel=room&since=2&limit=2")).json()
    assert [m["message"] for m in page["messages"]] == ["m3", "m4"]
    (await api.get("/api/history?channel=never")).error(404, "unknown_channel")


async def test_the_api_disconnects_a_user(start: Start) -> None:
    chat, api = await api_chat(start, auth="jwt", jwt_secret=SECRET)
    tabs = [await user(chat, "mallory"), await user(chat, "mallory")]
    other = await user(chat, "bob")
    body = {"user": "mallory", "code": 4001, "reason": "banned"}
    assert (await api.post("/api/disconnect", body)).json() == {"disconnected": 2}
    for tab in tabs:
        with contextlib.suppress(rfc6455.ConnectionClosed):
            while True:
                await tab.recv_any()
        close = tab.connection.protocol.close_rcvd
        assert close is not None
        assert (close.code, close.reason) == (4001, "banned")
    await publish_acked(other, "general", "still here", "m")


# Memory: bounded in bytes across channels


async def test_the_histories_of_all_channels_share_one_budget(start_chat: Start) -> None:
    budget = 64 * 1024
    chat = await start_chat(history_memory=budget, rate_limit=0)
    a = await chat.join(f"clientId={uuid.uuid4()}")
    text = "x" * 2000
    for n in range(20):
        await a.subscribe(f"room{n}")
    epoch = await epoch_of(chat, "room0")
    for round_ in range(5):
        for n in range(20):
            await a.publish(f"room{n}", text, f"{n}-{round_}")
    await a.expect("ack", clientMsgId="19-4")
    health = await chat.health()
    # 200 KB were published; what is held stays within the budget.
    assert 0 < health["historyBytes"] <= budget
    b = await chat.join()
    resumed = await b.subscribe("room0", since=0, epoch=epoch)
    assert (seqs(resumed["messages"]), resumed["recovered"]) == ([1, 2, 3, 4, 5], True)


@pytest.mark.parametrize(
    "query",
    [
        "clientId=nope",
        "name=Ann",
        f"clientId={uuid.uuid4()}&name=%07",
        f"clientId={uuid.uuid4()}&clientId=x",
    ],
)
async def test_a_bad_identity_in_the_query_is_refused_at_the_handshake(
    start: Start, query: str
) -> None:
    chat = await start()
    reply = await chat.request(upgrade_head(f"/?{query}", f"{HOST}:{chat.port}"))
    assert reply.status == 400
    assert b"clientId" in reply.body or b"name" in reply.body


async def test_a_presence_snapshot_lists_at_most_so_many_members(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handler, "MAX_PRESENCE", 2)
    chat = await start()
    clients = [await chat.join() for _ in range(3)]
    for client in clients:
        subscribed = await client.subscribe("crowd")
    assert (len(subscribed["presence"]), subscribed["presenceCount"]) == (2, 3)
    assert [m["connectionId"] for m in subscribed["presence"]] == [c.id for c in clients[:2]]
    await clients[0].request("presence", channel="crowd")
    snapshot = await clients[0].expect("presence")
    assert (len(snapshot["members"]), snapshot["count"]) == (2, 3)


async def test_a_new_name_is_announced_as_joined_again(start: Start) -> None:
    client_id = str(uuid.uuid4())
    chat = await start()
    watcher = await chat.join()
    await watcher.subscribe("room")
    tab1 = await chat.join(f"clientId={client_id}&name=Ann")
    await tab1.subscribe("room")
    await watcher.expect("joined", channel="room")
    tab2 = await chat.join(f"clientId={client_id}&name=Ann")
    await tab2.subscribe("room")
    await tab2.request("hello", clientId=client_id, name="Annie")
    renamed = await watcher.expect("joined", channel="room")
    assert renamed["member"]["name"] == "Annie"
    assert renamed["member"]["connections"] == 2
    await watcher.request("presence", channel="room")
    snapshot = await watcher.expect("presence")
    assert [m.get("name") for m in snapshot["members"] if "clientId" in m] == ["Annie"]


async def test_the_first_message_of_a_channel_goes_into_its_ring(start_chat: Start) -> None:
    # An empty ring is falsy: the engine once replaced it (and its pending load) on a publish.
    chat = await start_chat()
    a = await chat.join()
    await a.subscribe("room")
    ring = chat.app.engine._rings["room"]
    await publish_acked(a, "room", "first", "m1")
    assert chat.app.engine._rings["room"] is ring
    assert len(ring) == 1


async def test_retention_keeps_the_latest_messages_in_the_database(start: Start) -> None:
    # The local engine prunes its own database; the Redis engine's archivers prune the archive.
    chat = await start(retention_messages=5, prune_interval=0.05, rate_limit=0)
    a = await chat.join(f"clientId={uuid.uuid4()}")
    for number in range(20):
        await publish_acked(a, "general", f"m{number}", f"id{number}")
    await chat.archived()
    await wait_until(lambda: [row[0] for row in chat.rows()] == [16, 17, 18, 19, 20])


async def test_messages_older_than_the_retention_leave_the_history(start: Start) -> None:
    # The Redis engine trims its streams by age too, not only the archive behind them.
    chat = await start(retention_days=1.5 / 86_400, prune_interval=0.05, rate_limit=0)
    a = await chat.join(f"clientId={uuid.uuid4()}")
    await a.subscribe("room")
    for number in range(3):
        await publish_acked(a, "room", f"old {number}", f"old{number}")
    await asyncio.sleep(1.6)
    await publish_acked(a, "room", "new", "new")
    await chat.archived()
    await wait_until(lambda: [row[2] for row in chat.rows()] == ["new"])
    reader = await chat.join()
    subscribed = await reader.subscribe("room")
    assert [m["message"] for m in subscribed["messages"]] == ["new"]
