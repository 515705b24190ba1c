"""Fixtures for the chat server tests: an in-process App on 127.0.0.1 and its clients.

Every server listens on 127.0.0.1 with an ephemeral port and keeps its database in the test's
``tmp_path``. Everything a test opens is closed at teardown: ``start_chat`` stops its Apps, then
waits for (or drops) every client still connected, so that no task, transport or socket outlives
the test (``filterwarnings = error`` turns a leak into a failure). It depends on ``loop_errors``,
which records every call to the event loop's exception handler ("Task exception was never
retrieved", ...) and fails the test if there was one.

``postgres`` (``postgres_service.py``) is a real PostgreSQL server, one for the session;
``redis_url`` a real redis-server's, emptied for the test (``redis_service.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Before the import: the checks in support.py then explain their failures as tests do.
pytest.register_assert_rewrite("tests.server.support")

from server.api import ApiBackend  # noqa: E402
from server.app import App  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.server.postgres_service import postgres  # noqa: E402, F401 (a fixture)
from tests.server.redis_service import (  # noqa: E402, F401 (fixtures)
    redis_factory,
    redis_server,
    redis_url,
)
from tests.server.support import HOST, Chat  # noqa: E402


@pytest.fixture
def web_root(tmp_path: Path) -> Path:
    """A web root of our own: the real web_client/ belongs to another piece of work."""
    root = tmp_path / "web"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>chat</title>\n", encoding="utf-8")
    (root / "script.js").write_text("console.log('chat');\n", encoding="utf-8")
    (root / "style.css").write_text("body { margin: 0; }\n", encoding="utf-8")
    return root


@pytest.fixture
async def start_chat(
    tmp_path: Path, web_root: Path, loop_errors: list[dict[str, Any]]
) -> AsyncIterator[Callable[..., Any]]:
    """Return ``start(**settings)``, which starts an App on 127.0.0.1:0 and returns a Chat.

    ``start(api_backend=backend, api_key=KEY, ...)`` gives the App an HTTP API backend.
    """
    chats: list[Chat] = []

    async def start(*, api_backend: ApiBackend | None = None, **overrides: Any) -> Chat:
        overrides.setdefault("db_path", tmp_path / f"chat{len(chats)}.db")
        overrides.setdefault("web_root", web_root)
        app = App(Settings(host=HOST, port=0, **overrides), api_backend)
        port = await app.start()
        chat = Chat(app, port)
        chats.append(chat)
        return chat

    yield start
    for chat in chats:
        await chat.close_all()


@pytest.fixture
async def chat(start_chat: Callable[..., Any]) -> Chat:
    """An App with the default settings but the address, the port and the paths."""
    started: Chat = await start_chat()
    return started


@pytest.fixture
def local_time_not_utc() -> Iterator[None]:
    """Run with a local time zone 5:30 ahead of UTC, so local time cannot pass for UTC."""
    saved = os.environ.get("TZ")
    # A POSIX TZ string needs no tz database: "IST" is 5 h 30 min east of UTC.
    os.environ["TZ"] = "IST-05:30"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()
