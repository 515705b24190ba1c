"""The exposition writer, read back by ``prometheus_client``'s parser as Prometheus would."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import Counter, Gauge, Histogram, Registry


def parsed(registry: Registry) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Each family's samples, by family name."""
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(registry.exposition())
    }


def test_counter_is_written_with_total_help_and_type() -> None:
    registry = Registry()
    counter = Counter("chat_things", "Things counted")
    registry.add(counter)
    counter.child.value += 3
    text = registry.exposition()
    assert text == (
        "# HELP chat_things_total Things counted\n"
        "# TYPE chat_things_total counter\n"
        "chat_things_total 3\n"
    )
    families = list(text_string_to_metric_families(text))
    assert families[0].type == "counter"
    assert parsed(registry) == {"chat_things": [("chat_things_total", {}, 3.0)]}


def test_labels_are_escaped_and_common_labels_come_first() -> None:
    registry = Registry((("worker", "1"),))
    counter = Counter("chat_odd", "Help with a \\ and a\nline", ("reason",))
    registry.add(counter)
    counter.labels('a "quoted"\\back\nslash').value += 1
    text = registry.exposition()
    assert "# HELP chat_odd_total Help with a \\\\ and a\\nline\n" in text
    assert 'chat_odd_total{worker="1",reason="a \\"quoted\\"\\\\back\\nslash"} 1\n' in text
    assert parsed(registry)["chat_odd"] == [
        ("chat_odd_total", {"worker": "1", "reason": 'a "quoted"\\back\nslash'}, 1.0)
    ]


def test_histogram_buckets_are_cumulative_up_to_inf() -> None:
    registry = Registry()
    histogram = Histogram("chat_wait_seconds", "Waits", buckets=(0.1, 1.0))
    registry.add(histogram)
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.child.observe(value)
    samples = parsed(registry)["chat_wait_seconds"]
    assert samples == [
        ("chat_wait_seconds_bucket", {"le": "0.1"}, 2.0),
        ("chat_wait_seconds_bucket", {"le": "1"}, 3.0),
        ("chat_wait_seconds_bucket", {"le": "+Inf"}, 4.0),
        ("chat_wait_seconds_sum", {}, 3.65),
        ("chat_wait_seconds_count", {}, 4.0),
    ]


def test_gauge_and_counter_are_read_at_scrape_time() -> None:
    state = {"open": 2, "dead": 0}
    registry = Registry()
    registry.add(Gauge("chat_open", "Open things", lambda: state["open"]))
    registry.add(Counter("chat_dead", "Dead things", read=lambda: state["dead"]))
    registry.add(
        Gauge("chat_by_kind", "Things by kind", lambda: {("a",): 1, ("b",): 2.5}, ("kind",))
    )
    state["open"], state["dead"] = 5, 7
    families = parsed(registry)
    assert families["chat_open"] == [("chat_open", {}, 5.0)]
    assert families["chat_dead"] == [("chat_dead_total", {}, 7.0)]
    assert families["chat_by_kind"] == [
        ("chat_by_kind", {"kind": "a"}, 1.0),
        ("chat_by_kind", {"kind": "b"}, 2.5),
    ]


def test_special_values() -> None:
    registry = Registry()
    registry.add(Gauge("chat_inf", "Infinite", lambda: math.inf))
    registry.add(Gauge("chat_nan", "Not a number", lambda: math.nan))
    text = registry.exposition()
    assert "chat_inf +Inf\n" in text
    assert "chat_nan NaN\n" in text
    assert math.isnan(parsed(registry)["chat_nan"][0][2])


@pytest.mark.parametrize("name", ["", "9lives", "has-dash", "has space"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="metric name"):
        Counter(name, "x")


@pytest.mark.parametrize("label", ["le", "__reserved", "a-b"])
def test_bad_labels_are_refused(label: str) -> None:
    with pytest.raises(ValueError, match="label name"):
        Counter("chat_x", "x", (label,))


def test_wrong_label_count_and_duplicate_family_are_refused() -> None:
    counter = Counter("chat_x", "x", ("a",))
    with pytest.raises(ValueError, match="has labels"):
        counter.labels("1", "2")
    registry = Registry()
    registry.add(counter)
    with pytest.raises(ValueError, match="registered already"):
        registry.add(Counter("chat_x", "again"))


def test_buckets_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram("chat_h", "h", buckets=(1.0, 0.5))
