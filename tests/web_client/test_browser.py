"""The web client in a real browser (Debian's Chromium) against the real server: one
conversation (general), the status line, the outbox's confirmations and refusals, resume.

Every wait is on a condition (playwright's ``expect`` retries until it holds),
never a fixed sleep. Where a test shows that something did *not* happen, it
waits for a later event that would have come after it.
"""

from __future__ import annotations

import json
import re
import socket
import unicodedata
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from tests.web_client.conftest import WEB_CLIENT, ChatServer, Pages
from tests.web_client.helpers import (
    UUID,
    XSS,
    Relay,
    chat_client,
    choose_name,
    click,
    connected,
    conversation,
    event_texts,
    events,
    eventually,
    messages,
    open_chat,
    open_file,
    others,
    own,
    send,
    seqs,
    status,
    texts,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_served_page_connects_by_itself_and_asks_for_a_name(
    pages: Pages, chat_server: ChatServer
) -> None:
    page = pages.new()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(chat_server.http_url)

    # Nobody clicks Connect: the page dials the server that served it, and says so quietly.
    expect(status(page)).to_have_attribute("data-state", "open")
    expect(page.get_by_test_id("status-text")).to_have_text("Connected")
    expect(page.get_by_test_id("details")).to_be_hidden()
    expect(page.locator("#url")).to_have_value(chat_server.ws_url)
    # Before a name is chosen, the name prompt stands in for the composer.
    expect(page.get_by_test_id("name-form")).to_be_visible()
    expect(page.get_by_test_id("composer")).to_be_hidden()
    expect(page.get_by_test_id("name")).to_be_focused()
    client_id = page.evaluate("() => JSON.parse(localStorage.getItem('chat.clientId'))")
    assert UUID.match(client_id)
    assert sockets == [f"{chat_server.ws_url}?clientId={client_id}"]

    # A name the server would refuse is refused here.
    for bad in ("   ", "x" * 33, "tab\there"):
        page.fill("#name", bad)
        page.press("#name", "Enter")
        expect(page.get_by_test_id("name-note")).to_be_visible()
        expect(page.get_by_test_id("composer")).to_be_hidden()
    choose_name(page, "Ann Émile")
    expect(page.get_by_test_id("me-name")).to_contain_text("Ann Émile")
    assert page.evaluate("() => JSON.parse(localStorage.getItem('chat.name'))") == "Ann Émile"
    # The server knows the name at once (hello): general's member list shows it, unverified.
    me = page.locator(f'#members > li[data-key="client:{client_id}"]')
    expect(me.get_by_test_id("member-name")).to_have_text("Ann Émile")
    expect(me.get_by_test_id("unverified")).to_be_visible()
    expect(me.get_by_test_id("you")).to_be_visible()

    # The details, on demand: the last connection events, none of them in the chat.
    click(page, status(page))
    expect(page.get_by_test_id("details")).to_be_visible()
    expect(event_texts(page, "connecting")).to_have_text([f"Connecting to {sockets[0]}"])
    # Chromium offers permessage-deflate and the server accepts it (its --compression on).
    expect(event_texts(page, "connected")).to_have_text(
        [f"Connected to {sockets[0]}, compressed (permessage-deflate)"]
    )
    expect(messages(page)).to_have_count(0)

    # A reload keeps the identity, and the next connection carries the name.
    page.reload()
    connected(page)
    expect(page.get_by_test_id("composer")).to_be_visible()
    assert sockets[1] == f"{chat_server.ws_url}?clientId={client_id}&name=Ann+%C3%89mile"


def newer_than_the_server(page: Page) -> str:
    """A character the browser's Unicode has and the server's Python does not know yet: a
    name with it passes the page's check and not the server's."""
    for code in (0x1FAE8, 0x1FAE9, 0x1FAEA, 0x1FAEF, 0x1FABA):
        char = chr(code)
        browser_knows = page.evaluate("c => !/\\p{Cn}/u.test(c)", char)
        if unicodedata.category(char) == "Cn" and browser_knows:
            return char
    pytest.skip("the browser and the server's Python know the same Unicode characters")


def test_a_name_the_server_refuses_is_asked_for_again(
    pages: Pages, chat_server: ChatServer
) -> None:
    page = open_chat(pages, chat_server)
    name = f"Ann {newer_than_the_server(page)}"
    note = page.get_by_test_id("name-note")
    # Chosen while connected: hello is refused (bad_request), the prompt comes back.
    page.fill("#name", name)
    page.press("#name", "Enter")
    expect(note).to_have_text(
        f"The server refused the name \N{LEFT DOUBLE QUOTATION MARK}{name}"
        "\N{RIGHT DOUBLE QUOTATION MARK}: choose another one."
    )
    expect(page.get_by_test_id("name-form")).to_be_visible()
    assert page.evaluate("() => localStorage.getItem('chat.name')") is None

    # Kept from before: the handshake with it is refused (400, which a page is not told); the
    # page tries again without it, gets in, and asks for another one.
    page.evaluate("n => localStorage.setItem('chat.name', JSON.stringify(n))", name)
    page.reload()
    connected(page)
    expect(event_texts(page, "refused")).to_have_text(
        [
            "The server refused the connection: trying again without the name.",
            "The server refused the name: it is asked for again.",
        ]
    )
    expect(note).to_contain_text("The server refused the name")
    expect(page.get_by_test_id("token-card")).to_be_hidden()
    choose_name(page, "Ann")
    expect(page.locator("#members > li").get_by_test_id("member-name")).to_have_text(["Ann"])


def test_the_page_opened_as_a_file_waits_for_connect(pages: Pages, chat_server: ChatServer) -> None:
    # A page opened as a file has the Origin "null", refused unless allowed (origin.py).
    chat_server.stop()
    chat_server.start(chat_server.port, args=["--allowed-origins", "null"])
    served = open_chat(pages, chat_server, "Sam")
    local, sockets = pages.new(), []
    local.on("websocket", lambda ws: sockets.append(ws.url))
    local.goto((WEB_CLIENT / "index.html").as_uri())
    expect(status(local)).to_have_attribute("data-state", "offline")
    expect(local.get_by_test_id("details")).to_be_visible()
    expect(local.locator("#url")).to_have_value("ws://localhost:5000")
    expect(local.locator("#disconnect")).to_be_disabled()
    choose_name(local, "Lou")
    assert sockets == []

    # Connect is what makes it dial: its socket is the first and only one.
    local.fill("#url", chat_server.ws_url)
    click(local, "#connect")
    connected(local)
    assert len(sockets) == 1
    assert sockets[0].startswith(chat_server.ws_url)
    send(local, "from the file page")
    expect(texts(others(served))).to_have_text(["from the file page"])


def test_a_message_reaches_the_other_page_and_shows_once_on_its_own(
    pages: Pages, chat_server: ChatServer
) -> None:
    a, b = open_chat(pages, chat_server, "Ann"), open_chat(pages, chat_server, "Bob")

    mine = send(a, "hello from A")
    expect(mine).to_have_attribute("data-status", "confirmed")
    expect(mine.get_by_test_id("delivery")).to_have_text("✓")
    expect(mine.get_by_test_id("sender")).to_have_text("You")
    seq = mine.get_attribute("data-seq")
    assert seq is not None

    received = others(b)
    expect(received).to_have_count(1)
    expect(received).to_have_attribute("data-seq", seq)
    expect(received.get_by_test_id("sender")).to_have_text("Ann")
    # A chosen name is the sender's claim: marked as unverified.
    expect(received.get_by_test_id("unverified")).to_be_visible()
    expect(received.get_by_test_id("text")).to_have_text("hello from A")
    expect(received.get_by_test_id("time")).to_have_text(re.compile(r"^\d\d:\d\d$"))
    expect(received.get_by_test_id("time")).to_have_attribute(
        "title", re.compile(r"\(server time \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)$")
    )
    # Today's messages are under one separator.
    expect(b.get_by_test_id("day")).to_have_text(["Today"])
    # B answers; messages reach A in order, so an echo of A's own message
    # would be in A's view before the answer.
    send(b, "hello from B")
    expect(texts(others(a))).to_have_text(["hello from B"])
    expect(texts(own(a))).to_have_text(["hello from A"])
    expect(own(b)).to_have_count(1)
    # Anonymous people cannot write direct messages: no name is a link, no such section.
    for page in (a, b):
        expect(page.locator(".sender-link")).to_have_count(0)
        expect(page.get_by_test_id("dm-section")).to_be_hidden()


def test_markup_in_messages_and_names_is_shown_as_text(
    pages: Pages, chat_server: ChatServer
) -> None:
    a, b = open_chat(pages, chat_server, "<b>x</b>"), open_chat(pages, chat_server, "Bob")

    send(a, XSS)
    send(a, "after")

    expect(texts(others(b))).to_have_text([XSS, "after"])
    expect(others(b).first.get_by_test_id("sender")).to_have_text("<b>x</b>")
    expect(b.get_by_test_id("member-name")).to_have_text(["<b>x</b>", "Bob"])
    expect(texts(own(a))).to_have_text([XSS, "after"])
    # No element was created, so no onerror handler can ever fire.
    for page in (a, b):
        assert page.locator("img, b").count() == 0
        assert page.locator("#log *:not(li, time, div, span, p, button)").count() == 0
    assert pages.dialogs == []


def test_sending_needs_text_and_enter_sends(pages: Pages, chat_server: ChatServer) -> None:
    a, b = open_chat(pages, chat_server, "Ann"), open_chat(pages, chat_server, "Bob")

    for blank in ("", "   "):
        a.fill("#message", blank)
        a.press("#message", "Enter")
    click(a, "#send")
    send(a, "first real message")
    # Shift+Enter starts a new line; Enter sends both lines as one message.
    a.locator("#message").press_sequentially("line 1")
    a.press("#message", "Shift+Enter")
    a.locator("#message").press_sequentially("line 2")
    a.press("#message", "Enter")

    # Nothing blank went out: the first message B gets is the real one.
    expect(texts(others(b))).to_have_text(["first real message", "line 1\nline 2"])
    expect(texts(own(a))).to_have_text(["first real message", "line 1\nline 2"])
    expect(a.locator("#message")).to_have_value("")


def test_the_status_line_reconnects_and_disconnect_stays_offline(
    pages: Pages, chat_server: ChatServer
) -> None:
    a, b = open_chat(pages, chat_server, "Ann"), open_chat(pages, chat_server, "Bob")
    port = chat_server.port

    # Disconnect is a choice: no reconnect follows.
    click(b, status(b))
    click(b, "#disconnect")
    expect(status(b)).to_have_attribute("data-state", "offline")
    expect(b.get_by_test_id("status-text")).to_have_text("Offline")
    expect(event_texts(b, "closed")).to_have_text([re.compile(r"^Disconnected: 1000 Normal")])

    assert chat_server.stop() == 0

    # A lost connection: "reconnecting in N s", quietly, and the page keeps trying.
    expect(a.get_by_test_id("status-text")).to_have_text(re.compile(r"^Reconnecting in \d+ s$"))
    expect(status(a)).to_have_attribute("data-state", "waiting")
    expect(event_texts(a, "closed").first).to_have_text(
        re.compile(r"^Connection closed: 100[16] (Going away|Connection lost)")
    )
    expect(event_texts(a, "reconnect").nth(1)).to_contain_text("(attempt 2)")
    # The composer stays usable; the message waits in the outbox.
    waiting = send(a, "typed while offline")
    expect(waiting).to_have_attribute("data-status", "pending")
    expect(a.get_by_test_id("unsent")).to_have_text("· 1 unsent")
    assert events(b, "reconnect").count() == 0

    chat_server.start(port)

    connected(a)
    expect(waiting).to_have_attribute("data-status", "confirmed", timeout=20_000)
    expect(a.get_by_test_id("unsent")).to_be_hidden()
    expect(status(b)).to_have_attribute("data-state", "offline")
    click(b, "#connect")
    connected(b)
    expect(texts(others(b))).to_have_text(["typed while offline"])


def test_a_dropped_page_resumes_and_shows_every_message_once(
    pages: Pages, chat_server: ChatServer
) -> None:
    # 60 messages at once are over the default rate limit's burst: this test is about resuming.
    chat_server.stop()
    chat_server.start(args=["--rate-limit", "0"])
    a, b = pages.new(), open_chat(pages, chat_server, "Bob")
    relay = Relay(a)
    a.goto(chat_server.http_url)
    choose_name(a, "Ann")
    connected(a)
    before = chat_client(chat_server.ws_url, ["before 1", "before 2"])
    expect(texts(others(a))).to_have_text(["before 1", "before 2"])
    expect(send(a, "mine")).to_have_attribute("data-status", "confirmed")
    # This one reaches the server, which broadcasts it, but its ack never reaches the page.
    relay.drop_acks = True
    lost = send(a, "ack lost")
    expect(texts(others(b))).to_have_text(["before 1", "before 2", "mine", "ack lost"])
    expect(lost).to_have_attribute("data-status", "pending")
    last_seen = int(own(a).first.get_attribute("data-seq") or "")
    assert last_seen > before[-1]

    relay.drop_acks = False
    relay.hold = True
    relay.drop()
    expect(status(a)).to_have_attribute("data-state", "open")  # the reconnect, held
    missed = chat_client(chat_server.ws_url, [f"missed {n}" for n in range(60)])
    relay.release()

    expect(event_texts(a, "resumed")).to_have_text(
        [f"#general: resumed after message #{last_seen}, 61 missed messages."]
    )
    assert relay.urls[1] == (
        f"{chat_server.ws_url}?since={last_seen}&epoch={epoch_of(relay.urls[1])}"
        f"&clientId={client_id(a)}&name=Ann"
    )
    expected = ["before 1", "before 2", *(f"missed {n}" for n in range(60))]
    expect(texts(others(a))).to_have_text(expected)
    # "ack lost" was sent again with its clientMsgId: the server knew it (duplicate), and
    # the page shows it once, confirmed, where the history put it.
    expect(texts(own(a))).to_have_text(["mine", "ack lost"])
    expect(own(a).last).to_have_attribute("data-status", "confirmed")
    resent = [m for m in relay.sent if m.get("message") == "ack lost"]
    assert len(resent) == 2
    assert resent[0]["clientMsgId"] == resent[1]["clientMsgId"]
    after = chat_client(chat_server.ws_url, ["after"])
    expect(texts(others(a))).to_have_text([*expected, "after"])
    shown = seqs(a)
    assert shown == sorted(set(shown))
    assert shown[: len(before)] == before
    assert shown[-61:] == [*missed, *after]
    # B saw "ack lost" once.
    expect(texts(others(b))).to_have_text(
        ["before 1", "before 2", "mine", "ack lost", *expected[2:], "after"]
    )


def epoch_of(url: str) -> str:
    match = re.search(r"[?&]epoch=([0-9a-f-]+)", url)
    assert match is not None, url
    return match[1]


def client_id(page: Page) -> str:
    value: str = page.evaluate("() => JSON.parse(localStorage.getItem('chat.clientId'))")
    return value


def test_a_new_database_resets_the_view(pages: Pages, chat_server: ChatServer) -> None:
    page = open_chat(pages, chat_server, "Ann")
    chat_client(chat_server.ws_url, ["old 1", "old 2"])
    mine = send(page, "old mine")
    expect(texts(others(page))).to_have_text(["old 1", "old 2"])
    expect(mine).to_have_attribute("data-status", "confirmed")
    seq = mine.get_attribute("data-seq")
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))

    port = chat_server.port
    assert chat_server.stop() == 0
    chat_server.start(port, db="other.db")
    chat_client(chat_server.ws_url, ["new 1"])

    expect(event_texts(page, "reset")).to_contain_text(
        [f"#general: could not resume after message #{seq}"], timeout=15_000
    )
    expect(page.get_by_test_id("notice")).to_contain_text("could not be restored")
    # It asked to resume: every attempt's URL had since= and epoch=.
    assert sockets
    assert all(f"?since={seq}&epoch=" in url for url in sockets)
    expect(texts(messages(page))).to_have_text(["new 1"])
    expect(send(page, "new mine")).to_have_attribute("data-seq", "2")


