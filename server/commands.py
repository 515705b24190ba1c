"""What a client asks for: each text frame read into one command, or a documented error.

A frame that parses as a JSON object with a ``type`` is a command (``docs/protocol.md``). Any
other frame is a message to the default channel, read as before (``messages.parse``): plain
text, or ``{"message": ..., "clientMsgId": ...}``. Unknown keys are ignored, so clients may
send more than this server knows.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qs

from . import messages
from .channels import DEFAULT_CHANNEL, check_name

__all__ = [
    "MAX_DISPLAY_NAME",
    "Command",
    "CommandError",
    "Direct",
    "Hello",
    "PresenceQuery",
    "Publish",
    "Read",
    "Subscribe",
    "Typing",
    "Unsubscribe",
    "check_client_id",
    "check_display_name",
    "identity_from_query",
    "read",
]

#: The most characters of an anonymous client's display name.
MAX_DISPLAY_NAME = 32
# An epoch the server made is a UUID; anything much longer is not one of ours.
_MAX_EPOCH = 64
# A seq fits SQLite's 64-bit integers.
_MAX_SEQ = 2**63 - 1
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class CommandError(ValueError):
    """A request the server refuses; sent back as ``{"type": "error", ...}``.

    Attributes:
        code: One of the codes ``docs/protocol.md`` lists.
        client_msg_id: The request's ``clientMsgId``, if it had a valid one.
        channel: The channel it named, if that is a valid name.
    """

    def __init__(
        self,
        code: str,
        message: str,
        client_msg_id: str | None = None,
        channel: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.client_msg_id = client_msg_id
        self.channel = channel


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``text`` to ``channel``."""

    channel: str
    text: str
    client_msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class Direct:
    """Send ``text`` to the user ``to`` (and the sender's other connections)."""

    to: str
    text: str
    client_msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe to ``channel``, resuming after ``since`` in ``epoch`` if both are given."""

    channel: str
    since: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True, slots=True)
class Hello:
    """An anonymous client's stable id and display name."""

    client_id: str
    name: str | None


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    channel: str


@dataclass(frozen=True, slots=True)
class Typing:
    channel: str


@dataclass(frozen=True, slots=True)
class Read:
    """The client has read ``channel`` up to ``seq``."""

    channel: str
    seq: int


Command = Publish | Direct | Subscribe | Unsubscribe | Hello | PresenceQuery | Typing | Read


def read(text: str, *, max_chars: int, max_bytes: int) -> Command:
    """Read one text frame.

    Raises:
        CommandError: The frame is not a valid request; ``code`` says why.
    """
    value = messages.loads(text)
    if not isinstance(value, dict) or "type" not in value:
        try:
            message = messages.chat_message(text, value, max_chars=max_chars, max_bytes=max_bytes)
        except messages.InvalidMessage as exc:
            raise CommandError("invalid_message", str(exc), exc.client_msg_id) from None
        return Publish(DEFAULT_CHANNEL, message.text, message.client_msg_id)
    kind = value["type"]
    if not isinstance(kind, str):
        raise CommandError("bad_request", "type is a string")
    reader = _READERS.get(kind)
    if reader is None:
        raise CommandError("unknown_type", f"unknown type {kind[:40]!r}")
    return reader(value, max_chars, max_bytes)


def identity_from_query(query: str) -> tuple[str | None, str | None]:
    """``?clientId=&name=``: an anonymous client's ``hello`` at connect; (None, None) without.

    Raises:
        CommandError: ``bad_request``: a parameter given twice, a name without a clientId,
            or a value that ``hello`` would refuse.
    """
    values = parse_qs(query)
    ids, names = values.get("clientId", []), values.get("name", [])
    if len(ids) > 1 or len(names) > 1:
        raise CommandError("bad_request", "clientId and name are given once")
    if names and not ids:
        raise CommandError("bad_request", "a name goes with a clientId")
    client_id = check_client_id(ids[0]) if ids else None
    name = check_display_name(names[0]) if names else None
    return client_id, name


def check_client_id(value: object) -> str:
    """``value`` if it is a UUID in its canonical form (lowercase, with hyphens).

    Raises:
        CommandError: ``bad_request``.
    """
    if isinstance(value, str) and len(value) == 36:
        try:
            if str(uuid.UUID(value)) == value:
                return value
        except ValueError:
            pass
    raise CommandError("bad_request", "clientId is a UUID, such as crypto.randomUUID() makes")


