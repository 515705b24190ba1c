"""Authentication at the handshake (--auth jwt, --auth basic) and the users file."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

import rfc6455
from server import users
from server.auth import JWT_LEEWAY
from server.cli import parse_args
from server.users import PasswordHash, hash_password, load_users
from tests.server.support import GUARD, Chat, check_refusal, upgrade, wait_until

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


# The command line


def test_auth_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, users_file: Path) -> None:
    db = ["--db", str(tmp_path / "m.db")]
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
