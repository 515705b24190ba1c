"""The chat's metrics, named after Centrifugo's under ``chat_`` (``docs/metrics.md``).

One ``ChatMetrics`` is made by the composition root (``app.py``) and handed to the parts
that see each event: they keep the children they count into, so a count is ``+= 1`` on an
attribute. What is state (connections, channels, subscriptions, presence members, the
persistence queue's depth) is read from its owner when ``/metrics`` is scraped (``watch``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import rfc6455
from rfc6455.aio.connection import SLOW_CONSUMER
from rfc6455.frames import CloseCode

from .metrics import Counter, CounterChild, Gauge, Histogram, HistogramChild, Registry

__all__ = ["REFUSALS", "ChatMetrics", "close_of"]

#: The reasons ``chat_client_handshakes_refused_total`` counts, by what refused (``access.py``).
REFUSALS = (
    "host",
    "not_found",
    "max_connections",
    "max_echo_connections",
    "max_handshakes",
    "origin",
    "bad_request",
    "connect_rate",
    "per_ip",
    "auth",
    "login_limit",
)


class _Counts(Protocol):
    """What ``watch`` reads at scrape time: a count of something."""

    def __len__(self) -> int: ...


def _code_label(code: int, by: str) -> str:
    """A close code as a label: a client's codes of applications (RFC 6455 §7.4.2: 3000 to
    4999) as ``3xxx`` and ``4xxx``, so that clients cannot make thousands of series."""
    if by == "client" and 3000 <= code <= 4999:
        return f"{code // 1000}xxx"
    return str(code)


def close_of(protocol: rfc6455.Protocol) -> tuple[int, str]:
    """How a connection ended: the close code, and who closed (``server``, ``client``, or
    ``lost`` for 1006, no close frame at all)."""
    rcvd, sent = protocol.close_rcvd, protocol.close_sent
    if sent is not None and (rcvd is None or protocol.close_initiator is protocol.side):
        return sent.code, "server"
    if rcvd is not None:
        return rcvd.code, "client"
    return CloseCode.ABNORMAL_CLOSURE, "lost"


class ChatMetrics:
    """Every metric of one server process.

    Args:
        worker: This process's number among ``--workers``: a ``worker`` label on every
            sample; None: a single process, no label.
    """

    def __init__(self, worker: int | None = None) -> None:
        self.registry = registry = Registry(() if worker is None else (("worker", str(worker)),))
        self._refused = Counter(
            "chat_client_handshakes_refused",
            "WebSocket handshakes refused, by reason",
            ("reason",),
            read=self._refused_busy,
        )
        self._busy: Callable[[], int] = lambda: 0
        accepted = Counter(
            "chat_client_connections_accepted",
            "WebSocket connections accepted, by endpoint",
            ("endpoint",),
        )
        self.accepted_chat = accepted.labels("chat")
        self.accepted_echo = accepted.labels("echo")
        self._refusals = {reason: self._refused.labels(reason) for reason in REFUSALS}
        self.messages_received = _counter(
            registry, "chat_transport_messages_received", "WebSocket messages received from clients"
        )
        self.bytes_received = _counter(
            registry,
            "chat_transport_bytes_received",
            "Bytes of the messages received (payloads, UTF-8)",
        )
        self.messages_sent = _counter(
            registry,
            "chat_transport_messages_sent",
            "WebSocket messages sent to clients (a broadcast: one each)",
        )
        self.bytes_sent = _counter(
            registry,
            "chat_transport_bytes_sent",
            "Bytes of the messages sent (payloads, uncompressed)",
        )
        self._closes = Counter(
            "chat_transport_closes",
            "WebSocket connections ended, by close code and by who closed",
            ("code", "by"),
        )
        slow = Counter(
            "chat_client_slow_consumer_disconnects",
            "Clients disconnected for not reading: 1008 over --max-send-buffer (send_buffer), "
            "1013 while their history was read (history)",
            ("reason",),
        )
        self.slow_send_buffer = slow.labels("send_buffer")
        self.slow_history = slow.labels("history")
        self.rate_limited = _counter(
            registry,
            "chat_client_rate_limited_messages",
            "Messages refused by a client's rate limit",
        )
        resumes = Counter(
            "chat_client_recover",
            "Resumes (since and epoch given), by whether all was recovered",
            ("recovered",),
        )
        self.resumes_recovered = resumes.labels("true")
        self.resumes_lost = resumes.labels("false")
        self.recovered_messages = _counter(
            registry, "chat_client_recovered_publications", "Messages sent to resuming clients"
        )
        self.broadcast_duration = _histogram(
            registry,
            "chat_node_broadcast_duration_seconds",
            "Time to write one message to a channel's subscribers here",
        )
        self.ack_latency = _histogram(
            registry,
            "chat_client_ack_latency_seconds",
            "From a message's receipt to its ack (stored: committed, or in Redis)",
        )
        self.commit_duration = _histogram(
            registry,
            "chat_persist_commit_duration_seconds",
            "Time to commit one batch of messages to SQLite, retries included",
        )
        self.redis_publish_duration = _histogram(
            registry,
            "chat_broker_publish_duration_seconds",
            "Redis engine: one pipeline of publish scripts, sent to replied",
        )
        self.redis_pubsub_lag = _histogram(
            registry,
            "chat_node_pub_sub_lag_seconds",
            "Redis engine: from a publish script's reply to its message's arrival over "
            "pub/sub on the node that published it (0: it came before the reply)",
        )
        self.redis_gaps_filled = _counter(
            registry,
            "chat_broker_gaps_filled",
            "Redis engine: gaps in a channel's seqs read from its stream",
        )
        self.redis_reconnects = _counter(
            registry,
            "chat_broker_reconnects",
            "Redis engine: reconnections to Redis that succeeded",
        )
        for family in (accepted, self._refused, self._closes, slow, resumes):
            registry.add(family)

    def refused(self, reason: str) -> None:
        """Count a refused handshake (``reason`` is one of ``REFUSALS``)."""
        self._refusals[reason].value += 1

    def echoed(self, messages: int, size: int) -> None:
        """Count what an ``/echo`` connection received and sent back, once it ended."""
        for counter in (self.messages_received, self.messages_sent):
            counter.value += messages
        for counter in (self.bytes_received, self.bytes_sent):
            counter.value += size

    def failed(self) -> None:
        """Count a connection whose handler raised: the server closes it with 1011."""
        self._closes.labels(str(CloseCode.INTERNAL_ERROR), "server").value += 1

    def closed(self, connection: rfc6455.Connection) -> None:
        """Count a connection that ended: its close code, a slow consumer's disconnect."""
        protocol = connection.protocol
        code, by = close_of(protocol)
        self._closes.labels(_code_label(code, by), by).value += 1
        sent = protocol.close_sent
        if (
            by == "server"
            and sent is not None
            and sent.code == CloseCode.POLICY_VIOLATION
            and sent.reason == SLOW_CONSUMER
        ):
            self.slow_send_buffer.value += 1

    def watch(
        self,
        server: Callable[[], rfc6455.Server | None],
        chat: _Counts,
        channels: Callable[[], Mapping[str, int]],
        engine: Callable[[], Mapping[str, float]],
    ) -> None:
        """Read the state at scrape time from what knows it.

        Args:
            server: The WebSocket server, once it runs (its connections, its busy refusals).
            chat: The open chat connections.
            channels: The channels with subscribers here, and how many each.
            engine: The engine's figures (``Engine.figures``).
        """
        add = self.registry.add

        def connections() -> float:
            running = server()
            return 0 if running is None else len(running.connections)

        def busy() -> int:
            running = server()
            return 0 if running is None else running.refused_busy

        self._busy = busy
        add(
            Gauge(
                "chat_client_connections_inflight",
                "WebSocket connections open (chat and echo)",
                connections,
            )
        )
        add(Gauge("chat_node_num_clients", "Chat connections open", lambda: len(chat)))
        add(
            Gauge(
                "chat_node_num_channels", "Channels with subscribers here", lambda: len(channels())
            )
        )
        add(
            Gauge(
                "chat_node_num_subscriptions",
                "Subscriptions of the connections here, all channels",
                lambda: sum(channels().values()),
            )
        )
        for name, key, kind, help in _ENGINE_FIGURES:
            read = _figure(engine, key)
            add(Counter(name, help, read=read) if kind == "counter" else Gauge(name, help, read))

    def _refused_busy(self) -> Mapping[tuple[str, ...], float]:
        return {("max_handshakes",): self._busy()}


