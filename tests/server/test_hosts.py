"""The Host check (server/hosts.py): which names a request may be for."""

from __future__ import annotations

import pytest

from rfc6455 import Headers, Request
from server.hosts import HostPolicy, host_name, parse_hosts


def request(host: str | None, target: str = "/", version: str = "HTTP/1.1") -> Request:
    headers = Headers() if host is None else Headers([("Host", host)])
    return Request("GET", target, headers, version)


@pytest.mark.parametrize(
    ("authority", "name"),
    [
        ("Example.COM:5000", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:80", "::1"),
        ("[fe80::1%25eth0]", "fe80::1%25eth0"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_host_name(authority: str, name: str) -> None:
    assert host_name(authority) == name


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:5000",
        "10.1.2.3",
        "[::1]:5000",
        "[2001:db8::1]",
        "localhost:5000",
        "LocalHost",
        "app.localhost:80",
        "localhost.",
    ],
)
def test_addresses_and_localhost_are_allowed_by_default(host: str) -> None:
    assert HostPolicy().allows(request(host))


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:5000",
        "evil.example",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "0x7f.1",
        "127.1",  # resolvers read it as 127.0.0.1; the address parser does not
    ],
)
def test_other_names_are_refused_by_default(host: str) -> None:
    assert not HostPolicy().allows(request(host))


def test_listed_names_and_suffixes() -> None:
    policy = HostPolicy(parse_hosts("Chat.Example.com, .example.org,"))
    assert policy.allows(request("chat.example.com:443"))
    assert policy.allows(request("example.org"))
    assert policy.allows(request("a.b.example.org:8080"))
    assert not policy.allows(request("other.example.com"))
    assert not policy.allows(request("badexample.org"))
    assert HostPolicy(parse_hosts("*")).allows(request("anything.example"))


def test_the_authority_of_an_absolute_form_target_is_what_counts() -> None:
    # RFC 9112 §3.2.2: the target's host wins over the Host field.
    assert not HostPolicy().allows(request("127.0.0.1", "http://evil.example/"))
    assert HostPolicy().allows(request("evil.example", "http://127.0.0.1:5000/"))


def test_an_http_10_request_without_host_passes() -> None:
    assert HostPolicy().allows(request(None, version="HTTP/1.0"))


@pytest.mark.parametrize("text", ["chat.example.com:443", "http://a.example", "a b", "a/b", "-a"])
def test_parse_hosts_refuses_what_is_not_a_host_name(text: str) -> None:
    with pytest.raises(ValueError, match="is not a host name"):
        parse_hosts(text)


def test_an_overlong_host_is_refused_even_when_listed() -> None:
    name = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".example"
    assert not HostPolicy(parse_hosts(name)).allows(request(name))
    assert HostPolicy(parse_hosts("*")).allows(request(name))  # unless any host is allowed
