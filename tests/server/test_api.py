"""The HTTP API for the application's backend, with a real HTTP client against a real server.

``urllib.request`` (in a thread: the server runs in the test's event loop) talks to an App on
127.0.0.1 whose backend is a fake that records what it is asked; what urllib cannot send (a
POST without ``Content-Length``, a request from another address) is written by hand on a TCP
stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from rfc6455 import Limits
from server import api
from server.api import ApiError
from server.logs import JsonFormatter
from tests.server.support import GUARD, HOST, Chat, Json

KEY = "k3y-0f-th3-t3st5_+/~.AAAA"

# What the fake backend answers.
MEMBERS = [{"user": "ann", "name": "Ann", "connections": 2, "since": "2025-01-31 14:05:09"}]
BROADCAST = {
    "type": "broadcast",
    "channel": "news",
    "connectionId": "api",
    "message": "hi",
    "timestamp": "2025-01-31 14:05:09",
    "seq": 8,
}


class FakeBackend:
    """An ``ApiBackend`` that records its calls; ``error`` is raised by the next one."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.keys: dict[tuple[str, str], int] = {}
        self.error: Exception | None = None

    def _called(self, *call: Any) -> None:
        self.calls.append(call)
        if self.error is not None:
            raise self.error
        if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,128}", str(call[1] or "general")):
            raise ApiError(400, "bad_channel", "a channel name is 1-128 of [A-Za-z0-9_.:@-]")

    async def publish(
        self, channel: str, message: str, idempotency_key: str | None
    ) -> dict[str, object]:
        await asyncio.sleep(0)  # as the real one waits for the commit
        self._called("publish", channel, message, idempotency_key)
        if idempotency_key is not None and (channel, idempotency_key) in self.keys:
            seq = self.keys[channel, idempotency_key]
            return {"channel": channel, "seq": seq, "epoch": "e1", "duplicate": True}
        seq = len(self.calls)
        if idempotency_key is not None:
            self.keys[channel, idempotency_key] = seq
        return {"channel": channel, "seq": seq, "epoch": "e1"}

    def channels(self) -> list[dict[str, object]]:
        self._called("channels", None)
        return [{"channel": "general", "subscribers": 3}, {"channel": "news", "subscribers": 1}]

    async def presence(self, channel: str) -> list[dict[str, object]]:
        self._called("presence", channel)
        if channel != "general":
            raise ApiError(404, "unknown_channel", f"no channel {channel}")
        return list(MEMBERS)

    async def history(self, channel: str, since: int | None, limit: int) -> dict[str, object]:
        await asyncio.sleep(0)
        self._called("history", channel, since, limit)
        return {"channel": channel, "epoch": "e1", "messages": [BROADCAST]}

    def disconnect(
        self, *, user: str | None, connection_id: str | None, code: int, reason: str
    ) -> int:
        self._called("disconnect", None, user, connection_id, code, reason)
        return 2 if user == "ann" else 0


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes

    def json(self) -> Json:
        assert self.headers["content-type"] == "application/json", self
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value

    def error(self, status: int, code: str) -> str:
        """Assert this is the error ``code`` with ``status``; return its message."""
        assert self.status == status, self
        payload = self.json()
        assert set(payload) == {"error", "message"}, payload
        assert payload["error"] == code, payload
        assert isinstance(payload["message"], str)
        assert payload["message"]
        return payload["message"]


