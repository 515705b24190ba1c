"""Who the client is behind a reverse proxy: ``Forwarded`` (RFC 7239) and ``X-Forwarded-For``.

A proxy in front of the server makes every connection come from the proxy's address; it says
whose request it passes on in a header it adds. Anybody can send those headers too, so they
are read only on a connection from a trusted proxy (``TrustedProxies``), and read from the
right: each proxy appends the address it received the request from, so the rightmost address
that is not itself a trusted proxy is the first one no trusted proxy vouches for beyond, the
client (RFC 7239 §7.4; everything left of it is what the client claims).

``Forwarded`` wins over ``X-Forwarded-For`` when a request has both (it is the standard one);
the scheme comes from the chosen element's ``proto=``, or with ``X-Forwarded-For`` from
``X-Forwarded-Proto`` (one value, ``http`` or ``https``). A header that cannot be read (bad
syntax, a ``for=`` that is no node, an entry that is no address) is not guessed at: the
connection is taken as the proxy's own, as if it had sent none.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .http11 import Headers

__all__ = ["Client", "Network", "TrustedProxies", "parse_forwarded", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 7230 §3.2.6 token and quoted-string, as RFC 7239 §4 uses them.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = re.compile(rf'[ \t]*({_TOKEN})=(?:({_TOKEN})|"((?:[^"\\]|\\.)*)")[ \t]*')
_QUOTED_PAIR = re.compile(r"\\(.)")
# RFC 7239 §6.3: obfnode / obfport = "_" 1*(ALPHA / DIGIT / "." / "_" / "-").
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+")
_NODE = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<name>[^:\[\]]+))(?::(?P<port>[^:]+))?")
# The schemes a client may have spoken to a proxy, as the scheme of its HTTP origin.
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def parse_networks(text: str) -> tuple[Network, ...]:
    """Read a comma-separated list of networks (``10.0.0.0/8,::1``; an address is its /32 or /128).

    Raises:
        ValueError: An item is not a network (or has host bits set: ``10.0.0.1/8``).
    """
    networks = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip()))
        except ValueError:
            raise ValueError(f"{item.strip()!r} is not a network such as 10.0.0.0/8") from None
    if not networks:
        raise ValueError("no network given")
    return tuple(networks)


def parse_forwarded(values: Sequence[str]) -> list[dict[str, str]]:
    """The elements of ``Forwarded`` fields (RFC 7239 §4), in order: parameter name to value.

    Names are lower-cased, quoted values unquoted; several fields are one list (RFC 9110 §5.3).

    Raises:
        ValueError: Not the grammar of §4, or a parameter twice in one element.
    """
    text = ",".join(values)
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    pos = 0
    while True:
        match = _PAIR.match(text, pos)
        if match is not None:
            name = match[1].lower()
            if name in element:
                raise ValueError(f"{name}= twice in one element")  # §4: MUST NOT
            value = match[2] if match[2] is not None else _QUOTED_PAIR.sub(r"\1", match[3])
            element[name] = value
            pos = match.end()
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos == len(text) or text[pos] == ",":
            if element:
                elements.append(element)
            element = {}
            if pos == len(text):
                return elements
        elif text[pos] != ";":
            raise ValueError(f"unexpected {text[pos]!r} at {pos}")
        pos += 1


@dataclass(frozen=True, slots=True)
class _Hop:
    """One address in a chain of proxies: what one proxy says it received the request from."""

    host: str  # an address, an obfuscated identifier (RFC 7239 §6.3) or "unknown" (§6.2)
    port: int
    address: _Address | None  # None: not an address
    scheme: str | None = None


def _node(text: str, scheme: str | None = None) -> _Hop:
    """RFC 7239 §6: ``nodename [ ":" node-port ]``; also a bare IPv6 address (X-Forwarded-For).

    Raises:
        ValueError: It is none of these.
    """
    try:
        return _Hop(text, 0, _address(text), scheme)
    except ValueError:
        pass
    match = _NODE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a node")
    port_text = match["port"]
    port = 0
    if port_text is not None and not _OBFUSCATED.fullmatch(port_text):
        if not (port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535):
            raise ValueError(f"{port_text!r} is not a port")
        port = int(port_text)
    if match["v6"] is not None:
        address = _address(match["v6"])
        if address.version != 6:
            raise ValueError(f"{text!r}: brackets hold an IPv6 address")
        return _Hop(str(address), port, address, scheme)
    name = match["name"]
    if name.lower() == "unknown" or _OBFUSCATED.fullmatch(name):
        return _Hop(name, port, None, scheme)
    address = _address(name)  # no colon in it: IPv4, or not an address (ValueError)
    return _Hop(str(address), port, address, scheme)


def _address(text: str) -> _Address:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _scheme(text: str | None) -> str | None:
    return None if text is None else _SCHEMES.get(text.strip().lower())


@dataclass(frozen=True, slots=True)
class Client:
    """Where a request comes from, once the proxies' headers are read.

    Attributes:
        address: The client's (host, port); the port is 0 where no proxy said it. The host is
            an address, or the obfuscated identifier a proxy gave instead (RFC 7239 §6.3).
        scheme: ``http`` or ``https``: what the client spoke to the first proxy; None if
            neither the proxy nor the connection says.
    """

    address: tuple[str, int]
    scheme: str | None


class TrustedProxies:
    """The proxies whose forwarding headers are believed.

    Args:
        networks: Where they are (``parse_networks``).
    """

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)

    def trusts(self, host: str) -> bool:
        """Whether ``host`` (an address, or anything else: False) is a trusted proxy's."""
        try:
            address = _address(host.partition("%")[0])
        except ValueError:
            return False
        return self._trusts(address)

    def _trusts(self, address: _Address) -> bool:
        return any(address in network for network in self.networks)

    def client(self, headers: Headers, peer: tuple[str, int], scheme: str | None) -> Client:
        """The client of a request that ``peer``, a trusted proxy, passed on over ``scheme``.

        The rightmost hop that is not a trusted proxy; the leftmost if all are. ``unknown``
        (RFC 7239 §6.2) stops the walk at the trusted hop to its right: nobody is known
        beyond it. Hops are read from the right as the walk reaches them, so what a client
        wrote left of its own address is never read; a header or hop that cannot be read
        gives ``peer`` and ``scheme``.
        """
        chosen = _Hop(peer[0], peer[1], None, scheme)
        try:
            for text, hop_scheme in reversed(self._hops(headers)):
                hop = _node(text, hop_scheme)
                if hop.host.lower() == "unknown":
                    chosen = _Hop(chosen.host, chosen.port, chosen.address, hop.scheme)
                    break
                chosen = hop
                if hop.address is None or not self._trusts(hop.address):
                    break
        except ValueError:
            return Client(peer, scheme)
        return Client((chosen.host, chosen.port), chosen.scheme or scheme)

    @staticmethod
    def _hops(headers: Headers) -> list[tuple[str, str | None]]:
        """Each hop's node text and scheme, from ``Forwarded``, else ``X-Forwarded-For``.

        Raises:
            ValueError: ``Forwarded`` is not the grammar of RFC 7239 §4.
        """
        forwarded = headers.get_all("Forwarded")
        if forwarded:
            return [
                (element["for"], _scheme(element.get("proto")))
                for element in parse_forwarded(forwarded)
                if "for" in element
            ]
        # X-Forwarded-Proto names one scheme for the whole chain (a list is not read).
        protos = headers.get_all("X-Forwarded-Proto")
        scheme = _scheme(protos[0]) if len(protos) == 1 else None
        return [
            (item.strip(), scheme)
            for value in headers.get_all("X-Forwarded-For")
            for item in value.split(",")
        ]
