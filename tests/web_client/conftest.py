"""Fixtures for the browser tests: Debian's Chromium driven by playwright, and the real server.

The browser is ``/usr/bin/chromium`` (``make deps`` installs it with apt-get
when it is missing); playwright's own browser downloads are not used. The
server is ``python -m server`` in a subprocess on a free port, its log written
to a file that is polled for the start-up line (a pipe nobody reads could fill
up and stall the server).

The sync playwright API runs its own event loop, outside pytest-asyncio's: every
fixture and test here is a plain function.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Dialog,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

ROOT = Path(__file__).resolve().parents[2]
WEB_CLIENT = ROOT / "web_client"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}

# How long the server may take to start or to stop.
SERVER_TIMEOUT = 15.0
_LISTENING = re.compile(r"listening: open (https?://\S+/) \(WebSocket (wss?://\S+:(\d+)/)\)")

_screenshots: pytest.StashKey[list[Path]] = pytest.StashKey()


class ChatServer:
    """``python -m server`` in a subprocess; restartable on the same port.

    Args:
        workdir: holds the database and one log file per start.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.http_url = ""
        self.ws_url = ""
        self.log_path = workdir / "server-0.log"
        self._starts = 0

    def start(self, port: int = 0, db: str = "messages.db", args: Sequence[str] = ()) -> None:
        """Start the server and wait for its ``listening`` line.

        Args:
            port: 0 for a free port, or the port of a previous start.
            db: the database's file name in ``workdir`` (another one: another epoch).
            args: more options for the server.

        Raises:
            RuntimeError: the server exited or did not start in time.
        """
        assert self.process is None, "already running"
        self._starts += 1
        self.log_path = self.workdir / f"server-{self._starts}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        command = [sys.executable, "-m", "server", "--port", str(port)]
        command += ["--db", str(self.workdir / db), "--shutdown-timeout", "5", *args]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + SERVER_TIMEOUT
        while (match := _LISTENING.search(self.log())) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the server did not start:\n{self.log()}")
            time.sleep(0.02)
        self.http_url, self.ws_url, self.port = match[1], match[2], int(match[3])

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and wait for the exit; returns the exit status."""
        assert self.process is not None, "not running"
        process, self.process = self.process, None
        process.send_signal(signum)
        return process.wait(SERVER_TIMEOUT)

    def kill(self) -> None:
        """Kill the server if it runs (teardown)."""
        if self.process is not None:
            process, self.process = self.process, None
            process.kill()
            process.wait(SERVER_TIMEOUT)

    def log(self) -> str:
        """The log of the current (or last) start."""
        return self.log_path.read_text(errors="replace")

    def all_logs(self) -> str:
        return "".join(
            f"--- {path.name}\n{path.read_text(errors='replace')}"
            for path in sorted(self.workdir.glob("server-*.log"))
        )


@dataclass
class Pages:
    """Opens pages and records what must never happen.

    Each ``new()`` page is another person: a browser context of its own, so its own
    localStorage (name, clientId, channels, outbox). ``new(same_as=page)`` is another tab of
    that page's person.
    """

    browser: Browser
    contexts: list[BrowserContext] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    _count: int = 0

    def new(self, *, same_as: Page | None = None) -> Page:
        if same_as is None:
            context = self.browser.new_context(viewport=DESKTOP)
            context.set_default_timeout(10_000)
            self.contexts.append(context)
        else:
            context = same_as.context
        page = context.new_page()
        self._count += 1
        number = self._count
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(f"page {number}: {error}"))
        page.on("console", lambda m: self.console.append(f"page {number}: {m.type}: {m.text}"))
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make deps` (apt-get install chromium)")
    # A loaded machine (CI runs other suites beside this one) can be slow to
    # deliver; a condition that never comes still fails, just later.
    expect.set_options(timeout=10_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    """Fresh browser contexts; fails the test on an uncaught script error or a dialog."""
    recorder = Pages(browser)
    try:
        yield recorder
    finally:
        recorder.close()
        # Captured output: pytest shows it only for a test that failed.
        print("browser console:", *recorder.console, sep="\n  ")
    assert recorder.errors == [], "uncaught script errors"
    assert recorder.dialogs == [], "a dialog was opened"


@pytest.fixture
def chat_server(tmp_path: Path) -> Iterator[ChatServer]:
    """The real chat server, started on a free port."""
    server = ChatServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
        print(server.all_logs())  # shown only for a test that failed


@pytest.fixture
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots", numbered=True)


@pytest.fixture
def record_screenshot(request: pytest.FixtureRequest) -> Callable[[Path], None]:
    """Remembers a screenshot so that the terminal summary lists it."""

    def record(path: Path) -> None:
        request.config.stash.setdefault(_screenshots, []).append(path)
        print(f"screenshot: {path}")

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    paths = terminalreporter.config.stash.get(_screenshots, [])
    if paths:
        terminalreporter.section("web client screenshots")
        for path in paths:
            terminalreporter.write_line(str(path))
