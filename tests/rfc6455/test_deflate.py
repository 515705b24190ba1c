"""Tests for rfc6455.deflate: permessage-deflate (RFC 7692), and the protocol using it.

Negotiation both ways (§5, §7.1), the codec (§7.2), the bounds on inflating
(CVE-2018-1000518, websockets #1715) and the framing rules (§6.1) that the
sans-I/O ``Protocol`` applies once the extension is negotiated.
"""

from __future__ import annotations

import tracemalloc
import zlib

import pytest

from rfc6455.deflate import (
    Compression,
    PerMessageDeflate,
    client_accept,
    client_offer,
    server_negotiate,
)
from rfc6455.exceptions import InvalidPayloadData, InvalidResponse, PayloadTooBig
from rfc6455.extensions import parse_extensions
from rfc6455.frames import Frame, Opcode
from rfc6455.http11 import Headers
from rfc6455.protocol import Protocol, Side
from tests.rfc6455.test_protocol import assert_fails, incoming, receive, sent

NO_CONTEXT = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def negotiate(value: str, compression: Compression = Compression()) -> str | None:
    """The server's answer to an offer, or None."""
    result = server_negotiate(parse_extensions(_headers(value)), compression)
    return None if result is None else result[0]


def _headers(value: str) -> Headers:
    return Headers([("Sec-WebSocket-Extensions", value)])


def pair(
    server: Compression = Compression(), client: Compression = Compression()
) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """Both ends of a negotiation: the client's offer, the server's answer, the client's check."""
    result = server_negotiate(parse_extensions(_headers(client_offer(client))), server)
    assert result is not None
    answer, server_side = result
    client_side = client_accept(parse_extensions(_headers(answer)), client)
    assert client_side is not None
    return server_side, client_side


