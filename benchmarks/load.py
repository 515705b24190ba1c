"""A WebSocket load generator: ``python -m benchmarks.load MODE URL [options]``.

Modes:

- ``echo``: each of C connections keeps K messages of S bytes in flight to an echo endpoint
  and times each round trip.
- ``broadcast``: ``--senders`` of the C connections send text messages at ``--rate`` messages/s
  in total (0: as fast as the receivers keep up, see ``--window``); every connection receives.
  Each message carries its sender and send time (``time.perf_counter_ns``); the latency is
  from that time to its arrival at each receiver. Works with the chat endpoint (the JSON
  envelope's ``message``) and with a plain relay that forwards the raw text. With
  ``--channel C`` (the chat only) every connection first subscribes to C and the senders
  publish to it (``{"type": "publish", "channel": C, "message": ...}``) instead of sending
  plain text, which the chat publishes to its default channel. With ``--sender-url URL2``
  the senders connect to URL2 and the receivers to URL: two servers of one chat (a shared
  engine), so that the latency is from one server to the other.
- ``connect``: C loops each open a connection and close it, again and again; the latency is
  the opening handshake (TCP connect, upgrade request, 101 response).
- ``subscribe`` (the chat only, with ``--channel C``): ``--senders`` of the C connections
  subscribe to C and unsubscribe from it, one request at a time, again and again; the latency
  is from a request to its answer (``subscribed``, ``unsubscribed``). The other connections
  subscribe to C once, before the run, and listen: every ``joined`` and ``left`` notice that
  any connection receives is counted as a delivery.

Live progress goes to stderr once a second (unless ``--quiet``); the report goes to stdout,
as text or (``--json``) as exactly one JSON object, printed the moment the measured window
ends (closing the connections comes after). Greetings and notices of the chat (its
``connectionId``, ``welcome``, ``history`` and ``user_left`` messages) are skipped.

The JSON keys (counts over the measured window; rates per second of it):

- ``mode``, ``url``, ``connections`` (C), ``connected`` (open when the workload started;
  0 in ``connect`` mode), ``procs``, ``warmup``, ``duration`` (measured seconds),
  ``window_start``, ``window_end`` (the window in ``time.monotonic()`` seconds, one clock for
  every process of the machine; null if it never started);
- ``messages``, ``messages_per_s``: echo round trips, broadcast messages sent, or subscribe
  and unsubscribe requests answered;
- ``bytes``, ``bytes_per_s``: payload bytes received (broadcast: whole received messages,
  the chat's JSON envelope included);
- ``latency_ms``: ``p50``, ``p90``, ``p99``, ``max`` (null without samples), exact
  nearest-rank percentiles of ``latency_samples`` samples (a uniform reservoir of 10**6 once
  there are more);
- ``deliveries``, ``deliveries_per_s``: broadcast messages received, summed over receivers
  (subscribe mode: ``joined`` and ``left`` notices received);
- ``handshakes``, ``handshakes_per_s``: connect-mode open and close cycles;
- ``errors``: kind -> count over the whole run: ``connect_refused``, ``connect_failed``,
  ``open_timeout``, ``handshake``, ``closed_<code>`` (the server closed or dropped a
  connection: 1006 without a close frame), ``timeout`` (echo replies still missing
  ``GRACE`` seconds after the end), ``unexpected`` (an echo that is not ours),
  ``chat_error`` (the chat refused a subscribe-mode request), ``worker_crashed``,
  ``worker_timeout``;
- ``interrupted`` (Ctrl-C), ``params`` (``size``, ``in_flight``, ``senders``, ``rate``,
  ``window``, ``binary``, ``fresh_masks``, ``channel``, ``sender_url``,
  ``open_concurrency``).

Exit status: 0, 1 when errors were counted or nothing was measured, 2 for a bad command line,
130 after Ctrl-C (the partial report is printed first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.synchronize import Event as EventType
from types import FrameType
from typing import Any

from rfc6455.handshake import parse_uri

from .loadgen.options import MODES, Options, Share, split
from .loadgen.stats import Result, merge
from .loadgen.worker import GRACE, TEARDOWN, Hooks, Progress, Worker

__all__ = ["main", "parse_args"]

# Seconds the workers may take to open their connections before the run is called off.
READY_TIMEOUT_BASE = 60.0
READY_TIMEOUT_PER_CONNECTION = 0.05
# A worker process that exited without a result for this long has crashed.
DEAD_AFTER = 2.0

_PRIMARY = {
    "echo": "messages",
    "broadcast": "deliveries",
    "connect": "handshakes",
    "subscribe": "messages",
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number 0 or more, not {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, bool]:
    """The command line as ``Options``, and whether to print JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description="Drive a WebSocket server with C connections and report throughput, "
        "latency percentiles and errors.",
    )
    parser.add_argument("mode", choices=MODES, help="the workload")
    parser.add_argument("url", help="ws:// URL, e.g. ws://127.0.0.1:5000/echo")
    parser.add_argument(
        "-c", "--connections", type=_positive_int, default=50, help="connections (default 50)"
    )
    parser.add_argument(
        "-k",
        "--in-flight",
        type=_positive_int,
        default=1,
        help="echo: messages in flight per connection (default 1)",
    )
    parser.add_argument("-s", "--size", type=_count, default=32, help="payload bytes (default 32)")
    parser.add_argument(
        "-d", "--duration", type=_seconds, default=10.0, help="measured seconds (default 10)"
    )
    parser.add_argument(
        "--warmup", type=_seconds, default=1.0, help="seconds run before measuring (default 1)"
    )
    parser.add_argument(
        "--senders",
        type=_positive_int,
        default=1,
        help="broadcast: how many of the connections send; subscribe: how many subscribe and "
        "unsubscribe, the others listen (default 1)",
    )
    parser.add_argument(
        "--rate",
        type=_seconds,
        default=100.0,
        help="broadcast: messages/s across all senders; 0 = as fast as possible (default 100)",
    )
    parser.add_argument(
        "--window",
        type=_count,
        default=16,
        help="broadcast at --rate 0: messages a sender may be ahead of the average receiver "
        "of its process; 0 = no limit but TCP backpressure (default 16)",
    )
    parser.add_argument(
        "--binary", action="store_true", help="echo: binary messages instead of text"
    )
    parser.add_argument(
        "--procs",
        type=_positive_int,
        default=1,
        help="worker processes to split the connections across (default 1)",
    )
    parser.add_argument(
        "--fresh-masks",
        action="store_true",
        help="mask every frame with a fresh key, instead of frames encoded ahead of time "
        "with one key per process (slower, RFC 6455 to the letter)",
    )
    parser.add_argument(
        "--channel",
        help="the chat channel that broadcast publishes to (every connection subscribes to it "
        "first) and that subscribe mode subscribes to; required by subscribe",
    )
    parser.add_argument(
        "--sender-url",
        help="broadcast: the ws:// URL the senders connect to (another server of the same "
        "chat); the receivers connect to URL (default: URL for all)",
    )
    parser.add_argument(
        "--open-concurrency",
        type=_positive_int,
        default=64,
        help="connections opened at a time per process; with --channel each keeps its place "
        "until its subscribe is answered (default 64)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no live progress on stderr")
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("argument -d/--duration: must be more than 0")
    if args.mode == "subscribe" and not args.channel:
        parser.error("subscribe mode needs --channel")
    if args.sender_url and args.mode != "broadcast":
        parser.error("--sender-url is for broadcast mode")
    for name, url in (("url", args.url), ("--sender-url", args.sender_url)):
        if not url:
            continue
        try:
            if parse_uri(url).secure:
                parser.error(f"argument {name}: wss:// is not supported, use ws://")
        except ValueError as exc:
            parser.error(f"argument {name}: {exc}")
    options = Options(
        mode=args.mode,
        url=args.url,
        connections=args.connections,
        in_flight=args.in_flight,
        size=args.size,
        duration=args.duration,
        warmup=args.warmup,
        senders=args.senders,
        rate=args.rate,
        binary=args.binary,
        procs=args.procs,
        window=args.window,
        fresh_masks=args.fresh_masks,
        quiet=args.quiet,
        channel=args.channel or None,
        sender_url=args.sender_url or None,
        open_concurrency=args.open_concurrency,
    )
    return options, args.json


