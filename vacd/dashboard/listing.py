"""The space's machines and factories for the dashboard, asked for only while someone looks.

The factory's own census asks its peers for machinetype statuses only (what the scheduler
needs), so the page's machines table and factory list need two more queries: the ones
`vac machines` and `vac factories` send. They run here, on the listing's own thread and
sockets, never on the reconcile loop, and only when the page or its JSON was requested and
the last listing is older than LISTING_MIN_AGE_SECONDS: an unwatched dashboard costs the
space nothing, and a watched one costs each peer what an admin's `vac machines` costs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from typing import Any, Callable, Mapping, Optional

from vacd.config import Settings
from vacd.dashboard.view import Heard
from vacquery.client import CensusResult
from vacquery.codec import encode_reply
from vacquery.messages import MessageType, Reply

log = logging.getLogger(__name__)

# A page polled every few seconds by several browsers asks the space at most this often.
LISTING_MIN_AGE_SECONDS = 15.0
# What `vac machines`, `vac factories` and `vac machinetypes` ask (the last also refreshes the
# machinetype figures of a full factory, whose own census does not run).
LISTING_KINDS = (MessageType.MACHINES_QUERY, MessageType.FACTORY_QUERY, MessageType.MACHINETYPES_QUERY)


def wire_form(reply: Reply) -> dict[str, Any]:
    """A status as `vac ... --json` prints it, less the reply's cookie and send time."""
    wire = dict(json.loads(encode_reply(dataclasses.replace(reply, limited=None))))
    wire.pop("cookie", None)
    wire.pop("time_sent", None)
    return wire


def wire_statuses(result: CensusResult) -> list[Mapping[str, Any]]:
    """Every status a census heard, in wire form, factory by factory."""
    return [wire_form(reply) for name in result.factories for reply in result.replies.get(name, ())]


def heard_from(results: list[CensusResult], wall_time: float) -> Heard:
    """One `Heard` from the censuses of one listing: silent if silent to any of them."""
    statuses: list[Mapping[str, Any]] = []
    asked: dict[str, None] = {}
    silent: dict[str, None] = {}
    limited: dict[str, str] = {}
    for result in results:
        statuses += wire_statuses(result)
        asked.update(dict.fromkeys(result.factories))
        silent.update(dict.fromkeys(result.silent))
        limited.update(result.limited)
    return Heard(wall_time, tuple(statuses), tuple(asked), tuple(silent), limited)


class SpaceListing:
    """Runs `gather(settings)` on its own thread when wanted, keeping the latest `Heard`."""

    def __init__(self, gather: Callable[[Settings], Optional[Heard]], *,
                 min_age_seconds: float = LISTING_MIN_AGE_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._gather = gather
        self.min_age_seconds = min_age_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._gathered = threading.Event()
        self._settings: Optional[Settings] = None
        self._latest: Optional[Heard] = None
        self._latest_at: Optional[float] = None
        self._thread = threading.Thread(target=self._run, name="vacd-dashboard-listing", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wanted.set()
        self._thread.join(timeout=30)

    def follow(self, settings: Settings) -> None:
        """The settings the next listing uses (the factory's, after each pass)."""
        with self._lock:
            self._settings = settings

    def latest(self) -> Optional[Heard]:
        with self._lock:
            return self._latest

    def want(self, wait_for_first_seconds: float = 0.0) -> Optional[Heard]:
        """Ask for a listing if the last is old; return the latest, waiting a little for a first one."""
        with self._lock:
            is_due = self._latest_at is None or self._monotonic() - self._latest_at >= self.min_age_seconds
            latest = self._latest
        if is_due:
            self._wanted.set()
        if latest is None and wait_for_first_seconds > 0:
            self._gathered.wait(wait_for_first_seconds)
        return self.latest()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopping.is_set():
                return
            self._wanted.clear()
            with self._lock:
                settings = self._settings
            if settings is None:
                continue
            try:
                heard = self._gather(settings)
            except Exception:  # boundary: a failed listing leaves the last one shown, with its age
                log.exception("dashboard listing of the space failed; the page shows the previous one")
                heard = None
            with self._lock:
                self._latest_at = self._monotonic()
                if heard is not None:
                    self._latest = heard
            self._gathered.set()
