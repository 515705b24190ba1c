"""The command line: flags and environment variables to Settings; bad values exit 2 in one line.

``parse_args`` and ``main`` run in-process here; ``test_subprocess.py`` runs the real
``python -m server``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rfc6455
from rfc6455 import Limits
from server import cli
from server.cli import main, parse_args
from server.options import OPTIONS as TABLE
from server.options import markdown_table
from server.retry import RetryPolicy
from server.settings import Settings
from tests.server.support import GUARD

# Every option, its variable, a value to give, and where it lands in Settings.
OPTIONS: list[tuple[str, str, str, Callable[[Settings], Any], Any]] = [
    ("--host", "CHAT_HOST", "localhost", lambda s: s.host, "localhost"),
    ("--port", "CHAT_PORT", "6001", lambda s: s.port, 6001),
    (
        "--tls-handshake-timeout",
        "CHAT_TLS_HANDSHAKE_TIMEOUT",
        "2.5",
        lambda s: s.limits.tls_handshake_timeout,
        2.5,
    ),
    (
        "--tls-handshake-timeout",
        "CHAT_TLS_HANDSHAKE_TIMEOUT",
        "0",
        lambda s: s.limits.tls_handshake_timeout,
        None,
    ),
    ("--db", "CHAT_DB", "DB", lambda s: s.db_path, "DB"),
    ("--engine", "CHAT_ENGINE", "local", lambda s: s.engine, "local"),
    (
        "--engine",
        "CHAT_ENGINE",
        "redis://:pw@127.0.0.1:6380/2",
        lambda s: s.engine,
        "redis://:pw@127.0.0.1:6380/2",
    ),
    ("--engine", "CHAT_ENGINE", "rediss://[::1]", lambda s: s.engine, "rediss://[::1]"),
    ("--workers", "CHAT_WORKERS", "1", lambda s: s.workers, 1),
    ("--presence-ttl", "CHAT_PRESENCE_TTL", "2.5", lambda s: s.presence_ttl, 2.5),
    ("--log-level", "CHAT_LOG_LEVEL", "debug", lambda s: s.log_level, "DEBUG"),
    ("--log-format", "CHAT_LOG_FORMAT", "JSON", lambda s: s.log_format, "json"),
    ("--log-format", "CHAT_LOG_FORMAT", "text", lambda s: s.log_format, "text"),
    (
        "--trusted-proxies",
        "CHAT_TRUSTED_PROXIES",
        "127.0.0.1/32, 10.0.0.0/8,::1",
        lambda s: s.trusted_proxies,
        (
            ipaddress.ip_network("127.0.0.1/32"),
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("::1/128"),
        ),
    ),
    ("--loop", "CHAT_LOOP", "AsyncIO", lambda s: s.loop, "asyncio"),
    ("--retry-attempts", "CHAT_RETRY_ATTEMPTS", "7", lambda s: s.retry.attempts, 7),
    ("--retry-delay", "CHAT_RETRY_DELAY", "0.25", lambda s: s.retry.base_delay, 0.25),
    ("--queue-capacity", "CHAT_QUEUE_CAPACITY", "123", lambda s: s.queue_capacity, 123),
    ("--batch-size", "CHAT_BATCH_SIZE", "45", lambda s: s.batch_size, 45),
    ("--shutdown-timeout", "CHAT_SHUTDOWN_TIMEOUT", "2.5", lambda s: s.shutdown_timeout, 2.5),
    ("--max-message-size", "CHAT_MAX_MESSAGE_SIZE", "4096", lambda s: s.limits.max_size, 4096),
    ("--max-message-size", "CHAT_MAX_MESSAGE_SIZE", "0", lambda s: s.limits.max_size, None),
    ("--ping-interval", "CHAT_PING_INTERVAL", "5", lambda s: s.limits.ping_interval, 5.0),
    ("--ping-interval", "CHAT_PING_INTERVAL", "0", lambda s: s.limits.ping_interval, None),
    ("--ping-timeout", "CHAT_PING_TIMEOUT", "6.5", lambda s: s.limits.ping_timeout, 6.5),
    ("--open-timeout", "CHAT_OPEN_TIMEOUT", "7", lambda s: s.limits.open_timeout, 7.0),
    ("--history", "CHAT_HISTORY", "0", lambda s: s.history, 0),
    ("--history", "CHAT_HISTORY", "200", lambda s: s.history, 200),
    ("--resume-max", "CHAT_RESUME_MAX", "500", lambda s: s.resume_max, 500),
    (
        "--broadcast-after-commit",
        "CHAT_BROADCAST_AFTER_COMMIT",
        "yes",
        lambda s: s.broadcast_after_commit,
        True,
    ),
    (
        "--broadcast-after-commit",
        "CHAT_BROADCAST_AFTER_COMMIT",
        "0",
        lambda s: s.broadcast_after_commit,
        False,
    ),
    ("--retention-messages", "CHAT_RETENTION_MESSAGES", "0", lambda s: s.retention_messages, 0),
    ("--retention-days", "CHAT_RETENTION_DAYS", "7", lambda s: s.retention_days, 7),
    (
        "--max-send-buffer",
        "CHAT_MAX_SEND_BUFFER",
        "65536",
        lambda s: s.limits.max_send_buffer,
        65536,
    ),
    ("--max-send-buffer", "CHAT_MAX_SEND_BUFFER", "0", lambda s: s.limits.max_send_buffer, None),
    ("--rate-limit", "CHAT_RATE_LIMIT", "2.5", lambda s: s.rate_limit, 2.5),
    ("--rate-limit", "CHAT_RATE_LIMIT", "0", lambda s: s.rate_limit, 0.0),
    ("--rate-burst", "CHAT_RATE_BURST", "7", lambda s: s.rate_burst, 7),
    ("--byte-rate", "CHAT_BYTE_RATE", "1000", lambda s: s.byte_rate, 1000),
    ("--byte-rate", "CHAT_BYTE_RATE", "0", lambda s: s.byte_rate, 0),
    ("--byte-burst", "CHAT_BYTE_BURST", "5000", lambda s: s.byte_burst, 5000),
    (
        "--max-echo-connections",
        "CHAT_MAX_ECHO_CONNECTIONS",
        "3",
        lambda s: s.max_echo_connections,
        3,
    ),
    (
        "--allowed-hosts",
        "CHAT_ALLOWED_HOSTS",
        "Chat.Example.com, .example.org",
        lambda s: s.allowed_hosts,
        {"chat.example.com", ".example.org"},
    ),
    ("--echo", "CHAT_ECHO", "OFF", lambda s: s.echo, "off"),
    ("--compression", "CHAT_COMPRESSION", "Context", lambda s: s.compression, "context"),
    ("--max-text-chars", "CHAT_MAX_TEXT_CHARS", "500", lambda s: s.max_text_chars, 500),
    ("--max-text-bytes", "CHAT_MAX_TEXT_BYTES", "2000", lambda s: s.max_text_bytes, 2000),
    ("--leave-rate", "CHAT_LEAVE_RATE", "0.5", lambda s: s.leave_rate, 0.5),
    ("--history-bytes", "CHAT_HISTORY_BYTES", "4096", lambda s: s.history_bytes, 4096),
    ("--history-memory", "CHAT_HISTORY_MEMORY", "65536", lambda s: s.history_memory, 65536),
    ("--max-head-size", "CHAT_MAX_HEAD_SIZE", "4096", lambda s: s.limits.max_head_size, 4096),
    ("--max-handshakes", "CHAT_MAX_HANDSHAKES", "50", lambda s: s.limits.max_handshakes, 50),
    ("--max-handshakes", "CHAT_MAX_HANDSHAKES", "0", lambda s: s.limits.max_handshakes, None),
    (
        "--max-handshakes-per-ip",
        "CHAT_MAX_HANDSHAKES_PER_IP",
        "7",
        lambda s: s.limits.max_handshakes_per_address,
        7,
    ),
    ("--max-login-failures", "CHAT_MAX_LOGIN_FAILURES", "3", lambda s: s.max_login_failures, 3),
    ("--max-login-failures", "CHAT_MAX_LOGIN_FAILURES", "0", lambda s: s.max_login_failures, 0),
    (
        "--api-key",
        "CHAT_API_KEY",
        "0123456789abcdef",
        lambda s: s.api_key,
        "0123456789abcdef",
    ),
    ("--api-key", "CHAT_API_KEY", "A-._~+/z09Zaaaa==", lambda s: s.api_key, "A-._~+/z09Zaaaa=="),
    (
        "--metrics-token",
        "CHAT_METRICS_TOKEN",
        "0123456789abcdef",
        lambda s: s.metrics_token,
        "0123456789abcdef",
    ),
    ("--metrics-host", "CHAT_METRICS_HOST", "::1", lambda s: s.metrics_host, "::1"),
    ("--metrics-port", "CHAT_METRICS_PORT", "9100", lambda s: s.metrics_port, 9100),
    ("--metrics-port", "CHAT_METRICS_PORT", "0", lambda s: s.metrics_port, 0),
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CHAT_* variable from the outside; run in tmp_path, where ./data may be created."""
    for name in list(os.environ):
        if name.startswith("CHAT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def expected(value: Any, tmp_path: Path) -> Any:
    return tmp_path / "db" / "m.db" if value == "DB" else value


def given(value: str, tmp_path: Path) -> str:
    return str(tmp_path / "db" / "m.db") if value == "DB" else value


def test_defaults(tmp_path: Path) -> None:
    settings = parse_args([])
    assert settings == Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 5000)
    assert settings.db_path == Path("data/messages.db")
    assert settings.retry == RetryPolicy(attempts=5, base_delay=1.0)
    assert settings.limits == Limits()
    assert (settings.history, settings.resume_max) == (50, 10_000)
    assert settings.broadcast_after_commit is False
    assert (settings.retention_messages, settings.retention_days) == (1_000_000, 30)
    assert (tmp_path / "data").is_dir()  # the database folder is created


