"""The Autobahn|Testsuite fuzzing client (``wstest``): install it, run it, judge its report.

The suite runs only on Python 2.7: it is installed with that interpreter's pip into a folder
of its own (``.autobahn/`` by default, ignored by git), pinned to the last versions of its
dependencies that still work there. ``make deps`` installs it; the conformance test runs it::

    python -m tests.conformance.autobahn install [DIR]
    python -m tests.conformance.autobahn run ws://127.0.0.1:9001/echo [--cases '["1.*"]']

A run writes the suite's HTML and JSON reports into ``DIR/reports`` (or ``--reports``) and
prints one line of verdict counts; it exits 1 when a case is not OK (strictly: NON-STRICT
counts as a failure, INFORMATIONAL cases have no verdict by design), 2 when the suite cannot
be installed or run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REQUIREMENTS",
    "AutobahnUnavailable",
    "find_python27",
    "install",
    "main",
    "not_ok",
    "run",
    "summary",
]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TARGET = ROOT / ".autobahn"
# The suite's last release and the versions of its dependencies that still install and run on
# Python 2.7 (later Twisted, cryptography, autobahn etc. dropped it).
REQUIREMENTS = (
    "autobahntestsuite==25.10.1",
    "autobahn[accelerate,twisted]==0.10.9",
    "Twisted==19.10.0",
    "zope.interface==4.6.0",
    "txaio==2.1.0",
    "incremental==16.10.1",
    "pyOpenSSL==19.1.0",
    "cryptography==3.3.2",
    "service-identity==18.1.0",
    "klein==17.10.0",
    "Werkzeug==1.0.1",
    "jinja2==2.11.3",
    "markupsafe==1.1.1",
    "unittest2==1.1.0",
    "six==1.16.0",
    "setuptools==44.0.0",
)
# Verdicts that pass: OK, and INFORMATIONAL for the cases that have none (7.1.6, 7.13.*).
ACCEPTED = frozenset({"OK", "INFORMATIONAL"})
# Seconds for pip to install the suite, and for one ``wstest --autobahnversion``.
INSTALL_TIMEOUT = 600.0
PROBE_TIMEOUT = 60.0


class AutobahnUnavailable(Exception):
    """The suite cannot be installed or started here; the message says why."""


def find_python27() -> Path:
    """A Python 2.7 interpreter: ``$PY27``, else pyenv's 2.7.*, else ``python2.7`` on PATH."""
    candidates: list[Path] = []
    if chosen := os.environ.get("PY27"):
        candidates.append(Path(chosen))
    else:
        pyenv = shutil.which("pyenv")
        if pyenv:
            root = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False
            ).stdout.strip()
            if root:
                candidates += sorted(Path(root, "versions").glob("2.7*/bin/python"), reverse=True)
        if python27 := shutil.which("python2.7"):
            candidates.append(Path(python27))
    for candidate in candidates:
        probe = [str(candidate), "-c", "import sys; assert sys.version_info[:2] == (2, 7)"]
        try:
            if subprocess.run(probe, capture_output=True, timeout=PROBE_TIMEOUT).returncode == 0:
                return candidate
        except OSError:
            continue
    raise AutobahnUnavailable(
        "the Autobahn|Testsuite needs Python 2.7 (with pip): set PY27 to its interpreter, "
        "or install one with `pyenv install 2.7.18`"
        + (f"; not Python 2.7: {', '.join(map(str, candidates))}" if candidates else "")
    )


def _wstest(target: Path, python27: Path, *args: str) -> list[str]:
    """The command line of the installed ``wstest`` with these arguments."""
    return [str(python27), str(target / "bin" / "wstest"), *args]


def _env(target: Path) -> dict[str, str]:
    """The environment of the suite's processes: its folder is their only library."""
    return {**os.environ, "PYTHONPATH": str(target)}


