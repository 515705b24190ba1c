"""Namespaces: the options of a family of channels, from an optional TOML file (``--channels``).

A channel's namespace is the part of its name before the first ``:`` (``channels.py``); a
channel without one, ``general`` among them, takes the ``[defaults]`` table. A namespace's
table names only what differs from the defaults::

    [defaults]              # every channel, unless its namespace says otherwise
    history = 50            # messages a new subscriber gets
    retention_messages = 1000000
    retention_days = 30
    presence = true         # members may ask who is there; "subscribed" includes them
    join_leave = true       # members are told of "joined" and "left"
    publish = "members"     # or "api": only the server API publishes
    anonymous = true        # clients without credentials may subscribe
    max_members = 0         # subscribers at once; 0: any number
    require_claim = false   # with --auth jwt, the token's "channels" claim must allow it

    [namespaces.news]
    publish = "api"
    join_leave = false

Without a file, every channel has the defaults, which the server's flags set (``--history``,
``--retention-*``). ``dm`` (direct messages) is built in: only its two users may subscribe,
messages go through ``direct``, and its members are not announced. ``general`` is every
connection's lobby: its arrivals are never announced (when everybody reconnects after a
restart that would be a frame per pair of clients), its departures are ``user_left``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .channels import DEFAULT_CHANNEL, DIRECT_NAMESPACE, namespace_of

__all__ = ["PUBLISHERS", "Namespace", "NamespaceError", "Namespaces"]

#: Who may publish in a namespace.
PUBLISHERS = ("members", "api")


class NamespaceError(ValueError):
    """The ``--channels`` file is not valid; the message says where."""


@dataclass(frozen=True, slots=True)
class Namespace:
    """The options of the channels of one namespace (the module's docstring says each)."""

    history: int = 50
    retention_messages: int = 1_000_000
    retention_days: float = 30
    presence: bool = True
    join_leave: bool = True
    publish: str = "members"
    anonymous: bool = True
    max_members: int = 0
    require_claim: bool = False


class Namespaces:
    """Every namespace's options.

    Args:
        defaults: The options of channels whose namespace has no table.
        named: The namespaces with a table of their own.
    """

    def __init__(self, defaults: Namespace, named: Mapping[str, Namespace] | None = None) -> None:
        self.defaults = defaults
        self.named = dict(named or {})
        self.named.setdefault(
            DIRECT_NAMESPACE,
            dataclasses.replace(defaults, join_leave=False, anonymous=False, presence=False),
        )
        self._general = dataclasses.replace(
            self.named.get(namespace_of(DEFAULT_CHANNEL), defaults), join_leave=False
        )

    def of(self, channel: str) -> Namespace:
        """The options of ``channel``."""
        if channel == DEFAULT_CHANNEL:
            return self._general
        return self.named.get(namespace_of(channel), self.defaults)

    @classmethod
    def load(cls, path: Path, defaults: Namespace) -> Namespaces:
        """Read a ``--channels`` file over ``defaults`` (those the flags set).

        Raises:
            NamespaceError: The file cannot be read, is not TOML, or has an unknown table or
                key or a value of the wrong type.
        """
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise NamespaceError(f"cannot read {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise NamespaceError(f"{path} is not TOML: {exc}") from None
        unknown = set(document) - {"defaults", "namespaces"}
        if unknown:
            raise NamespaceError(f"{path}: unknown table {sorted(unknown)[0]!r}")
        base = _options(path, "defaults", document.get("defaults", {}), defaults)
        tables = document.get("namespaces", {})
        if not isinstance(tables, dict):
            raise NamespaceError(f"{path}: namespaces is a table of tables")
        named = {
            name: _options(path, f"namespaces.{name}", table, base)
            for name, table in tables.items()
        }
        return cls(base, named)


def _options(path: Path, where: str, table: object, base: Namespace) -> Namespace:
    """``base`` with what ``table`` sets, each value checked against the field's type."""
    if not isinstance(table, dict):
        raise NamespaceError(f"{path}: [{where}] is a table")
    fields = {field.name: field for field in dataclasses.fields(Namespace)}
    changes: dict[str, object] = {}
    for key, value in table.items():
        field = fields.get(key)
        if field is None:
            raise NamespaceError(f"{path}: [{where}] has an unknown key {key!r}")
        default = getattr(base, key)
        if isinstance(default, bool):
            valid = isinstance(value, bool)
        elif isinstance(default, int | float):
            valid = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            if isinstance(default, int) and key != "retention_days":
                valid = valid and isinstance(value, int)
        else:
            valid = value in PUBLISHERS
        if not valid:
            raise NamespaceError(f"{path}: [{where}] {key} = {value!r} is not valid")
        changes[key] = value
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