@pytest.mark.parametrize(("flag", "env", "value", "get", "want"), OPTIONS)
def test_each_option_by_flag(
    tmp_path: Path, flag: str, env: str, value: str, get: Callable[[Settings], Any], want: Any
) -> None:
    assert get(parse_args([flag, given(value, tmp_path)])) == expected(want, tmp_path)


@pytest.mark.parametrize(("flag", "env", "value", "get", "want"), OPTIONS)
def test_each_option_by_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flag: str,
    env: str,
    value: str,
    get: Callable[[Settings], Any],
    want: Any,
) -> None:
    monkeypatch.setenv(env, given(value, tmp_path))
    assert get(parse_args([])) == expected(want, tmp_path)


def test_the_after_commit_flag_alone_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args(["--broadcast-after-commit"]).broadcast_after_commit is True
    monkeypatch.setenv("CHAT_BROADCAST_AFTER_COMMIT", "true")
    assert parse_args([]).broadcast_after_commit is True
    assert parse_args(["--broadcast-after-commit", "off"]).broadcast_after_commit is False


def test_a_flag_wins_over_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_PORT", "6001")
    monkeypatch.setenv("CHAT_RETRY_DELAY", "3")
    settings = parse_args(["--port", "6002"])
    assert (settings.port, settings.retry.base_delay) == (6002, 3.0)


