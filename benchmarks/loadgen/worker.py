"""One worker process: its share of the connections and the four workloads, on asyncio.

A run goes through these phases:

1. **connecting**: open the share's connections, at most ``open_concurrency`` (64) at a
   time (``connect`` mode opens none here); with a ``channel`` a connection keeps its place
   until its subscribe is answered, so that at most that many subscribes wait on the server
   at once. A broadcast's senders connect to ``sender_url`` when there is one (another
   server of the same chat: the receivers are on ``url``). In ``broadcast`` the worker then
   waits until each
   connection has had the chat's greeting (or, when none gets any message within
   ``SETTLE_QUIET``, decides that the server sends none), so that every receiver is
   registered before the first message; with a ``channel``, each connection subscribes to it
   first, and the greeting waited for is its ``subscribed``. In ``subscribe`` mode the
   listeners (the connections that do not cycle) subscribe, and are waited for likewise.
2. **ready**: tell the parent and wait for its go, so that all processes start together.
3. **warmup** then **measuring**: the workload runs for ``warmup + duration`` seconds; the
   measured window starts when the warm-up ends. It ends early on ``interrupt()`` (Ctrl-C)
   or when every connection is gone (the server went away).
4. **stopping**: the result goes to ``hooks.finished`` at once; echo connections first take
   the replies still in flight (at most ``GRACE`` seconds, else a ``timeout`` is counted),
   then every connection is closed (at most ``TEARDOWN`` seconds, then dropped).

Messages are handled in callbacks from the connection's ``data_received`` (see client.py):
an echo reply (or the answer to a subscribe-mode request) is timed and the next message
written in the same call, without a task switch.
Nothing here prints; the caller shows progress and the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rfc6455.exceptions import ConnectionClosed, HandshakeError
from rfc6455.typing import Data

from .client import Client, open_client
from .options import Options, Share
from .stats import Recorder, Result
from .wire import (
    CHAT_BROADCAST,
    CHAT_MESSAGE,
    CHAT_SHIFT,
    CHAT_SUBSCRIBED,
    CHAT_UNSUBSCRIBED,
    MARK,
    SENDER,
    SENDER_END,
    T_END,
    StampedFrames,
    T,
    is_notice,
    masked_frame,
    parse_stamp,
    payload,
    publish_envelope,
    request_frame,
)

__all__ = ["Hooks", "Progress", "Worker"]

OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
# Seconds the echo replies in flight may take to arrive once the run is over.
GRACE = 5.0
# Seconds to close every connection at the end before the rest are dropped.
TEARDOWN = 5.0
# Broadcast: no message on any connection for this long means no greeting to wait for.
SETTLE_QUIET = 0.3
SETTLE_MAX = 10.0
# Broadcast: messages a sender writes before it lets the other tasks run.
MAX_BURST = 64
# Broadcast at --rate 0: how long a sender waits for its window to open before it sends anyway
# (a receiver that died never catches up).
WINDOW_STALL_NS = 1_000_000_000
# Connect: consecutive failed handshakes after which a loop gives up (the server is gone).
MAX_FAILURES = 10
# Close codes of a normal end (1005: a close frame without a code).
_NORMAL_CLOSE = frozenset({1000, 1001, 1005})
# Subscribe mode: the chat's notices about members, and its errors (docs/protocol.md).
_JOINED = '{"type":"joined",'
_LEFT = '{"type":"left",'
_ERROR = '{"type":"error",'

_perf_ns = time.perf_counter_ns


@dataclass(frozen=True, slots=True)
class Progress:
    """Live counters, sent to the parent once a second."""

    at: float  # time.monotonic(): one clock for all processes (CLOCK_MONOTONIC)
    phase: str
    open: int
    messages: int
    deliveries: int
    handshakes: int
    errors: int


@dataclass(slots=True)
class Hooks:
    """How a worker talks to whoever runs it (the same process or the parent process)."""

    # Called with the number of open connections once connected; returns whether to go on.
    ready: Callable[[int], Awaitable[bool]]
    progress: Callable[[Progress], None] | None = None
    # Polled ten times a second: True stops the run (the parent's stop).
    should_stop: Callable[[], bool] = lambda: False
    # Called with the result once the measured window is over, before the teardown.
    finished: Callable[[Result], None] | None = None


class Worker:
    """Runs one share of a run; ``await run()`` returns what it measured."""

    def __init__(self, options: Options, share: Share, hooks: Hooks) -> None:
        self.options = options
        self.share = share
        self.hooks = hooks
        self.rec = Recorder(share.sample_cap)
        self.key = os.urandom(4)  # see wire.py: one masking key per process
        self.phase = "connecting"
        self.clients: list[Client] = []
        self.sending: list[Client] = []  # broadcast: this share's senders
        self.live = 0  # clients of self.clients still connected
        self.echoes: list[Echo] = []
        self.cyclers: list[Subscription] = []  # subscribe mode: those that cycle
        # Broadcast: deliveries to this process's receivers, by global sender index.
        total_senders = min(options.senders, options.connections)
        self.delivered = [0] * (total_senders if options.mode == "broadcast" else 0)
        self.greeted = 0
        self.running = False  # the workload runs (from the go until the end)
        self.tearing_down = False
        self.interrupted = False
        self._stop: asyncio.Event | None = None

    # Control

    def interrupt(self) -> None:
        """Stop now and report what was measured (Ctrl-C, or the parent's stop)."""
        self.interrupted = True
        if self._stop is not None:
            self._stop.set()

    def progress(self) -> Progress:
        rec = self.rec
        return Progress(
            at=time.monotonic(),
            phase=self.phase,
            open=self.live + rec.open,
            messages=rec.messages,
            deliveries=rec.deliveries,
            handshakes=rec.handshakes,
            errors=sum(rec.errors.values()),
        )

    async def run(self) -> Result:
        """Run, hand the result to ``hooks.finished`` as soon as the window is over, then
        close every connection (so that the report is not held up by the teardown)."""
        self._stop = asyncio.Event()
        raise_nofile()
        keep_freed_memory()
        ticker = asyncio.create_task(self._tick())
        try:
            if self.options.mode != "connect":
                await self._open_all()
            if self.options.mode in ("broadcast", "subscribe"):
                await self._settle()
            connected = self.live
            go = await self.hooks.ready(connected)
            # Nothing to run without connections (connect mode opens its own).
            if go and not self._stop.is_set() and (connected or self.options.mode == "connect"):
                await self._run_workload()
            result = self.rec.result(connected=connected, interrupted=self.interrupted)
            if self.hooks.finished is not None:
                self.hooks.finished(result)
        finally:
            self.running = False
            self.phase = "stopping"
            ticker.cancel()
            await self._teardown()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        return result

    async def _tick(self) -> None:
        """Poll the parent's stop; send progress once a second."""
        next_report = time.monotonic() + 1.0
        while True:
            await asyncio.sleep(0.1)
            if self.hooks.should_stop():
                self.interrupt()
            if self.hooks.progress is not None and time.monotonic() >= next_report:
                next_report += 1.0
                self.hooks.progress(self.progress())

    async def _run_workload(self) -> None:
        assert self._stop is not None
        loop = asyncio.get_running_loop()
        options = self.options
        self.running = True
        if options.warmup > 0:
            self.phase = "warmup"
            begin = loop.call_later(options.warmup, self._begin_window)
        else:
            begin = None
            self._begin_window()
        end = loop.call_later(options.warmup + options.duration, self._stop.set)
        tasks: list[asyncio.Task[None]] = []
        if options.mode == "echo":
            for echo in self.echoes:
                echo.start()
        elif options.mode == "broadcast":
            tasks = [
                asyncio.create_task(self._send_loop(client, sender))
                for client, sender in zip(self.sending, self.share.senders, strict=False)
            ]
        elif options.mode == "subscribe":
            for cycler in self.cyclers:
                cycler.start()
        else:
            tasks = [asyncio.create_task(self._cycle_loop()) for _ in range(self.share.connections)]
            # When every loop gave up, the server is gone.
            stop = self._stop
            all_done = asyncio.gather(*tasks, return_exceptions=True)
            all_done.add_done_callback(lambda _: stop.set())
        try:
            await self._stop.wait()
        finally:
            self.rec.end_window()
            self.running = False
            self.phase = "stopping"
            for handle in (begin, end):
                if handle is not None:
                    handle.cancel()
            if options.mode == "connect" and tasks and not self.interrupted:
                # Let each loop finish its cycle (a handshake or close under way).
                _, pending = await asyncio.wait(tasks, timeout=GRACE)
                for _ in pending:
                    self.rec.error("timeout")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if options.mode == "echo" and not self.interrupted:
                await self._await_replies()

    def _begin_window(self) -> None:
        if self.running:
            self.phase = "measuring"
            self.rec.start_window()

    # Connections

    async def _connect(
        self, on_message: Callable[[Data], None] | None = None, url: str | None = None
    ) -> Client | None:
        """Open one connection (to ``url``, by default the options'); on failure count the
        error and return None."""
        url = self.options.url if url is None else url
        try:
            if on_message is None:
                return await open_client(url, OPEN_TIMEOUT)
            return await open_client(url, OPEN_TIMEOUT, on_message)
        except HandshakeError:
            self.rec.error("handshake")
        except TimeoutError:
            self.rec.error("open_timeout")
        except ConnectionRefusedError:
            self.rec.error("connect_refused")
        except OSError:
            self.rec.error("connect_failed")
        return None

    async def _open_all(self) -> None:
        assert self._stop is not None
        stop = self._stop
        options = self.options
        limit = asyncio.Semaphore(options.open_concurrency)
        mode = options.mode
        channel = options.channel
        subscribe = None if channel is None else request_frame("subscribe", channel, self.key)
        cyclers = len(self.share.senders) if mode == "subscribe" else 0
        # Broadcast: connections 0 .. senders - 1 of the share send (to sender_url if given).
        senders = len(self.share.senders) if mode == "broadcast" else 0
        loop = asyncio.get_running_loop()

        async def open_one(index: int) -> None:
            async with limit:
                if stop.is_set():
                    return
                answered = None if subscribe is None else loop.create_future()
                echo = Echo(self) if mode == "echo" else None
                member = Subscription(self, answered) if mode == "subscribe" else None
                on_message = echo or member or self._receiver(answered)
                sends = index < senders
                url = options.sender_url if sends else None
                client = await self._connect(on_message, url)
                if client is None:
                    return
                self.clients.append(client)
                if sends:
                    self.sending.append(client)
                self.live += 1
                client.on_close = self._lost
                if echo is not None:
                    echo.client = client
                    self.echoes.append(echo)
                if member is not None:
                    member.client = client
                    if len(self.cyclers) < cyclers:
                        member.cycling = True
                        self.cyclers.append(member)
                        return
                if subscribe is not None and answered is not None:
                    # A broadcast receiver or sender, or a subscribe-mode listener: it keeps
                    # its place until the server answered (or closed, or took too long).
                    try:
                        client.send_frame(subscribe)
                    except ConnectionClosed:
                        return  # counted by _lost
                    await asyncio.wait(
                        [answered, client.closed],
                        timeout=OPEN_TIMEOUT,
                        return_when=asyncio.FIRST_COMPLETED,
                    )

        await asyncio.gather(*(open_one(i) for i in range(self.share.connections)))

    def _lost(self, client: Client) -> None:
        """A connection of ours is gone: an error unless we closed it; stop when none is left."""
        self.live -= 1
        if self.tearing_down:
            return
        self.rec.error(f"closed_{client.close_code}")
        if self.live == 0 and self._stop is not None:
            self._stop.set()

    async def _settle(self) -> None:
        """Broadcast: wait until every connection had its greeting, if the server sends any;
        subscribe: until every listener is subscribed."""
        assert self._stop is not None
        start = time.monotonic()
        expected = len(self.clients) - len(self.cyclers)
        # A chat always answers a subscribe: no guessing whether a greeting comes.
        quiet = SETTLE_QUIET if self.options.channel is None else SETTLE_MAX
        while not self._stop.is_set():
            elapsed = time.monotonic() - start
            if self.greeted >= expected or elapsed > SETTLE_MAX:
                return
            if self.greeted == 0 and elapsed > quiet:
                return
            await asyncio.sleep(0.01)

    async def _teardown(self) -> None:
        self.tearing_down = True
        closing = [asyncio.create_task(client.close(CLOSE_TIMEOUT)) for client in self.clients]
        if not closing:
            return
        _, pending = await asyncio.wait(closing, timeout=0.5 if self.interrupted else TEARDOWN)
        if pending:
            for client in self.clients:
                client.abort()
            await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*closing, return_exceptions=True)

    # Echo

    async def _await_replies(self) -> None:
        """Wait for the replies still in flight; count a timeout for each connection whose
        replies did not all come within ``GRACE`` seconds."""
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline:
            if not any(echo.waiting() for echo in self.echoes):
                return
            await asyncio.sleep(0.01)
        for echo in self.echoes:
            if echo.waiting():
                self.rec.error("timeout")

    # Broadcast

    def _receiver(self, answered: asyncio.Future[None] | None = None) -> Callable[[Data], None]:
        """A broadcast receiver: counts stamped messages and their latency, and notes the
        first other message (the chat's greeting; with a channel, its ``subscribed``, which
        completes ``answered``).

        The chat's envelope and the raw text are parsed inline (the hot path: one call per
        delivery); anything else goes through ``parse_stamp``.
        """
        rec = self.rec
        samples = rec.samples
        cap = rec.cap
        perf = _perf_ns
        delivered = self.delivered
        senders = len(delivered)
        greeted = False
        greeting = "" if self.options.channel is None else CHAT_SUBSCRIBED

        def on_message(message: Data) -> None:
            nonlocal greeted
            now = perf()
            try:
                if message.startswith(CHAT_BROADCAST):  # type: ignore[arg-type]
                    i = message.index(CHAT_MESSAGE, 20) + CHAT_SHIFT  # type: ignore[arg-type]
                elif message.startswith(MARK):  # type: ignore[arg-type]
                    i = 0
                else:
                    raise ValueError
                sent_at = int(message[i + T : i + T_END])
                sender = int(message[i + SENDER : i + SENDER_END])
            except (ValueError, TypeError):  # not ours, or bytes
                stamp = parse_stamp(message)
                if stamp is None:
                    if not greeted and type(message) is str and message.startswith(greeting):
                        greeted = True
                        self.greeted += 1
                        if answered is not None and not answered.done():
                            answered.set_result(None)
                    return
                sender, sent_at = stamp
            rec.deliveries += 1
            rec.bytes += len(message)
            if rec.recording:
                if len(samples) < cap:  # Recorder.sample, inline
                    rec.seen += 1
                    samples.append(now - sent_at)
                else:
                    rec.sample(now - sent_at)
            if sender < senders:
                delivered[sender] += 1

        return on_message

    async def _send_loop(self, client: Client, sender: int) -> None:
        try:
            if self.share.sender_rate > 0:
                await self._send_paced(client, sender)
            else:
                await self._send_windowed(client, sender)
        except ConnectionClosed:
            pass  # counted by _lost

    def _stamped_sender(self, client: Client, sender: int) -> Callable[[], None]:
        """``send()`` sends one message stamped with the time it is sent, and counts it."""
        channel = self.options.channel
        envelope = ("", "") if channel is None else publish_envelope(channel)
        frames = StampedFrames(sender, self.options.size, self.key, envelope)
        rec = self.rec
        perf = _perf_ns
        if self.options.fresh_masks:
            text = frames.text
            send_text = client.send

            def send_fresh() -> None:
                send_text(text(perf()))
                rec.messages += 1

            return send_fresh
        frame = frames.frame
        send_frame = client.send_frame

        def send_stamped() -> None:
            send_frame(frame(perf()))
            rec.messages += 1

        return send_stamped

    async def _send_paced(self, client: Client, sender: int) -> None:
        """Send at ``sender_rate`` messages/s on a fixed schedule; a sender that falls more
        than a second behind skips the missed slots instead of bursting."""
        send = self._stamped_sender(client, sender)
        rate = self.share.sender_rate
        interval = 1e9 / rate
        perf = _perf_ns
        start = perf()
        slot = 0  # messages the schedule has sent
        while self.running:
            due = int((perf() - start) / interval) + 1
            if due - slot > rate:
                slot = due - 1
            for _ in range(min(due - slot, MAX_BURST)):
                send()
                slot += 1
            await client.drain()
            delay = (start + slot * interval - perf()) / 1e9
            await asyncio.sleep(delay if delay > 0 else 0)

    async def _send_windowed(self, client: Client, sender: int) -> None:
        """Send as fast as this process's receivers keep up: at most ``window`` messages ahead
        of its average receiver (0: no limit, only TCP backpressure)."""
        send = self._stamped_sender(client, sender)
        window = self.options.window
        receivers = len(self.clients) - 1
        delivered = self.delivered
        perf = _perf_ns
        sent = 0
        stalled_since = 0
        while self.running:
            burst = MAX_BURST
            if window and receivers > 0:
                room = window - (sent - delivered[sender] / receivers)
                if room < 1:
                    now = perf()
                    if not stalled_since:
                        stalled_since = now
                    if now - stalled_since < WINDOW_STALL_NS:
                        await asyncio.sleep(0.0002)
                        continue
                    room = 1
                stalled_since = 0
                burst = min(burst, int(room))
            for _ in range(burst):
                send()
            sent += burst
            await client.drain()
            await asyncio.sleep(0)

    # Connect

    async def _cycle_loop(self) -> None:
        """Open and close connections one after the other; time each opening handshake."""
        rec = self.rec
        perf = _perf_ns
        failures = 0
        while self.running:
            started = perf()
            client = await self._connect()
            if client is None:
                failures += 1
                if failures >= MAX_FAILURES:
                    return
                await asyncio.sleep(0.005 * failures)
                continue
            failures = 0
            opened = perf()
            rec.open += 1
            try:
                await client.close(CLOSE_TIMEOUT)
            except BaseException:
                client.abort()
                raise
            finally:
                rec.open -= 1
            if client.close_code not in _NORMAL_CLOSE:
                rec.error(f"closed_{client.close_code}")
            rec.handshakes += 1
            rec.sample(opened - started)