def _call(
    port: int,
    method: str,
    target: str,
    data: bytes | Iterator[bytes] | None,
    headers: dict[str, str],
) -> Answer:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{target}", data=data, headers=headers, method=method
    )
    # No proxy from the environment: the request must reach the server under test.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=GUARD) as response:
            return Answer(response.status, _lower(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, _lower(exc.headers.items()), exc.read())


def _lower(items: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


class Client:
    """``urllib.request`` against a running App, with its API key unless told otherwise."""

    def __init__(self, chat: Chat, key: str | None = KEY) -> None:
        self.chat = chat
        self.key = key

    async def __call__(
        self,
        method: str,
        target: str,
        body: object = None,
        *,
        data: bytes | Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        fields = {} if self.key is None else {"Authorization": f"Bearer {self.key}"}
        if body is not None:
            data = json.dumps(body).encode()
            fields["Content-Type"] = "application/json"
        fields.update(headers or {})
        return await asyncio.to_thread(_call, self.chat.port, method, target, data, fields)

    async def get(self, target: str, **options: Any) -> Answer:
        return await self("GET", target, **options)

    async def post(self, target: str, body: object = None, **options: Any) -> Answer:
        return await self("POST", target, body, **options)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def chat(start_chat: Callable[..., Any], backend: FakeBackend) -> Chat:
    """An App with an API key and the fake backend."""
    started: Chat = await start_chat(api_key=KEY, api_backend=backend)
    return started


@pytest.fixture
def client(chat: Chat) -> Client:
    return Client(chat)


# The endpoints


async def test_publish(client: Client, backend: FakeBackend) -> None:
    answer = await client.post("/api/publish", {"channel": "news", "message": "hi"})
    assert answer.status == 200
    assert answer.json() == {"channel": "news", "seq": 1, "epoch": "e1"}
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["content-length"] == str(len(answer.body))
    assert backend.calls == [("publish", "news", "hi", None)]


async def test_publish_twice_with_one_idempotency_key(client: Client, backend: FakeBackend) -> None:
    body = {"channel": "news", "message": "hi", "idempotencyKey": "k" * 128}
    first = (await client.post("/api/publish", body)).json()
    again = (await client.post("/api/publish", body)).json()
    assert first == {"channel": "news", "seq": 1, "epoch": "e1"}
    assert again == {"channel": "news", "seq": 1, "epoch": "e1", "duplicate": True}
    assert [call[3] for call in backend.calls] == ["k" * 128] * 2


async def test_publish_takes_a_charset_parameter_and_any_case(client: Client) -> None:
    headers = {"Content-Type": "Application/JSON; charset=utf-8"}
    answer = await client.post("/api/publish", {"channel": "a", "message": "é"}, headers=headers)
    assert answer.status == 200


async def test_channels(client: Client) -> None:
    answer = await client.get("/api/channels")
    assert answer.status == 200
    assert answer.json() == {
        "channels": [
            {"channel": "general", "subscribers": 3},
            {"channel": "news", "subscribers": 1},
        ]
    }


async def test_head_gets_the_headers_of_a_get(client: Client) -> None:
    get = await client.get("/api/channels")
    head = await client("HEAD", "/api/channels")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["content-type"] == "application/json"


async def test_presence(client: Client, backend: FakeBackend) -> None:
    answer = await client.get("/api/presence?channel=general")
    assert answer.json() == {"channel": "general", "members": MEMBERS}
    assert backend.calls == [("presence", "general")]


async def test_presence_of_an_unknown_channel_is_the_backends_404(client: Client) -> None:
    (await client.get("/api/presence?channel=nowhere")).error(404, "unknown_channel")


@pytest.mark.parametrize(
    ("query", "since", "limit"),
    [
        ("channel=news", None, api.DEFAULT_HISTORY_LIMIT),
        ("channel=news&since=0", 0, api.DEFAULT_HISTORY_LIMIT),
        ("channel=news&since=7&limit=1", 7, 1),
        (f"limit={api.MAX_HISTORY_LIMIT}&channel=news&since={api.MAX_SEQ}", api.MAX_SEQ, 1000),
        ("channel=a%3Ab", None, api.DEFAULT_HISTORY_LIMIT),  # percent-encoded: a:b
    ],
)
async def test_history(
    client: Client, backend: FakeBackend, query: str, since: int | None, limit: int
) -> None:
    answer = await client.get("/api/history?" + query)
    channel = backend.calls[0][1]
    assert answer.json() == {"channel": channel, "epoch": "e1", "messages": [BROADCAST]}
    assert backend.calls == [("history", channel, since, limit)]


@pytest.mark.parametrize(
    ("body", "user", "connection_id", "code", "reason"),
    [
        ({"user": "ann"}, "ann", None, 1000, ""),
        (
            {"connectionId": "c0ffee", "code": 4001, "reason": "kicked"},
            None,
            "c0ffee",
            4001,
            "kicked",
        ),
        (
            {"user": "bob", "code": 4999, "reason": "é" * 61 + "x"},
            "bob",
            None,
            4999,
            "é" * 61 + "x",
        ),
    ],
)
async def test_disconnect(
    client: Client,
    backend: FakeBackend,
    caplog: pytest.LogCaptureFixture,
    body: Json,
    user: str | None,
    connection_id: str | None,
    code: int,
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="server.api")
    answer = await client.post("/api/disconnect", body)
    assert answer.json() == {"disconnected": 2 if user == "ann" else 0}
    assert backend.calls == [("disconnect", None, user, connection_id, code, reason)]
    (record,) = [r for r in caplog.records if r.name == "server.api"]
    assert record.getMessage().startswith("api: disconnected ")
    fields = json.loads(JsonFormatter().format(record))
    assert (fields["event"], fields["user"], fields["connection_id"]) == (
        "api_disconnect",
        user,
        connection_id,
    )
    assert (fields["close_code"], fields["close_reason"]) == (code, reason)


# 400: what the API checks itself


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"channel": "news"}, "message must be a string"),
        ({"message": "hi"}, "channel must be a string"),
        ({"channel": 7, "message": "hi"}, "channel must be a string"),
        ({"channel": "news", "message": ["hi"]}, "message must be a string"),
        ({"channel": "news", "message": "hi", "idempotency_key": "k"}, "unknown field"),
        ({"channel": "news", "message": "hi", "idempotencyKey": 5}, "idempotencyKey must be"),
        ({"channel": "news", "message": "hi", "idempotencyKey": None}, "idempotencyKey must be"),
        ({"channel": "news", "message": "hi", "idempotencyKey": "k" * 129}, "at most 128"),
        ({"channel": "news", "message": "hi", "idempotencyKey": "a\nb"}, "idempotencyKey must"),
        (["channel", "message"], "must be a JSON object"),
        ("hi", "must be a JSON object"),
    ],
)
async def test_publish_refuses_a_mistyped_body(
    client: Client, backend: FakeBackend, body: object, says: str
) -> None:
    assert says in (await client.post("/api/publish", body)).error(400, "bad_request")
    assert backend.calls == []


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ("", "must not be empty"),
        (" \n\t", "must not be empty"),
        ("a\x00b", "control characters"),
        ("\ud800", "valid Unicode"),
        ("x" * 501, "at most 500 characters"),
        ('"' * 300, "at most 512 bytes"),  # as broadcast: each quote escaped
    ],
)
async def test_publish_checks_the_text_as_the_chat_does(
    start_chat: Callable[..., Any], backend: FakeBackend, message: str, says: str
) -> None:
    chat = await start_chat(
        api_key=KEY, api_backend=backend, max_text_chars=500, max_text_bytes=512
    )
    body = {"channel": "news", "message": message}
    assert says in (await Client(chat).post("/api/publish", body)).error(400, "invalid_message")
    assert backend.calls == []