# Against a scripted server: the client's side of the protocol, step by step.

EPOCH = "e0000000000000000000000000000001"
OTHER = "abcdef12-0000-4000-8000-000000000000"


def chat_item(
    seq: int,
    text: str,
    sender: str = OTHER,
    timestamp: str = "2024-01-02 12:04:05",
    channel: str = "general",
    **more: str,
) -> dict[str, object]:
    """A broadcast, as the server sends it live and in a history."""
    return {
        "type": "broadcast",
        "channel": channel,
        "connectionId": sender,
        "message": text,
        "timestamp": timestamp,
        "seq": seq,
        **more,
    }


def history(items: list[dict[str, object]], *, epoch: str = EPOCH, recovered: bool = False) -> str:
    return json.dumps(
        {
            "type": "history",
            "channel": "general",
            "messages": items,
            "epoch": epoch,
            "recovered": recovered,
        }
    )


class Scripted:
    """Answers each connection of the page as the chat server greets; records what it got."""

    def __init__(self, page: Page, replays: list[tuple[str, str]] | None = None) -> None:
        self.routes: list[WebSocketRoute] = []
        self.urls: list[str] = []
        self.received: list[dict[str, Any]] = []
        self.replays = replays or []
        page.route_web_socket(re.compile(r"^wss?://"), self._handler)

    def _handler(self, ws: WebSocketRoute) -> None:
        n = len(self.routes)
        self.routes.append(ws)
        self.urls.append(ws.url)
        ws.on_message(lambda message: self.received.append(json.loads(message)))
        epoch, replay = self.replays[n] if n < len(self.replays) else (EPOCH, history([]))
        ws.send(json.dumps({"connectionId": f"0000000{n}-0000-4000-8000-000000000000"}))
        ws.send(json.dumps({"type": "welcome", "message": "hi", "epoch": epoch}))
        ws.send(replay)

    def send(self, message: dict[str, object]) -> None:
        self.routes[-1].send(json.dumps(message))

    def publishes(self) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") in ("publish", "direct")]


