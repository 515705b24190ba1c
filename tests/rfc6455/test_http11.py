"""Tests for rfc6455.http11: Headers, Request, Response and the head parsers.

Every parser test runs three ways (the ``mode`` fixture, after h11's
``tests/test_io.py``): the whole input in one chunk, one byte at a time, and
with WebSocket bytes following the head in the same chunk.
"""

from __future__ import annotations

import itertools
from http import HTTPStatus
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rfc6455.exceptions import InvalidRequest, InvalidResponse, InvalidState
from rfc6455.http11 import (
    Headers,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    body_length,
    reason_phrase,
)
from rfc6455.limits import Limits

# A masked text frame that a client may send right behind its request.
TRAILING = b"\x81\x85\x00\x00\x00\x00Hello"

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

# RFC 6455 §1.2, the example server handshake.
RFC_RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: chat\r\n"
    b"\r\n"
)

DEFAULT = Limits()
SMALL = Limits(max_line=32, max_headers=3)


@pytest.fixture(params=["whole", "bytewise", "trailing"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def feed(parser: RequestParser | ResponseParser, data: bytes, mode: str) -> Any:
    """Feed a complete head to ``parser`` in the given mode and return what it parsed."""
    if mode == "whole":
        head = parser.feed(data)
        assert parser.rest == b""
    elif mode == "bytewise":
        for i in range(len(data) - 1):
            assert parser.feed(data[i : i + 1]) is None
        head = parser.feed(data[-1:])
        assert parser.rest == b""
    else:
        head = parser.feed(data + TRAILING)
        assert parser.rest == TRAILING
    assert head is not None
    return head


def parse_request(data: bytes, mode: str, limits: Limits = DEFAULT) -> Request:
    request = feed(RequestParser(limits), data, mode)
    assert isinstance(request, Request)
    return request


def request_error(data: bytes, mode: str, limits: Limits = DEFAULT) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc_info:
        feed(RequestParser(limits), data, mode)
    return exc_info.value


def parse_response(data: bytes, mode: str, limits: Limits = DEFAULT) -> Response:
    response = feed(ResponseParser(limits), data, mode)
    assert isinstance(response, Response)
    return response


def response_error(data: bytes, mode: str, limits: Limits = DEFAULT) -> str:
    with pytest.raises(InvalidResponse) as exc_info:
        feed(ResponseParser(limits), data, mode)
    return str(exc_info.value)


# Headers


def test_headers_get_is_case_insensitive() -> None:
    headers = Headers([("Content-Type", "text/plain")])
    assert headers.get("content-type") == "text/plain"
    assert headers.get("CONTENT-TYPE") == "text/plain"


def test_headers_get_missing_gives_default() -> None:
    headers = Headers()
    assert headers.get("Host") is None
    assert headers.get("Host", "localhost") == "localhost"


def test_headers_get_joins_repeated_fields() -> None:
    headers = Headers([("Connection", "keep-alive"), ("X", "1"), ("connection", "Upgrade")])
    assert headers.get("Connection") == "keep-alive, Upgrade"
    assert headers.get_all("CONNECTION") == ["keep-alive", "Upgrade"]


def test_headers_get_all_missing_is_empty() -> None:
    assert Headers().get_all("Host") == []


def test_headers_get_all_returns_a_copy() -> None:
    headers = Headers([("A", "1")])
    headers.get_all("A").append("2")
    assert headers.get_all("A") == ["1"]


def test_headers_contains() -> None:
    headers = Headers([("Host", "example.com")])
    assert "host" in headers
    assert "Upgrade" not in headers
    assert 42 not in headers


def test_headers_iterate_in_order_with_original_names() -> None:
    items = [("Host", "a"), ("upgrade", "websocket"), ("HOST", "b")]
    headers = Headers(items)
    assert list(headers) == items
    assert len(headers) == 3


def test_headers_add() -> None:
    headers = Headers()
    headers.add("X-Token", "abc")
    assert list(headers) == [("X-Token", "abc")]
    assert headers.get("x-token") == "abc"


def test_headers_equality_ignores_name_case() -> None:
    assert Headers([("Host", "a"), ("X", "1")]) == Headers([("host", "a"), ("x", "1")])


def test_headers_equality_respects_values_and_order() -> None:
    assert Headers([("Host", "a")]) != Headers([("Host", "A")])
    assert Headers([("A", "1"), ("B", "2")]) != Headers([("B", "2"), ("A", "1")])
    assert Headers([("A", "1")]) != Headers([("A", "1"), ("A", "1")])
    assert Headers() != [("A", "1")]


def test_headers_are_not_hashable() -> None:
    with pytest.raises(TypeError):
        hash(Headers())


def test_headers_repr() -> None:
    assert repr(Headers([("Host", "a")])) == "Headers([('Host', 'a')])"


# Request


def test_request_path_and_query() -> None:
    request = Request("GET", "/chat/room%201?name=x&y=%3F?z", Headers())
    assert request.path == "/chat/room%201"
    assert request.query == "name=x&y=%3F?z"


def test_request_without_query() -> None:
    request = Request("GET", "/chat", Headers())
    assert request.path == "/chat"
    assert request.query == ""


def test_request_serialize() -> None:
    request = Request("GET", "/chat", Headers([("Host", "example.com"), ("X-Empty", "")]))
    assert request.serialize() == b"GET /chat HTTP/1.1\r\nHost: example.com\r\nX-Empty: \r\n\r\n"


def test_a_request_has_no_body_by_default() -> None:
    assert Request("GET", "/", Headers()).body == b""


def test_request_serialize_with_a_body_adds_content_length() -> None:
    request = Request("POST", "/api", Headers([("Host", "a")]), body=b'{"a":1}')
    assert request.serialize() == (
        b'POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n{"a":1}'
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (Request("GE T", "/", Headers()), "invalid method"),
        (Request("GET", "/a b", Headers()), "invalid request target"),
        (Request("GET", "", Headers()), "invalid request target"),
        (Request("GET", "/", Headers(), "HTTP/1"), "invalid HTTP version"),
        (Request("GET", "/", Headers([("Bad Name", "x")])), "invalid header name"),
        (Request("GET", "/", Headers([("X", "a\r\nInjected: 1")])), "invalid value"),
        (Request("GET", "/", Headers([("X", "caf\u00e9")])), "invalid value"),
    ],
)
def test_request_serialize_refuses_invalid_syntax(request_: Request, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        request_.serialize()


# Response


def test_response_serialize() -> None:
    response = Response(101, "Switching Protocols", Headers([("Upgrade", "websocket")]))
    assert response.serialize() == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    )


def test_response_serialize_adds_content_length() -> None:
    response = Response(404, "Not Found", Headers([("Content-Type", "text/plain")]), b"nope\n")
    assert response.serialize() == (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nnope\n"
    )


def test_response_serialize_keeps_given_content_length() -> None:
    response = Response(200, "OK", Headers([("content-length", "2")]), b"ok")
    assert response.serialize() == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def test_reason_phrase() -> None:
    assert reason_phrase(413) == HTTPStatus(413).phrase
    assert reason_phrase(101) == "Switching Protocols"
    assert reason_phrase(499) == ""  # RFC 9112 §4: it may be empty


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (Response(99, "Low", Headers()), "invalid status code"),
        (Response(1000, "High", Headers()), "invalid status code"),
        (Response(200, "O\nK", Headers()), "invalid reason phrase"),
        (Response(200, "OK", Headers([("X:", "1")])), "invalid header name"),
    ],
)
def test_response_serialize_refuses_invalid_syntax(response: Response, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        response.serialize()


# RequestParser: valid heads


def test_parse_rfc_request(mode: str) -> None:
    assert parse_request(RFC_REQUEST, mode) == Request(
        "GET",
        "/chat",
        Headers(
            [
                ("Host", "server.example.com"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Origin", "http://example.com"),
                ("Sec-WebSocket-Protocol", "chat, superchat"),
                ("Sec-WebSocket-Version", "13"),
            ]
        ),
    )


def test_parse_request_with_bare_lf(mode: str) -> None:
    request = parse_request(b"GET / HTTP/1.1\nHost: a\r\nX: 1\n\n", mode)
    assert request == Request("GET", "/", Headers([("Host", "a"), ("X", "1")]))


def test_parse_http10_request_without_headers(mode: str) -> None:
    # RFC 9112 §3.2: only HTTP/1.1 requires a Host.
    request = parse_request(b"GET / HTTP/1.0\r\n\r\n", mode)
    assert request == Request("GET", "/", Headers(), "HTTP/1.0")


def test_parse_http10_request(mode: str) -> None:
    request = parse_request(b"GET /index.html HTTP/1.0\r\n\r\n", mode)
    assert request.version == "HTTP/1.0"


def test_parse_request_strips_optional_whitespace(mode: str) -> None:
    request = parse_request(
        b"GET / HTTP/1.1\r\nHost: \t a \t\r\nX: \tb c \r\nX-Empty:\r\n\r\n", mode
    )
    assert list(request.headers) == [("Host", "a"), ("X", "b c"), ("X-Empty", "")]


def test_parse_request_ignores_one_leading_empty_line(mode: str) -> None:
    request = parse_request(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", mode)
    assert request == Request("GET", "/", Headers([("Host", "a")]))


def test_parse_request_keeps_other_methods_and_targets(mode: str) -> None:
    request = parse_request(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", mode)
    assert (request.method, request.target) == ("OPTIONS", "*")


def test_parse_request_line_of_exactly_max_line(mode: str) -> None:
    line = b"GET /" + b"a" * (32 - 14) + b" HTTP/1.1"
    assert len(line) == SMALL.max_line
    request = parse_request(line + b"\r\nHost: a\r\n\r\n", mode, SMALL)
    assert len(request.target) == 19


def test_parse_header_line_of_exactly_max_line(mode: str) -> None:
    field = b"X: " + b"v" * 29
    assert len(field) == SMALL.max_line
    request = parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n" + field + b"\r\n\r\n", mode, SMALL)
    assert request.headers.get("X") == "v" * 29


def test_parse_request_with_max_headers(mode: str) -> None:
    request = parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nB: 2\r\nC: 3\r\n\r\n", mode, SMALL)
    assert len(request.headers) == 3


def test_parse_request_incomplete() -> None:
    parser = RequestParser()
    assert parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n") is None
    assert parser.feed(b"\r") is None
    assert parser.feed(b"") is None
    assert parser.feed(b"\n") == Request("GET", "/", Headers([("Host", "a")]))


def test_parse_request_leaves_body_in_rest() -> None:
    parser = RequestParser()
    request = parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
    assert request is not None
    assert request.method == "POST"
    assert parser.rest == b"body"


# body_length: how long a request's body is (RFC 9112 §6.3)


def post(*fields: tuple[str, str], version: str = "HTTP/1.1") -> Request:
    return Request("POST", "/", Headers([("Host", "a"), *fields]), version)


@pytest.mark.parametrize(
    ("fields", "length"),
    [
        ((), 0),  # §6.3 item 7: neither field, no body
        ((("Content-Length", "0"),), 0),
        ((("Content-Length", "17"),), 17),
        ((("content-length", " 17 "),), 17),
        ((("Content-Length", "0017"),), 17),
        ((("Content-Length", "1048576"),), 2**20),  # exactly max_body_size
        # §6.3 item 5: a list of one value repeated, in one field or several, is that value.
        ((("Content-Length", "5, 5"),), 5),
        ((("Content-Length", "5"), ("Content-Length", "5")), 5),
        ((("Content-Length", "5,"),), 5),  # RFC 9110 §5.6.1: empty elements are ignored
    ],
)
def test_body_length(fields: tuple[tuple[str, str], ...], length: int) -> None:
    assert body_length(post(*fields)) == length


@pytest.mark.parametrize(
    ("fields", "version", "status", "reason"),
    [
        ((("Content-Length", "1048577"),), "HTTP/1.1", 413, "at most 1048576 bytes"),
        ((("Content-Length", "9" * 5000),), "HTTP/1.1", 413, "at most 1048576 bytes"),
        ((("Content-Length", "abc"),), "HTTP/1.1", 400, "invalid Content-Length"),
        ((("Content-Length", "-1"),), "HTTP/1.1", 400, "invalid Content-Length"),
        ((("Content-Length", "+5"),), "HTTP/1.1", 400, "invalid Content-Length"),
        ((("Content-Length", "1_000"),), "HTTP/1.1", 400, "invalid Content-Length"),
        ((("Content-Length", ""),), "HTTP/1.1", 400, "invalid Content-Length"),
        ((("Content-Length", "5, 6"),), "HTTP/1.1", 400, "invalid Content-Length"),
        ((("Content-Length", "5"), ("Content-Length", "6")), "HTTP/1.1", 400, "invalid"),
        # RFC 9112 §6.3: "MAY reject ... a message body but not a Content-Length" with 411.
        ((("Transfer-Encoding", "chunked"),), "HTTP/1.1", 411, "send Content-Length"),
        ((("Transfer-Encoding", "Chunked"),), "HTTP/1.1", 411, "send Content-Length"),
        # §6.3 item 3: Transfer-Encoding overrides Content-Length.
        (
            (("Content-Length", "5"), ("Transfer-Encoding", "chunked")),
            "HTTP/1.1",
            411,
            "send Content-Length",
        ),
        # §6.1: a coding the server does not understand, "SHOULD respond with 501".
        ((("Transfer-Encoding", "gzip, chunked"),), "HTTP/1.1", 501, "gzip is not implemented"),
        (
            (("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "chunked")),
            "HTTP/1.1",
            501,
            "gzip is not implemented",
        ),
        # §6.3 item 4: chunked not the final coding, the length "cannot be determined".
        ((("Transfer-Encoding", "gzip"),), "HTTP/1.1", 400, "chunked is not the last"),
        ((("Transfer-Encoding", "chunked, gzip"),), "HTTP/1.1", 400, "chunked is not the last"),
        ((("Transfer-Encoding", ""),), "HTTP/1.1", 400, "chunked is not the last"),
        # §6.1: in HTTP/1.0, the framing is faulty.
        ((("Transfer-Encoding", "chunked"),), "HTTP/1.0", 400, "in an HTTP/1.0 request"),
    ],
)
def test_body_length_refusals(
    fields: tuple[tuple[str, str], ...], version: str, status: int, reason: str
) -> None:
    with pytest.raises(InvalidRequest) as exc_info:
        body_length(post(*fields, version=version))
    assert exc_info.value.status == status
    assert reason in exc_info.value.reason


def test_body_length_of_another_limit() -> None:
    assert body_length(post(("Content-Length", "10")), max_size=10) == 10
    with pytest.raises(InvalidRequest, match="413: a request body has at most 9 bytes"):
        body_length(post(("Content-Length", "10")), max_size=9)
    assert body_length(post(("Content-Length", "0")), max_size=0) == 0


# RFC 9112 §3.2: Host, for every request, not only upgrades.


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "missing Host header"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host header"),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", "more than one Host header"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid Host header"),
        (b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", "invalid Host header"),
    ],
)
def test_a_request_without_one_valid_host_is_400(mode: str, head: bytes, reason: str) -> None:
    exc = request_error(head, mode)
    assert (exc.status, exc.reason) == (400, reason)


# RFC 9112 §3.2.2: "a server MUST accept the absolute-form in requests".


def test_absolute_form_target_gives_its_path_query_and_authority() -> None:
    request = Request("GET", "http://Example.COM:8080/chat/x?since=3&epoch=e", Headers())
    assert (request.path, request.query) == ("/chat/x", "since=3&epoch=e")
    assert request.authority == "Example.COM:8080"


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [("http://a", "/", ""), ("http://a?x=1", "/", "x=1"), ("ws://a:1/b", "/b", "")],
)
def test_absolute_form_without_a_path_is_the_root(target: str, path: str, query: str) -> None:
    request = Request("GET", target, Headers([("Host", "other")]))
    assert (request.path, request.query) == (path, query)
    assert request.authority == target.split("/")[2].split("?")[0]


def test_the_authority_of_an_origin_form_target_is_the_host_field() -> None:
    assert Request("GET", "/a?b", Headers([("Host", "h:1")])).authority == "h:1"
    assert Request("GET", "/a", Headers(), "HTTP/1.0").authority is None
    assert Request("OPTIONS", "*", Headers([("Host", "h")])).path == "*"


# The whole head is bounded, not only each line and the number of lines.


def test_a_head_over_max_head_size_is_431_before_it_ends(mode: str) -> None:
    limits = Limits(max_head_size=100)
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 20) for i in range(10))
    exc = request_error(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields, mode, limits)
    assert (exc.status, exc.reason) == (431, "message head over 100 bytes")


def test_a_head_of_exactly_max_head_size_is_parsed(mode: str) -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 50 + b"\r\n\r\n"
    request = parse_request(head, mode, Limits(max_head_size=len(head)))
    assert request.headers.get("X") == "v" * 50
    with pytest.raises(InvalidRequest):
        RequestParser(Limits(max_head_size=len(head) - 1)).feed(head)


def test_a_line_still_arriving_counts_toward_the_head() -> None:
    parser = RequestParser(Limits(max_head_size=64, max_line=8192))
    assert parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ") is None
    with pytest.raises(InvalidRequest) as exc_info:
        parser.feed(b"v" * 40)  # no line end yet: refused without waiting for it
    assert exc_info.value.status == 431


def test_parse_request_roundtrip() -> None:
    request = Request("GET", "/a?b", Headers([("Host", "example.com"), ("X", "1 2")]))
    assert RequestParser().feed(request.serialize()) == request


def test_feed_after_request_is_an_error() -> None:
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(InvalidState):
        parser.feed(b"more")


def test_feed_after_error_is_an_error() -> None:
    parser = RequestParser()
    with pytest.raises(InvalidRequest):
        parser.feed(b"GET\r\n")
    with pytest.raises(InvalidState):
        parser.feed(b"\r\n")


# RequestParser: errors, one test per status and cause


def test_request_line_too_long_is_414(mode: str) -> None:
    exc = request_error(b"GET /" + b"a" * 32 + b" HTTP/1.1\r\n\r\n", mode, SMALL)
    assert (exc.status, exc.reason) == (414, "request line too long")


def test_request_line_too_long_is_414_before_its_end() -> None:
    parser = RequestParser(SMALL)
    assert parser.feed(b"GET /" + b"a" * 27) is None  # 32 bytes: at the limit
    assert parser.feed(b"\r") is None  # maybe the start of a CRLF
    with pytest.raises(InvalidRequest) as exc_info:
        parser.feed(b"a")
    assert exc_info.value.status == 414


def test_endless_request_line_is_414_one_byte_at_a_time() -> None:
    parser = RequestParser(SMALL)
    for byte in b"GET /" + b"a" * 27:
        assert parser.feed(bytes([byte])) is None
    with pytest.raises(InvalidRequest) as exc_info:
        parser.feed(b"a")
    assert exc_info.value.status == 414


def test_header_line_too_long_is_431(mode: str) -> None:
    exc = request_error(b"GET / HTTP/1.1\r\nX: " + b"v" * 30 + b"\r\n\r\n", mode, SMALL)
    assert (exc.status, exc.reason) == (431, "header field line too long")


def test_header_line_too_long_is_431_before_its_end() -> None:
    parser = RequestParser(SMALL)
    assert parser.feed(b"GET / HTTP/1.1\r\nX: " + b"v" * 29) is None
    with pytest.raises(InvalidRequest) as exc_info:
        parser.feed(b"v")
    assert exc_info.value.status == 431


def test_too_many_headers_is_431(mode: str) -> None:
    data = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"
    exc = request_error(data, mode, SMALL)
    assert (exc.status, exc.reason) == (431, "too many header fields")


@pytest.mark.parametrize(
    "line",
    [
        b"GET /",
        b"GET",
        b"GET  / HTTP/1.1",
        b"GET / HTTP/1.1 ",
        b" GET / HTTP/1.1",
        b"GET\t/\tHTTP/1.1",
    ],
)
def test_malformed_request_line_is_400(line: bytes, mode: str) -> None:
    exc = request_error(line + b"\r\n\r\n", mode)
    assert exc.status == 400


def test_two_leading_empty_lines_are_400(mode: str) -> None:
    exc = request_error(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", mode)
    assert exc.status == 400


@pytest.mark.parametrize("method", [b"G(T", b"GE\x7fT", b"GET:"])
def test_invalid_method_is_400(method: bytes, mode: str) -> None:
    exc = request_error(method + b" / HTTP/1.1\r\n\r\n", mode)
    assert (exc.status, exc.reason) == (400, "invalid method in request line")


@pytest.mark.parametrize("target", [b"/\x7f", b"/\x00", b"/a\rb"])
def test_invalid_request_target_is_400(target: bytes, mode: str) -> None:
    exc = request_error(b"GET " + target + b" HTTP/1.1\r\n\r\n", mode)
    assert (exc.status, exc.reason) == (400, "invalid request target in request line")


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/3.0"])
def test_unsupported_http_version_is_505(version: bytes, mode: str) -> None:
    exc = request_error(b"GET / " + version + b"\r\n\r\n", mode)
    assert exc.status == 505
    assert version.decode() in exc.reason


@pytest.mark.parametrize(
    "version", [b"HTTP/1", b"HTTP/11.1", b"http/1.1", b"HTTP/1.1.1", b"FOO", b"HTTP/a.b"]
)
def test_garbage_http_version_is_400(version: bytes, mode: str) -> None:
    exc = request_error(b"GET / " + version + b"\r\n\r\n", mode)
    assert (exc.status, exc.reason) == (400, "malformed request line")


def test_header_without_colon_is_400(mode: str) -> None:
    exc = request_error(b"GET / HTTP/1.1\r\nHost example.com\r\n\r\n", mode)
    assert (exc.status, exc.reason) == (400, "header field without a colon")


@pytest.mark.parametrize("name", [b"Host ", b"Host\t"])
def test_whitespace_before_colon_is_400(name: bytes, mode: str) -> None:
    exc = request_error(b"GET / HTTP/1.1\r\n" + name + b": a\r\n\r\n", mode)
    assert (exc.status, exc.reason) == (400, "whitespace between header field name and colon")


def test_obsolete_line_folding_is_400(mode: str) -> None:
    exc = request_error(b"GET / HTTP/1.1\r\nX: a\r\n  b\r\n\r\n", mode)
    assert (exc.status, exc.reason) == (400, "obsolete line folding in header field")


def test_whitespace_after_request_line_is_400(mode: str) -> None:
    exc = request_error(b"GET / HTTP/1.1\r\n\tHost: a\r\n\r\n", mode)
    assert (exc.status, exc.reason) == (400, "obsolete line folding in header field")


@pytest.mark.parametrize("name", [b"", b"Ho(st", b"Host/1", b'"Host"'])
def test_invalid_header_name_is_400(name: bytes, mode: str) -> None:
    exc = request_error(b"GET / HTTP/1.1\r\n" + name + b": a\r\n\r\n", mode)
    assert (exc.status, exc.reason) == (400, "invalid header field name")


@pytest.mark.parametrize("value", [b"a\rb", b"a\x00b", b"\x1b[31m", b"a\x7f"])
def test_control_character_in_header_value_is_400(value: bytes, mode: str) -> None:
    exc = request_error(b"GET / HTTP/1.1\r\nX-A: " + value + b"\r\n\r\n", mode)
    assert (exc.status, exc.reason) == (400, "invalid character in header field X-A")


@pytest.mark.parametrize(
    "data",
    [
        b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: caf\xe9\r\n\r\n",
        b"GET / HTTP/1.1\r\nX\xff: a\r\n\r\n",
    ],
)
def test_non_ascii_in_head_is_400(data: bytes, mode: str) -> None:
    exc = request_error(data, mode)
    assert (exc.status, exc.reason) == (400, "non-ASCII byte in the message head")


def test_errors_carry_no_headers() -> None:
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser().feed(b"GET / HTTP/2.0\r\n\r\n")
    assert exc_info.value.headers == ()


# ResponseParser


def test_parse_rfc_response(mode: str) -> None:
    assert parse_response(RFC_RESPONSE, mode) == Response(
        101,
        "Switching Protocols",
        Headers(
            [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                ("Sec-WebSocket-Protocol", "chat"),
            ]
        ),
    )


@pytest.mark.parametrize("line", [b"HTTP/1.1 101", b"HTTP/1.1 101 "])
def test_parse_response_without_reason(line: bytes, mode: str) -> None:
    assert parse_response(line + b"\r\n\r\n", mode) == Response(101, "", Headers())


def test_parse_response_reason_with_spaces(mode: str) -> None:
    response = parse_response(b"HTTP/1.0 404 Not  Found\r\n\r\n", mode)
    assert (response.status, response.reason) == (404, "Not  Found")


def test_parse_response_leaves_body_in_rest() -> None:
    parser = ResponseParser()
    response = parser.feed(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n")
    assert response == Response(403, "Forbidden", Headers([("Content-Length", "3")]))
    assert parser.rest == b"no\n"


def test_parse_response_roundtrip() -> None:
    response = Response(426, "Upgrade Required", Headers([("Sec-WebSocket-Version", "13")]))
    assert ResponseParser().feed(response.serialize()) == response


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"HTTP/1.1\r\n\r\n", "malformed status line"),
        (b"ICY 200 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/2.0 101 OK\r\n\r\n", "unsupported HTTP version HTTP/2.0"),
        (b"HTTP/1.1 1O1 OK\r\n\r\n", "invalid status code"),
        (b"HTTP/1.1 1011 OK\r\n\r\n", "invalid status code"),
        (b"HTTP/1.1 10 OK\r\n\r\n", "invalid status code"),
        (b"HTTP/1.1 101 O\x00K\r\n\r\n", "invalid reason phrase"),
        (b"HTTP/1.1 101 OK\r\nUpgrade websocket\r\n\r\n", "header field without a colon"),
        (b"HTTP/1.1 101 OK\r\nUpgrade : websocket\r\n\r\n", "whitespace between"),
        (b"HTTP/1.1 101 OK\r\nA: 1\r\n b\r\n\r\n", "obsolete line folding"),
        (b"HTTP/1.1 101 OK\r\nA\x01: 1\r\n\r\n", "invalid header field name"),
        (b"HTTP/1.1 101 OK\r\nA: \x01\r\n\r\n", "invalid character in header field A"),
        (b"HTTP/1.1 101 \xc3\x9cber\r\n\r\n", "non-ASCII byte"),
        (b"HTTP/1.1 101 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", "too many header fields"),
        (b"HTTP/1.1 101 Switching Protocols!!\r\n\r\n", "status line too long"),
        (b"HTTP/1.1 101 OK\r\nX: " + b"v" * 30 + b"\r\n\r\n", "header field line too long"),
    ],
)
def test_invalid_response(data: bytes, message: str, mode: str) -> None:
    assert message in response_error(data, mode, SMALL)


def test_feed_after_response_is_an_error() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    with pytest.raises(InvalidState):
        parser.feed(b"\x81\x00")


# Linear time


class CountingBuffer(bytearray):
    """A receive buffer that counts the bytes its ``find`` calls examine."""

    scanned = 0

    def find(self, sub: Any, start: Any = 0, end: Any = None) -> int:
        self.scanned += len(self) - start
        return super().find(sub, start)


def test_bytewise_feed_searches_each_byte_once() -> None:
    fields = b"".join(b"X-H-%d: value\r\n" % i for i in range(99))
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
    parser = RequestParser()
    buffer = parser._buf = CountingBuffer()
    for i in range(len(data) - 1):
        assert parser.feed(data[i : i + 1]) is None
    request = parser.feed(data[-1:])
    assert request is not None
    assert len(request.headers) == 100
    # Rescanning the pending line on every byte would examine about 20 times more.
    assert buffer.scanned == len(data)


# Properties

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
tokens = st.text(TCHAR, min_size=1, max_size=12)
field_values = st.text(VCHAR + " \t", max_size=20).map(lambda value: value.strip(" \t"))
requests = st.builds(
    Request,
    method=tokens,
    target=st.text(VCHAR, min_size=1, max_size=30),
    # A Host first: RFC 9112 §3.2 requires exactly one.
    headers=st.lists(
        st.tuples(tokens.filter(lambda name: name.lower() != "host"), field_values), max_size=10
    ).map(lambda fields: Headers([("Host", "example.com"), *fields])),
    version=st.sampled_from(["HTTP/1.0", "HTTP/1.1"]),
)
responses = st.builds(
    Response,
    status=st.integers(100, 999),
    reason=field_values,
    # A Host first: RFC 9112 §3.2 requires exactly one.
    headers=st.lists(
        st.tuples(tokens.filter(lambda name: name.lower() != "host"), field_values), max_size=10
    ).map(lambda fields: Headers([("Host", "example.com"), *fields])),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets; the last chunk is never empty, others may be."""
    points = [0, *sorted(cut % max(len(data), 1) for cut in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(request=requests, cuts=st.lists(st.integers(min_value=0)), trailing=st.binary())
def test_any_split_of_a_request_gives_the_same_request(
    request: Request, cuts: list[int], trailing: bytes
) -> None:
    data = request.serialize()
    parser = RequestParser()
    chunks = split(data, cuts)
    chunks[-1] += trailing
    results = [parser.feed(chunk) for chunk in chunks]
    assert results[-1] == request
    assert all(result is None for result in results[:-1])
    assert parser.rest == trailing


@given(response=responses, cuts=st.lists(st.integers(min_value=0)))
def test_any_split_of_a_response_gives_the_same_response(
    response: Response, cuts: list[int]
) -> None:
    parser = ResponseParser()
    results = [parser.feed(chunk) for chunk in split(response.serialize(), cuts)]
    assert results[-1] == response
    assert all(result is None for result in results[:-1])


noise = st.one_of(
    st.binary(),
    st.binary().map(lambda data: b"GET / HTTP/1.1\r\n" + data),
    st.lists(st.sampled_from([b"\r", b"\n", b" ", b":", b"A", b"\xff", b"\t"])).map(b"".join),
)


@given(data=noise, cuts=st.lists(st.integers(min_value=0)))
def test_arbitrary_bytes_give_a_request_or_invalid_request(data: bytes, cuts: list[int]) -> None:
    parser = RequestParser(SMALL)
    fed = b""
    status = None
    for chunk in split(data, cuts):
        fed += chunk
        try:
            result = parser.feed(chunk)
        except InvalidRequest as exc:
            status = exc.status
            break
        if result is not None:
            assert isinstance(result, Request)
            assert fed.endswith(parser.rest)
            break
    assert status in (None, 400, 414, 431, 505)


@given(data=noise, cuts=st.lists(st.integers(min_value=0)))
def test_arbitrary_bytes_give_a_response_or_invalid_response(data: bytes, cuts: list[int]) -> None:
    parser = ResponseParser(SMALL)
    for chunk in split(b"HTTP/1.1 " + data, cuts):
        try:
            result = parser.feed(chunk)
        except InvalidResponse:
            return
        if result is not None:
            assert isinstance(result, Response)
            return