def test_the_readme_shows_the_table_of_options() -> None:
    assert {flag for flag, *_ in OPTIONS} <= {option.flag for option in TABLE}
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "README.md's table of options differs from:\n" + (
        markdown_table()
    )


def test_help_names_every_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for flag, env, *_ in OPTIONS:
        assert flag in out
        assert f"env {env}" in out


def test_version_is_the_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"rfc6455-chat {rfc6455.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", rfc6455.__version__)


BAD: list[tuple[list[str], dict[str, str]]] = [
    (["--presence-ttl", "0.5"], {}),
    (["--presence-ttl", "nope"], {}),
    (["--port", "70000"], {}),
    (["--port", "-1"], {}),
    (["--port", "abc"], {}),
    (["--tls-handshake-timeout", "-1"], {}),
    ([], {"CHAT_TLS_HANDSHAKE_TIMEOUT": "soon"}),
    (["--tls-cert", "FILE"], {}),  # no key
    ([], {"CHAT_TLS_KEY": "FILE"}),  # no certificate
    (["--tls-cert", "FILE", "--tls-key", "FILE"], {}),  # not PEM
    ([], {"CHAT_PORT": "abc"}),
    ([], {"CHAT_PORT": "70000"}),
    (["--retry-delay", "-1"], {}),
    (["--retry-delay", "-0.5"], {}),
    (["--retry-delay", "nan"], {}),
    (["--retry-delay", "inf"], {}),
    ([], {"CHAT_RETRY_DELAY": "-1"}),
    (["--retry-attempts", "0"], {}),
    ([], {"CHAT_RETRY_ATTEMPTS": "many"}),
    (["--queue-capacity", "0"], {}),
    (["--batch-size", "0"], {}),
    (["--shutdown-timeout", "-1"], {}),
    (["--max-message-size", "-1"], {}),
    (["--ping-interval", "soon"], {}),
    ([], {"CHAT_PING_TIMEOUT": "-3"}),
    (["--open-timeout", "1e999"], {}),
    (["--log-level", "LOUD"], {}),
    (["--loop", "trio"], {}),
    ([], {"CHAT_LOOP": ""}),
    ([], {"CHAT_LOG_LEVEL": "verbose"}),
    (["--log-format", "logfmt"], {}),
    ([], {"CHAT_LOG_FORMAT": ""}),
    (["--trusted-proxies", "10.0.0.1/8"], {}),  # host bits set: a typo of 10.0.0.0/8
    (["--trusted-proxies", "nginx"], {}),
    (["--trusted-proxies", ","], {}),
    ([], {"CHAT_TRUSTED_PROXIES": "2001:db8::/129"}),
    (["--db", "FILE/messages.db"], {}),
    (["--db", "FILE/sub/messages.db"], {}),
    ([], {"CHAT_DB": "FILE/messages.db"}),
    (["--history", "-1"], {}),
    ([], {"CHAT_HISTORY": "many"}),
    (["--resume-max", "-5"], {}),
    (["--broadcast-after-commit", "maybe"], {}),
    ([], {"CHAT_BROADCAST_AFTER_COMMIT": "2"}),
    (["--retention-messages", "1.5"], {}),
    ([], {"CHAT_RETENTION_DAYS": "-1"}),
    (["--max-send-buffer", "-1"], {}),
    (["--max-send-buffer", "65535"], {}),  # below write_limit, where the check happens
    ([], {"CHAT_MAX_SEND_BUFFER": "1MiB"}),
    (["--rate-limit", "-1"], {}),
    (["--rate-limit", "inf"], {}),
    ([], {"CHAT_RATE_LIMIT": "fast"}),
    (["--rate-burst", "0"], {}),
    (["--byte-rate", "-5"], {}),
    ([], {"CHAT_BYTE_BURST": "0"}),
    ([], {"CHAT_HOST": ""}),
    ([], {"CHAT_HOST": "  "}),
    (["--host", ""], {}),
    ([], {"CHAT_DB": ""}),
    (["--echo", "maybe"], {}),
    (["--compression", "deflate"], {}),
    ([], {"CHAT_COMPRESSION": ""}),
    ([], {"CHAT_MAX_ECHO_CONNECTIONS": "-1"}),
    (["--allowed-hosts", "chat.example.com:443"], {}),
    ([], {"CHAT_ALLOWED_HOSTS": "http://chat.example.com"}),
    (["--max-head-size", "100"], {}),
    ([], {"CHAT_MAX_HANDSHAKES": "-1"}),
    (["--history-bytes", "0"], {}),
    (["--history-memory", "0"], {}),
    (["--max-text-chars", "0"], {}),
    (["--leave-rate", "nan"], {}),
    (["--max-login-failures", "-1"], {}),
    ([], {"CHAT_MAX_LOGIN_FAILURES": "ten"}),
    (["--api-key", "0123456789abcde"], {}),
    (["--metrics-token", "short"], {}),
    (["--metrics-token", "0123456789 abcdef"], {}),
    (["--metrics-port", "65536"], {}),
    (["--metrics-port", "nine"], {}),
    (["--metrics-host", " "], {}),
    ([], {"CHAT_METRICS_PORT": "-1"}),
    ([], {"CHAT_API_KEY": ""}),
    ([], {"CHAT_API_KEY": "0123456789 abcdef"}),
    (["--api-key", "0123456789abcdéf"], {}),
    (["--engine", "sqlite"], {}),
    (["--engine", "http://127.0.0.1:6379"], {}),
    (["--engine", "redis://"], {}),
    (["--engine", "redis://127.0.0.1:99999"], {}),
    ([], {"CHAT_ENGINE": ""}),
    (["--workers", "0"], {}),
    ([], {"CHAT_WORKERS": "two"}),
    (["--workers", "2"], {}),  # the local engine
    (["--workers", "2", "--engine", "redis://127.0.0.1", "--port", "0"], {}),
    # Worker 1 would have no metrics port.
    (["--workers", "2", "--engine", "redis://127.0.0.1", "--metrics-port", "65535"], {}),
    (["--no-such-option"], {}),
    (["--port"], {}),
    (["positional"], {}),
]


