"""The chat protocol's JSON messages: exact keys, exact values, any text round-trips."""

from __future__ import annotations

import json
import uuid

from hypothesis import given
from hypothesis import strategies as st

from server import messages

ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
TIMESTAMP = "2024-02-29 23:59:59"


def test_connection_id() -> None:
    assert json.loads(messages.connection_id(ID)) == {"connectionId": ID}


def test_welcome() -> None:
    assert json.loads(messages.welcome("Hello!")) == {"type": "welcome", "message": "Hello!"}


def test_broadcast() -> None:
    assert json.loads(messages.broadcast(ID, "hi", TIMESTAMP)) == {
        "type": "broadcast",
        "connectionId": ID,
        "message": "hi",
        "timestamp": TIMESTAMP,
    }


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
    encoded = messages.broadcast(ID, text, TIMESTAMP)
    assert text in encoded
    assert ": " not in encoded.replace(text, "")
    assert json.loads(encoded)["message"] == text


def test_characters_json_must_escape() -> None:
    text = 'quote " backslash \\ newline \n nul \x00 tab \t'
    encoded = messages.broadcast(ID, text, TIMESTAMP)
    assert "\n" not in encoded
    assert "\x00" not in encoded
    assert json.loads(encoded)["message"] == text


# Text as a WebSocket text message can carry it: any code point but the surrogates.
any_text = st.text(st.characters(exclude_categories=["Cs"]))


@given(text=any_text, reason=any_text, total=st.integers(0, 10**6))
def test_any_text_round_trips(text: str, reason: str, total: int) -> None:
    sender = str(uuid.uuid4())
    assert json.loads(messages.welcome(text))["message"] == text
    assert json.loads(messages.broadcast(sender, text, TIMESTAMP))["message"] == text
    left = json.loads(messages.user_left(sender, total, 1000, reason))
    assert (left["totalConnections"], left["closeReason"]) == (total, reason)
    # What goes on the wire must be valid UTF-8.
    messages.broadcast(sender, text, TIMESTAMP).encode("utf-8")
