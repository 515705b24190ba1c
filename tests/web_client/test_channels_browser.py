"""The web client with several channels and several people, against the real server: channels
kept apart, the sidebar kept across reloads, unread counts, presence, typing, resuming every
channel, and the outbox across a server that was down."""

from __future__ import annotations

import re
import sqlite3
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from playwright.sync_api import Locator, Page, ViewportSize, expect

from tests.web_client.conftest import DESKTOP, PHONE, ChatServer, Pages
from tests.web_client.helpers import (
    Relay,
    chat_client,
    choose_name,
    click,
    connected,
    conversation,
    event_texts,
    eventually,
    join,
    members,
    messages,
    open_chat,
    others,
    own,
    send,
    seqs,
    status,
    switch,
    texts,
)


def member(page: Page, name: str) -> Locator:
    return members(page).filter(
        has=page.get_by_test_id("member-name").get_by_text(name, exact=True)
    )


def test_channels_are_kept_apart(pages: Pages, chat_server: ChatServer) -> None:
    ann, bob = open_chat(pages, chat_server, "Ann"), open_chat(pages, chat_server, "Bob")
    cy = open_chat(pages, chat_server, "Cy")
    cy_frames: list[str] = []
    cy.on("websocket", lambda ws: ws.on("framereceived", lambda p: cy_frames.append(str(p))))
    cy.reload()
    connected(cy)
    join(ann, "room")
    join(bob, "room")

    send(ann, "in the room")
    expect(texts(others(bob))).to_have_text(["in the room"])
    send(cy, "in general")
    # Each view shows its channel's messages only; the others count as unread.
    expect(conversation(ann, "general")).to_have_attribute("data-unread", "1")
    expect(conversation(bob, "general").get_by_test_id("unread")).to_have_text("1")
    expect(texts(messages(ann))).to_have_text(["in the room"])
    expect(texts(messages(cy))).to_have_text(["in general"])
    expect(conversation(cy, "room")).to_have_count(0)
    switch(ann, "general")
    expect(texts(messages(ann))).to_have_text(["in general"])
    expect(conversation(ann, "general")).to_have_attribute("data-unread", "0")
    send(ann, "back in general")
    expect(texts(others(cy))).to_have_text(["back in general"])
    send(bob, "room again")
    expect(conversation(ann, "room")).to_have_attribute("data-unread", "1")
    expect(texts(others(cy))).to_have_text(["back in general"])
    # Not one frame of the room reached cy.
    assert cy_frames
    assert not [frame for frame in cy_frames if "room" in frame]


def test_the_sidebar_is_kept_and_unread_counts_come_from_read_positions(
    pages: Pages, chat_server: ChatServer
) -> None:
    bob = open_chat(pages, chat_server, "Bob")
    ann = pages.new()
    relay = Relay(ann)
    ann.goto(chat_server.http_url)
    choose_name(ann, "Ann")
    connected(ann)
    join(ann, "room")
    join(ann, "lab")
    click(ann, conversation(ann, "lab").get_by_test_id("leave"))
    expect(conversation(ann, "lab")).to_have_count(0)
    expect(ann.get_by_test_id("title")).to_have_text("# general")
    join(bob, "room")
    switch(bob, "general")

    # Read while in view: the read position goes to the server.
    switch(ann, "room")
    (seq,) = chat_client(chat_server.ws_url, ["seen"], channel="room")
    expect(texts(others(ann))).to_have_text(["seen"])
    eventually(ann, lambda: _read(relay.sent, "room", seq))
    switch(ann, "general")
    chat_client(chat_server.ws_url, ["unseen 1", "unseen 2"], channel="room", prefix="b")
    expect(conversation(ann, "room")).to_have_attribute("data-unread", "2")

    # The same person in another browser: the server's read position says what is unread.
    client_id = ann.evaluate("() => localStorage.getItem('chat.clientId')")
    again = pages.new()
    again.goto(chat_server.http_url)
    again.evaluate(
        """([id]) => {
            localStorage.setItem('chat.clientId', id);
            localStorage.setItem('chat.name', '"Ann"');
            localStorage.setItem('chat.channels.anonymous', '["room"]');
        }""",
        [client_id],
    )
    again.reload()
    connected(again)
    expect(conversation(again, "room")).to_have_attribute("data-state", "subscribed")
    expect(conversation(again, "room")).to_have_attribute("data-unread", "2")

    # A reload keeps the channels joined (not the one left), subscribed again.
    ann.reload()
    connected(ann)
    expect(conversation(ann, "room")).to_have_attribute("data-state", "subscribed")
    expect(conversation(ann, "lab")).to_have_count(0)
    expect(ann.locator("#channels > li").get_by_test_id("conversation-name")).to_have_text(
        ["general", "room"]
    )
    expect(conversation(ann, "room")).to_have_attribute("data-unread", "2")
    switch(ann, "room")
    expect(texts(messages(ann))).to_have_text(["seen", "unseen 1", "unseen 2"])
    expect(conversation(ann, "room")).to_have_attribute("data-unread", "0")
    expect(conversation(again, "room")).to_have_attribute("data-unread", "2")


