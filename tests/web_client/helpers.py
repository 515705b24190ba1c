"""What the browser tests do with the page, and the Python chat clients and relay beside it.

Every wait is on a condition (playwright's ``expect`` retries until it holds), never a fixed
sleep. The page's elements are found by the ``data-testid`` and ``data-*`` attributes the
client sets for that: a message is ``#log > li.msg`` with ``data-seq``, ``data-own`` and (for
one's own) ``data-status``; a conversation in the sidebar is ``li[data-channel]`` with
``data-state``, ``data-current`` and ``data-unread``; a member is ``#members > li[data-key]``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from playwright.sync_api import Locator, Page, WebSocketRoute, expect

import rfc6455
from tests.web_client.conftest import WEB_CLIENT, ChatServer, Pages

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
XSS = "<img src=x onerror=alert(1)>"


def click(page: Page, selector: str | Locator) -> None:
    """Click as a person would: in the window in front.

    Chromium runs no animation frames in a tab behind another one with an open
    WebSocket, so playwright's check that the target is stable would wait
    seconds for a frame.
    """
    page.bring_to_front()
    if isinstance(selector, str):
        page.click(selector)
    else:
        selector.click()


def status(page: Page) -> Locator:
    return page.get_by_test_id("status")


def connected(page: Page) -> None:
    """Wait until the page is connected and subscribed to general."""
    expect(status(page)).to_have_attribute("data-state", "open")
    expect(conversation(page, "general")).to_have_attribute("data-state", "subscribed")


def choose_name(page: Page, name: str) -> None:
    page.get_by_test_id("name").fill(name)
    page.get_by_test_id("name").press("Enter")
    expect(page.get_by_test_id("composer")).to_be_visible()


def open_chat(
    pages: Pages,
    server: ChatServer,
    name: str | None = None,
    *,
    same_as: Page | None = None,
    query: str = "",
) -> Page:
    """Open the page as the server serves it (it connects by itself), as a new person named
    ``name`` (or another tab of ``same_as``), and wait until it is connected."""
    page = pages.new(same_as=same_as)
    page.goto(server.http_url + query)
    if name is not None:
        choose_name(page, name)
    connected(page)
    return page


def open_file(pages: Pages) -> Page:
    page = pages.new()
    page.goto((WEB_CLIENT / "index.html").as_uri())
    return page


def messages(page: Page) -> Locator:
    """The messages shown in the current conversation, in order."""
    return page.locator("#log > li.msg")


def others(page: Page) -> Locator:
    return page.locator('#log > li.msg[data-own="false"]')


def own(page: Page) -> Locator:
    return page.locator('#log > li.msg[data-own="true"]')


def texts(messages: Locator) -> Locator:
    return messages.get_by_test_id("text")


def seqs(page: Page) -> list[int]:
    """The seq of every message shown with one, in order."""
    values = messages(page).evaluate_all("ls => ls.map(l => l.dataset.seq || '')")
    return [int(value) for value in values if value]


def send(page: Page, text: str) -> Locator:
    """Type ``text`` and press Enter; wait until the page shows it; return its message."""
    before = own(page).count()
    page.fill("#message", text)
    page.press("#message", "Enter")
    expect(own(page)).to_have_count(before + 1)
    client_msg_id = own(page).last.get_attribute("data-client-msg-id")
    return page.locator(f'#log > li[data-client-msg-id="{client_msg_id}"]')


def conversation(page: Page, channel: str) -> Locator:
    """A channel's or a direct message's entry in the sidebar."""
    return page.locator(f'.conversation[data-channel="{channel}"]')


def join(page: Page, channel: str) -> None:
    """Join ``channel`` with the sidebar's form; wait until it is subscribed and in view."""
    page.fill("#join-name", channel)
    page.press("#join-name", "Enter")
    expect(conversation(page, channel)).to_have_attribute("data-state", "subscribed")
    expect(page.get_by_test_id("title")).to_have_text(f"# {channel}")


