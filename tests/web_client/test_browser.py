"""The web client in a real browser (Debian's Chromium) against the real server.

Every wait is on a condition (playwright's ``expect`` retries until it holds),
never a fixed sleep. Where a test shows that something did *not* happen, it
waits for a later event that would have come after it.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from playwright.sync_api import Locator, Page, ViewportSize, WebSocketRoute, expect

import rfc6455
from tests.web_client.conftest import DESKTOP, PHONE, WEB_CLIENT, ChatServer, Pages

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
HHMMSS = re.compile(r"^\d\d:\d\d:\d\d$")
XSS = "<img src=x onerror=alert(1)>"


def entries(page: Page, kind: str) -> Locator:
    return page.locator(f'#log > li[data-kind="{kind}"]')


def texts(page: Page, kind: str) -> Locator:
    return entries(page, kind).locator('[data-testid="entry-text"]')


def open_served(pages: Pages, server: ChatServer) -> Page:
    """Open the page as the server serves it: it connects by itself (see ``joined``)."""
    page = pages.new()
    page.goto(server.http_url)
    return page


def open_file(pages: Pages) -> Page:
    page = pages.new()
    page.goto((WEB_CLIENT / "index.html").as_uri())
    return page


def click(page: Page, selector: str) -> None:
    """Click as a person would: in the window in front.

    Chromium runs no animation frames in a tab behind another one with an open
    WebSocket, so playwright's check that the target is stable would wait
    seconds for a frame.
    """
    page.bring_to_front()
    page.click(selector)


def joined(page: Page) -> str:
    """Wait until the page is connected; return the connectionId it shows."""
    expect(page.locator("#status")).to_have_attribute("data-state", "open")
    own_id = page.locator("#own-id")
    expect(own_id).to_have_text(UUID)
    return own_id.inner_text()


def connect(page: Page, url: str | None = None) -> str:
    """Click Connect (after typing ``url``) and return the connectionId the page shows."""
    if url is not None:
        page.fill("#url", url)
    click(page, "#connect")
    return joined(page)


def send(page: Page, text: str) -> None:
    """Type ``text`` and press Enter; wait until the page logged it as sent."""
    before = entries(page, "own").count()
    page.fill("#message", text)
    page.press("#message", "Enter")
    expect(entries(page, "own")).to_have_count(before + 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_each_page_shows_its_own_connection_id(pages: Pages, chat_server: ChatServer) -> None:
    a, b = open_served(pages, chat_server), open_served(pages, chat_server)
    # Served by the server, the page dials its own host and port.
    expect(a.locator("#url")).to_have_value(chat_server.ws_url)

    a_id, b_id = joined(a), joined(b)

    assert a_id != b_id
    for page, own_id in ((a, a_id), (b, b_id)):
        expect(entries(page, "connected")).to_have_count(1)
        expect(entries(page, "id")).to_have_attribute("data-connection-id", own_id)
        expect(texts(page, "welcome")).to_have_text("Welcome to the chat server!")
        expect(page.locator("#message")).to_be_enabled()
        # Connecting, connected, id, welcome: each with its local time.
        expect(page.locator('#log [data-testid="entry-time"]')).to_have_text([HHMMSS] * 4)


def test_the_served_page_connects_by_itself_and_the_file_page_waits(
    pages: Pages, chat_server: ChatServer
) -> None:
    # A page opened as a file has the Origin "null", refused unless allowed (origin.py).
    chat_server.stop()
    chat_server.start(chat_server.port, args=["--allowed-origins", "null"])
    served, served_sockets = pages.new(), []
    served.on("websocket", lambda ws: served_sockets.append(ws.url))
    served.goto(chat_server.http_url)

    # Nobody clicks Connect: the page dials the server that served it.
    own_id = joined(served)
    expect(texts(served, "connected")).to_have_text([f"Connected to {chat_server.ws_url}"])
    assert served_sockets == [chat_server.ws_url]
    assert f"connect {own_id} from" in chat_server.log()

    local, local_sockets = pages.new(), []
    local.on("websocket", lambda ws: local_sockets.append(ws.url))
    local.goto((WEB_CLIENT / "index.html").as_uri())
    expect(local.locator("#status")).to_have_attribute("data-state", "closed")
    expect(local.locator("#connect")).to_be_enabled()
    expect(local.locator("#disconnect")).to_be_disabled()
    expect(local.locator("#message")).to_be_disabled()
    expect(local.locator("#send")).to_be_disabled()
    expect(local.locator("#log > li")).to_have_count(0)
    # Connect is what makes it dial: its socket is the first and only one.
    connect(local, chat_server.ws_url)
    assert local_sockets == [chat_server.ws_url]


def test_a_message_reaches_the_other_page_and_shows_once_on_its_own(
    pages: Pages, chat_server: ChatServer
) -> None:
    a, b = open_served(pages, chat_server), open_served(pages, chat_server)
    a_id, _ = joined(a), joined(b)

    send(a, "hello from A")

    received = entries(b, "broadcast")
    expect(received).to_have_count(1)
    expect(received).to_have_attribute("data-sender", a_id)
    expect(received.locator('[data-testid="sender"]')).to_have_text(a_id[:8])
    expect(received.locator('[data-testid="entry-text"]')).to_have_text("hello from A")
    expect(received.locator('[data-testid="server-time"]')).to_have_text(
        re.compile(r"^sent \d\d:\d\d:\d\d")
    )
    expect(received.locator('[data-testid="server-time"]')).to_have_attribute(
        "title", re.compile(r"^server time \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
    )
    # B answers; messages reach A in order, so an echo of A's own message
    # would be in A's log before the answer.
    send(b, "hello from B")
    expect(texts(a, "broadcast")).to_have_text(["hello from B"])
    expect(texts(a, "own")).to_have_text(["hello from A"])
    expect(entries(a, "own").locator('[data-testid="sender"]')).to_have_text("You")
    expect(entries(b, "own")).to_have_count(1)


def test_closing_a_page_tells_the_others_with_the_count(
    pages: Pages, chat_server: ChatServer
) -> None:
    a, b, c = (open_served(pages, chat_server) for _ in range(3))
    joined(a)
    b_id, c_id = joined(b), joined(c)

    c.close()
    left = entries(a, "user_left")
    expect(left).to_have_count(1)
    expect(left).to_have_attribute("data-connection-id", c_id)
    expect(left).to_have_attribute("data-total", "2")
    expect(left.locator('[data-testid="entry-text"]')).to_contain_text(c_id[:8])
    expect(left.locator('[data-testid="entry-text"]')).to_contain_text("2 connections open")

    b.close()
    expect(left).to_have_count(2)
    expect(left.nth(1)).to_have_attribute("data-connection-id", b_id)
    expect(left.nth(1)).to_have_attribute("data-total", "1")
    expect(left.nth(1).locator('[data-testid="entry-text"]')).to_contain_text("1 connection open")


def crowd(url: str, size: int) -> None:
    """``size`` Python chat clients connect, are greeted, then all close at once."""

    async def one() -> rfc6455.Connection:
        ws = await rfc6455.connect(url, ping_interval=None)
        for _ in range(3):  # connection id, welcome, history
            await ws.recv()
        return ws

    async def run() -> None:
        async with asyncio.timeout(20):
            clients = await asyncio.gather(*(one() for _ in range(size)))
            await asyncio.gather(*(ws.close() for ws in clients))

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result(timeout=30)


def test_many_leaving_at_once_are_announced_in_one_entry(
    pages: Pages, chat_server: ChatServer
) -> None:
    # The server announces 20 departures one by one, then those beyond --leave-rate together.
    chat_server.stop()
    chat_server.start(args=["--leave-rate", "0.5"])
    page = pages.new()
    frames: list[dict[str, Any]] = []
    page.on(
        "websocket",
        lambda ws: ws.on("framereceived", lambda payload: frames.append(json.loads(payload))),
    )
    page.goto(chat_server.http_url)
    joined(page)
    leaving = 30

    crowd(chat_server.ws_url, leaving)

    # The last announcement is made once all have left: only the page is still there.
    departures = page.locator('#log > li:is([data-kind="user_left"], [data-kind="users_left"])')
    expect(departures.last).to_have_attribute("data-total", "1", timeout=15_000)
    sent = [frame for frame in frames if frame.get("type") in ("user_left", "users_left")]
    together = [frame for frame in sent if frame["type"] == "users_left"]
    assert together, "the server announced every departure one by one"
    # One entry for each announcement, in the order the server sent them.
    kinds = departures.evaluate_all("ls => ls.map(l => l.dataset.kind)")
    assert kinds == [frame["type"] for frame in sent]
    expect(entries(page, "unknown")).to_have_count(0)
    shown = entries(page, "users_left")
    for entry, frame in zip(shown.all(), together, strict=True):
        count = len(frame["users"]) + frame["more"]
        names = [user["connectionId"][:8] for user in frame["users"][:3]]
        expect(entry).to_have_attribute("data-count", str(count))
        expect(entry.get_by_test_id("entry-text")).to_have_text(
            re.compile(rf"^{count} people left \({', '.join(names)}\b.* · \d+ connections? open$")
        )
    assert (
        entries(page, "user_left").count()
        + sum(int(entry.get_attribute("data-count") or "") for entry in shown.all())
        == leaving
    )
    expect(shown.last.get_by_test_id("entry-text")).to_contain_text("· 1 connection open")


def test_users_left_names_a_few_and_counts_the_others(pages: Pages) -> None:
    page = open_file(pages)
    routes = mock_server(page)
    connect(page)
    users = [
        {"connectionId": "a0000000-0000-4000-8000-000000000000", "user": "ann"},
        {"connectionId": "b0000000-0000-4000-8000-000000000000", "closeStatus": 1001},
        {"connectionId": "c0000000-0000-4000-8000-000000000000", "user": "cy"},
        {"connectionId": "d0000000-0000-4000-8000-000000000000"},
    ]
    message = {"type": "users_left", "users": users, "more": 7, "totalConnections": 4}
    routes[-1].send(json.dumps(message))
    routes[-1].send(json.dumps({**message, "users": users[:2], "more": 0, "totalConnections": 1}))

    shown = entries(page, "users_left")
    expect(shown.get_by_test_id("entry-text")).to_have_text(
        [
            "11 people left (ann, b0000000, cy and 8 more) · 4 connections open",
            "2 people left (ann and b0000000) · 1 connection open",
        ]
    )
    expect(shown.first).to_have_attribute("title", "ann, b0000000, cy, d0000000 and 7 more")
    expect(shown.first).to_have_attribute("data-count", "11")
    expect(shown.first).to_have_attribute("data-total", "4")
    expect(entries(page, "unknown")).to_have_count(0)


def test_markup_in_a_message_is_shown_as_text(pages: Pages, chat_server: ChatServer) -> None:
    a, b = open_served(pages, chat_server), open_served(pages, chat_server)
    joined(a)
    joined(b)

    send(a, XSS)
    send(a, "after")

    expect(texts(b, "broadcast")).to_have_text([XSS, "after"])
    expect(texts(a, "own")).to_have_text([XSS, "after"])
    # No element was created, so no onerror handler can ever fire.
    for page in (a, b):
        assert page.locator("img").count() == 0
        assert page.locator("#log *:not(li, time, div, span, p)").count() == 0
    assert pages.dialogs == []


def test_sending_needs_a_connection_and_text(pages: Pages, chat_server: ChatServer) -> None:
    a, b = open_served(pages, chat_server), open_served(pages, chat_server)
    joined(a)
    joined(b)

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
    expect(entries(b, "broadcast")).to_have_count(2)
    assert texts(b, "broadcast").all_text_contents() == ["first real message", "line 1\nline 2"]
    assert texts(a, "own").all_text_contents() == ["first real message", "line 1\nline 2"]
    expect(a.locator("#message")).to_have_value("")

    click(a, "#disconnect")
    closed = entries(a, "closed")
    expect(closed).to_have_attribute("data-code", "1000")
    expect(closed).to_contain_text("1000 Normal closure")
    expect(a.locator("#status")).to_have_attribute("data-state", "closed")
    expect(a.locator("#message")).to_be_disabled()
    expect(a.locator("#send")).to_be_disabled()
    expect(a.locator("#own-id")).to_have_text("—")
    # A chosen disconnect is not followed by a reconnect.
    expect(entries(a, "reconnect")).to_have_count(0)
    expect(entries(b, "user_left")).to_have_attribute("data-total", "1")


def test_stopping_the_server_closes_and_reconnect_brings_the_page_back(
    pages: Pages, chat_server: ChatServer
) -> None:
    a, b = open_served(pages, chat_server), open_served(pages, chat_server)
    b.uncheck("#reconnect")
    old_id = joined(a)
    joined(b)
    port = chat_server.port

    assert chat_server.stop() == 0

    for page in (a, b):
        closed = entries(page, "closed").first
        expect(closed).to_have_attribute("data-code", re.compile(r"^100[16]$"))
        expect(closed).to_contain_text(re.compile(r"100[16] (Going away|Connection lost)"))
        expect(page.locator("#message")).to_be_disabled()
        expect(page.locator("#send")).to_be_disabled()
    # B, with reconnect off, schedules nothing (decided in the same event as the log entry).
    expect(entries(b, "reconnect")).to_have_count(0)
    expect(texts(a, "reconnect").first).to_contain_text(re.compile(r"Reconnecting in \d"))

    chat_server.start(port)

    expect(a.locator("#status")).to_have_attribute("data-state", "open", timeout=15_000)
    expect(a.locator("#own-id")).to_have_text(UUID)
    assert a.locator("#own-id").inner_text() != old_id
    expect(entries(a, "connected")).to_have_count(2)
    expect(a.locator("#message")).to_be_enabled()
    # The reconnected page chats again: B comes back by hand and receives.
    connect(b)
    send(a, "back again")
    expect(texts(b, "broadcast")).to_have_text(["back again"])
    expect(entries(b, "reconnect")).to_have_count(0)


def test_turning_reconnect_off_cancels_the_pending_attempt(pages: Pages) -> None:
    page = open_file(pages)
    page.fill("#url", f"ws://127.0.0.1:{free_port()}/")
    click(page, "#connect")

    failed = entries(page, "closed").first
    expect(failed).to_have_attribute("data-code", "1006")
    expect(failed).to_contain_text("Could not connect")
    expect(failed).to_contain_text("1006 Connection lost: no closing handshake")
    expect(entries(page, "reconnect")).to_have_count(1)
    expect(page.locator("#disconnect")).to_be_enabled()

    page.uncheck("#reconnect")
    expect(entries(page, "info").last).to_contain_text("pending attempt is cancelled")
    expect(page.locator("#disconnect")).to_be_disabled()
    expect(page.locator("#connect")).to_be_enabled()
    expect(page.locator("#status")).to_have_attribute("data-state", "closed")


def test_disconnect_while_connecting_cancels_the_attempt(pages: Pages) -> None:
    # A listening socket that never answers keeps the handshake pending.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        page = open_file(pages)
        page.fill("#url", f"ws://127.0.0.1:{silent.getsockname()[1]}/")
        click(page, "#connect")
        expect(page.locator("#status")).to_have_attribute("data-state", "connecting")
        expect(page.locator("#send")).to_be_disabled()

        click(page, "#disconnect")

        expect(texts(page, "closed")).to_have_text(
            re.compile(r"^Connection attempt to .* cancelled")
        )
        expect(page.locator("#status")).to_have_attribute("data-state", "closed")
        expect(page.locator("#connect")).to_be_enabled()
        expect(entries(page, "reconnect")).to_have_count(0)


def test_the_page_opened_as_a_file_and_the_served_page_chat(
    pages: Pages, chat_server: ChatServer
) -> None:
    # A page opened as a file has the Origin "null", refused unless allowed (origin.py).
    chat_server.stop()
    chat_server.start(chat_server.port, args=["--allowed-origins", "null"])
    local, served = open_file(pages), open_served(pages, chat_server)
    expect(local.locator("#url")).to_have_value("ws://localhost:5000")

    local_id = connect(local, chat_server.ws_url)
    served_id = joined(served)

    send(local, "from the file page")
    send(served, "from the served page")
    expect(texts(served, "broadcast")).to_have_text(["from the file page"])
    expect(entries(served, "broadcast")).to_have_attribute("data-sender", local_id)
    expect(texts(local, "broadcast")).to_have_text(["from the served page"])
    expect(entries(local, "broadcast")).to_have_attribute("data-sender", served_id)


def mock_server(page: Page) -> list[WebSocketRoute]:
    """Answer the page's WebSocket in the test instead of a server; returns the live routes."""
    routes: list[WebSocketRoute] = []

    def handler(ws: WebSocketRoute) -> None:
        routes.append(ws)
        ws.send('{"connectionId": "00000000-0000-4000-8000-000000000000", "extra": 1}')

    page.route_web_socket(re.compile(r"^wss?://"), handler)
    return routes


