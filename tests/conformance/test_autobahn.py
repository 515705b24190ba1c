"""The Autobahn|Testsuite fuzzing client against ``python -m server``'s /echo.

Every case must be OK, strictly: NON-STRICT counts as a failure here, and so
does a close behaviour other than OK. INFORMATIONAL cases (7.1.6, 7.13.*)
have no verdict by design. The permessage-deflate cases (12.*, 13.*: RFC 7692,
compressed echoes under different offers) run too (``EXCLUDE='[]'``), against
the server's default ``--compression on``.

The suite runs on Python 2.7 and is installed by ``make deps`` from
``../shared/autobahn/``; each run takes a few minutes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AUTOBAHN = Path(os.environ.get("AUTOBAHN", ROOT / ".autobahn"))
RUN_SH = Path(os.environ.get("SHARED", ROOT.parent / "shared")) / "autobahn" / "run.sh"
# Category 9 sends messages of up to 16 MiB.
MAX_SIZE = 16 * 2**20
ACCEPTED = {"OK", "INFORMATIONAL"}


@pytest.fixture
def echo_url(tmp_path: Path) -> Iterator[str]:
    """A real server process; yields the URL of its echo endpoint."""
    log = tmp_path / "server.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--port=0",
                f"--db={tmp_path / 'messages.db'}",
                f"--max-message-size={MAX_SIZE}",
            ],
            cwd=ROOT,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 30
        while not (match := re.search(r"ws://[^:]+:(\d+)/", log.read_text())):
            assert process.poll() is None, f"the server exited: {log.read_text()}"
            assert time.monotonic() < deadline, "the server did not log its URL"
            time.sleep(0.05)
        yield f"ws://127.0.0.1:{match.group(1)}/echo"
    finally:
        process.terminate()
        process.wait(timeout=30)


# 12.* and 13.* echo some 200,000 compressed messages: about 15 minutes on 2 busy cores.
@pytest.mark.timeout(1800)
def test_every_autobahn_case_is_ok_and_strict(echo_url: str) -> None:
    assert RUN_SH.exists(), f"{RUN_SH} is missing: the suite ships in ../shared/autobahn"
    result = subprocess.run(
        ["bash", str(RUN_SH), echo_url, '["*"]', str(AUTOBAHN)],
        env={**os.environ, "EXCLUDE": "[]"},
        capture_output=True,
        text=True,
        timeout=1780,
        check=False,
    )
    index = AUTOBAHN / "reports" / "index.json"
    assert index.exists(), f"no report: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    cases = json.loads(index.read_text())["server"]
    bad = {
        case: (verdict["behavior"], verdict["behaviorClose"], verdict["remoteCloseCode"])
        for case, verdict in cases.items()
        if verdict["behavior"] not in ACCEPTED or verdict["behaviorClose"] not in ACCEPTED
    }
    print(result.stdout.strip().splitlines()[-1])
    assert len(cases) > 500, "the suite ran too few cases"
    assert any(case.startswith("12.") for case in cases)
    assert any(case.startswith("13.") for case in cases)
    assert not bad, f"cases not OK: {bad}"
