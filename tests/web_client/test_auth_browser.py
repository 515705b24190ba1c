"""The web client against a server with ``--auth jwt``: the token prompt, ``?access_token=`` on
the page URL, what a refused handshake looks like (the browser is told nothing), a token that
expires while the page is connected, and direct messages between users."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import jwt
import pytest
from playwright.sync_api import Page, ViewportSize, expect

from server.auth import JWT_LEEWAY
from tests.web_client.conftest import DESKTOP, PHONE, ChatServer, Pages
from tests.web_client.helpers import (
    Relay,
    chat_client,
    click,
    connected,
    conversation,
    event_texts,
    events,
    eventually,
    members,
    messages,
    others,
    own,
    send,
    seqs,
    status,
    switch,
    texts,
)

SECRET = "a browser test secret of 32+ bytes"


def token(user: str, exp: float | None = None) -> str:
    exp = time.time() + 600 if exp is None else exp
    return jwt.encode({"sub": user, "exp": exp}, SECRET, algorithm="HS256")


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[ChatServer]:
    server = ChatServer(tmp_path)
    server.start(args=["--auth", "jwt", "--jwt-secret", SECRET])
    try:
        yield server
    finally:
        server.kill()
        print(server.all_logs())


def open_as(pages: Pages, server: ChatServer, user: str, *, same_as: Page | None = None) -> Page:
    """Open the page with a token for ``user`` in its URL, and wait until it is connected."""
    page = pages.new(same_as=same_as)
    page.goto(f"{server.http_url}?access_token={token(user)}")
    connected(page)
    return page


def test_a_token_lets_the_page_in_and_names_the_sender(
    pages: Pages, auth_server: ChatServer
) -> None:
    # Without a token: refused (the page connects by itself), and it asks for one.
    bob = pages.new()
    bob.goto(auth_server.http_url)
    card = bob.get_by_test_id("token-card")
    expect(card).to_be_visible()
    expect(bob.get_by_test_id("token-text")).to_contain_text("refused the connection")
    expect(status(bob)).to_have_attribute("data-state", "offline")
    expect(bob.get_by_test_id("status-text")).to_have_text("Offline: refused by the server")
    expect(bob.get_by_test_id("token")).to_be_focused()
    # It stopped dialling: a refusal is not an outage.
    expect(event_texts(bob, "refused")).to_have_count(1)
    expect(bob.get_by_test_id("name-form")).to_be_hidden()

    # A token in the page's URL is used, and goes out of the address bar.
    ann_token = token("ann")
    ann = pages.new()
    ann.goto(f"{auth_server.http_url}?access_token={ann_token}")
    connected(ann)
    assert "access_token" not in ann.url
    expect(ann.get_by_test_id("me-name")).to_have_text("ann")
    expect(ann.get_by_test_id("name-form")).to_be_hidden()
    expect(ann.get_by_test_id("token-card")).to_be_hidden()

    bob.fill("#token", token("bob"))
    click(bob, "#token-connect")
    connected(bob)
    expect(card).to_be_hidden()
    send(ann, "hello from ann")
    expect(texts(others(bob))).to_have_text(["hello from ann"])
    # An authenticated sender's name is shown plainly: the server vouches for it.
    expect(others(bob).get_by_test_id("sender")).to_have_text(["ann"])
    expect(others(bob).get_by_test_id("unverified")).to_have_count(0)
    assert ann_token not in auth_server.log()


def test_an_expired_token_asks_for_a_new_one_instead_of_reconnecting(
    pages: Pages, auth_server: ChatServer
) -> None:
    # Something to resume after: the page's history ends with this message.
    (seq,) = chat_client(f"{auth_server.ws_url}?access_token={token('bob')}", ["before"])
    # Accepted thanks to the server's leeway, and closed by it some 7 s later (exp is whole
    # seconds): time enough to load the page on a busy machine.
    expiring = token("ann", exp=int(time.time() - JWT_LEEWAY) + 8)
    page = pages.new()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(f"{auth_server.http_url}?access_token={expiring}")
    connected(page)
    expect(texts(others(page))).to_have_text(["before"])

    expect(event_texts(page, "expired")).to_have_text(
        [re.compile(r"^Connection closed: 1008 Policy violation.* Reason: “token expired”\.$")],
        timeout=30_000,
    )
    expect(page.get_by_test_id("token-text")).to_have_text(
        re.compile(r"^Your access token has expired\.")
    )
    expect(status(page)).to_have_attribute("data-state", "offline")
    expect(page.get_by_test_id("status-text")).to_have_text("Offline: token expired")
    # No reconnect is scheduled (that is decided in the same event as the close's entry).
    expect(events(page, "reconnect")).to_have_count(0)
    token_field = page.locator("#token")
    expect(token_field).to_be_focused()
    expect(token_field).to_have_attribute("aria-invalid", "true")
    # Long enough for a first reconnect (0.5 s, ±20 %) to have dialled, had one been scheduled.
    page.wait_for_timeout(2_000)
    assert len(sockets) == 1

    # Connect with the dead token: the page says so and does not dial.
    click(page, "#token-connect")
    expect(page.get_by_test_id("token-text")).to_have_text(
        "This token has expired: paste a new one, then Connect."
    )
    expect(token_field).to_be_focused()
    assert len(sockets) == 1

    # The composer still takes messages meanwhile: they wait for the new token.
    waiting = send(page, "typed while signed out")
    expect(waiting).to_have_attribute("data-status", "pending")

    # A new token: the page resumes where it stopped, and the outbox goes out.
    page.fill("#token", token("ann"))
    expect(token_field).not_to_have_attribute("aria-invalid", "true")
    click(page, "#token-connect")
    connected(page)
    expect(event_texts(page, "resumed")).to_have_text(
        [f"#general: resumed after message #{seq}, 0 missed messages."]
    )
    assert len(sockets) == 2
    # With a token the page offers no anonymous identity.
    assert re.fullmatch(
        rf"{re.escape(auth_server.ws_url)}\?since={seq}&epoch=[0-9a-f-]+", sockets[1]
    )
    expect(waiting).to_have_attribute("data-status", "confirmed")
    expect(send(page, "after")).to_have_attribute("data-status", "confirmed")
    # The server saw bob's client, then the page twice: once with each token, nothing between.
    assert len(re.findall(r"server: connect [0-9a-f-]+ from", auth_server.log())) == 3


def test_a_direct_message_reaches_only_its_recipient(
    pages: Pages,
    auth_server: ChatServer,
    screenshot_dir: Path,
    record_screenshot: Callable[[Path], None],
) -> None:
    bob, cy = open_as(pages, auth_server, "bob"), open_as(pages, auth_server, "cy")
    cy_frames: list[str] = []
    cy.on("websocket", lambda ws: ws.on("framereceived", lambda p: cy_frames.append(str(p))))
    ann = open_as(pages, auth_server, "ann")
    ann_too = open_as(pages, auth_server, "ann", same_as=ann)  # a second tab of ann's
    cy.reload()  # now recording its frames from the start
    connected(cy)

    # In general's member list, every user is plain and may be written to; ann's two tabs
    # make one member.
    expect(members(ann)).to_have_count(3)
    expect(members(ann).get_by_test_id("member-name")).to_have_text(["ann", "bob", "cy"])
    expect(ann.locator("#members .sender-link")).to_have_count(2)  # not oneself
    ann_member = ann.locator('#members > li[data-key="user:ann"]')
    expect(ann_member.get_by_test_id("member-connections")).to_have_text("\N{MULTIPLICATION SIGN}2")
    click(ann, ann.locator('#members > li[data-key="user:bob"]').get_by_test_id("member-name"))
    expect(ann.get_by_test_id("title")).to_have_text("@ bob")
    dm = "dm:ann:bob"
    expect(conversation(ann, dm)).to_have_attribute("data-state", "subscribed")
    expect(conversation(ann, dm).get_by_test_id("conversation-name")).to_have_text("bob")
    expect(send(ann, "psst, bob")).to_have_attribute("data-status", "confirmed")

    # Bob gets it: a conversation named ann, unread until he opens it.
    expect(conversation(bob, dm).get_by_test_id("conversation-name")).to_have_text("ann")
    expect(conversation(bob, dm)).to_have_attribute("data-unread", "1")
    expect(conversation(bob, dm)).to_have_attribute("data-state", "subscribed")
    expect(texts(messages(bob))).to_have_count(0)  # general shows none of it
    switch(bob, dm)
    expect(texts(others(bob))).to_have_text(["psst, bob"])
    expect(conversation(bob, dm)).to_have_attribute("data-unread", "0")
    send(bob, "hi ann")
    expect(texts(others(ann))).to_have_text(["hi ann"])
    # Ann's other tab has the whole conversation, hers on her side.
    switch(ann_too, dm)
    expect(texts(own(ann_too))).to_have_text(["psst, bob"])
    expect(texts(others(ann_too))).to_have_text(["hi ann"])

    # Cy gets nothing of it: no conversation, not one frame with it.
    send(ann, "one more")
    expect(texts(others(bob))).to_have_text(["psst, bob", "one more"])
    send(cy, "anyone?")
    expect(texts(others(bob).filter(has_text="anyone?"))).to_have_count(0)  # bob is in the dm
    switch(bob, "general")
    expect(texts(others(bob))).to_have_text(["anyone?"])
    expect(cy.locator('.conversation[data-channel^="dm:"]')).to_have_count(0)
    assert cy_frames
    assert not [frame for frame in cy_frames if "psst" in frame or dm in frame]

    # The conversation stays in bob's sidebar after a reload, with its history.
    bob.reload()
    connected(bob)
    expect(conversation(bob, dm)).to_have_attribute("data-state", "subscribed")
    switch(bob, dm)
    expect(texts(messages(bob))).to_have_text(["psst, bob", "hi ann", "one more"])

    shots: list[tuple[Page, ViewportSize, Literal["light", "dark"], str]] = [
        (ann, DESKTOP, "light", "dm-desktop-ann.png"),
        (bob, PHONE, "dark", "dm-phone-bob-dark.png"),
    ]
    for page, viewport, scheme, name in shots:
        page.bring_to_front()
        page.set_viewport_size(viewport)
        page.emulate_media(color_scheme=scheme)
        page.evaluate("() => new Promise(r => setTimeout(r, 50))")
        path = screenshot_dir / name
        page.screenshot(path=path)
        record_screenshot(path)
    frames = json.dumps(cy_frames)
    assert "psst" not in frames


def test_a_direct_conversation_resumes_exactly_when_the_server_subscribed_it_first(
    pages: Pages, auth_server: ChatServer
) -> None:
    bob = pages.new()
    relay = Relay(bob)
    bob.goto(f"{auth_server.http_url}?access_token={token('bob')}")
    connected(bob)
    ann = open_as(pages, auth_server, "ann")  # after bob: general announces no arrivals
    dm = "dm:ann:bob"
    click(ann, ann.locator('#members > li[data-key="user:bob"]').get_by_test_id("member-name"))
    send(ann, "first")
    expect(conversation(bob, dm)).to_have_attribute("data-state", "subscribed")
    switch(bob, dm)
    expect(texts(messages(bob))).to_have_text(["first"])

    relay.hold = True
    relay.drop()
    expect(status(bob)).to_have_attribute("data-state", "open")  # the reconnect, held
    send(ann, "missed 1")
    send(ann, "missed 2")
    # Bob's new connection reaches the server; the subscribe it sends waits in the relay.
    relay.hold_sent = True
    relay.release()
    eventually(bob, lambda: _subscribes(relay.waiting, dm))
    # A direct message now: the server subscribes bob's connection itself (a subscribed with
    # the latest messages), and the broadcast reaches the page, before the server reads the
    # page's own subscribe.
    expect(send(ann, "while subscribing")).to_have_attribute("data-status", "confirmed")
    eventually(bob, lambda: _broadcast(relay.received, "while subscribing"))
    relay.flush_sent()

    # That subscribe is answered already_subscribed, and the page subscribes again with the
    # last seq it has: every message shown once, in order, none missing, nothing reset.
    expect(texts(messages(bob))).to_have_text(
        ["first", "missed 1", "missed 2", "while subscribing"]
    )
    eventually(bob, lambda: _answered_already_subscribed(relay.received, dm))
    expect(event_texts(bob, "resumed").last).to_have_text(
        re.compile(r"^@ann: resumed after message #\d+, 0 missed messages\.$")
    )
    expect(bob.get_by_test_id("notice")).to_have_count(0)
    expect(event_texts(bob, "reset")).to_have_count(0)
    numbers = seqs(bob)
    assert numbers == list(range(numbers[0], numbers[0] + 4))


def _subscribes(waiting: Sequence[tuple[object, str | bytes]], channel: str) -> None:
    assert [m for _, m in waiting if json.loads(m).get("channel") == channel], waiting


def _answered_already_subscribed(received: list[dict[str, object]], channel: str) -> None:
    codes = [m.get("code") for m in received if m.get("channel") == channel]
    assert "already_subscribed" in codes, received


def _broadcast(received: list[dict[str, object]], text: str) -> None:
    assert [m for m in received if m.get("message") == text], received