class Echo:
    """One echo connection: keeps ``in_flight`` messages outstanding; called with each message
    received, it times the oldest outstanding one and sends the next (while the run lasts)."""

    __slots__ = ("_kind", "_rec", "_send", "_sent_at", "_size", "_worker", "client")

    def __init__(self, worker: Worker) -> None:
        options = worker.options
        self._worker = worker
        self._rec = worker.rec
        self._size = options.size
        self._sent_at: deque[int] = deque()
        self.client: Client | None = None
        message = payload(options.size, binary=options.binary)
        self._kind = type(message)
        frame = masked_frame(message, worker.key)

        def send() -> None:
            assert self.client is not None
            if options.fresh_masks:
                self.client.send(message)
            else:
                self.client.send_frame(frame)

        self._send = send

    def start(self) -> None:
        for _ in range(self._worker.options.in_flight):
            if not self._send_next():
                return

    def _send_next(self) -> bool:
        self._sent_at.append(_perf_ns())
        try:
            self._send()
        except ConnectionClosed:
            self._sent_at.pop()
            return False  # counted by Worker._lost
        return True

    def waiting(self) -> bool:
        """Whether replies are still in flight on a connection that is open."""
        return bool(self._sent_at) and self.client is not None and self.client.is_open

    def __call__(self, reply: Data) -> None:
        now = _perf_ns()
        rec = self._rec
        if type(reply) is not self._kind or len(reply) != self._size or not self._sent_at:
            if not is_notice(reply):
                rec.error("unexpected")
            return
        rec.messages += 1
        rec.bytes += self._size
        rec.sample(now - self._sent_at.popleft())
        if self._worker.running:
            self._send_next()


