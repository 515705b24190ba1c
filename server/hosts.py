"""The Host check of every request, against DNS rebinding.

A page on ``evil.example`` can make its own name resolve to 127.0.0.1 (or to an intranet
address) once it has loaded: its scripts then reach this server *as* ``evil.example``, and the
Origin check (``origin.py``) cannot tell, since ``Origin: http://evil.example:P`` names the
``Host: evil.example:P`` it was sent to. What gives the attack away is the Host: a name this
server was never meant to be reached as. So a request is served only if the host it names (the
``Host`` field, RFC 9110 §7.2, or the authority of an absolute-form target, RFC 9112 §3.2.2) is

- an IP address: a rebinding page's origin is a name, never an address;
- ``localhost`` or a name under ``.localhost``, which resolve to loopback only (RFC 6761 §6.3);
- listed in ``--allowed-hosts``: ``chat.example.com``, ``.example.com`` for that name and every
  name under it, or ``*`` for any.

Anything else gets 421 Misdirected Request (RFC 9110 §15.5.20: this server will not answer for
that name). An HTTP/1.0 request without a Host passes: browsers always send one.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

from rfc6455 import Request

__all__ = ["HostPolicy", "host_name", "parse_hosts"]

ANY = "*"
_LONGEST = 255 + len(":65535")
# RFC 1123 §2.1 labels (letters, digits, hyphens), plus "_" which real DNS names carry.
_NAME = re.compile(r"\.?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def parse_hosts(text: str) -> frozenset[str]:
    """Read a comma-separated list of host names, ``.suffix`` names or ``*``.

    Raises:
        ValueError: An item is not a host name (it has a port, a scheme, a space...).
    """
    hosts = set()
    for item in text.split(","):
        host = item.strip().lower().rstrip(".")
        if not host:
            continue
        if host != ANY and not _NAME.fullmatch(host):
            raise ValueError(f"{item.strip()!r} is not a host name such as chat.example.com")
        hosts.add(host)
    return frozenset(hosts)


def host_name(authority: str) -> str:
    """The host of ``host[:port]`` or ``[v6]:port``: lowercase, brackets and final dot removed."""
    if authority.startswith("["):
        return authority[1 : authority.find("]")].lower()
    return authority.partition(":")[0].lower().rstrip(".")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.partition("%")[0])
    except ValueError:
        return False
    return True


class HostPolicy:
    """Decides whether a request names a host this server answers for.

    Args:
        allowed: Host names allowed besides addresses and localhost (``parse_hosts``).
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = frozenset(allowed)
        self._any = ANY in self.allowed
        self._suffixes = tuple(host for host in self.allowed if host.startswith("."))
        # Clients name the server a few ways, and parsing an address costs microseconds a
        # handshake: the verdicts are kept for the last few hundred names.
        self._allows_name = functools.lru_cache(maxsize=256)(self._decide)

    def allows(self, request: Request) -> bool:
        """True if the request's host is an address, localhost, or allowed."""
        authority = request.authority
        if authority is None or self._any:
            return True
        # No name or address with its port is longer (RFC 1035 §2.3.4: 255 bytes a name):
        # refused without a place in the cache, which stays a few hundred short strings.
        return len(authority) <= _LONGEST and self._allows_name(authority)

    def _decide(self, authority: str) -> bool:
        name = host_name(authority)
        return (
            name == "localhost"
            or name.endswith(".localhost")
            or _is_address(name)
            or name in self.allowed
            or any(name == suffix[1:] or name.endswith(suffix) for suffix in self._suffixes)
        )
