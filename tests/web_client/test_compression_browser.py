"""permessage-deflate (RFC 7692) between Chromium and the server: negotiated, and chatted through.

Chromium offers ``permessage-deflate; client_max_window_bits`` on every WebSocket; the
server (``--compression on``, its default) accepts it without context takeover. Messages
over the 256-byte threshold go compressed both ways.
"""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from tests.web_client.conftest import ChatServer, Pages
from tests.web_client.helpers import click, event_texts, open_chat, others, send, status, texts

NO_CONTEXT = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

# Opens a WebSocket from the page, as the web client does, and reports what the
# handshake negotiated (WebSocket.extensions), then echoes one long message on /echo.
_PROBE = """async ([url, text]) => {
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  const echoed = new Promise(resolve => { ws.onmessage = event => resolve(event.data); });
  ws.send(text);
  const reply = await echoed;
  ws.close();
  return [ws.extensions, reply === text];
}"""


def test_chromium_negotiates_compression_and_chats_through_it(
    pages: Pages, chat_server: ChatServer
) -> None:
    a = open_chat(pages, chat_server, "Ann")
    b = open_chat(pages, chat_server, "Bob")
    # The web client reads its socket's extensions, and says so in its connection events.
    click(a, status(a))
    expect(event_texts(a, "connected")).to_have_text(
        [re.compile(r"^Connected to .*, compressed \(permessage-deflate\)$")]
    )
    click(a, status(a))
    long_text = ("compressed both ways, " * 60).strip()
    extensions, echoed = a.evaluate(_PROBE, [chat_server.ws_url + "echo", long_text])
    assert extensions == NO_CONTEXT
    assert echoed
    # The pages' own sockets negotiated it too: the chat works through it, short
    # messages (sent as they are) and long ones (compressed) alike.
    send(a, "short")
    send(a, long_text)
    expect(texts(others(b))).to_have_text(["short", long_text])
    send(b, long_text + " back")
    expect(texts(others(a))).to_have_text([long_text + " back"])


def test_chromium_without_compression_on_the_server(pages: Pages, tmp_path: Path) -> None:
    server = ChatServer(tmp_path)
    server.start(args=["--compression", "off"])
    try:
        page = open_chat(pages, server, "Ann")
        click(page, status(page))
        expect(event_texts(page, "connected")).to_have_text([re.compile(r"^Connected to \S+$")])
        extensions, echoed = page.evaluate(_PROBE, [server.ws_url + "echo", "x" * 1000])
        assert extensions == ""
        assert echoed
    finally:
        server.kill()
