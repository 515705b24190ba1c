"""Tests for rfc6455.prepared: one message, framed and compressed once for many receivers."""

from __future__ import annotations

import zlib
from unittest import mock

import pytest

import rfc6455.prepared
from rfc6455.deflate import Compression, PerMessageDeflate, client_accept
from rfc6455.exceptions import InvalidState
from rfc6455.extensions import parse_extensions, serialize_extension
from rfc6455.frames import Frame, Opcode, parse_frame
from rfc6455.http11 import Headers
from rfc6455.prepared import PreparedMessage
from rfc6455.protocol import Protocol, Side
from tests.rfc6455.test_deflate import pair

TEXT = '{"type":"message","text":"' + "hello, everyone " * 64 + '"}'


def server_with(compression: Compression | None, client: Compression = Compression()) -> Protocol:
    """A server protocol with what ``compression`` negotiates with a ``client``'s offer."""
    deflate = None if compression is None else pair(compression, client)[0]
    return Protocol(Side.SERVER, deflate=deflate)


def receiver_of(server: Protocol, client: Compression = Compression()) -> Protocol:
    """A client protocol that can read what ``server`` sends (``client``: what it offered)."""
    deflate: PerMessageDeflate | None = None
    if server.deflate is not None:
        response = server.deflate.response
        header = serialize_extension(response.name, response.params)
        deflate = client_accept(
            parse_extensions(Headers([("Sec-WebSocket-Extensions", header)])),
            client,
        )
    return Protocol(Side.CLIENT, deflate=deflate)


@pytest.fixture
def compress_calls(monkeypatch: pytest.MonkeyPatch) -> mock.Mock:
    calls = mock.Mock(wraps=rfc6455.prepared.shared_compress)
    monkeypatch.setattr(rfc6455.prepared, "shared_compress", calls)
    return calls


def test_a_thousand_receivers_one_compress_call(compress_calls: mock.Mock) -> None:
    servers = [server_with(Compression()) for _ in range(1000)]
    message = PreparedMessage(TEXT)
    for server in servers:
        server.send_prepared(message)
    assert compress_calls.call_count == 1
    frames = {b"".join(server.data_to_send()) for server in servers}
    assert len(frames) == 1
    (frame,) = frames
    assert frame[0] == 0xC1  # FIN, RSV1, TEXT
    assert len(frame) < len(message.frame) / 4
    client = receiver_of(servers[0])
    client.receive_data(frame)
    assert client.events_received() == [TEXT]


def test_receivers_get_the_frame_of_their_parameters(compress_calls: mock.Mock) -> None:
    plain = server_with(None)
    default = [server_with(Compression()) for _ in range(3)]
    small_window = [server_with(Compression(window_bits=10)) for _ in range(3)]
    keep = Compression(context_takeover=True)
    context = server_with(keep, keep)
    high_threshold = server_with(Compression(threshold=10**6))
    everyone = [plain, *default, *small_window, context, high_threshold]
    message = PreparedMessage(TEXT)
    for server in everyone:
        server.send_prepared(message)
    # One call per parameter set without context; the connection with context
    # compresses with its own compressor.
    assert compress_calls.call_count == 2
    wire = {server: b"".join(server.data_to_send()) for server in everyone}
    assert wire[plain] == wire[high_threshold] == message.frame
    assert wire[context][0] == 0xC1  # compressed, by its own compressor
    assert len({wire[server] for server in default}) == 1
    assert wire[default[0]] != wire[small_window[0]]
    for server, data in wire.items():
        client = receiver_of(server, keep if server is context else Compression())
        client.receive_data(data)
        assert client.events_received() == [TEXT]


def test_small_and_incompressible_messages_stay_plain(compress_calls: mock.Mock) -> None:
    server = server_with(Compression())
    small = PreparedMessage("hi")
    server.send_prepared(small)
    assert b"".join(server.data_to_send()) == b"\x81\x02hi"
    noise = PreparedMessage(zlib.compress(bytes(range(256)) * 8, 9)[:300])
    server.send_prepared(noise)
    assert b"".join(server.data_to_send()) == noise.frame
    assert compress_calls.call_count == 1


def test_prepared_binary_and_text_bytes() -> None:
    assert PreparedMessage(b"\x00\x01").frame == b"\x82\x02\x00\x01"
    assert PreparedMessage(b"ok", text=True).frame == b"\x81\x02ok"
    assert PreparedMessage("ok").size == 4


def test_client_cannot_send_prepared() -> None:
    client = Protocol(Side.CLIENT)
    with pytest.raises(InvalidState):
        client.send_prepared(PreparedMessage("x"))


def test_plain_frame_parses_back() -> None:
    frame = PreparedMessage(TEXT).frame
    assert parse_frame(frame, 0, mask=False) == (Frame(Opcode.TEXT, TEXT.encode()), len(frame))


def test_frame_for_each_kind_of_connection() -> None:
    message = PreparedMessage(TEXT)
    assert message.frame_for(None) == message.frame
    keep = Compression(context_takeover=True)
    context = pair(keep, keep)[0]
    assert message.frame_for(context) is None  # it compresses with its own context
    assert PreparedMessage("hi").frame_for(context) == b"\x81\x02hi"  # under the threshold
    default = pair()[0]
    first = message.frame_for(default)
    assert first is not None
    assert first[0] == 0xC1
    assert message.frame_for(default) is first  # the last key's frame, found again


def test_send_prepared_after_close() -> None:
    server = server_with(Compression())
    server.send_close()
    with pytest.raises(InvalidState):
        server.send_prepared(PreparedMessage("late"))
