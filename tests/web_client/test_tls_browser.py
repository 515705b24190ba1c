"""The web client served over HTTPS (``--tls-cert``): Chromium loads it and chats over wss://.

The certificate is made by ``trustme`` for localhost. Chromium trusts that one certificate
(``--ignore-certificate-errors-spki-list`` with the SHA-256 of its public key), not every
certificate: any other error would still fail the page.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Browser, expect, sync_playwright

from tests.web_client.conftest import CHROMIUM, CHROMIUM_ARGS, ChatServer, Pages
from tests.web_client.helpers import choose_name, connected, own, send, status, texts


def spki_sha256(pem: bytes) -> str:
    """What ``--ignore-certificate-errors-spki-list`` takes: base64 of the SPKI's SHA-256."""
    spki = (
        x509.load_pem_x509_certificate(pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


@pytest.fixture(scope="module")
def leaf() -> trustme.LeafCert:
    return trustme.CA().issue_cert("localhost", "127.0.0.1")


@pytest.fixture(scope="module")
def browser(leaf: trustme.LeafCert) -> Iterator[Browser]:
    """Chromium trusting ``leaf`` (this module's own: conftest's trusts no test certificate)."""
    trust = f"--ignore-certificate-errors-spki-list={spki_sha256(leaf.cert_chain_pems[0].bytes())}"
    expect.set_options(timeout=10_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, trust])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def tls_server(tmp_path: Path, leaf: trustme.LeafCert) -> Iterator[ChatServer]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    server = ChatServer(tmp_path)
    server.start(args=["--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        yield server
    finally:
        server.kill()
        print(server.all_logs())  # shown only for a test that failed


def test_the_page_served_over_https_chats_over_wss(pages: Pages, tls_server: ChatServer) -> None:
    assert tls_server.http_url.startswith("https://")
    page_url = tls_server.http_url.replace("127.0.0.1", "localhost")
    sockets: list[str] = []
    ann, bob = pages.new(), pages.new()
    ann.on("websocket", lambda ws: sockets.append(ws.url))
    for page, name in ((ann, "Ann"), (bob, "Bob")):
        page.goto(page_url)
        choose_name(page, name)
        connected(page)
    # The page derived the scheme from its own: wss:// on the port that served it.
    assert sockets
    assert all(url.startswith(f"wss://localhost:{tls_server.port}/") for url in sockets)
    expect(status(ann)).to_have_attribute("data-state", "open")
    sent = send(ann, "hello over TLS")
    expect(sent).to_have_attribute("data-status", "confirmed")
    expect(texts(bob.locator('#log > li.msg[data-own="false"]'))).to_have_text(["hello over TLS"])
    expect(texts(own(ann))).to_have_text(["hello over TLS"])
