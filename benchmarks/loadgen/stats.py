"""Counters, latency samples and percentiles, for one worker process and merged across them.

Counters run for the whole run (the live progress shows them); the measured window is the
difference between two snapshots, taken when the warm-up ends and when the run ends, the same
two moments that switch latency recording on and off. Latencies are kept as integer
nanoseconds in an ``array('q')``, all of them up to the cap, then by reservoir sampling
(algorithm R), so percentiles are exact up to the cap and an unbiased estimate beyond it.
"""

from __future__ import annotations

import math
import random
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Recorder", "Result", "merge", "percentile"]

_perf_ns = time.perf_counter_ns


@dataclass(slots=True)
class Result:
    """What one worker measured, sent to the parent process (so: plain, picklable data)."""

    duration: float = 0.0  # seconds of the measured window
    messages: int = 0
    deliveries: int = 0
    handshakes: int = 0
    nbytes: int = 0  # payload bytes received
    errors: dict[str, int] = field(default_factory=dict)
    samples: bytes = b""  # array('q').tobytes(): latencies in ns
    seen: int = 0  # latencies recorded, including those the reservoir dropped
    connected: int = 0  # connections open when the workload started
    interrupted: bool = False
    # The measured window in time.monotonic() seconds (CLOCK_MONOTONIC: one clock for every
    # process of the machine), so that a caller can match it with its own measurements.
    window_start: float = 0.0
    window_end: float = 0.0


class Recorder:
    """One process's live counters and latency samples."""

    __slots__ = (
        "_end",
        "_mono_end",
        "_mono_start",
        "_start",
        "_t_end",
        "_t_start",
        "bytes",
        "cap",
        "deliveries",
        "errors",
        "handshakes",
        "messages",
        "open",
        "recording",
        "samples",
        "seen",
    )

    def __init__(self, cap: int) -> None:
        self.messages = 0
        self.deliveries = 0
        self.handshakes = 0
        self.bytes = 0
        self.open = 0  # connections open now
        self.errors: Counter[str] = Counter()
        self.cap = max(1, cap)
        self.samples = array("q")
        self.seen = 0
        self.recording = False
        self._start = self._end = (0, 0, 0, 0)
        self._t_start = self._t_end = 0
        self._mono_start = self._mono_end = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def sample(self, ns: int) -> None:
        """Record one latency, if inside the measured window."""
        if not self.recording:
            return
        self.seen += 1
        if len(self.samples) < self.cap:
            self.samples.append(ns)
        else:
            j = random.randrange(self.seen)
            if j < self.cap:
                self.samples[j] = ns

    def counts(self) -> tuple[int, int, int, int]:
        return (self.messages, self.deliveries, self.handshakes, self.bytes)

    def start_window(self) -> None:
        self._start = self.counts()
        self._t_start = _perf_ns()
        self._mono_start = time.monotonic()
        self.recording = True

    def end_window(self) -> None:
        """End the window (once; a window that never started stays empty)."""
        if self.recording:
            self.recording = False
            self._end = self.counts()
            self._t_end = _perf_ns()
            self._mono_end = time.monotonic()

    def result(self, *, connected: int, interrupted: bool) -> Result:
        self.end_window()
        messages, deliveries, handshakes, nbytes = (
            e - s for e, s in zip(self._end, self._start, strict=True)
        )
        return Result(
            duration=(self._t_end - self._t_start) / 1e9,
            messages=messages,
            deliveries=deliveries,
            handshakes=handshakes,
            nbytes=nbytes,
            errors=dict(self.errors),
            samples=self.samples.tobytes(),
            seen=self.seen,
            connected=connected,
            interrupted=interrupted,
            window_start=self._mono_start,
            window_end=self._mono_end,
        )


def percentile(ordered: list[int] | array[int], p: float) -> int:
    """Nearest-rank percentile of sorted, non-empty ``ordered``: the smallest value with at
    least p % of the samples at or below it."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _merged_samples(results: list[Result], cap: int) -> list[int]:
    """All samples if no worker dropped any; else a draw from each worker in proportion to
    how many latencies it saw, so that every latency has the same weight."""
    arrays = []
    for result in results:
        samples = array("q")
        samples.frombytes(result.samples)
        arrays.append(samples)
    if all(len(a) == r.seen for a, r in zip(arrays, results, strict=True)):
        return [ns for a in arrays for ns in a]
    seen = sum(r.seen for r in results)
    out: list[int] = []
    for samples, result in zip(arrays, results, strict=True):
        k = min(len(samples), round(cap * result.seen / seen))
        out.extend(random.sample(list(samples), k))
    return out


def merge(results: list[Result], cap: int) -> dict[str, Any]:
    """The workers' results as one: sums, rates (the sum of each worker's rate over its own
    window, which are within milliseconds of each other), percentiles of all samples."""
    errors: Counter[str] = Counter()
    for result in results:
        errors.update(result.errors)

    def rate(name: str) -> float:
        return sum(float(getattr(r, name)) / r.duration for r in results if r.duration > 0)

    samples = sorted(_merged_samples(results, cap))
    latency: dict[str, float | None]
    if samples:
        latency = {
            name: round(percentile(samples, p) / 1e6, 3)
            for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        }
    else:
        latency = dict.fromkeys(("p50", "p90", "p99", "max"))
    windows = [r for r in results if r.window_end > 0]
    return {
        "duration": round(max((r.duration for r in results), default=0.0), 3),
        "window_start": min((r.window_start for r in windows), default=None),
        "window_end": max((r.window_end for r in windows), default=None),
        "connected": sum(r.connected for r in results),
        "messages": sum(r.messages for r in results),
        "messages_per_s": round(rate("messages"), 1),
        "bytes": sum(r.nbytes for r in results),
        "bytes_per_s": round(rate("nbytes"), 1),
        "latency_ms": latency,
        "latency_samples": len(samples),
        "deliveries": sum(r.deliveries for r in results),
        "deliveries_per_s": round(rate("deliveries"), 1),
        "handshakes": sum(r.handshakes for r in results),
        "handshakes_per_s": round(rate("handshakes"), 1),
        "errors": dict(sorted(errors.items())),
        "interrupted": any(r.interrupted for r in results),
    }