def test_unknown_messages_and_close_codes_are_logged_in_plain_words(pages: Pages) -> None:
    page = open_file(pages)
    page.uncheck("#reconnect")
    routes = mock_server(page)
    connect(page)

    ws = routes[-1]
    ws.send('{"type": "mystery", "message": "<b>x</b>"}')
    ws.send("not json")
    ws.send("[1, 2]")
    ws.send('{"type": "error", "code": "rate_limited", "retryAfterMs": 1500}')
    unknown = texts(page, "unknown")
    expect(unknown).to_have_text(
        [
            'Unknown message type “mystery”: {"type": "mystery", "message": "<b>x</b>"}',
            "Message that is not JSON: not json",
            "Message that is not a JSON object: [1, 2]",
        ]
    )
    expect(entries(page, "unknown").first).to_have_attribute("data-type", "mystery")
    expect(texts(page, "error")).to_have_text(["Server error rate_limited (retry after 1.5 s)"])
    assert page.locator("#log b").count() == 0

    words = {
        1000: "1000 Normal closure.",
        1001: "1001 Going away",
        1008: "1008 Policy violation",
        1009: "1009 Message too big",
        1011: "1011 Server error",
        4000: "4000 Closed by the application.",
        3000: "3000 Closed.",
    }
    for n, (code, text) in enumerate(words.items()):
        if n:
            connect(page)
        routes[-1].close(code=code, reason="because")
        closed = entries(page, "closed").nth(n)
        expect(closed).to_have_attribute("data-code", str(code))
        expect(closed).to_contain_text(f"Connection closed: {text}")
        expect(closed).to_contain_text("Reason: “because”.")
        expect(page.locator("#status")).to_have_attribute("data-state", "closed")


