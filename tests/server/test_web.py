"""Plain HTTP on the chat port: the web client's files, ``/healthz``, and what is refused.

Requests are written by hand on a TCP stream to 127.0.0.1, since an HTTP client would
normalise the very targets (``/../x``) these tests need to send. The web root is a temporary
folder (the ``web_root`` fixture), not the real ``web_client/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import rfc6455
from tests.server.support import Chat, wait_until

UPGRADE = (
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
)


@pytest.mark.parametrize(
    ("target", "name", "content_type"),
    [
        ("/", "index.html", "text/html"),
        ("/index.html", "index.html", "text/html"),
        ("/script.js", "script.js", "text/javascript"),
        ("/style.css", "style.css", "text/css"),
        ("/script.js?v=2", "script.js", "text/javascript"),
    ],
)
async def test_serves_the_web_client(
    chat: Chat, web_root: Path, target: str, name: str, content_type: str
) -> None:
    reply = await chat.get(target)
    assert reply.status == 200
    assert reply.headers["content-type"].split(";")[0] == content_type
    assert reply.body == (web_root / name).read_bytes()
    assert int(reply.headers["content-length"]) == len(reply.body)


async def test_serves_files_in_subfolders(chat: Chat, web_root: Path) -> None:
    (web_root / "lib").mkdir()
    (web_root / "lib" / "chat.js").write_text("export {};\n")
    reply = await chat.get("/lib/chat.js")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/javascript")
    assert reply.body == b"export {};\n"


async def test_head_sends_the_headers_only(chat: Chat, web_root: Path) -> None:
    reply = await chat.get("/", "HEAD")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert int(reply.headers["content-length"]) == len((web_root / "index.html").read_bytes())
    assert reply.body == b""


async def test_no_index_html_is_404(start_chat: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    chat = await start_chat(web_root=empty)
    assert (await chat.get("/")).status == 404
    # The chat endpoint does not depend on the web client.
    client = await chat.join()
    assert client.welcome["type"] == "welcome"


@pytest.mark.parametrize(
    "target",
    [
        "/nope",
        "/index.htm",
        "/lib",
        "/lib/",
        "/echo",
        "/healthz/",
        "/.hidden",
        "/%00",
        "/index.html%00.js",
    ],
)
async def test_other_paths_are_404(chat: Chat, web_root: Path, target: str) -> None:
    (web_root / "lib").mkdir()
    (web_root / ".hidden").write_text("dotfile")
    reply = await chat.get(target)
    assert reply.status == 404
    assert b"dotfile" not in reply.body


# Request targets that reach for tmp_path/secret.txt, one folder above the web root.
TRAVERSALS: dict[str, Callable[[Path], str]] = {
    "dot-dot": lambda _: "/../secret.txt",
    "encoded dot-dot": lambda _: "/%2e%2e/secret.txt",
    "encoded dot-dot, upper case": lambda _: "/%2E%2E/secret.txt",
    "encoded slash": lambda _: "/..%2fsecret.txt",
    "all encoded": lambda _: "/%2e%2e%2fsecret.txt",
    "dot then dot-dot": lambda _: "/./../secret.txt",
    "down then up twice": lambda _: "/lib/../../secret.txt",
    "backslash": lambda _: "/..\\secret.txt",
    "encoded backslash": lambda _: "/%5c..%5csecret.txt",
    "absolute form": lambda _: "http://127.0.0.1/../secret.txt",
    "absolute path": lambda secret: "/" + str(secret),
    "absolute path, encoded slash": lambda secret: "/%2f" + str(secret).lstrip("/"),
    "absolute path, all encoded": lambda secret: "/" + quote(str(secret), safe=""),
    "symlink out of the root": lambda _: "/escape/secret.txt",
}


@pytest.mark.parametrize("how", list(TRAVERSALS))
async def test_paths_out_of_the_web_root_are_404(
    chat: Chat, web_root: Path, tmp_path: Path, how: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    (web_root / "lib").mkdir()
    (web_root / "escape").symlink_to(tmp_path, target_is_directory=True)
    target = TRAVERSALS[how](secret)
    reply = await chat.get(target)
    assert reply.status == 404, target
    assert b"TOP SECRET" not in reply.body


async def test_websocket_upgrade_on_an_unknown_path_is_404(chat: Chat) -> None:
    for target in ("/nope", "/healthz", "/index.html", "/echo/"):
        reply = await chat.get(target, "GET", *UPGRADE)
        assert reply.status == 404, target
    with pytest.raises(rfc6455.InvalidResponse):
        await chat.connect("/chat")
    # A query string is not part of the path.
    connection = await chat.connect("/?room=lobby")
    assert json.loads(await connection.recv())["connectionId"]


@pytest.mark.parametrize(
    ("method", "target"),
    [("POST", "/"), ("POST", "/healthz"), ("PUT", "/index.html"), ("DELETE", "/")],
)
async def test_other_methods_are_405(chat: Chat, method: str, target: str) -> None:
    reply = await chat.get(target, method, "Content-Length: 0")
    assert reply.status == 405
    assert {m.strip() for m in reply.headers["allow"].split(",")} == {"GET", "HEAD"}


async def test_healthz(chat: Chat) -> None:
    reply = await chat.get("/healthz")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/json")
    health = reply.json()
    assert {k: health[k] for k in ("connections", "queueDepth", "persisted", "deadLettered")} == {
        "connections": 0,
        "queueDepth": 0,
        "persisted": 0,
        "deadLettered": 0,
    }
    a, b = await chat.join(), await chat.join()
    echo = await chat.connect("/echo")  # not a chat connection
    for n in range(3):
        await a.send(f"m{n}")
        await b.expect_broadcast(a, f"m{n}")
    await wait_until(lambda: chat.app.queue.persisted == 3)
    health = await chat.health()
    assert {k: health[k] for k in ("connections", "queueDepth", "persisted", "deadLettered")} == {
        "connections": 2,
        "queueDepth": 0,
        "persisted": 3,
        "deadLettered": 0,
    }
    await echo.close()
    await b.connection.close()
    await a.recv()  # user_left
    assert (await chat.health())["connections"] == 1
    head = await chat.get("/healthz", "HEAD")
    assert head.status == 200
    assert head.body == b""
