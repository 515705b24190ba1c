"""The server's TLS context: ``--tls-cert`` and ``--tls-key`` read, checked and loaded.

One function builds the context, at start-up and again on SIGHUP (``app.run``), so that a
renewed certificate is served the same way: TLS 1.2 at least (RFC 8996 deprecates 1.0 and
1.1), ALPN ``http/1.1`` (RFC 7301), since WebSocket upgrades are HTTP/1.1 (RFC 6455 §4.1;
the RFC 8441 upgrade over HTTP/2 is not spoken here). A file that is missing, unreadable, not
PEM, an encrypted key (no terminal to ask for its pass phrase) or a key that is not the
certificate's is a ``TLSFileError`` with one line that names the file.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["ALPN_PROTOCOLS", "TLSFileError", "server_context"]

#: What the server offers in ALPN (RFC 7301 §3): HTTP/1.1, which carries the upgrade.
ALPN_PROTOCOLS = ("http/1.1",)

_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = b"PRIVATE KEY-----"  # BEGIN PRIVATE KEY, BEGIN RSA/EC PRIVATE KEY...


class TLSFileError(Exception):
    """The certificate or the key cannot be used; the message is one line naming the file."""


def _read(path: Path, option: str, marker: bytes, what: str) -> None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TLSFileError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    if marker not in data:
        raise TLSFileError(f"{option}: {path} holds no PEM {what}")


def _encrypted() -> bytes:
    # load_cert_chain calls this for an encrypted key, instead of asking on the terminal.
    raise TLSFileError("--tls-key: the key is encrypted: give it without a pass phrase")


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server ``SSLContext`` serving the certificate chain ``cert`` with its key ``key``.

    Args:
        cert: PEM file: the certificate, then the intermediate ones.
        key: PEM file: its private key, unencrypted.

    Raises:
        TLSFileError: A file is missing, unreadable, not PEM, or the key is encrypted or
            is not the certificate's.
    """
    _read(cert, "--tls-cert", _CERTIFICATE, "certificate")
    _read(key, "--tls-key", _PRIVATE_KEY, "private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    try:
        context.load_cert_chain(cert, key, password=_encrypted)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSFileError(f"--tls-key: {key} is not the key of {cert}") from None
        reason = exc.reason.lower().replace("_", " ") if exc.reason else "not valid PEM"
        raise TLSFileError(f"--tls-cert, --tls-key: cannot load {cert}, {key}: {reason}") from None
    except OSError as exc:  # replaced between the check and the load
        raise TLSFileError(f"cannot read {cert} or {key}: {exc.strerror or exc}") from None
    return context