def scripted_page(
    pages: Pages, replays: list[tuple[str, str]] | None = None
) -> tuple[Page, Scripted]:
    page = open_file(pages)
    script = Scripted(page, replays)
    choose_name(page, "Me")
    page.fill("#url", "ws://chat.test/room?x=1")
    click(page, "#connect")
    connected(page)
    return page, script


def test_history_acks_and_resume_against_a_scripted_server(pages: Pages) -> None:
    first = history([chat_item(1, "one"), chat_item(2, "two")])
    # The resume: seq 3 is shown already.
    resumed = history([chat_item(3, "three"), chat_item(7, "seven")], recovered=True)
    # Another database: the view starts again.
    fresh = history([chat_item(1, "fresh")], epoch="e2")
    page, script = scripted_page(pages, [(EPOCH, first), (EPOCH, resumed), ("e2", fresh)])
    expect(texts(others(page))).to_have_text(["one", "two"])
    assert seqs(page) == [1, 2]

    script.send(chat_item(3, "three"))
    script.send(chat_item(2, "two"))  # a duplicate is not shown
    script.send(chat_item(4, "four"))
    expect(texts(others(page))).to_have_text(["one", "two", "three", "four"])

    # One's own message goes out as a publish with a clientMsgId; the ack confirms it.
    mine = send(page, "mine")
    expect(mine.get_by_test_id("delivery")).to_have_text("sending…")
    expect(mine).to_have_attribute("data-status", "pending")
    sent = script.publishes()[-1]
    assert set(sent) == {"type", "channel", "message", "clientMsgId"}
    assert (sent["type"], sent["channel"], sent["message"]) == ("publish", "general", "mine")
    assert UUID.match(sent["clientMsgId"])
    script.send({"type": "ack", "channel": "general", "seq": 5, "clientMsgId": sent["clientMsgId"]})
    expect(mine).to_have_attribute("data-status", "confirmed")
    expect(mine).to_have_attribute("data-seq", "5")
    expect(mine.get_by_test_id("delivery")).to_have_text("✓")

    # Another: the connection drops before its ack. It stays pending, and goes again.
    lost = send(page, "lost ack")
    lost_id = script.publishes()[-1]["clientMsgId"]
    script.routes[0].close(code=1012, reason="restart")
    expect(status(page)).to_have_attribute("data-state", "waiting")
    expect(lost).to_have_attribute("data-status", "pending")
    connected(page)
    # ... the ack of "mine" (seq 5) was the highest seq seen.
    assert script.urls[1].startswith(f"ws://chat.test/room?x=1&since=5&epoch={EPOCH}&clientId=")
    expect(event_texts(page, "resumed")).to_have_text(
        ["#general: resumed after message #5, 2 missed messages."]
    )
    expect(texts(others(page))).to_have_text(["one", "two", "three", "four", "seven"])
    again = script.publishes()[-1]
    assert again == {
        "type": "publish",
        "channel": "general",
        "message": "lost ack",
        "clientMsgId": lost_id,
    }
    script.send(
        {"type": "ack", "channel": "general", "seq": 6, "clientMsgId": lost_id, "duplicate": True}
    )
    expect(lost).to_have_attribute("data-status", "confirmed")
    assert seqs(page) == [1, 2, 3, 4, 5, 6, 7]

    script.routes[1].close(code=1001)
    expect(event_texts(page, "reset")).to_have_text(
        [re.compile(r"^#general: could not resume after message #7 .* showing its latest 1\.$")]
    )
    assert script.urls[2].startswith(f"ws://chat.test/room?x=1&since=7&epoch={EPOCH}&")
    expect(texts(messages(page))).to_have_text(["fresh"])
    script.send(chat_item(2, "after the reset"))
    expect(texts(messages(page))).to_have_text(["fresh", "after the reset"])


