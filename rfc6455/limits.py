"""Size caps and timeouts, in one place, each with the reason for its default."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits applied to one connection.

    Every size is in bytes and every time in seconds; ``None`` turns a limit off.
    """

    # A chat message is small; 1 MiB is the usual default of WebSocket servers
    # (websockets, aiohttp's 4 MiB is the exception) and bounds what one hostile
    # client can make the server buffer.
    max_size: int | None = 2**20
    # Outgoing messages larger than this are sent as several frames
    # (RFC 6455 §5.4); None sends every message as one frame.
    max_frame_size: int | None = None
    # HTTP/1.1 request line and each header line: 8 KiB is what nginx and
    # h11 accept by default; longer lines are answered 414 / 431.
    max_line: int = 8192
    # More header lines than this are answered 431; browsers send about 15.
    max_headers: int = 128
    # The whole request head (request line and fields): 431 above it. 16 KiB is
    # h11's and Node.js's default; without it, max_headers lines of max_line
    # bytes would let each unfinished handshake hold 1 MiB.
    max_head_size: int = 16 * 1024
    # Server side: the body of a plain HTTP request (a POST, say; never an upgrade's or a
    # GET's), read whole before process_request sees it; a larger Content-Length is
    # answered 413 before any of it is read. 1 MiB is nginx's default
    # (client_max_body_size) and max_size: a body is no larger than a message. A handshake
    # in progress holds at most this much more, so max_handshakes_per_address of them from
    # one address hold 100 MiB, for open_timeout at most.
    max_body_size: int = 2**20
    # The opening handshake must complete within this time (slowloris guard).
    open_timeout: float | None = 10.0
    # Server side, with TLS: the TLS handshake (RFC 8446 §4), before the opening handshake's
    # open_timeout starts, must complete within this time. asyncio's default is 60 s; a real
    # client needs a few round trips, so 10 s is the slowloris guard of open_timeout again.
    tls_handshake_timeout: float | None = 10.0
    # How long to wait for the peer's close frame and TCP close (RFC 6455 §7.1.1).
    close_timeout: float | None = 10.0
    # Keepalive: a ping every ping_interval; no pong within ping_timeout fails
    # the connection with 1011. 20 s stays below the 30-60 s idle timeouts of
    # common proxies and NAT tables.
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    # Wait for the transport to drain only once this many bytes are queued
    # (asyncio's own default high-water mark is 64 KiB).
    write_limit: int = 2**16
    # Slow consumer: sending more while over this many bytes wait in the
    # transport *behind the write in progress* closes the connection with 1008
    # "slow consumer" (RFC 6455 §7.4.1, policy violation), so that frames sent
    # without waiting (send_encoded, broadcast) cannot grow memory without
    # bound. What is being written does not count, however large: a peer that
    # reads is never cut off for one big message. 1 MiB is a full max_size
    # message, or thousands of chat messages: far more than a reader that
    # keeps up ever lags by. Checked once the transport has paused writing
    # (above write_limit), so a smaller value acts as write_limit.
    max_send_buffer: int | None = 2**20
    # Server side, for the whole server: TCP connections still in the opening
    # handshake, in all and from one address (IPv6: its /64). More are answered
    # 503 at once. Each holds at most max_head_size bytes for open_timeout, so
    # 1,000 hold 16 MiB; a real handshake takes milliseconds, so 100 at once
    # from one address is a reconnect storm behind a proxy, or a slowloris. From a
    # trusted proxy (serve's trusted_proxies), the address is its client's, once the
    # request's head names it.
    max_handshakes: int | None = 1000
    max_handshakes_per_address: int | None = 100

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value is not None and not value >= 0:  # not >= 0: NaN too
                raise ValueError(f"Limits.{name} must be >= 0 or None, not {value!r}")
        if self.max_frame_size == 0:
            raise ValueError("Limits.max_frame_size must be at least 1 or None")
