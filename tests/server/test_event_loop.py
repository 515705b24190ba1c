"""``--loop``: which event loop each mode gives, with uvloop installed and without it.

Without it is simulated by ``sys.modules["uvloop"] = None``, which makes ``import uvloop``
raise ``ImportError`` as a missing package does. ``test_subprocess.py`` runs the real server on
each loop.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from server import cli
from server.event_loop import FAST_EXTRA, LoopUnavailable, choose, run, running_loop
from server.settings import Settings


@pytest.fixture
def without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)


def test_the_default_is_auto() -> None:
    assert Settings().loop == "auto"


@pytest.mark.usefixtures("without_uvloop")
def test_asyncio_never_imports_uvloop() -> None:
    assert choose("asyncio") is asyncio.new_event_loop


@pytest.mark.usefixtures("without_uvloop")
def test_auto_without_uvloop_is_asyncio() -> None:
    assert choose("auto") is asyncio.new_event_loop


@pytest.mark.usefixtures("without_uvloop")
def test_uvloop_without_it_names_the_extra() -> None:
    with pytest.raises(LoopUnavailable) as raised:
        choose("uvloop")
    assert str(raised.value) == f"--loop uvloop: uvloop is not installed ({FAST_EXTRA})"
    assert FAST_EXTRA == "pip install 'rfc6455-chat[fast]'"


@pytest.mark.usefixtures("without_uvloop")
def test_the_command_line_refuses_uvloop_without_it_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parse_args(["--loop", "uvloop"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "python -m server: error: --loop uvloop: uvloop is not installed "
        "(pip install 'rfc6455-chat[fast]')\n"
    )


@pytest.mark.parametrize("mode", ["auto", "uvloop"])
def test_auto_and_uvloop_take_uvloop_when_installed(mode: str) -> None:
    uvloop = pytest.importorskip("uvloop")
    assert choose(mode) is uvloop.new_event_loop


@pytest.mark.parametrize(("mode", "name"), [("asyncio", "asyncio"), ("uvloop", "uvloop 0.")])
def test_run_runs_on_the_loop_that_running_loop_names(mode: str, name: str) -> None:
    if mode == "uvloop":
        pytest.importorskip("uvloop")

    async def main() -> tuple[str, str]:
        return type(asyncio.get_running_loop()).__module__, running_loop()

    module, named = run(mode, main())
    assert module.partition(".")[0] == mode
    assert named.startswith(name)