def test_days_are_separated_and_a_senders_messages_grouped(pages: Pages) -> None:
    items = [
        chat_item(1, "monday 1", timestamp="2024-01-01 12:00:00"),
        chat_item(2, "monday 2", timestamp="2024-01-01 12:01:00"),
        chat_item(3, "tuesday", timestamp="2024-01-02 12:00:00"),
        chat_item(4, "named", timestamp="2024-01-02 12:00:30", clientId=OTHER, name="Zoé"),
        chat_item(5, "user", timestamp="2024-01-02 12:00:40", user="carol"),
    ]
    page, _ = scripted_page(pages, [(EPOCH, history(items))])
    expect(texts(messages(page))).to_have_text([str(item["message"]) for item in items])
    days = page.get_by_test_id("day")
    expect(days).to_have_count(2)
    expect(days.first).to_have_attribute("data-day", "2024-01-01")
    expect(days.last).to_have_attribute("data-day", "2024-01-02")
    expect(days.first).to_have_text(re.compile(r"2024"))
    order = page.locator("#log > li").evaluate_all(
        "ls => ls.map(l => l.dataset.day || l.dataset.seq)"
    )
    assert order == ["2024-01-01", "1", "2", "2024-01-02", "3", "4", "5"]
    # The second message of a sender within minutes shares the first one's header.
    expect(messages(page).nth(1)).to_have_attribute("data-continued", "true")
    expect(messages(page).nth(2)).not_to_have_attribute("data-continued", "true")
    # A bare connection is a guest; a chosen name is unverified; a user is plain.
    senders = messages(page).get_by_test_id("sender")
    expect(senders.nth(0)).to_have_text("guest abcdef12")
    expect(senders.nth(3)).to_have_text("Zoé")
    expect(senders.nth(4)).to_have_text("carol")
    expect(messages(page).nth(3).get_by_test_id("unverified")).to_have_count(1)
    expect(messages(page).nth(4).get_by_test_id("unverified")).to_have_count(0)


