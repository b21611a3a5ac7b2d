"""Virtual time and a simulated datagram network for the site simulator.

Rules: time is a float of simulated seconds that advances only from event to event, so
an hour of site time costs only the events in it. The network drops, duplicates and
delays each datagram independently from one seeded `random.Random`, so a run is exactly
repeatable; independent random delays also reorder datagrams.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Any, Callable


class EventLoop:
    """Run callbacks in order of their simulated time (ties in order of scheduling)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._sequence = 0
        self.events_run = 0

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback(*args)` at simulated time `when` (never earlier than now)."""
        self._sequence += 1
        heapq.heappush(self._queue, (max(when, self.now), self._sequence, callback, args))

    def run_until(self, end: float) -> None:
        queue = self._queue
        while queue and queue[0][0] <= end:
            when, _, callback, args = heapq.heappop(queue)
            self.now = when
            self.events_run += 1
            callback(*args)
        self.now = max(self.now, end)


@dataclass(frozen=True)
class NetworkConditions:
    """Independent per-datagram loss and duplication; one-way delay uniform in [min, max]."""

    loss: float = 0.0
    duplication: float = 0.0
    delay_min_seconds: float = 0.0002
    delay_max_seconds: float = 0.001

    def __post_init__(self) -> None:
        if not (0.0 <= self.loss <= 1.0 and 0.0 <= self.duplication <= 1.0):
            raise ValueError("loss and duplication are probabilities")
        if not 0.0 <= self.delay_min_seconds <= self.delay_max_seconds:
            raise ValueError("need 0 <= delay_min_seconds <= delay_max_seconds")


class SimNetwork:
    """Delivers datagrams through an EventLoop under NetworkConditions; counts what it did."""

    def __init__(self, loop: EventLoop, conditions: NetworkConditions, rng: random.Random) -> None:
        self.loop = loop
        self.conditions = conditions
        self.rng = rng
        self.sent = 0
        self.lost = 0
        self.duplicated = 0

    def send(self, deliver: Callable[..., None], *args: Any) -> None:
        """Send one datagram: `deliver(*args)` runs at each arrival (0, 1 or 2 times)."""
        conditions, rng = self.conditions, self.rng
        self.sent += 1
        if conditions.loss and rng.random() < conditions.loss:
            self.lost += 1
            return
        copies = 1
        if conditions.duplication and rng.random() < conditions.duplication:
            copies = 2
            self.duplicated += 1
        low, high = conditions.delay_min_seconds, conditions.delay_max_seconds
        for _ in range(copies):
            self.loop.at(self.loop.now + low + (high - low) * rng.random(), deliver, *args)
