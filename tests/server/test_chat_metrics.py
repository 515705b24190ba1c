"""``GET /metrics`` of a running App: who may read it, and each metric moving with its event.

Read with ``prometheus_client``'s parser, as Prometheus reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rfc6455 import Limits
from server.retry import RetryPolicy
from tests.server.support import GUARD, HOST, Chat, locked, upgrade_head, wait_until
from tests.server.test_slow_consumer import join_without_reading

TOKEN = "metrics-token-0123456789"
AUTH = f"Authorization: Bearer {TOKEN}"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples_of(text: str) -> Samples:
    """Every sample, by its name and its sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(chat: Chat) -> Samples:
    reply = await chat.get("/metrics", "GET", AUTH)
    assert reply.status == 200, reply
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples_of(reply.body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def chat(start_chat: Callable[..., Any]) -> Chat:
    started: Chat = await start_chat(metrics_token=TOKEN)
    return started


async def test_metrics_are_off_by_default(start_chat: Callable[..., Any]) -> None:
    plain: Chat = await start_chat()
    assert (await plain.get("/metrics", "GET", AUTH)).status == 404


async def test_the_token_is_required(chat: Chat) -> None:
    for headers in (
        (),
        ("Authorization: Bearer wrong-token-0123456789",),
        ("Authorization: Basic x",),
    ):
        reply = await chat.get("/metrics", "GET", *headers)
        assert reply.status == 401
        assert reply.headers["www-authenticate"].startswith("Bearer")
    assert (await chat.get("/metrics", "HEAD", AUTH)).status == 200
    assert (await chat.get("/metrics", "GET", AUTH.replace("Bearer", "bearer"))).status == 200


async def test_a_port_of_its_own(start_chat: Callable[..., Any]) -> None:
    chat: Chat = await start_chat(metrics_port=0)
    server = chat.app.metrics_server
    assert server is not None
    assert (await chat.get("/metrics", "GET", AUTH)).status == 404  # not on the chat's port
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    async with asyncio.timeout(GUARD):
        response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert value(samples_of(body.decode()), "chat_client_connections_inflight") == 0
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    async with asyncio.timeout(GUARD):
        assert (await reader.read()).startswith(b"HTTP/1.1 404 ")
    writer.close()


async def test_connections_messages_and_bytes(chat: Chat) -> None:
    before = await scrape(chat)
    alice = await chat.join()
    bob = await chat.join()
    during = await scrape(chat)
    assert value(during, "chat_client_connections_inflight") == 2
    assert value(during, "chat_node_num_clients") == 2
    assert value(during, "chat_node_num_channels") == 1
    assert value(during, "chat_node_num_subscriptions") == 2
    assert value(during, "chat_node_num_presence_members") == 2
    assert value(during, "chat_client_connections_accepted_total", endpoint="chat") == 2
    text = "héllo"
    await alice.send(text)
    await bob.expect_broadcast(alice, text)
    await alice.wait_acks(1)
    after = await scrape(chat)
    assert value(after, "chat_transport_messages_received_total") == 1
    assert value(after, "chat_transport_bytes_received_total") == len(text.encode())
    # Each greeted twice (id, welcome), a history each, the broadcast to bob, alice's ack.
    assert (
        value(after, "chat_transport_messages_sent_total")
        - value(before, "chat_transport_messages_sent_total")
        >= 6
    )
    assert value(after, "chat_transport_bytes_sent_total") > value(
        during, "chat_transport_bytes_sent_total"
    )
    assert value(after, "chat_node_broadcast_duration_seconds_count") >= 1
    assert value(after, "chat_persist_committed_messages_total") == 1
    assert value(after, "chat_persist_commit_duration_seconds_count") >= 1
    assert value(after, "chat_client_ack_latency_seconds_count") == 1
    assert value(after, "chat_client_ack_latency_seconds_bucket", le="+Inf") == 1


async def test_closes_by_code(chat: Chat) -> None:
    client = await chat.join()
    await client.connection.close(4321, "bye")
    await wait_until(lambda: len(chat.app.manager) == 0)
    samples = await scrape(chat)
    assert value(samples, "chat_transport_closes_total", code="4321", by="client") == 1


async def test_refused_handshakes_by_reason(start_chat: Callable[..., Any]) -> None:
    chat: Chat = await start_chat(metrics_token=TOKEN, max_connections=1)
    # A handshake without its key: the WebSocket server refuses it itself.
    head = upgrade_head("/", f"{HOST}:{chat.port}").replace(b"Sec-WebSocket-Key", b"X-Nothing")
    assert (await chat.request(head)).status == 400
    await chat.join()
    assert (await chat.request(upgrade_head("/", f"{HOST}:{chat.port}"))).status == 503
    samples = await scrape(chat)
    assert value(samples, "chat_client_handshakes_refused_total", reason="max_connections") == 1
    assert value(samples, "chat_client_handshakes_refused_total", reason="bad_request") == 1
    assert value(samples, "chat_client_handshakes_refused_total", reason="origin") == 0


async def test_refused_origin(chat: Chat) -> None:
    head = upgrade_head("/", f"{HOST}:{chat.port}", "Origin: https://evil.example")
    assert (await chat.request(head)).status == 403
    samples = await scrape(chat)
    assert value(samples, "chat_client_handshakes_refused_total", reason="origin") == 1


async def test_rate_limited_messages(start_chat: Callable[..., Any]) -> None:
    chat: Chat = await start_chat(metrics_token=TOKEN, rate_limit=1, rate_burst=1)
    client = await chat.join()
    await client.send("one")
    await client.send("two")
    await client.expect("error", code="rate_limited")
    assert value(await scrape(chat), "chat_client_rate_limited_messages_total") == 1


async def test_resumes_by_recovered(chat: Chat) -> None:
    client = await chat.join()
    epoch = client.welcome["epoch"]
    await client.send("a")
    await client.wait_acks(1)
    await chat.join(f"since=0&epoch={epoch}")
    await chat.join("since=0&epoch=another-epoch")
    samples = await scrape(chat)
    assert value(samples, "chat_client_recover_total", recovered="true") == 1
    assert value(samples, "chat_client_recover_total", recovered="false") == 1
    assert value(samples, "chat_client_recovered_publications_total") == 1


async def test_dead_letters_and_retries(start_chat: Callable[..., Any]) -> None:
    chat: Chat = await start_chat(
        metrics_token=TOKEN, retry=RetryPolicy(attempts=2, base_delay=0.01)
    )
    client = await chat.join()
    queue = chat.app.queue
    with locked(chat.db_path):
        await client.send("lost")
        await wait_until(lambda: queue.dead_lettered == 1)
    samples = await scrape(chat)
    assert value(samples, "chat_persist_dead_letters_total") == 1
    assert value(samples, "chat_persist_retries_total") == 2
    assert value(samples, "chat_persist_queue_depth") == 0


async def test_slow_consumer(start_chat: Callable[..., Any]) -> None:
    chat: Chat = await start_chat(
        metrics_token=TOKEN, rate_limit=0, history=0, limits=Limits(max_send_buffer=65536)
    )
    sender = await chat.join()
    slow, _ = await join_without_reading(chat.port)
    try:
        text = "y" * 8000
        # Until it is cut off: what the kernel's buffers hold first is not known.
        for _ in range(5000):
            if len(chat.app.manager) == 1:
                break
            await sender.send(text)
            await sender.expect("ack")
        await wait_until(lambda: len(chat.app.manager) == 1)
        samples = await scrape(chat)
        assert (
            value(samples, "chat_client_slow_consumer_disconnects_total", reason="send_buffer") == 1
        )
        assert value(samples, "chat_transport_closes_total", code="1008", by="server") == 1
    finally:
        slow.close()