def test_the_log_follows_new_entries_and_can_be_cleared(pages: Pages) -> None:
    page = open_file(pages)
    routes = mock_server(page)
    connect(page)
    scroller = page.locator("#log-scroll")
    at_bottom = "s => s.scrollHeight - s.scrollTop - s.clientHeight <= 2"

    for i in range(120):
        routes[-1].send(
            '{"type": "broadcast", "connectionId": "abcdef12-0000-4000-8000-000000000000",'
            f' "message": "line {i}", "timestamp": "2024-01-02 03:04:05"}}'
        )
    expect(texts(page, "broadcast").last).to_have_text("line 119")
    assert scroller.evaluate(at_bottom)
    expect(page.locator("#jump")).to_be_hidden()

    # Scrolled up to read, the view stays put and offers a way back down.
    scroller.evaluate("s => { s.scrollTop = 0; }")
    routes[-1].send('{"type": "mystery"}')
    expect(entries(page, "unknown")).to_have_count(1)
    assert scroller.evaluate("s => s.scrollTop") == 0
    click(page, "#jump")
    assert scroller.evaluate(at_bottom)
    expect(page.locator("#jump")).to_be_hidden()

    click(page, "#clear")
    expect(page.locator("#log > li")).to_have_count(0)
    expect(page.locator("#log-count")).to_have_text("0 entries")
    routes[-1].send('{"type": "welcome", "message": "still here"}')
    expect(page.locator("#log > li")).to_have_count(1)


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
    background = png.rgb(1, 1)
    assert near(background, css_rgb(page.locator("body")))
    brightness = sum(background) / 3
    assert brightness < 64 if scheme == "dark" else brightness > 192, (scheme, background)

    log = page.locator("#log-scroll").bounding_box()
    assert log is not None
    in_view: dict[str, int] = {"own": 0, "broadcast": 0}
    for kind in in_view:
        for body in entries(page, kind).locator(".entry-body").all():
            box, text = body.bounding_box(), body.get_by_test_id("entry-text").bounding_box()
            assert box is not None
            assert text is not None
            if not log["y"] <= box["y"] < box["y"] + box["height"] <= log["y"] + log["height"]:
                continue  # not all of it in the log's view
            bubble = css_rgb(body)
            # In the top padding, across from any text: the bubble's own colour.
            x, y = int(box["x"] + box["width"] / 2), int(box["y"] + 3)
            assert near(png.rgb(x, y), bubble), (kind, (x, y), png.rgb(x, y), bubble)
            ink = sum(
                not near(png.rgb(px, py), bubble, 60)
                for py in range(int(text["y"]), int(text["y"] + text["height"]))
                for px in range(int(text["x"]), int(text["x"] + text["width"]))
            )
            assert ink > 50, f"no text drawn in the {kind} bubble at {(x, y)}"
            in_view[kind] += 1
    assert in_view["own"], f"none of one's own messages in view: {in_view}"
    assert in_view["broadcast"], f"none of the other's messages in view: {in_view}"