def switch(page: Page, channel: str) -> None:
    click(page, conversation(page, channel).get_by_test_id("open"))
    expect(conversation(page, channel)).to_have_attribute("data-current", "true")


def members(page: Page) -> Locator:
    return page.locator("#members > li.member")


def events(page: Page, kind: str | None = None) -> Locator:
    """The connection's last events (shown on demand); of one kind if given."""
    if kind is None:
        return page.locator("#events > li")
    return page.locator(f'#events > li[data-kind="{kind}"]')


def event_texts(page: Page, kind: str) -> Locator:
    return events(page, kind).get_by_test_id("event-text")


def eventually(page: Page, check: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until ``check()`` stops raising AssertionError (for what the test itself
    records, such as the frames a route got; the page's own state is for ``expect``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        page.wait_for_timeout(50)  # lets playwright deliver the events meanwhile


def chat_client(
    url: str, texts: Sequence[str], channel: str = "general", prefix: str = "py"
) -> list[int]:
    """A Python chat client publishes ``texts`` to ``channel`` and waits for their acks;
    returns their seqs.

    It runs on a thread of its own: the sync playwright API owns this thread's event loop.
    """

    async def run() -> list[int]:
        async with await rfc6455.connect(url, ping_interval=None) as ws:
            async with asyncio.timeout(15):
                for _ in range(3):  # connection id, welcome, history
                    await ws.recv()
                if channel != "general":
                    await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
                    while json.loads(str(await ws.recv())).get("type") != "subscribed":
                        pass
                for n, text in enumerate(texts):
                    request = {"type": "publish", "channel": channel, "message": text}
                    await ws.send(json.dumps({**request, "clientMsgId": f"{prefix}-{n}"}))
                seqs: list[int] = []
                while len(seqs) < len(texts):
                    message = json.loads(str(await ws.recv()))
                    if message.get("type") == "ack":
                        seqs.append(message["seq"])
                    elif message.get("type") == "error":
                        raise AssertionError(message)
                return seqs

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(timeout=30)


class Relay:
    """Puts the test between a page and the real server: it can drop the page's
    connection, hold its next one, hold what the page sends, and keep the acks from
    reaching the page. Made before the page loads, since the page connects at once.
    """

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.routes: list[WebSocketRoute] = []
        self.held: list[WebSocketRoute] = []
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self.waiting: list[tuple[WebSocketRoute, str | bytes]] = []
        self.hold = False
        self.hold_sent = False
        self.drop_acks = False
        page.route_web_socket(re.compile(r"^wss?://"), self._route)

    def _route(self, ws: WebSocketRoute) -> None:
        self.urls.append(ws.url)
        if self.hold:
            self.held.append(ws)  # open for the page, silent until release()
        else:
            self._connect(ws)

    def _connect(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        server.on_message(lambda message: self._to_page(ws, message))
        ws.on_message(lambda message: self._to_server(server, message))
        self.routes.append(ws)

    def _to_server(self, server: WebSocketRoute, message: str | bytes) -> None:
        self.sent.append(json.loads(message))
        if self.hold_sent:
            self.waiting.append((server, message))
        else:
            server.send(message)

    def _to_page(self, ws: WebSocketRoute, message: str | bytes) -> None:
        self.received.append(json.loads(message))
        if not (self.drop_acks and json.loads(message).get("type") == "ack"):
            ws.send(message)

    def flush_sent(self) -> None:
        """Send on what the page sent while ``hold_sent``, and stop holding."""
        self.hold_sent = False
        for server, message in self.waiting:
            server.send(message)
        self.waiting.clear()

    def drop(self) -> None:
        """Close the page's side with 1012 (and, so, the server's side)."""
        self.routes[-1].close(code=1012, reason="test: dropped")

    def release(self) -> None:
        self.hold = False
        for ws in self.held:
            self._connect(ws)
        self.held.clear()
