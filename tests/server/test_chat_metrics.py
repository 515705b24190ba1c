"""``GET /metrics`` of a running App: who may read it, and each metric moving with its event.

Read with ``prometheus_client``'s parser, as Prometheus reads it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rfc6455 import Limits
from server.app import App
from server.retry import RetryPolicy
from server.settings import Settings
from tests.server.redis_service import RedisServer
from tests.server.support import GUARD, HOST, Chat, locked, upgrade_head, wait_until
from tests.server.test_slow_consumer import join_without_reading
from tests.server.workers_service import Supervisors, reserved_port

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


async def test_a_metrics_port_taken_stops_the_start(tmp_path: Path, web_root: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        settings = Settings(
            host=HOST,
            port=0,
            db_path=tmp_path / "chat.db",
            web_root=web_root,
            metrics_port=taken.getsockname()[1],
        )
        app = App(settings)
        with pytest.raises(OSError, match="in use"):
            await app.start()
    assert app.server is not None
    assert app.server.sockets == ()  # the chat's port was closed again


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


async def test_echo_is_counted_when_it_ends(chat: Chat) -> None:
    connection = await chat.connect("/echo")
    for message in ("héllo", b"\x00\xff"):
        await connection.send(message)
        async with asyncio.timeout(GUARD):
            assert await connection.recv() == message
    await connection.close()
    await wait_until(lambda: not chat.app.server or not chat.app.server.connections)
    samples = await scrape(chat)
    assert value(samples, "chat_client_connections_accepted_total", endpoint="echo") == 1
    for way in ("received", "sent"):
        assert value(samples, f"chat_transport_messages_{way}_total") == 2
        assert value(samples, f"chat_transport_bytes_{way}_total") == len("héllo".encode()) + 2
    assert value(samples, "chat_transport_closes_total", code="1000", by="client") == 1


async def test_closes_by_code(chat: Chat) -> None:
    client = await chat.join()
    await client.connection.close(4321, "bye")
    await wait_until(lambda: len(chat.app.manager) == 0)
    samples = await scrape(chat)
    # A client's application codes are grouped: they must not make thousands of series.
    assert value(samples, "chat_transport_closes_total", code="4xxx", by="client") == 1


async def test_a_handler_that_raises_counts_1011(
    chat: Chat, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(connection: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(chat.app, "chat", broken)
    connection = await chat.connect()
    async with asyncio.timeout(GUARD):
        await connection.wait_closed()
    assert connection.close_code == 1011
    samples = await scrape(chat)
    assert value(samples, "chat_transport_closes_total", code="1011", by="server") == 1


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


# The Redis engine's metrics: two nodes (two Apps on one Redis, in this process).


async def test_redis_publish_lag_and_a_gap_filled(
    start_chat: Callable[..., Any], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    node_a = await start_chat(engine=redis_url, metrics_token=TOKEN)
    node_b = await start_chat(engine=redis_url, metrics_token=TOKEN)
    a, b = await node_a.join(), await node_b.join()
    engine = node_b.app.engine
    received = engine._received
    dropped: list[bytes] = []

    def lose_the_first(topic: str, data: bytes) -> None:
        if not dropped and data[:1] == b"p":
            dropped.append(data)  # as if pub/sub had lost it: B sees seq 2 after 0
            return
        received(topic, data)

    monkeypatch.setattr(engine, "_received", lose_the_first)
    for text in ("one", "two"):
        await a.send(text)
        await a.expect("ack")
    await b.expect_broadcast(a, "one")
    await b.expect_broadcast(a, "two")
    on_a, on_b = await scrape(node_a), await scrape(node_b)
    assert value(on_a, "chat_broker_publish_duration_seconds_count") == 2
    assert value(on_a, "chat_node_pub_sub_lag_seconds_count") == 2
    assert value(on_a, "chat_client_ack_latency_seconds_count") == 2
    assert value(on_b, "chat_broker_gaps_filled_total") == 1
    assert value(on_a, "chat_broker_gaps_filled_total") == 0
    assert value(on_b, "chat_node_num_presence_members") == 1


async def test_redis_reconnects(
    start_chat: Callable[..., Any], redis_factory: Callable[..., RedisServer]
) -> None:
    redis = redis_factory()
    chat: Chat = await start_chat(engine=redis.url, metrics_token=TOKEN)
    await chat.join()
    assert value(await scrape(chat), "chat_broker_reconnects_total") == 0
    assert redis.command("CLIENT", "KILL", "TYPE", "pubsub").startswith(b":")
    await wait_until(lambda: chat.app.metrics.redis_reconnects.value == 1)
    assert value(await scrape(chat), "chat_broker_reconnects_total") == 1


# --workers: each worker on a port of its own, with its number as a label.


def two_free_ports() -> int:
    """A port P of 127.0.0.1 such that P and P + 1 are free (at the time of asking)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind((HOST, 0))
            port: int = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind((HOST, port + 1))
                except OSError:
                    continue
        return port
    raise AssertionError("no two free ports in a row")


async def http_get(port: int, path: str) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
    async with asyncio.timeout(GUARD):
        response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


async def test_each_worker_has_its_port_and_its_label(tmp_path: Path, redis_url: str) -> None:
    supervisors = Supervisors(tmp_path)
    metrics_port = two_free_ports()
    try:
        with reserved_port() as port:
            await supervisors.start(
                *("--engine", redis_url, "--db", str(tmp_path / "chat.db")),
                *("--metrics-port", str(metrics_port)),
                port=port,
            )
            for worker in (0, 1):
                head, body = await http_get(metrics_port + worker, "/metrics")
                assert head.startswith(b"HTTP/1.1 200 "), head
                samples = samples_of(body.decode())
                labels = {dict(key[1]).get("worker") for key in samples}
                assert labels == {str(worker)}
                inflight = ("chat_client_connections_inflight", (("worker", str(worker)),))
                assert samples[inflight] == 0
    finally:
        await supervisors.close()