def test_two_tabs_of_one_person_share_their_channels_and_name(
    pages: Pages, chat_server: ChatServer
) -> None:
    one = open_chat(pages, chat_server, "Ann")
    two = open_chat(pages, chat_server, same_as=one)
    bob = open_chat(pages, chat_server, "Bob")
    join(bob, "room")
    join(one, "room")
    expect(conversation(two, "room")).to_have_attribute("data-state", "subscribed")
    click(two, conversation(two, "room").get_by_test_id("leave"))
    expect(conversation(one, "room")).to_have_count(0)
    expect(members(bob).get_by_test_id("member-name")).to_have_text(["Bob"])

    click(one, "#rename")
    expect(one.get_by_test_id("name")).to_have_value("Ann")
    choose_name(one, "Annie")
    expect(two.get_by_test_id("me-name")).to_contain_text("Annie")
    # Each tab told the server: what either sends carries the new name.
    switch(bob, "general")
    send(two, "from the second tab")
    expect(others(bob).get_by_test_id("sender")).to_have_text(["Annie"])


def _read(frames: list[dict[str, Any]], channel: str, seq: int) -> None:
    assert {"type": "read", "channel": channel, "seq": seq} in frames, frames


def test_a_channel_the_server_refuses_is_not_joined(pages: Pages, chat_server: ChatServer) -> None:
    channels = chat_server.workdir / "channels.toml"
    channels.write_text("[namespaces.staff]\nanonymous = false\n")
    chat_server.stop()
    chat_server.start(args=["--channels", str(channels)])
    page = open_chat(pages, chat_server, "Ann")
    note = page.get_by_test_id("join-note")

    # What the server would refuse anyway is refused here.
    for name, words in (
        ("two words", "1 to 128 characters"),
        ("semi;colon", "1 to 128 characters"),
        ("dm:ann:bob", "Direct messages open from a person\N{RIGHT SINGLE QUOTATION MARK}s name."),
    ):
        page.fill("#join-name", name)
        page.press("#join-name", "Enter")
        expect(note).to_contain_text(words)
        expect(page.locator("#join-name")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#channels > li")).to_have_count(1)

    # What only the server knows: it answers forbidden, and the channel goes again.
    page.fill("#join-name", "staff:lounge")
    page.press("#join-name", "Enter")
    expect(note).to_have_text(re.compile(r"^Cannot join #staff:lounge: .*authenticated"))
    expect(conversation(page, "staff:lounge")).to_have_count(0)
    expect(page.get_by_test_id("title")).to_have_text("# general")
    join(page, "ok.channel:with-@_chars")


def test_presence_follows_who_comes_and_goes(pages: Pages, chat_server: ChatServer) -> None:
    bob = open_chat(pages, chat_server, "Bob")
    join(bob, "room")
    # Bob's second tab: the same person, the channels he joined.
    bob_too = open_chat(pages, chat_server, same_as=bob)
    expect(conversation(bob_too, "room")).to_have_attribute("data-state", "subscribed")
    cy = open_chat(pages, chat_server, "Cy")
    join(cy, "room")
    ann = open_chat(pages, chat_server, "Ann")
    join(ann, "room")

    # Users, not connections: Bob is there once, with his two tabs.
    expect(members(ann).get_by_test_id("member-name")).to_have_text(["Ann", "Bob", "Cy"])
    expect(ann.locator("#members-title")).to_have_text("Members · 3")
    expect(member(ann, "Bob").get_by_test_id("member-connections")).to_have_text(
        "\N{MULTIPLICATION SIGN}2"
    )
    expect(member(ann, "Ann").get_by_test_id("you")).to_be_visible()
    # Names chosen by anonymous people are marked as such.
    expect(members(ann).get_by_test_id("unverified")).to_have_count(3)
    expect(members(bob).get_by_test_id("member-name")).to_have_text(["Ann", "Bob", "Cy"])

    cy.close()
    expect(members(ann).get_by_test_id("member-name")).to_have_text(["Ann", "Bob"])
    expect(ann.locator("#members-title")).to_have_text("Members · 2")
    expect(members(bob).get_by_test_id("member-name")).to_have_text(["Ann", "Bob"])
    # General's list follows too (its departures are announced, not its arrivals).
    switch(ann, "general")
    expect(members(ann).get_by_test_id("member-name")).to_have_text(["Ann", "Bob"])

    # One tab of two closing leaves Bob there, once (asked again on switching to the room,
    # once the server has seen the tab go).
    gone = chat_server.log().count("server: disconnect")
    bob_too.close()
    eventually(ann, lambda: _more_disconnects(chat_server, gone))
    switch(ann, "room")
    expect(member(ann, "Bob").get_by_test_id("member-connections")).to_have_count(0)
    expect(members(ann).get_by_test_id("member-name")).to_have_text(["Ann", "Bob"])
    bob.close()
    expect(members(ann).get_by_test_id("member-name")).to_have_text(["Ann"])


def test_a_name_chosen_while_connecting_reaches_the_server(
    pages: Pages, chat_server: ChatServer
) -> None:
    bob = open_chat(pages, chat_server, "Bob")
    ann = pages.new()
    relay = Relay(ann)
    relay.hold = True
    ann.goto(chat_server.http_url)
    # The page's first socket is open but not welcomed yet, its URL without a name.
    expect(status(ann)).to_have_attribute("data-state", "open")
    choose_name(ann, "Ann")
    relay.release()
    connected(ann)
    assert "name=" not in relay.urls[0]
    expect(members(ann).get_by_test_id("member-name")).to_have_text(["Ann", "Bob"])
    send(ann, "named")
    expect(others(bob).get_by_test_id("sender")).to_have_text(["Ann"])


def _more_disconnects(server: ChatServer, than: int) -> None:
    assert server.log().count("server: disconnect") > than


def test_typing_is_shown_and_cleared(pages: Pages, chat_server: ChatServer) -> None:
    ann, bob = open_chat(pages, chat_server, "Ann"), open_chat(pages, chat_server, "Bob")
    cy = open_chat(pages, chat_server, "Cy")
    join(ann, "room")
    join(bob, "room")
    typing = bob.get_by_test_id("typing")

    ann.locator("#message").press_sequentially("hel")
    expect(typing).to_have_text("Ann is typing…")
    # Only in the room: general's view, and those not in the room, show nothing.
    switch(bob, "general")
    expect(typing).to_have_text("")
    switch(bob, "room")
    expect(typing).to_have_text("Ann is typing…")
    # The message that comes clears it at once.
    ann.locator("#message").press_sequentially("lo")
    ann.press("#message", "Enter")
    expect(texts(others(bob))).to_have_text(["hello"])
    expect(typing).to_have_text("")

    # Without a message, it goes after a few seconds.
    bob.locator("#message").press_sequentially("thinking")
    expect(ann.get_by_test_id("typing")).to_have_text("Bob is typing…")
    expect(ann.get_by_test_id("typing")).to_have_text("", timeout=15_000)
    expect(cy.get_by_test_id("typing")).to_have_text("")
    # One's own typing is not shown back.
    expect(bob.get_by_test_id("typing")).to_have_text("")


def test_every_channel_resumes_exactly_after_a_reconnect(
    pages: Pages, chat_server: ChatServer
) -> None:
    # Many messages at once are over the default rate limit's burst: this test is about resuming.
    chat_server.stop()
    chat_server.start(args=["--rate-limit", "0"])
    url = chat_server.ws_url
    page = pages.new()
    relay = Relay(page)
    page.goto(chat_server.http_url)
    choose_name(page, "Ann")
    connected(page)
    join(page, "room")
    join(page, "lab")
    before = {
        "general": chat_client(url, ["g 1", "g 2"]),
        "room": chat_client(url, ["r 1"], channel="room"),
        "lab": chat_client(url, ["l 1", "l 2", "l 3"], channel="lab"),
    }
    expect(texts(messages(page))).to_have_text(["l 1", "l 2", "l 3"])
    switch(page, "room")
    expect(send(page, "mine in room")).to_have_attribute("data-status", "confirmed")
    last = {channel: seqs[-1] for channel, seqs in before.items()}
    last["room"] += 1

    relay.hold = True
    relay.drop()
    expect(status(page)).to_have_attribute("data-state", "open")  # the reconnect, held
    missed = {
        "general": chat_client(url, [f"g missed {n}" for n in range(5)], prefix="m"),
        "room": chat_client(url, [f"r missed {n}" for n in range(30)], "room", "m"),
        "lab": chat_client(url, ["l missed"], channel="lab", prefix="m"),
    }
    relay.release()

    expect(event_texts(page, "resumed")).to_have_text(
        [
            f"#general: resumed after message #{last['general']}, 5 missed messages.",
            f"#room: resumed after message #{last['room']}, 30 missed messages.",
            f"#lab: resumed after message #{last['lab']}, 1 missed message.",
        ],
        timeout=15_000,
    )
    subscribes = [m for m in relay.sent[len(relay.sent) // 2 :] if m.get("type") == "subscribe"]
    resubscribed = {m["channel"]: (m.get("since"), m.get("epoch")) for m in subscribes}
    assert resubscribed["room"][0] == last["room"]
    assert resubscribed["lab"][0] == last["lab"]
    assert all(epoch for _, epoch in resubscribed.values())
    expected = {
        "general": ["g 1", "g 2", *(f"g missed {n}" for n in range(5))],
        "room": ["r 1", "mine in room", *(f"r missed {n}" for n in range(30))],
        "lab": ["l 1", "l 2", "l 3", "l missed"],
    }
    for channel, shown in expected.items():
        switch(page, channel)
        expect(texts(messages(page))).to_have_text(shown)
        numbers = seqs(page)
        assert numbers == sorted(set(numbers))
        assert numbers[-len(missed[channel]) :] == missed[channel]
    # And live after it, in each.
    chat_client(url, ["lab live"], channel="lab", prefix="l")
    expect(texts(messages(page)).last).to_have_text("lab live")


def test_an_outbox_message_typed_while_the_server_was_down_is_delivered_exactly_once(
    pages: Pages, chat_server: ChatServer
) -> None:
    ann, bob = open_chat(pages, chat_server, "Ann"), open_chat(pages, chat_server, "Bob")
    join(ann, "room")
    join(bob, "room")
    port = chat_server.port
    assert chat_server.stop() == 0
    expect(status(ann)).to_have_attribute("data-state", "waiting")

    first = send(ann, "typed while down")
    expect(first).to_have_attribute("data-status", "pending")
    switch(ann, "general")
    second = send(ann, "general while down")
    expect(second).to_have_attribute("data-status", "pending")
    expect(ann.get_by_test_id("unsent")).to_have_text("· 2 unsent")
    # Kept in localStorage until the server confirms it.
    assert [(item["channel"], item["text"]) for item in outbox(ann)] == [
        ("room", "typed while down"),
        ("general", "general while down"),
    ]

    chat_server.start(port)

    expect(second).to_have_attribute("data-status", "confirmed", timeout=20_000)
    expect(ann.get_by_test_id("unsent")).to_be_hidden()
    connected(bob)
    expect(texts(others(bob))).to_have_text(["typed while down"], timeout=15_000)
    switch(bob, "general")
    expect(texts(others(bob))).to_have_text(["general while down"])
    switch(ann, "room")
    expect(texts(own(ann))).to_have_text(["typed while down"])
    expect(first).to_have_attribute("data-status", "confirmed")
    assert stored_messages(chat_server) == [
        ("general", "general while down"),
        ("room", "typed while down"),
    ]
    assert outbox(ann) == []


def test_a_message_whose_ack_was_lost_survives_a_reload_and_is_stored_once(
    pages: Pages, chat_server: ChatServer
) -> None:
    bob = open_chat(pages, chat_server, "Bob")
    join(bob, "room")
    ann = pages.new()
    relay = Relay(ann)
    ann.goto(chat_server.http_url)
    choose_name(ann, "Ann")
    connected(ann)
    join(ann, "room")
    # The server stores and broadcasts it; its ack never reaches the page.
    relay.drop_acks = True
    lost = send(ann, "ack lost")
    expect(texts(others(bob))).to_have_text(["ack lost"])
    expect(lost).to_have_attribute("data-status", "pending")
    (item,) = outbox(ann)

    relay.drop_acks = False
    ann.reload()
    connected(ann)
    switch(ann, "room")
    # Sent again with the same id; the server answers with the first one's seq (duplicate),
    # and the page shows it once, confirmed, known by its id.
    expect(lost).to_have_attribute("data-status", "confirmed")
    expect(texts(messages(ann))).to_have_text(["ack lost"])
    sent = [m for m in relay.sent if m.get("message") == "ack lost"]
    assert [m["clientMsgId"] for m in sent] == [item["clientMsgId"]] * 2
    send(bob, "after")
    expect(texts(others(ann))).to_have_text(["after"])
    expect(texts(others(bob))).to_have_text(["ack lost"])
    assert stored_messages(chat_server) == [("room", "ack lost"), ("room", "after")]
    assert outbox(ann) == []


def outbox(page: Page) -> list[dict[str, object]]:
    """What the page keeps in localStorage until it is acknowledged."""
    items: list[dict[str, object]] = page.evaluate(
        """() => Object.keys(localStorage).filter(k => k.startsWith('chat.outbox.'))
                 .flatMap(k => JSON.parse(localStorage.getItem(k)).items)"""
    )
    return items


def stored_messages(server: ChatServer) -> list[tuple[str, str]]:
    with sqlite3.connect(server.workdir / "messages.db") as db:
        rows = db.execute("SELECT channel, message FROM messages ORDER BY channel, seq")
        return [(str(channel), str(text)) for channel, text in rows]


def keep_typing(page: Page, other: Page, shown: str) -> None:
    """Type into ``page``'s composer, a key at a time, until ``other`` shows ``shown``: the
    server forwards one signal per member every 2 s, so a signal right after another one
    is dropped (the page sends the next on a later keystroke)."""
    typing = other.get_by_test_id("typing")
    for _ in range(40):
        page.locator("#message").press_sequentially(".")
        try:
            expect(typing).to_have_text(shown, timeout=250)
            return
        except AssertionError:
            continue
    expect(typing).to_have_text(shown)


# Screenshots: the pixels checked, not just taken.


@dataclass(frozen=True)
class Png:
    """A decoded 8-bit RGB or RGBA PNG, as Chromium writes screenshots: rows of pixels."""

    width: int
    height: int
    channels: int
    pixels: bytes

    def rgb(self, x: int, y: int) -> tuple[int, int, int]:
        at = (y * self.width + x) * self.channels
        r, g, b = self.pixels[at : at + 3]
        return r, g, b


def read_png(path: Path) -> Png:
    """Decode a PNG with the standard library (PNG spec, §5 chunks, §9 filters)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    header, compressed, at = b"", bytearray(), 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        at += 12 + length  # length, type, data, CRC
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            compressed += body
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0), "not 8 bits a channel, or interlaced"
    assert color in (2, 6), "not RGB or RGBA"
    channels = 3 if color == 2 else 4
    raw, stride = zlib.decompress(compressed), width * channels
    pixels, previous = bytearray(), bytearray(stride)
    for y in range(height):
        kind, row = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride) if kind else ():
            left = row[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                row[i] = (row[i] + left) & 255
            elif kind == 2:
                row[i] = (row[i] + up) & 255
            elif kind == 3:
                row[i] = (row[i] + (left + up) // 2) & 255
            else:  # 4, Paeth: the neighbour closest to left + up - corner
                guess = left + up - corner
                best = min((abs(guess - left), 0, left), (abs(guess - up), 1, up))
                best = min(best, (abs(guess - corner), 2, corner))
                row[i] = (row[i] + best[2]) & 255
        pixels += row
        previous = row
    return Png(width, height, channels, bytes(pixels))


def css_rgb(locator: Locator, prop: str = "backgroundColor") -> tuple[int, int, int]:
    """A computed colour, such as rgb(53, 87, 212)."""
    r, g, b = map(int, re.findall(r"\d+", locator.evaluate(f"e => getComputedStyle(e).{prop}"))[:3])
    return r, g, b


def near(a: tuple[int, int, int], b: tuple[int, int, int], tolerance: int = 2) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def check_screenshot(page: Page, png: Png, viewport: ViewportSize, scheme: str) -> None:
    """The PNG is the viewport in its colour scheme, with chat bubbles of both sides in view,
    each of its own colour and with its message's text drawn in it."""
    assert (png.width, png.height) == (viewport["width"], viewport["height"])
    scroll = page.get_by_test_id("scroll")
    box = scroll.bounding_box()
    assert box is not None
    background = png.rgb(int(box["x"] + 2), int(box["y"] + box["height"] - 2))
    assert near(background, css_rgb(page.locator(".main")))
    brightness = sum(background) / 3
    assert brightness < 64 if scheme == "dark" else brightness > 192, (scheme, background)

    in_view = {"true": 0, "false": 0}
    for side in in_view:
        for body in page.locator(f'#log > li.msg[data-own="{side}"] .msg-body').all():
            outer, text = body.bounding_box(), body.get_by_test_id("text").bounding_box()
            assert outer is not None
            assert text is not None
            if (
                not box["y"]
                <= outer["y"]
                < outer["y"] + outer["height"]
                <= box["y"] + box["height"]
            ):
                continue  # not all of it in view
            bubble = css_rgb(body)
            # In the top padding, across from any text: the bubble's own colour.
            x, y = int(outer["x"] + outer["width"] / 2), int(outer["y"] + 3)
            assert near(png.rgb(x, y), bubble), (side, (x, y), png.rgb(x, y), bubble)
            ink = sum(
                not near(png.rgb(px, py), bubble, 60)
                for py in range(int(text["y"]), int(text["y"] + text["height"]))
                for px in range(int(text["x"]), int(text["x"] + text["width"]))
            )
            assert ink > 50, f"no text drawn in the bubble at {(x, y)}"
            in_view[side] += 1
    assert in_view["true"], f"none of one's own messages in view: {in_view}"
    assert in_view["false"], f"none of the others' messages in view: {in_view}"


def test_screenshots_of_a_conversation(
    pages: Pages,
    chat_server: ChatServer,
    screenshot_dir: Path,
    record_screenshot: Callable[[Path], None],
) -> None:
    a, b = open_chat(pages, chat_server, "Ann"), open_chat(pages, chat_server, "Bob")
    for page in (a, b):
        join(page, "design")
        join(page, "releases")
    switch(a, "design")
    switch(b, "design")
    script = [
        (a, "Hi! Is the new server up?"),
        (b, "Yes: RFC 6455 from scratch, pure Python."),
        (a, "Nice. And <b>markup</b> stays text."),
        (b, "Multi-line works too:\n- one\n- two"),
        (b, "And channels, with unread counts."),
    ]
    for page, text in script:
        expect(send(page, text)).to_have_attribute("data-status", "confirmed")
    expect(others(a)).to_have_count(3)
    expect(others(b)).to_have_count(2)
    chat_client(chat_server.ws_url, ["v1.2 is out"], channel="releases")
    expect(conversation(a, "releases")).to_have_attribute("data-unread", "1")
    keep_typing(b, a, "Bob is typing…")

    shots: list[tuple[Page, ViewportSize, Literal["light", "dark"], str]] = [
        (a, DESKTOP, "light", "conversation-desktop-a.png"),
        (b, DESKTOP, "dark", "conversation-desktop-b-dark.png"),
        (a, PHONE, "light", "conversation-phone-a.png"),
        (b, PHONE, "dark", "conversation-phone-b-dark.png"),
    ]
    for page, viewport, scheme, name in shots:
        page.bring_to_front()  # a tab behind another one draws no frames
        page.set_viewport_size(viewport)
        page.emulate_media(color_scheme=scheme)
        # Two frames: the new layout, then the view kept at its latest message.
        page.evaluate(
            "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
        )
        path = screenshot_dir / name
        page.screenshot(path=path)
        record_screenshot(path)
        check_screenshot(page, read_png(path), viewport, scheme)
    # On a phone the conversations are a drawer.
    click(a, "#open-sidebar")
    expect(a.get_by_test_id("sidebar")).to_be_in_viewport()
    path = screenshot_dir / "conversations-phone-a.png"
    a.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    a.screenshot(path=path)
    record_screenshot(path)
    click(a, conversation(a, "releases").get_by_test_id("open"))
    expect(a.get_by_test_id("sidebar")).not_to_be_in_viewport()
    expect(texts(messages(a))).to_have_text(["v1.2 is out"])
