"""Tests for rfc6455.aio.server: the opening handshake over real sockets, the
process_request hook, handlers and graceful shutdown."""

from __future__ import annotations

import asyncio
import base64
import zlib
from typing import Any

import pytest

import rfc6455
from rfc6455 import (
    Connection,
    ConnectionClosedError,
    ConnectionClosedOK,
    Headers,
    Request,
    Response,
)
from rfc6455.aio import server as server_module
from rfc6455.aio.connection import _address, _peer
from rfc6455.exceptions import InvalidRequest
from rfc6455.forwarded import TrustedProxies, parse_networks
from rfc6455.handshake import reject
from tests.rfc6455.conftest import (
    ACCEPT,
    GUARD,
    HOST,
    KEY,
    Net,
    client_frame,
    close_payload,
    info_lines,
    random_key,
    upgrade_request,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("loop_errors")


class Spy:
    """A handler that records the connections it was given."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.started = asyncio.Event()

    async def __call__(self, ws: Connection) -> None:
        self.connections.append(ws)
        self.started.set()
        async for message in ws:
            await ws.send(message)


# The opening handshake (RFC 6455 §4.2)


async def test_accept_example_of_section_1_3(net: Net) -> None:
    server = await net.serve()
    raw = await net.raw(server)
    await raw.send(upgrade_request(key=KEY))
    reply = await raw.read_reply()
    assert reply.status == 101
    assert reply.headers["sec-websocket-accept"] == ACCEPT
    assert reply.headers["upgrade"].lower() == "websocket"
    assert reply.headers["connection"].lower() == "upgrade"
    assert reply.body == b""
    # The connection is open: an unfragmented masked "Hello" (§5.7) comes back unmasked.
    await raw.send(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58")
    assert await raw.reader.readexactly(7) == b"\x81\x05Hello"


async def test_accept_token_lists_and_case(net: Net) -> None:
    server = await net.serve()
    raw = await net.raw(server)
    request = upgrade_request(
        replace={"Upgrade": "WebSocket", "Connection": "keep-alive, UPGRADE"}, key=random_key()
    )
    reply = await raw.handshake(request)
    assert reply.status == 101


async def test_frames_sent_with_the_request_are_received(net: Net) -> None:
    server = await net.serve()
    raw = await net.raw(server)
    # The first frame arrives in the same segment as the request head.
    await raw.send(upgrade_request() + b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58")
    assert (await raw.read_reply()).status == 101
    assert await raw.reader.readexactly(7) == b"\x81\x05Hello"


def _header_lines(count: int) -> list[tuple[str, str]]:
    return [(f"X-Filler-{i}", "x") for i in range(count)]


# (request, expected status, an expected header or None)
HANDSHAKE_FAILURES: dict[str, tuple[bytes, int, tuple[str, str] | None]] = {
    "method_post": (upgrade_request(method="POST"), 405, ("allow", "GET")),
    "http_1_0": (upgrade_request(version="HTTP/1.0"), 400, None),
    "missing_host": (upgrade_request(drop=["Host"]), 400, None),
    "bad_host": (upgrade_request(replace={"Host": "a b"}), 400, None),
    "missing_upgrade": (upgrade_request(drop=["Upgrade"]), 400, None),
    "bad_upgrade": (upgrade_request(replace={"Upgrade": "h2c"}), 400, None),
    "connection_without_upgrade": (
        upgrade_request(replace={"Connection": "keep-alive"}),
        400,
        None,
    ),
    "missing_key": (upgrade_request(drop=["Sec-WebSocket-Key"]), 400, None),
    "key_not_base64": (upgrade_request(key="not base64 at all!"), 400, None),
    "key_not_16_bytes": (
        upgrade_request(key=base64.b64encode(b"fifteen bytes!!").decode()),
        400,
        None,
    ),
    "missing_version": (upgrade_request(drop=["Sec-WebSocket-Version"]), 400, None),
    "version_8": (
        upgrade_request(replace={"Sec-WebSocket-Version": "8"}),
        426,
        ("sec-websocket-version", "13"),
    ),
    "request_line_over_8_kib": (upgrade_request("/" + "a" * 8200), 414, None),
    "header_line_over_8_kib": (upgrade_request(extra=[("X-Long", "a" * 8200)]), 431, None),
    "129_headers": (upgrade_request(extra=_header_lines(129 - 5)), 431, None),
    "http_2_0": (upgrade_request(version="HTTP/2.0"), 505, None),
    # An upgrade's body is never read: the bytes after its head are frames.
    "upgrade_with_a_body": (upgrade_request(extra=[("Content-Length", "5")]), 400, None),
    "upgrade_with_a_chunked_body": (
        upgrade_request(extra=[("Transfer-Encoding", "chunked")]),
        400,
        None,
    ),
}


@pytest.mark.parametrize(
    ("request_bytes", "status", "header"),
    list(HANDSHAKE_FAILURES.values()),
    ids=list(HANDSHAKE_FAILURES),
)
async def test_handshake_failure(
    net: Net,
    log: pytest.LogCaptureFixture,
    request_bytes: bytes,
    status: int,
    header: tuple[str, str] | None,
) -> None:
    spy = Spy()
    server = await net.serve(spy)
    raw = await net.raw(server)
    await raw.send(request_bytes)
    reply = await raw.read_reply()
    assert reply.status == status
    if header is not None:
        assert reply.headers[header[0]] == header[1]
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    # A one-line reason as the body.
    body = reply.body.decode()
    assert body.endswith("\n")
    assert body.count("\n") == 1
    assert len(body) > 1
    # Then the server closes the connection without running the handler.
    assert await raw.at_eof()
    assert not spy.connections
    lines = info_lines(log)
    assert len(lines) == 1
    assert lines[0].startswith(f"refused {HOST}:")
    assert f"{status} " in lines[0]


async def test_128_headers_are_accepted(net: Net) -> None:
    server = await net.serve()
    raw = await net.raw(server)
    reply = await raw.handshake(upgrade_request(extra=_header_lines(128 - 5)))
    assert reply.status == 101


async def test_no_request_within_open_timeout_drops_the_connection(
    net: Net, log: pytest.LogCaptureFixture
) -> None:
    spy = Spy()
    server = await net.serve(spy, open_timeout=0.2)
    raw = await net.raw(server)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await raw.send(upgrade_request()[:20])  # a request that never completes
    # Closed (FIN: the server read what came, so nothing is left to reset) without an HTTP
    # reply, and not before the timeout.
    assert await raw.at_eof() is True
    assert loop.time() - start >= 0.2
    assert not spy.connections
    assert info_lines(log) == [
        f"dropped {HOST}:{raw.local_address[1]}: no complete request within 0.2 s"
    ]


async def test_silent_client_is_dropped_after_open_timeout(net: Net) -> None:
    server = await net.serve(open_timeout=0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    raw = await net.raw(server)
    assert await raw.at_eof() is True
    assert loop.time() - start >= 0.2


# Handshakes in progress, in all and from one address (Limits.max_handshakes*)


async def held(
    net: Net, server: rfc6455.Server, count: int, source: str | None = None
) -> list[Any]:
    """``count`` connections that send part of a request and wait (a slowloris)."""
    raws = [await net.raw(server, source) for _ in range(count)]
    for raw in raws:
        await raw.send(upgrade_request()[:20])
    return raws


async def test_a_handshake_over_max_handshakes_gets_503_at_once(
    net: Net, log: pytest.LogCaptureFixture
) -> None:
    server = await net.serve(max_handshakes=3, max_handshakes_per_address=None, open_timeout=GUARD)
    waiting = await held(net, server, 2, "127.0.0.2") + await held(net, server, 1, "127.0.0.3")
    await wait_until(lambda: len(server._handshakes) == 3)
    extra = await net.raw(server, "127.0.0.4")
    reply = await extra.read_reply()
    assert (reply.status, reply.headers["retry-after"]) == (503, "1")
    assert reply.body == b"too many handshakes in progress: retry later\n"
    assert await extra.at_eof() is True  # closed: it had sent nothing that could be reset
    # One of them finishes its handshake: there is room again.
    await waiting[0].send(upgrade_request()[20:])
    assert (await waiting[0].read_reply()).status == 101
    await wait_until(lambda: len(server._handshakes) == 2)
    assert (await (await net.raw(server)).handshake()).status == 101


async def test_one_address_cannot_take_every_handshake(net: Net) -> None:
    server = await net.serve(max_handshakes_per_address=2, open_timeout=GUARD)
    await held(net, server, 2, "127.0.0.2")
    await wait_until(lambda: len(server._handshakes) == 2)
    third = await net.raw(server, "127.0.0.2")
    assert (await third.read_reply()).status == 503
    # Another address is not held back.
    other = await net.raw(server, "127.0.0.3")
    assert (await other.handshake()).status == 101


async def test_refused_handshakes_are_logged_once_a_second_with_a_count(
    net: Net, log: pytest.LogCaptureFixture
) -> None:
    server = await net.serve(max_handshakes=1, open_timeout=GUARD)
    await held(net, server, 1)
    await wait_until(lambda: len(server._handshakes) == 1)
    for _ in range(30):
        raw = await net.raw(server)
        assert (await raw.read_reply()).status == 503
    warnings = [r.getMessage() for r in log.records if r.levelname == "WARNING"]
    assert warnings == ["refused handshakes: too many in progress: 1 in all, 1 from 127.0.0.1"]
    await wait_until(lambda: len([r for r in log.records if r.levelname == "WARNING"]) == 2)
    summary = [r.getMessage() for r in log.records if r.levelname == "WARNING"][1]
    assert summary.endswith("(and 29 more like it in the last 1 s)")


async def test_client_closing_before_the_request_ends(
    net: Net, log: pytest.LogCaptureFixture
) -> None:
    spy = Spy()
    server = await net.serve(spy)
    raw = await net.raw(server)
    await raw.send(upgrade_request()[:20])
    raw.writer.write_eof()
    assert await raw.at_eof()
    assert not spy.connections
    assert info_lines(log) == []


async def test_client_reset_during_the_handshake(net: Net, log: pytest.LogCaptureFixture) -> None:
    spy = Spy()
    server = await net.serve(spy, open_timeout=GUARD)
    raw = await net.raw(server)
    await raw.send(upgrade_request()[:20])
    raw.reset()
    await wait_until(lambda: not server._tasks)
    assert not spy.connections
    assert info_lines(log) == []


# Subprotocols and extensions (RFC 6455 §4.2.2)


async def test_server_picks_its_preferred_subprotocol(net: Net) -> None:
    spy = Spy()
    server = await net.serve(spy, subprotocols=["chat.v2", "chat.v1"])
    raw = await net.raw(server)
    request = upgrade_request(extra=[("Sec-WebSocket-Protocol", "chat.v1, chat.v2")])
    reply = await raw.handshake(request)
    assert reply.headers["sec-websocket-protocol"] == "chat.v2"
    async with asyncio.timeout(GUARD):
        await spy.started.wait()
    assert spy.connections[0].subprotocol == "chat.v2"


async def test_no_subprotocol_without_overlap(net: Net) -> None:
    spy = Spy()
    server = await net.serve(spy, subprotocols=["chat.v2"])
    raw = await net.raw(server)
    reply = await raw.handshake(upgrade_request(extra=[("Sec-WebSocket-Protocol", "other")]))
    assert "sec-websocket-protocol" not in reply.headers
    async with asyncio.timeout(GUARD):
        await spy.started.wait()
    assert spy.connections[0].subprotocol is None


async def test_subprotocol_through_connect(net: Net) -> None:
    spy = Spy()
    server = await net.serve(spy, subprotocols=["b", "a"])
    client = await net.connect(server, subprotocols=["a", "b"])
    assert client.subprotocol == "b"
    async with asyncio.timeout(GUARD):
        await spy.started.wait()
    assert spy.connections[0].subprotocol == "b"


async def test_unknown_extensions_are_not_accepted(net: Net) -> None:
    server = await net.serve()
    raw = await net.raw(server)
    offer = "x-unknown-extension, permessage-deflate; client_max_window_bits"
    reply = await raw.handshake(upgrade_request(extra=[("Sec-WebSocket-Extensions", offer)]))
    assert reply.headers["sec-websocket-extensions"] == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )


async def test_server_takes_the_first_offer_it_can_honour_and_compresses(net: Net) -> None:
    server = await net.serve()
    raw = await net.raw(server)
    # zlib cannot compress with 8 bits: that offer is declined, the next one taken.
    offer = (
        "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9"
    )
    reply = await raw.handshake(upgrade_request(extra=[("Sec-WebSocket-Extensions", offer)]))
    assert reply.headers["sec-websocket-extensions"] == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=9"
    )
    text = b"compressed on the wire " * 20
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = (compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    frame = bytearray(client_frame(0x1, payload))
    frame[0] |= 0x40  # RFC 7692 §6.1: RSV1, a compressed message
    await raw.send(bytes(frame))
    # The echo comes back compressed (RSV1), with a window of at most 9 bits.
    async with asyncio.timeout(GUARD):
        first, second = await raw.reader.readexactly(2)
        length = second if second < 126 else int.from_bytes(await raw.reader.readexactly(2))
        echoed = await raw.reader.readexactly(length)
    assert first == 0xC1
    assert zlib.decompressobj(-9).decompress(echoed + b"\x00\x00\xff\xff") == text


async def test_compression_off_accepts_no_extension(net: Net) -> None:
    server = await net.serve(compression=None)
    raw = await net.raw(server)
    offer = "permessage-deflate; client_max_window_bits, x-unknown-extension"
    reply = await raw.handshake(upgrade_request(extra=[("Sec-WebSocket-Extensions", offer)]))
    assert "sec-websocket-extensions" not in reply.headers
    # No extension means RSV1 stays reserved: a frame with it fails the connection.
    await raw.send(b"\xc1\x80" + b"\x00" * 4)
    assert (await raw.read_close()).close_code == 1002


# The process_request hook


async def test_process_request_sees_the_request(net: Net) -> None:
    seen: list[Request] = []

    def hook(request: Request) -> None:
        seen.append(request)

    spy = Spy()
    server = await net.serve(spy, process_request=hook)
    raw = await net.raw(server)
    await raw.handshake(upgrade_request("/chat/room?name=a%20b&x=1", extra=[("X-Token", "t0k")]))
    (request,) = seen
    assert request.method == "GET"
    assert request.path == "/chat/room"
    assert request.query == "name=a%20b&x=1"
    assert request.headers.get("x-token") == "t0k"
    assert request.headers.get("Sec-WebSocket-Key") == KEY
    assert request.remote_address == raw.local_address
    async with asyncio.timeout(GUARD):
        await spy.started.wait()
    assert spy.connections[0].request == request


async def test_process_request_refuses_with_403(net: Net, log: pytest.LogCaptureFixture) -> None:
    def hook(request: Request) -> Response:
        return reject(403, "no token")

    spy = Spy()
    server = await net.serve(spy, process_request=hook)
    raw = await net.raw(server)
    await raw.send(upgrade_request())
    reply = await raw.read_reply()
    assert reply.status == 403
    assert reply.body == b"no token\n"
    assert await raw.at_eof()
    assert not spy.connections


async def test_async_process_request_refuses(net: Net) -> None:
    async def hook(request: Request) -> Response | None:
        await asyncio.sleep(0)
        if request.headers.get("Authorization") != "Bearer good":
            return reject(401, "who are you?", [("WWW-Authenticate", "Bearer")])
        return None

    spy = Spy()
    server = await net.serve(spy, process_request=hook)
    refused = await net.raw(server)
    await refused.send(upgrade_request())
    reply = await refused.read_reply()
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert await refused.at_eof()
    accepted = await net.raw(server)
    await accepted.handshake(upgrade_request(extra=[("Authorization", "Bearer good")]))
    async with asyncio.timeout(GUARD):
        await spy.started.wait()


async def test_process_request_answers_plain_http(net: Net) -> None:
    def hook(request: Request) -> Response | None:
        if request.path == "/health":
            return Response(200, "OK", Headers([("Content-Type", "text/plain")]), b"ok\n")
        return None

    spy = Spy()
    server = await net.serve(spy, process_request=hook)
    raw = await net.raw(server)
    await raw.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reply = await raw.read_reply()
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain"
    assert reply.body == b"ok\n"
    assert await raw.at_eof()
    assert not spy.connections


async def test_plain_get_without_hook_is_refused(net: Net) -> None:
    server = await net.serve()
    raw = await net.raw(server)
    await raw.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await raw.read_reply()).status == 400
    assert await raw.at_eof()


async def test_process_request_that_raises_gives_500(
    net: Net, log: pytest.LogCaptureFixture
) -> None:
    def hook(request: Request) -> Response | None:
        raise RuntimeError("bug in the hook")

    spy = Spy()
    server = await net.serve(spy, process_request=hook)
    raw = await net.raw(server)
    await raw.send(upgrade_request())
    reply = await raw.read_reply()
    assert reply.status == 500
    assert await raw.at_eof()
    assert not spy.connections
    assert info_lines(log) == [f"process_request failed for {HOST}:{raw.local_address[1]}"]


async def test_process_request_returning_an_invalid_response_gives_500(net: Net) -> None:
    def hook(request: Request) -> Response | None:
        return Response(200, "OK", Headers([("X-Bad", "line\r\nbreak")]))

    server = await net.serve(process_request=hook)
    raw = await net.raw(server)
    await raw.send(upgrade_request())
    assert (await raw.read_reply()).status == 500
    assert await raw.at_eof()


# Handlers


async def test_handler_that_raises_closes_with_1011(
    net: Net, log: pytest.LogCaptureFixture
) -> None:
    async def handler(ws: Connection) -> None:
        await ws.recv()
        raise RuntimeError("bug in the handler")

    server = await net.serve(handler)
    client = await net.connect(server)
    await client.send("hi")
    with pytest.raises(ConnectionClosedError) as info:
        await client.recv()
    assert info.value.code == 1011
    await client.wait_closed()
    assert client.close_code == 1011
    records = [r for r in log.records if r.name.startswith("rfc6455")]
    assert len(records) == 1
    assert records[0].getMessage().startswith("handler failed for 127.0.0.1:")
    assert records[0].exc_info is not None


async def test_handler_return_closes_with_1000(net: Net) -> None:
    async def handler(ws: Connection) -> None:
        await ws.send("bye")

    server = await net.serve(handler)
    client = await net.connect(server)
    assert await client.recv() == "bye"
    with pytest.raises(ConnectionClosedOK) as info:
        await client.recv()
    assert info.value.code == 1000


async def test_handler_stopped_by_connection_closed_is_not_an_error(
    net: Net, log: pytest.LogCaptureFixture
) -> None:
    done = asyncio.Event()

    async def handler(ws: Connection) -> None:
        try:
            while True:
                await ws.recv()
        finally:
            done.set()

    server = await net.serve(handler)
    client = await net.connect(server)
    client.abort()
    async with asyncio.timeout(GUARD):
        await done.wait()
    await wait_until(lambda: not server.connections)
    assert info_lines(log) == []


# Graceful shutdown


async def test_close_closes_connections_with_1001_and_waits_for_handlers(net: Net) -> None:
    finished: list[int | None] = []

    async def handler(ws: Connection) -> None:
        async for message in ws:
            await ws.send(message)
        await asyncio.sleep(0)  # some clean-up after the last message
        finished.append(ws.close_code)

    server = await net.serve(handler)
    clients = [await net.connect(server) for _ in range(3)]
    for client in clients:
        await client.send("ready?")
        assert await client.recv() == "ready?"
    assert len(server.connections) == 3
    await server.close()
    # Every handler ended before close() returned; each saw its client's answer.
    assert finished == [1001, 1001, 1001]
    assert not server.connections
    for client in clients:
        with pytest.raises(ConnectionClosedOK) as info:
            await client.recv()
        assert info.value.code == 1001
        assert info.value.reason == "server shutting down"


async def test_close_cancels_handlers_after_the_timeout(net: Net) -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def handler(ws: Connection) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # ignores the close
        except asyncio.CancelledError:
            cancelled.set()
            raise

    server = await net.serve(handler)
    client = await net.connect(server)
    async with asyncio.timeout(GUARD):
        await started.wait()
    await server.close(timeout=0.2)
    assert cancelled.is_set()
    await client.wait_closed()
    assert client.close_code == 1001


async def test_close_refuses_new_connections(net: Net) -> None:
    release = asyncio.Event()

    async def handler(ws: Connection) -> None:
        await release.wait()

    server = await net.serve(handler)
    port = server.port
    client = await net.connect(server)
    # A TCP connection accepted before the shutdown, whose request comes after it.
    late = await net.raw(server)
    await wait_until(lambda: len(server._tasks) == 1 and len(server._handshakes) == 1)
    closing = asyncio.create_task(server.close(timeout=GUARD))
    async with asyncio.timeout(GUARD):
        await client.wait_closed()  # the shutdown has started
    assert client.close_code == 1001
    # The listening socket is closed: new connections are refused...
    with pytest.raises(ConnectionRefusedError):
        await net.connect(port)
    # ... and a connection still in its opening handshake is dropped at once.
    await late.at_eof()
    release.set()
    async with asyncio.timeout(GUARD):
        await closing


async def test_close_with_code_and_reason(net: Net) -> None:
    server = await net.serve()
    client = await net.connect(server)
    await client.send("hi")
    assert await client.recv() == "hi"
    await server.close(code=4000, reason="maintenance")
    with pytest.raises(ConnectionClosedError) as info:
        await client.recv()
    assert (info.value.code, info.value.reason) == (4000, "maintenance")


async def test_close_without_connections(net: Net) -> None:
    server = await net.serve()
    port = server.port
    await server.close()
    await server.close()  # twice is harmless
    assert server.sockets == ()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(HOST, port)


async def test_server_as_async_context_manager(loop_errors: list[dict[str, Any]]) -> None:
    async with await rfc6455.serve(Spy(), HOST, 0) as server:
        (sock,) = server.sockets
        assert server.port == sock.getsockname()[1]  # type: ignore[attr-defined]
        client = await rfc6455.connect(f"ws://{HOST}:{server.port}/")
        await client.send(b"x")
        assert await client.recv() == b"x"
    await client.wait_closed()
    assert client.close_code == 1001
    assert server.sockets == ()  # asyncio forgets its sockets once closed


async def test_sockets_of_a_server_not_started() -> None:
    server = rfc6455.Server(Spy(), limits=rfc6455.Limits(), process_request=None, subprotocols=())
    assert server.sockets == ()
    await server.close()


async def test_serve_options_override_limits(net: Net) -> None:
    limits = rfc6455.Limits(max_size=10, ping_interval=None)
    server = await net.serve(limits=limits, max_size=20)
    assert server.limits.max_size == 20
    assert server.limits.ping_interval is None


def test_peer_names() -> None:
    assert _peer(("127.0.0.1", 8000)) == "127.0.0.1:8000"
    assert _peer(None) == "unknown peer"


def test_addresses_of_other_socket_families() -> None:
    assert _address(("::1", 8000, 0, 0)) == ("::1", 8000)
    assert _address("/run/ws.sock") is None  # a Unix socket's peername
    assert _address(None) is None


async def test_close_frame_in_the_handshake_segment(net: Net) -> None:
    spy = Spy()
    server = await net.serve(spy)
    raw = await net.raw(server)
    await raw.send(upgrade_request() + b"\x88\x82" + b"\x00" * 4 + close_payload(1000))
    assert (await raw.read_reply()).status == 101
    assert (await raw.read_close()).close_code == 1000
    assert await raw.at_eof()
    await raw.close()
    async with asyncio.timeout(GUARD):
        await spy.started.wait()
    ws = spy.connections[0]
    await ws.wait_closed()
    assert ws.close_code == 1000


async def test_close_does_not_wait_for_idle_handshakes(net: Net) -> None:
    # A TCP connection that never sends its request (a browser's preconnect)
    # must not hold the shutdown for open_timeout.
    server = await net.serve(open_timeout=3600)
    idle = await net.raw(server)
    await wait_until(lambda: len(server._handshakes) == 1)
    async with asyncio.timeout(GUARD):
        await server.close(timeout=3600)
    assert await idle.at_eof() is True  # closed, having sent nothing that could be reset
    assert not server._handshakes


# What process_request leaves for the handler, and what it can count


async def test_process_request_leaves_state_for_the_handler(net: Net) -> None:
    seen: list[object] = []

    def hook(request: Request) -> None:
        request.state["user"] = "ann"

    async def handler(ws: Connection) -> None:
        assert ws.request is not None
        seen.append(ws.request.state.get("user"))

    server = await net.serve(handler, process_request=hook)
    client = await net.connect(server)
    await client.wait_closed()
    assert seen == ["ann"]
    # State takes no part in comparisons.
    assert Request("GET", "/", Headers()) == Request("GET", "/", Headers(), state={"a": 1})


async def test_a_connection_is_counted_from_its_101_on(net: Net) -> None:
    """A hook that caps connections sees those upgraded in the same step of the loop."""
    server: rfc6455.Server | None = None

    def one_at_a_time(request: Request) -> Response | None:
        assert server is not None
        return reject(503, "full") if server.connections else None

    server = await net.serve(Spy(), process_request=one_at_a_time)
    results = await asyncio.gather(*(net.connect(server) for _ in range(5)), return_exceptions=True)
    assert sum(isinstance(result, Connection) for result in results) == 1


# The body of a plain HTTP request (RFC 9112 §6.3), read before process_request sees it


def post(body: bytes = b"", *fields: str, length: int | None = None) -> bytes:
    """A POST head announcing ``length`` bytes (``len(body)`` by default), then ``body``."""
    size = len(body) if length is None else length
    lines = ["POST /api HTTP/1.1", f"Host: {HOST}", f"Content-Length: {size}", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Recorder:
    """A process_request hook that keeps each request and answers 200 with its body."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        return Response(200, "OK", Headers([("Connection", "close")]), request.body or b"-")


async def test_process_request_sees_the_body_of_a_post(net: Net) -> None:
    hook = Recorder()
    server = await net.serve(process_request=hook)
    raw = await net.raw(server)
    await raw.send(post(b'{"message": "hi"}'))
    reply = await raw.read_reply()
    assert (reply.status, reply.body) == (200, b'{"message": "hi"}')
    assert await raw.at_eof()
    (request,) = hook.requests
    assert (request.method, request.path, request.body) == ("POST", "/api", b'{"message": "hi"}')
    assert request.remote_address == raw.local_address


async def test_a_body_that_comes_after_the_head_is_waited_for(net: Net) -> None:
    hook = Recorder()
    server = await net.serve(process_request=hook)
    raw = await net.raw(server)
    # RFC 9110 §10.1.1: the client waits for 100 (Continue), which says the server is reading.
    await raw.send(post(b"", "Expect: 100-continue", length=10))
    async with asyncio.timeout(GUARD):
        assert await raw.reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert not hook.requests
    for piece in (b"0123", b"45", b"6789"):
        await raw.send(piece)
    reply = await raw.read_reply()
    assert (reply.status, reply.body) == (200, b"0123456789")
    assert [request.body for request in hook.requests] == [b"0123456789"]


async def test_bytes_after_the_body_are_not_part_of_it(net: Net) -> None:
    hook = Recorder()
    server = await net.serve(process_request=hook)
    raw = await net.raw(server)
    await raw.send(post(b"", length=4))
    await raw.send(b"bodyGET / HTTP/1.1\r\n\r\n")
    assert (await raw.read_reply()).body == b"body"
    assert [request.body for request in hook.requests] == [b"body"]


@pytest.mark.parametrize(
    ("expect", "version"),
    [("100-continue", "HTTP/1.0"), ("something-else", "HTTP/1.1")],
)
async def test_100_continue_only_when_asked_in_http_1_1(
    net: Net, expect: str, version: str
) -> None:
    server = await net.serve(process_request=Recorder())
    raw = await net.raw(server)
    head = post(b"", f"Expect: {expect}", length=2).replace(b"HTTP/1.1", version.encode(), 1)
    await raw.send(head)
    await raw.send(b"ok")  # RFC 9110 §10.1.1: in HTTP/1.0, the expectation is ignored
    reply = await raw.read_reply()  # the first status line is the final one
    assert (reply.status, reply.body) == (200, b"ok")


async def test_a_body_sent_with_the_head_gets_no_100_continue(net: Net) -> None:
    server = await net.serve(process_request=Recorder())
    raw = await net.raw(server)
    await raw.send(post(b"ok", "Expect: 100-continue"))
    assert (await raw.read_reply()).status == 200


async def test_an_empty_body_and_none_at_all(net: Net) -> None:
    hook = Recorder()
    server = await net.serve(process_request=hook)
    for request in (post(b""), b"DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n"):
        raw = await net.raw(server)
        await raw.send(request)
        assert (await raw.read_reply()).body == b"-"
    assert [request.body for request in hook.requests] == [b"", b""]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_get_is_answered_on_its_head_and_its_body_is_not_read(
    net: Net, method: str
) -> None:
    hook = Recorder()
    server = await net.serve(process_request=hook)
    raw = await net.raw(server)
    await raw.send(f"{method} / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n".encode())
    assert (await raw.read_reply()).status == 200
    assert [request.body for request in hook.requests] == [b""]


async def test_an_asynchronous_hook_sees_the_body(net: Net) -> None:
    async def hook(request: Request) -> Response:
        await asyncio.sleep(0)
        return Response(201, "Created", Headers(), request.body[::-1])

    server = await net.serve(process_request=hook)
    raw = await net.raw(server)
    await raw.send(post(b"", length=3))
    await raw.send(b"abc")
    reply = await raw.read_reply()
    assert (reply.status, reply.body) == (201, b"cba")


async def test_a_post_without_a_hook_is_405_once_its_body_is_read(net: Net) -> None:
    server = await net.serve()
    raw = await net.raw(server)
    await raw.send(post(b"data"))
    reply = await raw.read_reply()
    assert (reply.status, reply.headers["allow"]) == (405, "GET")
    assert await raw.at_eof()


# (the request's extra head lines, the status, the one-line reason)
BODY_REFUSALS = {
    "over_max_body_size": (("Content-Length: 1048577",), 413, "at most 1048576 bytes"),
    "chunked": (("Transfer-Encoding: chunked",), 411, "send Content-Length"),
    "another_coding": (("Transfer-Encoding: gzip, chunked",), 501, "gzip is not implemented"),
    "chunked_not_last": (("Transfer-Encoding: chunked, gzip",), 400, "chunked is not the last"),
    "bad_length": (("Content-Length: 12abc",), 400, "invalid Content-Length"),
}


@pytest.mark.parametrize(
    ("fields", "status", "reason"), list(BODY_REFUSALS.values()), ids=list(BODY_REFUSALS)
)
async def test_a_body_is_refused_before_it_is_read(
    net: Net, log: pytest.LogCaptureFixture, fields: tuple[str, ...], status: int, reason: str
) -> None:
    hook = Recorder()
    server = await net.serve(process_request=hook)
    raw = await net.raw(server)
    head = "\r\n".join(["PUT /x HTTP/1.1", f"Host: {HOST}", *fields]) + "\r\n\r\n"
    await raw.send(head.encode())
    reply = await raw.read_reply()
    assert reply.status == status
    assert reason in reply.body.decode()
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert not hook.requests
    assert info_lines(log) == [
        f"refused {HOST}:{raw.local_address[1]}: {status} {reply.body.decode().strip()}"
    ]


async def test_a_body_over_max_body_size_is_refused_however_small(net: Net) -> None:
    hook = Recorder()
    server = await net.serve(process_request=hook, max_body_size=4)
    raw = await net.raw(server)
    await raw.send(post(b"12345"))
    assert (await raw.read_reply()).status == 413
    raw = await net.raw(server)
    await raw.send(post(b"1234"))
    assert (await raw.read_reply()).body == b"1234"


async def test_the_answer_to_a_refused_body_is_read_while_the_body_still_comes(
    net: Net,
) -> None:
    """RFC 9112 §9.6: no reset that would destroy the answer before the client reads it."""
    server = await net.serve(process_request=Recorder())
    raw = await net.raw(server)
    # More than the socket buffers hold: the client is still sending when the answer comes.
    await raw.send(post(b"x" * 8 * 2**20))
    reply = await raw.read_reply()
    assert reply.status == 413
    assert await raw.at_eof() is True  # a FIN, not a reset
    # The server closes once the client does.
    await raw.close()
    await wait_until(lambda: not server._handshakes)


async def test_a_refused_client_that_never_closes_is_dropped_after_the_linger(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "_LINGER", 0.05)
    server = await net.serve(process_request=Recorder(), open_timeout=None)
    raw = await net.raw(server)
    await raw.send(post(b"", "Transfer-Encoding: chunked"))
    await raw.send(b"5\r\nhello\r\n")
    assert (await raw.read_reply()).status == 411
    assert await raw.at_eof() is True
    await wait_until(lambda: not server._handshakes)


async def test_a_body_that_does_not_arrive_within_open_timeout_is_dropped(
    net: Net, log: pytest.LogCaptureFixture
) -> None:
    hook = Recorder()
    server = await net.serve(process_request=hook, open_timeout=0.2)
    raw = await net.raw(server)
    await raw.send(post(b"abc", length=10))
    assert await raw.at_eof() is True
    assert not hook.requests
    assert info_lines(log) == [
        f"dropped {HOST}:{raw.local_address[1]}: no complete request within 0.2 s"
    ]


# The process_refusal hook


def json_refusal(request: Request, exc: InvalidRequest) -> Response | None:
    """Answers refusals on /api in JSON, and leaves the others alone."""
    if not request.path.startswith("/api"):
        return None
    body = f'{{"error": {exc.status}, "path": "{request.path}"}}'.encode()
    return Response(exc.status, "Refused", Headers([("Content-Type", "application/json")]), body)


async def test_process_refusal_answers_a_refused_body(net: Net) -> None:
    server = await net.serve(process_request=Recorder(), process_refusal=json_refusal)
    raw = await net.raw(server)
    await raw.send(post(b"", length=2**21))
    reply = await raw.read_reply()
    assert (reply.status, reply.headers["content-type"]) == (413, "application/json")
    assert reply.body == b'{"error": 413, "path": "/api"}'
    assert await raw.at_eof() is True


async def test_process_refusal_sees_a_failed_upgrade_and_may_leave_it(net: Net) -> None:
    seen: list[tuple[str, int]] = []

    def hook(request: Request, exc: InvalidRequest) -> None:
        seen.append((request.path, exc.status))

    server = await net.serve(process_refusal=hook)
    raw = await net.raw(server)
    await raw.send(upgrade_request("/room", drop=["Sec-WebSocket-Key"]))
    reply = await raw.read_reply()
    assert (reply.status, reply.headers["content-type"]) == (400, "text/plain; charset=utf-8")
    assert seen == [("/room", 400)]


async def test_process_refusal_is_not_asked_without_a_parsed_head(net: Net) -> None:
    seen: list[Request] = []

    def hook(request: Request, exc: InvalidRequest) -> None:
        seen.append(request)

    server = await net.serve(process_refusal=hook)
    raw = await net.raw(server)
    await raw.send(upgrade_request(version="HTTP/2.0"))
    assert (await raw.read_reply()).status == 505
    assert not seen


@pytest.mark.parametrize(
    "answer",
    [RuntimeError("bug"), Response(413, "Bad\r\nReason", Headers())],
    ids=["raises", "unserializable"],
)
async def test_process_refusal_that_fails_gives_500(
    net: Net, log: pytest.LogCaptureFixture, answer: Exception | Response
) -> None:
    def hook(request: Request, exc: InvalidRequest) -> Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    server = await net.serve(process_request=Recorder(), process_refusal=hook)
    raw = await net.raw(server)
    await raw.send(post(b"", "Transfer-Encoding: chunked"))
    assert (await raw.read_reply()).status == 500
    assert info_lines(log)[-1] == f"process_refusal failed for {HOST}:{raw.local_address[1]}"


async def test_servers_with_reuse_port_share_a_port_and_both_accept(net: Net) -> None:
    first, second = Spy(), Spy()
    one = await net.serve(first, reuse_port=True)
    net.servers.append(await rfc6455.serve(second, HOST, one.port, reuse_port=True))
    # The kernel spreads connections by their addresses: 100 all going to one server is a
    # chance of 2**-99.
    for _ in range(100):
        client = await net.connect(one)
        await client.send("x")
        assert await client.recv() == "x"
        if first.connections and second.connections:
            break
    assert first.connections
    assert second.connections


async def test_without_reuse_port_a_second_server_cannot_share_the_port(net: Net) -> None:
    one = await net.serve(reuse_port=True)
    with pytest.raises(OSError, match="error while attempting to bind"):
        await rfc6455.serve(Spy(), HOST, one.port)


async def test_reuse_port_without_so_reuseport_is_a_value_error(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(server_module.socket, "SO_REUSEPORT")
    with pytest.raises(ValueError, match="SO_REUSEPORT"):
        await net.serve(reuse_port=True)


# Behind a trusted proxy (rfc6455.forwarded)


class Holder:
    """A process_request hook that records each request and holds it until released."""

    def __init__(self) -> None:
        self.requests: list[rfc6455.Request] = []
        self.release = asyncio.Event()

    async def __call__(self, request: rfc6455.Request) -> None:
        self.requests.append(request)
        await self.release.wait()


def forwarded_for(client: str) -> bytes:
    return upgrade_request(
        extra=[("X-Forwarded-For", f"198.51.100.7, {client}"), ("X-Forwarded-Proto", "https")]
    )


async def test_a_trusted_proxys_request_names_the_client(net: Net) -> None:
    holder = Holder()
    holder.release.set()
    proxies = TrustedProxies(parse_networks("127.0.0.2/32"))
    server = await net.serve(process_request=holder, trusted_proxies=proxies)
    proxy = await net.raw(server, "127.0.0.2")
    await proxy.handshake(forwarded_for("192.0.2.1"))
    (request,) = holder.requests
    assert request.remote_address == ("192.0.2.1", 0)
    assert request.scheme == "https"
    assert request.proxy_address is not None
    assert request.proxy_address[0] == "127.0.0.2"
    # From any other address the headers are what the client wrote: not read.
    direct = await net.raw(server, "127.0.0.3")
    await direct.handshake(forwarded_for("192.0.2.1"))
    assert holder.requests[1].remote_address is not None
    assert holder.requests[1].remote_address[0] == "127.0.0.3"
    assert (holder.requests[1].scheme, holder.requests[1].proxy_address) == (None, None)


async def test_a_trusted_proxys_request_without_forwarding_headers_is_its_own(net: Net) -> None:
    holder = Holder()
    holder.release.set()
    proxies = TrustedProxies(parse_networks("127.0.0.2/32"))
    server = await net.serve(
        process_request=holder, trusted_proxies=proxies, max_handshakes_per_address=1
    )
    await (await net.raw(server, "127.0.0.2")).handshake()
    (request,) = holder.requests
    assert request.remote_address == request.proxy_address
    assert request.remote_address is not None
    assert request.remote_address[0] == "127.0.0.2"
    await wait_until(lambda: not server._handshaking)


async def test_a_trusted_proxys_handshakes_count_per_client(net: Net) -> None:
    holder = Holder()
    proxies = TrustedProxies(parse_networks("127.0.0.2/32"))
    server = await net.serve(
        process_request=holder,
        trusted_proxies=proxies,
        max_handshakes_per_address=2,
        open_timeout=GUARD,
    )
    # Three clients' handshakes at once through the proxy: its own address is not capped.
    raws = [await net.raw(server, "127.0.0.2") for _ in range(4)]
    for raw, client in zip(raws, ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.1"], strict=True):
        await raw.send(forwarded_for(client))
    await wait_until(lambda: len(holder.requests) == 4)
    assert server._handshaking["192.0.2.1"] == 2
    # A third from one client is one too many, as it would be without the proxy.
    third = await net.raw(server, "127.0.0.2")
    await third.send(forwarded_for("192.0.2.1"))
    reply = await third.read_reply()
    assert (reply.status, reply.headers["retry-after"]) == (503, "1")
    assert len(holder.requests) == 4
    holder.release.set()
    for raw in raws:
        assert (await raw.read_reply()).status == 101
    await wait_until(lambda: not server._handshaking)


async def test_a_slowloris_through_a_trusted_proxy_counts_in_all(net: Net) -> None:
    # Before its head is read the proxy's connection is nobody's: only max_handshakes holds it.
    proxies = TrustedProxies(parse_networks("127.0.0.2/32"))
    server = await net.serve(
        trusted_proxies=proxies, max_handshakes=3, max_handshakes_per_address=1, open_timeout=GUARD
    )
    await held(net, server, 3, "127.0.0.2")
    await wait_until(lambda: len(server._handshakes) == 3)
    fourth = await net.raw(server, "127.0.0.2")
    assert (await fourth.read_reply()).status == 503
