"""Who may open a WebSocket: connection caps, per-address limits, Origin, /echo, over real sockets.

Authentication has its own module (``test_auth.py``); the command-line side of these options is
tested here too, beside the behaviour it turns on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rfc6455
from rfc6455.addresses import address_key
from server.access import RETRY_FULL, RETRY_PER_IP
from server.cli import parse_args
from server.iplimits import ConnectRate
from server.origin import OriginPolicy, parse_origins
from tests.server.support import HOST, check_refusal, upgrade, wait_until

Start = Callable[..., Any]
JWT_SECRET = "a secret of at least thirty-two bytes"


# --max-connections


async def test_beyond_max_connections_a_handshake_gets_503_and_the_others_go_on(
    start_chat: Start,
) -> None:
    chat = await start_chat(max_connections=3, history=0)
    alice = await chat.join()
    bob = await chat.join()
    echo = await chat.connect("/echo")  # /echo counts: the cap protects the process

    body = check_refusal(await upgrade(chat), 503, RETRY_FULL)
    assert "full" in body
    check_refusal(await upgrade(chat, "/echo"), 503, RETRY_FULL)
    # Nothing else changed: the clients in still chat, and plain HTTP is still served.
    await alice.send("still here")
    await bob.expect_broadcast(alice, "still here")
    await echo.send("ping")
    assert await echo.recv() == "ping"
    assert (await chat.get("/healthz")).status == 200

    # One leaves: there is room again.
    await echo.close()
    carol = await chat.join()
    await carol.send("in")
    await alice.expect_broadcast(carol, "in")


async def test_max_connections_counts_handshakes_that_complete_together(
    start_chat: Start,
) -> None:
    chat = await start_chat(max_connections=3, history=0)
    results = await asyncio.gather(
        *(chat.connect("/echo") for _ in range(8)), return_exceptions=True
    )
    opened = [r for r in results if isinstance(r, rfc6455.Connection)]
    refused = [r for r in results if isinstance(r, rfc6455.InvalidResponse)]
    assert len(opened) == 3
    assert len(refused) == 5
    assert all("503" in str(r) for r in refused)


async def test_max_connections_zero_is_no_cap(tmp_path: Path) -> None:
    assert (
        parse_args(["--db", str(tmp_path / "m.db"), "--max-connections", "0"]).max_connections == 0
    )


# Per-address limits (chat only)


async def test_an_address_over_its_open_connections_gets_429_on_the_chat_only(
    start_chat: Start,
) -> None:
    chat = await start_chat(max_connections_per_ip=2, history=0)
    first = await chat.join()
    await chat.join()
    body = check_refusal(await upgrade(chat), 429, RETRY_PER_IP)
    assert HOST in body
    # /echo is exempt, and does not count.
    echoes = [await chat.connect("/echo") for _ in range(3)]
    assert len(echoes) == 3
    await first.connection.close()
    await chat.join()


async def test_simultaneous_handshakes_from_one_address_cannot_pass_the_limit(
    start_chat: Start,
) -> None:
    chat = await start_chat(max_connections_per_ip=2, history=0)
    results = await asyncio.gather(*(chat.connect("/") for _ in range(6)), return_exceptions=True)
    assert sum(isinstance(r, rfc6455.Connection) for r in results) == 2
    assert all("429" in str(r) for r in results if not isinstance(r, rfc6455.Connection))


async def test_an_address_opening_connections_too_fast_gets_429_with_retry_after(
    start_chat: Start,
) -> None:
    # A burst of 2, then one connection every 100 s: the third is refused.
    chat = await start_chat(connect_rate_per_ip=0.01, connect_burst_per_ip=2, history=0)
    await chat.join()
    await chat.join()
    reply = await upgrade(chat)
    body = check_refusal(reply, 429)
    assert 1 <= int(reply.headers["retry-after"]) <= 100
    assert "too many new connections" in body
    # /echo is exempt.
    for _ in range(4):
        await chat.connect("/echo")


def test_connect_rate_refills_and_keeps_few_buckets() -> None:
    now = [0.0]
    rate = ConnectRate(2.0, 1, clock=lambda: now[0])
    assert rate.admit("a") == 0.0
    assert rate.admit("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert rate.admit("a") == 0.0
    # Thousands of addresses seen once: full buckets (idle ones) are dropped as new ones come.
    for n in range(5000):
        rate.admit(f"10.0.{n // 256}.{n % 256}")
        now[0] += 0.01
    assert len(rate) < 2100


def test_ipv6_clients_are_counted_by_their_64_network() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7"


# Origin


async def test_a_browser_page_of_another_site_gets_403(start_chat: Start) -> None:
    chat = await start_chat()
    host = f"{HOST}:{chat.port}"
    for origin in ("https://evil.example", "null", f"http://{HOST}:1"):
        body = check_refusal(await upgrade(chat, "/", f"Origin: {origin}"), 403)
        assert "origin" in body
    # /echo is exempt: it carries no user data.
    echo = await chat.connect("/echo", headers=[("Origin", "https://evil.example")])
    await echo.close()
    # No Origin (the console client), or the server's own page: allowed.
    await chat.join()
    own = await chat.connect("/", headers=[("Origin", f"http://{host}")])
    await own.close()


async def test_allowed_origins_are_let_in(start_chat: Start) -> None:
    chat = await start_chat(allowed_origins=parse_origins("https://chat.example, null"))
    for origin in ("https://chat.example", "null"):
        connection = await chat.connect("/", headers=[("Origin", origin)])
        await connection.close()
    check_refusal(await upgrade(chat, "/", "Origin: https://other.example"), 403)


def test_origin_policy() -> None:
    def request(*headers: tuple[str, str]) -> rfc6455.Request:
        return rfc6455.Request(
            "GET", "/", rfc6455.Headers([("Host", "chat.example:5000"), *headers])
        )

    policy = OriginPolicy()
    assert policy.allows(request())
    assert policy.allows(request(("Origin", "https://Chat.example:5000")))
    assert not policy.allows(request(("Origin", "https://chat.example")))
    assert not policy.allows(request(("Origin", "https://a.example"), ("Origin", "https://b")))
    assert OriginPolicy({"*"}).allows(request(("Origin", "https://any.example")))


def test_the_origin_has_the_scheme_the_client_spoke_when_it_is_known() -> None:
    def request(origin: str, host: str, scheme: str | None) -> rfc6455.Request:
        headers = rfc6455.Headers([("Host", host), ("Origin", origin)])
        return rfc6455.Request("GET", "/", headers, scheme=scheme)

    policy = OriginPolicy()
    # Over TLS, or a trusted proxy's X-Forwarded-Proto: a plaintext page of the site is not it.
    assert policy.allows(request("https://chat.example", "chat.example", "https"))
    assert not policy.allows(request("http://chat.example", "chat.example", "https"))
    assert not policy.allows(request("https://chat.example", "chat.example", "http"))
    # The default port, in the Host header or not, is the same origin.
    assert policy.allows(request("https://chat.example", "chat.example:443", "https"))
    assert policy.allows(request("http://chat.example", "chat.example:80", "http"))
    assert not policy.allows(request("https://chat.example", "chat.example:80", "https"))
    # Plaintext without a proxy's word: either scheme, as a proxy may have ended TLS.
    assert policy.allows(request("https://chat.example", "chat.example", None))
    assert policy.allows(request("http://chat.example", "chat.example", None))


@pytest.mark.parametrize(
    "text", ["https://a.example/path", "a.example", "https://", "http://a:99999", "https://u@a"]
)
def test_a_bad_allowed_origin_exits_2(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--db", str(tmp_path / "m.db"), "--allowed-origins", text])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --echo, --max-echo-connections


async def test_echo_off_turns_the_echo_endpoint_off(start_chat: Start) -> None:
    chat = await start_chat(echo="off")
    check_refusal(await upgrade(chat, "/echo"), 404)
    await chat.join()


async def test_echo_is_off_by_default_when_clients_must_authenticate(start_chat: Start) -> None:
    chat = await start_chat(auth="jwt", jwt_secret=JWT_SECRET)
    check_refusal(await upgrade(chat, "/echo"), 404)
    on = await start_chat(auth="jwt", jwt_secret=JWT_SECRET, echo="on")
    echo = await on.connect("/echo")
    await echo.send("still here when asked for")
    assert await echo.recv() == "still here when asked for"


async def test_anonymous_echo_clients_cannot_fill_the_server(start_chat: Start) -> None:
    # The attack: /echo took every place of --max-connections, and users got 503.
    chat = await start_chat(max_connections=6, max_echo_connections=3)
    echoes = [await chat.connect("/echo") for _ in range(3)]
    reply = await upgrade(chat, "/echo")
    check_refusal(reply, 503)
    assert reply.headers["retry-after"] == str(RETRY_FULL)
    assert b"/echo is full (3 connections)" in reply.body
    # The chat's places are still there.
    clients = [await chat.join() for _ in range(3)]
    check_refusal(await upgrade(chat, "/"), 503)  # now the server is full
    await echoes[0].close()
    await wait_until(lambda: chat.app.server is not None and len(chat.app.server.connections) < 6)
    assert await chat.connect("/echo")
    assert len(clients) == 3


def test_access_options_by_flag_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = ["--db", str(tmp_path / "m.db")]
    settings = parse_args(
        [
            *db,
            "--max-connections",
            "7",
            "--max-connections-per-ip",
            "3",
            "--connect-rate-per-ip",
            "1.5",
            "--connect-burst-per-ip",
            "4",
            "--allowed-origins",
            "https://a.example",
            "--echo",
            "off",
        ]
    )
    assert (settings.max_connections, settings.max_connections_per_ip) == (7, 3)
    assert (settings.connect_rate_per_ip, settings.connect_burst_per_ip) == (1.5, 4)
    assert settings.allowed_origins == {"https://a.example"}
    assert settings.echo_enabled is False
    for name, value in {
        "CHAT_MAX_CONNECTIONS": "8",
        "CHAT_MAX_CONNECTIONS_PER_IP": "2",
        "CHAT_CONNECT_RATE_PER_IP": "0.5",
        "CHAT_CONNECT_BURST_PER_IP": "3",
        "CHAT_ALLOWED_ORIGINS": "null",
        "CHAT_ECHO": "off",
    }.items():
        monkeypatch.setenv(name, value)
    settings = parse_args(db)
    assert (settings.max_connections, settings.max_connections_per_ip) == (8, 2)
    assert (settings.connect_rate_per_ip, settings.connect_burst_per_ip) == (0.5, 3)
    assert settings.allowed_origins == {"null"}
    assert settings.echo_enabled is False


async def test_refusals_are_logged_without_the_query(
    start_chat: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    chat = await start_chat()
    check_refusal(
        await upgrade(chat, "/?access_token=hunter2", "Origin: https://evil.example"), 403
    )
    refusals = [r.getMessage() for r in caplog.records if r.name == "server.access"]
    assert len(refusals) == 1
    assert "403" in refusals[0]
    assert "hunter2" not in caplog.text
