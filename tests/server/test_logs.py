"""--log-format: the JSON lines, and the facts the server's lines carry for them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import rfc6455
from rfc6455 import Limits
from server.logs import JsonFormatter, configure
from tests.server.support import wait_until
from tests.server.test_slow_consumer import join_without_reading
from tests.server.test_subprocess import REPO
from tests.server.workers_service import WAIT, Supervisor, reserved_port


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "server", "levelno": logging.INFO, "levelname": "INFO"})
    made.msg, made.args = message, args
    made.__dict__.update(extra)
    return made


def formatted(made: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(made)
    assert "\n" not in line
    value = json.loads(line)
    assert isinstance(value, dict)
    return value


def test_a_json_line_has_the_time_in_utc_the_level_the_event_and_the_message() -> None:
    line = formatted(record("connect %s", "abc", event="connect", connection_id="abc"))
    assert line["level"] == "INFO"
    assert line["event"] == "connect"
    assert line["connection_id"] == "abc"
    assert line["message"] == "connect abc"
    assert line["logger"] == "server"
    time = datetime.fromisoformat(line["time"])
    assert time.utcoffset() == timedelta(0)


def test_a_line_without_an_event_is_named_by_its_logger() -> None:
    assert formatted(record("listening"))["event"] == "server"


def test_only_the_known_fields_are_carried() -> None:
    # A record may hold anything a caller passed: a token must not reach the log by accident.
    line = formatted(record("refused", event="refused", token="secret", status=401))
    assert "token" not in line
    assert "secret" not in json.dumps(line)
    assert line["status"] == 401


def test_an_exception_is_one_field_of_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    line = formatted(made)
    assert line["exception"].endswith("ValueError: boom")


def test_configure_json_writes_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    try:
        configure("INFO", "json")
        logging.getLogger("server.test").info("hello %s", "there", extra={"event": "hello"})
    finally:
        root.handlers, root.level = saved
        logging.captureWarnings(False)
    line = json.loads(capsys.readouterr().err)
    assert (line["event"], line["message"]) == ("hello", "hello there")


def disconnect_of(caplog: pytest.LogCaptureFixture, connection_id: str) -> dict[str, Any] | None:
    for made in caplog.records:
        if getattr(made, "event", None) == "disconnect" and (
            getattr(made, "connection_id", None) == connection_id
        ):
            return formatted(made)
    return None


async def test_a_slow_consumer_is_logged_with_the_1008_the_server_sent(
    start_chat: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    chat = await start_chat(
        rate_limit=0,
        history=0,
        limits=Limits(max_send_buffer=65536, ping_interval=None),
        max_text_chars=60_000,
        max_text_bytes=60_000,
    )
    slow, slow_id = await join_without_reading(chat.port)
    writer = await chat.join()
    try:
        for n in range(100):  # 6 MB for a reader that reads nothing
            await writer.send(f"{n} " + "s" * 59_000)
            if disconnect_of(caplog, slow_id):
                break
        await wait_until(lambda: disconnect_of(caplog, slow_id))
    finally:
        slow.close()
    line = disconnect_of(caplog, slow_id)
    assert line is not None
    assert (line["initiator"], line["close_code"], line["close_reason"]) == (
        "server",
        1008,
        "slow consumer",
    )
    assert line["peer"].startswith("127.0.0.1:")
    (shed,) = [formatted(r) for r in caplog.records if getattr(r, "event", "") == "slow_consumer"]
    assert (shed["close_code"], shed["peer"]) == (1008, line["peer"])


async def test_the_workers_log_in_the_supervisors_format(
    redis_url: str, tmp_path: Path, loop_errors: list[dict[str, Any]]
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    environ["PYTHONPATH"] = str(REPO)
    with reserved_port() as port:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "server", "--workers", "2", "--port", str(port)),
            *("--engine", redis_url, "--db", str(tmp_path / "m.db"), "--log-format", "json"),
            cwd=tmp_path,
            env={**environ, "CHAT_LOG_FORMAT": "text"},  # the flag wins, in every process
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        supervisor = Supervisor(process, port)
        try:

            def lines() -> list[dict[str, Any]]:
                return [json.loads(line) for line in supervisor.lines]

            # The supervisor's, once every worker listens.
            await wait_until(
                lambda: any(
                    line["event"] == "listening" and line["pid"] == process.pid for line in lines()
                ),
                WAIT,
            )
            client = await rfc6455.connect(f"ws://127.0.0.1:{port}/", ping_interval=None)
            connection_id = json.loads(await client.recv())["connectionId"]
            await client.close()
            await wait_until(
                lambda: any(line.get("connection_id") == connection_id for line in lines()), WAIT
            )
            supervisor.signal(signal.SIGTERM)
            assert await supervisor.wait() == 0
        finally:
            await supervisor.kill()
    every = lines()  # each line was JSON, the workers' too
    (connect,) = [line for line in every if line["event"] == "connect"]
    assert connect["connection_id"] == connection_id
    assert connect["pid"] != process.pid  # a worker's line
    workers = {line["pid"] for line in every if line["event"] == "stopped"}
    assert len(workers) == 2
    assert process.pid not in workers
    assert process.pid in {line["pid"] for line in every if line["logger"] == "server.supervisor"}