def deflated(data: bytes, bits: int = 15) -> bytes:
    """``data`` as one compressed message's payload (RFC 7692 §7.2.1)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
    payload = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert payload.endswith(b"\x00\x00\xff\xff")
    return payload[:-4]


# The header's grammar (RFC 6455 §9.1)


def test_parse_extensions_reads_every_field_and_element() -> None:
    headers = Headers(
        [
            ("Sec-WebSocket-Extensions", 'a; x=1; y="2", , b'),
            ("Sec-WebSocket-Extensions", "c ; z"),
        ]
    )
    assert [(e.name, e.params) for e in parse_extensions(headers)] == [
        ("a", (("x", "1"), ("y", "2"))),
        ("b", ()),
        ("c", (("z", None),)),
    ]


@pytest.mark.parametrize(
    "value",
    ["a;", "a;;b", "; a", "a; x=", 'a; x="b c"', 'a; x="1,2"', "a b", "a; x=1=2", "é"],
)
def test_parse_extensions_leaves_malformed_elements_out(value: str) -> None:
    assert parse_extensions(_headers(value)) == []
    assert [e.name for e in parse_extensions(_headers(f"{value}, ok"))] == ["ok"]


# Server negotiation (RFC 7692 §5, §7.1)


def test_server_accepts_chrome_offer_without_context_takeover() -> None:
    # Chrome's offer since M32 (the research notes, [3]).
    assert negotiate("permessage-deflate; client_max_window_bits") == NO_CONTEXT


def test_server_ignores_other_extensions() -> None:
    assert negotiate("x-webkit-deflate-frame, permessage-deflate") == NO_CONTEXT
    assert negotiate("x-webkit-deflate-frame") is None
    assert negotiate("") is None


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; unknown",
        "permessage-deflate; client_max_window_bits; client_max_window_bits",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=true",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_max_window_bits=x",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=7",
        # zlib cannot compress with a window of 8 bits: declined (§7.1.2.1 allows no 9).
        "permessage-deflate; server_max_window_bits=8",
    ],
)
def test_server_declines_bad_offer_and_takes_the_next(offer: str) -> None:
    assert negotiate(offer) is None
    assert negotiate(f"{offer}, permessage-deflate; server_max_window_bits=10") == (
        f"{NO_CONTEXT}; server_max_window_bits=10"
    )


def test_server_answers_server_max_window_bits_same_or_smaller() -> None:
    assert negotiate('permessage-deflate; server_max_window_bits="12"') == (
        f"{NO_CONTEXT}; server_max_window_bits=12"
    )
    small = Compression(window_bits=10)
    assert negotiate("permessage-deflate; server_max_window_bits=15", small) == (
        f"{NO_CONTEXT}; server_max_window_bits=10"
    )


def test_server_accepts_client_max_window_bits_8_and_inflates_with_9() -> None:
    # The client compresses with 8 bits: any inflater of 9 or more reads that.
    result = server_negotiate(
        parse_extensions(_headers("permessage-deflate; client_max_window_bits=8")), Compression()
    )
    assert result is not None
    assert result[0] == NO_CONTEXT
    data = b"window of eight bits " * 50
    assert result[1].inflate(deflated(data, 9), None) == data


def test_server_with_context_takeover() -> None:
    keep = Compression(context_takeover=True, window_bits=12)
    assert negotiate("permessage-deflate; client_max_window_bits", keep) == (
        "permessage-deflate; client_max_window_bits=12"
    )
    assert negotiate("permessage-deflate", keep) == "permessage-deflate"
    # §7.1.1.1: a client's request is honoured by including it.
    assert negotiate("permessage-deflate; server_no_context_takeover", keep) == (
        "permessage-deflate; server_no_context_takeover"
    )


def test_server_never_accepts_what_was_not_offered() -> None:
    # No client_max_window_bits in the offer: none in the answer (§7.1.2.2).
    keep = Compression(context_takeover=True, window_bits=10)
    answer = negotiate("permessage-deflate", keep)
    assert answer is not None
    assert "client_max_window_bits" not in answer


# Client negotiation (RFC 7692 §5.1, §7.1)


def test_client_offers() -> None:
    assert client_offer(Compression()) == (
        "permessage-deflate; client_max_window_bits; "
        "server_no_context_takeover; client_no_context_takeover"
    )
    assert client_offer(Compression(context_takeover=True, window_bits=10)) == (
        "permessage-deflate; client_max_window_bits=10; server_max_window_bits=10"
    )


def test_client_accepts_no_extension() -> None:
    assert client_accept([], Compression()) is None


@pytest.mark.parametrize(
    ("answer", "compression", "message"),
    [
        ("x-other", Compression(), "not offered"),
        (f"{NO_CONTEXT}, {NO_CONTEXT}", Compression(), "not offered"),
        (f"{NO_CONTEXT}; unknown", Compression(), "unknown or repeated"),
        (f"{NO_CONTEXT}; client_no_context_takeover", Compression(), "unknown or repeated"),
        ("permessage-deflate; server_no_context_takeover=1", Compression(), "with a value"),
        ("permessage-deflate; client_no_context_takeover", Compression(), "omits server_no"),
        (f"{NO_CONTEXT}; server_max_window_bits=16", Compression(), "invalid server_max"),
        (f"{NO_CONTEXT}; client_max_window_bits", Compression(), "invalid client_max"),
        (f"{NO_CONTEXT}; client_max_window_bits=07", Compression(), "invalid client_max"),
        (
            "permessage-deflate; server_max_window_bits=12",
            Compression(context_takeover=True, window_bits=10),
            "server_max_window_bits <= 10",
        ),
        (
            "permessage-deflate",
            Compression(context_takeover=True, window_bits=10),
            "server_max_window_bits <= 10",
        ),
        (
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=11",
            Compression(context_takeover=True, window_bits=10),
            "client_max_window_bits <= 10",
        ),
    ],
)
def test_client_fails_on_an_answer_that_breaks_the_rules(
    answer: str, compression: Compression, message: str
) -> None:
    with pytest.raises(InvalidResponse, match=message):
        client_accept(parse_extensions(_headers(answer)), compression)


def test_client_told_client_max_window_bits_8_sends_uncompressed() -> None:
    deflate = client_accept(
        parse_extensions(_headers(f"{NO_CONTEXT}; client_max_window_bits=8")), Compression()
    )
    assert deflate is not None
    assert deflate.compress(b"a" * 1000) is None
    assert deflate.shared_key is None


# The codec (RFC 7692 §7.2)


def test_rfc_example_hello() -> None:
    # §7.2.3.1: "Hello" in one compressed block.
    server, _ = pair(Compression(threshold=0))
    assert server.inflate(b"\xf2\x48\xcd\xc9\xc9\x07\x00", None) == b"Hello"


@pytest.mark.parametrize("bits", range(9, 16))
@pytest.mark.parametrize("keep", [False, True], ids=["no_context", "context"])
def test_round_trip_both_ways(bits: int, keep: bool) -> None:
    settings = Compression(context_takeover=keep, window_bits=bits, threshold=0)
    server, client = pair(settings, settings)
    unique = bytes((i * 97 + 13) % 251 for i in range(200))
    messages = [b"", b"x", b"chat " * 100, bytes(range(256)) * 300, unique, unique]
    for sender, receiver in ((server, client), (client, server)):
        sizes = []
        for data in messages:
            payload = sender.compress(data)
            if payload is None:  # not shorter: sent as it is
                assert not keep
                continue
            sizes.append(len(payload))
            assert receiver.inflate(payload, None) == data
        if keep:
            # The repeated message refers to the one before it.
            assert sizes[-1] < sizes[-2] / 4


def test_threshold_sends_small_messages_uncompressed() -> None:
    server, _ = pair(Compression(threshold=256))
    assert server.compress(b"a" * 255) is None
    assert server.compress(b"a" * 256) is not None


def test_no_context_does_not_keep_zlib_objects() -> None:
    server, client = pair()
    payload = client.compress(b"idle " * 100)
    assert payload is not None
    server.inflate(payload, None)
    assert server._inflater is None
    assert client._compressor is None
    # Nothing changes between messages: every connection with the same answer shares one.
    assert server.stateless
    assert pair()[0] is server
    keep = Compression(context_takeover=True)
    assert pair(keep, keep)[0] is not pair(keep, keep)[0]


def test_context_keeps_the_inflater_until_a_final_block() -> None:
    keep = Compression(context_takeover=True, threshold=0)
    server, client = pair(keep, keep)
    for _ in range(2):
        payload = client.compress(b"context " * 50)
        assert payload is not None
        assert server.inflate(payload, None) == b"context " * 50
        assert server._inflater is not None
    # A message ending with BFINAL (§7.2.3.4) ends the stream: the next starts another.
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert server.inflate(final.compress(b"last") + final.flush(), None) == b"last"
    assert server._inflater is None


def test_invalid_deflate_data() -> None:
    server, _ = pair()
    with pytest.raises(InvalidPayloadData):
        server.inflate(b"\xff\xff\xff", None)


# Bombs: max_size bounds the inflated size, while inflating


def test_64k_of_zeros_against_a_10k_limit_allocates_at_most_the_limit() -> None:
    server, _ = pair()
    payload = deflated(bytes(65536))
    assert len(payload) < 100
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooBig):
            server.inflate(payload, 10 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The output is at most 10 KiB + 1 byte; zlib's inflate state and its
    # 32 KiB window (allocated through Python's allocator) come on top.
    assert peak < 10 * 1024 + 48 * 1024
    assert peak < 65536


@pytest.mark.parametrize("extra", [1, 2, 3, 258])
def test_overrun_of_a_few_bytes_is_caught(extra: int) -> None:
    # websockets #1715: output still held in zlib, not in unconsumed_tail.
    limit = 10_000
    server, _ = pair()
    data = b"a" * (limit + extra)
    with pytest.raises(PayloadTooBig):
        server.inflate(deflated(data), limit)
    assert server.inflate(deflated(b"a" * limit), limit) == b"a" * limit


def test_gigabyte_bomb_costs_at_most_max_size() -> None:
    # Deflate inflates at most about 1032:1, so 1 GiB takes about 1 MiB of input:
    # 1,024 independent 1 MiB blocks of zeros.
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(2**20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    payload = block * 1024
    max_size = 2**20
    server, _ = pair()
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooBig):
            server.inflate(payload, max_size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The output allowed, plus one step's copies (rfc6455.deflate._OUT_STEP).
    assert peak < max_size + 256 * 1024


# The protocol with the extension (RFC 7692 §6)


def protocols(
    compression: Compression = Compression(threshold=0), **kwargs: int | None
) -> tuple[Protocol, Protocol]:
    server_deflate, client_deflate = pair(compression, compression)
    return (
        Protocol(Side.SERVER, deflate=server_deflate, **kwargs),  # type: ignore[arg-type]
        Protocol(Side.CLIENT, deflate=client_deflate, **kwargs),  # type: ignore[arg-type]
    )


def test_client_receives_rfc_compressed_hello(mode: str) -> None:
    _, client = protocols()
    # §7.2.3.1: unfragmented, then in two fragments with RSV1 on the first only.
    whole = b"\xc1\x07\xf2\x48\xcd\xc9\xc9\x07\x00"
    fragments = b"\x41\x03\xf2\x48\xcd" + b"\x80\x04\xc9\xc9\x07\x00"
    assert receive(client, whole + fragments, mode) == ["Hello", "Hello"]


def test_server_receives_compressed_messages(mode: str) -> None:
    server, _ = protocols()
    text = "compressed é " * 100
    payload = deflated(text.encode())
    data = incoming(Side.SERVER, Opcode.TEXT, payload, rsv=0x40)
    third = len(payload) // 3
    data += incoming(Side.SERVER, Opcode.BINARY, payload[:third], fin=False, rsv=0x40)
    data += incoming(Side.SERVER, Opcode.CONT, payload[third : 2 * third], fin=False)
    data += incoming(Side.SERVER, Opcode.CONT, payload[2 * third :])
    data += incoming(Side.SERVER, Opcode.TEXT, b"plain")
    assert receive(server, data, mode) == [text, text.encode(), "plain"]


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_rsv1_on_a_control_frame_fails(mode: str, opcode: Opcode) -> None:
    server, _ = protocols()
    assert_fails(server, incoming(Side.SERVER, opcode, b"", rsv=0x40), mode)


def test_rsv1_on_a_continuation_frame_fails(mode: str) -> None:
    server, _ = protocols()
    data = incoming(Side.SERVER, Opcode.TEXT, deflated(b"ab")[:1], fin=False, rsv=0x40)
    data += incoming(Side.SERVER, Opcode.CONT, deflated(b"ab")[1:], rsv=0x40)
    events = receive(server, data, mode)
    assert events[-1].close_code == 1002  # type: ignore[union-attr]


@pytest.mark.parametrize("rsv", [0x20, 0x10])
def test_other_reserved_bits_still_fail(mode: str, rsv: int) -> None:
    server, _ = protocols()
    assert_fails(server, incoming(Side.SERVER, Opcode.TEXT, b"x", rsv=rsv | 0x40), mode)


def test_rsv1_without_the_extension_fails(mode: str) -> None:
    proto = Protocol(Side.SERVER)
    assert_fails(proto, incoming(Side.SERVER, Opcode.TEXT, deflated(b"x"), rsv=0x40), mode)


def test_invalid_compressed_data_fails_with_1007(mode: str) -> None:
    server, _ = protocols()
    data = incoming(Side.SERVER, Opcode.TEXT, b"\xff\xff\xff", rsv=0x40)
    assert_fails(server, data, mode, 1007)


def test_invalid_utf8_is_checked_after_inflating(mode: str) -> None:
    server, _ = protocols()
    data = incoming(Side.SERVER, Opcode.TEXT, deflated(b"ok \xff"), rsv=0x40)
    assert_fails(server, data, mode, 1007)


def test_inflated_size_over_max_size_fails_with_1009(mode: str) -> None:
    server, _ = protocols(max_size=10 * 1024)
    data = incoming(Side.SERVER, Opcode.BINARY, deflated(bytes(65536)), rsv=0x40)
    error = assert_fails(server, data, mode, 1009)
    assert str(error) == "message over 10240 bytes once inflated"


def test_inflated_size_at_max_size_passes(mode: str) -> None:
    server, _ = protocols(max_size=10 * 1024)
    data = incoming(Side.SERVER, Opcode.BINARY, deflated(bytes(10 * 1024)), rsv=0x40)
    assert receive(server, data, mode) == [bytes(10 * 1024)]


def test_send_compresses_with_rsv1_on_the_first_frame_only() -> None:
    server, client = protocols(Compression(threshold=100), max_frame_size=20)
    server.send_text("small")
    text = "compressible " * 50
    server.send_text(text)
    output = b"".join(server.data_to_send())
    assert output[:7] == b"\x81\x05small"
    frames = output[7:]
    assert frames[0] == 0x41  # RSV1, TEXT, not FIN
    assert all(frames[i] in (0x00, 0x80) for i in range(22, len(frames), 22))
    client.receive_data(output)
    assert client.events_received() == ["small", text]


def test_send_uncompressible_data_plain_without_context() -> None:
    server, _ = protocols()
    data = bytes(range(256))
    server.send_binary(data)
    assert sent(server) == [Frame(Opcode.BINARY, data)]


@pytest.mark.parametrize("keep", [False, True], ids=["no_context", "context"])
def test_protocols_exchange_compressed_messages(keep: bool) -> None:
    server, client = protocols(Compression(context_takeover=keep, threshold=0))
    for text in ["", "a", "hello " * 1000, "hello " * 1000]:
        client.send_text(text)
        for data in client.data_to_send():
            server.receive_data(data)
        assert server.events_received() == [text]
        server.send_binary(text.encode())
        for data in server.data_to_send():
            client.receive_data(data)
        assert client.events_received() == [text.encode()]


def test_compressed_frames_may_be_longer_than_max_size(mode: str) -> None:
    # With a window of 9 bits zlib finds no match at distance 256 (its MAX_DIST
    # is the window less 262 bytes): this message grows by 1.4% when compressed.
    data = bytes(range(256)) * 64
    compressor = zlib.compressobj(6, zlib.DEFLATED, -9, 5)
    payload = (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert len(payload) > len(data)
    server, _ = protocols(max_size=len(data))
    frames = incoming(Side.SERVER, Opcode.BINARY, payload, rsv=0x40)
    half = len(payload) // 2
    frames += incoming(Side.SERVER, Opcode.BINARY, payload[:half], fin=False, rsv=0x40)
    frames += incoming(Side.SERVER, Opcode.CONT, payload[half:])
    assert receive(server, frames, mode) == [data, data]


def test_compressed_frames_over_deflate_bound_fail_before_their_payload(mode: str) -> None:
    server, _ = protocols(max_size=1000)
    header = incoming(Side.SERVER, Opcode.BINARY, bytes(1000 + 125 + 15 + 65), rsv=0x40)
    assert_fails(server, header[:8], mode, 1009)


@pytest.mark.parametrize(
    "options",
    [{"window_bits": 8}, {"window_bits": 16}, {"threshold": -1}, {"level": 10}, {"mem_level": 0}],
)
def test_compression_settings_are_checked(options: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="Compression"):
        Compression(**options)


def test_repr_shows_the_answer() -> None:
    assert repr(pair()[0]) == f"PerMessageDeflate({NO_CONTEXT})"
