"""The reconcile loop: observe machines and records, decide, act, publish; again and again.

Rules (design.md rule 3, style.md §3):
- Level-triggered. Each pass reads the real state (backend machines, slot records,
  joboutputs) and compares it with what should be. Events only wake the loop early, so a
  missed event costs latency, never correctness.
- Acts are idempotent and keyed by machine name. A creation writes its record before the
  backend is asked for anything; a destroy of a machine that is gone is success.
- If listing machines fails, the pass makes no destroy decisions and creates nothing. If
  the configuration is bad, the pass touches no machine and creates nothing (acceptance 2).
- Nothing blocks the loop for long: creations and hard destroys run on a bounded thread
  pool; a graceful shutdown is an ACPI request followed, passes later, by a hard destroy
  after `shutdown_grace_seconds` (Vac 03 slept 30 s per machine inside its cycle, §1.7).
- A restart adopts what is running: a domain whose name and UUID match an unfinished
  slot record is that slot's machine. A vac-named domain that matches no live record is a
  zombie and is destroyed (acceptance 43).
- What a Vac 03 factory left is taken over, not destroyed (vacd/vac03state.py, issue 10):
  a slot bound to a Vac 03 machine directory is adopted (vacd writes its machine.json) when
  its files and its domain agree, and otherwise held: left running, reported, never reused.
- A peer's abort, once heard, holds for its backoff although later censuses miss the peer
  or none runs (vacd/peeroutcomes.py): a lost datagram costs latency, never a backoff.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import random
import threading
import time
import uuid as uuid_module
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Protocol, Sequence

from vacd.atomicfile import write_atomic
from vacd.backends.base import Backend, ObservedMachine, ObservedState
from vacd.config import Config, Machinetype, Settings
from vacd.creationphases import PhaseObserver, observe, timed
from vacd.errors import AccountingDeferred, BackendError, BackendOutcomeUnknown, ConfigErrors, StoreError, VacError
from vacd.housekeeping import MachineDirectory, expired
from vacd.imagecache import remote_image_urls
from vacd.imagecheck import ImageVerifier
from vacd.machinespec import machine_spec
from vacd.outcomes import FAILED_TO_START, effective_outcome
from vacd.peeroutcomes import PeerOutcomes
from vacd.preemption import Preempt, PreemptionInput, RunningMachineView, decide_preemptions, remembered_proofs
from vacd.policing import RunningMachine, effective_shutdown_time, stop_reason
from vacd.scheduler import Create, Decisions, MachinetypeReport, RandomSource, SchedulerInput, SlotView, decide, gate
from vacd.slots import VNC_BASE_PORT, SlotIdentity, mac_address_for, ordinal_of_machine_name, slot_identity
from vacd.vac03state import TakeOver, Vac03Plan, adopt, is_vac03_directory, plan_vac03_slot
from vacd.records import FinishRecord, Heartbeat, MachineRecord, SlotCondition, StoredMachine, lowered
from vacd.store import MAX_DIRECTORY_NAME_TRIES, MachineDirectoryExists, Store

log = logging.getLogger(__name__)

# Creation failures back off per machinetype: 30 s doubling to an hour (Vac retried every cycle).
CREATION_FAILURE_FIRST_BACKOFF_SECONDS = 30
CREATION_FAILURE_MAX_BACKOFF_SECONDS = 3600
# A machine seen paused within this time of its start is still starting, not stuck (§1.5 step 4).
PAUSED_GRACE_SECONDS = 30
# Old machine directories are looked at hourly; Vac looked every cycle (§1.8), needlessly.
HOUSEKEEPING_SECONDS = 3600
# A slot whose step raised is left alone for this long, doubling per repeat up to the cap, so a
# slot that fails the same way pass after pass is not retried hot (the kubelet's per-pod backoff).
SLOT_ERROR_FIRST_BACKOFF_SECONDS = 10
SLOT_ERROR_MAX_BACKOFF_SECONDS = 900
# A failed destroy is retried for its slot after 1 s, doubling to a minute: a libvirtd that
# refuses destroys is asked again soon, but never many times a second (the loop is not woken).
DESTROY_RETRY_FIRST_SECONDS = 1
DESTROY_RETRY_MAX_SECONDS = 60


class ConfigSource(Protocol):
    def current(self) -> Config:
        """The configuration to use for this pass; raise ConfigErrors if it is bad."""


class Contextualiser(Protocol):
    def __call__(self, settings: Settings, machinetype: Machinetype, record: MachineRecord, now: int) -> None:
        """Write user_data, machine/job features into the new machine's directory."""


class PeerReports(Protocol):
    def __call__(self, settings: Settings, machinetypes: Mapping[str, Machinetype], now: int) -> Sequence[MachinetypeReport]:
        """The other factories' machinetype reports, gathered within a deadline."""


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


@dataclass(frozen=True)
class Fault:
    """A factory-wide fault that stops creation or observation: what, and since when."""

    kind: str  # "config", "listing", "disk", "network"
    message: str
    since: int


# The per-slot steps of a pass, each inside its own error boundary (the metric's label values).
SLOT_STEPS = ("observe", "adopt", "finalise", "police", "account", "housekeeping", "create", "destroy")


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


@dataclass
class FactoryHooks:
    """Optional collaborators called at the moments they care about."""

    contextualise: Optional[Contextualiser] = None
    peer_reports: Optional[PeerReports] = None
    # Writes the machine's APEL record; must succeed before the machine is marked finished
    # (exactly once, issue 8 item 10), so it must be idempotent (vacd.accounting is).
    account: Optional[Callable[[Settings, Optional[Machinetype], MachineRecord, FinishRecord], None]] = None
    # Best effort (monitoring): a failure is logged and the machine is finished anyway.
    on_finished: list[Callable[[Settings, Optional[Machinetype], MachineRecord, FinishRecord], None]] = field(
        default_factory=list
    )
    on_created: list[Callable[[MachineRecord, float, bool], None]] = field(default_factory=list)
    # Each timed phase of a creation (vacd.creationphases), as it ends: vac_creation_phase_seconds.
    creation_phase: Optional[PhaseObserver] = None
    lower_shutdown_time: Optional[Callable[[StoredMachine, int, int], None]] = None
    heartbeat_file_mtime: Optional[Callable[[StoredMachine, str], Optional[float]]] = None
    shutdown_message_time: Optional[Callable[[StoredMachine], Optional[int]]] = None
    fetch_image: Optional[Callable[[str], Path]] = None
    # Downloads a creation's http(s) images on the image cache's own pool (item 6): the action
    # pool's workers stay free for destroys while a slow image server drips.
    # (URLs, public_only): public_only for a vacuum pipe's machinetype (vacd.fetch).
    prefetch_images: Optional[Callable[[Sequence[str], bool], "Future[dict[str, Path]]"]] = None
    # Raises VacError if QEMU could not open the file (vacd.qemuaccess, issue 8 item 12).
    qemu_access: Optional[Callable[[Path], None]] = None


