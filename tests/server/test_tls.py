"""``python -m server --tls-cert --tls-key``: HTTPS and WSS, bad files, SIGHUP reloads.

Certificates come from ``trustme``. The files are checked through ``main`` in-process, as
``test_cli.py`` does; serving and reloading run the real ``python -m server``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import sys
import urllib.request
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

import rfc6455
from rfc6455.aio import console
from server import cli
from server.app import addresses_text
from server.cli import main
from server.client import cli as chat_cli
from server.settings import Settings
from server.tls import server_context
from server.users import hash_password
from tests.server.support import GUARD, wait_until
from tests.server.test_subprocess import REPO, ServerProcess
from tests.server.workers_service import WAIT, Supervisors, reserved_port

LISTENING = re.compile(r"listening: open https://127\.0\.0\.1:(\d+)/ \(WebSocket wss://")
NAMES = ("localhost", "127.0.0.1", "::1")


def write_pair(leaf: trustme.LeafCert, folder: Path, name: str = "") -> tuple[Path, Path]:
    """Write ``leaf``'s chain and key into ``folder``; return their paths."""
    cert, key = folder / f"cert{name}.pem", folder / f"key{name}.pem"
    leaf.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return cert, key


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    return write_pair(ca.issue_cert(*NAMES), tmp_path)


# The context


async def test_the_context_offers_http_1_1_and_refuses_tls_1_1(
    ca: trustme.CA, files: tuple[Path, Path]
) -> None:
    context = server_context(*files)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = client_context(ca)
        client.set_alpn_protocols(["h2", "http/1.1"])
        _, writer = await asyncio.open_connection("localhost", port, ssl=client)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        writer.close()
        old = client_context(ca)
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError):
            await asyncio.open_connection("localhost", port, ssl=old)


def test_the_start_up_line_says_https_and_wss() -> None:
    assert (
        addresses_text("::1", 443, tls=True)
        == "open https://[::1]:443/ (WebSocket wss://[::1]:443/)"
    )


# Bad files: one line, exit 2, before listening


def encrypted_key(leaf: trustme.LeafCert, path: Path) -> Path:
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


def bad_files(case: str, ca: trustme.CA, folder: Path) -> tuple[list[str], str]:
    """The arguments of one bad case, and what its line says."""
    cert, key = write_pair(ca.issue_cert("localhost"), folder)
    other_cert, other_key = write_pair(ca.issue_cert("localhost"), folder, "-other")
    junk = folder / "junk.pem"
    junk.write_text("not PEM\n")
    missing = folder / "missing.pem"
    damaged = folder / "damaged.pem"
    damaged.write_text("-----BEGIN CERTIFICATE-----\nbm90IERFUg==\n-----END CERTIFICATE-----\n")
    cases = {
        "missing certificate": (
            [missing, key],
            f"--tls-cert: cannot read {missing}: No such file or directory",
        ),
        "missing key": ([cert, missing], f"--tls-key: cannot read {missing}: No such file"),
        "a folder": ([folder, key], f"--tls-cert: cannot read {folder}: Is a directory"),
        "certificate not PEM": ([junk, key], f"--tls-cert: {junk} holds no PEM certificate"),
        "key not PEM": ([cert, junk], f"--tls-key: {junk} holds no PEM private key"),
        "swapped": ([key, cert], f"--tls-cert: {key} holds no PEM certificate"),
        "damaged certificate": (
            [damaged, key],
            f"--tls-cert, --tls-key: cannot load {damaged}, {key}: not valid PEM",
        ),
        "mismatched": ([cert, other_key], f"--tls-key: {other_key} is not the key of {cert}"),
        "encrypted key": (
            [other_cert, encrypted_key(ca.issue_cert("x"), folder / "enc.pem")],
            "--tls-key: the key is encrypted: give it without a pass phrase",
        ),
    }
    (given_cert, given_key), says = cases[case]
    return ["--tls-cert", str(given_cert), "--tls-key", str(given_key)], says