def test_screenshots_of_a_conversation(
    pages: Pages,
    chat_server: ChatServer,
    screenshot_dir: Path,
    record_screenshot: Callable[[Path], None],
) -> None:
    a, b = open_served(pages, chat_server), open_served(pages, chat_server)
    joined(a)
    joined(b)
    script = [
        (a, "Hi! Is the new server up?"),
        (b, "Yes: RFC 6455 from scratch, pure Python."),
        (a, "Nice. And <b>markup</b> stays text."),
        (b, "Multi-line works too:\n- one\n- two"),
    ]
    for page, text in script:
        send(page, text)
    expect(entries(a, "broadcast")).to_have_count(2)
    expect(entries(b, "broadcast")).to_have_count(2)
    assert texts(a, "broadcast").last.text_content() == script[-1][1]
    # Confirmed, so drawn in full colour (a message waiting for its ack is faded).
    for page in (a, b):
        for entry in entries(page, "own").all():
            expect(entry).to_have_attribute("data-status", "confirmed")

    shots: list[tuple[Page, ViewportSize, Literal["light", "dark"], str]] = [
        (a, DESKTOP, "light", "conversation-desktop-a.png"),
        (b, DESKTOP, "light", "conversation-desktop-b.png"),
        (a, PHONE, "light", "conversation-phone-a.png"),
        (b, PHONE, "dark", "conversation-phone-b-dark.png"),
    ]
    for page, viewport, scheme, name in shots:
        page.bring_to_front()  # a tab behind another one draws no frames
        page.set_viewport_size(viewport)
        page.emulate_media(color_scheme=scheme)
        # Two frames: the new layout, then the log kept at its latest entry.
        page.evaluate(
            "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
        )
        path = screenshot_dir / name
        page.screenshot(path=path)
        record_screenshot(path)
        check_screenshot(page, read_png(path), viewport, scheme)


