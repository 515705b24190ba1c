"""The sdist and the wheel: what they carry, and an installed server serving its web client.

One build and one venv for the module (building and ``python -m venv`` take seconds), made
offline: ``python -m build`` (the test extra's ``build``) makes the sdist, then the wheel from
the sdist, with the setuptools of the interpreter running the tests (``--no-isolation``), and
the install is ``--no-index``. The build runs on a copy of the checkout's files (``git
ls-files``: tracked, and untracked unless ignored), so that nothing an earlier build left in
``build/`` can slip in, and the checkout is left as it was.

The installed server runs from a folder outside the checkout with no ``PYTHON*`` or ``CHAT_*``
variable inherited, so everything it imports comes from the venv, which holds nothing else but
what ``python -m venv`` puts there: the server needs only the standard library.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import rfc6455

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
LISTENING = re.compile(r"listening: open http://127\.0\.0\.1:(\d+)/")
# Seconds for one build or install step, and for the server to start or to stop.
STEP_TIMEOUT = 120.0
SERVER_TIMEOUT = 15.0
# The sdist's source trees: every file the checkout has in them, nothing else.
_SDIST_TREES = ("rfc6455/", "server/", "web_client/")


def _checkout_files() -> list[str]:
    """The checkout's files, as paths relative to it: what a fresh clone would have, edited."""
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
        timeout=STEP_TIMEOUT,
    )
    names = listing.stdout.decode().split("\0")
    # --cached lists files deleted from the work tree until the deletion is staged.
    return sorted(name for name in names if name and (REPO / name).is_file())


def _web_client_files() -> dict[str, bytes]:
    """The repository's web client: paths under web_client/ and their bytes."""
    prefix = "web_client/"
    return {
        name.removeprefix(prefix): (REPO / name).read_bytes()
        for name in _checkout_files()
        if name.startswith(prefix)
    }


def _isolated_env() -> dict[str, str]:
    """The environment of the venv's processes: nothing that points Python at the checkout."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "CHAT_", "PIP_", "VIRTUAL_ENV"))
    }


def _run(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None, hint: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run one build or install step; fail with its output (and the hint) if it fails."""
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"{hint}{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def _assert_version_and_pep_639_license(metadata: str) -> None:
    """Core metadata (a wheel's METADATA, an sdist's PKG-INFO): our version, PEP 639's license."""
    assert f"\nVersion: {rfc6455.__version__}\n" in metadata
    assert "\nLicense-Expression: MIT\n" in metadata
    assert "\nLicense-File: LICENSE.txt\n" in metadata
    assert "License ::" not in metadata  # no classifier beside the expression


@dataclass(frozen=True)
class _Build:
    """What ``python -m build`` made, and what it printed."""

    sdist: Path
    wheel: Path
    output: str


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> _Build:
    """The sdist built from a copy of the checkout, and the wheel built from that sdist."""
    root = tmp_path_factory.mktemp("build")
    source = root / "source"
    for name in _checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    result = _run(
        sys.executable,
        "-m",
        "build",
        "--no-isolation",
        "--outdir",
        dist,
        cwd=source,
        hint='("No module named build" or "invalid command \'bdist_wheel\'": see the test extra) ',
    )
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    return _Build(sdist, wheel, result.stdout + result.stderr)