def test_refused_messages_fail_and_a_rate_limit_waits(pages: Pages) -> None:
    page, script = scripted_page(pages)

    send(page, "too fast")
    send(page, "odd")
    send(page, "elsewhere")
    fast, odd, elsewhere = (m["clientMsgId"] for m in script.publishes())
    script.send(
        {"type": "error", "code": "rate_limited", "retryAfterMs": 1500, "clientMsgId": fast}
    )
    reason = "a message must not contain control characters other than tab and newline"
    script.send({"type": "error", "code": "invalid_message", "message": reason, "clientMsgId": odd})
    script.send(
        {
            "type": "error",
            "code": "not_subscribed",
            "message": "subscribe to general first",
            "channel": "general",
            "clientMsgId": elsewhere,
        }
    )
    mine = own(page)
    # Refused: out of the outbox, "not sent" with the reason, and Retry.
    for n, text in ((1, f"The server refused it: {reason}."), (2, "Not sent: this page")):
        expect(mine.nth(n)).to_have_attribute("data-status", "failed")
        expect(mine.nth(n).get_by_test_id("delivery")).to_have_text("not sent")
        expect(mine.nth(n).get_by_test_id("delivery-reason")).to_contain_text(text)
    # Rate limited: still pending; it goes again by itself, with the same id, after the wait.
    expect(mine.first).to_have_attribute("data-status", "pending")
    eventually(page, lambda: _count(script.publishes(), fast, 2))
    assert [item["clientMsgId"] for item in outbox(page)] == [fast]
    script.send({"type": "ack", "channel": "general", "seq": 1, "clientMsgId": fast})
    expect(mine.first).to_have_attribute("data-status", "confirmed")

    # Retry sends the same text with the same id: pending again, at the end.
    click(page, mine.nth(1).get_by_test_id("retry"))
    expect(page.locator("#log > li.msg").last).to_have_attribute("data-client-msg-id", odd)
    assert script.publishes()[-1] == {
        "type": "publish",
        "channel": "general",
        "message": "odd",
        "clientMsgId": odd,
    }
    retried = page.locator(f'#log > li[data-client-msg-id="{odd}"]')
    expect(retried).to_have_attribute("data-status", "pending")
    expect(retried.get_by_test_id("retry")).to_have_count(0)
    script.send({"type": "ack", "channel": "general", "seq": 2, "clientMsgId": odd})
    expect(retried).to_have_attribute("data-status", "confirmed")
    # Confirmed messages in seq order, then what still waits or was refused.
    expect(texts(own(page))).to_have_text(["too fast", "odd", "elsewhere"])
    # Discard takes a refused one away.
    click(page, own(page).last.get_by_test_id("discard"))
    expect(texts(own(page))).to_have_text(["too fast", "odd"])