# Resume after reconnect: seq, epoch, history and acks (README, "The web client")

EPOCH = "e0000000000000000000000000000001"
OTHER = "abcdef12-0000-4000-8000-000000000000"


def chat_item(seq: int, text: str, sender: str = OTHER) -> dict[str, object]:
    """A broadcast-shaped message, as the server sends it live and in a history."""
    return {
        "type": "broadcast",
        "connectionId": sender,
        "message": text,
        "timestamp": "2024-01-02 03:04:05",
        "seq": seq,
    }


def history(items: list[dict[str, object]], *, epoch: str = EPOCH, recovered: bool = False) -> str:
    return json.dumps(
        {"type": "history", "messages": items, "epoch": epoch, "recovered": recovered}
    )


def seqs(page: Page) -> list[str]:
    """The data-seq of every chat message shown, in order ("" for none)."""
    chat = page.locator('#log > li[data-kind="broadcast"], #log > li[data-kind="own"]')
    return [value or "" for value in chat.evaluate_all("ls => ls.map(l => l.dataset.seq)")]


def test_history_acks_and_resume_against_a_scripted_server(pages: Pages) -> None:
    """Each connection is answered by a script: the client's side of resume, step by step."""
    page = open_file(pages)
    urls: list[str] = []
    routes: list[WebSocketRoute] = []
    received: list[dict[str, Any]] = []
    ids = [f"0000000{n}-0000-4000-8000-000000000000" for n in range(3)]
    first_history = history([chat_item(1, "one"), chat_item(2, "two")])
    scripts = [
        # A new page: the last messages, not a resume.
        (EPOCH, first_history),
        # The resume: seq 3 is shown already; seq 6 is the page's own message
        # whose ack never came (its item has no clientMsgId).
        (
            EPOCH,
            history(
                [chat_item(3, "three"), chat_item(6, "lost ack", ids[0]), chat_item(7, "seven")],
                recovered=True,
            ),
        ),
        # Another database: the view starts again.
        ("e2", history([chat_item(1, "fresh")], epoch="e2")),
    ]

    def handler(ws: WebSocketRoute) -> None:
        n = len(routes)
        urls.append(ws.url)
        routes.append(ws)
        ws.on_message(lambda message: received.append(json.loads(message)))
        epoch, replay = scripts[n]
        ws.send(json.dumps({"connectionId": ids[n]}))
        ws.send(json.dumps({"type": "welcome", "message": "hi", "epoch": epoch}))
        ws.send(replay)

    page.route_web_socket(re.compile(r"^wss?://"), handler)
    connect(page, "ws://chat.test/room?x=1")
    expect(texts(page, "broadcast")).to_have_text(["one", "two"])
    assert urls == ["ws://chat.test/room?x=1"]
    assert seqs(page) == ["1", "2"]

    routes[0].send(json.dumps(chat_item(3, "three")))
    routes[0].send(json.dumps(chat_item(2, "two")))  # a duplicate is not shown
    routes[0].send(json.dumps(chat_item(4, "four")))
    expect(texts(page, "broadcast")).to_have_text(["one", "two", "three", "four"])

    # Own messages go out as objects with a clientMsgId; the ack confirms them.
    send(page, "mine")
    own = entries(page, "own")
    expect(own.locator('[data-testid="delivery"]')).to_have_text("sending…")
    expect(own).to_have_attribute("data-status", "pending")
    sent = received[-1]
    assert set(sent) == {"message", "clientMsgId"}
    assert sent["message"] == "mine"
    assert UUID.match(sent["clientMsgId"])
    routes[0].send(json.dumps({"type": "ack", "seq": 5, "clientMsgId": sent["clientMsgId"]}))
    expect(own).to_have_attribute("data-status", "confirmed")
    expect(own).to_have_attribute("data-seq", "5")
    expect(own.locator('[data-testid="delivery"]')).to_have_text("✓")

    # Another: the connection drops before its ack.
    send(page, "lost ack")
    routes[0].close(code=1012, reason="restart")
    expect(own.nth(1)).to_have_attribute("data-status", "unconfirmed")
    expect(own.nth(1).locator('[data-testid="delivery"]')).to_have_text("not confirmed")
    # ... the ack of "mine" (seq 5) was the highest seq seen.
    expect(page.locator("#status")).to_have_attribute("data-state", "open")
    assert urls[1] == f"ws://chat.test/room?x=1&since=5&epoch={EPOCH}"
    expect(texts(page, "info").last).to_have_text("Resumed after message #5: 3 missed messages.")
    # "lost ack" was saved after all: shown once, confirmed, in its place.
    expect(texts(page, "broadcast")).to_have_text(["one", "two", "three", "four", "seven"])
    expect(texts(page, "own")).to_have_text(["mine", "lost ack"])
    expect(own.nth(1)).to_have_attribute("data-status", "confirmed")
    assert seqs(page) == ["1", "2", "3", "4", "5", "6", "7"]

    routes[1].close(code=1001)
    expect(entries(page, "connected")).to_have_count(3)
    assert urls[2] == f"ws://chat.test/room?x=1&since=7&epoch={EPOCH}"
    expect(texts(page, "broadcast")).to_have_text(["fresh"])
    expect(entries(page, "own")).to_have_count(0)
    expect(texts(page, "info").last).to_contain_text("The server could not resume after message #7")
    expect(texts(page, "info").last).to_contain_text("showing its latest 1 instead")
    routes[2].send(json.dumps(chat_item(2, "after the reset")))
    expect(texts(page, "broadcast")).to_have_text(["fresh", "after the reset"])


