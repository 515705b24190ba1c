"""Tests for rfc6455.handshake: the opening handshake of RFC 6455 §4, both sides."""

from __future__ import annotations

import base64
from unittest import mock

import pytest

from rfc6455.exceptions import InvalidRequest, InvalidResponse
from rfc6455.handshake import (
    GUID,
    WebSocketURI,
    accept,
    accept_key,
    check_request,
    check_response,
    client_request,
    generate_key,
    is_upgrade,
    offered_subprotocols,
    parse_uri,
    reject,
    select_subprotocol,
)
from rfc6455.http11 import Headers, Request, RequestParser, Response, ResponseParser

# RFC 6455 §1.3: the example key and the accept value computed from it.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# RFC 6455 §1.2, the example client handshake.
RFC_REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)

# The same request without the optional fields, to edit in tests.
MINIMAL = [
    b"GET /chat HTTP/1.1",
    b"Host: server.example.com",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version: 13",
]


def parse(data: bytes) -> Request:
    request = RequestParser().feed(data)
    assert request is not None
    return request


def build(lines: list[bytes]) -> Request:
    return parse(b"\r\n".join([*lines, b"", b""]))


def edit(name: bytes, *values: bytes) -> Request:
    """MINIMAL with the field ``name`` replaced by one field per value (none: removed).

    Built without the parser, which refuses some of these itself (a missing Host): what is
    tested is that ``check_request`` refuses them too, whoever built the request.
    """
    lines = [line for line in MINIMAL if not line.lower().startswith(name.lower() + b":")]
    lines += [name + b": " + value for value in values]
    method, target, version = lines[0].decode().split(" ")
    fields = [line.decode().partition(":") for line in lines[1:]]
    return Request(method, target, Headers((n, v.strip()) for n, _, v in fields), version)


def refusal(request: Request) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc_info:
        check_request(request)
    return exc_info.value


def response(lines: list[bytes]) -> Response:
    parsed = ResponseParser().feed(b"\r\n".join([*lines, b"", b""]))
    assert parsed is not None
    return parsed


RFC_RESPONSE = [
    b"HTTP/1.1 101 Switching Protocols",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
]


# Keys


def test_guid() -> None:
    assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def test_accept_key_rfc_example() -> None:
    assert accept_key(KEY) == ACCEPT


def test_generate_key_is_16_random_bytes() -> None:
    key = generate_key()
    assert len(base64.b64decode(key, validate=True)) == 16
    assert generate_key() != key


def test_generate_key_uses_secrets() -> None:
    with mock.patch("secrets.token_bytes", return_value=b"the sample nonce"):
        assert generate_key() == KEY


# Server: check_request


def test_check_rfc_request() -> None:
    assert check_request(parse(RFC_REQUEST)) == KEY


def test_check_minimal_request() -> None:
    assert check_request(build(MINIMAL)) == KEY


def test_check_request_tokens_are_case_insensitive_lists() -> None:
    # Firefox sends "Connection: keep-alive, Upgrade".
    request = build(
        [
            b"GET / HTTP/1.1",
            b"Host: [::1]:8080",
            b"upgrade: h2c, WebSocket",
            b"connection: keep-alive",
            b"Connection: ,UPGRADE ,",
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
            b"sec-websocket-version: 13",
        ]
    )
    assert check_request(request) == KEY


@pytest.mark.parametrize("host", [b"example.com", b"example.com:8000", b"127.0.0.1", b"[::1]"])
def test_check_request_valid_host(host: bytes) -> None:
    assert check_request(edit(b"Host", host)) == KEY


def test_method_not_get_is_405() -> None:
    exc = refusal(build([b"POST /chat HTTP/1.1", *MINIMAL[1:]]))
    assert (exc.status, exc.reason) == (405, "method POST not allowed")
    assert exc.headers == (("Allow", "GET"),)


def test_http10_is_400() -> None:
    exc = refusal(build([b"GET /chat HTTP/1.0", *MINIMAL[1:]]))
    assert (exc.status, exc.reason) == (400, "HTTP/1.0 cannot upgrade; HTTP/1.1 is required")


def test_missing_host_is_400() -> None:
    exc = refusal(edit(b"Host"))
    assert (exc.status, exc.reason) == (400, "missing Host header")


