"""Who may chat: credentials checked at the handshake, before the upgrade.

``--auth jwt``: a JSON Web Token (RFC 7519) signed with HS256 and the server's secret, checked
by PyJWT (the optional ``auth`` dependencies, imported only in this mode). It must carry ``sub``
(the user's name) and ``exp``; ``exp`` and ``nbf`` are checked with ``JWT_LEEWAY`` seconds of
leeway. An optional ``channels`` claim, a list of glob patterns (``room:*``), limits the
channels the user may subscribe and publish to. Only HS256 is accepted, so neither
``alg: none`` nor another algorithm gets through (RFC 8725 §2.1, §3.1). A bearer token
(RFC 6750) may come three ways, one at a time (§2): the
``Authorization: Bearer`` header (§2.1), the ``access_token`` query parameter (§2.3), or, for
browsers, which can set neither a header nor anything else on a WebSocket handshake, a
``Sec-WebSocket-Protocol`` value ``access_token.<token>``.

``--auth basic``: ``Authorization: Basic`` (RFC 7617) checked against a users file
(``server.users``); each check runs scrypt in a worker thread, so a flood of guesses does not
stall the event loop, and within the bounds of ``server.logins``: failed logins per address,
checks in flight per address and in all (429 or 503 at once, without a check, beyond them).

A refusal is a 401 with ``WWW-Authenticate`` (RFC 9110 §11.6.1), a 400 for a request that sends
a token more than one way (RFC 6750 §3.1), or a 429 or 503 with ``Retry-After`` as well. Tokens
and passwords are never logged nor echoed in a reply. The identity goes to the chat handler in
``request.state`` (``identity_of``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs

import rfc6455
from rfc6455 import CloseCode, Request, Response
from rfc6455.addresses import address_key
from rfc6455.handshake import offered_subprotocols, reject

from .logins import LoginGuard, LoginRefused
from .users import PasswordHash, UsersFileError, hash_password, load_users

if TYPE_CHECKING:
    from pathlib import Path
    from types import ModuleType

__all__ = [
    "AUTH_MODES",
    "CHAT_SUBPROTOCOL",
    "JWT_LEEWAY",
    "Authenticator",
    "BasicAuthenticator",
    "Identity",
    "JwtAuthenticator",
    "Unauthorized",
    "authenticator",
    "bearer_challenge",
    "close_at_expiry",
    "identity_of",
    "remember",
]

AUTH_MODES = ("none", "jwt", "basic")
# The realm of every challenge (RFC 9110 §11.5).
REALM = "chat"
# Seconds of clock skew forgiven on exp and nbf: machines kept on time by NTP differ by far
# less, and a token stays short-lived. A connection closes at exp plus this.
JWT_LEEWAY = 30.0
# RFC 7518 §3.2: "A key of the same size as the hash output (for instance, 256 bits for
# "HS256") or larger MUST be used".
JWT_MIN_SECRET = 32
# The prefix of a token offered as a subprotocol: Sec-WebSocket-Protocol: chat, access_token.<t>.
SUBPROTOCOL_PREFIX = "access_token."
# The subprotocol the server selects: a browser offering a token that way must offer it too,
# since it fails a handshake whose answer selects none of the subprotocols it offered.
CHAT_SUBPROTOCOL = "chat"
# A user's name goes into every message it sends: as short as a message id.
MAX_USER = 128
# Patterns in a token's channels claim: a user's rooms, not a directory.
MAX_CHANNEL_PATTERNS = 256
# exp beyond the year 9999 (in seconds since 1970): no real token lives that long, and the
# number must fit a float and a timer.
_LATEST_EXP = 253_402_300_800

_IDENTITY = "server.auth.identity"


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user.

    Attributes:
        user: The name shown with its messages (the token's ``sub``, or the basic user name).
        expires: When the credentials stop being valid (Unix time, leeway included), or None.
        channels: Glob patterns of the channels the user may use (the token's ``channels``
            claim); None: any the namespaces allow.
    """

    user: str
    expires: float | None = None
    channels: tuple[str, ...] | None = None