class Subscription:
    """One connection of subscribe mode, on the options' channel.

    A cycler subscribes, and once subscribed unsubscribes, and so on, one request at a time
    while the run lasts, timing each request from its sending to its answer (counted as
    messages). A listener subscribes once, before the run. Both count the chat's ``joined``
    and ``left`` notices they receive as deliveries (what announcing members costs).
    """

    __slots__ = (
        "_rec",
        "_sent_at",
        "_subscribe",
        "_unsubscribe",
        "_worker",
        "answered",
        "client",
        "cycling",
    )

    def __init__(self, worker: Worker, answered: asyncio.Future[None] | None = None) -> None:
        channel = worker.options.channel
        if channel is None:
            raise ValueError("subscribe mode needs a channel")
        self._worker = worker
        self._rec = worker.rec
        self._subscribe = request_frame("subscribe", channel, worker.key)
        self._unsubscribe = request_frame("unsubscribe", channel, worker.key)
        self._sent_at = 0  # perf_counter_ns() of the request waiting for its answer
        self.client: Client | None = None
        self.cycling = False
        # A listener's: completed by its first ``subscribed``.
        self.answered = answered

    def start(self) -> None:
        self._request(self._subscribe)

    def _request(self, frame: bytes) -> None:
        assert self.client is not None
        self._sent_at = _perf_ns()
        try:
            self.client.send_frame(frame)
        except ConnectionClosed:
            self._sent_at = 0  # counted by Worker._lost

    def __call__(self, message: Data) -> None:
        now = _perf_ns()
        rec = self._rec
        if type(message) is not str:
            rec.error("unexpected")
        elif message.startswith(_JOINED) or message.startswith(_LEFT):
            rec.deliveries += 1
            rec.bytes += len(message)
        elif message.startswith(CHAT_SUBSCRIBED):
            if not self.cycling:
                self._worker.greeted += 1
                if self.answered is not None and not self.answered.done():
                    self.answered.set_result(None)
            elif self._answered(now):
                self._request(self._unsubscribe)
        elif message.startswith(CHAT_UNSUBSCRIBED):
            if self._answered(now):
                self._request(self._subscribe)
        elif message.startswith(_ERROR):
            rec.error("chat_error")
        # Anything else is the chat's greeting (connectionId, welcome, history).

    def _answered(self, now: int) -> bool:
        """Count the answer to the request in flight; whether to send the next one."""
        rec = self._rec
        if self._sent_at:
            rec.messages += 1
            rec.sample(now - self._sent_at)
            self._sent_at = 0
        return self._worker.running


def keep_freed_memory() -> None:
    """Make glibc keep freed memory instead of returning it to the kernel at once.

    glibc serves blocks over its mmap threshold (128 KiB at start) with a fresh mmap and
    unmaps them when freed, and gives back the top of the heap when over twice that; every
    large message then comes in fresh pages, each one a page fault (expensive in a virtual
    machine: parsing a 1 MiB text message took 1.7 ms instead of 0.24 ms on the 2-core
    benchmark machine). Freeing one mmapped block raises both thresholds to its size (glibc's
    dynamic threshold, up to 32 MiB), so messages up to 24 MiB reuse the heap's pages.
    Elsewhere than glibc this is a harmless allocation.
    """
    block = bytearray(24 * 2**20)
    del block


def raise_nofile() -> None:
    """Allow as many open files as the hard limit does (thousands of connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
