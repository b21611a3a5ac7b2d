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
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import uuid as uuid_module
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Protocol, Sequence

from vacd.atomicfile import write_atomic
from vacd.backends.base import Backend, ObservedMachine, ObservedState
from vacd.config import Config, Machinetype, Settings
from vacd.errors import BackendError, ConfigErrors, VacError
from vacd.housekeeping import MachineDirectory, expired
from vacd.machinespec import machine_spec
from vacd.outcomes import FAILED_TO_START, effective_outcome
from vacd.policing import RunningMachine, effective_shutdown_time, stop_reason
from vacd.scheduler import Create, Decisions, MachinetypeReport, RandomSource, SchedulerInput, SlotView, decide, gate
from vacd.slots import SlotIdentity, slot_identity
from vacd.store import FinishRecord, Heartbeat, MachineRecord, Store, StoredMachine, lowered

log = logging.getLogger(__name__)

# Creation failures back off per machinetype: 30 s doubling to an hour (Vac retried every cycle).
CREATION_FAILURE_FIRST_BACKOFF_SECONDS = 30
CREATION_FAILURE_MAX_BACKOFF_SECONDS = 3600
# A machine seen paused within this time of its start is still starting, not stuck (§1.5 step 4).
PAUSED_GRACE_SECONDS = 30
# Old machine directories are looked at hourly; Vac looked every cycle (§1.8), needlessly.
HOUSEKEEPING_SECONDS = 3600


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
SLOT_STEPS = ("observe", "finalise", "police", "account", "housekeeping", "create", "destroy")


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
    on_finished: list[Callable[[Settings, Optional[Machinetype], MachineRecord, FinishRecord], None]] = field(
        default_factory=list
    )
    on_created: list[Callable[[MachineRecord, float, bool], None]] = field(default_factory=list)
    lower_shutdown_time: Optional[Callable[[StoredMachine, int, int], None]] = None
    heartbeat_file_mtime: Optional[Callable[[StoredMachine, str], Optional[float]]] = None
    shutdown_message_time: Optional[Callable[[StoredMachine], Optional[int]]] = None
    fetch_image: Optional[Callable[[str], Path]] = None
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
        # The pure scheduler is given its randomness; this edge module owns the source.
        self.tie_break: RandomSource = tie_break or random.Random()
        self.wake_event = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._shutdown_sent: set[str] = set()
        self._creation_failures: dict[str, tuple[int, int]] = {}  # machinetype -> (failures, until)
        self._previous_cpu: dict[str, tuple[float, float]] = {}  # name -> (time, cpu seconds)
        self.last_error: Optional[str] = None
        self._next_housekeeping = 0
        self._busy_at_observation: set[str] = set()
        self._backoffs: dict[str, int] = {}
        # Cumulative count of contained per-slot errors by step (vac_slot_errors_total{step}).
        self.slot_error_totals: dict[str, int] = {step: 0 for step in SLOT_STEPS}

    # ------------------------------------------------------------------ the pass
    def wake(self, reason: str = "") -> None:
        self.wake_event.set()

    def run_pass(self) -> PassReport:
        now = int(self.clock())
        try:
            config = self.config_source.current()
        except ConfigErrors as errors:
            for problem in errors.problems:
                log.error("configuration error, no machine touched or created this pass: %s", problem)
            return PassReport(now, None, {}, config_error=str(errors))
        settings, machinetypes = config.settings, config.machinetypes
        report = PassReport(now, settings, machinetypes)
        # Taken before listing: a creation that ends while the list is made must not be judged
        # on a listing that saw it half-made (QEMU starts paused until libvirt resumes it).
        with self._lock:
            self._busy_at_observation = set(self._in_flight)
        try:
            observed = {machine.name: machine for machine in self.backend.list_machines()}
        except BackendError as error:
            log.error("cannot list machines, no action this pass error=%s", error)
            report.observe_error = str(error)
            report.slots = [self._status_from_store(settings, ordinal) for ordinal in range(settings.num_machine_slots)]
            return report

        slot_views: list[SlotView] = []
        wake_times: list[int] = []
        for ordinal in range(settings.num_machine_slots):
            identity = slot_identity(settings.factory_name, ordinal)
            status, view, wake_at = self._reconcile_slot(settings, machinetypes, identity, observed, now, report)
            report.slots.append(status)
            slot_views.append(view)
            if wake_at is not None:
                wake_times.append(wake_at)

        report.local_reports = self._local_reports(settings, machinetypes, report.slots, now)
        self._housekeeping(machinetypes, now)
        local_state = SchedulerInput(
            now=now,
            settings=settings,
            machinetypes=machinetypes,
            slots=slot_views,
            reports=report.local_reports,
            load_average=self.load_average(),
            host_cpu_count=self.host_cpu_count,
            draining=self.is_draining(),
            creation_failure_until={name: until for name, (_, until) in self._creation_failures.items()},
        )
        peer_reports: Sequence[MachinetypeReport] = ()
        running_processors = sum(view.processors for view in slot_views if not view.is_free)
        could_create = gate(local_state, running_processors) is None and any(view.is_free for view in slot_views)
        # No query is sent when a gate blocks creation (acceptance 28): the census would be wasted.
        if could_create and self.hooks.peer_reports is not None:
            try:
                peer_reports = [
                    peer for peer in self.hooks.peer_reports(settings, machinetypes, now) if peer.factory != settings.factory_name
                ]
            except Exception:  # boundary: a census failure must not stop local scheduling
                log.exception("census failed; scheduling on local knowledge only")
        now = int(self.clock())
        decisions = decide(
            dataclasses.replace(local_state, now=now, reports=[*report.local_reports, *peer_reports]),
            self.tie_break,
        )
        report.decisions = decisions
        self._log_backoff_changes(decisions.outlook.backoff_until, now)
        for create in decisions.creates:
            self._start_creation(settings, machinetypes[create.machinetype], create, now)
        for until in decisions.outlook.backoff_until.values():
            wake_times.append(until + 1)
        if wake_times:
            report.next_wake_seconds = max(1.0, min(wake_times) - now)
        return report

    def _log_backoff_changes(self, backoff_until: Mapping[str, int], now: int) -> None:
        """One line when a machinetype's backoff starts or moves, and one when it ends."""
        for name, until in sorted(backoff_until.items()):
            if self._backoffs.get(name) != until:
                log.info("backoff machinetype=%s until=%d (in %ds)", name, until, until - now)
        for name in sorted(set(self._backoffs) - set(backoff_until)):
            log.info("backoff ended machinetype=%s", name)
        self._backoffs = dict(backoff_until)

    # ------------------------------------------------------------------ per slot
    def _reconcile_slot(
        self,
        settings: Settings,
        machinetypes: Mapping[str, Machinetype],
        identity: SlotIdentity,
        observed: Mapping[str, ObservedMachine],
        now: int,
        report: PassReport,
    ) -> tuple[SlotStatus, SlotView, Optional[int]]:
        name = identity.machine_name
        free_view = SlotView(identity.ordinal)
        domain = observed.get(name)
        with self._lock:
            busy = name in self._in_flight or name in self._busy_at_observation
        stored = self.store.slot_binding(name)

        if stored is None or stored.has_finished:
            if domain is not None and not busy:
                log.warning("zombie machine name=%s uuid=%s: no live record, destroying", name, domain.uuid)
                self._destroy_in_background(name, domain.uuid)
            message = stored.finish.shutdown_message if stored and stored.finish else None
            return SlotStatus(identity, "Shut down", stored, shutdown_message=message), free_view, None

        record = stored.record
        live_view = SlotView(identity.ordinal, record.machinetype, record.processors, record.shutdown_time, record.hs06)
        if busy:
            state = "Starting" if not stored.has_started else "Stopping"
            return SlotStatus(identity, state, stored), live_view, None

        if domain is not None and domain.uuid != record.uuid:
            log.warning("zombie machine name=%s uuid=%s: slot record says uuid=%s", name, domain.uuid, record.uuid)
            self._destroy_in_background(name, domain.uuid)
            return SlotStatus(identity, "Stopping", stored), live_view, None

        if domain is None:
            message = None if stored.has_started else FAILED_TO_START
            finish = self._finalise(settings, machinetypes.get(record.machinetype), stored, now, message)
            report.finished.append((record, finish))
            return SlotStatus(identity, "Shut down", stored, shutdown_message=finish.shutdown_message), free_view, None

        cpu_seconds = domain.cpu_seconds
        if not stored.has_started:
            # The backend created it but we died before writing `started`: adopt it.
            log.info("adopting machine created before a restart name=%s uuid=%s", name, record.uuid)
            self.store.mark_started(record, now)
            stored = self.store.slot_binding(name) or stored

        if domain.state == ObservedState.PAUSED and now < (stored.started_time or now) + PAUSED_GRACE_SECONDS:
            # Just created: libvirt may not have resumed its vCPUs yet. Look again next pass.
            return SlotStatus(identity, "Starting", stored, cpu_seconds), live_view, now + PAUSED_GRACE_SECONDS
        if domain.state == ObservedState.PAUSED:
            log.warning("machine paused, destroying name=%s", name)
            self.store.request_destroy(record, now, None)
            self._destroy_in_background(name, record.uuid)
            return SlotStatus(identity, "Paused", stored, cpu_seconds), live_view, None

        self._write_heartbeat(record, cpu_seconds, now)
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
            ),
            machinetype,
        )
        if reason is not None:
            log.info("stopping machine name=%s reason=%r", name, reason)
            self.store.request_destroy(record, now, reason)
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
        record = stored.record
        if factory_message is not None:
            self.store.request_destroy(record, now, factory_message)
        last_heartbeat = stored.heartbeat.time if stored.heartbeat else stored.started_time
        cpu_seconds = stored.heartbeat.cpu_seconds if stored.heartbeat else 0.0
        # A silent early end is a fizzle (acceptance 22; Vac 03's version never ran, §3.5).
        message = effective_outcome(
            self.store.read_shutdown_message(record),
            stored.started_time,
            last_heartbeat or now,
            machinetype.fizzle_seconds if machinetype is not None else 0,
        )
        finish = FinishRecord(
            finished_time=now,
            shutdown_message=message,
            shutdown_message_time=self._message_time(stored, message, now),
            started_time=stored.started_time,
            last_heartbeat_time=last_heartbeat,
            cpu_seconds=cpu_seconds,
        )
        for hook in self.hooks.on_finished:
            try:
                hook(settings, machinetype, record, finish)
            except Exception:  # boundary: accounting or monitoring must not stop finalisation
                log.exception("finish hook failed name=%s", record.name)
        self.store.finish(record, finish)
        self._shutdown_sent.discard(record.name)
        self._previous_cpu.pop(record.name, None)
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
    def _start_creation(self, settings: Settings, machinetype: Machinetype, create: Create, now: int) -> None:
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
        )
        with self._lock:
            self._in_flight.add(record.name)
        try:
            self.store.begin_creation(record)
            if self.hooks.contextualise is not None:
                self.hooks.contextualise(settings, machinetype, record, now)
        except (VacError, OSError) as error:
            self._creation_failed(record, now, error)
            return
        log.info(
            "creating machine name=%s slot=%d machinetype=%s processors=%d shutdown_time=%d%s",
            record.name,
            record.ordinal,
            record.machinetype,
            record.processors,
            record.shutdown_time,
            " probe=yes" if create.is_probe else "",
        )
        self.executor.submit(self._create_in_background, record, settings, machinetype, identity)

    def _create_in_background(
        self, record: MachineRecord, settings: Settings, machinetype: Machinetype, identity: SlotIdentity
    ) -> None:
        """Build the spec (fetching a remote image if need be) and create the machine, off the loop."""
        started = self.clock()
        ok = False
        try:
            spec = machine_spec(
                settings, machinetype, record, identity, self.store.machine_dir(record), self.hooks.fetch_image,
                self.hooks.qemu_access,
            )
            self.backend.create(spec)
            self.store.mark_started(record, int(self.clock()))
            self._creation_failures.pop(record.machinetype, None)
            self._clear_error()
            ok = True
            log.info("created machine name=%s uuid=%s seconds=%.1f", record.name, record.uuid, self.clock() - started)
        except Exception as error:  # boundary: one machine's failure must not stop the loop
            self._creation_failed(record, int(self.clock()), error)
        finally:
            for hook in self.hooks.on_created:
                try:
                    hook(record, self.clock() - started, ok)
                except Exception:
                    log.exception("creation hook failed name=%s", record.name)
            with self._lock:
                self._in_flight.discard(record.name)
            self.wake("created")

    def _creation_failed(self, record: MachineRecord, now: int, error: BaseException) -> None:
        failures, _ = self._creation_failures.get(record.machinetype, (0, 0))
        delay = min(CREATION_FAILURE_MAX_BACKOFF_SECONDS, CREATION_FAILURE_FIRST_BACKOFF_SECONDS * 2**failures)
        self._creation_failures[record.machinetype] = (failures + 1, now + delay)
        self.last_error = f"{record.name} ({record.machinetype}): {error}"
        log.error(
            "creation failed name=%s machinetype=%s error=%s retry_in=%ds", record.name, record.machinetype, error, delay
        )
        try:
            self.store.request_destroy(record, now, FAILED_TO_START)
            self.store.paths.factory_error_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.store.paths.factory_error_file, self.last_error + "\n")
        except OSError:
            log.exception("cannot record creation failure name=%s", record.name)
        with self._lock:
            self._in_flight.discard(record.name)

    def _clear_error(self) -> None:
        self.last_error = None
        try:
            self.store.paths.factory_error_file.unlink()
        except FileNotFoundError:
            pass

    def _destroy_in_background(self, name: str, uuid: Optional[str]) -> None:
        with self._lock:
            if name in self._in_flight:
                return
            self._in_flight.add(name)
        self.executor.submit(self._destroy, name, uuid)

    def _destroy(self, name: str, uuid: Optional[str]) -> None:
        try:
            self.backend.destroy(name, uuid)
            log.info("destroyed machine name=%s uuid=%s", name, uuid)
        except Exception as error:  # boundary: retried by the next pass
            log.error("destroy failed name=%s error=%s retry=next pass", name, error)
        finally:
            with self._lock:
                self._in_flight.discard(name)
            self.wake("destroyed")

    def wait_for_background_work(self) -> None:
        """Block until no creation or destroy is in flight (for orderly stops and tests)."""
        while True:
            with self._lock:
                if not self._in_flight:
                    return
            self.wake_event.wait(0.05)
            self.wake_event.clear()

    # ------------------------------------------------------------------ housekeeping
    def _housekeeping(self, machinetypes: Mapping[str, Machinetype], now: int) -> None:
        """Delete old machine directories (§1.8), at most once per HOUSEKEEPING_SECONDS."""
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + HOUSEKEEPING_SECONDS
        directories = []
        for directory in self.store.all_machine_dirs():
            try:
                stored = self.store.load_machine(directory)
            except VacError:
                continue
            if stored is None:
                continue
            heartbeat = stored.heartbeat.time if stored.heartbeat else None
            directories.append(MachineDirectory(directory.name, heartbeat, stored.has_finished))
        for name in expired(directories, machinetypes, now):
            log.info("deleting old machine directory name=%s", name)
            self.store.remove_machine_dir(self.store.paths.machines_dir / name)

    # ------------------------------------------------------------------ reporting
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
        before_fizzle = {name: 0 for name in machinetypes}
        for slot in slots:
            stored = slot.machine
            if stored is None or slot.state == "Shut down" or stored.record.machinetype not in machinetypes:
                continue
            record = stored.record
            running_hs06[record.machinetype] += record.hs06
            fizzle_seconds = machinetypes[record.machinetype].fizzle_seconds
            if stored.started_time is None or now < stored.started_time + fizzle_seconds:
                before_fizzle[record.machinetype] += 1
        reports = []
        for name in machinetypes:
            last = self.store.last_finished(name)
            message = last.finish.shutdown_message if last and last.finish else None
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
                )
            )
        return reports

