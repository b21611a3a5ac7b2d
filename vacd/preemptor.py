"""Carry out vacd.preemption's decisions for one factory, and keep what they need between passes.

vacd/preemption.py decides, pure; this module is its edge: it builds the decision's input
from a pass's report, writes the picks to disk, and remembers between passes what the
next decision needs.

Rules (opt-in: the factory calls in only when preemption_grace_seconds > 0):
- A pre-emption lowers the machine's shutdown time in its record and in its Machine/Job
  Features; policing then stops the machine at that time with PREEMPTED, a factory ending
  that is never an abort. A pick whose record cannot be written is not made: the machine
  runs on, and the next census may pick again.
- At most max_preemptions_per_cycle per cycle_seconds, counted over a sliding window.
- A pre-empted machine is remembered by UUID (names are reused per slot) while it lives:
  policing reads it (`is_preempted`) to stop it as PREEMPTED, and a later decision counts it
  as room already coming, not as a machine to pick.
- A full factory asks the space for a pre-emption census at most once a cycle
  (`census_due`, `census_asked`).
- A machinetype's proof of work is kept from census to census and forgotten when an abort
  backs it off or starts its probe time again, also in passes that run no census.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable, Iterable, Mapping, Optional, Sequence

from vacd.config import Machinetype, Settings
from vacd.passreport import PassReport
from vacd.preemption import PreemptionInput, RunningMachineView, decide_preemptions, remembered_proofs
from vacd.records import StoredMachine, lowered
from vacd.scheduler import Decisions, MachinetypeReport
from vacd.store import Store

log = logging.getLogger(__name__)


class Preemptor:
    """One factory's pre-emptions: made from each census, remembered while their machines live."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # Machine uuid (names are reused per slot) -> the shutdown time it was given, while it lives.
        self._preempted: dict[str, int] = {}
        self._recent: collections.deque[int] = collections.deque()
        self._next_census = 0
        self._proven_since: dict[str, int] = {}  # machinetype -> when it was shown to have work

    def census_due(self, now: int) -> bool:
        """True once a cycle has passed since a full factory last asked the space."""
        return now >= self._next_census

    def census_asked(self, settings: Settings, now: int) -> None:
        """A full factory asks the space now: the next such census is a cycle away."""
        self._next_census = now + int(settings.cycle_seconds)

    def is_preempted(self, uuid: str) -> bool:
        """True if this machine was pre-empted: policing stops it as PREEMPTED."""
        return uuid in self._preempted

    def forget(self, uuid: str) -> None:
        """The machine is finalised: it is pre-empted no more."""
        self._preempted.pop(uuid, None)

    def forget_proofs(self, machinetypes: Iterable[str]) -> None:
        """An abort ends these machinetypes' proofs of work."""
        for name in machinetypes:
            self._proven_since.pop(name, None)

    def preempt(
        self,
        settings: Settings,
        machinetypes: Mapping[str, Machinetype],
        report: PassReport,
        reports: Sequence[MachinetypeReport],
        decisions: Decisions,
        free_processors: int,
        now: int,
        lower_shutdown_time: Optional[Callable[[StoredMachine, int, int], None]],
    ) -> None:
        """Lower the shutdown time of the machines vacd.preemption picks, MJF files included.

        Policing then stops each at its new time with PREEMPTED, a factory ending (no abort).
        """
        window_start = now - settings.cycle_seconds
        while self._recent and self._recent[0] <= window_start:
            self._recent.popleft()
        live: dict[str, StoredMachine] = {}
        machines: list[RunningMachineView] = []
        for slot in report.slots:
            stored = slot.machine
            if stored is None or stored.started_time is None or slot.state == "Shut down":
                continue
            name = stored.record.name
            live[name] = stored
            preempted = stored.record.uuid in self._preempted
            # Running machines may be picked; a pre-empted one still stopping is pending room.
            if slot.state == "Running" or preempted:
                record = stored.record
                machines.append(RunningMachineView(
                    name, record.machinetype, record.processors, record.hs06, stored.started_time, preempted
                ))
        live_uuids = {stored.record.uuid for stored in live.values()}
        for uuid in [uuid for uuid in self._preempted if uuid not in live_uuids]:
            del self._preempted[uuid]
        state = PreemptionInput(
            now=now,
            factory_name=settings.factory_name,
            grace_seconds=settings.preemption_grace_seconds,
            margin=settings.preemption_margin_percent / 100.0,
            max_preemptions=settings.max_preemptions_per_cycle - len(self._recent),
            machinetypes=machinetypes,
            machines=machines,
            reports=reports,
            backoff_until=decisions.outlook.backoff_until,
            probing_until=decisions.outlook.probing_until,
            free_processors=free_processors,
            proven_since=self._proven_since,
        )
        picks = decide_preemptions(state)
        self._proven_since = remembered_proofs(state)
        for preempt in picks:
            stored = live[preempt.name]
            try:
                self.store.update_record(lowered(stored.record, preempt.shutdown_time))
                if lower_shutdown_time is not None:
                    lower_shutdown_time(stored, preempt.shutdown_time, now)
            except OSError as error:
                log.error("cannot pre-empt machine name=%s error=%s; it runs on", preempt.name, error)
                continue
            log.info(
                "pre-empting machine name=%s machinetype=%s processors=%d shutdown_time=%d for=%s",
                preempt.name, preempt.machinetype, preempt.processors, preempt.shutdown_time, preempt.gaining,
            )
            self._preempted[stored.record.uuid] = preempt.shutdown_time
            self._recent.append(now)
            report.preemptions.append(preempt)