@pytest.mark.parametrize(
    "data",
    [b"{", b'{"channel": "a", "message": "hi"} x', b"\xff{}", b"", b"NaN", b"[" * 100_000],
    ids=["truncated", "trailing", "not_utf8", "empty", "nan", "deep"],
)
async def test_a_body_that_is_not_json_is_400(client: Client, data: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    answer = await client.post("/api/publish", data=data, headers=headers)
    answer.error(400, "bad_request")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "either user or connectionId"),
        ({"user": "ann", "connectionId": "c"}, "either user or connectionId"),
        ({"user": ""}, "user must be a string of 1 to 128"),
        ({"user": "u" * 129}, "user must be a string of 1 to 128"),
        ({"user": 5}, "user must be a string"),
        ({"connectionId": None}, "connectionId must be a string"),
        ({"user": "ann", "code": 1001}, "code must be 1000 or from 4000 to 4999"),
        ({"user": "ann", "code": 3000}, "code must be 1000"),
        ({"user": "ann", "code": 5000}, "code must be 1000"),
        ({"user": "ann", "code": True}, "code must be 1000"),
        ({"user": "ann", "code": "4000"}, "code must be 1000"),
        ({"user": "ann", "code": 4000.0}, "code must be 1000"),
        ({"user": "ann", "reason": "é" * 62}, "at most 123 bytes"),
        ({"user": "ann", "reason": "\udc80"}, "at most 123 bytes"),
        ({"user": "ann", "reason": None}, "reason must be text"),
        ({"user": "ann", "why": "x"}, "unknown field 'why'"),
    ],
)
async def test_disconnect_refuses_a_mistyped_body(
    client: Client, backend: FakeBackend, body: Json, says: str
) -> None:
    assert says in (await client.post("/api/disconnect", body)).error(400, "bad_request")
    assert backend.calls == []


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("/api/presence", "channel must be a string"),
        ("/api/presence?channel=a&channel=b", "channel is given more than once"),
        ("/api/presence?channel=a&x=1", "unknown parameter 'x'"),
        ("/api/presence?channel=%ff", "not UTF-8"),
        ("/api/channels?verbose=1", "unknown parameter 'verbose'"),
        ("/api/history", "channel must be a string"),
        ("/api/history?channel=a&since=", "since must be a whole number"),
        ("/api/history?channel=a&since=-1", "since must be a whole number"),
        ("/api/history?channel=a&since=%2B1", "since must be a whole number"),  # +1
        ("/api/history?channel=a&since=1.5", "since must be a whole number"),
        ("/api/history?channel=a&since=%C2%B2", "since must be a whole number"),  # ²
        (f"/api/history?channel=a&since={api.MAX_SEQ + 1}", "since must be a whole number"),
        ("/api/history?channel=a&since=" + "9" * 5000, "since must be a whole number"),
        ("/api/history?channel=a&limit=0", "limit must be a whole number from 1 to 1000"),
        ("/api/history?channel=a&limit=1001", "limit must be a whole number from 1 to 1000"),
        ("/api/history?channel=a&limit=ten", "limit must be a whole number"),
        ("/api/history?channel=a&sinse=5", "unknown parameter 'sinse'"),
    ],
)
async def test_a_bad_query_is_400(
    client: Client, backend: FakeBackend, target: str, says: str
) -> None:
    assert says in (await client.get(target)).error(400, "bad_request")
    assert backend.calls == []


