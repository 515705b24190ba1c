"""Tests for server.hub's fan-out with permessage-deflate: one compression per broadcast."""

from __future__ import annotations

from unittest import mock

import pytest

import rfc6455.prepared
from rfc6455 import Compression, PreparedMessage, Protocol, Side
from server.hub import Hub
from server.manager import ConnectionManager
from server.namespaces import Namespace, Namespaces
from tests.rfc6455.test_deflate import pair


class Receiver:
    """The part of ``rfc6455.Connection`` the hub writes to, over a sans-I/O protocol."""

    def __init__(self, compression: Compression | None) -> None:
        deflate = None if compression is None else pair(compression)[0]
        self.protocol = Protocol(Side.SERVER, deflate=deflate)

    def send_prepared(self, message: PreparedMessage) -> None:
        self.protocol.send_prepared(message)

    def wire(self) -> bytes:
        return b"".join(self.protocol.data_to_send())


def test_a_broadcast_to_1000_subscribers_is_compressed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = mock.Mock(wraps=rfc6455.prepared.shared_compress)
    monkeypatch.setattr(rfc6455.prepared, "shared_compress", calls)
    hub = Hub(ConnectionManager(), Namespaces(Namespace()))
    receivers = [Receiver(Compression()) for _ in range(1000)]
    plain = [Receiver(None) for _ in range(10)]
    for index, receiver in enumerate([*receivers, *plain]):
        subscriber = hub.subscribe("general", str(index), receiver)  # type: ignore[arg-type]
        hub.release(subscriber, 0)
    payload = '{"type":"broadcast","message":"' + "hello everyone " * 70 + '"}'
    assert hub.broadcast("general", payload) == 1010
    assert calls.call_count == 1
    compressed = {receiver.wire() for receiver in receivers}
    assert len(compressed) == 1
    (frame,) = compressed
    assert frame[0] == 0xC1  # FIN, RSV1, text
    assert len(frame) < len(payload) / 4
    assert {receiver.wire() for receiver in plain} == {PreparedMessage(payload).frame}
