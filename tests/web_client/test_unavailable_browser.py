"""The web client in a real browser while the chat cannot reach its engine (Redis): the
server answers a message or a subscribe with ``unavailable``, which is not a refusal.

No Redis here: a relay between the page and the real server (SQLite) answers the page's
next frames with ``unavailable`` itself, as the Redis engine does during an outage, and
holds what the page sends next, so that the test sees the message wait, pending, and go
again with the same clientMsgId.
"""

from __future__ import annotations

import json
from typing import Any

from playwright.sync_api import Locator, Page, WebSocketRoute, expect

from tests.web_client.conftest import ChatServer, Pages
from tests.web_client.helpers import (
    Relay,
    choose_name,
    connected,
    conversation,
    event_texts,
    eventually,
    own,
    send,
    texts,
)


class OutageRelay(Relay):
    """A relay that answers the page's next ``refuse`` subscribes and messages with
    ``unavailable`` (they never reach the server), then holds what the page sends next
    until ``flush_sent()``."""

    def __init__(self, page: Page) -> None:
        super().__init__(page)
        self.refuse = 0
        self.refused: list[dict[str, Any]] = []

    def waiting_frames(self, kind: str) -> list[dict[str, Any]]:
        """The frames of this type that the page sent since, held."""
        frames = [json.loads(message) for _, message in self.waiting]
        return [frame for frame in frames if frame.get("type") == kind]

    def sent_again(self, kind: str) -> None:
        """Asserts that the last frame of this type refused was sent again (and held)."""
        refused = [frame for frame in self.refused if frame["type"] == kind]
        assert self.waiting_frames(kind) == refused[-1:]

    def _to_server(self, server: WebSocketRoute, message: str | bytes) -> None:
        frame = json.loads(message)
        if self.refuse == 0 or frame.get("type") not in ("subscribe", "publish", "direct"):
            super()._to_server(server, message)
            return
        self.refuse -= 1
        self.refused.append(frame)
        self.hold_sent = self.refuse == 0
        error = {
            "type": "error",
            "code": "unavailable",
            "message": "the chat cannot reach its engine: send it again",
            "clientMsgId": frame.get("clientMsgId"),
            "channel": frame.get("channel"),
        }
        self.routes[-1].send(json.dumps(error))


def status_text(page: Page) -> Locator:
    return page.get_by_test_id("status-text")


def test_unavailable_keeps_the_message_pending_and_sends_it_again(
    pages: Pages, chat_server: ChatServer
) -> None:
    page = pages.new()
    relay = OutageRelay(page)
    page.goto(chat_server.http_url)
    choose_name(page, "Ann")
    connected(page)

    # A subscribe refused: the channel stays joined, subscribed to again later.
    relay.refuse = 1
    page.fill("#join-name", "ops")
    page.press("#join-name", "Enter")
    expect(status_text(page)).to_have_text("Chat unavailable: will retry")
    eventually(page, lambda: relay.sent_again("subscribe"))
    relay.flush_sent()
    expect(conversation(page, "ops")).to_have_attribute("data-state", "subscribed")
    expect(status_text(page)).to_have_text("Connected")

    # A message refused: pending, not "not sent"; then the same frame again, once.
    relay.refuse = 1
    message = send(page, "during the outage")
    expect(status_text(page)).to_have_text("Chat unavailable: will retry")
    eventually(page, lambda: relay.sent_again("publish"))
    expect(message).to_have_attribute("data-status", "pending")
    (refused,) = (frame for frame in relay.refused if frame["type"] == "publish")
    assert relay.waiting_frames("publish") == [refused]  # the same clientMsgId, once
    relay.flush_sent()
    expect(message).to_have_attribute("data-status", "confirmed")
    expect(texts(own(page))).to_have_text(["during the outage"])
    expect(status_text(page)).to_have_text("Connected")
    expect(event_texts(page, "unavailable")).to_have_count(2)  # once for each outage
    acks = [item for item in relay.received if item.get("type") == "ack"]
    assert [ack["clientMsgId"] for ack in acks] == [refused["clientMsgId"]]
    assert [frame for frame in relay.sent if frame.get("type") == "publish"] == [refused]
