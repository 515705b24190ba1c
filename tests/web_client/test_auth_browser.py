"""The web client against a server with ``--auth jwt``: the token field, ``?access_token=`` on
the page URL, what a refused handshake looks like (the browser is told nothing), and a token
that expires while the page is connected."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from playwright.sync_api import expect

from server.auth import JWT_LEEWAY
from tests.web_client.conftest import ChatServer, Pages
from tests.web_client.test_browser import (
    UUID,
    chat_client,
    click,
    entries,
    joined,
    send,
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


def test_a_token_lets_the_page_in_and_names_the_sender(
    pages: Pages, auth_server: ChatServer
) -> None:
    # Without a token: refused (the page connects by itself), and it says what that may mean.
    bob = pages.new()
    bob.goto(auth_server.http_url)
    expect(texts(bob, "error").last).to_contain_text("check the Token field")
    expect(bob.locator("#status")).to_have_attribute("data-state", "closed")
    bob.uncheck("#reconnect")

    # A token in the page's URL goes to the Token field and out of the address bar.
    ann = pages.new()
    ann_token = token("ann")
    ann.goto(f"{auth_server.http_url}?access_token={ann_token}")
    expect(ann.locator("#token")).to_have_value(ann_token)
    assert "access_token" not in ann.url
    expect(ann.locator("#own-id")).to_have_text(UUID)

    bob.fill("#token", token("bob"))
    click(bob, "#connect")
    expect(bob.locator("#own-id")).to_have_text(UUID)
    send(ann, "hello from ann")
    expect(texts(bob, "broadcast")).to_have_text(["hello from ann"])
    expect(entries(bob, "broadcast").get_by_test_id("sender")).to_have_text(["ann"])
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
    joined(page)
    expect(texts(page, "broadcast")).to_have_text(["before"])

    closed = entries(page, "closed")
    expect(closed).to_have_attribute("data-code", "1008", timeout=30_000)
    expect(closed).to_contain_text("Reason: “token expired”.")
    expect(texts(page, "token")).to_have_text([re.compile(r"^Your access token has expired\.")])
    # No reconnect is scheduled (that is decided in the same event as the close's entry).
    expect(entries(page, "reconnect")).to_have_count(0)
    expect(page.locator("#status")).to_have_attribute("data-state", "closed")
    token_field = page.locator("#token")
    expect(token_field).to_be_focused()
    expect(token_field).to_have_attribute("aria-invalid", "true")
    # Long enough for a first reconnect (0.5 s, ±20 %) to have dialled, had one been scheduled.
    page.wait_for_timeout(2_000)
    assert len(sockets) == 1

    # Connect with the dead token: the page says so and does not dial.
    click(page, "#connect")
    expect(texts(page, "token")).to_have_count(2)
    expect(texts(page, "token").last).to_contain_text("This token has expired")
    expect(token_field).to_be_focused()
    assert len(sockets) == 1

    # A new token: the page resumes where it stopped.
    page.fill("#token", token("ann"))
    expect(token_field).not_to_have_attribute("aria-invalid", "true")
    click(page, "#connect")
    joined(page)
    expect(texts(page, "info").last).to_have_text(
        f"Resumed after message #{seq}: 0 missed messages."
    )
    assert len(sockets) == 2
    assert re.fullmatch(
        rf"{re.escape(auth_server.ws_url)}\?since={seq}&epoch=[0-9a-f-]+", sockets[1]
    )
    send(page, "after")
    expect(entries(page, "own")).to_have_attribute("data-status", "confirmed")
    # The server saw bob's client, then the page twice: once with each token, nothing between.
    assert len(re.findall(r"server: connect [0-9a-f-]+ from", auth_server.log())) == 3
