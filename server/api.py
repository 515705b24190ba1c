"""The HTTP API for the application's backend: publish, channels, presence, history, disconnect.

Under ``/api/`` on the chat's port, off unless ``--api-key`` is set (``web.Router`` then answers
``/api/...`` as any unknown path). ``docs/http-api.md`` is the reference. Every request, in
this order (the cheap checks first; what the backend is asked last):

1. 429 with ``Retry-After`` for an address that failed to authenticate ``MAX_AUTH_FAILURES``
   times in a minute (as many at once), without a look at its key (``ratelimit.KeyedBuckets``,
   addresses counted as ``rfc6455.addresses.address_key`` does);
2. 401 with ``WWW-Authenticate: Bearer`` (RFC 6750 §3) unless ``Authorization: Bearer <key>``
   (RFC 6750 §2.1), compared in constant time (``hmac.compare_digest``); each failure counts;
3. 404 for an unknown endpoint, 405 with ``Allow`` for another method (RFC 9110 §15.5.6);
4. a POST: 411 without ``Content-Length``, 415 unless ``Content-Type: application/json``, 400
   unless the body is a JSON object (RFC 8259, UTF-8) with the endpoint's fields, each of its
   type and within its bounds, and no other; a GET: 400 unless its query has the endpoint's
   parameters, each once, and no other;
5. the backend (``ApiBackend``): its answer, 200 with JSON, or its ``ApiError``.

The HTTP layer refuses a body over ``Limits.max_body_size`` (413), a chunked one (411), another
transfer coding (501) and a bad ``Content-Length`` (400) before any of it is read; ``refusal``
answers those in JSON too. Errors are ``{"error": CODE, "message": "..."}``. The key is never
logged, nor echoed.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol
from urllib.parse import parse_qs

from rfc6455 import Headers, InvalidRequest, Request, Response
from rfc6455.addresses import address_key
from rfc6455.http11 import reason_phrase

from .auth import bearer_challenge
from .messages import (
    MAX_CLIENT_MSG_ID,
    InvalidMessage,
    check_client_msg_id,
    check_text,
    is_unicode,
)
from .ratelimit import Clock, KeyedBuckets
from .refusals import Refusals

__all__ = [
    "API_PREFIX",
    "DEFAULT_HISTORY_LIMIT",
    "MAX_AUTH_FAILURES",
    "MAX_HISTORY_LIMIT",
    "MAX_ID_CHARS",
    "MAX_REASON_BYTES",
    "MAX_SEQ",
    "MIN_KEY_CHARS",
    "Api",
    "ApiBackend",
    "ApiError",
    "check_key",
]

logger = logging.getLogger("server.api")

API_PREFIX = "/api/"
# The realm of the API's challenges (RFC 9110 §11.5): its key is not a chat user's token.
REALM = "api"
# 16 characters of the key's alphabet are 96 bits when random: out of reach of the guesses the
# failure limit lets through (600 an hour per address).
MIN_KEY_CHARS = 16
# RFC 6750 §2.1: b64token, what a Bearer credential may hold; any other key could not be sent.
_KEY = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Failed authentications a minute per address, and as many at once: a backend deployed with an
# old key gets ten answers that say so, then one every 6 s; as --max-login-failures' default.
MAX_AUTH_FAILURES = 10
# A page of history: 100 messages by default, 1,000 at most (a few hundred KB of chat; a larger
# export is many pages, each a short query of the backend).
DEFAULT_HISTORY_LIMIT = 100
MAX_HISTORY_LIMIT = 1000
# SQLite's largest INTEGER: no seq is larger.
MAX_SEQ = 2**63 - 1
# RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the close code.
MAX_REASON_BYTES = 123
# RFC 6455 §7.4.2: 4000-4999 are for applications, "by prior agreement"; 1000 is the normal
# closure (§7.4.1), which tells a client not to reconnect. The other codes are the protocol's.
_CLOSE_CODES = range(4000, 5000)
# User names and connection ids are short (auth.MAX_USER, uuid4): as long as a clientMsgId.
MAX_ID_CHARS = MAX_CLIENT_MSG_ID
# The codes of the HTTP layer's refusals (rfc6455.http11.body_length), for ``Api.refusal``;
# bad_request for 400 and any other.
_REFUSAL_CODES = {411: "length_required", 413: "content_too_large", 501: "not_implemented"}

_Payload = dict[str, object]
_Fields = Mapping[str, object]


class ApiError(Exception):
    """An error the API answers with: an HTTP status, a code and a message.

    Raised by the backend for semantic errors (an unknown channel: 404; a bad name: 400
    ``bad_channel``), and by the API for what it checks itself.

    Args:
        status: The HTTP status, 400 to 599.
        code: A snake_case word for programs (``bad_channel``, ``not_found``...).
        message: One line for people.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers: tuple[tuple[str, str], ...] = ()