# Progress


class ProgressPrinter:
    """One line a second on stderr: the sum of the workers' counters, and rates, each worker's
    from its own previous snapshot."""

    _PHASES = ("connecting", "warmup", "measuring", "stopping")

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.started = time.monotonic()
        self.previous: dict[int, Progress] = {}

    def show(self, snapshots: dict[int, Progress]) -> None:
        rates = dict.fromkeys(("messages", "deliveries", "handshakes"), 0.0)
        for index, now in snapshots.items():
            before = self.previous.get(index) or Progress(self.started, "", 0, 0, 0, 0, 0)
            elapsed = max(now.at - before.at, 1e-9)
            for name in rates:
                rates[name] += (getattr(now, name) - getattr(before, name)) / elapsed
        self.previous = dict(snapshots)
        items = snapshots.values()
        phase = min(
            (p.phase for p in items),
            key=lambda phase: self._PHASES.index(phase) if phase in self._PHASES else 0,
        )
        if self.mode == "echo":
            shown = f"messages/s {rates['messages']:>10,.0f}"
        elif self.mode == "subscribe":
            shown = (
                f"requests/s {rates['messages']:>10,.0f}  notices/s {rates['deliveries']:>10,.0f}"
            )
        elif self.mode == "broadcast":
            shown = (
                f"sent/s {rates['messages']:>10,.0f}  deliveries/s {rates['deliveries']:>10,.0f}"
            )
        else:
            shown = f"handshakes/s {rates['handshakes']:>10,.0f}"
        print(
            f"[{time.monotonic() - self.started:6.1f}s] {phase:<10} "
            f"open {sum(p.open for p in items):>6}  {shown}  "
            f"errors {sum(p.errors for p in items)}",
            file=sys.stderr,
            flush=True,
        )


