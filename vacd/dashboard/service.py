"""The dashboard as vacd runs it: fed after each pass, read by the metrics server's requests.

`Dashboard.observe_pass` is called on the reconcile loop's thread with what the pass
published; `document` and `page` are called on the HTTP server's threads. Between them is
one lock and immutable values. A history sample goes to the ring at most once every
SAMPLE_INTERVAL_SECONDS; a ring that cannot be written is logged once, and the page goes
on showing what is in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, Optional

from vacd.dashboard.history import SAMPLE_INTERVAL_SECONDS, HistoryRing
from vacd.dashboard.listing import SpaceListing
from vacd.dashboard.render import render_page
from vacd.dashboard.view import PassFacts, history_sample, outcome_key, space_view

log = logging.getLogger(__name__)

# A request waits at most this long for the space's first listing (then shows this factory alone).
FIRST_LISTING_WAIT_SECONDS = 3.0


class Dashboard:
    """Holds the last pass's facts, counts creations and outcomes, and writes the history ring."""

    def __init__(self, history: HistoryRing, listing: Optional[SpaceListing] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.history = history
        self.listing = listing
        self.clock = clock
        self._lock = threading.Lock()
        self._facts: Optional[PassFacts] = None
        self._creations = 0
        self._creation_failures = 0
        self._outcomes: dict[str, int] = {}
        self._last_sample_time: Optional[float] = None
        history_samples = history.samples()
        if history_samples:
            self._last_sample_time = float(history_samples[-1].time)
        self._ring_failing = False

    def creation_finished(self, ok: bool) -> None:
        """A creation ended (from the factory's worker threads)."""
        with self._lock:
            if ok:
                self._creations += 1
            else:
                self._creation_failures += 1

    def observe_pass(self, facts: PassFacts, finished_messages: Iterable[Optional[str]]) -> None:
        """Keep this pass's facts; count the machines it finished; sample the history when due."""
        with self._lock:
            self._facts = facts
            for message in finished_messages:
                key = outcome_key(message)
                self._outcomes[key] = self._outcomes.get(key, 0) + 1
            is_due = self._last_sample_time is None or facts.time - self._last_sample_time >= SAMPLE_INTERVAL_SECONDS
            if not is_due:
                return
            listing = self.listing.latest() if self.listing is not None else None
            sample = history_sample(facts, self._creations, self._creation_failures, self._outcomes, listing)
            try:
                self.history.append(sample)
            except (OSError, ValueError) as error:
                if not self._ring_failing:
                    log.error("cannot write the dashboard history path=%s error=%s; retrying each minute",
                              self.history.path, error)
                self._ring_failing = True
            else:
                if self._ring_failing:
                    log.info("dashboard history written again path=%s", self.history.path)
                self._ring_failing = False
                self._creations = self._creation_failures = 0
                self._outcomes = {}
            self._last_sample_time = facts.time

    def document(self) -> Optional[dict[str, Any]]:
        """The /dashboard.json document now, or None before the first pass with a configuration."""
        with self._lock:
            facts = self._facts
        if facts is None:
            return None
        listing = self.listing.want(FIRST_LISTING_WAIT_SECONDS) if self.listing is not None else None
        now = self.clock()
        return space_view(facts, listing, self.history.samples(since=now - 86400), now)

    def times(self) -> Optional[dict[str, Any]]:
        """When the pass, the census and the listing shown were made: what the page's script polls.

        Asking counts as watching: a listing older than its minimum age is started (not waited for).
        """
        with self._lock:
            facts = self._facts
        if facts is None:
            return None
        listing = self.listing.want() if self.listing is not None else None
        return {
            "time": self.clock(),
            "pass_time": facts.time,
            "census_time": facts.census.time if facts.census is not None else None,
            "listing_time": listing.time if listing is not None else None,
        }

    def page(self) -> Optional[str]:
        document = self.document()
        return None if document is None else render_page(document)