@pytest.fixture(scope="module")
def wheel(build: _Build) -> Path:
    """The wheel built from the sdist."""
    return build.wheel


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh venv with the wheel installed; returns its python."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    _run(sys.executable, "-m", "venv", root, env=_isolated_env())
    python = root / "bin" / "python"
    _run(
        python,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--no-deps",
        "--disable-pip-version-check",
        wheel,
        env=_isolated_env(),
    )
    return python


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory outside the checkout, so that nothing is imported from it."""
    assert not tmp_path.resolve().is_relative_to(REPO)
    return tmp_path


def test_build_makes_the_wheel_from_the_sdist_without_a_deprecation_warning(
    build: _Build,
) -> None:
    assert "Building wheel from sdist" in build.output
    assert not re.search(r"deprecat", build.output, re.IGNORECASE), build.output


def test_sdist_carries_the_packages_the_web_client_and_pep_639_metadata(build: _Build) -> None:
    with tarfile.open(build.sdist) as archive:
        (top,) = {name.split("/")[0] for name in archive.getnames()}
        names = {
            member.name.removeprefix(f"{top}/")
            for member in archive.getmembers()
            if member.isfile()
        }
        metadata = archive.extractfile(f"{top}/PKG-INFO")
        assert metadata is not None
        pkg_info = metadata.read().decode()
    sources = {name for name in _checkout_files() if name.startswith(_SDIST_TREES)}
    assert {"web_client/index.html", "web_client/script.js", "web_client/style.css"} <= sources
    assert {name for name in names if name.startswith(_SDIST_TREES)} == sources
    assert {"pyproject.toml", "README.md", "LICENSE.txt", "PKG-INFO"} <= names
    _assert_version_and_pep_639_license(pkg_info)


def test_wheel_carries_the_web_client_and_no_tests(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        web = {
            name.removeprefix("server/web_client/"): archive.read(name)
            for name in names
            if name.startswith("server/web_client/")
        }
    expected = _web_client_files()
    assert {"index.html", "script.js", "style.css"} <= expected.keys()
    assert web == expected
    # The two packages and their metadata, nothing else: no tests/, benchmarks/ or top-level
    # web_client/; and no test module or compiled leftover inside the packages either.
    top = {name.split("/")[0] for name in names}
    assert {name for name in top if not name.endswith(".dist-info")} == {"rfc6455", "server"}
    assert len(top) == 3, top
    unwanted = re.compile(r"(^|/)(tests?/|test_[^/]*\.py$|conftest\.py$|__pycache__/)|\.pyc$")
    assert not [name for name in names if unwanted.search(name)]


def test_installed_server_imports_from_the_venv(venv: Path, outside: Path) -> None:
    probe = (
        "import json, rfc6455, server, server.settings as s;"
        "print(json.dumps([rfc6455.__file__, server.__file__, str(s.WEB_ROOT)]))"
    )
    result = _run(venv, "-c", probe, cwd=outside, env=_isolated_env())
    paths = [Path(path).resolve() for path in json.loads(result.stdout)]
    root = venv.parent.parent.resolve()
    assert all(path.is_relative_to(root) for path in paths), paths
    assert paths[2] == paths[1].parent / "web_client"


def test_wheel_metadata_has_the_version_and_its_license_as_pep_639_says(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
    _assert_version_and_pep_639_license(metadata)


@pytest.mark.parametrize("script", ["rfc6455-chat", "rfc6455"])
def test_console_scripts_print_the_version(venv: Path, outside: Path, script: str) -> None:
    result = _run(venv.parent / script, "--version", cwd=outside, env=_isolated_env())
    assert result.stdout == f"rfc6455-chat {rfc6455.__version__}\n"


class _Server:
    """``python -m server`` of the venv; a thread collects its stderr line by line."""

    def __init__(self, python: Path, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [python, "-m", "server", "--host", HOST, "--port", "0", "--db", cwd / "m.db"],
            cwd=cwd,
            env=_isolated_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._new_lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            self._new_lines.put(line)
        self._new_lines.put(None)

    def port(self) -> int:
        """The port of the start-up line, once it is logged."""
        while True:
            try:
                line = self._new_lines.get(timeout=SERVER_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"no start-up line in {SERVER_TIMEOUT} s: {''.join(self.lines)}")
            assert line is not None, f"the server exited: {''.join(self.lines)}"
            if match := LISTENING.search(line):
                return int(match.group(1))

    def stop(self) -> int:
        """SIGTERM; return the exit status once its output is read."""
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=SERVER_TIMEOUT)
        self._reader.join(timeout=SERVER_TIMEOUT)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=SERVER_TIMEOUT)
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture
def server(venv: Path, outside: Path) -> Iterator[_Server]:
    started = _Server(venv, outside)
    yield started
    started.kill()


def _get(port: int, target: str) -> tuple[int, dict[str, str], bytes]:
    """GET target over a plain socket; return the status, the headers and the body."""
    request = f"GET {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
    chunks = []
    with socket.create_connection((HOST, port), timeout=SERVER_TIMEOUT) as sock:
        sock.sendall(request.encode())
        # The server closes the connection after its answer.
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def test_installed_server_serves_its_web_client(server: _Server) -> None:
    port = server.port()
    files = _web_client_files()
    for target, name in [
        ("/", "index.html"),
        ("/script.js", "script.js"),
        ("/style.css", "style.css"),
    ]:
        status, headers, body = _get(port, target)
        assert status == 200, (target, body)
        assert body == files[name], target
        assert int(headers["content-length"]) == len(body)
    assert server.stop() == 0, "".join(server.lines)


def test_installed_console_chats_with_the_installed_server(
    server: _Server, venv: Path, outside: Path
) -> None:
    port = server.port()
    publish = {"type": "publish", "channel": "general", "message": "wheel", "clientMsgId": "w1"}
    result = subprocess.run(
        [venv.parent / "rfc6455", f"ws://{HOST}:{port}/", "--json", "--linger", "1"],
        input=json.dumps(publish) + "\n",
        cwd=outside,
        env=_isolated_env(),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    received = [json.loads(line)["data"] for line in result.stdout.splitlines()]
    assert received[1]["type"] == "welcome"
    assert {"type": "ack", "seq": 1, "clientMsgId": "w1", "channel": "general"} in received
    assert server.stop() == 0, "".join(server.lines)