@pytest.mark.parametrize(
    "case",
    [
        "missing certificate",
        "missing key",
        "a folder",
        "certificate not PEM",
        "key not PEM",
        "swapped",
        "damaged certificate",
        "mismatched",
        "encrypted key",
    ],
)
def test_bad_files_exit_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ca: trustme.CA,
    tmp_path: Path,
    case: str,
) -> None:
    argv, says = bad_files(case, ca, tmp_path)

    async def must_not_run(settings: Settings) -> int:
        raise AssertionError(f"bad TLS files got through: {settings}")

    monkeypatch.setattr(cli, "run", must_not_run)
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--db", str(tmp_path / "m.db")])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith(f"python -m server: error: {says}")
    assert out == ""


# The real server


@pytest.fixture
async def tls_spawn(
    tmp_path: Path, loop_errors: list[dict[str, Any]]
) -> AsyncIterator[Callable[..., Any]]:
    """``tls_spawn(cert, key, *args)``: ``python -m server`` over TLS; returns it and its port."""
    processes: list[ServerProcess] = []

    async def start(cert: Path, key: Path, *args: str) -> tuple[ServerProcess, int]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        environ["PYTHONPATH"] = str(REPO)
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "server", "--port", "0", "--db", str(tmp_path / "m.db")),
            *("--tls-cert", str(cert), "--tls-key", str(key), *args),
            cwd=tmp_path,
            env=environ,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        server = ServerProcess(process)
        processes.append(server)
        await wait_until(lambda: LISTENING.search(server.stderr) or process.returncode)
        match = LISTENING.search(server.stderr)
        assert match is not None, server.stderr
        return server, int(match[1])

    yield start
    for server in processes:
        await server.kill()


async def test_https_and_wss_chat(
    tls_spawn: Callable[..., Any], ca: trustme.CA, files: tuple[Path, Path]
) -> None:
    server, port = await tls_spawn(*files, "--tls-handshake-timeout", "0.3")
    context = client_context(ca)
    # A client that never starts TLS is dropped after --tls-handshake-timeout.
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)

    def get(path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"https://localhost:{port}{path}", context=context) as reply:
            return reply.status, reply.read()

    status, page = await asyncio.to_thread(get, "/")
    assert status == 200
    assert b"<!doctype html>" in page.lower()
    status, health = await asyncio.to_thread(get, "/healthz")
    assert json.loads(health)["connections"] == 0
    async with await rfc6455.connect(f"wss://localhost:{port}/", ssl=context) as ws:
        async with asyncio.timeout(GUARD):
            first, second = [json.loads(str(await ws.recv())) for _ in range(2)]
        assert "connectionId" in first
        assert second["type"] == "welcome"
    async with asyncio.timeout(GUARD):
        assert await silent_reader.read() == b""
    silent.close()
    await wait_until(lambda: server.lines_with("no TLS handshake within 0.3 s"))
    # Plaintext to the TLS port: that connection closes, one line, no traceback.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    async with asyncio.timeout(GUARD):
        await reader.read()
    writer.close()
    await wait_until(lambda: server.lines_with("TLS handshake with 127.0.0.1"))
    (line,) = server.lines_with("TLS handshake with 127.0.0.1")
    assert line.rstrip().endswith("failed: http request")
    server.process.send_signal(signal.SIGTERM)
    assert await server.wait() == 0
    assert "Traceback" not in server.stderr