def outbox(page: Page) -> list[dict[str, Any]]:
    """What the page keeps in localStorage until it is acknowledged."""
    items: list[dict[str, Any]] = page.evaluate(
        """() => Object.keys(localStorage).filter(k => k.startsWith('chat.outbox.'))
                 .flatMap(k => JSON.parse(localStorage.getItem(k)).items)"""
    )
    return items


def _count(sent: list[dict[str, Any]], client_msg_id: str, times: int) -> None:
    assert [m["clientMsgId"] for m in sent].count(client_msg_id) == times


def test_the_composer_keeps_what_the_server_would_refuse(pages: Pages) -> None:
    page, script = scripted_page(pages)
    note = page.get_by_test_id("composer-note")
    expect(note).to_be_hidden()

    page.fill("#message", "  \n ")
    page.press("#message", "Enter")
    expect(note).to_have_text("A message cannot be blank: write something first.")
    page.fill("#message", "a")
    expect(note).to_be_hidden()

    # One character over the server's limit (an emoji counts as one, as the server counts).
    too_long = "😀" * 16_385
    page.fill("#message", too_long)
    expect(note).to_have_text(
        "This message has 16,385 characters; the server takes at most 16,384. "
        "Shorten it or send it in parts."
    )
    page.press("#message", "Enter")
    expect(page.locator("#message")).to_have_attribute("aria-invalid", "true")
    assert page.locator("#message").input_value() == too_long

    page.fill("#message", "bell \x07")
    page.press("#message", "Enter")
    expect(note).to_contain_text("control characters")

    # Nothing of that went out: the first message the server gets is this one.
    send(page, "😀" * 16_384)
    expect(note).to_be_hidden()
    expect(page.locator("#message")).to_have_value("")
    assert [m["message"] for m in script.publishes()] == ["😀" * 16_384]


