"""docs/protocol.md holds true: its client examples are accepted, its server examples are sent.

Every ```json client block must be read by the server as a request (``commands.read``), and
every ```json server block must have the shape of a message that two real servers (anonymous
and ``--auth jwt``) send in a session that uses every part of the protocol: the same keys, and
values of the same kinds (a list's items each like one the server sent in such a list).
What only the Redis engine sends (``unavailable``) is checked against a server on a real
redis-server, stopped meanwhile.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rfc6455
from server import commands, departures
from server.retry import RetryPolicy
from tests.server.redis_service import RedisServer
from tests.server.support import Chat, Client, locked
from tests.server.test_auth import SECRET, token

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_BLOCK = re.compile(r"```json (client|server)\n(.*?)\n```", re.DOTALL)
# What only the Redis engine sends, while it cannot reach Redis.
REDIS_ONLY = {("error", "unavailable")}


def examples(direction: str) -> list[dict[str, Any]]:
    found = [
        json.loads(text) for kind, text in _BLOCK.findall(DOC.read_text()) if kind == direction
    ]
    assert found, f"no {direction} examples in {DOC}"
    return found


def kind(message: dict[str, Any]) -> tuple[str, str]:
    """What a message is: its type (``connectionId`` for the first one) and its error code."""
    return message.get("type", "connectionId"), message.get("code", "")


def matches(example: Any, candidates: list[Any]) -> bool:
    """Whether ``example`` has the shape of one of ``candidates`` (see the module's docstring)."""
    if isinstance(example, dict):
        same = [c for c in candidates if isinstance(c, dict) and set(c) == set(example)]
        return bool(same) and all(matches(example[k], [c[k] for c in same]) for k in example)
    if isinstance(example, list):
        lists = [c for c in candidates if isinstance(c, list)]
        items = [item for candidate in lists for item in candidate]
        return bool(lists) and all(matches(item, items) for item in example)
    return any(type(c) is type(example) for c in candidates)


@pytest.mark.parametrize("example", examples("client"), ids=lambda e: str(e.get("type", "text")))
def test_every_client_example_is_a_request_the_server_reads(example: dict[str, Any]) -> None:
    commands.read(json.dumps(example), max_chars=16_384, max_bytes=65_536)


async def drain(*clients: Client) -> None:
    """Everything each client has been sent so far ends up in its ``seen``."""
    for client in clients:
        marker = f"marker-{uuid.uuid4()}"
        await client.request("subscribe", channel=marker)
        await client.expect("subscribed", channel=marker)
        await client.request("unsubscribe", channel=marker)
        await client.expect("unsubscribed", channel=marker)


def greeting(client: Client) -> list[dict[str, Any]]:
    first = {"connectionId": client.id}
    return [first, client.welcome, *([client.history] if client.history else [])]


async def anonymous_session(chat: Chat) -> list[dict[str, Any]]:
    ann_id, bob_id = str(uuid.uuid4()), str(uuid.uuid4())
    early = await chat.join()
    await early.send("hi")
    await early.expect("ack")
    ann = await chat.join(f"clientId={ann_id}&name=Ann")
    watcher = await chat.join()
    await watcher.request("hello", clientId=bob_id, name="Bob")
    await watcher.expect("hello")
    for client in (watcher, ann, early):
        await client.subscribe("room:lobby")
    await ann.publish("room:lobby", "hello", "m1")
    await ann.expect("ack", clientMsgId="m1")
    await ann.publish("room:lobby", "hello", "m1")
    await ann.expect("ack", clientMsgId="m1", duplicate=True)
    await ann.send(json.dumps({"message": "hello, general", "clientMsgId": "m2"}))
    await ann.request("read", channel="room:lobby", seq=1)
    await ann.request("unsubscribe", channel="room:lobby")
    await ann.expect("unsubscribed")
    await ann.subscribe("room:lobby")
    await ann.request("presence", channel="room:lobby")
    await ann.request("typing", channel="room:lobby")
    await ann.publish("room:other", "nope", "m3")
    await ann.expect("error", code="not_subscribed")
    with locked(chat.db_path):
        await ann.publish("room:lobby", "lost", "m4")
        await ann.expect("error", code="not_persisted")
    leavers = [await chat.join() for _ in range(departures.BURST + 2)]
    await leavers[0].connection.close(1000, "bye")
    for leaver in leavers[1:]:
        await leaver.connection.close()
    await ann.expect("users_left")  # the departures over the rate, a second later
    await ann.request("unsubscribe", channel="room:lobby")
    for n in range(80):  # over the rate limit
        await early.send(json.dumps({"message": "flood", "clientMsgId": f"f{n}"}))
    await early.expect("error", code="rate_limited")
    await drain(ann, watcher)
    return [m for c in (early, ann, watcher) for m in (*greeting(c), *c.received)]


async def authenticated_session(chat: Chat) -> list[dict[str, Any]]:
    bob = await chat.join(f"access_token={token(sub='bob')}")
    bob_tab = await chat.join(f"access_token={token(sub='bob')}")
    for client in (bob, bob_tab):
        await client.subscribe("room:lobby")
    await bob.publish("room:lobby", "anyone here?", "b1")
    await bob.expect("ack")
    await bob.request("read", channel="room:lobby", seq=1)
    alice = await chat.join(f"access_token={token(sub='alice')}")
    await alice.subscribe("room:lobby")
    await bob.request("typing", channel="room:lobby")
    await alice.request("direct", to="bob", message="psst", clientMsgId="d1")
    await alice.expect("ack", clientMsgId="d1")
    await alice.request("presence", channel="room:lobby")
    await drain(alice, bob)
    again = await chat.join(f"access_token={token(sub='bob')}")
    await again.subscribe("room:lobby")
    await drain(again)
    return [m for c in (alice, bob, again) for m in (*greeting(c), *c.received)]


async def test_every_server_example_is_a_message_the_server_sends(start_chat: Any) -> None:
    impatient = RetryPolicy(attempts=1, base_delay=0.01, max_delay=0.01)
    anonymous = await start_chat(history=5, leave_rate=1, retry=impatient)
    authenticated = await start_chat(auth="jwt", jwt_secret=SECRET)
    sent: defaultdict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for message in [
        *await anonymous_session(anonymous),
        *await authenticated_session(authenticated),
    ]:
        sent[kind(message)].append(message)
    missing = [
        example
        for example in examples("server")
        if kind(example) not in REDIS_ONLY and not matches(example, sent[kind(example)])
    ]
    assert not missing, {str(kind(e)): sent[kind(e)][:3] for e in missing}


async def test_the_redis_engine_examples_are_messages_it_sends(
    start_chat: Any, redis_factory: Callable[..., RedisServer]
) -> None:
    redis = redis_factory()
    chat = await start_chat(engine=redis.url)
    ann = await chat.join(f"clientId={uuid.uuid4()}")
    await ann.subscribe("room:lobby")
    redis.stop()
    await ann.publish("room:lobby", "hello", "m1")
    await ann.expect("error", code="unavailable", clientMsgId="m1")
    await ann.request("subscribe", channel="room:other")
    await ann.expect("error", code="unavailable", channel="room:other")
    sent = [m for m in ann.received if kind(m) in REDIS_ONLY]
    redis_examples = [e for e in examples("server") if kind(e) in REDIS_ONLY]
    assert redis_examples
    missing = [example for example in redis_examples if not matches(example, sent)]
    assert not missing, sent
    # A new connection, meanwhile: accepted, then closed with 1013 before any message.
    late = await chat.connect()
    with pytest.raises(rfc6455.ConnectionClosed):
        await late.recv()
    close = late.protocol.close_rcvd
    assert close is not None
    assert (close.code, close.reason) == (1013, "chat unavailable: try again")
