"""The ``Sec-WebSocket-Extensions`` field: its grammar, both ways (RFC 6455 §9.1).

An extension offer or response is a name and a list of parameters, each with
a value or none::

    permessage-deflate; client_max_window_bits; server_max_window_bits=10

``parse_extensions`` reads every such element of every field in order and
leaves out an element that breaks the grammar, so that a server declines that
offer and goes on with the next one (RFC 7692 §5: "the server ... declines"
rather than fails). The field is part of the request head, which
``Limits.max_head_size`` bounds in bytes, and so bounds how many offers there are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .http11 import Headers

__all__ = ["ExtensionElement", "parse_extensions", "serialize_extension"]

# RFC 9110 §5.6.2 token and §5.6.4 quoted-string.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
# One list element, a run of anything but a comma outside a quoted string.
_ELEMENT = re.compile(rf'(?:[^,"]|{_QUOTED})+')
_SPACE = r"[ \t]*"
_VALUE = rf"{_SPACE}={_SPACE}({_TOKEN}|{_QUOTED})"
_WHOLE = re.compile(rf"{_SPACE}({_TOKEN})((?:{_SPACE};{_SPACE}{_TOKEN}(?:{_VALUE})?)*){_SPACE}")
_PARAM = re.compile(rf";{_SPACE}({_TOKEN})(?:{_VALUE})?")
_TOKEN_ONLY = re.compile(_TOKEN)
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class ExtensionElement:
    """One extension of the field: its name and its parameters, in order.

    A parameter's value is None when it has none (``client_max_window_bits``).
    """

    name: str
    params: tuple[tuple[str, str | None], ...] = ()


def _parse_element(text: str) -> ExtensionElement | None:
    """Parse ``name *( ";" param )``, or return None if it breaks RFC 6455 §9.1."""
    whole = _WHOLE.fullmatch(text)
    if whole is None:
        return None
    params: list[tuple[str, str | None]] = []
    for match in _PARAM.finditer(whole.group(2)):
        value = match.group(2)
        if value is not None and value.startswith('"'):
            # §9.1: "the value after quoted-string unescaping MUST conform to the 'token' ABNF".
            value = _ESCAPE.sub(r"\1", value[1:-1])
            if not _TOKEN_ONLY.fullmatch(value):
                return None
        params.append((match.group(1), value))
    return ExtensionElement(whole.group(1), tuple(params))


def parse_extensions(headers: Headers) -> list[ExtensionElement]:
    """Every well-formed element of the ``Sec-WebSocket-Extensions`` fields, in order.

    RFC 6455 §9.1: the fields may repeat, and their elements are one list.
    Empty elements are ignored (RFC 9110 §5.6.1); malformed ones are left out.
    """
    elements: list[ExtensionElement] = []
    for value in headers.get_all("Sec-WebSocket-Extensions"):
        for match in _ELEMENT.finditer(value):
            text = match.group()
            if not text.strip(" \t"):
                continue
            element = _parse_element(text)
            if element is not None:
                elements.append(element)
    return elements


def serialize_extension(name: str, params: Iterable[tuple[str, str | None]] = ()) -> str:
    """Format one element for ``Sec-WebSocket-Extensions`` (RFC 6455 §9.1)."""
    return "; ".join([name, *(key if value is None else f"{key}={value}" for key, value in params)])
