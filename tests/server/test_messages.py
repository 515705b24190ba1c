"""The chat protocol's JSON messages: exact keys, exact values, any text round-trips."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server import messages

ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
EPOCH = "1b4e28ba-2fa1-41d2-883f-0016d3cca427"
TIMESTAMP = "2024-02-29 23:59:59"


def test_connection_id() -> None:
    assert json.loads(messages.connection_id(ID)) == {"connectionId": ID}


def test_welcome() -> None:
    assert json.loads(messages.welcome("Hello!", EPOCH)) == {
        "type": "welcome",
        "message": "Hello!",
        "epoch": EPOCH,
    }


def test_broadcast() -> None:
    encoded = messages.broadcast(ID, "hi", TIMESTAMP, 7)
    assert json.loads(encoded) == {
        "type": "broadcast",
        "channel": "general",
        "connectionId": ID,
        "message": "hi",
        "timestamp": TIMESTAMP,
        "seq": 7,
    }
    # The original keys come first, in the original order (clients may match the prefix).
    assert encoded.startswith('{"type":"broadcast","channel":"general","connectionId":')


@pytest.mark.parametrize("recovered", [True, False])
def test_history_splices_encoded_broadcasts(recovered: bool) -> None:
    items = [messages.broadcast(ID, f"m{n} ✓", TIMESTAMP, n).encode() for n in (3, 4)]
    assert json.loads(messages.history(items, EPOCH, recovered)) == {
        "type": "history",
        "channel": "general",
        "messages": [json.loads(item) for item in items],
        "epoch": EPOCH,
        "recovered": recovered,
    }
    assert json.loads(messages.history([], EPOCH, recovered))["messages"] == []


def test_ack_and_errors() -> None:
    assert json.loads(messages.ack(5, "c-1")) == {
        "type": "ack",
        "channel": "general",
        "seq": 5,
        "clientMsgId": "c-1",
    }
    assert json.loads(messages.ack(6, None)) == {
        "type": "ack",
        "channel": "general",
        "seq": 6,
        "clientMsgId": None,
    }
    assert json.loads(messages.not_persisted(5, "c-1")) == {
        "type": "error",
        "code": "not_persisted",
        "channel": "general",
        "seq": 5,
        "clientMsgId": "c-1",
    }
    assert json.loads(messages.error("invalid_message", "why", "c-2")) == {
        "type": "error",
        "code": "invalid_message",
        "message": "why",
        "clientMsgId": "c-2",
    }
    assert json.loads(messages.error("not_subscribed", "why", None, "room")) == {
        "type": "error",
        "code": "not_subscribed",
        "message": "why",
        "channel": "room",
        "clientMsgId": None,
    }
    assert json.loads(messages.rate_limited(250, None)) == {
        "type": "error",
        "code": "rate_limited",
        "retryAfterMs": 250,
        "clientMsgId": None,
    }


PLAIN = [
    "hello",
    "42",
    '"a JSON string"',
    "[1, 2]",
    '["message", "x"]',
    "null",
    "{}",
    '{"text": "no message key"}',
    '{"message": 42}',
    '{"message": null, "clientMsgId": "x"}',
    '{"message": ["x"]}',
    '{"message": "x", "n": NaN}',  # NaN is not JSON
    '{"message": "x"',  # cut short
    "[" * 10_000,  # too deep for the parser: still just text
]


@pytest.mark.parametrize("text", PLAIN, ids=lambda text: text[:30])
def test_anything_but_an_object_with_a_string_message_is_plain_text(text: str) -> None:
    assert messages.parse(text) == messages.ChatMessage(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"message": "hi"}', messages.ChatMessage("hi")),
        ('{"message": "hi", "clientMsgId": "m-1"}', messages.ChatMessage("hi", "m-1")),
        (' {"clientMsgId": "", "message": "a", "other": 1} ', messages.ChatMessage("a", "")),
        (
            '{"message": "é😀", "clientMsgId": "' + "x" * 128 + '"}',
            messages.ChatMessage("é😀", "x" * 128),
        ),
        ('{"message": "tab\\tand\\nnewline"}', messages.ChatMessage("tab\tand\nnewline")),
    ],
)
def test_structured_messages(text: str, expected: messages.ChatMessage) -> None:
    assert messages.parse(text) == expected


@pytest.mark.parametrize(
    "client_msg_id",
    ["x" * 129, 42, None, ["a"], {"id": "a"}, True, "\ud800", "a\nb", "\x00"],
    ids=repr,
)
def test_a_bad_client_msg_id_is_refused(client_msg_id: object) -> None:
    text = json.dumps({"message": "hi", "clientMsgId": client_msg_id})
    with pytest.raises(messages.InvalidMessage, match="at most 128 characters") as exc_info:
        messages.parse(text)
    assert exc_info.value.client_msg_id is None  # there is no id to name


# What the text of a message may be; the error names the message's clientMsgId.
REFUSED = [
    ("", "must not be empty"),
    (" \t\n ", "must not be empty"),
    ("\u3000", "must not be empty"),  # an ideographic space is a space too
    ("\x01" * 10, "control characters other than tab and newline"),
    ("nul\x00", "control characters other than tab and newline"),
    ("carriage\rreturn", "control characters other than tab and newline"),
    ("\x1b[2J clear screen", "control characters other than tab and newline"),
    ("lone \ud800 surrogate", "valid Unicode"),
    ("\udfff", "valid Unicode"),
]


@pytest.mark.parametrize(("text", "why"), REFUSED, ids=repr)
def test_text_that_is_not_a_message_is_refused(text: str, why: str) -> None:
    for frame in (json.dumps({"message": text, "clientMsgId": "m-9"}),):
        with pytest.raises(messages.InvalidMessage, match=why) as exc_info:
            messages.parse(frame)
        assert exc_info.value.client_msg_id == "m-9"
    if "\ud800" not in text and "\udfff" not in text:  # a frame of text is valid UTF-8
        with pytest.raises(messages.InvalidMessage, match=why):
            messages.parse(text)


def test_the_length_is_bounded_in_characters() -> None:
    assert messages.parse("é" * 10, max_chars=10).text == "é" * 10
    with pytest.raises(messages.InvalidMessage, match="at most 10 characters"):
        messages.parse("x" * 11, max_chars=10)


@pytest.mark.parametrize(
    ("text", "size"),
    [("abc", 3), ("é", 2), ("😀", 4), ('"', 2), ("\\", 2), ('a"\\é', 7)],
)
def test_the_size_is_what_the_broadcast_carries(text: str, size: int) -> None:
    # The bytes of the text in the broadcast's JSON: UTF-8, with " and \ escaped.
    encoded = messages.broadcast(ID, text, TIMESTAMP, 1).encode()
    assert encoded.count(json.dumps(text, ensure_ascii=False)[1:-1].encode()) == 1
    assert len(json.dumps(text, ensure_ascii=False).encode()) - 2 == size
    assert messages.parse(text, max_bytes=size).text == text
    with pytest.raises(messages.InvalidMessage, match=f"at most {size - 1} bytes"):
        messages.parse(text, max_bytes=size - 1)


def test_by_default_a_message_costs_every_client_at_most_64_kib() -> None:
    # The attack: 1 MiB of U+0001 was a 6 MiB broadcast. Now the worst text that
    # passes is 16,384 characters of 4 bytes each.
    assert (messages.MAX_TEXT_CHARS, messages.MAX_TEXT_BYTES) == (16_384, 65_536)
    worst = "😀" * messages.MAX_TEXT_CHARS
    assert messages.parse(worst).text == worst
    assert len(messages.broadcast(ID, worst, TIMESTAMP, 1).encode()) < 65_536 + 200
    with pytest.raises(messages.InvalidMessage):
        messages.parse('"' * (messages.MAX_TEXT_CHARS + 1))


DEPARTURE = messages.Departure(ID)


def test_user_left_without_close() -> None:
    assert json.loads(messages.user_left(DEPARTURE, 2)) == {
        "type": "user_left",
        "channel": "general",
        "connectionId": ID,
        "totalConnections": 2,
    }


def test_user_left_with_close_and_user() -> None:
    assert json.loads(messages.user_left(messages.Departure(ID, "ann", 4000, "bye"), 0)) == {
        "type": "user_left",
        "channel": "general",
        "connectionId": ID,
        "user": "ann",
        "totalConnections": 0,
        "closeStatus": 4000,
        "closeReason": "bye",
    }


def test_user_left_with_code_and_no_reason() -> None:
    left = json.loads(messages.user_left(messages.Departure(ID, None, 1000), 1))
    assert (left["closeStatus"], left["closeReason"]) == (1000, "")


def test_users_left() -> None:
    other = str(uuid.uuid4())
    departures = [DEPARTURE, messages.Departure(other, "bo", 1001, "tab closed")]
    assert json.loads(messages.users_left(departures, 7, 3)) == {
        "type": "users_left",
        "channel": "general",
        "users": [
            {"connectionId": ID},
            {"connectionId": other, "user": "bo", "closeStatus": 1001, "closeReason": "tab closed"},
        ],
        "more": 7,
        "totalConnections": 3,
    }


def test_text_is_sent_as_is() -> None:
    """Compact UTF-8, no ``\\uXXXX`` for what JSON may carry literally; a few bytes per char."""
    text = "é 中 😀 <script>"
    encoded = messages.broadcast(ID, text, TIMESTAMP, 1)
    assert text in encoded
    assert ": " not in encoded.replace(text, "")
    assert json.loads(encoded)["message"] == text


def test_characters_json_must_escape() -> None:
    text = 'quote " backslash \\ newline \n nul \x00 tab \t'
    encoded = messages.broadcast(ID, text, TIMESTAMP, 1)
    assert "\n" not in encoded
    assert "\x00" not in encoded
    assert json.loads(encoded)["message"] == text


# Text as a WebSocket text message can carry it: any code point but the surrogates.
any_text = st.text(st.characters(exclude_categories=["Cs"]))


@given(text=any_text, reason=any_text, total=st.integers(0, 10**6))
def test_any_text_round_trips(text: str, reason: str, total: int) -> None:
    sender = str(uuid.uuid4())
    assert json.loads(messages.welcome(text, EPOCH))["message"] == text
    assert json.loads(messages.broadcast(sender, text, TIMESTAMP, 1))["message"] == text
    left = json.loads(messages.user_left(messages.Departure(sender, None, 1000, reason), total))
    assert (left["totalConnections"], left["closeReason"]) == (total, reason)
    # What goes on the wire must be valid UTF-8.
    messages.broadcast(sender, text, TIMESTAMP, 1).encode("utf-8")
