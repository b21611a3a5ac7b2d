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

The pass and policing are this module's; each other job is a module of its own, owned by
the Factory: vacd/backgroundactions.py (creations and destroys on the pool, their backoffs),
vacd/slotrange.py (the slots in and beyond the configured range), vacd/sloterrors.py (the
per-slot error boundary's backoff), vacd/faults.py (factory-wide faults),
vacd/finalising.py (outcome, accounting, finished), vacd/preemptor.py (pre-emptions made
and remembered), vacd/passreport.py (what a pass publishes) and vacd/factoryhooks.py (the
hooks). The names callers import from vacd.factory are re-exported here (`__all__`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import random
import threading
from concurrent.futures import Executor
from typing import Callable, Mapping, Optional, Protocol, Sequence

from vacd.backends.base import Backend, ObservedMachine, ObservedState
from vacd.backgroundactions import BackgroundActions
from vacd.config import Config, Machinetype, Settings
from vacd.errors import AccountingDeferred, BackendError, ConfigErrors, StoreError
from vacd.factoryhooks import Contextualiser, FactoryHooks, PeerReports
from vacd.faults import Fault, Faults
from vacd.finalising import finalise
from vacd.housekeeping import MachineDirectory, expired
from vacd.outcomes import FAILED_TO_START
from vacd.passreport import SLOT_STEPS, PassReport, RunningTotals, SlotError, SlotStatus
from vacd.peeroutcomes import PeerOutcomes
from vacd.policing import RunningMachine, effective_shutdown_time, stop_reason
from vacd.preemptor import Preemptor
from vacd.records import Heartbeat, MachineRecord, SlotCondition, StoredMachine, lowered
from vacd.scheduler import MachinetypeReport, RandomSource, SchedulerInput, SlotView, decide, gate
from vacd.sloterrors import SLOT_ERROR_FIRST_BACKOFF_SECONDS, SlotErrors, StepProgress
from vacd.slotrange import SlotRange
from vacd.slots import SlotIdentity, slot_identity
from vacd.store import Store
from vacd.vac03state import TakeOver, Vac03TakeOver

# The factory's public face: what the daemon, the simulator and the tests import from here,
# wherever it is defined (the report values, the hooks and the constants tests wait on).
__all__ = [
    "PAUSED_GRACE_SECONDS",
    "HOUSEKEEPING_SECONDS",
    "SLOT_ERROR_FIRST_BACKOFF_SECONDS",
    "SLOT_STEPS",
    "ConfigSource",
    "Contextualiser",
    "Factory",
    "FactoryHooks",
    "Fault",
    "PassReport",
    "PeerReports",
    "RunningTotals",
    "SlotError",
    "SlotStatus",
]

log = logging.getLogger(__name__)

# A machine seen paused within this time of its start is still starting, not stuck (§1.5 step 4).
PAUSED_GRACE_SECONDS = 30
# Old machine directories are looked at hourly; Vac looked every cycle (§1.8), needlessly.
HOUSEKEEPING_SECONDS = 3600


class ConfigSource(Protocol):
    def current(self) -> Config:
        """The configuration to use for this pass; raise ConfigErrors if it is bad."""


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
        # The pure scheduler is given its randomness; this edge module owns the source.
        self.tie_break: RandomSource = tie_break or random.Random()
        self.wake_event = threading.Event()
        # The per-slot error boundary's memory; its totals are vac_slot_errors_total{step}, which
        # the pool's failed creations and destroys count into too.
        self._slot_errors = SlotErrors()
        self.slot_error_totals: dict[str, int] = self._slot_errors.totals
        # Creations and destroys on the pool. What the pool threads change is in there, behind its
        # lock; a finished action sets wake_event, as wake() does.
        self._actions = BackgroundActions(store, backend, executor, clock=clock, wake_event=self.wake_event,
                                          error_totals=self.slot_error_totals)
        self._slot_range = SlotRange(store, self._actions)
        self._vac03 = Vac03TakeOver(store)
        self._faults = Faults()
        # Pre-emption (opt-in): its picks and what the next census needs of them.
        self._preemptor = Preemptor(store)
        self._shutdown_sent: set[str] = set()
        self._previous_cpu: dict[str, tuple[float, float]] = {}  # name -> (time, cpu seconds)
        self._next_housekeeping = 0
        # Names with an action in flight when this pass listed the machines (see run_pass).
        self._busy_at_observation: set[str] = set()
        self._backoffs: dict[str, int] = {}
        self._peer_outcomes = PeerOutcomes()
        # Policing, finalising and accounting go on under this after a bad reload (item 9).
        self._last_good_config: Optional[Config] = initial_config
        self._reported_config_errors: Optional[str] = None
        self._last_local_reports: list[MachinetypeReport] = []
        self._recent_creations: collections.deque[int] = collections.deque()

    @property
    def last_error(self) -> Optional[str]:
        """The last creation failure, until a creation succeeds (also in the factory error file)."""
        return self._actions.last_error

    def in_flight(self) -> dict[str, str]:
        """Machine name -> the action running for it on the pool, as of now."""
        return self._actions.in_flight()

    def wait_for_background_work(self, timeout_seconds: Optional[float] = None) -> bool:
        """Block until every creation and destroy submitted has finished; False on timeout."""
        return self._actions.wait_for_background_work(timeout_seconds)

    # ------------------------------------------------------------------ the pass
    def wake(self, reason: str = "") -> None:
        self.wake_event.set()

    def run_pass(self) -> PassReport:
        now = int(self.clock())
        config, config_error = self._config_for_pass(now)
        if config is None:
            return PassReport(now, None, {}, config_error=config_error, faults=self._faults.as_list())
        settings, machinetypes = config.settings, config.machinetypes
        report = PassReport(now, settings, machinetypes, config_error=config_error)
        self._slot_range.note(settings)
        # Taken before listing: a creation that ends while the list is made must not be judged
        # on a listing that saw it half-made (QEMU starts paused until libvirt resumes it).
        self._busy_at_observation = set(self._actions.in_flight())
        try:
            observed = {machine.name: machine for machine in self.backend.list_machines()}
        except BackendError as error:
            log.error("cannot list machines, no action this pass error=%s", error)
            self._faults.note("listing", f"cannot list machines: {error}", now)
            report.observe_error = str(error)
            report.slots = [self._status_from_store_contained(settings, ordinal) for ordinal in range(settings.num_machine_slots)]
            # Peers get the last good report, not an empty one; its age shows in the factory
            # heartbeat time, which only a completed pass moves (issue 9 item 4).
            report.local_reports = list(self._last_local_reports)
            report.faults = self._faults.as_list()
            report.slot_errors = self._slot_errors.as_list()
            return report
        self._faults.clear("listing")

        slot_views: list[SlotView] = []
        wake_times: list[int] = []
        in_range = self._slot_range.in_range(settings)
        beyond = self._slot_range.beyond_range(settings, in_range, observed)
        held_ordinals = {identity.ordinal for identity in beyond}
        for identity in [*in_range, *beyond]:
            is_beyond = identity.ordinal >= settings.num_machine_slots or identity in beyond
            result = self._reconcile_slot_contained(settings, machinetypes, identity, observed, now, report)
            if result is None:
                continue
            status, view, wake_at = result
            if is_beyond:
                status = dataclasses.replace(status, beyond_range=True)
                if status.state == "Shut down" and status.machine is not None:
                    self._slot_range.release(status)
            report.slots.append(status)
            # A free slot beyond the range is not the scheduler's to fill; an in-range slot whose
            # address a renamed factory's machine still holds is not free either.
            if is_beyond and not view.is_free:
                slot_views.append(view)
            elif not is_beyond and not (view.is_free and identity.ordinal in held_ordinals):
                slot_views.append(view)
            if wake_at is not None:
                wake_times.append(wake_at)
        self._slot_range.destroy_unbound_zombies(settings, observed, report)
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
            self._faults.note("disk", disk_problem, now)
        elif "disk" in self._faults:
            log.info("disk has room again, creation resumes")
            self._faults.clear("disk")
        creation_failure_until = self._actions.creation_failure_until()
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
            blocked_by=self._faults.creation_blocked_by() or (
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
            and self._preemptor.census_due(now)
        )
        census_heard = False
        # No query is sent when a gate blocks creation (acceptance 28): the census would be wasted.
        if (could_create or may_preempt) and self.hooks.peer_reports is not None:
            if may_preempt:
                self._preemptor.census_asked(settings, now)
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
        self._preemptor.forget_proofs([*decisions.outlook.backoff_until, *decisions.outlook.probing_until])
        for create in decisions.creates:
            started = self._actions.start_creation(settings, machinetypes[create.machinetype], create, now, self.hooks)
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
            self._preemptor.preempt(settings, machinetypes, report, [*report.local_reports, *peer_reports],
                                    decisions, free_processors, now, self.hooks.lower_shutdown_time)
            wake_times.extend(preempt.shutdown_time + 1 for preempt in report.preemptions)
        for until in decisions.outlook.backoff_until.values():
            wake_times.append(until + 1)
        wake_times.extend(self._slot_errors.retry_times())
        wake_times.extend(self._actions.destroy_retry_times(now))
        if wake_times:
            report.next_wake_seconds = max(1.0, min(wake_times) - now)
        report.faults = self._faults.as_list()
        report.slot_errors = self._slot_errors.as_list()
        return report

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
            self._faults.note("config", text, now)
            return self._last_good_config, text
        if self._reported_config_errors is not None:
            log.info("configuration is good again; creating resumes")
            self._reported_config_errors = None
        self._faults.clear("config")
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
        self._faults.note(kind, message, int(self.clock()))

    def clear_fault(self, kind: str) -> None:
        self._faults.clear(kind)

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
        current = self._slot_errors.current(name)
        if current is not None and now < current.retry_at:
            return self._slot_in_error(settings, identity, current)
        progress = StepProgress()
        try:
            result = self._reconcile_slot(settings, machinetypes, identity, observed, now, report, progress)
        except Exception as error:  # boundary: one slot's fault must not stop the pass
            step = "account" if isinstance(error, AccountingDeferred) else progress.step
            slot_error = self._slot_errors.record(identity, step, error, now)
            return self._slot_in_error(settings, identity, slot_error)
        if current is not None:
            self._slot_errors.recovered(name)
        return result

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
        progress: Optional[StepProgress] = None,
    ) -> tuple[SlotStatus, SlotView, Optional[int]]:
        progress = progress or StepProgress()
        progress.step = "observe"
        name = identity.machine_name
        free_view = SlotView(identity.ordinal)
        domain = observed.get(name)
        action = self._actions.action_for(name)
        busy = action is not None or name in self._busy_at_observation
        lookup = self.store.lookup_slot(name)
        if lookup.condition == SlotCondition.CORRUPT:
            # The store has set the record aside. Whatever runs under the name is not adopted
            # but destroyed, and the slot waits in error (never free) until it is retried.
            if domain is not None and not busy:
                progress.step = "destroy"
                log.warning("destroying machine whose record is corrupt name=%s uuid=%s", name, domain.uuid)
                self._actions.start_destroy(name, domain.uuid)
                progress.step = "observe"
            raise StoreError(f"slot record set aside as corrupt: {lookup.problem}")
        stored = lookup.machine
        if stored is None and not busy:
            progress.step = "adopt"
            plan = self._vac03.take_over(settings, identity, domain)
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
                self._actions.start_destroy(name, domain.uuid)
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
            self._actions.start_destroy(name, domain.uuid)
            return SlotStatus(identity, "Stopping", stored), live_view, None

        if domain is None:
            progress.step = "finalise"
            message = None if stored.has_started else FAILED_TO_START
            finish = finalise(self.store, self.hooks, settings, machinetypes.get(record.machinetype), stored, now,
                              message)
            self._forget(record)
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
            self._actions.start_destroy(name, record.uuid)
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
            self._actions.start_destroy(name, record.uuid)
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
                preempted=self._preemptor.is_preempted(record.uuid),
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
                self._actions.start_destroy(name, record.uuid)
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
            self._actions.start_destroy(name, stored.record.uuid)
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
    def _forget(self, record: MachineRecord) -> None:
        """A machine finalised (vacd/finalising.py): drop what this factory kept of it between passes."""
        self._shutdown_sent.discard(record.name)
        self._previous_cpu.pop(record.name, None)
        self._preemptor.forget(record.uuid)

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
