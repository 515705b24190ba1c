"""How clients are counted by address, for per-address limits.

An IPv4 client is counted by its address; an IPv6 client by its /64 network, which one
subscriber usually gets whole (RFC 6177): counting single IPv6 addresses would give one client
2**64 of them. An IPv4 address mapped into IPv6 (``::ffff:a.b.c.d``) is counted as IPv4.
"""

from __future__ import annotations

import ipaddress

__all__ = ["address_key"]


def address_key(host: str) -> str:
    """The key a client at ``host`` is counted under: its IPv4 address, or its IPv6 /64."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