# The engine's figures (``Engine.figures``), by key: name, kind, help.
_ENGINE_FIGURES = (
    (
        "chat_node_num_presence_members",
        "presence_members",
        "gauge",
        "Members of channels' presence, counted on the node where they are connected",
    ),
    (
        "chat_persist_queue_depth",
        "queue_depth",
        "gauge",
        "Messages waiting to be stored (local: the SQLite queue; Redis: the publish outbox)",
    ),
    (
        "chat_persist_committed_messages",
        "persisted",
        "counter",
        "Messages committed to the database (the Redis engine: archived)",
    ),
    (
        "chat_persist_retries",
        "retries",
        "counter",
        "Failed attempts to commit a batch, each retried or dead-lettered",
    ),
    (
        "chat_persist_dead_letters",
        "dead_letters",
        "counter",
        "Messages given up on and written to the dead-letter file",
    ),
)


def _figure(engine: Callable[[], Mapping[str, float]], key: str) -> Callable[[], float]:
    return lambda: engine().get(key, 0)


def _counter(registry: Registry, name: str, help: str) -> CounterChild:
    counter = Counter(name, help)
    registry.add(counter)
    return counter.child


def _histogram(registry: Registry, name: str, help: str) -> HistogramChild:
    histogram = Histogram(name, help)
    registry.add(histogram)
    return histogram.child