# Running in this process


def run_here(options: Options, share: Share, deliver: Callable[[list[Result]], None]) -> None:
    """Run the whole load in this process; Ctrl-C stops it (a second one aborts)."""
    printer = None if options.quiet else ProgressPrinter(options.mode)

    async def go_now(_connected: int) -> bool:
        return True

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def progress(snapshot: Progress) -> None:
            if printer is not None:
                printer.show({0: snapshot})

        hooks = Hooks(ready=go_now, progress=progress, finished=lambda result: deliver([result]))
        worker = Worker(options, share, hooks)

        def on_sigint() -> None:
            worker.interrupt()
            loop.remove_signal_handler(signal.SIGINT)

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            await worker.run()
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    asyncio.run(main())


# Running in worker processes


def _child(
    options: Options,
    share: Share,
    messages: multiprocessing.Queue[tuple[str, int, Any]],
    go: EventType,
    stop: EventType,
    ready_timeout: float,
) -> None:
    """A worker process: run one share, report progress and the result through ``messages``."""
    # Ctrl-C reaches every process of the terminal's group: the parent handles it (``stop``).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    index = share.index

    async def ready(connected: int) -> bool:
        messages.put(("ready", index, connected))
        deadline = time.monotonic() + ready_timeout
        while not go.is_set():
            if stop.is_set() or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def progress(snapshot: Progress) -> None:
        messages.put(("progress", index, snapshot))

    delivered = False

    def finished(result: Result) -> None:
        nonlocal delivered
        delivered = True
        messages.put(("result", index, result))

    hooks = Hooks(
        ready=ready,
        progress=None if options.quiet else progress,
        should_stop=stop.is_set,
        finished=finished,
    )
    try:
        asyncio.run(Worker(options, share, hooks).run())
    except Exception:
        traceback.print_exc()
    if not delivered:
        messages.put(("result", index, Result(errors={"worker_crashed": 1})))