def test_two_host_headers_are_400() -> None:
    exc = refusal(edit(b"Host", b"a.example", b"b.example"))
    assert (exc.status, exc.reason) == (400, "more than one Host header")


@pytest.mark.parametrize("host", [b"", b"exa mple.com", b"example.com:http", b"[::1", b"a/b"])
def test_invalid_host_is_400(host: bytes) -> None:
    exc = refusal(edit(b"Host", host))
    assert (exc.status, exc.reason) == (400, "invalid Host header")


@pytest.mark.parametrize(
    "fields",
    [
        (b"Content-Length: 5",),
        (b"Transfer-Encoding: chunked",),
        (b"Content-Length: 0", b"Transfer-Encoding: chunked"),
    ],
)
def test_an_upgrade_with_a_body_is_400(fields: tuple[bytes, ...]) -> None:
    # The body would be read as WebSocket frames.
    exc = refusal(build([*MINIMAL, *fields]))
    assert (exc.status, exc.reason) == (400, "a WebSocket upgrade request has no body")


def test_an_upgrade_with_content_length_0_is_accepted() -> None:
    assert check_request(build([*MINIMAL, b"Content-Length: 0"])) == KEY


@pytest.mark.parametrize("values", [(), (b"h2c",), (b"websocket2",), (b"",)])
def test_missing_upgrade_websocket_is_400(values: tuple[bytes, ...]) -> None:
    exc = refusal(edit(b"Upgrade", *values))
    assert (exc.status, exc.reason) == (400, "missing Upgrade: websocket header")


@pytest.mark.parametrize("values", [(), (b"keep-alive",), (b"upgrades",), (b"close", b"")])
def test_missing_connection_upgrade_is_400(values: tuple[bytes, ...]) -> None:
    exc = refusal(edit(b"Connection", *values))
    assert (exc.status, exc.reason) == (400, "missing Connection: Upgrade header")


def test_missing_key_is_400() -> None:
    exc = refusal(edit(b"Sec-WebSocket-Key"))
    assert (exc.status, exc.reason) == (400, "missing Sec-WebSocket-Key header")


def test_two_keys_are_400() -> None:
    exc = refusal(edit(b"Sec-WebSocket-Key", KEY.encode(), KEY.encode()))
    assert (exc.status, exc.reason) == (400, "more than one Sec-WebSocket-Key header")


@pytest.mark.parametrize(
    "key",
    [
        b"",
        b"not base64!",
        b"dGhlIHNhbXBsZSBub25jZQ",  # no padding
        b"dGhlIHNhbXBsZSBub25j ZQ==",  # whitespace inside
        base64.b64encode(b"fifteen bytes!!"),
        base64.b64encode(b"seventeen bytes!!"),
    ],
)
def test_invalid_key_is_400(key: bytes) -> None:
    exc = refusal(edit(b"Sec-WebSocket-Key", key))
    assert (exc.status, exc.reason) == (400, "invalid Sec-WebSocket-Key header")


def test_non_ascii_key_is_400() -> None:
    # Only a Request built in code can hold one: the parser refuses non-ASCII.
    request = build(MINIMAL)
    headers = Headers(
        (name, "caf\u00e9" if name == "Sec-WebSocket-Key" else value)
        for name, value in request.headers
    )
    exc = refusal(Request("GET", "/", headers))
    assert (exc.status, exc.reason) == (400, "invalid Sec-WebSocket-Key header")


def test_missing_version_is_400() -> None:
    exc = refusal(edit(b"Sec-WebSocket-Version"))
    assert (exc.status, exc.reason) == (400, "missing Sec-WebSocket-Version header")
    assert exc.headers == ()


@pytest.mark.parametrize(
    ("values", "shown"),
    [((b"8",), "8"), ((b"13, 8",), "13, 8"), ((b"13", b"13"), "13, 13"), ((b"",), "")],
)
def test_wrong_version_is_426(values: tuple[bytes, ...], shown: str) -> None:
    exc = refusal(edit(b"Sec-WebSocket-Version", *values))
    assert exc.status == 426
    assert exc.reason == f"unsupported WebSocket version {shown}; 13 is required"
    assert exc.headers == (("Sec-WebSocket-Version", "13"),)


