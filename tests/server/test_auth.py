"""Authentication at the handshake (--auth jwt, --auth basic) and the users file."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import math
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

import rfc6455
from rfc6455 import Limits
from rfc6455.frames import Opcode
from server import users
from server.auth import JWT_LEEWAY, BasicAuthenticator
from server.cli import parse_args
from server.logins import MAX_CHECKS_PER_ADDRESS, RETRY_CHECKS, LoginGuard, LoginRefused
from server.logs import JsonFormatter
from server.users import PasswordHash, hash_password, load_users
from tests.server.support import (
    GUARD,
    Chat,
    Reply,
    check_refusal,
    upgrade,
    wait_until,
)

Start = Callable[..., Any]

SECRET = "correct horse battery staple, 32+"


def token(secret: str = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    claims.setdefault("sub", "ann")
    claims.setdefault("exp", time.time() + 3600)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, secret, algorithm=algorithm)


async def jwt_chat(start_chat: Start, **settings: Any) -> Chat:
    chat: Chat = await start_chat(auth="jwt", jwt_secret=SECRET, history=5, **settings)
    return chat


async def greeted(connection: rfc6455.Connection) -> str:
    """Skip the id, welcome and history messages; return the connection id."""
    async with asyncio.timeout(GUARD):
        first = json.loads(await connection.recv())
        await connection.recv()
        await connection.recv()
    return str(first["connectionId"])


async def next_of(connection: rfc6455.Connection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(GUARD):
        while (message := json.loads(await connection.recv()))["type"] != kind:
            pass
    return dict(message)


async def ann_acked(db: Path) -> None:
    """Wait until the message is committed (the writer thread's own pace)."""
    await wait_until(lambda: _count(db) > 0)


def _count(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        conn.close()


# --auth jwt


async def test_without_a_token_the_handshake_gets_401_with_a_bearer_challenge(
    start_chat: Start,
) -> None:
    chat = await jwt_chat(start_chat)
    reply = await upgrade(chat)
    check_refusal(reply, 401)
    # RFC 6750 §3.1: no error code when the request carried no credentials.
    assert reply.headers["www-authenticate"] == 'Bearer realm="chat"'
    # /echo, which needs none, is off unless asked for (--echo on): see test_access.py.
    check_refusal(await upgrade(chat, "/echo"), 404)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: token(secret="another secret of at least 32 bytes"), "signature"),
        (lambda: token(algorithm="none", secret=""), "alg none"),
        (lambda: token(secret=SECRET * 2, algorithm="HS512"), "another algorithm"),
        (lambda: token(exp=time.time() - JWT_LEEWAY - 5), "expired"),
        (lambda: token(nbf=time.time() + JWT_LEEWAY + 60), "not yet valid"),
        (lambda: token(sub=None), "no sub"),
        (lambda: token(exp=None), "no exp"),
        (lambda: token(sub=""), "empty sub"),
        (lambda: "not.a.token", "malformed"),
        # Signed by the issuer, but with times no float holds (issue 11: 500 and a traceback).
        (lambda: token(exp=10**400), "exp 10**400"),
        (lambda: token(exp=float("inf")), "exp Infinity"),
        (lambda: token(exp=-(10**400)), "exp -10**400"),
        (lambda: token(nbf=10**400), "nbf 10**400"),
        (lambda: token(iat=10**400), "iat 10**400"),
        (lambda: token(exp=True), "exp true"),
        (lambda: token(exp="soon"), "exp a string"),
    ],
)
async def test_a_bad_token_gets_401_invalid_token(
    start_chat: Start, make: Callable[[], str], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    chat = await jwt_chat(start_chat)
    bad = make()
    reply = await upgrade(chat, "/", f"Authorization: Bearer {bad}")
    check_refusal(reply, 401)
    challenge = reply.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="chat", error="invalid_token"'), why
    assert bad not in caplog.text  # never logged
    assert bad not in reply.body.decode()
    assert "Traceback" not in caplog.text, why


async def test_a_token_sent_two_ways_gets_400_invalid_request(start_chat: Start) -> None:
    chat = await jwt_chat(start_chat)
    good = token()
    reply = await upgrade(chat, f"/?access_token={good}", f"Authorization: Bearer {good}")
    check_refusal(reply, 400)
    assert 'error="invalid_request"' in reply.headers["www-authenticate"]


async def test_a_token_is_accepted_in_the_header_the_query_and_the_subprotocol(
    start_chat: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    chat = await jwt_chat(start_chat)
    by_header = await chat.connect("/", headers=[("Authorization", f"Bearer {token(sub='hal')}")])
    by_query = await chat.connect(f"/?access_token={token(sub='ida')}")
    # A browser's way: the token as a subprotocol, beside "chat", which the server selects.
    by_subprotocol = await chat.connect(
        "/", subprotocols=["chat", f"access_token.{token(sub='joe')}"]
    )
    assert by_subprotocol.subprotocol == "chat"
    for connection in (by_header, by_query, by_subprotocol):
        await greeted(connection)
    assert "access_token" not in caplog.text
    assert "eyJ" not in caplog.text  # no token, in any form, in the log


async def test_the_user_is_named_in_broadcasts_history_and_user_left(start_chat: Start) -> None:
    chat = await jwt_chat(start_chat)
    ann = await chat.connect("/", headers=[("Authorization", f"Bearer {token(sub='ann')}")])
    bob = await chat.connect("/", headers=[("Authorization", f"Bearer {token(sub='bob')}")])
    ann_id = await greeted(ann)
    await greeted(bob)
    await ann.send("hello")
    broadcast = await next_of(bob, "broadcast")
    assert (broadcast["connectionId"], broadcast["user"], broadcast["message"]) == (
        ann_id,
        "ann",
        "hello",
    )
    # A newcomer's history holds the broadcast exactly as it was sent.
    carol = await chat.connect("/", headers=[("Authorization", f"Bearer {token(sub='carol')}")])
    async with asyncio.timeout(GUARD):
        await carol.recv()
        await carol.recv()
        history = json.loads(await carol.recv())
    assert history["messages"] == [broadcast]
    await ann.close()
    left = await next_of(bob, "user_left")
    assert (left["connectionId"], left["user"]) == (ann_id, "ann")
    # The name is stored with the message: a restarted server's history has it too.
    await ann_acked(ann_db := chat.db_path)
    conn = sqlite3.connect(ann_db)
    try:
        assert conn.execute("SELECT user FROM messages WHERE message = 'hello'").fetchall() == [
            ("ann",)
        ]
    finally:
        conn.close()


async def test_a_connection_is_closed_with_1008_when_its_token_expires(
    start_chat: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    chat = await jwt_chat(start_chat)
    # Accepted thanks to the leeway, and expiring a second or two later (exp is whole seconds).
    expiring = token(sub="eve", exp=int(time.time() - JWT_LEEWAY) + 2)
    eve = await chat.connect("/", headers=[("Authorization", f"Bearer {expiring}")])
    bob = await chat.connect("/", headers=[("Authorization", f"Bearer {token(sub='bob')}")])
    await greeted(eve)
    await greeted(bob)
    async with asyncio.timeout(GUARD):
        with contextlib.suppress(rfc6455.ConnectionClosed):
            while True:
                await eve.recv()
        await eve.wait_closed()
    assert (eve.close_code, eve.close_reason) == (1008, "token expired")
    left = await next_of(bob, "user_left")
    assert left["user"] == "eve"
    # Logged with what the server sent, not as a drop (1006).
    (line,) = [
        r.getMessage()
        for r in caplog.records
        if "disconnect " + left["connectionId"] in r.getMessage()
    ]
    assert "server closed 1008 'token expired'" in line
    (expired,) = [
        r
        for r in caplog.records
        if getattr(r, "connection_id", "") == left["connectionId"]
        and getattr(r, "event", "") == "disconnect"
    ]
    fields = json.loads(JsonFormatter().format(expired))
    assert (fields["initiator"], fields["close_code"], fields["close_reason"]) == (
        "server",
        1008,
        "token expired",
    )
    assert fields["user"] == "eve"
    # The other one, whose token is valid for an hour, goes on.
    assert bob.state is rfc6455.State.OPEN


# --auth basic


def basic(name: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(
        f"# chat users\nann:{hash_password('s3cret: with colon')}\n\nbob:{hash_password('pw')}\n",
        encoding="utf-8",
    )
    return path


async def test_basic_credentials_are_checked_against_the_users_file(
    start_chat: Start, users_file: Path
) -> None:
    chat = await start_chat(auth="basic", users_file=users_file, history=0)
    for header in (
        basic("ann", "wrong"),
        basic("nobody", "pw"),
        "Authorization: Basic !!!",
        "Authorization: Bearer abc",
        "X-None: 1",
    ):
        reply = await upgrade(chat, "/", header)
        check_refusal(reply, 401)
        assert reply.headers["www-authenticate"] == 'Basic realm="chat", charset="UTF-8"'
    ann = await chat.connect(
        "/", headers=[("Authorization", basic("ann", "s3cret: with colon").split(": ", 1)[1])]
    )
    bob = await chat.connect("/", headers=[("Authorization", basic("bob", "pw").split(": ", 1)[1])])
    async with asyncio.timeout(GUARD):
        for connection in (ann, bob):
            await connection.recv()
            await connection.recv()
    await ann.send("hi")
    assert (await next_of(bob, "broadcast"))["user"] == "ann"


def test_a_password_hash_verifies_only_its_password() -> None:
    hashed = hash_password("pässword")
    text = str(hashed)
    scheme, n, r, p, salt, key = text.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(key)) == 32
    parsed = PasswordHash.parse(text)
    assert parsed.verify("pässword")
    assert not parsed.verify("password")
    assert str(hash_password("pässword")) != text  # a fresh salt each time


@pytest.mark.parametrize(
    "line",
    [
        "ann",
        ":scrypt$16384$8$1$AAAA$AAAA",
        "ann:bcrypt$x",
        "ann:scrypt$16383$8$1$AAAA$AAAA",
        "ann:scrypt$16384$8$1$!!$AAAA",
        "ann:scrypt$4194304$8$1$AAAA$AAAA",
    ],
)
def test_a_bad_users_file_exits_2_naming_the_line(
    line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users"
    path.write_text(f"# header\n{line}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--db", str(tmp_path / "m.db"), "--auth", "basic", "--users", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "line 2" in err


def test_users_add_creates_and_updates_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users"
    for name, password in (("ann", "one"), ("bob", "two"), ("ann", "three")):
        monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
        assert users.main(["add", str(path), name]) == 0
    loaded = load_users(path)
    assert sorted(loaded) == ["ann", "bob"]
    assert loaded["ann"].verify("three")
    assert loaded["bob"].verify("two")
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only
    monkeypatch.setattr(sys, "stdin", io.StringIO("x\n"))
    assert users.main(["add", str(path), "a:b"]) == 2


# --auth basic: password guessing (server/logins.py)

CHALLENGE = 'Basic realm="chat", charset="UTF-8"'
# The prefix of every wrong password a test sends; the right ones are ann's and bob's.
WRONG = "guess"
# 150 handshakes from one address at once all reach the hook: the transport's own cap on
# handshakes in progress per address (100, answered 503) is not what these tests are about.
UNCAPPED = Limits(max_handshakes_per_address=None)


class Checks:
    """The scrypt checks the server runs, as ``PasswordHash.verify`` sees them.

    ``started``: the passwords, in the order their checks start (in worker threads).
    ``hold``: while clear, a check of a wrong password waits for it (at most GUARD seconds).
    """

    def __init__(self) -> None:
        self.started: list[str] = []
        self.hold = threading.Event()
        self.hold.set()
        self.guesses_at_once = 0
        self._guessing = 0
        self._lock = threading.Lock()

    def counting(
        self, verify: Callable[[PasswordHash, str], bool]
    ) -> Callable[[PasswordHash, str], bool]:
        def counted(hashed: PasswordHash, password: str) -> bool:
            guess = password.startswith(WRONG)
            with self._lock:
                self.started.append(password)
                self._guessing += guess
                self.guesses_at_once = max(self.guesses_at_once, self._guessing)
            try:
                if guess:
                    self.hold.wait(GUARD)
                return verify(hashed, password)
            finally:
                with self._lock:
                    self._guessing -= guess

        return counted

    @property
    def guesses(self) -> list[str]:
        return [password for password in self.started if password.startswith(WRONG)]


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Checks]:
    counted = Checks()
    monkeypatch.setattr(PasswordHash, "verify", counted.counting(PasswordHash.verify))
    yield counted
    counted.hold.set()  # no worker thread is left waiting, whatever the test did


async def log_in(chat: Chat, name: str, password: str, source: str) -> Reply:
    """A handshake with basic credentials from the address ``source``; its refusal."""
    return await upgrade(chat, "/", basic(name, password), source=source)


async def gets_in(chat: Chat, name: str, password: str, source: str) -> None:
    """Log in from ``source``: a 101 and the greetings; then leave (the server sees EOF)."""
    raw = await chat.join_raw(headers=[basic(name, password)], source=source)
    await raw.close()


def guard_of(chat: Chat) -> LoginGuard:
    authenticator = chat.app.access.authenticator
    assert isinstance(authenticator, BasicAuthenticator)
    return authenticator.guard


async def test_a_flood_of_wrong_passwords_is_answered_at_once_and_a_real_user_still_gets_in(
    start_chat: Start, users_file: Path, checks: Checks, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    chat = await start_chat(auth="basic", users_file=users_file, history=0, limits=UNCAPPED)
    loop = asyncio.get_running_loop()
    began = loop.time()
    flood = [
        asyncio.create_task(log_in(chat, "ann", f"{WRONG}{i}", "127.0.0.1")) for i in range(150)
    ]
    await wait_until(lambda: checks.guesses)
    # During the flood, a real user from another address.
    bob = await chat.join_raw(headers=[basic("bob", "pw")], source="127.0.0.2")
    replies = await asyncio.gather(*flood)
    elapsed = loop.time() - began

    # Every guess was answered (none waited for the open timeout), 401 after a check, else 429.
    statuses = Counter(reply.status for reply in replies)
    assert set(statuses) <= {401, 429}, statuses
    assert statuses[401] == len(checks.guesses)
    # Far fewer than 150 checks: 10 failures at once, then 10 a minute, at most 2 at a time.
    assert len(checks.guesses) <= 10 + math.ceil(elapsed / 6)
    assert checks.guesses_at_once <= MAX_CHECKS_PER_ADDRESS
    for reply in replies:
        check_refusal(reply, reply.status)
        assert reply.headers["www-authenticate"] == CHALLENGE
        if reply.status == 429:
            assert int(reply.headers["retry-after"]) >= 1
    # bob was checked during the flood, after its first guess, and got in.
    assert checks.started.index("pw") > checks.started.index(checks.guesses[0])
    assert "no complete request" not in caplog.text

    # ...and chats: ann, from a third address, gets what bob says.
    ann = await chat.join_raw(headers=[basic("ann", "s3cret: with colon")], source="127.0.0.3")
    await bob.send_frame(Opcode.TEXT, b"hi")
    broadcast = await ann.recv()
    assert (broadcast["type"], broadcast["user"], broadcast["message"]) == (
        "broadcast",
        "bob",
        "hi",
    )
    await bob.close()
    await ann.close()

    # One log line per 401, the 429s once a second with a count; never a password nor the
    # credentials.
    records = [r for r in caplog.records if r.name == "server.access"]
    failed = [r for r in records if getattr(r, "status", None) == 401]
    assert len(failed) == statuses[401]
    flood = [r for r in records if getattr(r, "status", None) == 429]
    assert 1 <= len(flood) <= 2 + math.ceil(elapsed)
    # A summary stands for its `repeated` refusals: those of the last second may be pending.
    assert sum(getattr(r, "repeated", 1) for r in flood) <= statuses[429]
    credentials = [basic("ann", f"{WRONG}{i}").split()[-1] for i in range(150)]
    for line in [r.getMessage() for r in records]:
        assert "\n" not in line
        assert WRONG not in line
        assert not any(text in line for text in credentials)


async def test_a_real_login_waits_behind_the_flooding_address_s_share_only(
    start_chat: Start, users_file: Path, checks: Checks
) -> None:
    chat = await start_chat(auth="basic", users_file=users_file, history=0, limits=UNCAPPED)
    checks.hold.clear()  # the guesses' checks keep their threads until released
    flood = [
        asyncio.create_task(log_in(chat, "ann", f"{WRONG}{i}", "127.0.0.1")) for i in range(150)
    ]
    # All but the address's share are refused before a single check is over.
    await wait_until(lambda: sum(task.done() for task in flood) == 150 - MAX_CHECKS_PER_ADDRESS)
    assert all(task.result().status == 429 for task in flood if task.done())
    assert guard_of(chat).in_flight == MAX_CHECKS_PER_ADDRESS
    bob = asyncio.create_task(chat.join_raw(headers=[basic("bob", "pw")], source="127.0.0.2"))
    await wait_until(lambda: guard_of(chat).in_flight == MAX_CHECKS_PER_ADDRESS + 1)
    checks.hold.set()
    async with asyncio.timeout(GUARD):
        await (await bob).close()
        replies = await asyncio.gather(*flood)
    # bob's check came right after the flood's two, whatever else the flood sent.
    assert len(checks.guesses) == MAX_CHECKS_PER_ADDRESS
    assert checks.started[MAX_CHECKS_PER_ADDRESS:] == ["pw"]
    assert Counter(reply.status for reply in replies) == {429: 148, 401: 2}
    assert guard_of(chat).in_flight == 0


async def test_beyond_its_checks_in_flight_an_address_gets_429_and_the_server_503(
    start_chat: Start, users_file: Path, checks: Checks
) -> None:
    chat = await start_chat(auth="basic", users_file=users_file, history=0)
    authenticator = chat.app.access.authenticator
    assert isinstance(authenticator, BasicAuthenticator)
    authenticator.guard.close()
    # Tiny bounds: one check in flight per address, two in all, one thread.
    authenticator.guard = guard = LoginGuard(10, per_address=1, total=2, workers=1)
    checks.hold.clear()
    first = asyncio.create_task(log_in(chat, "ann", WRONG, "127.0.0.1"))
    await wait_until(lambda: checks.started)
    # 127.0.0.1 has its one check running.
    reply = await log_in(chat, "ann", WRONG, "127.0.0.1")
    body = check_refusal(reply, 429, RETRY_CHECKS)
    assert "127.0.0.1" in body
    assert reply.headers["www-authenticate"] == CHALLENGE
    # 127.0.0.2's waits for the thread; then the server has its two in flight.
    queued = asyncio.create_task(log_in(chat, "bob", "nope", "127.0.0.2"))
    await wait_until(lambda: guard.in_flight == 2)
    reply = await log_in(chat, "bob", "pw", "127.0.0.3")
    check_refusal(reply, 503, RETRY_CHECKS)
    assert reply.headers["www-authenticate"] == CHALLENGE
    checks.hold.set()
    assert (await first).status == 401
    assert (await queued).status == 401
    assert guard.in_flight == 0
    assert checks.started == [WRONG, "nope"]  # the refused ones were never checked
    # Room again.
    await gets_in(chat, "bob", "pw", "127.0.0.3")


async def test_an_address_out_of_failed_logins_gets_429_without_a_check(
    start_chat: Start, users_file: Path, checks: Checks
) -> None:
    chat = await start_chat(auth="basic", users_file=users_file, history=0, max_login_failures=3)
    # Logins that succeed cost nothing: more of them than the failures allowed.
    for _ in range(5):
        await gets_in(chat, "bob", "pw", "127.0.0.1")
    for _ in range(3):
        check_refusal(await log_in(chat, "bob", WRONG, "127.0.0.1"), 401)
    assert len(checks.started) == 8
    # Three failures a minute: the next one in 20 s, and until then not even bob gets in.
    for password in (WRONG, "pw"):
        reply = await log_in(chat, "bob", password, "127.0.0.1")
        body = check_refusal(reply, 429)
        assert 1 <= int(reply.headers["retry-after"]) <= 20
        assert reply.headers["www-authenticate"] == CHALLENGE
        assert "too many failed logins from 127.0.0.1" in body
    assert len(checks.started) == 8
    # Another address is not concerned.
    await gets_in(chat, "bob", "pw", "127.0.0.2")
    # 0: no limit on failures.
    unlimited = await start_chat(
        auth="basic", users_file=users_file, history=0, max_login_failures=0
    )
    for _ in range(5):
        check_refusal(await log_in(unlimited, "bob", WRONG, "127.0.0.1"), 401)


async def test_a_failed_check_takes_a_token_and_one_that_succeeds_gives_it_back() -> None:
    now = 0.0
    guard = LoginGuard(2, clock=lambda: now)
    try:
        for _ in range(5):
            assert await guard.check("192.0.2.1", lambda: True)
        for _ in range(2):
            assert not await guard.check("192.0.2.1", lambda: False)
        with pytest.raises(LoginRefused) as refused:
            guard.check("192.0.2.1", lambda: True)
        # Two failures a minute: one back in 30 s.
        assert (refused.value.status, refused.value.retry_after) == (429, 30)
        assert await guard.check("192.0.2.2", lambda: True)
        now += 30
        assert await guard.check("192.0.2.1", lambda: True)
        assert guard.in_flight == 0
    finally:
        guard.close()


async def test_the_guard_forgets_addresses_without_recent_failures() -> None:
    now = 0.0
    guard = LoginGuard(10, per_address=1, total=4096, workers=2, clock=lambda: now)

    async def fail(key: str) -> None:
        assert not await guard.check(key, lambda: False)

    try:
        await asyncio.gather(*(fail(f"10.0.{i // 256}.{i % 256}") for i in range(1024)))
        now = 3.0
        await fail("192.0.2.1")
        assert len(guard) == 1025
        # A failure is forgotten once its token is back, 6 s later: the first 1024 by now,
        # not the one 4 s ago, nor the new ones.
        now = 7.0
        await asyncio.gather(*(fail(f"10.1.{i // 256}.{i % 256}") for i in range(1024)))
        assert len(guard) == 1 + 1024
        assert guard.in_flight == 0
    finally:
        guard.close()


# The command line


def test_auth_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, users_file: Path) -> None:
    db = ["--db", str(tmp_path / "m.db")]
    # Failed logins are limited by default.
    assert parse_args(db).max_login_failures == 10
    assert parse_args([*db, "--max-login-failures", "0"]).max_login_failures == 0
    monkeypatch.setenv("CHAT_MAX_LOGIN_FAILURES", "25")
    assert parse_args(db).max_login_failures == 25
    settings = parse_args([*db, "--auth", "jwt", "--jwt-secret", SECRET])
    assert (settings.auth, settings.jwt_secret) == ("jwt", SECRET)
    assert SECRET not in repr(settings)
    monkeypatch.setenv("CHAT_AUTH", "basic")
    monkeypatch.setenv("CHAT_USERS", str(users_file))
    settings = parse_args(db)
    assert (settings.auth, settings.users_file) == ("basic", users_file)
    monkeypatch.setenv("CHAT_AUTH", "jwt")
    monkeypatch.setenv("CHAT_JWT_SECRET", SECRET)
    assert parse_args(db).jwt_secret == SECRET


@pytest.mark.parametrize(
    "args",
    [
        ["--auth", "jwt"],
        ["--auth", "jwt", "--jwt-secret", "short"],
        ["--auth", "basic"],
        ["--auth", "basic", "--users", "/nonexistent/users"],
        ["--auth", "kerberos"],
    ],
)
def test_bad_auth_options_exit_2(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--db", str(tmp_path / "m.db"), *args])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_jwt_without_pyjwt_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "jwt", None)  # import jwt now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--db", str(tmp_path / "m.db"), "--auth", "jwt", "--jwt-secret", SECRET])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "PyJWT" in err
