"""The Autobahn|Testsuite fuzzing client against ``python -m server``'s /echo.

Every case must be OK, strictly: NON-STRICT counts as a failure here, and so
does a close behaviour other than OK. INFORMATIONAL cases (7.1.6, 7.13.*)
have no verdict by design. The permessage-deflate cases (12.*, 13.*: RFC 7692,
compressed echoes under different offers) run too, against the server's
default ``--compression on``.

The suite runs on Python 2.7 and is installed by ``make deps`` into
``.autobahn/`` (``$AUTOBAHN``) with ``tests/conformance/autobahn.py``; the
run of every case takes about 10 minutes, the others seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conformance import autobahn

ROOT = Path(__file__).resolve().parents[2]
AUTOBAHN = Path(os.environ.get("AUTOBAHN", autobahn.DEFAULT_TARGET))
# Category 9 sends messages of up to 16 MiB.
MAX_SIZE = 16 * 2**20

EchoServer = Callable[..., str]


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[EchoServer]:
    """Start real server processes with extra options; each call returns its echo URL."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> str:
        log = tmp_path / f"server{len(processes)}.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "server",
                    "--port=0",
                    f"--db={tmp_path / f'messages{len(processes)}.db'}",
                    f"--max-message-size={MAX_SIZE}",
                    # The standard library's loop, which a server installed without extras
                    # runs on (the tests installed uvloop, which auto would take).
                    "--loop=asyncio",
                    *options,
                ],
                cwd=ROOT,
                stderr=stderr,
            )
        processes.append(process)
        deadline = time.monotonic() + 30
        while not (match := re.search(r"ws://[^:]+:(\d+)/", log.read_text())):
            assert process.poll() is None, f"the server exited: {log.read_text()}"
            assert time.monotonic() < deadline, "the server did not log its URL"
            time.sleep(0.05)
        return f"ws://127.0.0.1:{match.group(1)}/echo"

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


def _verdict(behavior: str, close: str = "OK", code: int | None = 1000) -> dict[str, object]:
    return {"behavior": behavior, "behaviorClose": close, "remoteCloseCode": code}


def test_only_ok_and_informational_cases_pass_and_the_summary_counts_them() -> None:
    report = {
        "1.1.1": _verdict("OK"),
        "7.1.6": _verdict("INFORMATIONAL", "INFORMATIONAL"),
        "10.1.1": _verdict("NON-STRICT"),
        "2.2": _verdict("OK", "FAILED", None),
        "12.1.1": _verdict("UNIMPLEMENTED"),
    }
    assert autobahn.not_ok(report) == {
        "2.2": ("OK", "FAILED", None),
        "10.1.1": ("NON-STRICT", "OK", 1000),
        "12.1.1": ("UNIMPLEMENTED", "OK", 1000),
    }
    assert autobahn.summary(report) == (
        "autobahn: 1 FAILED, 1 INFORMATIONAL, 1 NON-STRICT, 1 OK, 1 UNIMPLEMENTED of 5 cases"
    )


def test_an_interpreter_that_is_not_python_2_7_is_refused_with_a_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PY27", sys.executable)
    with pytest.raises(autobahn.AutobahnUnavailable, match=r"needs Python 2\.7.*PY27"):
        autobahn.find_python27()


def test_a_few_cases_run_and_a_missing_extension_is_not_ok(
    echo_server: EchoServer, tmp_path: Path
) -> None:
    cases = ["1.1.1", "7.1.6", "12.1.1"]
    report = autobahn.run(echo_server(), tmp_path / "on", cases=cases, target=AUTOBAHN)
    assert sorted(report) == sorted(cases)
    assert not autobahn.not_ok(report)
    report = autobahn.run(
        echo_server("--compression=off"), tmp_path / "off", cases=cases, target=AUTOBAHN
    )
    assert set(autobahn.not_ok(report)) == {"12.1.1"}
    assert (tmp_path / "off" / "index.html").exists()


# 12.* and 13.* echo some 200,000 compressed messages: about 15 minutes on 2 busy cores.
@pytest.mark.timeout(1800)
def test_every_autobahn_case_is_ok_and_strict(echo_server: EchoServer) -> None:
    report = autobahn.run(echo_server(), AUTOBAHN / "reports", target=AUTOBAHN, timeout=1780)
    print(autobahn.summary(report))
    assert len(report) > 500, "the suite ran too few cases"
    assert any(case.startswith("12.") for case in report)
    assert any(case.startswith("13.") for case in report)
    assert not autobahn.not_ok(report), f"cases not OK: {autobahn.not_ok(report)}"