class ApiBackend(Protocol):
    """What the API asks of the chat: implemented on its engine (``app.App`` wires it).

    Channel names are the backend's to check (``ApiError(400, "bad_channel", ...)``); the API
    has checked the types and bounds of every argument. A request has ``--open-timeout`` in
    all: a coroutine still running then is cancelled, and its client dropped (it retries, with
    the same ``idempotencyKey`` for a publish).
    """

    async def publish(
        self, channel: str, message: str, idempotency_key: str | None
    ) -> dict[str, object]:
        """Publish ``message`` to ``channel``; return once it is committed.

        Returns ``{"channel", "seq", "epoch"}``, plus ``"duplicate": True`` when
        ``idempotency_key`` was already stored for the API in that channel (then ``seq`` is
        the original's, and nothing is stored or broadcast again).
        """
        ...

    def channels(self) -> list[dict[str, object]]:
        """The active channels: ``[{"channel": C, "subscribers": n}, ...]``."""
        ...

    async def presence(self, channel: str) -> list[dict[str, object]]:
        """The members of ``channel``; raises ``ApiError(404, ...)`` for an unknown channel."""
        ...

    async def history(self, channel: str, since: int | None, limit: int) -> dict[str, object]:
        """At most ``limit`` broadcasts of ``channel`` after seq ``since`` (the latest if None).

        Returns ``{"channel", "epoch", "messages": [<broadcast>, ...]}``, oldest first.
        """
        ...

    def disconnect(
        self, *, user: str | None, connection_id: str | None, code: int, reason: str
    ) -> int:
        """Close every connection of ``user``, or the one ``connection_id``, with ``code`` and
        ``reason``; returns how many were."""
        ...


def check_key(key: str) -> str:
    """Check an API key: at least ``MIN_KEY_CHARS`` characters of a Bearer credential.

    Raises:
        ValueError: It is shorter, or has a character ``Authorization: Bearer`` cannot carry;
            the message does not repeat the key.
    """
    if len(key) < MIN_KEY_CHARS or not _KEY.fullmatch(key):
        raise ValueError(
            f"the key must be at least {MIN_KEY_CHARS} characters of A-Z a-z 0-9 - . _ ~ + / "
            "(RFC 6750 §2.1)"
        )
    return key


def _refused(
    status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()
) -> ApiError:
    error = ApiError(status, code, message)
    error.headers = tuple(headers)
    return error


_Handler = Callable[[Request], _Payload | Awaitable[_Payload]]


