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
        "connectionId": ID,
        "message": "hi",
        "timestamp": TIMESTAMP,
        "seq": 7,
    }
    # The original keys come first, in the original order (clients may match the prefix).
    assert encoded.startswith('{"type":"broadcast","connectionId":')


@pytest.mark.parametrize("recovered", [True, False])
def test_history_splices_encoded_broadcasts(recovered: bool) -> None:
    items = [messages.broadcast(ID, f"m{n} ✓", TIMESTAMP, n).encode() for n in (3, 4)]
    assert json.loads(messages.history(items, EPOCH, recovered)) == {
        "type": "history",
        "messages": [json.loads(item) for item in items],
        "epoch": EPOCH,
        "recovered": recovered,
    }
    assert json.loads(messages.history([], EPOCH, recovered))["messages"] == []


def test_ack_and_errors() -> None:
    assert json.loads(messages.ack(5, "c-1")) == {"type": "ack", "seq": 5, "clientMsgId": "c-1"}
    assert json.loads(messages.ack(6, None)) == {"type": "ack", "seq": 6, "clientMsgId": None}
    assert json.loads(messages.not_persisted(5, "c-1")) == {
        "type": "error",
        "code": "not_persisted",
        "seq": 5,
        "clientMsgId": "c-1",
    }
    assert json.loads(messages.invalid_message("why")) == {
        "type": "error",
        "code": "invalid_message",
        "message": "why",
    }


PLAIN = [
    "hello",
    "",
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
    "[" * 100_000,  # too deep for the parser: still just text
]


@pytest.mark.parametrize("text", PLAIN)
def test_anything_but_an_object_with_a_string_message_is_plain_text(text: str) -> None:
    assert messages.parse(text) == messages.ChatMessage(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"message": "hi"}', messages.ChatMessage("hi")),
        ('{"message": "hi", "clientMsgId": "m-1"}', messages.ChatMessage("hi", "m-1")),
        (' {"clientMsgId": "", "message": "", "other": 1} ', messages.ChatMessage("", "")),
        (
            '{"message": "é😀", "clientMsgId": "' + "x" * 128 + '"}',
            messages.ChatMessage("é😀", "x" * 128),
        ),
    ],
)
def test_structured_messages(text: str, expected: messages.ChatMessage) -> None:
    assert messages.parse(text) == expected


@pytest.mark.parametrize("client_msg_id", ["x" * 129, 42, None, ["a"], {"id": "a"}, True], ids=repr)
def test_a_bad_client_msg_id_is_refused(client_msg_id: object) -> None:
    text = json.dumps({"message": "hi", "clientMsgId": client_msg_id})
    with pytest.raises(messages.InvalidMessage, match="at most 128 characters"):
        messages.parse(text)


def test_user_left_without_close() -> None:
    assert json.loads(messages.user_left(ID, 2)) == {
        "type": "user_left",
        "connectionId": ID,
        "totalConnections": 2,
    }


def test_user_left_with_close() -> None:
    assert json.loads(messages.user_left(ID, 0, 4000, "bye")) == {
        "type": "user_left",
        "connectionId": ID,
        "totalConnections": 0,
        "closeStatus": 4000,
        "closeReason": "bye",
    }


def test_user_left_with_code_and_no_reason() -> None:
    left = json.loads(messages.user_left(ID, 1, 1000))
    assert (left["closeStatus"], left["closeReason"]) == (1000, "")


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
    left = json.loads(messages.user_left(sender, total, 1000, reason))
    assert (left["totalConnections"], left["closeReason"]) == (total, reason)
    # What goes on the wire must be valid UTF-8.
    messages.broadcast(sender, text, TIMESTAMP, 1).encode("utf-8")