class Unauthorized(Exception):
    """Credentials missing or refused, or not checked now; ``response()`` answers the handshake.

    ``retry_after``: seconds for ``Retry-After`` (RFC 9110 §10.2.3), with a 429 or a 503.
    """

    def __init__(
        self, reason: str, challenge: str, status: int = 401, retry_after: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.challenge = challenge
        self.status = status
        self.retry_after = retry_after

    def response(self) -> Response:
        headers = [("WWW-Authenticate", self.challenge)]
        if self.retry_after is not None:
            headers.append(("Retry-After", str(self.retry_after)))
        return reject(self.status, self.reason, headers)


class Authenticator(Protocol):
    """Checks a handshake's credentials: an Identity, now or once a worker thread is done."""

    def __call__(self, request: Request) -> Identity | Awaitable[Identity]:
        """Raises ``Unauthorized`` (at once or when awaited) if they are missing or wrong."""
        ...


def remember(request: Request, identity: Identity) -> None:
    """Leave ``identity`` for the handler of the connection ``request`` opens."""
    request.state[_IDENTITY] = identity


def identity_of(request: Request) -> Identity | None:
    """The identity the handshake of ``request`` was authenticated as, if any."""
    identity = request.state.get(_IDENTITY)
    assert identity is None or isinstance(identity, Identity)
    return identity


def bearer_challenge(error: str | None = None, description: str = "", realm: str = REALM) -> str:
    """A ``WWW-Authenticate: Bearer`` challenge (RFC 6750 §3)."""
    challenge = f'Bearer realm="{realm}"'
    if error is not None:
        challenge += f', error="{error}", error_description="{description}"'
    return challenge


def bearer_token(request: Request) -> str | None:
    """The bearer token of a request, from whichever of the three places it is in.

    Raises:
        Unauthorized: 400 ``invalid_request`` if it is in more than one place, or given twice.
    """
    found: list[str] = []
    scheme, _, credentials = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "bearer":
        found.append(credentials.strip())
    found += parse_qs(request.query, keep_blank_values=True).get("access_token", [])
    found += [
        offered.removeprefix(SUBPROTOCOL_PREFIX)
        for offered in offered_subprotocols(request)
        if offered.startswith(SUBPROTOCOL_PREFIX)
    ]
    if len(found) > 1:
        # RFC 6750 §2: "Clients MUST NOT use more than one method to transmit the token".
        description = "send the token one way only"
        raise Unauthorized(description, bearer_challenge("invalid_request", description), 400)
    return found[0] if found else None


class JwtAuthenticator:
    """``--auth jwt``: HS256 tokens signed with ``secret``.

    Raises:
        ImportError: PyJWT is not installed (``pip install 'rfc6455-chat[auth]'``).
        ValueError: ``secret`` is shorter than ``JWT_MIN_SECRET`` bytes.
    """

    def __init__(self, secret: str, leeway: float = JWT_LEEWAY) -> None:
        if len(secret.encode()) < JWT_MIN_SECRET:
            raise ValueError(
                f"--jwt-secret: the secret must be at least {JWT_MIN_SECRET} bytes (RFC 7518 §3.2)"
            )
        self._jwt: ModuleType = _import_jwt()
        self._secret = secret
        self.leeway = leeway

    def __call__(self, request: Request) -> Identity:
        token = bearer_token(request)
        if token is None:
            # RFC 6750 §3.1: no error code when the request has no authentication at all.
            raise Unauthorized("a bearer token is required", bearer_challenge())
        jwt = self._jwt
        try:
            claims = jwt.decode(
                token,
                self._secret,
                # Explicitly: the token's own "alg" header must never choose (RFC 8725 §3.1).
                algorithms=["HS256"],
                leeway=self.leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise self._invalid("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise self._invalid("the token is not valid yet (nbf)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise self._invalid(f"the token has no {exc.claim} claim") from None
        except jwt.InvalidTokenError:
            raise self._invalid("the token is malformed or its signature is wrong") from None
        except (OverflowError, ValueError, TypeError):
            # PyJWT's int() of a time claim: exp: 1e400 parses as infinity.
            raise self._invalid("a time claim is out of range") from None
        user, expires = claims["sub"], claims["exp"]
        if not isinstance(user, str) or not 0 < len(user) <= MAX_USER:
            raise self._invalid(f"sub must be a name of 1 to {MAX_USER} characters")
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise self._invalid("exp must be a number")
        # 10**400 is a valid JSON number, and a signed token may carry it: no float holds it.
        if not -_LATEST_EXP < expires < _LATEST_EXP:
            raise self._invalid("exp is out of range")
        patterns = claims.get("channels")
        if patterns is not None and (
            not isinstance(patterns, list)
            or len(patterns) > MAX_CHANNEL_PATTERNS
            or not all(isinstance(p, str) and 0 < len(p) <= MAX_USER for p in patterns)
        ):
            raise self._invalid(
                f"channels must be a list of at most {MAX_CHANNEL_PATTERNS} glob patterns"
            )
        channels = None if patterns is None else tuple(patterns)
        return Identity(user, float(expires) + self.leeway, channels)

    @staticmethod
    def _invalid(description: str) -> Unauthorized:
        return Unauthorized(
            f"invalid token: {description}", bearer_challenge("invalid_token", description)
        )


def _import_jwt() -> ModuleType:
    try:
        import jwt
    except ImportError:
        raise ImportError(
            "--auth jwt needs PyJWT: python -m pip install 'rfc6455-chat[auth]'"
        ) from None
    return jwt


class BasicAuthenticator:
    """``--auth basic``: names and passwords checked against the users file's hashes.

    Args:
        users: Each user's hash.
        guard: Runs the checks, within its bounds; one with no limit on failures by default.
    """

    _CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'

    def __init__(self, users: Mapping[str, PasswordHash], guard: LoginGuard | None = None) -> None:
        self.users = dict(users)
        self.guard = guard if guard is not None else LoginGuard()
        # Checked for a name that is not in the file, so that the answer takes as long and
        # does not tell which names exist.
        self._decoy = hash_password("")

    def __call__(self, request: Request) -> Identity | Awaitable[Identity]:
        scheme, _, credentials = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            raise Unauthorized("a user name and password are required", self._CHALLENGE)
        try:
            # RFC 7617 §2: base64 of user-id ":" password; the charset parameter says UTF-8.
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed basic credentials", self._CHALLENGE) from None
        user, colon, password = decoded.partition(":")
        if not colon:
            raise Unauthorized("malformed basic credentials", self._CHALLENGE)
        key = address_key(request.remote_address[0]) if request.remote_address else ""
        known = user in self.users
        hashed = self.users[user] if known else self._decoy
        try:
            checked = self.guard.check(key, lambda: _verify(hashed, password, known))
        except LoginRefused as exc:
            raise Unauthorized(exc.reason, self._CHALLENGE, exc.status, exc.retry_after) from None
        return self._identity(checked, user)

    async def _identity(self, checked: Awaitable[bool], user: str) -> Identity:
        if not await checked:
            raise Unauthorized("wrong user name or password", self._CHALLENGE)
        return Identity(user)

    def close(self) -> None:
        """Stop the worker threads of the checks."""
        self.guard.close()


def _verify(hashed: PasswordHash, password: str, known: bool) -> bool:
    """Whether a login succeeds, in a worker thread; an unknown name's decoy is checked too."""
    valid = hashed.verify(password)
    return valid and known


def authenticator(
    mode: str, jwt_secret: str, users_file: Path | None, max_login_failures: int = 0
) -> Authenticator | None:
    """The authenticator of an ``--auth`` mode; None for ``none``.

    ``max_login_failures``: ``--auth basic``'s failed logins a minute per address (0: no limit).

    Raises:
        ValueError: The mode is unknown, the secret or users file is missing or unusable.
        ImportError: ``jwt`` without PyJWT installed.
    """
    if mode == "none":
        return None
    if mode == "jwt":
        if not jwt_secret:
            raise ValueError("--auth jwt needs --jwt-secret (or CHAT_JWT_SECRET)")
        return JwtAuthenticator(jwt_secret)
    if mode == "basic":
        if users_file is None:
            raise ValueError("--auth basic needs --users FILE (or CHAT_USERS)")
        try:
            users = load_users(users_file)
        except UsersFileError as exc:
            raise ValueError(f"--users: {exc}") from None
        return BasicAuthenticator(users, LoginGuard(max_login_failures))
    raise ValueError(f"{mode!r} is not one of {', '.join(AUTH_MODES)}")


def close_at_expiry(
    connection: rfc6455.Connection, identity: Identity | None
) -> asyncio.TimerHandle | None:
    """Fail ``connection`` with 1008 "token expired" once ``identity`` expires.

    One timer per connection, set at its expiry: no polling, and nothing at all without an
    identity or an expiry. Failing (RFC 6455 §7.1.7) rather than closing: whatever the client
    sends after its token expired is not processed. Cancel the timer when the client leaves.
    """
    if identity is None or identity.expires is None:
        return None
    # exp is wall-clock time; the loop's clock is monotonic.
    delay = max(0.0, identity.expires - time.time())
    return asyncio.get_running_loop().call_later(
        delay, connection.fail, CloseCode.POLICY_VIOLATION, "token expired"
    )