def chat_client(url: str, texts: list[str]) -> list[int]:
    """A Python chat client sends ``texts`` and waits for their acks; returns their seqs.

    It runs on a thread of its own: the sync playwright API owns this thread's event loop.
    """

    async def run() -> list[int]:
        async with await rfc6455.connect(url, ping_interval=None) as ws:
            async with asyncio.timeout(10):
                for _ in range(3):  # connection id, welcome, history
                    await ws.recv()
                for n, text in enumerate(texts):
                    await ws.send(json.dumps({"message": text, "clientMsgId": str(n)}))
                seqs: list[int] = []
                while len(seqs) < len(texts):
                    message = json.loads(str(await ws.recv()))
                    if message.get("type") == "ack":
                        seqs.append(message["seq"])
                return seqs

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(timeout=20)


class Relay:
    """Puts the test between a page and the real server: it can drop the page's
    connection, hold its next one, and keep the acks from reaching the page.
    """

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.routes: list[WebSocketRoute] = []
        self.held: list[WebSocketRoute] = []
        self.hold = False
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
        self.routes.append(ws)

    def _to_page(self, ws: WebSocketRoute, message: str | bytes) -> None:
        if not (self.drop_acks and json.loads(message).get("type") == "ack"):
            ws.send(message)

    def drop(self) -> None:
        """Close the page's side with 1012 (and, so, the server's side)."""
        self.routes[-1].close(code=1012, reason="test: dropped")

    def release(self) -> None:
        self.hold = False
        for ws in self.held:
            self._connect(ws)
        self.held.clear()