class Api:
    """The ``/api/`` endpoints, for ``web.Router``.

    Args:
        backend: The chat's side of every endpoint.
        key: The API key (``check_key``).
        max_text_chars: A published message's text, in characters (``--max-text-chars``).
        max_text_bytes: And in bytes as broadcast (``--max-text-bytes``).
        clock: Seconds from a monotonic clock, for the failure limit.

    Raises:
        ValueError: ``check_key`` refuses the key.
    """

    def __init__(
        self,
        backend: ApiBackend,
        key: str,
        *,
        max_text_chars: int,
        max_text_bytes: int,
        clock: Clock = time.monotonic,
    ) -> None:
        self.backend = backend
        self._key = check_key(key).encode()
        self.max_text_chars = max_text_chars
        self.max_text_bytes = max_text_bytes
        self._failures = KeyedBuckets(MAX_AUTH_FAILURES / 60, MAX_AUTH_FAILURES, clock)
        self._refusals = Refusals(logger)
        self._endpoints: dict[str, tuple[str, _Handler]] = {
            "/api/publish": ("POST", self._publish),
            "/api/channels": ("GET", self._channels),
            "/api/presence": ("GET", self._presence),
            "/api/history": ("GET", self._history),
            "/api/disconnect": ("POST", self._disconnect),
        }

    def __call__(self, request: Request) -> Response | Awaitable[Response]:
        """The answer to a request under ``/api/``: at once, or once the backend has it."""
        try:
            self._authenticate(request)
            payload = self._endpoint(request)(request)
        except Exception as exc:
            return _for(request, self._failed(request, exc))
        if isinstance(payload, dict):
            return _for(request, _json(200, payload))
        return self._later(request, payload)

    def close(self) -> None:
        """Log the refusals counted but not logged yet; once the server has stopped."""
        self._refusals.close()

    def refusal(self, request: Request, exc: InvalidRequest) -> Response:
        """The HTTP layer's refusal of an ``/api/`` request (its body), in JSON."""
        code = _REFUSAL_CODES.get(exc.status, "bad_request")
        return _for(request, _json(exc.status, _error(code, exc.reason), exc.headers))

    async def _later(self, request: Request, payload: Awaitable[_Payload]) -> Response:
        try:
            response = _json(200, await payload)
        except Exception as exc:
            response = self._failed(request, exc)
        return _for(request, response)

    def _failed(self, request: Request, exc: Exception) -> Response:
        """The answer to an ``ApiError``; a 500 for anything else (a bug), logged."""
        if not isinstance(exc, ApiError):
            logger.exception("%s %s failed", request.method, request.path)
            exc = ApiError(500, "internal_error", "internal server error")
        return _json(exc.status, _error(exc.code, exc.message), exc.headers)

    def _authenticate(self, request: Request) -> None:
        """Raise 429 for an address out of failures, or 401 unless the request has the key."""
        address = address_key(request.remote_address[0]) if request.remote_address else ""
        bucket = self._failures.get(address)
        if bucket is not None and (wait := bucket.wait(1)):
            seconds = math.ceil(wait)
            message = f"too many failed authentications from {address}: retry in {seconds} s"
            self._refusals(request, 429, message)
            raise _refused(429, "rate_limited", message, [("Retry-After", str(seconds))])
        scheme, _, credentials = (request.headers.get("Authorization") or "").partition(" ")
        bearer = scheme.lower() == "bearer"  # RFC 9110 §11.1: the scheme is case-insensitive
        if bearer and hmac.compare_digest(credentials.strip(" ").encode(), self._key):
            return
        self._failures.bucket(address).take(1)
        if bearer:
            message = "the API key is wrong"
            challenge = bearer_challenge("invalid_token", message, REALM)
        else:
            # RFC 6750 §3.1: no error code when the request has no bearer token at all.
            message = "an API key is required: Authorization: Bearer <key>"
            challenge = bearer_challenge(realm=REALM)
        self._refusals(request, 401, message)
        raise _refused(401, "unauthorized", message, [("WWW-Authenticate", challenge)])

    def _endpoint(self, request: Request) -> _Handler:
        """The handler of the request's endpoint and method; 404 or 405 if there is none."""
        endpoint = self._endpoints.get(request.path)
        if endpoint is None:
            raise ApiError(404, "not_found", f"no API endpoint at {request.path}")
        method, handler = endpoint
        allowed = ("GET", "HEAD") if method == "GET" else (method,)
        if request.method not in allowed:
            raise _refused(
                405,
                "method_not_allowed",
                f"{request.path} takes {method}",
                [("Allow", ", ".join(allowed))],
            )
        return handler

    def _publish(self, request: Request) -> Awaitable[_Payload]:
        fields = _body(request, "channel", "message", "idempotencyKey")
        channel = _string(fields, "channel")
        message = _string(fields, "message")
        key = None
        try:
            if "idempotencyKey" in fields:  # the rules of a clientMsgId
                key = check_client_msg_id(fields["idempotencyKey"])
        except InvalidMessage:
            raise ApiError(
                400,
                "bad_request",
                f"idempotencyKey must be a string of at most {MAX_CLIENT_MSG_ID} characters, "
                "without control characters",
            ) from None
        try:
            check_text(message, max_chars=self.max_text_chars, max_bytes=self.max_text_bytes)
        except InvalidMessage as exc:  # the chat's own code for it
            raise ApiError(400, "invalid_message", str(exc)) from None
        return self.backend.publish(channel, message, key)

    def _channels(self, request: Request) -> _Payload:
        _query(request)
        return {"channels": self.backend.channels()}

    def _presence(self, request: Request) -> Awaitable[_Payload]:
        return self._members(_string(_query(request, "channel"), "channel"))

    async def _members(self, channel: str) -> _Payload:
        return {"channel": channel, "members": await self.backend.presence(channel)}

    def _history(self, request: Request) -> Awaitable[_Payload]:
        query = _query(request, "channel", "since", "limit")
        channel = _string(query, "channel")
        since = _whole(query, "since", 0, MAX_SEQ)
        limit = _whole(query, "limit", 1, MAX_HISTORY_LIMIT)
        return self.backend.history(
            channel, since, DEFAULT_HISTORY_LIMIT if limit is None else limit
        )

    def _disconnect(self, request: Request) -> _Payload:
        fields = _body(request, "user", "connectionId", "code", "reason")
        if ("user" in fields) == ("connectionId" in fields):
            raise ApiError(400, "bad_request", "give either user or connectionId")
        user = _string(fields, "user", MAX_ID_CHARS) if "user" in fields else None
        connection_id = (
            _string(fields, "connectionId", MAX_ID_CHARS) if "connectionId" in fields else None
        )
        code = fields.get("code", 1000)
        if type(code) is not int or not (code == 1000 or code in _CLOSE_CODES):
            raise ApiError(400, "bad_request", "code must be 1000 or from 4000 to 4999")
        reason = fields.get("reason", "")
        if (
            not isinstance(reason, str)
            or not is_unicode(reason)
            or len(reason.encode()) > MAX_REASON_BYTES
        ):
            raise ApiError(
                400, "bad_request", f"reason must be text of at most {MAX_REASON_BYTES} bytes"
            )
        count = self.backend.disconnect(
            user=user, connection_id=connection_id, code=code, reason=reason
        )
        # repr(): the names come from the request, and a log line must stay one line.
        whose = f"user {user!r}" if user is not None else f"connection {connection_id!r}"
        logger.info(
            "api: disconnected %d connection(s) of %s with %d",
            count,
            whose,
            code,
            extra={
                "event": "api_disconnect",
                "user": user,
                "connection_id": connection_id,
                "close_code": code,
                "close_reason": reason,
            },
        )
        return {"disconnected": count}


