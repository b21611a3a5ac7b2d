"""What one reconcile pass saw and did, as the factory hands it to its publishers.

Rules:
- Values only: the factory (vacd/factory.py) fills a `PassReport` during its pass and the
  daemon publishes it to the status file, the responder's snapshot, monitoring and the
  dashboard (vacd/status.py, vacd/snapshot.py, vacd/metrics.py). Nothing here reads a disk,
  a clock or the backend.
- A slot's `state` uses Vac's words ("Shut down", "Starting", "Running", "Paused"), plus
  vacd's "Stopping", "Held" (a Vac 03 machine left alone) and "Error" (a contained slot
  error); the status formats print them as they are.
- The per-slot steps (`SLOT_STEPS`) are the label values of vac_slot_errors_total, which
  metrics exports for every step before any has failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from vacd.config import Machinetype, Settings
from vacd.faults import Fault
from vacd.preemption import Preempt
from vacd.records import FinishRecord, MachineRecord, StoredMachine
from vacd.scheduler import Decisions, MachinetypeReport
from vacd.slots import SlotIdentity

# The per-slot steps of a pass, each inside its own error boundary (the metric's label values).
SLOT_STEPS = ("observe", "adopt", "finalise", "police", "account", "housekeeping", "create", "destroy")


@dataclass(frozen=True)
class SlotStatus:
    """One slot as published to the status file, the responder and monitoring."""

    identity: SlotIdentity
    state: str  # Vac's words: "Shut down", "Starting", "Running", "Paused", plus "Stopping"
    machine: Optional[StoredMachine]
    cpu_seconds: float = 0.0
    shutdown_message: Optional[str] = None
    # A slot the configuration no longer covers (host_processors lowered, factory renamed):
    # its machine is still policed, finalised and accounted until it is gone (issue 8 item 7).
    beyond_range: bool = False
    # Why a "Held" slot (a Vac 03 machine that could not be adopted) is left alone.
    note: Optional[str] = None


@dataclass(frozen=True)
class SlotError:
    """A per-slot step that raised: contained to its slot, shown to the admin, retried later."""

    ordinal: int
    machine_name: str
    step: str  # one of SLOT_STEPS
    error: str
    since: int  # when this slot first failed this way, in the current run of failures
    count: int  # consecutive failed attempts
    retry_at: int  # the slot is left alone until then (per-slot backoff)


@dataclass
class PassReport:
    """What one pass saw and did; published by the caller."""

    now: int
    settings: Optional[Settings]
    machinetypes: Mapping[str, Machinetype]
    slots: list[SlotStatus] = field(default_factory=list)
    local_reports: list[MachinetypeReport] = field(default_factory=list)
    decisions: Optional[Decisions] = None
    config_error: Optional[str] = None
    observe_error: Optional[str] = None
    finished: list[tuple[MachineRecord, FinishRecord]] = field(default_factory=list)
    next_wake_seconds: Optional[float] = None
    # Contained faults: per-slot errors and factory-wide faults, each with its since-time.
    slot_errors: list[SlotError] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    # Machines this pass told to end early for another machinetype's share (vacd/preemption.py).
    preemptions: list[Preempt] = field(default_factory=list)

    def running_by_machinetype(self) -> dict[str, "RunningTotals"]:
        """Machines, processors and HS06 of the live slots, per machinetype (configured or not)."""
        totals: dict[str, RunningTotals] = {}
        for slot in self.slots:
            if slot.state == "Shut down" or slot.machine is None:
                continue
            record = slot.machine.record
            entry = totals.setdefault(record.machinetype, RunningTotals())
            entry.machines += 1
            entry.processors += record.processors
            entry.hs06 += record.hs06
        return totals


@dataclass
class RunningTotals:
    machines: int = 0
    processors: int = 0
    hs06: float = 0.0
