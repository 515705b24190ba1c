"""The users file of ``--auth basic``: names and salted scrypt hashes of their passwords.

One user a line, ``name:hash``; blank lines and lines starting with ``#`` are skipped. A hash is
``scrypt$N$r$p$salt$key``: the scrypt cost parameters (RFC 7914 §2), then the salt and the
derived key, both in base64 (RFC 4648 §4, with padding). The parameters are read from each line,
so entries made with stronger ones later still verify. A name is what ``Authorization: Basic``
carries before its first colon (RFC 7617 §2), so it may not contain one.

Add or replace a user (the password is read without echo from a terminal, else from the first
line of stdin)::

    python -m server.users add FILE NAME
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PasswordHash", "UsersFileError", "hash_password", "load_users", "main"]

# RFC 7914 §2 and OWASP's minimum for scrypt: N = 2**14, r = 8, p = 1 costs 16 MiB and about
# 40 ms a check here, so a guess is expensive while a login stays quick.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
# 16 random bytes of salt and a 32-byte key: no two users share a hash, and a key as long as
# SHA-256's output.
SALT_BYTES = 16
KEY_BYTES = 32
# Room for N up to 2**16 with r = 8 (64 MiB): OpenSSL refuses more than its 32 MiB by default.
_MAXMEM = 2**27


class UsersFileError(ValueError):
    """A users file that cannot be read, or a line of it that is not ``name:hash``."""


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """One password's scrypt hash and the parameters it was made with."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def __str__(self) -> str:
        salt = base64.b64encode(self.salt).decode()
        key = base64.b64encode(self.key).decode()
        return f"scrypt${self.n}${self.r}${self.p}${salt}${key}"

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Read ``scrypt$N$r$p$salt$key``.

        Raises:
            ValueError: It is not of that form, or its parameters are out of range.
        """
        scheme, *fields = text.split("$")
        if scheme != "scrypt" or len(fields) != 5:
            raise ValueError("a hash must be scrypt$N$r$p$salt$key")
        try:
            n, r, p = (int(field) for field in fields[:3])
            salt, key = (base64.b64decode(field, validate=True) for field in fields[3:])
        except (ValueError, binascii.Error):
            raise ValueError("a hash must be scrypt$N$r$p$salt$key") from None
        # RFC 7914 §2: N a power of 2 above 1; r and p positive. The memory bound keeps a
        # hostile file from making each check allocate gigabytes.
        if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r > _MAXMEM or not salt or not key:
            raise ValueError("scrypt parameters out of range")
        return cls(n, r, p, salt, key)

    def verify(self, password: str) -> bool:
        """Tell whether ``password`` has this hash, in time independent of where they differ."""
        key = _derive(password, self.salt, self.n, self.r, self.p, len(self.key))
        return hmac.compare_digest(key, self.key)


def _derive(password: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=size, maxmem=_MAXMEM)


def hash_password(password: str) -> PasswordHash:
    """Hash ``password`` with a fresh salt and the default parameters."""
    salt = os.urandom(SALT_BYTES)
    return PasswordHash(
        SCRYPT_N,
        SCRYPT_R,
        SCRYPT_P,
        salt,
        _derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES),
    )


def load_users(path: Path) -> dict[str, PasswordHash]:
    """Read a users file.

    Raises:
        UsersFileError: It cannot be read, a line is not ``name:hash``, or a name repeats;
            the message names the line, never shows a hash.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UsersFileError(f"cannot read {path}: {reason}") from None
    users: dict[str, PasswordHash] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, hashed = line.partition(":")
        try:
            if not colon or not name:
                raise ValueError("a line must be name:hash")
            if name in users:
                raise ValueError(f"user {name!r} appears twice")
            users[name] = PasswordHash.parse(hashed)
        except ValueError as exc:
            raise UsersFileError(f"{path}, line {number}: {exc}") from None
    return users


def _add(path: Path, name: str, password: str) -> None:
    """Add ``name`` to the file (created if missing), or replace its hash."""
    users: Mapping[str, PasswordHash] = load_users(path) if path.exists() else {}
    users = {**users, name: hash_password(password)}
    lines = [f"{user}:{hashed}\n" for user, hashed in users.items()]
    # Written aside then renamed: a crash leaves the old file or the new one, never half.
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.writelines(lines)
    os.replace(temporary, path)


def _read_password() -> str:
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the passwords differ")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m server.users add FILE NAME``: add a user or change its password."""
    parser = argparse.ArgumentParser(
        prog="python -m server.users",
        description="Manage the users file of --auth basic (name:scrypt hash lines).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser(
        "add", help="add a user, or set a new password (read from the terminal or stdin)"
    )
    add.add_argument("file", type=Path, help="the users file; created if missing")
    add.add_argument("name", help="the user name (no colon)")
    args = parser.parse_args(argv)
    try:
        if not args.name or ":" in args.name:
            raise ValueError("a user name must be non-empty and have no colon")
        password = _read_password()
        if not password:
            raise ValueError("the password is empty")
        _add(args.file, args.name, password)
    except (ValueError, OSError) as exc:
        print(f"python -m server.users: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name} saved in {args.file}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