def test_is_upgrade() -> None:
    assert is_upgrade(parse(RFC_REQUEST))
    assert is_upgrade(edit(b"Upgrade", b"foo, WebSocket"))
    assert not is_upgrade(edit(b"Upgrade"))
    assert not is_upgrade(parse(b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n"))


# Server: subprotocols


@pytest.mark.parametrize(
    ("offered", "supported", "selected"),
    [
        ((b"chat, superchat",), ["superchat", "chat"], "superchat"),
        ((b"chat, superchat",), ["chat", "superchat"], "chat"),
        ((b"chat", b"superchat"), ["superchat"], "superchat"),
        ((b"chat",), ["superchat"], None),
        ((b"Chat",), ["chat"], None),
        ((), ["chat"], None),
        ((b"chat",), [], None),
    ],
)
def test_select_subprotocol(
    offered: tuple[bytes, ...], supported: list[str], selected: str | None
) -> None:
    request = edit(b"Sec-WebSocket-Protocol", *offered)
    assert select_subprotocol(request, supported) == selected


def test_offered_subprotocols_in_order_across_fields() -> None:
    request = edit(b"Sec-WebSocket-Protocol", b"chat, ,access_token.a.b", b"x")
    assert offered_subprotocols(request) == ["chat", "access_token.a.b", "x"]
    assert offered_subprotocols(edit(b"Sec-WebSocket-Protocol")) == []


# Server: accept and reject


def test_accept_rfc_request() -> None:
    request = parse(RFC_REQUEST)
    reply = accept(request, subprotocol=select_subprotocol(request, ["chat"]))
    assert reply.serialize() == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n"
        b"\r\n"
    )


def test_accept_without_subprotocol_with_extra_headers() -> None:
    reply = accept(build(MINIMAL), extra_headers=[("Server", "rfc6455")])
    assert reply.serialize() == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Server: rfc6455\r\n"
        b"\r\n"
    )
    assert "Sec-WebSocket-Extensions" not in reply.headers


def test_accept_refuses_a_subprotocol_not_offered() -> None:
    with pytest.raises(ValueError, match="did not offer subprotocol 'mqtt'"):
        accept(parse(RFC_REQUEST), subprotocol="mqtt")


def test_accept_refuses_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        accept(edit(b"Sec-WebSocket-Key"))


def test_reject() -> None:
    reply = reject(400, "missing Host header")
    assert reply.serialize() == (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Connection: close\r\n"
        b"Content-Length: 20\r\n"
        b"\r\n"
        b"missing Host header\n"
    )


def test_reject_from_invalid_request() -> None:
    exc = refusal(edit(b"Sec-WebSocket-Version", b"8"))
    reply = reject(exc.status, exc.reason, exc.headers)
    assert reply.serialize() == (
        b"HTTP/1.1 426 Upgrade Required\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Connection: close\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Content-Length: 48\r\n"
        b"\r\n"
        b"unsupported WebSocket version 8; 13 is required\n"
    )


def test_reject_utf8_reason() -> None:
    reply = reject(403, "interdit \u00e0 ce client")
    assert reply.body == "interdit \u00e0 ce client\n".encode()
    assert reply.reason == "Forbidden"


def test_reject_unknown_status() -> None:
    reply = reject(499, "client gone")
    assert reply.serialize().startswith(b"HTTP/1.1 499 \r\n")