async def test_wss_with_permessage_deflate(
    tls_spawn: Callable[..., Any], ca: trustme.CA, files: tuple[Path, Path]
) -> None:
    """TLS and compression together: negotiated over wss, messages of every size round-trip
    through TLS records and inflation, in one frame or fragmented."""
    server, port = await tls_spawn(*files, "--echo", "on")
    uri = f"wss://localhost:{port}/echo"
    async with await rfc6455.connect(uri, ssl=client_context(ca), max_frame_size=4096) as ws:
        assert ws.protocol.deflate is not None
        for size in (0, 100, 300, 70_000, 1_000_000):
            text = ("compress me " * (size // 12 + 1))[:size]
            await ws.send(text)
            async with asyncio.timeout(GUARD):
                assert await ws.recv() == text
            data = os.urandom(size)  # incompressible: sent as it is
            await ws.send(data)
            async with asyncio.timeout(GUARD):
                assert await ws.recv() == data
    server.process.send_signal(signal.SIGTERM)
    assert await server.wait() == 0
    assert "Traceback" not in server.stderr


async def echo_loop(ws: rfc6455.Connection, counts: list[int], index: int) -> None:
    """Send and receive 1 KiB messages until cancelled, counting the round trips."""
    payload = "m" * 1024
    while True:
        await ws.send(payload)
        assert await ws.recv() == payload
        counts[index] += 1


async def test_sighup_reloads_under_load_and_a_failed_reload_keeps_the_old_one(
    tls_spawn: Callable[..., Any], ca: trustme.CA, files: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = files
    server, port = await tls_spawn(cert, key, "--echo", "on")
    uri = f"wss://localhost:{port}/echo"
    old_clients = [await rfc6455.connect(uri, ssl=client_context(ca)) for _ in range(8)]
    counts = [0] * len(old_clients)
    loops = [asyncio.create_task(echo_loop(ws, counts, i)) for i, ws in enumerate(old_clients)]
    try:
        await wait_until(lambda: all(counts))
        # A new CA, so that a client can tell which certificate it was served.
        new_ca = trustme.CA()
        new_cert, new_key = write_pair(new_ca.issue_cert(*NAMES), tmp_path, "-new")
        new_cert.replace(cert)
        new_key.replace(key)
        server.process.send_signal(signal.SIGHUP)
        await wait_until(lambda: server.lines_with("TLS reloaded"))
        before = list(counts)
        async with await rfc6455.connect(uri, ssl=client_context(new_ca)) as ws:
            await ws.send("new certificate")
            assert await ws.recv() == "new certificate"
        with pytest.raises(ssl.SSLCertVerificationError):
            await rfc6455.connect(uri, ssl=client_context(ca))
        # Every connection opened before the reload still exchanges messages.
        await wait_until(lambda: all(now > then for now, then in zip(counts, before, strict=True)))

        # A key that is not the certificate's: logged, and the new certificate stays.
        write_pair(new_ca.issue_cert("localhost"), tmp_path, "-stray")[1].replace(key)
        server.process.send_signal(signal.SIGHUP)
        await wait_until(lambda: server.lines_with("TLS reload failed"))
        (line,) = server.lines_with("TLS reload failed")
        assert line.rstrip().endswith(f"--tls-key: {key} is not the key of {cert}")
        async with await rfc6455.connect(uri, ssl=client_context(new_ca)) as ws:
            await ws.send("still the new one")
            assert await ws.recv() == "still the new one"
        before = list(counts)
        await wait_until(lambda: all(now > then for now, then in zip(counts, before, strict=True)))
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    for ws in old_clients:
        assert ws.close_code is None  # none of them dropped
        await ws.close()
    server.process.send_signal(signal.SIGTERM)
    assert await server.wait() == 0
    assert "Traceback" not in server.stderr


async def run_client(module: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """``python -m MODULE ARGS`` to its end, ``stdin`` given; its status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", module, *args),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(GUARD * 2):
            stdout, stderr = await process.communicate(stdin)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_console_clients_with_cafile_insecure_and_user(
    tls_spawn: Callable[..., Any], ca: trustme.CA, files: tuple[Path, Path], tmp_path: Path
) -> None:
    users = tmp_path / "users"
    users.write_text(f"ann:{hash_password('s3cret: with colon')}\n", encoding="utf-8")
    _, port = await tls_spawn(*files, "--auth", "basic", "--users", str(users))
    uri = f"wss://localhost:{port}/"
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    script = ("--expect", "2", "--timeout", "10", "--json")
    ann = ("--user", "ann:s3cret: with colon")

    status, out, err = await run_client("rfc6455", uri, "--cafile", str(cafile), *ann, *script)
    assert status == 0, err
    assert json.loads(out.splitlines()[1])["data"]["type"] == "welcome"
    assert "warning" not in err

    status, _, err = await run_client("rfc6455", uri, "--insecure", *ann, *script)
    assert status == 0, err
    assert err.startswith("rfc6455: warning: --insecure: the server's certificate is not checked\n")

    status, _, err = await run_client("rfc6455", uri, *ann, *script)
    assert status == 1
    assert err == (
        f"rfc6455: TLS certificate of {uri} not accepted: unable to get local issuer certificate\n"
    )

    status, _, err = await run_client(
        "rfc6455", uri, "--cafile", str(cafile), "--user", "ann:wrong", *script
    )
    assert status == 1
    assert err.startswith(f"rfc6455: handshake with {uri} refused: 401 Unauthorized")

    # The chat's console: the same options; publishes a line, gets its ack, ends with stdin.
    status, out, err = await run_client(
        "server.client", uri, "--cafile", str(cafile), *ann, "--json", stdin=b"hello\n"
    )
    assert status == 0, err
    kinds = [json.loads(line)["data"].get("type") for line in out.splitlines()]
    assert "ack" in kinds


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--user", "ann"], "argument --user: not of the form NAME:PASSWORD"),
        (["--user", ":pw"], "argument --user: not of the form NAME:PASSWORD"),
        (["--user", "ann:p\tw"], "argument --user: a name or password has no control characters"),
        (["--user", "a:b", "--token", "t"], "--token and --user exclude each other"),
        (
            ["--user", "a:b", "-H", "Authorization: x"],
            "--user and an Authorization header (-H) exclude each other",
        ),
        (["--cafile", "CA", "--insecure"], "--cafile and --insecure exclude each other"),
        (["--cafile", "MISSING"], "--cafile: cannot read MISSING: No such file or directory"),
        (["--cafile", "JUNK"], "--cafile: JUNK holds no usable certificate: "),
    ],
)
@pytest.mark.parametrize("module", ["rfc6455", "server.client"])
def test_console_usage_errors_are_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    ca: trustme.CA,
    module: str,
    argv: list[str],
    says: str,
) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "junk.pem").write_text("junk\n")
    paths = {"CA": "ca.pem", "MISSING": "missing.pem", "JUNK": "junk.pem"}
    argv = [str(tmp_path / paths[arg]) if arg in paths else arg for arg in argv]
    says = says.replace("MISSING", str(tmp_path / "missing.pem"))
    says = says.replace("JUNK", str(tmp_path / "junk.pem"))
    parse = console.parse_args if module == "rfc6455" else chat_cli.parse_args
    with pytest.raises(SystemExit) as exited:
        parse(["wss://localhost:1/", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m {module}: error: {says}")
    assert err.count("\n") == 1
    assert "pw" not in err


async def test_sighup_to_the_supervisor_restarts_the_workers_with_the_new_certificate(
    redis_url: str, ca: trustme.CA, files: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = files
    supervisors = Supervisors(tmp_path)
    try:
        with reserved_port() as port:
            supervisor = await supervisors.start(
                *("--engine", redis_url, "--db", str(tmp_path / "chat.db"), "--echo", "on"),
                *("--tls-cert", str(cert), "--tls-key", str(key)),
                port=port,
            )
            assert supervisor.logged(f"listening: open https://127.0.0.1:{port}/ (WebSocket wss")
            uri = f"wss://localhost:{port}/echo"
            async with await rfc6455.connect(uri, ssl=client_context(ca)) as ws:
                await ws.send("first certificate")
                assert await ws.recv() == "first certificate"
            new_ca = trustme.CA()
            new_cert, new_key = write_pair(new_ca.issue_cert(*NAMES), tmp_path, "-new")
            new_cert.replace(cert)
            new_key.replace(key)
            supervisor.signal(signal.SIGHUP)
            await wait_until(lambda: supervisor.logged("restarted 2 workers"), WAIT)
            # Both workers are new ones, with the new files: every connection gets them.
            for _ in range(4):
                async with await rfc6455.connect(uri, ssl=client_context(new_ca)) as ws:
                    await ws.send("new certificate")
                    assert await ws.recv() == "new certificate"
            with pytest.raises(ssl.SSLCertVerificationError):
                await rfc6455.connect(uri, ssl=client_context(ca))
            supervisor.signal(signal.SIGTERM)
            assert await supervisor.wait() == 0
    finally:
        await supervisors.close()
