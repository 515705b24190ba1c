"""Forwarded (RFC 7239) and X-Forwarded-For: who the client is behind trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rfc6455.forwarded import Client, TrustedProxies, parse_forwarded, parse_networks
from rfc6455.http11 import Headers

PROXY = ("127.0.0.1", 40000)
PROXIES = TrustedProxies(parse_networks("127.0.0.1/32,10.0.0.0/8,2001:db8:ffff::/48"))


def client(*headers: tuple[str, str], scheme: str | None = None) -> Client:
    return PROXIES.client(Headers(headers), PROXY, scheme)


# parse_networks


def test_networks_of_both_families() -> None:
    assert parse_networks(" 10.0.0.0/8 ,::1,192.0.2.7") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.0.2.7/32"),
    )


@pytest.mark.parametrize("text", ["10.0.0.1/8", "nginx", "", " , ", "::1/129", "10.0.0.0/33"])
def test_what_is_not_a_network_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="network"):
        parse_networks(text)


def test_trusts_only_addresses_in_its_networks() -> None:
    assert PROXIES.trusts("10.1.2.3")
    assert PROXIES.trusts("::ffff:127.0.0.1")  # IPv4 mapped into IPv6 is the IPv4 address
    assert PROXIES.trusts("2001:db8:ffff::1%eth0")
    assert not PROXIES.trusts("192.0.2.1")
    assert not PROXIES.trusts("unknown")


# parse_forwarded: RFC 7239 §4


def test_the_examples_of_rfc_7239() -> None:
    # §4 and §7.1.
    assert parse_forwarded(['for="_gazonk"']) == [{"for": "_gazonk"}]
    assert parse_forwarded(['For="[2001:db8:cafe::17]:4711"']) == [
        {"for": "[2001:db8:cafe::17]:4711"}
    ]
    assert parse_forwarded(["for=192.0.2.60;proto=http;by=203.0.113.43"]) == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}
    ]
    assert parse_forwarded(["for=192.0.2.43, for=198.51.100.17"]) == [
        {"for": "192.0.2.43"},
        {"for": "198.51.100.17"},
    ]


def test_several_fields_are_one_list_and_quoted_pairs_are_unquoted() -> None:
    assert parse_forwarded(['for=a;proto="h\\"t, tp"', " , for=b"]) == [
        {"for": "a", "proto": 'h"t, tp'},
        {"for": "b"},
    ]


@pytest.mark.parametrize(
    "text",
    [
        "for=a;for=b",  # §4: a parameter at most once per element
        'for="unterminated',
        "for=[2001:db8::1]",  # brackets are no token: the value must be quoted
        "for",
        "for=a b",
        "=a",
    ],
)
def test_what_is_not_the_grammar_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"twice|unexpected"):
        parse_forwarded([text])


# TrustedProxies.client: Forwarded


def test_the_rightmost_untrusted_for_is_the_client() -> None:
    got = client(("Forwarded", "for=198.51.100.1, for=192.0.2.43;proto=https, for=10.0.0.2"))
    assert got == Client(("192.0.2.43", 0), "https")


def test_a_quoted_ipv6_node_with_its_port() -> None:
    got = client(("Forwarded", 'for="[2001:DB8:cafe::17]:4711";proto=https'))
    assert got == Client(("2001:db8:cafe::17", 4711), "https")


def test_an_ipv4_node_with_its_port() -> None:
    assert client(("Forwarded", 'for="192.0.2.43:47011"')) == Client(("192.0.2.43", 47011), None)


def test_an_obfuscated_node_is_the_client_as_the_proxy_names_it() -> None:
    # RFC 7239 §6.3: the proxy hides the address but the identifier is stable.
    assert client(("Forwarded", 'for="_hidden:_port"')) == Client(("_hidden", 0), None)


def test_unknown_stops_at_the_trusted_hop_to_its_right() -> None:
    # §6.2: the proxy at 10.0.0.2 does not know whom it got the request from.
    got = client(("Forwarded", "for=192.0.2.1, for=unknown;proto=https, for=10.0.0.2"))
    assert got == Client(("10.0.0.2", 0), "https")
    assert client(("Forwarded", "for=unknown")) == Client(PROXY, None)


def test_when_every_hop_is_trusted_the_leftmost_is_the_client() -> None:
    assert client(("Forwarded", "for=10.0.0.9, for=10.0.0.2")).address == ("10.0.0.9", 0)


def test_forwarded_wins_over_x_forwarded_for() -> None:
    got = client(("X-Forwarded-For", "198.51.100.9"), ("Forwarded", "for=192.0.2.43"))
    assert got.address == ("192.0.2.43", 0)


@pytest.mark.parametrize(
    "value",
    [
        'for="unterminated',
        "for=192.0.2.1:80",  # the colon is no token: unquoted, it is not the grammar
        'for="[192.0.2.1]"',
        'for="[2001:db8::1]:http"',
        'for="192.0.2.1:99999"',
        'for="300.1.2.3"',
    ],
)
def test_a_forwarded_that_cannot_be_read_is_the_proxys_own_request(value: str) -> None:
    assert client(("Forwarded", value), scheme="https") == Client(PROXY, "https")


def test_elements_without_for_are_skipped() -> None:
    assert client(("Forwarded", "for=192.0.2.1, proto=https")).address == ("192.0.2.1", 0)


# TrustedProxies.client: X-Forwarded-For, X-Forwarded-Proto


def test_the_rightmost_untrusted_x_forwarded_for_is_the_client() -> None:
    got = client(
        ("X-Forwarded-For", "198.51.100.1, 192.0.2.43"),
        ("X-Forwarded-For", "10.0.0.2"),
        ("X-Forwarded-Proto", "HTTPS"),
    )
    assert got == Client(("192.0.2.43", 0), "https")


def test_what_a_client_wrote_left_of_its_address_is_never_read() -> None:
    # nginx appends the client's address to the X-Forwarded-For the client sent.
    got = client(("X-Forwarded-For", "not an address, 127.0.0.1, 192.0.2.43"))
    assert got.address == ("192.0.2.43", 0)


@pytest.mark.parametrize("value", ["192.0.2.1, garbage", "192.0.2.1,", "[2001:db8::1"])
def test_an_x_forwarded_for_that_cannot_be_read_is_the_proxys_own_request(value: str) -> None:
    assert client(("X-Forwarded-For", value)) == Client(PROXY, None)


def test_ipv6_in_x_forwarded_for_bare_or_in_brackets() -> None:
    assert client(("X-Forwarded-For", "2001:db8::1")).address == ("2001:db8::1", 0)
    assert client(("X-Forwarded-For", "[2001:db8::1]:443")).address == ("2001:db8::1", 443)


@pytest.mark.parametrize(
    ("protos", "scheme"),
    [(["https"], "https"), (["wss"], "https"), (["ws"], "http"), (["gopher"], None)],
)
def test_x_forwarded_proto(protos: list[str], scheme: str | None) -> None:
    headers = [("X-Forwarded-For", "192.0.2.1"), *(("X-Forwarded-Proto", p) for p in protos)]
    assert client(*headers).scheme == scheme


def test_a_list_of_x_forwarded_proto_is_not_read() -> None:
    got = client(
        ("X-Forwarded-For", "192.0.2.1"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Proto", "http"),
        scheme="https",
    )
    assert got.scheme == "https"  # the connection's own


def test_no_header_is_the_proxys_own_request() -> None:
    assert client(scheme="https") == Client(PROXY, "https")


# Properties


addresses = st.one_of(
    st.ip_addresses(v=4).filter(lambda a: not PROXIES.trusts(str(a))),
    st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None and not PROXIES.trusts(str(a))),
)
trusted = st.sampled_from(["10.0.0.1", "10.255.0.7", "127.0.0.1", "2001:db8:ffff::2"])


@given(st.lists(st.text(max_size=20), max_size=3), addresses, st.lists(trusted, max_size=3))
def test_the_client_is_the_last_untrusted_address_whatever_it_claims(
    claims: list[str], address: ipaddress.IPv4Address | ipaddress.IPv6Address, hops: list[str]
) -> None:
    claimed = ",".join(c.replace(",", "") for c in claims)
    value = ", ".join([*([claimed] if claimed else []), str(address), *hops])
    assert client(("X-Forwarded-For", value)).address == (str(address), 0)
    node = f'"[{address}]"' if address.version == 6 else str(address)
    forwarded = ", ".join([f"for={node}", *(f'for="{_node(h)}"' for h in hops)])
    assert client(("Forwarded", forwarded)).address == (str(address), 0)


def _node(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@given(st.text(max_size=60), st.text(max_size=60))
def test_any_header_gives_a_client_or_the_proxy(forwarded: str, forwarded_for: str) -> None:
    headers = Headers([("Forwarded", forwarded), ("X-Forwarded-For", forwarded_for)])
    got = PROXIES.client(headers, PROXY, None)
    assert isinstance(got.address[0], str)
    assert 0 <= got.address[1] <= 65535
    assert got.scheme in (None, "http", "https")


tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~!#$%&'*+^`|", min_size=1)
values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)


@given(st.lists(st.dictionaries(tokens, values, min_size=1, max_size=3), max_size=4))
def test_quoted_elements_parse_back(elements: list[dict[str, str]]) -> None:
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    text = ", ".join(
        ";".join(f"{name}={quoted(value)}" for name, value in element.items())
        for element in elements
    )
    assert parse_forwarded([text]) == elements