class Factory:
    """One factory: its slots, its records and its backend, reconciled pass by pass."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        config_source: ConfigSource,
        executor: Executor,
        *,
        clock: Callable[[], float],
        load_average: Callable[[], float],
        host_cpu_count: int,
        vacd_start_time: int,
        hooks: Optional[FactoryHooks] = None,
        tie_break: Optional[RandomSource] = None,
        is_draining: Callable[[], bool] = lambda: False,
        initial_config: Optional[Config] = None,
        disk_problem: Callable[[Settings], Optional[str]] = lambda settings: None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.config_source = config_source
        self.executor = executor
        self.clock = clock
        self.load_average = load_average
        self.host_cpu_count = host_cpu_count
        self.vacd_start_time = vacd_start_time
        self.hooks = hooks or FactoryHooks()
        self.is_draining = is_draining
        # The disk gate (vacd.diskspace.check_disk): a reason while creation must stop.
        self.disk_problem = disk_problem
        # One per factory, so an image's digests are kept between creations (issue 11 item 1).
        self.image_verifier = ImageVerifier(store.paths.certificates_dir)
        # The pure scheduler is given its randomness; this edge module owns the source.
        self.tie_break: RandomSource = tie_break or random.Random()
        self.wake_event = threading.Event()
        # Guards everything pool threads touch: _in_flight, _futures, _creation_failures, last_error.
        self._lock = threading.Lock()
        # Machine name -> the action running for it on the pool ("create" or "destroy"). A slot
        # with anything in flight is neither free nor judged, so a zombie's destroy finishes
        # before its slot can be created into (issue 8 item 5).
        self._in_flight: dict[str, str] = {}
        self._futures: set[Future[None]] = set()
        self._shutdown_sent: set[str] = set()
        self._creation_failures: dict[str, tuple[int, int]] = {}  # machinetype -> (failures, until)
        # Machine name -> (destroys failed in a row, no new attempt before this clock time).
        self._destroy_failures: dict[str, tuple[int, float]] = {}
        self._previous_cpu: dict[str, tuple[float, float]] = {}  # name -> (time, cpu seconds)
        self.last_error: Optional[str] = None
        self._next_housekeeping = 0
        self._busy_at_observation: set[str] = set()
        self._backoffs: dict[str, int] = {}
        self._peer_outcomes = PeerOutcomes()
        # Cumulative count of contained per-slot errors by step (vac_slot_errors_total{step}).
        self.slot_error_totals: dict[str, int] = {step: 0 for step in SLOT_STEPS}
        self._slot_errors: dict[str, SlotError] = {}  # machine name -> its current error
        self._vac03_told: dict[str, str] = {}  # machine name -> what the admin was last told of it
        self._faults: dict[str, Fault] = {}  # kind -> the factory-wide fault holding now
        # Policing, finalising and accounting go on under this after a bad reload (item 9).
        self._last_good_config: Optional[Config] = initial_config
        self._configured_slots: Optional[int] = None
        self._reported_config_errors: Optional[str] = None
        self._last_local_reports: list[MachinetypeReport] = []
        self._recent_creations: collections.deque[int] = collections.deque()
        # Pre-emption (opt-in): machine uuid (names are reused per slot) -> the shutdown time it
        # was given, while it lives.
        self._preempted: dict[str, int] = {}
        self._recent_preemptions: collections.deque[int] = collections.deque()
        self._next_preemption_census = 0
        self._proven_since: dict[str, int] = {}  # machinetype -> when it was shown to have work

    # ------------------------------------------------------------------ the pass
    def wake(self, reason: str = "") -> None:
        self.wake_event.set()

    def run_pass(self) -> PassReport:
        now = int(self.clock())
        config, config_error = self._config_for_pass(now)
        if config is None:
            return PassReport(now, None, {}, config_error=config_error, faults=self._fault_list())
        settings, machinetypes = config.settings, config.machinetypes
        report = PassReport(now, settings, machinetypes, config_error=config_error)
        self._note_slot_range(settings)
        # Taken before listing: a creation that ends while the list is made must not be judged
        # on a listing that saw it half-made (QEMU starts paused until libvirt resumes it).
        with self._lock:
            self._busy_at_observation = set(self._in_flight)
        try:
            observed = {machine.name: machine for machine in self.backend.list_machines()}
        except BackendError as error:
            log.error("cannot list machines, no action this pass error=%s", error)
            self._set_fault("listing", f"cannot list machines: {error}", now)
            report.observe_error = str(error)
            report.slots = [self._status_from_store_contained(settings, ordinal) for ordinal in range(settings.num_machine_slots)]
            # Peers get the last good report, not an empty one; its age shows in the factory
            # heartbeat time, which only a completed pass moves (issue 9 item 4).
            report.local_reports = list(self._last_local_reports)
            report.faults = self._fault_list()
            report.slot_errors = list(self._slot_errors.values())
            return report
        self._clear_fault("listing")

        slot_views: list[SlotView] = []
        wake_times: list[int] = []
        beyond = self._identities_beyond_range(settings, observed)
        held_ordinals = {identity.ordinal for identity in beyond}
        for identity in [*self._identities_in_range(settings), *beyond]:
            is_beyond = identity.ordinal >= settings.num_machine_slots or identity in beyond
            result = self._reconcile_slot_contained(settings, machinetypes, identity, observed, now, report)
            if result is None:
                continue
            status, view, wake_at = result
            if is_beyond:
                status = dataclasses.replace(status, beyond_range=True)
                if status.state == "Shut down" and status.machine is not None:
                    self._release_beyond_range(status)
            report.slots.append(status)
            # A free slot beyond the range is not the scheduler's to fill; an in-range slot whose
            # address a renamed factory's machine still holds is not free either.
            if is_beyond and not view.is_free:
                slot_views.append(view)
            elif not is_beyond and not (view.is_free and identity.ordinal in held_ordinals):
                slot_views.append(view)
            if wake_at is not None:
                wake_times.append(wake_at)
        self._destroy_unbound_zombies(settings, observed, report)
        try:
            self.store.flush_heartbeats()
        except OSError as error:
            # A full or failing disk costs the heartbeats, never the pass (item 4).
            log.warning("cannot write this pass's heartbeats error=%s", error)

        report.local_reports = self._local_reports(settings, machinetypes, report.slots, now)
        self._last_local_reports = list(report.local_reports)
        try:
            self._housekeeping(machinetypes, now)
        except Exception:  # boundary: old directories wait for the next round, the pass goes on
            self.slot_error_totals["housekeeping"] += 1
            log.exception("housekeeping failed; retried in %ds", HOUSEKEEPING_SECONDS)
        disk_problem = self._disk_problem_contained(settings)
        if disk_problem is not None:
            if "disk" not in self._faults:
                log.warning("creation stopped: %s", disk_problem)
            self._set_fault("disk", disk_problem, now)
        elif "disk" in self._faults:
            log.info("disk has room again, creation resumes")
            self._clear_fault("disk")
        with self._lock:
            creation_failure_until = {name: until for name, (_, until) in self._creation_failures.items()}
        creations_allowed, next_creation_time = self._creations_allowed(settings, now)
        if next_creation_time is not None:
            wake_times.append(next_creation_time)
        local_state = SchedulerInput(
            now=now,
            # max_creations_per_cycle holds per cycle_seconds, not per event-woken pass (item 4).
            settings=dataclasses.replace(settings, max_creations_per_cycle=max(1, creations_allowed)),
            machinetypes=machinetypes,
            slots=slot_views,
            reports=report.local_reports,
            load_average=self.load_average(),
            host_cpu_count=self.host_cpu_count,
            draining=self.is_draining(),
            creation_failure_until=creation_failure_until,
            disk_problem=disk_problem,
            blocked_by=self._creation_blocked_by() or (
                None if creations_allowed > 0 else
                f"max_creations_per_cycle ({settings.max_creations_per_cycle}) reached in the last "
                f"{settings.cycle_seconds:g}s; next at {next_creation_time}"
            ),
        )
        peer_reports: Sequence[MachinetypeReport] = ()
        running_processors = sum(view.processors for view in slot_views if not view.is_free)
        could_create = gate(local_state, running_processors) is None and any(view.is_free for view in slot_views)
        # A full factory that may pre-empt asks the space once a cycle; one that may not create
        # for another reason (draining, overload, disk) neither creates nor pre-empts.
        may_preempt = (
            settings.preemption_grace_seconds > 0
            and not could_create
            and gate(local_state, running_processors, count_capacity=False) is None
            and now >= self._next_preemption_census
        )
        census_heard = False
        # No query is sent when a gate blocks creation (acceptance 28): the census would be wasted.
        if (could_create or may_preempt) and self.hooks.peer_reports is not None:
            if may_preempt:
                self._next_preemption_census = now + int(settings.cycle_seconds)
            try:
                peer_reports = [
                    peer for peer in self.hooks.peer_reports(settings, machinetypes, now) if peer.factory != settings.factory_name
                ]
                census_heard = True
            except Exception:  # boundary: a census failure must not stop local scheduling
                log.exception("census failed; scheduling on local knowledge only")
        now = int(self.clock())
        # What a lost datagram or a pass without a census hid is filled in from earlier
        # censuses, so a peer's abort backs the machinetype off for its whole backoff.
        peer_reports = self._peer_outcomes.complete(peer_reports, settings, machinetypes, now)
        decisions = decide(
            dataclasses.replace(local_state, now=now, reports=[*report.local_reports, *peer_reports]),
            self.tie_break,
        )
        report.decisions = decisions
        self._log_backoff_changes(decisions.outlook.backoff_until, now)
        # An abort ends a pre-emption proof of work, also in passes that run no census.
        for name in [*decisions.outlook.backoff_until, *decisions.outlook.probing_until]:
            self._proven_since.pop(name, None)
        for create in decisions.creates:
            started = self._start_creation(settings, machinetypes[create.machinetype], create, now)
            if started is not None:
                self._recent_creations.append(now)
                self._show_creation(report, started)
        if decisions.creates:
            # Peers learn of this pass's creations (and probes) from this pass's report (item 4).
            report.local_reports = self._local_reports(settings, machinetypes, report.slots, now)
            self._last_local_reports = list(report.local_reports)
        if census_heard and settings.preemption_grace_seconds > 0:
            # Only on a census: on local knowledge alone this factory would take the whole gap.
            created = sum(create.processors for create in decisions.creates)
            free_processors = settings.total_processors - running_processors - created
            self._preempt(settings, machinetypes, report, [*report.local_reports, *peer_reports],
                          decisions, free_processors, now)
            wake_times.extend(preempt.shutdown_time + 1 for preempt in report.preemptions)
        for until in decisions.outlook.backoff_until.values():
            wake_times.append(until + 1)
        wake_times.extend(error.retry_at for error in self._slot_errors.values())
        wake_times.extend(self._destroy_retry_times(now))
        if wake_times:
            report.next_wake_seconds = max(1.0, min(wake_times) - now)
        report.faults = self._fault_list()
        report.slot_errors = list(self._slot_errors.values())
        return report

    def _preempt(
        self,
        settings: Settings,
        machinetypes: Mapping[str, Machinetype],
        report: PassReport,
        reports: Sequence[MachinetypeReport],
        decisions: Decisions,
        free_processors: int,
        now: int,
    ) -> None:
        """Lower the shutdown time of the machines vacd.preemption picks, MJF files included.

        Policing then stops each at its new time with PREEMPTED, a factory ending (no abort).
        """
        window_start = now - settings.cycle_seconds
        while self._recent_preemptions and self._recent_preemptions[0] <= window_start:
            self._recent_preemptions.popleft()
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
            max_preemptions=settings.max_preemptions_per_cycle - len(self._recent_preemptions),
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
                if self.hooks.lower_shutdown_time is not None:
                    self.hooks.lower_shutdown_time(stored, preempt.shutdown_time, now)
            except OSError as error:
                log.error("cannot pre-empt machine name=%s error=%s; it runs on", preempt.name, error)
                continue
            log.info(
                "pre-empting machine name=%s machinetype=%s processors=%d shutdown_time=%d for=%s",
                preempt.name, preempt.machinetype, preempt.processors, preempt.shutdown_time, preempt.gaining,
            )
            self._preempted[stored.record.uuid] = preempt.shutdown_time
            self._recent_preemptions.append(now)
            report.preemptions.append(preempt)

    def _creations_allowed(self, settings: Settings, now: int) -> tuple[int, Optional[int]]:
        """How many creations the last cycle_seconds leave, and when the next one frees up."""
        window_start = now - settings.cycle_seconds
        while self._recent_creations and self._recent_creations[0] <= window_start:
            self._recent_creations.popleft()
        allowed = settings.max_creations_per_cycle - len(self._recent_creations)
        if allowed > 0 or not self._recent_creations:
            return max(0, allowed), None
        return 0, int(math.ceil(self._recent_creations[0] + settings.cycle_seconds))

    def _show_creation(self, report: PassReport, record: MachineRecord) -> None:
        """The slot of a machine this pass started creating, as Starting, in the published report."""
        stored = self.store.slot_binding(record.name)
        if stored is None:
            return
        for index, slot in enumerate(report.slots):
            if slot.identity.machine_name == record.name:
                report.slots[index] = SlotStatus(slot.identity, "Starting", stored)
                return

    def _log_backoff_changes(self, backoff_until: Mapping[str, int], now: int) -> None:
        """One line when a machinetype's backoff starts or moves, and one when it ends."""
        for name, until in sorted(backoff_until.items()):
            if self._backoffs.get(name) != until:
                log.info("backoff machinetype=%s until=%d (in %ds)", name, until, until - now)
        for name in sorted(set(self._backoffs) - set(backoff_until)):
            log.info("backoff ended machinetype=%s", name)
        self._backoffs = dict(backoff_until)

    # ------------------------------------------------------------------ configuration and faults
    def _config_for_pass(self, now: int) -> tuple[Optional[Config], Optional[str]]:
        """This pass's configuration, and the error of a bad reading.

        After a bad reload the last good configuration goes on being used for policing,
        finalising and accounting; only creation stops (item 9). With none, nothing is touched.
        """
        try:
            config = self.config_source.current()
        except ConfigErrors as errors:
            text = str(errors)
            if text != self._reported_config_errors:
                self._reported_config_errors = text
                for problem in errors.problems:
                    if self._last_good_config is None:
                        log.error("configuration error, no machine touched or created: %s", problem)
                    else:
                        log.error("configuration error, creating nothing; policing under the last good "
                                  "configuration: %s", problem)
            self._set_fault("config", text, now)
            return self._last_good_config, text
        if self._reported_config_errors is not None:
            log.info("configuration is good again; creating resumes")
            self._reported_config_errors = None
        self._clear_fault("config")
        self._last_good_config = config
        return config, None

    def _disk_problem_contained(self, settings: Settings) -> Optional[str]:
        try:
            return self.disk_problem(settings)
        except Exception as error:  # boundary: a disk we cannot examine is treated as too full
            log.exception("cannot check free disk space")
            return f"disk: cannot check free space: {error}"

    def note_fault(self, kind: str, message: str) -> None:
        """A fault found outside the pass (the guest network): creation stops until it clears."""
        self._set_fault(kind, message, int(self.clock()))

    def clear_fault(self, kind: str) -> None:
        self._clear_fault(kind)

    def _creation_blocked_by(self) -> Optional[str]:
        """A factory-wide fault that stops creation, as the gate reason (config, network).

        The disk fault has its own scheduler input (`disk_problem`), whose words already say "disk: ".
        """
        for kind in ("config", "network"):
            fault = self._faults.get(kind)
            if fault is not None:
                first_line = fault.message.splitlines()[0] if fault.message else ""
                return f"{kind}: {first_line}"
        return None

    def _set_fault(self, kind: str, message: str, now: int) -> None:
        current = self._faults.get(kind)
        self._faults[kind] = Fault(kind, message, current.since if current is not None else now)

    def _clear_fault(self, kind: str) -> None:
        if self._faults.pop(kind, None) is not None:
            log.info("fault cleared kind=%s", kind)

    def _fault_list(self) -> list[Fault]:
        return [self._faults[kind] for kind in sorted(self._faults)]

    # ------------------------------------------------------------------ slots in and beyond the range
    def _identities_in_range(self, settings: Settings) -> list[SlotIdentity]:
        return [slot_identity(settings.factory_name, ordinal) for ordinal in range(settings.num_machine_slots)]

    def _note_slot_range(self, settings: Settings) -> None:
        if self._configured_slots is not None and self._configured_slots != settings.num_machine_slots:
            log.warning(
                "slot count changed from %d to %d; machines in slots beyond the range are policed, "
                "finalised and accounted until they are gone",
                self._configured_slots,
                settings.num_machine_slots,
            )
        self._configured_slots = settings.num_machine_slots

    def _identities_beyond_range(
        self, settings: Settings, observed: Mapping[str, ObservedMachine]
    ) -> list[SlotIdentity]:
        """Slots bound to a live machine that the configured range does not cover (item 7).

        They come from a lowered host_processors or a changed factory_name: the slots/
        directory still binds them, so they are managed until their machine is gone.
        """
        in_range = {identity.machine_name for identity in self._identities_in_range(settings)}
        identities = []
        for machine_name in self.store.bound_machine_names():
            if machine_name in in_range:
                continue
            try:
                stored = self.store.slot_binding(machine_name)
            except (VacError, OSError) as error:
                log.warning("unreadable slot binding beyond the range name=%s error=%s", machine_name, error)
                continue
            if stored is None:
                # A Vac 03 machine under a name of this factory's, beyond today's range.
                identity = self._vac03_identity(settings, machine_name)
                if identity is not None:
                    identities.append(identity)
                continue
            if stored.has_finished and machine_name not in observed:
                continue
            identities.append(_identity_of_record(stored.record))
        return identities

    def _vac03_identity(self, settings: Settings, machine_name: str) -> Optional[SlotIdentity]:
        directory = self.store.bound_directory(machine_name)
        ordinal = ordinal_of_machine_name(settings.factory_name, machine_name)
        if directory is None or ordinal is None or not is_vac03_directory(directory):
            return None
        return slot_identity(settings.factory_name, ordinal)

    def _take_over_vac03_slot(
        self, settings: Settings, identity: SlotIdentity, domain: Optional[ObservedMachine]
    ) -> Optional[Vac03Plan]:
        """The plan for a slot Vac 03 left (adopted here when it can be), or None if it is not one."""
        name = identity.machine_name
        directory = self.store.bound_directory(name)
        if directory is None or not is_vac03_directory(directory):
            return None
        plan = plan_vac03_slot(settings, name, directory, domain)
        if plan.action is TakeOver.ADOPT:
            adopt(plan)
            log.info("took over Vac 03 machine: %s", plan.describe())
            self._vac03_told.pop(name, None)
        elif self._vac03_told.get(name) != plan.describe():
            # Said once per change, not every pass: a held machine may run for days.
            self._vac03_told[name] = plan.describe()
            log.warning("Vac 03 machine %s", plan.describe())
        return plan

    def _release_beyond_range(self, status: SlotStatus) -> None:
        """A beyond-range slot whose machine is finalised and gone: unbind it, once."""
        assert status.machine is not None
        if status.machine.record.name in self._in_flight:
            return
        log.info("slot beyond the configured range released name=%s", status.identity.machine_name)
        self.store.free_slot(status.machine.record)

    def _destroy_unbound_zombies(
        self, settings: Settings, observed: Mapping[str, ObservedMachine], report: PassReport
    ) -> None:
        """A domain named as this factory names slots, outside the range and bound to nothing."""
        known = {slot.identity.machine_name for slot in report.slots}
        for name, machine in observed.items():
            if name in known or ordinal_of_machine_name(settings.factory_name, name) is None:
                continue
            with self._lock:
                busy = name in self._in_flight
            if busy:
                continue
            log.warning("zombie machine beyond the slot range name=%s uuid=%s: no live record, destroying",
                        name, machine.uuid)
            self._destroy_in_background(name, machine.uuid)

    # ------------------------------------------------------------------ per-slot error boundary
    def _reconcile_slot_contained(
        self,
        settings: Settings,
        machinetypes: Mapping[str, Machinetype],
        identity: SlotIdentity,
        observed: Mapping[str, ObservedMachine],
        now: int,
        report: PassReport,
    ) -> Optional[tuple[SlotStatus, SlotView, Optional[int]]]:
        """Reconcile one slot inside its error boundary: its trouble stays in it (item 1).

        A slot that raised is shown as busy (never free: nobody knows what runs there) and is
        left alone until its retry time; the other slots go on.
        """
        name = identity.machine_name
        current = self._slot_errors.get(name)
        if current is not None and now < current.retry_at:
            return self._slot_in_error(settings, identity, current)
        progress = _StepProgress()
        try:
            result = self._reconcile_slot(settings, machinetypes, identity, observed, now, report, progress)
        except Exception as error:  # boundary: one slot's fault must not stop the pass
            step = "account" if isinstance(error, AccountingDeferred) else progress.step
            slot_error = self._record_slot_error(identity, step, error, now, current)
            return self._slot_in_error(settings, identity, slot_error)
        if current is not None:
            log.info("slot recovered name=%s after %d failed attempts (last step=%s)", name, current.count, current.step)
            del self._slot_errors[name]
        return result

    def _record_slot_error(
        self, identity: SlotIdentity, step: str, error: Exception, now: int, previous: Optional[SlotError]
    ) -> SlotError:
        count = previous.count + 1 if previous is not None else 1
        delay = min(SLOT_ERROR_MAX_BACKOFF_SECONDS, SLOT_ERROR_FIRST_BACKOFF_SECONDS * 2 ** min(count - 1, 20))
        text = f"{type(error).__name__}: {error}"
        same = previous is not None and previous.step == step and previous.error == text
        slot_error = SlotError(
            ordinal=identity.ordinal,
            machine_name=identity.machine_name,
            step=step,
            error=text,
            since=previous.since if same and previous is not None else now,
            count=count,
            retry_at=now + delay,
        )
        self._slot_errors[identity.machine_name] = slot_error
        self.slot_error_totals[step] = self.slot_error_totals.get(step, 0) + 1
        if same or isinstance(error, (AccountingDeferred, StoreError)):
            # Logged in full once (these two were logged where they arose); a repeat is one
            # line, and it comes at the backoff's pace.
            log.error("slot error again name=%s step=%s count=%d error=%s retry_in=%ds",
                      identity.machine_name, step, count, text, delay)
        else:
            log.exception("slot error name=%s slot=%d step=%s retry_in=%ds; other slots go on",
                          identity.machine_name, identity.ordinal, step, delay)
        return slot_error

    def _slot_in_error(
        self, settings: Settings, identity: SlotIdentity, slot_error: SlotError
    ) -> tuple[SlotStatus, SlotView, Optional[int]]:
        stored: Optional[StoredMachine]
        try:
            stored = self.store.slot_binding(identity.machine_name)
        except Exception:  # boundary: the status of a slot in error is best-effort
            stored = None
        record = stored.record if stored is not None else None
        # Not free, whatever the store says: a creation over an unknown state could run twice.
        view = SlotView(
            identity.ordinal,
            record.machinetype if record is not None else "(slot error)",
            record.processors if record is not None else 0,
            record.shutdown_time if record is not None else None,
            record.hs06 if record is not None else 0.0,
        )
        status = SlotStatus(identity, "Error", stored)
        return status, view, slot_error.retry_at

    # ------------------------------------------------------------------ per slot
    def _reconcile_slot(
        self,
        settings: Settings,
        machinetypes: Mapping[str, Machinetype],
        identity: SlotIdentity,
        observed: Mapping[str, ObservedMachine],
        now: int,
        report: PassReport,
        progress: Optional["_StepProgress"] = None,
    ) -> tuple[SlotStatus, SlotView, Optional[int]]:
        progress = progress or _StepProgress()
        progress.step = "observe"
        name = identity.machine_name
        free_view = SlotView(identity.ordinal)
        domain = observed.get(name)
        with self._lock:
            action = self._in_flight.get(name)
            busy = action is not None or name in self._busy_at_observation
        lookup = self.store.lookup_slot(name)
        if lookup.condition == SlotCondition.CORRUPT:
            # The store has set the record aside. Whatever runs under the name is not adopted
            # but destroyed, and the slot waits in error (never free) until it is retried.
            if domain is not None and not busy:
                progress.step = "destroy"
                log.warning("destroying machine whose record is corrupt name=%s uuid=%s", name, domain.uuid)
                self._destroy_in_background(name, domain.uuid)
                progress.step = "observe"
            raise StoreError(f"slot record set aside as corrupt: {lookup.problem}")
        stored = lookup.machine
        if stored is None and not busy:
            progress.step = "adopt"
            plan = self._take_over_vac03_slot(settings, identity, domain)
            if plan is not None and plan.action is TakeOver.ADOPT:
                stored = self.store.slot_binding(name)
            elif plan is not None and plan.action is TakeOver.HOLD:
                # Not ours to stop, and not free: its processors stay counted as in use.
                return SlotStatus(identity, "Held", None, note=plan.reason), SlotView(
                    identity.ordinal, "(vac 03 machine)", plan.processors
                ), None
            progress.step = "observe"

        if stored is None or stored.has_finished:
            message = stored.finish.shutdown_message if stored and stored.finish else None
            if busy:
                # A destroy (of a zombie, or after finalising) is still running: the slot is
                # not free until it has finished (item 5: no create over a running destroy).
                return SlotStatus(identity, "Stopping", stored, shutdown_message=message), SlotView(
                    identity.ordinal, "(stopping)"
                ), None
            if domain is not None:
                progress.step = "destroy"
                log.warning("zombie machine name=%s uuid=%s: no live record, destroying", name, domain.uuid)
                self._destroy_in_background(name, domain.uuid)
                return SlotStatus(identity, "Stopping", stored, shutdown_message=message), SlotView(
                    identity.ordinal, "(stopping)"
                ), None
            return SlotStatus(identity, "Shut down", stored, shutdown_message=message), free_view, None

        record = stored.record
        live_view = SlotView(identity.ordinal, record.machinetype, record.processors, record.shutdown_time, record.hs06)
        if busy:
            state = "Starting" if action == "create" or not stored.has_started else "Stopping"
            return SlotStatus(identity, state, stored), live_view, None

        if domain is not None and domain.uuid != record.uuid:
            progress.step = "destroy"
            log.warning("zombie machine name=%s uuid=%s: slot record says uuid=%s", name, domain.uuid, record.uuid)
            self._destroy_in_background(name, domain.uuid)
            return SlotStatus(identity, "Stopping", stored), live_view, None

        if domain is None:
            progress.step = "finalise"
            message = None if stored.has_started else FAILED_TO_START
            finish = self._finalise(settings, machinetypes.get(record.machinetype), stored, now, message)
            report.finished.append((record, finish))
            return SlotStatus(identity, "Shut down", stored, shutdown_message=finish.shutdown_message), free_view, None

        cpu_seconds = domain.cpu_seconds
        if not stored.has_started and domain.state != ObservedState.RUNNING:
            # Unconfirmed and not running: after its own restart libvirtd lists a domain it was
            # still starting ("paused, starting up") and then kills it as not fully started.
            # Adopting it now would call that death a 0-second fizzle and back the space off.
            if now < record.created_time + PAUSED_GRACE_SECONDS:
                return SlotStatus(identity, "Starting", stored, cpu_seconds), live_view, record.created_time + PAUSED_GRACE_SECONDS
            log.warning("machine never confirmed and not running, destroying name=%s uuid=%s state=%s",
                        name, record.uuid, domain.state.value)
            progress.step = "destroy"
            self.store.request_destroy(record, now, FAILED_TO_START)
            self._destroy_in_background(name, record.uuid)
            return SlotStatus(identity, "Stopping", stored), live_view, None
        if not stored.has_started:
            # The backend created it but we died before writing `started`: adopt it.
            log.info("adopting machine whose creation was not confirmed (a restart, a lost libvirt connection) name=%s uuid=%s", name, record.uuid)
            self.store.mark_started(record, now)
            stored = self.store.slot_binding(name) or stored

        progress.step = "police"
        if domain.state == ObservedState.PAUSED and now < (stored.started_time or now) + PAUSED_GRACE_SECONDS:
            # Just created: libvirt may not have resumed its vCPUs yet. Look again next pass.
            return SlotStatus(identity, "Starting", stored, cpu_seconds), live_view, now + PAUSED_GRACE_SECONDS
        if domain.state == ObservedState.PAUSED:
            log.warning("machine paused, destroying name=%s", name)
            self.store.request_destroy(record, now, None)
            self._destroy_in_background(name, record.uuid)
            return SlotStatus(identity, "Paused", stored, cpu_seconds), live_view, None

        try:
            self._write_heartbeat(record, cpu_seconds, now)
        except OSError as error:
            # A full or failing disk costs the heartbeat, never the policing below (item 4).
            log.warning("cannot write heartbeat name=%s error=%s; policing goes on", name, error)
        if stored.destroy_request is not None:
            return self._continue_stopping(settings, identity, stored, cpu_seconds, now), live_view, (
                stored.destroy_request.requested_time + settings.shutdown_grace_seconds
            )

        shutdown_time = effective_shutdown_time(record.shutdown_time, settings.shutdown_time)
        if shutdown_time < record.shutdown_time:
            log.info("lowering shutdown time name=%s shutdown_time=%s", name, shutdown_time)
            record = lowered(record, shutdown_time)
            self.store.update_record(record)
            if self.hooks.lower_shutdown_time is not None:
                self.hooks.lower_shutdown_time(stored, shutdown_time, now)
        machinetype = machinetypes.get(record.machinetype)
        heartbeat_mtime = None
        if machinetype is not None and machinetype.heartbeat_file and self.hooks.heartbeat_file_mtime is not None:
            heartbeat_mtime = self.hooks.heartbeat_file_mtime(stored, machinetype.heartbeat_file)
        reason = stop_reason(
            RunningMachine(
                now=now,
                started_time=stored.started_time or now,
                shutdown_time=record.shutdown_time,
                global_shutdown_time=settings.shutdown_time,
                vacd_start_time=self.vacd_start_time,
                heartbeat_file_mtime=heartbeat_mtime,
                preempted=record.uuid in self._preempted,
            ),
            machinetype,
        )
        if reason is not None:
            log.info("stopping machine name=%s reason=%r", name, reason)
            try:
                self.store.request_destroy(record, now, reason)
            except OSError as error:
                # The decision cannot be recorded (disk full?): stop the machine anyway; the
                # finalising pass retries the record once the disk allows (item 4).
                log.error("cannot record the stop, destroying at once name=%s error=%s", name, error)
                self._destroy_in_background(name, record.uuid)
                return SlotStatus(identity, "Stopping", stored, cpu_seconds), live_view, None
            stored = self.store.slot_binding(name) or stored
            return self._continue_stopping(settings, identity, stored, cpu_seconds, now), live_view, (
                now + settings.shutdown_grace_seconds
            )
        state = "Running" if domain.state == ObservedState.RUNNING else "Stopping"
        return SlotStatus(identity, state, stored, cpu_seconds), live_view, record.shutdown_time + 1

    def _continue_stopping(
        self, settings: Settings, identity: SlotIdentity, stored: StoredMachine, cpu_seconds: float, now: int
    ) -> SlotStatus:
        """ACPI first; a hard destroy once the grace has passed (§1.7, without blocking)."""
        name = stored.record.name
        assert stored.destroy_request is not None
        if now >= stored.destroy_request.requested_time + settings.shutdown_grace_seconds:
            log.info("grace over, destroying name=%s", name)
            self._destroy_in_background(name, stored.record.uuid)
        elif name not in self._shutdown_sent:
            try:
                self.backend.shutdown(name)
                self._shutdown_sent.add(name)
            except BackendError as error:
                log.warning("ACPI shutdown failed name=%s error=%s; will destroy after grace", name, error)
        return SlotStatus(identity, "Stopping", stored, cpu_seconds)

    def _write_heartbeat(self, record: MachineRecord, cpu_seconds: float, now: int) -> None:
        previous = self._previous_cpu.get(record.name)
        percentage = None
        if previous is not None and now > previous[0]:
            percentage = max(0.0, 100.0 * (cpu_seconds - previous[1]) / (now - previous[0]))
        self._previous_cpu[record.name] = (float(now), cpu_seconds)
        self.store.write_heartbeat(record, Heartbeat(now, cpu_seconds, percentage))

    # ------------------------------------------------------------------ finishing
    def _finalise(
        self,
        settings: Settings,
        machinetype: Optional[Machinetype],
        stored: StoredMachine,
        now: int,
        factory_message: Optional[str],
    ) -> FinishRecord:
        """Account the machine, tell monitoring, then mark it finished.

        Raises:
            AccountingDeferred: its APEL record could not be written. Nothing is marked, so
                the next pass finalises it again (issue 8 item 10: exactly once, not at most).
        """
        record = stored.record
        if factory_message is not None:
            self.store.request_destroy(record, now, factory_message)
        last_heartbeat = stored.heartbeat.time if stored.heartbeat else stored.started_time
        cpu_seconds = stored.heartbeat.cpu_seconds if stored.heartbeat else 0.0
        # The factory's reason is also in destroy_requested, for when the guest left
        # something unusable where its message goes and the reason could not be written there.
        factory_said = stored.destroy_request.shutdown_message if stored.destroy_request is not None else None
        judged = self.store.judged_shutdown_message(record, stored.started_time, now, factory_said or factory_message)
        said = judged.message.text if judged is not None else factory_said
        fizzle_seconds = machinetype.fizzle_seconds if machinetype is not None else 0
        # A silent early end is a fizzle (acceptance 22; Vac 03's version never ran, §3.5).
        message = effective_outcome(said or factory_message, stored.started_time, last_heartbeat or now, fizzle_seconds)
        distrust_reason = judged.distrust_reason if judged is not None else None
        verdict_instead = None
        if distrust_reason is not None:
            # Not shown to be this machine's guest's (issue 11 item 4): the text stays for
            # the admin, APEL and status; the space's abort rule reads the outcome as if the
            # guest had said nothing, so a leftover cannot back the space off nor hide a fizzle.
            verdict_instead = effective_outcome(
                factory_said or factory_message, stored.started_time, last_heartbeat or now, fizzle_seconds
            )
            log.warning(
                "shutdown message not used for the space's backoff name=%s uuid=%s message=%r reason=%s verdict=%r",
                record.name, record.uuid, message, distrust_reason, verdict_instead,
            )
        finish = FinishRecord(
            finished_time=now,
            shutdown_message=message,
            shutdown_message_time=self._message_time(stored, message, now),
            started_time=stored.started_time,
            last_heartbeat_time=last_heartbeat,
            cpu_seconds=cpu_seconds,
            distrust_reason=distrust_reason,
            verdict_instead=verdict_instead,
        )
        if self.hooks.account is not None:
            try:
                self.hooks.account(settings, machinetype, record, finish)
            except Exception as error:  # any failure: the record is owed, so the machine is not finished
                log.error("accounting failed name=%s uuid=%s error=%s retry=next pass", record.name, record.uuid, error)
                raise AccountingDeferred(record.name, str(error)) from error
        for hook in self.hooks.on_finished:
            try:
                hook(settings, machinetype, record, finish)
            except Exception:  # boundary: monitoring must not stop finalisation
                log.exception("finish hook failed name=%s", record.name)
        self.store.finish(record, finish)
        self._shutdown_sent.discard(record.name)
        self._previous_cpu.pop(record.name, None)
        self._preempted.pop(record.uuid, None)
        log.info(
            "finished machine name=%s machinetype=%s message=%r",
            record.name,
            record.machinetype,
            message,
        )
        return finish

    def _message_time(self, stored: StoredMachine, message: Optional[str], now: int) -> Optional[int]:
        """When the outcome was said: the guest's receipt time, the factory's decision, or now."""
        if message is None:
            return None
        if self.hooks.shutdown_message_time is not None:
            received = self.hooks.shutdown_message_time(stored)
            if received is not None:
                return received
        if stored.destroy_request is not None and stored.destroy_request.shutdown_message == message:
            return stored.destroy_request.requested_time
        return now

    # ------------------------------------------------------------------ creating and destroying
    def _start_creation(
        self, settings: Settings, machinetype: Machinetype, create: Create, now: int
    ) -> Optional[MachineRecord]:
        """Write the record and hand the creation to the pool; the record, or None if it failed at once."""
        identity = slot_identity(settings.factory_name, create.ordinal)
        hs06_per_processor = settings.hs06_per_processor or 1.0
        record = MachineRecord(
            name=identity.machine_name,
            ordinal=create.ordinal,
            uuid=str(uuid_module.uuid4()),
            machinetype=machinetype.name,
            machine_model=machinetype.machine_model,
            processors=create.processors,
            created_time=now,
            shutdown_time=effective_shutdown_time(create.shutdown_time, settings.shutdown_time),
            ip_address=identity.ip_address,
            hs06=hs06_per_processor * create.processors,
            mb=settings.mb_per_processor * create.processors,
            # Fixed now, as Vac fixed machinefeatures/hs06: a later hs06_per_processor must
            # not make this machine's stand-in 1.0 go to APEL (vacd.accounting).
            hs06_known=settings.hs06_per_processor is not None,
        )
        with self._lock:
            running = self._in_flight.get(record.name)
            if running is None:
                self._in_flight[record.name] = "create"
        if running is not None:
            # The scheduler never sees such a slot as free; this guards the invariant (item 5).
            log.error("not creating name=%s: a %s is still in flight for it", record.name, running)
            return None
        try:
            # A machine directory is never reused (issue 8 item 10): a slot re-created within
            # the second of its last creation takes the next second in Vac's name (§1.4).
            for tries_left in reversed(range(MAX_DIRECTORY_NAME_TRIES)):
                try:
                    self.store.begin_creation(record)
                    break
                except MachineDirectoryExists:
                    if tries_left == 0:
                        raise
                    record = dataclasses.replace(record, created_time=record.created_time + 1)
        except Exception as error:  # boundary (step "create"): one machine's failure stays its own
            self._creation_failed(record, now, error)
            return None
        log.info(
            "creating machine name=%s slot=%d machinetype=%s processors=%d shutdown_time=%d%s",
            record.name,
            record.ordinal,
            record.machinetype,
            record.processors,
            record.shutdown_time,
            " probe=yes" if create.is_probe else "",
        )
        urls = remote_image_urls(machinetype)
        if urls and self.hooks.prefetch_images is not None:
            # The record stays in flight while its images download, so its slot is not reused.
            images = self.hooks.prefetch_images(urls, machinetype.vacuum_pipe is not None)
            images.add_done_callback(
                lambda done: self._submit(self._create_in_background, record, settings, machinetype, identity, done,
                                          time.monotonic())
            )
        else:
            self._submit(self._create_in_background, record, settings, machinetype, identity, None, time.monotonic())
        return record

    def _submit(self, function: Callable[..., None], *arguments: object) -> None:
        """Run `function` on the pool, tracked so wait_for_background_work waits for all of it."""
        future: Future[None] = self.executor.submit(function, *arguments)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget_future)

    def _forget_future(self, future: "Future[None]") -> None:
        with self._lock:
            self._futures.discard(future)

    def _create_in_background(
        self,
        record: MachineRecord,
        settings: Settings,
        machinetype: Machinetype,
        identity: SlotIdentity,
        images: "Optional[Future[dict[str, Path]]]",
        submitted_at: float,
    ) -> None:
        """Contextualise (a user_data URL may be slow), build the spec and create the machine, off the loop."""
        started = self.clock()
        # Phases are timed on the monotonic clock (vacd.creationphases); the backend times its own.
        observe_phase = self.hooks.creation_phase
        observe(observe_phase, "queue", time.monotonic() - submitted_at)
        ok = False
        try:
            if self.hooks.contextualise is not None:
                with timed(observe_phase, "contextualise"):
                    self.hooks.contextualise(settings, machinetype, record, record.created_time)
            fetch_image = images.result().__getitem__ if images is not None else self.hooks.fetch_image
            with timed(observe_phase, "machine_spec"):
                spec = machine_spec(settings, machinetype, record, identity, self.store.machine_dir(record),
                                    fetch_image, self.hooks.qemu_access, self.image_verifier)
            self.backend.create(spec)
            with timed(observe_phase, "record"):
                self.store.mark_started(record, int(self.clock()))
            with self._lock:
                self._creation_failures.pop(record.machinetype, None)
            self._clear_error()
            ok = True
            log.info("created machine name=%s uuid=%s seconds=%.1f", record.name, record.uuid, self.clock() - started)
        except BackendOutcomeUnknown as error:
            # Not a failure yet: libvirtd died mid-call and the machine may be running. The
            # record stays unstarted; the next listing adopts it if its UUID runs, and
            # finalises it as 700 Failed to start if not (a libvirtd restart kills nothing).
            log.warning("creation cut short name=%s machinetype=%s error=%s: the next listing decides",
                        record.name, record.machinetype, error)
        except Exception as error:  # boundary: one machine's failure must not stop the loop
            self._creation_failed(record, int(self.clock()), error)
        finally:
            for hook in self.hooks.on_created:
                try:
                    hook(record, self.clock() - started, ok)
                except Exception:
                    log.exception("creation hook failed name=%s", record.name)
            with self._lock:
                self._in_flight.pop(record.name, None)
            self.wake("created")

    def _creation_failed(self, record: MachineRecord, now: int, error: BaseException) -> None:
        """Back the machinetype off locally, record why, and leave the slot to be finalised."""
        with self._lock:
            failures, _ = self._creation_failures.get(record.machinetype, (0, 0))
            delay = min(CREATION_FAILURE_MAX_BACKOFF_SECONDS, CREATION_FAILURE_FIRST_BACKOFF_SECONDS * 2**min(failures, 20))
            self._creation_failures[record.machinetype] = (failures + 1, now + delay)
            self.last_error = f"{record.name} ({record.machinetype}): {error}"
            last_error = self.last_error
            self.slot_error_totals["create"] = self.slot_error_totals.get("create", 0) + 1
        log.error(
            "creation failed name=%s machinetype=%s error=%s retry_in=%ds", record.name, record.machinetype, error, delay
        )
        try:
            self.store.request_destroy(record, now, FAILED_TO_START)
            self.store.paths.factory_error_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.store.paths.factory_error_file, last_error + "\n")
        except OSError as write_error:
            log.error("cannot record creation failure name=%s error=%s", record.name, write_error)
        with self._lock:
            self._in_flight.pop(record.name, None)

    def _clear_error(self) -> None:
        with self._lock:
            self.last_error = None
        try:
            self.store.paths.factory_error_file.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("cannot remove %s error=%s", self.store.paths.factory_error_file, error)

    def _destroy_in_background(self, name: str, uuid: Optional[str]) -> None:
        with self._lock:
            if name in self._in_flight:
                return
            failures = self._destroy_failures.get(name)
            if failures is not None and self.clock() < failures[1]:
                return  # the pass that follows the retry time asks again (_destroy_retry_times)
            self._in_flight[name] = "destroy"
        self._submit(self._destroy, name, uuid)

    def _destroy(self, name: str, uuid: Optional[str]) -> None:
        try:
            self.backend.destroy(name, uuid)
            log.info("destroyed machine name=%s uuid=%s", name, uuid)
        except Exception as error:  # boundary: retried for this slot after its backoff
            with self._lock:
                self.slot_error_totals["destroy"] = self.slot_error_totals.get("destroy", 0) + 1
                failures, _ = self._destroy_failures.get(name, (0, 0.0))
                delay = min(DESTROY_RETRY_MAX_SECONDS, DESTROY_RETRY_FIRST_SECONDS * 2 ** min(failures, 20))
                self._destroy_failures[name] = (failures + 1, self.clock() + delay)
                self._in_flight.pop(name, None)
            log.error("destroy failed name=%s error=%s failures_in_a_row=%d retry_in=%ds",
                      name, error, failures + 1, delay)
            # No wake: nothing changed, and a woken pass would only find the retry not yet due.
            return
        with self._lock:
            self._destroy_failures.pop(name, None)
            self._in_flight.pop(name, None)
        self.wake("destroyed")

    def _destroy_retry_times(self, now: int) -> list[int]:
        """When failed destroys fall due again: the loop wakes for them, not before."""
        with self._lock:
            return [int(math.ceil(at)) for _, at in self._destroy_failures.values() if at > now]

    def in_flight(self) -> dict[str, str]:
        """Machine name -> the action running for it on the pool, as of now."""
        with self._lock:
            return dict(self._in_flight)

    def wait_for_background_work(self, timeout_seconds: Optional[float] = None) -> bool:
        """Block until every creation and destroy submitted has finished; False on timeout."""
        while True:
            with self._lock:
                pending = set(self._futures)
                idle = not pending and not self._in_flight
            if idle:
                return True
            if pending:
                _, not_done = wait(pending, timeout=timeout_seconds)
                if not_done:
                    return False
            else:
                # In flight but not yet submitted (between the mark and the submit): moments.
                self.wake_event.wait(0.01)

    # ------------------------------------------------------------------ housekeeping
    def _housekeeping(self, machinetypes: Mapping[str, Machinetype], now: int) -> None:
        """Delete old machine directories (§1.8), at most once per HOUSEKEEPING_SECONDS."""
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + HOUSEKEEPING_SECONDS
        bound = {directory.name for directory in self.store.bound_directories()}
        directories = []
        for directory in self.store.all_machine_dirs():
            # None: no readable record (a creation killed early, or quarantined): judged by its age.
            stored = self.store.load_machine(directory)
            heartbeat = stored.heartbeat.time if stored is not None and stored.heartbeat else None
            has_finished = stored is not None and stored.has_finished
            directories.append(MachineDirectory(directory.name, heartbeat, has_finished, directory.name in bound))
        for name in expired(directories, machinetypes, now):
            log.info("deleting old machine directory name=%s", name)
            self.store.remove_machine_dir(self.store.paths.machines_dir / name)

    # ------------------------------------------------------------------ reporting
    def _status_from_store_contained(self, settings: Settings, ordinal: int) -> SlotStatus:
        try:
            return self._status_from_store(settings, ordinal)
        except Exception as error:  # boundary: a status line is not worth a pass
            log.warning("cannot read slot %d for the status error=%s", ordinal, error)
            return SlotStatus(slot_identity(settings.factory_name, ordinal), "Error", None)

    def _status_from_store(self, settings: Settings, ordinal: int) -> SlotStatus:
        identity = slot_identity(settings.factory_name, ordinal)
        stored = self.store.slot_binding(identity.machine_name)
        if stored is None or stored.has_finished:
            return SlotStatus(identity, "Shut down", stored)
        return SlotStatus(identity, "Running" if stored.has_started else "Starting", stored)

    def _local_reports(
        self, settings: Settings, machinetypes: Mapping[str, Machinetype], slots: Sequence[SlotStatus], now: int
    ) -> list[MachinetypeReport]:
        """This factory's own machinetype_status values (§3.5), from this pass's observations."""
        running_hs06 = {name: 0.0 for name in machinetypes}
        running_machines = {name: 0 for name in machinetypes}
        before_fizzle = {name: 0 for name in machinetypes}
        for slot in slots:
            stored = slot.machine
            if stored is None or slot.state == "Shut down" or stored.record.machinetype not in machinetypes:
                continue
            record = stored.record
            running_hs06[record.machinetype] += record.hs06
            running_machines[record.machinetype] += 1
            fizzle_seconds = machinetypes[record.machinetype].fizzle_seconds
            if stored.started_time is None or now < stored.started_time + fizzle_seconds:
                before_fizzle[record.machinetype] += 1
        reports = []
        for name in machinetypes:
            try:
                last = self.store.last_finished(name)
            except Exception as error:  # boundary: a bad finishes/ pointer loses the outcome, not the pass
                log.warning("cannot read the last finished machine machinetype=%s error=%s", name, error)
                last = None
            # The verdict, not the text: a message not shown to be the guest's backs no one off.
            message = last.finish.verdict if last and last.finish else None
            message_time = None
            if last is not None and last.finish is not None:
                message_time = last.finish.shutdown_message_time or last.finish.finished_time
            reports.append(
                MachinetypeReport(
                    factory=settings.factory_name,
                    machinetype=name,
                    running_hs06=running_hs06[name],
                    num_before_fizzle=before_fizzle[name],
                    shutdown_message=message,
                    shutdown_time=message_time,
                    shutdown_machine=last.record.name if last is not None else None,
                    running_machines=running_machines[name],
                )
            )
        return reports



class _StepProgress:
    """Which step of a slot's reconcile is running, so a contained error names it."""

    def __init__(self) -> None:
        self.step = "observe"


def _identity_of_record(record: MachineRecord) -> SlotIdentity:
    """The identity a machine was created with (its slot may be beyond today's range or name)."""
    return SlotIdentity(
        ordinal=record.ordinal,
        machine_name=record.name,
        ip_address=record.ip_address,
        mac_address=mac_address_for(record.ip_address),
        vnc_port=VNC_BASE_PORT + record.ordinal,
    )
