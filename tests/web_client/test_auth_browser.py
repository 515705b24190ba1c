"""The web client against a server with ``--auth jwt``: the token field, ``?access_token=`` on
the page URL, and what a refused handshake looks like (the browser is told nothing)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from playwright.sync_api import expect

from tests.web_client.conftest import ChatServer, Pages
from tests.web_client.test_browser import UUID, click, entries, send, texts

SECRET = "a browser test secret of 32+ bytes"


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": time.time() + 600}, SECRET, algorithm="HS256")


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