async def test_the_backends_errors_are_passed_on(client: Client, backend: FakeBackend) -> None:
    answer = await client.post("/api/publish", {"channel": "no spaces", "message": "hi"})
    assert "a channel name is" in answer.error(400, "bad_channel")
    backend.error = ApiError(499, "gone", "a status without a name")
    answer = await client.get("/api/channels")
    assert answer.error(499, "gone") == "a status without a name"


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("POST", "/api/publish", {"channel": "a", "message": "hi"}),  # asynchronous
        ("GET", "/api/channels", None),  # synchronous
    ],
)
async def test_a_backend_that_fails_gives_500(
    client: Client,
    backend: FakeBackend,
    caplog: pytest.LogCaptureFixture,
    method: str,
    target: str,
    body: Json | None,
) -> None:
    backend.error = RuntimeError("bug in the backend")
    answer = await client(method, target, body)
    assert answer.error(500, "internal_error") == "internal server error"
    assert "bug" not in answer.body.decode()
    (record,) = [r for r in caplog.records if r.name == "server.api"]
    assert record.getMessage() == f"{method} {target} failed"
    assert record.exc_info is not None


# 401 and 429: the key


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, 'Bearer realm="api"'),
        ("Basic YW5uOnB3", 'Bearer realm="api"'),
        ("Bearer", 'Bearer realm="api", error="invalid_token"'),
        (f"Bearer {KEY}x", 'Bearer realm="api", error="invalid_token"'),
        (f"Bearer {KEY[:-1]}", 'Bearer realm="api", error="invalid_token"'),
        (f"Token {KEY}", 'Bearer realm="api"'),
    ],
)
async def test_without_the_key_every_endpoint_is_401(
    chat: Chat, backend: FakeBackend, authorization: str | None, challenge: str
) -> None:
    client = Client(chat, key=None)
    headers = {} if authorization is None else {"Authorization": authorization}
    for target in ("/api/channels", "/api/presence?channel=general", "/api/nowhere"):
        answer = await client.get(target, headers=headers)
        answer.error(401, "unauthorized")
        assert answer.headers["www-authenticate"].startswith(challenge)
    answer = await client.post("/api/publish", {"channel": "a", "message": "hi"}, headers=headers)
    answer.error(401, "unauthorized")
    assert backend.calls == []


