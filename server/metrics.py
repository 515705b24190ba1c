"""Counters, gauges and histograms, and the Prometheus text exposition format 0.0.4.

Standard library only. A counter or histogram is a family of children, one per tuple of
label values, each made once (``labels``) and kept by the code that counts, so that counting
is ``child.value += 1``: no lookup by labels on a hot path. A gauge is read when it is
scraped, from the object that already knows its value (``Gauge(read=...)``), and so is a
counter whose count another object keeps (``Counter(read=...)``): they cost nothing between
scrapes.

The format (https://prometheus.io/docs/instrumenting/exposition_formats/): for each family a
``# HELP`` and a ``# TYPE`` line, then one line per sample, ``name{label="value"} number``;
a counter's samples end in ``_total``, a histogram has cumulative ``_bucket{le="..."}``
samples (the last ``+Inf``), ``_sum`` and ``_count``.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "Counter",
    "CounterChild",
    "Gauge",
    "Histogram",
    "HistogramChild",
    "Registry",
]

#: The ``Content-Type`` of the text format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds, from 0.1 ms to 10 s: a broadcast takes microseconds to milliseconds, a commit
#: milliseconds, an ack or a Redis round trip up to seconds in an outage.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

#: What a family's values are read as at scrape time: a number (no labels), or a number per
#: tuple of label values.
Read = Callable[[], float | Mapping[tuple[str, ...], float]]


class CounterChild:
    """One counter's count: ``child.value += n`` counts (never down)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0


class HistogramChild:
    """One histogram's observations: how many fell in each bucket, their sum, their count."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        # Not cumulative: observe() adds to one; the writer sums them.
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation (``value`` in the family's unit)."""
        # Prometheus's buckets are upper bounds, inclusive: le="0.1" counts 0.1.
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class _Family:
    """What every family has: a name, a help text, label names, checked once."""

    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a metric name")
        for label in labels:
            if not _LABEL.fullmatch(label) or label.startswith("__") or label == "le":
                raise ValueError(f"{label!r} is not a label name for {name}")
        self.name = name
        self.help = help
        self.label_names = tuple(labels)

    def _key(self, values: Sequence[str]) -> tuple[str, ...]:
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name} has labels {self.label_names}, not {tuple(values)}")
        return tuple(values)

    def samples(self) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
        """Each sample: its name, its labels as (name, value) pairs, its value."""
        raise NotImplementedError


class Counter(_Family):
    """A count that only goes up; written as ``name_total``.

    Args:
        name: Without the ``_total`` suffix, which the writer adds.
        help: One line: what it counts.
        labels: Its label names.
        read: Reads counts at scrape time that another object keeps (beside those of the
            children, ``labels``, which it replaces for the same label values).
    """

    kind = "counter"

    def __init__(
        self, name: str, help: str, labels: Sequence[str] = (), *, read: Read | None = None
    ) -> None:
        super().__init__(name, help, labels)
        self._read = read
        self._children: dict[tuple[str, ...], CounterChild] = {}
        if not labels and read is None:
            self._children[()] = CounterChild()

    @property
    def child(self) -> CounterChild:
        """The count of a counter without labels."""
        return self._children[()]

    def labels(self, *values: str) -> CounterChild:
        """The count of these label values, made the first time they are asked for."""
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = CounterChild()
        return child

    def samples(self) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
        values = {key: child.value for key, child in self._children.items()}
        if self._read is not None:
            values.update(_as_mapping(self._read()))
        for key, value in values.items():
            yield self.name + "_total", tuple(zip(self.label_names, key, strict=True)), value


class Gauge(_Family):
    """A value that goes up and down, read at scrape time.

    Args:
        name: Its name.
        help: One line: what it is.
        read: Returns it (a number), or a number per tuple of label values.
        labels: The label names of ``read``'s keys.
    """

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Read, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._read = read

    def samples(self) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
        for key, value in _as_mapping(self._read()).items():
            yield self.name, tuple(zip(self.label_names, key, strict=True)), value


class Histogram(_Family):
    """Observations counted in buckets (a duration in seconds, usually).

    Args:
        name: Its name (``_seconds`` for a duration).
        help: One line: what it measures.
        labels: Its label names.
        buckets: The buckets' upper bounds, increasing; ``+Inf`` is added.
    """

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> None:
        super().__init__(name, help, labels)
        bounds = tuple(float(bound) for bound in buckets)
        if not bounds or list(bounds) != sorted(set(bounds)) or not all(map(math.isfinite, bounds)):
            raise ValueError(f"{name}: buckets must be finite and increasing")
        self.bounds = bounds
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        if not labels:
            self._children[()] = HistogramChild(bounds)

    @property
    def child(self) -> HistogramChild:
        """The observations of a histogram without labels."""
        return self._children[()]

    def labels(self, *values: str) -> HistogramChild:
        """The observations of these label values, made the first time they are asked for."""
        key = self._key(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = HistogramChild(self.bounds)
        return child

    def samples(self) -> Iterator[tuple[str, tuple[tuple[str, str], ...], float]]:
        for key, child in self._children.items():
            labels = tuple(zip(self.label_names, key, strict=True))
            cumulative = 0
            for bound, count in zip((*self.bounds, math.inf), child.buckets, strict=True):
                cumulative += count
                yield self.name + "_bucket", (*labels, ("le", _number(bound))), cumulative
            yield self.name + "_sum", labels, child.sum
            yield self.name + "_count", labels, child.count


Metric = Counter | Gauge | Histogram


class Registry:
    """The families a server exposes, and the text a scrape gets.

    Args:
        labels: Labels every sample carries (``worker``), as (name, value) pairs.
    """

    def __init__(self, labels: Sequence[tuple[str, str]] = ()) -> None:
        for name, _ in labels:
            if not _LABEL.fullmatch(name):
                raise ValueError(f"{name!r} is not a label name")
        self.labels = tuple(labels)
        self._families: dict[str, Metric] = {}

    def add(self, family: Metric) -> Metric:
        """Register a family; returns it.

        Raises:
            ValueError: A family of that name is registered already.
        """
        if family.name in self._families:
            raise ValueError(f"{family.name} is registered already")
        self._families[family.name] = family
        return family

    def __getitem__(self, name: str) -> Metric:
        return self._families[name]

    def exposition(self) -> str:
        """Every family in the text format 0.0.4 (one ``\\n``-terminated line each)."""
        lines: list[str] = []
        common = self.labels
        for family in self._families.values():
            # A counter's HELP and TYPE name it with its suffix, as its samples are named.
            name = family.name + "_total" if family.kind == "counter" else family.name
            lines.append(f"# HELP {name} {_escape_help(family.help)}")
            lines.append(f"# TYPE {name} {family.kind}")
            for sample, labels, value in family.samples():
                pairs = (*common, *labels)
                if pairs:
                    text = ",".join(f'{key}="{_escape_label(text)}"' for key, text in pairs)
                    lines.append(f"{sample}{{{text}}} {_number(value)}")
                else:
                    lines.append(f"{sample} {_number(value)}")
        lines.append("")
        return "\n".join(lines)


def _as_mapping(value: float | Mapping[tuple[str, ...], float]) -> Mapping[tuple[str, ...], float]:
    return {(): value} if isinstance(value, int | float) else value


def _escape_help(text: str) -> str:
    """A HELP text: backslash and line feed escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    """A label value: backslash, double quote and line feed escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value as the format writes it: whole numbers without a point, ``+Inf``."""
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)