# Client: URIs


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("ws://example.com", WebSocketURI(False, "example.com", 80, "/")),
        ("wss://example.com", WebSocketURI(True, "example.com", 443, "/")),
        ("ws://example.com/", WebSocketURI(False, "example.com", 80, "/")),
        ("WS://Example.COM/Chat", WebSocketURI(False, "example.com", 80, "/Chat")),
        ("ws://example.com:8765/chat", WebSocketURI(False, "example.com", 8765, "/chat")),
        ("wss://example.com:443/", WebSocketURI(True, "example.com", 443, "/")),
        ("ws://example.com:/", WebSocketURI(False, "example.com", 80, "/")),
        ("ws://example.com?a=b", WebSocketURI(False, "example.com", 80, "/?a=b")),
        ("ws://h/p?q=1&r=%20?s", WebSocketURI(False, "h", 80, "/p?q=1&r=%20?s")),
        ("ws://h/?", WebSocketURI(False, "h", 80, "/")),
        ("ws://127.0.0.1:8000/", WebSocketURI(False, "127.0.0.1", 8000, "/")),
        ("ws://[::1]/", WebSocketURI(False, "::1", 80, "/")),
        ("wss://[2001:DB8::1]:8443/x", WebSocketURI(True, "2001:db8::1", 8443, "/x")),
        ("ws://b\u00fccher.example/", WebSocketURI(False, "xn--bcher-kva.example", 80, "/")),
        ("ws://h/caf\u00e9?q=\u00e9", WebSocketURI(False, "h", 80, "/caf%C3%A9?q=%C3%A9")),
        ("ws://h/a|b", WebSocketURI(False, "h", 80, "/a%7Cb")),
    ],
)
def test_parse_uri(uri: str, parsed: WebSocketURI) -> None:
    assert parse_uri(uri) == parsed


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://example.com/", "not a ws:// or wss:// URI"),
        ("example.com", "not a ws:// or wss:// URI"),
        ("ws:/chat", "no host"),
        ("ws://", "no host"),
        ("ws://:8000/", "no host"),
        ("ws://example.com/#frag", "fragment"),
        ("ws://example.com/#", "fragment"),
        ("ws://user:pass@example.com/", "user info"),
        ("ws://example.com:port/", "Port could not be cast"),
        ("ws://example.com:65536/", "Port out of range"),
        ("ws://[::1/", "Invalid IPv6 URL"),
        ("ws://[example.com]/", "does not appear to be an IPv4 or IPv6 address"),
        ("ws://exa<mple.com/", "invalid host"),
        ("ws://\u00e9\u00e9.\u3002a/", "invalid host"),
        ("ws://example.com/a b", "whitespace or control character"),
        ("ws://example.com/\n", "whitespace or control character"),
        (" ws://example.com/", "whitespace or control character"),
    ],
)
def test_parse_invalid_uri(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_uri(uri)


# Client: request


def test_client_request() -> None:
    request = client_request(parse_uri("ws://server.example.com/chat"), KEY)
    assert request.serialize() == (
        b"GET /chat HTTP/1.1\r\n"
        b"Host: server.example.com\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"\r\n"
    )


def test_client_request_with_subprotocols_and_headers() -> None:
    request = client_request(
        parse_uri("wss://server.example.com:8443/chat?room=1"),
        KEY,
        subprotocols=["chat", "superchat"],
        headers=[("Authorization", "Bearer abc"), ("Origin", "https://example.com")],
    )
    assert request.serialize() == (
        b"GET /chat?room=1 HTTP/1.1\r\n"
        b"Host: server.example.com:8443\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: chat, superchat\r\n"
        b"Authorization: Bearer abc\r\n"
        b"Origin: https://example.com\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize(
    ("uri", "host"),
    [
        ("ws://[::1]/", "[::1]"),
        ("wss://[::1]:443/", "[::1]"),
        ("ws://[::1]:8080/", "[::1]:8080"),
        ("ws://example.com:443/", "example.com:443"),
        ("wss://example.com:80/", "example.com:80"),
    ],
)
def test_client_request_host_header(uri: str, host: str) -> None:
    request = client_request(parse_uri(uri), KEY)
    assert request.headers.get("Host") == host


@pytest.mark.parametrize("name", ["", "a b", "chat,superchat", "caf\u00e9"])
def test_client_request_refuses_invalid_subprotocol(name: str) -> None:
    with pytest.raises(ValueError, match="invalid subprotocol name"):
        client_request(parse_uri("ws://h/"), KEY, subprotocols=["chat", name])


# Client: check_response


def test_check_rfc_response() -> None:
    assert check_response(response(RFC_RESPONSE), KEY, []) is None


def test_check_response_with_subprotocol() -> None:
    reply = response([*RFC_RESPONSE, b"Sec-WebSocket-Protocol: chat"])
    assert check_response(reply, KEY, ["superchat", "chat"]) == "chat"


def test_check_response_tokens_are_case_insensitive_lists() -> None:
    reply = response(
        [
            b"HTTP/1.1 101 Switching Protocols",
            b"upgrade: WebSocket",
            b"connection: keep-alive, upgrade",
            b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            b"Sec-WebSocket-Extensions:",
        ]
    )
    assert check_response(reply, KEY) is None


def test_check_response_not_101() -> None:
    reply = response([b"HTTP/1.1 403 Forbidden", b"Content-Length: 0"])
    with pytest.raises(
        InvalidResponse, match="server refused the WebSocket upgrade: 403 Forbidden"
    ) as info:
        check_response(reply, KEY, [])
    assert info.value.response is reply


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["Connection: Upgrade"], "invalid Upgrade header"),
        (["Upgrade: h2c", "Connection: Upgrade"], "invalid Upgrade header"),
        (["Upgrade: websocket, h2c", "Connection: Upgrade"], "invalid Upgrade header"),
        (["Upgrade: websocket", "Upgrade: websocket", "Connection: Upgrade"], "Upgrade header"),
        (["Upgrade: websocket"], "invalid Connection header"),
        (["Upgrade: websocket", "Connection: close"], "invalid Connection header"),
    ],
)
def test_check_response_upgrade_and_connection(lines: list[str], message: str) -> None:
    reply = response(
        [
            b"HTTP/1.1 101 Switching Protocols",
            *(line.encode() for line in lines),
            b"Sec-WebSocket-Accept: " + ACCEPT.encode(),
        ]
    )
    with pytest.raises(InvalidResponse, match=message) as info:
        check_response(reply, KEY, [])
    assert info.value.response is reply