def run_processes(
    options: Options, shares: list[Share], deliver: Callable[[list[Result]], None]
) -> None:
    """Run each share in a worker process, start them together, show their progress; hand
    their results to ``deliver`` as soon as all are in, then wait for their teardown."""
    context = multiprocessing.get_context("spawn")
    messages: multiprocessing.Queue[tuple[str, int, Any]] = context.Queue()
    go = context.Event()
    stop = context.Event()
    ready_timeout = READY_TIMEOUT_BASE + READY_TIMEOUT_PER_CONNECTION * options.connections
    processes = [
        context.Process(
            target=_child,
            args=(options, share, messages, go, stop, ready_timeout),
            name=f"loadgen-{share.index}",
            daemon=True,
        )
        for share in shares
    ]
    printer = None if options.quiet else ProgressPrinter(options.mode)
    results: dict[int, Result] = {}
    fresh: dict[int, Progress] = {}  # snapshots not shown yet
    ready: set[int] = set()
    dead_since: dict[int, float] = {}
    interrupted = False

    def on_sigint(_signum: int, _frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts

    previous = signal.signal(signal.SIGINT, on_sigint)
    started = time.monotonic()
    ready_deadline = started + ready_timeout + 10.0
    run_deadline = float("inf")
    try:
        for process in processes:
            process.start()
        while len(results) < len(processes):
            with contextlib.suppress(queue.Empty):
                kind, index, body = messages.get(timeout=0.1)
                if kind == "ready":
                    ready.add(index)
                elif kind == "progress":
                    fresh[index] = body
                elif kind == "result":
                    results[index] = body
            now = time.monotonic()
            for i, process in enumerate(processes):
                if i in results or process.exitcode is None:
                    continue
                # Its last messages may still be in the pipe: wait a little before giving up.
                if now - dead_since.setdefault(i, now) > DEAD_AFTER:
                    results[i] = Result(errors={"worker_crashed": 1})
            if not go.is_set() and len(ready | results.keys()) == len(processes):
                go.set()
                run_deadline = now + options.warmup + options.duration + GRACE + TEARDOWN + 30
            if not go.is_set() and now > ready_deadline:
                stop.set()
            if now > run_deadline:
                for i, process in enumerate(processes):
                    if i not in results:
                        process.terminate()
                        results[i] = Result(errors={"worker_timeout": 1})
            # A line once every running worker has sent a new snapshot.
            if (
                printer is not None
                and fresh
                and fresh.keys() | results.keys() == set(range(len(processes)))
            ):
                printer.show(fresh)
                fresh = {}
        ordered = [results[i] for i in range(len(processes))]
        for result in ordered:
            result.interrupted = result.interrupted or interrupted
        deliver(ordered)
    finally:
        signal.signal(signal.SIGINT, previous)
        for process in processes:
            if process.pid is None:
                continue
            process.join(timeout=TEARDOWN + 5.0)
            if process.exitcode is None:
                process.terminate()
                process.join(timeout=5.0)


# The report


def build_report(options: Options, results: list[Result]) -> dict[str, Any]:
    """The JSON report: the run's parameters, then the merged measurements."""
    merged = merge(results, options.sample_cap)
    return {
        "mode": options.mode,
        "url": options.url,
        "connections": options.connections,
        "connected": merged.pop("connected"),
        "procs": len(results),
        "warmup": options.warmup,
        **merged,
        "params": {
            "size": options.size,
            "in_flight": options.in_flight,
            "senders": min(options.senders, options.connections),
            "rate": options.rate,
            "window": options.window,
            "binary": options.binary,
            "fresh_masks": options.fresh_masks,
            "channel": options.channel,
            "sender_url": options.sender_url,
            "open_concurrency": options.open_concurrency,
        },
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as text for people."""
    mode = report["mode"]
    procs = report["procs"]
    if mode == "connect":
        opened = f"{report['connections']} connect loops"
    else:
        opened = f"{report['connected']} of {report['connections']} connections open"
    lines = [
        f"{mode} {report['url']}: {opened}, {procs} process{'es' if procs != 1 else ''}, "
        f"{report['duration']:.2f} s measured after {report['warmup']:g} s warm-up"
        + (" (interrupted)" if report["interrupted"] else ""),
    ]
    if mode in ("echo", "broadcast", "subscribe"):
        label = {"echo": "round trips", "broadcast": "sent", "subscribe": "requests"}[mode]
        lines.append(
            f"  {label:<12} {report['messages']:>12,}  {report['messages_per_s']:>12,.1f}/s"
        )
    if mode in ("broadcast", "subscribe"):
        label = "deliveries" if mode == "broadcast" else "notices"
        lines.append(
            f"  {label:<12} {report['deliveries']:>12,}  {report['deliveries_per_s']:>12,.1f}/s"
        )
    if mode == "connect":
        lines.append(
            f"  {'handshakes':<12} {report['handshakes']:>12,}  "
            f"{report['handshakes_per_s']:>12,.1f}/s"
        )
    else:
        lines.append(f"  {'payload':<12} {report['bytes_per_s'] / 1e6:>12,.3f} MB/s received")
    latency = report["latency_ms"]
    what = {
        "echo": "round trip",
        "broadcast": "send to arrival",
        "connect": "handshake",
        "subscribe": "request to answer",
    }[mode]
    if latency["p50"] is None:
        lines.append(f"  {'latency':<12} no samples")
    else:
        lines.append(
            f"  {'latency ms':<12} p50 {latency['p50']:.3f}  p90 {latency['p90']:.3f}  "
            f"p99 {latency['p99']:.3f}  max {latency['max']:.3f}  "
            f"({what}, {report['latency_samples']:,} samples)"
        )
    errors = report["errors"]
    lines.append(
        f"  {'errors':<12} "
        + (", ".join(f"{kind} {count:,}" for kind, count in errors.items()) or "none")
    )
    return "\n".join(lines)


def exit_status(report: dict[str, Any]) -> int:
    if report["interrupted"]:
        return 130
    if report["errors"] or not report[_PRIMARY[report["mode"]]]:
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    options, as_json = parse_args(argv)
    shares = split(options)
    status = 1

    def deliver(results: list[Result]) -> None:
        """Print the report the moment the window is over (the teardown comes after)."""
        nonlocal status
        report = build_report(options, results)
        print(json.dumps(report) if as_json else format_report(report), flush=True)
        status = exit_status(report)

    if len(shares) == 1:
        run_here(options, shares[0], deliver)
    else:
        run_processes(options, shares, deliver)
    return status


if __name__ == "__main__":
    sys.exit(main())