def test_a_dropped_page_resumes_and_shows_every_message_once(
    pages: Pages, chat_server: ChatServer
) -> None:
    # 60 messages at once are over the default rate limit's burst: this test is about resuming.
    chat_server.stop()
    chat_server.start(args=["--rate-limit", "0"])
    a, b = pages.new(), open_served(pages, chat_server)
    relay = Relay(a)  # before the page loads, since it connects at once
    a.goto(chat_server.http_url)
    joined(a)
    joined(b)
    before = chat_client(chat_server.ws_url, ["before 1", "before 2"])
    expect(texts(a, "broadcast")).to_have_text(["before 1", "before 2"])
    send(a, "mine")
    expect(entries(a, "own")).to_have_attribute("data-status", "confirmed")
    # This one reaches the server, which broadcasts it, but its ack never reaches the page.
    relay.drop_acks = True
    send(a, "ack lost")
    expect(texts(b, "broadcast")).to_have_text(["before 1", "before 2", "mine", "ack lost"])
    expect(entries(a, "own").last).to_have_attribute("data-status", "pending")
    last_seen = int(entries(a, "own").first.get_attribute("data-seq") or "")
    assert last_seen > before[-1]

    relay.drop_acks = False
    relay.hold = True
    relay.drop()
    expect(entries(a, "own").last).to_have_attribute("data-status", "unconfirmed")
    expect(entries(a, "connected")).to_have_count(2)  # the reconnect, held
    missed = chat_client(chat_server.ws_url, [f"missed {n}" for n in range(60)])
    relay.release()

    expect(texts(a, "info").last).to_have_text(
        f"Resumed after message #{last_seen}: 61 missed messages."
    )
    assert re.fullmatch(
        rf"{re.escape(chat_server.ws_url)}\?since={last_seen}&epoch=[0-9a-f-]+", relay.urls[1]
    )
    expected = ["before 1", "before 2", *(f"missed {n}" for n in range(60))]
    expect(texts(a, "broadcast")).to_have_text(expected)
    # "ack lost" is in the history under the page's first id: confirmed, not shown twice.
    expect(texts(a, "own")).to_have_text(["mine", "ack lost"])
    expect(entries(a, "own").last).to_have_attribute("data-status", "confirmed")
    after = chat_client(chat_server.ws_url, ["after"])
    expect(texts(a, "broadcast")).to_have_text([*expected, "after"])
    shown = [int(seq) for seq in seqs(a)]
    assert shown == sorted(set(shown))
    assert shown[: len(before)] == before
    assert shown[-61:] == [*missed, *after]


def test_a_new_database_resets_the_view(pages: Pages, chat_server: ChatServer) -> None:
    page = open_served(pages, chat_server)
    joined(page)
    chat_client(chat_server.ws_url, ["old 1", "old 2"])
    send(page, "old mine")
    expect(texts(page, "broadcast")).to_have_text(["old 1", "old 2"])
    expect(entries(page, "own")).to_have_attribute("data-status", "confirmed")
    seq = entries(page, "own").get_attribute("data-seq")

    port = chat_server.port
    assert chat_server.stop() == 0
    chat_server.start(port, db="other.db")
    chat_client(chat_server.ws_url, ["new 1"])

    expect(texts(page, "info").last).to_contain_text(
        f"The server could not resume after message #{seq}", timeout=15_000
    )
    # It asked to resume: every attempt's URL had since= and epoch=.
    attempts = texts(page, "info").filter(has_text="Reconnecting to")
    expect(attempts.first).to_contain_text(f"?since={seq}&epoch=")
    assert attempts.count() == attempts.filter(has_text=f"?since={seq}&epoch=").count()
    expect(texts(page, "broadcast")).to_have_text(["new 1"])
    expect(entries(page, "own")).to_have_count(0)
    send(page, "new mine")
    expect(entries(page, "own")).to_have_attribute("data-seq", "2")


# One's own messages the server refuses: "not sent", the reason, Retry (README, "The web client")


def scripted_server(page: Page) -> tuple[list[WebSocketRoute], list[dict[str, Any]]]:
    """Answer each connection as the chat server greets; returns the routes and what they got."""
    routes: list[WebSocketRoute] = []
    received: list[dict[str, Any]] = []

    def handler(ws: WebSocketRoute) -> None:
        routes.append(ws)
        ws.on_message(lambda message: received.append(json.loads(message)))
        ws.send(json.dumps({"connectionId": f"0000000{len(routes)}-0000-4000-8000-000000000000"}))
        ws.send(json.dumps({"type": "welcome", "message": "hi", "epoch": EPOCH}))
        ws.send(history([]))

    page.route_web_socket(re.compile(r"^wss?://"), handler)
    return routes, received