@pytest.mark.parametrize(("argv", "env"), BAD)
def test_bad_values_exit_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    env: dict[str, str],
) -> None:
    # A database folder that cannot exist: a path under a regular file.
    regular = tmp_path / "regular-file"
    regular.write_text("not a folder")
    argv = [arg.replace("FILE", str(regular)) for arg in argv]
    for name, value in env.items():
        monkeypatch.setenv(name, value.replace("FILE", str(regular)))

    async def must_not_run(settings: Settings) -> int:
        raise AssertionError(f"a bad value got through: {settings}")

    monkeypatch.setattr(cli, "run", must_not_run)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n")
    (line,) = err.splitlines()
    assert line.startswith("python -m server: error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("env", "value", "says"),
    [
        ("CHAT_PORT", "70000", "CHAT_PORT: 70000 is out of range: must be from 0 to 65535"),
        ("CHAT_RETRY_DELAY", "-1", "CHAT_RETRY_DELAY: -1 must be a number of seconds >= 0"),
        ("CHAT_HOST", "", "CHAT_HOST: a host must not be empty"),
        ("CHAT_ECHO", "yes", "CHAT_ECHO: 'yes' is not one of auto, on, off"),
        (
            "CHAT_API_KEY",
            "secret but short",  # 16 characters, two of them not allowed
            "CHAT_API_KEY: the key must be at least 16 characters of A-Z a-z 0-9 - . _ ~ + / "
            "(RFC 6750 §2.1)",
        ),
    ],
)
def test_a_bad_variable_is_named_in_the_error_not_its_flag(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: str,
    value: str,
    says: str,
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit):
        parse_args([])
    assert capsys.readouterr().err == f"python -m server: error: {says}\n"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--auth", "jwt"], "--auth jwt needs --jwt-secret (or CHAT_JWT_SECRET)"),
        (["--auth", "basic"], "--auth basic needs --users FILE (or CHAT_USERS)"),
        (
            ["--auth", "jwt", "--jwt-secret", "short"],
            "--jwt-secret: the secret must be at least 32 bytes (RFC 7518 §3.2)",
        ),
    ],
)
def test_an_auth_error_says_its_option_once(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert capsys.readouterr().err == f"python -m server: error: {says}\n"


def test_a_refused_api_key_is_not_repeated(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--api-key", "hunter2"])
    err = capsys.readouterr().err
    assert err == (
        "python -m server: error: argument --api-key: the key must be at least 16 characters "
        "of A-Z a-z 0-9 - . _ ~ + / (RFC 6750 §2.1)\n"
    )


def test_the_api_key_is_neither_shown_nor_in_help(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHAT_API_KEY", "0123456789abcdef")
    settings = parse_args([])
    assert "0123456789abcdef" not in repr(settings)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "0123456789abcdef" not in capsys.readouterr().out


def persistence_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("persistence ")}


def check_no_thread_left(before: set[threading.Thread]) -> None:
    """The database worker threads started since ``before`` end (they may take a moment)."""
    for thread in persistence_threads() - before:
        thread.join(GUARD)
        assert not thread.is_alive(), f"{thread.name} still running"


def test_a_taken_port_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    threads = persistence_threads()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["--host", "127.0.0.1", "--port", str(port), "--db", str(tmp_path / "m.db")])
    assert status == 2
    _, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith("python -m server: error: cannot listen")
    # The database opened before the listening failed was closed again.
    check_no_thread_left(threads)


def test_a_database_that_cannot_be_opened_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    threads = persistence_threads()
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    assert main(["--port", "0", "--db", str(folder)]) == 2
    _, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith(f"python -m server: error: cannot open {folder}")
    check_no_thread_left(threads)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("[defaults\n", "is not TOML"),
        ("[channelz]\n", "unknown table 'channelz'"),
        ("[namespaces.news]\nhistroy = 5\n", "unknown key 'histroy'"),
        ('[namespaces.news]\npublish = "everyone"\n', "publish = 'everyone' is not valid"),
        ("[defaults]\nhistory = -1\n", "history = -1 is not valid"),
        ("[defaults]\npresence = 1\n", "presence = 1 is not valid"),
    ],
)
def test_a_bad_channels_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, complaint: str
) -> None:
    options = tmp_path / "channels.toml"
    options.write_text(content, encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        parse_args(["--db", str(tmp_path / "m.db"), "--channels", str(options)])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("python -m server: error: --channels: ")
    assert complaint in line


def test_the_engine_url_is_neither_shown_nor_repeated(capsys: pytest.CaptureFixture[str]) -> None:
    """A Redis URL may carry a password."""
    assert "hunter2" not in repr(parse_args(["--engine", "redis://:hunter2@127.0.0.1"]))
    with pytest.raises(SystemExit):
        parse_args(["--engine", "redis://:hunter2@"])
    assert capsys.readouterr().err == (
        "python -m server: error: argument --engine: the engine must be local or a "
        "redis://HOST[:PORT] or rediss:// URL\n"
    )


def test_the_redis_engine_without_its_extra_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # as if redis-py were missing
    argv = ["--port", "0", "--engine", "redis://127.0.0.1:1", "--db", str(tmp_path / "m.db")]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "python -m server: error: --engine redis:// needs redis-py: "
        "python -m pip install 'rfc6455-chat[redis]'"
    )


def test_an_unreachable_redis_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    argv = ["--port", "0", "--engine", f"redis://127.0.0.1:{port}", "--db", str(tmp_path / "m.db")]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("python -m server: error: cannot reach Redis: ")


def test_a_postgresql_archive_goes_with_a_redis_engine(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--db", "postgresql://chat:secret@db.example/chat"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "a PostgreSQL archive goes with a Redis --engine" in err
    assert "secret" not in err