def check_display_name(value: object) -> str:
    """``value`` if it is a display name: 1 to 32 printable characters, not blank.

    Raises:
        CommandError: ``bad_request``.
    """
    if (
        isinstance(value, str)
        and 0 < len(value) <= MAX_DISPLAY_NAME
        and value.isprintable()
        and not value.isspace()
        and not _CONTROLS.search(value)
        and messages.is_unicode(value)
    ):
        return value
    raise CommandError(
        "bad_request", f"name is 1 to {MAX_DISPLAY_NAME} printable characters, not blank"
    )


def _channel(value: dict[str, object], client_msg_id: str | None = None) -> str:
    if "channel" not in value:
        raise CommandError("bad_request", "channel is missing", client_msg_id)
    name = value["channel"]
    reason = check_name(name)
    if reason is not None:
        raise CommandError("bad_channel", reason, client_msg_id)
    assert isinstance(name, str)
    return name


def _client_msg_id(value: dict[str, object]) -> str | None:
    if "clientMsgId" not in value:
        return None
    try:
        return messages.check_client_msg_id(value["clientMsgId"])
    except messages.InvalidMessage as exc:
        raise CommandError("invalid_message", str(exc)) from None


def _text(
    value: dict[str, object],
    client_msg_id: str | None,
    channel: str | None,
    limits: tuple[int, int],
) -> str:
    text = value.get("message")
    if not isinstance(text, str):
        raise CommandError("bad_request", "message is a string", client_msg_id, channel)
    try:
        messages.check_text(text, client_msg_id, *limits)
    except messages.InvalidMessage as exc:
        raise CommandError("invalid_message", str(exc), client_msg_id, channel) from None
    return text


def _seq(value: object, key: str, channel: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SEQ:
        raise CommandError("bad_request", f"{key} is a whole number, 0 or more", channel=channel)
    return value


def _publish(value: dict[str, object], max_chars: int, max_bytes: int) -> Command:
    client_msg_id = _client_msg_id(value)
    channel = _channel(value, client_msg_id)
    return Publish(
        channel, _text(value, client_msg_id, channel, (max_chars, max_bytes)), client_msg_id
    )


def _direct(value: dict[str, object], max_chars: int, max_bytes: int) -> Command:
    client_msg_id = _client_msg_id(value)
    to = value.get("to")
    if not isinstance(to, str) or not to:
        raise CommandError("bad_request", "to is a user's name", client_msg_id)
    return Direct(to, _text(value, client_msg_id, None, (max_chars, max_bytes)), client_msg_id)


def _subscribe(value: dict[str, object], max_chars: int, max_bytes: int) -> Command:
    channel = _channel(value)
    since, epoch = value.get("since"), value.get("epoch")
    if since is None and epoch is None:
        return Subscribe(channel)
    if not isinstance(epoch, str) or not 0 < len(epoch) <= _MAX_EPOCH:
        raise CommandError(
            "bad_request", "since and epoch go together; epoch is a string", channel=channel
        )
    return Subscribe(channel, _seq(since, "since", channel), epoch)


def _unsubscribe(value: dict[str, object], max_chars: int, max_bytes: int) -> Command:
    return Unsubscribe(_channel(value))


def _hello(value: dict[str, object], max_chars: int, max_bytes: int) -> Command:
    client_id = check_client_id(value.get("clientId"))
    name = value.get("name")
    return Hello(client_id, None if name is None else check_display_name(name))


def _presence(value: dict[str, object], max_chars: int, max_bytes: int) -> Command:
    return PresenceQuery(_channel(value))


def _typing(value: dict[str, object], max_chars: int, max_bytes: int) -> Command:
    return Typing(_channel(value))


def _read(value: dict[str, object], max_chars: int, max_bytes: int) -> Command:
    channel = _channel(value)
    return Read(channel, _seq(value.get("seq"), "seq", channel))


_READERS = {
    "publish": _publish,
    "direct": _direct,
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "hello": _hello,
    "presence": _presence,
    "typing": _typing,
    "read": _read,
}