def test_a_rate_limited_message_is_not_sent_and_retry_delivers_it(
    pages: Pages, chat_server: ChatServer
) -> None:
    # One message at once, then one every 4 s: the second, sent at once, is refused.
    chat_server.stop()
    chat_server.start(args=["--rate-limit", "0.25", "--rate-burst", "1"])
    a, b = open_served(pages, chat_server), open_served(pages, chat_server)
    joined(a)
    joined(b)
    send(a, "first")
    own = entries(a, "own")
    expect(own.first).to_have_attribute("data-status", "confirmed")

    send(a, "second")
    refused = own.nth(1)
    expect(refused).to_have_attribute("data-status", "failed")
    expect(refused.get_by_test_id("delivery")).to_have_text("not sent")
    expect(refused.get_by_test_id("delivery-reason")).to_have_text(
        "Sent too fast: the server did not take it."
    )
    # Shown on the message, not as a protocol error in the log.
    expect(entries(a, "error")).to_have_count(0)
    retry = refused.get_by_test_id("retry")
    expect(retry).to_be_visible()

    # Enabled once the server's retryAfterMs is over; it sends the same message again.
    expect(retry).to_be_enabled(timeout=15_000)
    expect(retry).to_have_text("Retry")
    click(a, '#log [data-testid="retry"]')
    expect(refused).to_have_attribute("data-status", "confirmed")
    expect(refused.get_by_test_id("delivery")).to_have_text("✓")
    expect(refused.get_by_test_id("delivery-note")).to_have_count(0)
    expect(texts(b, "broadcast")).to_have_text(["first", "second"])
    assert int(refused.get_attribute("data-seq") or "") > int(
        own.first.get_attribute("data-seq") or ""
    )
    assert texts(a, "own").all_text_contents() == ["first", "second"]


def test_a_refused_message_shows_why_and_retry_resends_it_with_its_id(pages: Pages) -> None:
    page = open_file(pages)
    page.uncheck("#reconnect")
    routes, received = scripted_server(page)
    connect(page)

    send(page, "too fast")
    send(page, "odd")
    send(page, "lost")
    fast, odd, lost = (received[n]["clientMsgId"] for n in range(3))
    routes[-1].send(
        json.dumps(
            {"type": "error", "code": "rate_limited", "retryAfterMs": 60_000, "clientMsgId": fast}
        )
    )
    reason = "a message must not contain control characters other than tab and newline"
    routes[-1].send(
        json.dumps(
            {"type": "error", "code": "invalid_message", "message": reason, "clientMsgId": odd}
        )
    )
    routes[-1].send(
        json.dumps({"type": "error", "code": "not_persisted", "seq": 9, "clientMsgId": lost})
    )
    own = entries(page, "own")
    for n in range(3):
        expect(own.nth(n)).to_have_attribute("data-status", "failed")
    expect(own.get_by_test_id("delivery")).to_have_text(["not sent"] * 3)
    expect(own.get_by_test_id("delivery-reason")).to_have_text(
        [
            "Sent too fast: the server did not take it.",
            f"The server refused it: {reason}.",
            "The server could not save it (the others may have seen it).",
        ]
    )
    expect(entries(page, "error")).to_have_count(0)
    # The rate limit's wait is counted down; the others may be retried at once.
    expect(own.get_by_test_id("retry")).to_have_text(
        [re.compile(r"^Retry in 60 s$"), *["Retry"] * 2]
    )
    expect(own.first.get_by_test_id("retry")).to_be_disabled()
    expect(own.nth(1).get_by_test_id("retry")).to_be_enabled()

    own.nth(1).get_by_test_id("retry").click()
    # The same text with the same id, shown "sending…" again, at the end of the log.
    expect(page.locator("#log > li").last).to_have_attribute("data-client-msg-id", odd)
    assert len(received) == 4
    assert received[-1] == {"message": "odd", "clientMsgId": odd}
    assert texts(page, "own").all_text_contents() == ["too fast", "lost", "odd"]
    retried = own.last
    expect(retried).to_have_attribute("data-status", "pending")
    expect(retried.get_by_test_id("delivery")).to_have_text("sending…")
    expect(retried.get_by_test_id("retry")).to_have_count(0)
    routes[-1].send(json.dumps({"type": "ack", "seq": 10, "clientMsgId": odd}))
    expect(retried).to_have_attribute("data-status", "confirmed")
    expect(retried.get_by_test_id("delivery")).to_have_text("✓")

    # Without a connection, Retry waits for one.
    routes[-1].close(code=1000)
    expect(page.locator("#status")).to_have_attribute("data-state", "closed")
    expect(own.nth(1).get_by_test_id("retry")).to_be_disabled()
    connect(page)
    expect(own.nth(1).get_by_test_id("retry")).to_be_enabled()
    expect(own.first.get_by_test_id("retry")).to_be_disabled()


def test_the_composer_keeps_what_the_server_would_refuse(pages: Pages) -> None:
    page = open_file(pages)
    _, received = scripted_server(page)
    connect(page)
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
    assert [message["message"] for message in received] == ["😀" * 16_384]
    assert texts(page, "own").count() == 1