async def test_the_scheme_is_case_insensitive(chat: Chat) -> None:
    answer = await Client(chat, key=None).get(
        "/api/channels", headers={"Authorization": f"bEARER {KEY}"}
    )
    assert answer.status == 200


async def test_failed_authentications_are_limited_per_address(chat: Chat) -> None:
    wrong = Client(chat, key="wrong-key-wrong-key")
    for _ in range(api.MAX_AUTH_FAILURES):
        (await wrong.get("/api/channels")).error(401, "unauthorized")
    answer = await wrong.get("/api/channels")
    assert "too many failed authentications from 127.0.0.1" in answer.error(429, "rate_limited")
    # One more failure every 6 s (10 a minute), less the time the ten took.
    assert 1 <= int(answer.headers["retry-after"]) <= 6
    # The right key is not even looked at now, from that address.
    (await Client(chat).get("/api/channels")).error(429, "rate_limited")
    # Another address is not held back.
    reply = await chat.get(
        "/api/channels", "GET", f"Authorization: Bearer {KEY}", source="127.0.0.2"
    )
    assert reply.status == 200


async def test_the_key_is_never_logged(
    start_chat: Callable[..., Any], backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    chat = await start_chat(api_key=KEY, api_backend=backend)
    assert KEY not in repr(chat.app.settings)
    await Client(chat).get("/api/channels")
    await Client(chat, key=KEY + "x").get("/api/channels")
    await Client(chat).post("/api/disconnect", {"user": "ann"})
    await chat.stop()
    assert caplog.records
    assert not [r for r in caplog.records if KEY in r.getMessage()]


# 404, 405, 411, 413, 415: the endpoint, the method, the body


@pytest.mark.parametrize("target", ["/api/", "/api/publish/", "/api/Channels", "/api/x?y=1"])
async def test_an_unknown_endpoint_is_404(client: Client, target: str) -> None:
    assert "no API endpoint at" in (await client.get(target)).error(404, "not_found")


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        ("GET", "/api/publish", "POST"),
        ("PUT", "/api/publish", "POST"),
        ("GET", "/api/disconnect", "POST"),
        ("POST", "/api/channels", "GET, HEAD"),
        ("DELETE", "/api/presence?channel=a", "GET, HEAD"),
        ("POST", "/api/history?channel=a", "GET, HEAD"),
    ],
)
async def test_another_method_is_405_with_allow(
    client: Client, method: str, target: str, allow: str
) -> None:
    answer = await client(method, target, data=b"{}" if method != "GET" else None)
    answer.error(405, "method_not_allowed")
    assert answer.headers["allow"] == allow


async def test_a_post_without_content_length_is_411(chat: Chat) -> None:
    # curl -X POST without -d sends this; urllib always sends Content-Length: 0.
    reply = await chat.get(
        "/api/publish", "POST", f"Authorization: Bearer {KEY}", "Content-Type: application/json"
    )
    assert reply.status == 411
    assert reply.json()["error"] == "length_required"


async def test_a_chunked_body_is_411(client: Client, backend: FakeBackend) -> None:
    # urllib sends an iterable of unknown length chunked (Transfer-Encoding: chunked).
    chunks = iter([b'{"channel": "a", ', b'"message": "hi"}'])
    answer = await client.post(
        "/api/publish", data=chunks, headers={"Content-Type": "application/json"}
    )
    assert "send Content-Length" in answer.error(411, "length_required")
    assert backend.calls == []