def test_a_rate_limited_message_goes_again_by_itself(pages: Pages, chat_server: ChatServer) -> None:
    # Three frames at once (the page asks who is there, says it types, sends), then one every
    # 5 s: the second message, sent at once, is refused.
    chat_server.stop()
    chat_server.start(args=["--rate-limit", "0.2", "--rate-burst", "3"])
    a, b = pages.new(), open_chat(pages, chat_server, "Bob")
    a.goto(chat_server.http_url)
    # The name goes with the URL (no hello, which would count against the limit).
    a.evaluate("() => localStorage.setItem('chat.name', JSON.stringify('Ann'))")
    a.reload()
    connected(a)
    first = send(a, "first")
    expect(first).to_have_attribute("data-status", "confirmed")
    second = send(a, "second")
    # The refused frame is the message (or a typing signal before it, on a slow machine).
    expect(event_texts(a, "error")).to_have_text([re.compile(r"^Sending too fast: ")])
    # Never shown as refused: it waits, then goes, and is stored once.
    expect(second).to_have_attribute("data-status", "confirmed", timeout=15_000)
    assert int(second.get_attribute("data-seq") or "") > int(first.get_attribute("data-seq") or "")
    expect(texts(others(b))).to_have_text(["first", "second"])


def test_the_view_follows_new_messages_unless_scrolled_up(pages: Pages) -> None:
    page, script = scripted_page(pages)
    scroller = page.get_by_test_id("scroll")
    at_bottom = "s => s.scrollHeight - s.scrollTop - s.clientHeight <= 2"

    for i in range(1, 121):
        script.send(chat_item(i, f"line {i}"))
    expect(texts(messages(page)).last).to_have_text("line 120")
    assert scroller.evaluate(at_bottom)
    expect(page.get_by_test_id("jump")).to_be_hidden()

    # Scrolled up to read, the view stays put and offers a way back down.
    scroller.evaluate("s => { s.scrollTop = 0; s.dispatchEvent(new Event('scroll')); }")
    script.send(chat_item(121, "line 121"))
    expect(texts(messages(page)).last).to_have_text("line 121")
    expect(page.get_by_test_id("jump")).to_be_visible()
    assert scroller.evaluate("s => s.scrollTop") == 0
    click(page, "#jump")
    assert scroller.evaluate(at_bottom)
    expect(page.get_by_test_id("jump")).to_be_hidden()


def test_unknown_messages_go_to_the_details_not_the_chat(pages: Pages) -> None:
    page, script = scripted_page(pages)
    script.routes[-1].send('{"type": "mystery", "message": "<b>x</b>"}')
    script.routes[-1].send("not json")
    script.routes[-1].send("[1, 2]")
    expect(event_texts(page, "unknown")).to_have_text(
        [
            "A message of an unknown type “mystery”.",
            "A message that is not JSON: not json",
            "A message that is not a JSON object: [1, 2]",
        ]
    )
    expect(messages(page)).to_have_count(0)
    assert page.locator("b").count() == 0
    for n, (code, words) in enumerate(
        {1008: "1008 Policy violation", 4000: "4000 Closed by the application."}.items()
    ):
        script.routes[-1].close(code=code, reason="because")
        expect(event_texts(page, "closed").nth(n)).to_contain_text(f"Connection closed: {words}")
        expect(event_texts(page, "closed").nth(n)).to_contain_text("Reason: “because”.")
        connected(page)
    assert conversation(page, "general").count() == 1