def _body(request: Request, *names: str) -> _Fields:
    """The JSON object of a POST, with no field but ``names``; 411, 415 or 400 otherwise."""
    # RFC 9110 §8.6: a POST "normally" sends Content-Length, even 0; without it (and without
    # Transfer-Encoding, which the HTTP layer refused) there is no body at all.
    if "Content-Length" not in request.headers:
        raise ApiError(411, "length_required", "send the body with a Content-Length")
    media_type = (request.headers.get("Content-Type") or "").partition(";")[0]
    if media_type.strip(" \t").lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")
    try:
        # RFC 8259 §8.1: JSON between systems "MUST be encoded using UTF-8".
        value = json.loads(request.body.decode())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ApiError(400, "bad_request", "the body is not JSON in UTF-8") from None
    if not isinstance(value, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    _only(value, names, "field")
    return value


def _query(request: Request, *names: str) -> dict[str, str]:
    """The parameters of a GET's query, each given once, none but ``names``; 400 otherwise."""
    try:
        parsed = parse_qs(request.query, keep_blank_values=True, errors="strict")
    except ValueError:  # percent-encoded bytes that are not UTF-8
        raise ApiError(400, "bad_request", "the query is not UTF-8") from None
    _only(parsed, names, "parameter")
    for name, values in parsed.items():
        if len(values) > 1:
            raise ApiError(400, "bad_request", f"the parameter {name} is given more than once")
    return {name: values[0] for name, values in parsed.items()}


def _only(fields: Mapping[str, object], names: tuple[str, ...], what: str) -> None:
    # A misspelt name must not be ignored: "idempotencykey" would publish twice on a retry.
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise ApiError(400, "bad_request", f"unknown {what} {unknown[0]!r}")


def _string(fields: _Fields, name: str, max_chars: int | None = None) -> str:
    """The text ``fields[name]``, required, of at most ``max_chars`` characters."""
    value = fields.get(name)
    if not isinstance(value, str) or (max_chars is not None and not 0 < len(value) <= max_chars):
        bounds = "" if max_chars is None else f" of 1 to {max_chars} characters"
        raise ApiError(400, "bad_request", f"{name} must be a string{bounds}")
    return value


def _whole(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    """The whole number ``low`` to ``high`` of the parameter ``name``; None if it is absent."""
    text = query.get(name)
    if text is None:
        return None
    # isdigit() alone takes "²"; int() alone takes "+1", " 1" and "1_0" (and 4,300 digits at most).
    digits = text.isascii() and text.isdigit() and len(text) <= len(str(high))
    if not digits or not low <= int(text) <= high:
        raise ApiError(400, "bad_request", f"{name} must be a whole number from {low} to {high}")
    return int(text)


def _error(code: str, message: str) -> _Payload:
    return {"error": code, "message": message}


def _json(status: int, payload: _Payload, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """A JSON answer (RFC 8259, UTF-8), never cached (RFC 9111 §5.2.2.5: ``no-store``)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    fields = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Connection", "close"),
        ]
    )
    for name, value in headers:
        fields.add(name, value)
    return Response(status, reason_phrase(status), fields, body)


def _for(request: Request, response: Response) -> Response:
    """``response`` as ``request`` gets it: without its body for a HEAD (RFC 9110 §9.3.2)."""
    if request.method == "HEAD":
        return Response(response.status, response.reason, response.headers)
    return response