async def test_a_body_over_1_mib_is_413(client: Client, backend: FakeBackend) -> None:
    body = {"channel": "a", "message": "x" * (2**20)}
    answer = await client.post("/api/publish", body)
    assert "at most 1048576 bytes" in answer.error(413, "content_too_large")
    assert backend.calls == []


async def test_a_body_of_1_mib_is_read(client: Client) -> None:
    padding = 2**20 - len(json.dumps({"channel": "a", "message": ""}))
    body = {"channel": "a", "message": "x" * padding}
    assert len(json.dumps(body)) == 2**20
    # Read and judged: too long a message, not too large a body.
    (await client.post("/api/publish", body)).error(400, "invalid_message")


async def test_the_body_limit_is_the_servers(
    start_chat: Callable[..., Any], backend: FakeBackend
) -> None:
    chat = await start_chat(api_key=KEY, api_backend=backend, limits=Limits(max_body_size=64))
    client = Client(chat)
    (await client.post("/api/publish", {"channel": "a", "message": "x" * 64})).error(
        413, "content_too_large"
    )
    assert (await client.post("/api/publish", {"channel": "a", "message": "x"})).status == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "text/plain"}, {"Content-Type": "application/json-patch+json"}],
    ids=["urllib_form_default", "text", "another_json"],
)
async def test_a_body_that_is_not_application_json_is_415(
    client: Client, headers: dict[str, str]
) -> None:
    answer = await client.post(
        "/api/publish", data=b'{"channel":"a","message":"hi"}', headers=headers
    )
    answer.error(415, "unsupported_media_type")


async def test_a_post_without_content_type_is_415(chat: Chat) -> None:
    body = b'{"channel":"a","message":"hi"}'
    lines = [
        "POST /api/publish HTTP/1.1",
        f"Host: {HOST}:{chat.port}",
        f"Authorization: Bearer {KEY}",
        f"Content-Length: {len(body)}",
    ]
    reply = await chat.request(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    assert (reply.status, reply.json()["error"]) == (415, "unsupported_media_type")


# Where the API is, and is not


async def test_without_a_key_the_api_is_any_unknown_path(
    start_chat: Callable[..., Any], backend: FakeBackend
) -> None:
    chat = await start_chat(api_backend=backend)
    client = Client(chat)
    answer = await client.get("/api/channels")
    assert (answer.status, answer.body) == (404, b"not found\n")
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    # As for any path, methods other than GET and HEAD are 405.
    answer = await client.post("/api/publish", {"channel": "a", "message": "hi"})
    nowhere = await client.post("/nowhere", {"channel": "a", "message": "hi"})
    assert (
        (answer.status, answer.body)
        == (nowhere.status, nowhere.body)
        == (
            405,
            b"only GET and HEAD are served\n",
        )
    )
    # The HTTP layer's refusals are plain text too.
    answer = await client.post(
        "/api/publish", data=iter([b"{}"]), headers={"Content-Type": "application/json"}
    )
    assert (answer.status, answer.headers["content-type"]) == (411, "text/plain; charset=utf-8")
    assert backend.calls == []


async def test_a_key_alone_serves_the_real_chat(start_chat: Callable[..., Any]) -> None:
    chat = await start_chat(api_key=KEY)
    assert (await Client(chat).get("/api/channels")).json() == {"channels": []}


async def test_the_host_must_be_one_the_server_answers_for(chat: Chat) -> None:
    # DNS rebinding (hosts.py): a backend that calls the server by a name lists it in
    # --allowed-hosts.
    lines = ["GET /api/channels HTTP/1.1", "Host: evil.example", f"Authorization: Bearer {KEY}"]
    reply = await chat.request(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert reply.status == 421


async def test_the_rest_of_the_server_is_unchanged(chat: Chat) -> None:
    assert (await chat.health())["connections"] == 0
    client = await chat.join()
    assert client.welcome["type"] == "welcome"
    # An upgrade under /api/ is no WebSocket endpoint.
    reply = await Client(chat).get(
        "/api/channels",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    )
    assert (reply.status, reply.body) == (404, b"no WebSocket endpoint at /api/channels\n")
