"""Departures (server/departures.py): user_left bounded per second, the rest coalesced."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from server import departures
from server.departures import Departures
from server.messages import Departure


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def announcer(rate: float | None, clock: Clock) -> tuple[Departures, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    return (
        Departures(lambda text: sent.append(json.loads(text)), lambda: 7, rate=rate, clock=clock),
        sent,
    )


async def test_within_the_rate_each_departure_is_announced_at_once() -> None:
    clock = Clock()
    announce, sent = announcer(2.0, clock)
    for n in range(departures.BURST):
        announce.left(Departure(f"c{n}", None, 1000, "bye"))
    assert [m["connectionId"] for m in sent] == [f"c{n}" for n in range(departures.BURST)]
    assert sent[0] == {
        "type": "user_left",
        "channel": "general",
        "connectionId": "c0",
        "totalConnections": 7,
        "closeStatus": 1000,
        "closeReason": "bye",
    }


async def test_beyond_the_rate_they_are_announced_together_once_a_second() -> None:
    clock = Clock()
    announce, sent = announcer(1.0, clock)
    for n in range(departures.BURST + 150):
        announce.left(Departure(f"c{n}"))
    assert len(sent) == departures.BURST  # the rest wait for the next users_left
    await asyncio.sleep(departures.INTERVAL + 0.05)
    assert len(sent) == departures.BURST + 1
    together = sent[-1]
    assert together["type"] == "users_left"
    names = [user["connectionId"] for user in together["users"]]
    assert names == [f"c{n}" for n in range(departures.BURST, departures.BURST + 100)]
    assert (together["more"], together["totalConnections"]) == (50, 7)


async def test_one_waiting_departure_is_a_plain_user_left_and_order_is_kept() -> None:
    clock = Clock()
    announce, sent = announcer(1.0, clock)
    for n in range(departures.BURST):
        announce.left(Departure(f"c{n}"))
    announce.left(Departure("late"))
    clock.now += 100  # tokens again, but one is waiting: the next goes after it
    announce.left(Departure("later"))
    await asyncio.sleep(departures.INTERVAL + 0.05)
    assert sent[-1]["type"] == "users_left"
    assert [u["connectionId"] for u in sent[-1]["users"]] == ["late", "later"]
    announce.left(Departure("alone"))  # tokens, nothing waiting: at once
    assert sent[-1] == {
        "type": "user_left",
        "channel": "general",
        "connectionId": "alone",
        "totalConnections": 7,
    }


async def test_a_rate_of_none_announces_every_one_at_once() -> None:
    announce, sent = announcer(None, Clock())
    for n in range(500):
        announce.left(Departure(f"c{n}"))
    assert len(sent) == 500


async def test_close_announces_what_waits() -> None:
    clock = Clock()
    announce, sent = announcer(1.0, clock)
    for n in range(departures.BURST + 2):
        announce.left(Departure(f"c{n}"))
    announce.close()
    assert sent[-1]["type"] == "users_left"
    assert len(sent[-1]["users"]) == 2