def _version(target: Path, python27: Path) -> str | None:
    """The installed suite's version, or None when there is none that starts."""
    try:
        probe = subprocess.run(
            _wstest(target, python27, "--autobahnversion"),
            env=_env(target),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except OSError:
        return None
    return probe.stdout.strip() if probe.returncode == 0 else None


def install(target: Path = DEFAULT_TARGET, python27: Path | None = None) -> str:
    """Install the suite into ``target`` unless it already starts there; return its version."""
    python27 = python27 or find_python27()
    if version := _version(target, python27):
        return version
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    pip = [str(python27), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    pip += ["--no-warn-script-location", "--target", str(target), *REQUIREMENTS]
    result = subprocess.run(pip, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise AutobahnUnavailable(f"pip could not install the suite into {target}:\n{tail}")
    # pip --target skips the .pth file that makes zope a namespace package: make it a package.
    (target / "zope" / "__init__.py").touch()
    if version := _version(target, python27):
        return version
    raise AutobahnUnavailable(f"the suite installed into {target} does not start")


def run(
    url: str,
    reports: Path,
    *,
    cases: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    target: Path = DEFAULT_TARGET,
    timeout: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the fuzzing client against the echo endpoint at ``url``; return its report by case.

    Installs the suite first when ``target`` has none. The reports (``index.html``,
    ``index.json``, one file per case) and the client's log (``wstest.log``) go to
    ``reports``, which is emptied first.
    """
    python27 = find_python27()
    install(target, python27)
    reports = reports.resolve()
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    spec = {
        "outdir": str(reports),
        "servers": [{"agent": "server", "url": url}],
        "cases": list(cases),
        "exclude-cases": list(exclude),
        "exclude-agent-cases": {},
    }
    spec_file = reports / "fuzzingclient.json"
    spec_file.write_text(json.dumps(spec))
    command = _wstest(target.resolve(), python27, "-m", "fuzzingclient", "-s", str(spec_file))
    with (reports / "wstest.log").open("w") as log:
        # The client writes a file of its own into its working directory: the reports'.
        subprocess.run(
            command,
            cwd=reports,
            env=_env(target.resolve()),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    index = reports / "index.json"
    if not index.exists():
        raise AutobahnUnavailable(f"no report: see {reports / 'wstest.log'}")
    report: dict[str, dict[str, Any]] = json.loads(index.read_text())["server"]
    return report


def _case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def not_ok(report: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, str, int | None]]:
    """The cases whose behaviour or close behaviour is not accepted: both verdicts and the code."""
    return {
        case: (verdict["behavior"], verdict["behaviorClose"], verdict["remoteCloseCode"])
        for case, verdict in sorted(report.items(), key=lambda item: _case_key(item[0]))
        if verdict["behavior"] not in ACCEPTED or verdict["behaviorClose"] not in ACCEPTED
    }


def summary(report: Mapping[str, Mapping[str, Any]]) -> str:
    """One line: how many cases got each verdict (a failed close makes the case FAILED)."""
    counts = Counter(
        "FAILED" if verdict["behaviorClose"] == "FAILED" else verdict["behavior"]
        for verdict in report.values()
    )
    verdicts = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
    return f"autobahn: {verdicts} of {len(report)} cases"


def main(argv: Sequence[str] | None = None) -> int:
    """``install [DIR]`` or ``run URL [--cases JSON] [--exclude JSON] [--dir DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m tests.conformance.autobahn")
    commands = parser.add_subparsers(dest="command", required=True)
    install_command = commands.add_parser("install", help="install the suite (once)")
    install_command.add_argument("dir", nargs="?", type=Path, default=DEFAULT_TARGET)
    run_command = commands.add_parser("run", help="run it against an echo endpoint")
    run_command.add_argument("url", help="e.g. ws://127.0.0.1:9001/echo")
    run_command.add_argument("--cases", type=json.loads, default=["*"], help="a JSON list")
    run_command.add_argument("--exclude", type=json.loads, default=[], help="a JSON list")
    run_command.add_argument("--dir", type=Path, default=DEFAULT_TARGET)
    run_command.add_argument("--reports", type=Path, help="default: DIR/reports")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            print(install(args.dir))
            return 0
        report = run(
            args.url,
            args.reports or args.dir / "reports",
            cases=args.cases,
            exclude=args.exclude,
            target=args.dir,
        )
    except AutobahnUnavailable as error:
        print(f"autobahn: {error}", file=sys.stderr)
        return 2
    for case, verdicts in not_ok(report).items():
        print(f"  {case}: behavior={verdicts[0]} close={verdicts[1]} code={verdicts[2]}")
    print(summary(report))
    return 1 if not_ok(report) else 0


if __name__ == "__main__":
    sys.exit(main())