@pytest.mark.parametrize(
    "accept_lines",
    [
        [],
        [b"Sec-WebSocket-Accept: " + accept_key(generate_key()).encode()],
        [b"Sec-WebSocket-Accept: " + KEY.encode()],
        [b"Sec-WebSocket-Accept: " + ACCEPT.encode()] * 2,
    ],
)
def test_check_response_wrong_accept(accept_lines: list[bytes]) -> None:
    reply = response([*RFC_RESPONSE[:3], *accept_lines])
    with pytest.raises(InvalidResponse, match="invalid Sec-WebSocket-Accept header"):
        check_response(reply, KEY, [])


def test_check_response_refuses_an_extension() -> None:
    reply = response([*RFC_RESPONSE, b"Sec-WebSocket-Extensions: permessage-deflate"])
    with pytest.raises(InvalidResponse, match="server selected an extension"):
        check_response(reply, KEY, [])


@pytest.mark.parametrize("offered", [[], ["superchat"], ["Chat"]])
def test_check_response_refuses_a_subprotocol_not_offered(offered: list[str]) -> None:
    reply = response([*RFC_RESPONSE, b"Sec-WebSocket-Protocol: chat"])
    with pytest.raises(InvalidResponse, match="subprotocol chat, which was not offered"):
        check_response(reply, KEY, offered)


@pytest.mark.parametrize(
    "lines",
    [
        [b"Sec-WebSocket-Protocol: chat, superchat"],
        [b"Sec-WebSocket-Protocol: chat", b"Sec-WebSocket-Protocol: superchat"],
    ],
)
def test_check_response_refuses_several_subprotocols(lines: list[bytes]) -> None:
    reply = response([*RFC_RESPONSE, *lines])
    with pytest.raises(InvalidResponse, match="several subprotocols: chat, superchat"):
        check_response(reply, KEY, ["chat", "superchat"])


# Both sides


def test_handshake_between_client_and_server() -> None:
    key = generate_key()
    uri = parse_uri("ws://localhost:8765/chat?room=lobby")
    sent = client_request(uri, key, subprotocols=["v2.chat", "v1.chat"]).serialize()

    server = RequestParser()
    request = server.feed(sent + b"\x81\x80\x00\x00\x00\x00")
    assert request is not None
    assert server.rest == b"\x81\x80\x00\x00\x00\x00"
    assert (request.path, request.query) == ("/chat", "room=lobby")
    assert is_upgrade(request)
    assert check_request(request) == key
    subprotocol = select_subprotocol(request, ["v1.chat"])
    reply = accept(request, subprotocol=subprotocol).serialize()

    client = ResponseParser()
    parsed = client.feed(reply + b"\x81\x02hi")
    assert parsed is not None
    assert client.rest == b"\x81\x02hi"
    assert check_response(parsed, key, ["v2.chat", "v1.chat"]) == "v1.chat"
