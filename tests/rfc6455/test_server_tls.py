"""TLS (``wss://``) for rfc6455.aio: serve(ssl=), Server.set_ssl, connect's verification.

Certificates come from ``trustme``: a CA of the test's own, and certificates it issues for
localhost, 127.0.0.1 and ::1.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
import trustme
from websockets.asyncio.client import connect as websockets_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as websockets_serve

import rfc6455
from rfc6455.aio.console import describe_connect_error
from tests.rfc6455.conftest import GUARD, HOST, Net, echo, info_lines, wait_until

pytestmark = pytest.mark.usefixtures("loop_errors")

NAMES = ("localhost", "127.0.0.1", "::1")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(*NAMES)


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def tls_server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    return server_context(cert)


@pytest.mark.parametrize("name", NAMES)
async def test_wss_round_trip_for_each_name(
    net: Net, ca: trustme.CA, tls_server_context: ssl.SSLContext, name: str
) -> None:
    if name == "::1" and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    bind = "::1" if name == "::1" else HOST
    server = await rfc6455.serve(echo, bind, 0, ssl=tls_server_context)
    net.servers.append(server)
    host = "[::1]" if name == "::1" else name
    async with await rfc6455.connect(f"wss://{host}:{server.port}/", ssl=client_context(ca)) as ws:
        await ws.send("over TLS")
        assert await ws.recv() == "over TLS"


async def test_a_certificate_for_another_name_is_refused(net: Net, ca: trustme.CA) -> None:
    server = await net.serve(ssl=server_context(ca.issue_cert("chat.example.com")))
    with pytest.raises(ssl.SSLCertVerificationError) as raised:
        await rfc6455.connect(f"wss://{HOST}:{server.port}/", ssl=client_context(ca))
    assert "IP address mismatch" in raised.value.verify_message
    # What the console clients print of it: one line that says why.
    uri = f"wss://{HOST}:{server.port}/"
    assert describe_connect_error(raised.value, uri) == (
        f"TLS certificate of {uri} not accepted: "
        f"IP address mismatch, certificate is not valid for '{HOST}'."
    )
    named = await net.serve(ssl=server_context(ca.issue_cert("chat.example.com")))
    with pytest.raises(ssl.SSLCertVerificationError) as raised:
        await rfc6455.connect(f"wss://localhost:{named.port}/", ssl=client_context(ca))
    assert raised.value.verify_message == (
        "Hostname mismatch, certificate is not valid for 'localhost'."
    )


async def test_an_untrusted_ca_is_refused_by_default(
    net: Net, tls_server_context: ssl.SSLContext
) -> None:
    server = await net.serve(ssl=tls_server_context)
    # No ssl= argument: the default context, which trusts the system's CAs only.
    with pytest.raises(ssl.SSLCertVerificationError) as raised:
        await rfc6455.connect(f"wss://localhost:{server.port}/")
    assert "unable to get local issuer certificate" in raised.value.verify_message


async def test_set_ssl_serves_new_connections_with_the_new_certificate(
    net: Net, ca: trustme.CA, cert: trustme.LeafCert
) -> None:
    server = await net.serve(ssl=server_context(cert))
    uri = f"wss://localhost:{server.port}/"
    old = await rfc6455.connect(uri, ssl=client_context(ca))
    net.clients.append(old)
    other_ca = trustme.CA()
    server.set_ssl(server_context(other_ca.issue_cert(*NAMES)))
    new = await rfc6455.connect(uri, ssl=client_context(other_ca))
    net.clients.append(new)
    # The open connection kept its session; the old CA no longer matches new ones.
    await old.send("still here")
    assert await old.recv() == "still here"
    await new.send("new certificate")
    assert await new.recv() == "new certificate"
    with pytest.raises(ssl.SSLCertVerificationError):
        await rfc6455.connect(uri, ssl=client_context(ca))


async def test_set_ssl_on_a_plaintext_server_is_refused(
    net: Net, tls_server_context: ssl.SSLContext
) -> None:
    server = await net.serve()
    assert server.ssl is None
    with pytest.raises(ValueError, match="without ssl"):
        server.set_ssl(tls_server_context)


async def test_plaintext_http_to_the_tls_port_closes_that_connection_only(
    net: Net,
    ca: trustme.CA,
    tls_server_context: ssl.SSLContext,
    log: pytest.LogCaptureFixture,
) -> None:
    server = await net.serve(ssl=tls_server_context)
    ws = await rfc6455.connect(f"wss://localhost:{server.port}/", ssl=client_context(ca))
    net.clients.append(ws)
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    async with asyncio.timeout(GUARD):
        await reader.read()  # the server closes, with nothing a plaintext client can read
    writer.close()
    await wait_until(lambda: any("TLS handshake" in line for line in info_lines(log)))
    (line,) = [line for line in info_lines(log) if "TLS handshake" in line]
    assert line.startswith("TLS handshake with 127.0.0.1:")
    assert line.endswith("failed: http request")
    assert "Traceback" not in log.text
    await ws.send("unaffected")
    assert await ws.recv() == "unaffected"


async def test_a_client_that_never_finishes_tls_is_dropped(
    net: Net, tls_server_context: ssl.SSLContext, log: pytest.LogCaptureFixture
) -> None:
    server = await net.serve(ssl=tls_server_context, tls_handshake_timeout=0.2)
    reader, writer = await asyncio.open_connection(HOST, server.port)
    async with asyncio.timeout(GUARD):
        assert await reader.read() == b""  # dropped without a word
    writer.close()
    await wait_until(lambda: any("no TLS handshake" in line for line in info_lines(log)))
    assert [line for line in info_lines(log) if "TLS" in line] == [
        line for line in info_lines(log) if line.endswith("no TLS handshake within 0.2 s")
    ]
    await wait_until(lambda: not server._handshakes)


async def test_rfc6455_client_to_a_websockets_server_over_tls(
    ca: trustme.CA, tls_server_context: ssl.SSLContext
) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with websockets_serve(echo, HOST, 0, ssl=tls_server_context) as theirs:
        port = next(iter(theirs.sockets)).getsockname()[1]
        async with await rfc6455.connect(f"wss://localhost:{port}/", ssl=client_context(ca)) as ws:
            await ws.send("x" * 1024)
            assert await ws.recv() == "x" * 1024
            await ws.send(b"\x00\xff")
            assert await ws.recv() == b"\x00\xff"


async def test_websockets_client_to_an_rfc6455_server_over_tls(
    net: Net, ca: trustme.CA, tls_server_context: ssl.SSLContext
) -> None:
    server = await net.serve(ssl=tls_server_context)
    async with websockets_connect(f"wss://localhost:{server.port}/", ssl=client_context(ca)) as ws:
        await ws.send("x" * 1024)
        assert await ws.recv() == "x" * 1024
        await ws.send(b"\x00\xff")
        assert await ws.recv() == b"\x00\xff"
