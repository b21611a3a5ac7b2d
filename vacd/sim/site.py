"""A whole site on virtual time: N real `vacd.factory.Factory`s, a simulated backend and network.

Theory of operation. Nothing here decides what a factory does (issue 9 item 1): each
factory is the real `Factory` (its reconcile, policing, finalising, census hook and
scheduler) over the real `Store` (on a tmpfs), wired with the daemon's observation
collaborator (`vacd.observations.GuestObservations`). The simulator only supplies what the
daemon gets from the world:

- time: `VirtualClock` reads the `EventLoop`, so an hour of site time costs only its events;
- the pool: `VirtualExecutor` runs each creation or destroy `creation_seconds` after it was
  submitted, so the factory's in-flight tracking and wake-ups work as in production;
- machines: `SimBackend` implements `vacd.backends.base.Backend`. A machine's image is its
  payload: each creation draws an `Outcome` of its machinetype; when the payload ends it
  uploads joboutputs/shutdown_message as a guest does through the guest API
  (`vacd.guestapi.joboutputs.store_upload`, receipt time recorded) and powers off; a
  machine told to stop (ACPI, e.g. at max_wallclock_seconds) powers off `acpi_seconds`
  later without a message. Power-offs wake the factory as libvirt's events do;
- the daemon's loop (`Daemon._one_iteration`): a pass, its publication (`build_snapshot`,
  the daemon's own function, encoded for the responder), then a wait of
  min(cycle_seconds, next_wake_seconds) cut short by the factory's wake event;
- the census: the factory's `peer_reports` hook runs the real `vacquery.client.Census`
  over `events.SimNetwork` to every peer's real `vacquery.responder.respond`, and turns
  what it heard into reports with `vacd.peers.reports_from`, as `PeerCensus` does. While
  the census runs, the rest of the site goes on: each factory's pass runs on its own
  thread, strictly in turn with the event loop (`_PassTurns`), and the hook hands the
  census to the loop and waits for its virtual deadline. With census="model" the hook
  draws the census from `model.CensusModel` instead (for sites too big for datagrams).

Not simulated: contextualisation (no guest reads user_data here), APEL accounting, the
guest API's HTTP, disk space and load (both always fine), and DNS (names are given).
"""

from __future__ import annotations

import queue
import random
import shutil
import tempfile
import threading
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from vacd.backends.base import MachineSpec, ObservedMachine, ObservedState
from vacd.config import Config, FactoryAddress, Machinetype, Settings
from vacd.errors import BackendError
from vacd.factory import Factory, FactoryHooks, PassReport
from vacd.guestapi.joboutputs import Sender, store_upload
from vacd.observations import GuestObservations
from vacd.outcomes import is_abort
from vacd.paths import Paths
from vacd.peers import census_deadline_seconds, reports_from
from vacd.scheduler import MachinetypeReport
from vacd.sim.events import EventLoop, SimNetwork
from vacd.sim.model import CensusModel, bernoulli_positions
from vacd.sim.scenario import SPACE, MachinetypeScenario, Sample, SampleTally, Scenario, SiteRun, take_sample
from vacd.snapshot import HostFacts, build_snapshot
from vacd.recordformats import SHUTDOWN_MESSAGE_FILE
from vacd.store import Store
from vacquery.client import Census
from vacquery.codec import EncodedSnapshot, encode_snapshot
from vacquery.messages import MessageType
from vacquery.responder import respond

# Virtual time 0 is this Unix time: records, heartbeats and MJF files hold Unix times.
EPOCH = 1_700_000_000
# A payload's joboutputs quota; its one upload is a short message.
JOBOUTPUTS_QUOTA_BYTES = 1024 * 1024
# The simulated host is always healthy: these are what every factory publishes.
HOST_FACTS = HostFacts(load_average=0.0, kernel_version="sim", os_issue="sim", boot_time=EPOCH,
                       root_disk_avail_kb=10**9, root_disk_avail_inodes=10**7, state_disk_avail_kb=10**9,
                       state_disk_avail_inodes=10**7, swap_used_kb=0, swap_free_kb=0, mem_used_kb=0,
                       mem_total_kb=10**9)


class VirtualClock:
    """The factories' clock: Unix seconds on the site's virtual time."""

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop

    def __call__(self) -> float:
        return EPOCH + self.loop.now


class VirtualExecutor(Executor):
    """The factory's action pool on virtual time: each job runs `delay_seconds` after submission.

    Jobs run on the event loop's thread, one at a time, and complete their futures, so
    `Factory.wait_for_background_work` returns once the loop has run past them.
    `after_each` runs after every job (the driver looks at the factory's wake event then).
    """

    def __init__(self, loop: EventLoop, delay_seconds: float, after_each: Callable[[], None] = lambda: None) -> None:
        self.loop = loop
        self.delay_seconds = delay_seconds
        self.after_each = after_each
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> "Future[Any]":
        future: Future[Any] = Future()
        self.submitted += 1
        self.loop.at(self.loop.now + self.delay_seconds, self._run, future, fn, args, kwargs)
        return future

    def _run(self, future: "Future[Any]", fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # handed to whoever waits on the future, as a pool does
            future.set_exception(error)
        finally:
            self.after_each()


@dataclass
class _SimMachine:
    spec: MachineSpec
    machinetype: str
    created: float  # virtual seconds
    stopping: bool = False


@dataclass
class BusyCount:
    """Processors running per machinetype, over every backend of the site."""

    processors: dict[str, int] = field(default_factory=dict)
    # After a demand step: when the first machine of each stepped machinetype that found work
    # was created (its fizzle_seconds later the space can tell the type has work).
    first_working_creation: dict[str, float] = field(default_factory=dict)

    def add(self, machinetype: str, processors: int) -> None:
        self.processors[machinetype] = self.processors.get(machinetype, 0) + processors


class SimBackend:
    """`vacd.backends.base.Backend` whose machines run simulated payloads (module rules)."""

    def __init__(self, loop: EventLoop, payloads: Mapping[Path, MachinetypeScenario], rng: random.Random,
                 busy: BusyCount, *, acpi_seconds: float, on_event: Callable[[], None] = lambda: None) -> None:
        self.loop = loop
        self.payloads = payloads
        self.rng = rng
        self.busy = busy
        self.acpi_seconds = acpi_seconds
        self.on_event = on_event
        self.machines: dict[str, _SimMachine] = {}
        self.created = 0
        self._wake: Optional[Callable[[str], None]] = None

    def create(self, spec: MachineSpec) -> None:
        if spec.name in self.machines:
            raise BackendError("create", spec.name, "already exists")
        profile = self.payloads.get(spec.root_image) if spec.root_image is not None else None
        if profile is None:
            raise BackendError("create", spec.name, f"no simulated payload for image {spec.root_image}")
        now = self.loop.now
        machine = _SimMachine(spec, profile.name, now)
        self.machines[spec.name] = machine
        self.busy.add(profile.name, spec.processors)
        self.created += 1
        message, seconds = profile.draw(now, self.rng)
        if profile.step_seconds is not None and now >= profile.step_seconds and not is_abort(message):
            self.busy.first_working_creation.setdefault(profile.name, now)
        self.loop.at(now + seconds, self._payload_ends, machine, message)

    def shutdown(self, name: str) -> None:
        machine = self.machines.get(name)
        if machine is not None and not machine.stopping:
            # ACPI: the guest's init stops the payload, which has no time to report.
            machine.stopping = True
            self.loop.at(self.loop.now + self.acpi_seconds, self._power_off, machine)

    def destroy(self, name: str, uuid: Optional[str] = None) -> None:
        machine = self.machines.get(name)
        if machine is not None and (uuid is None or machine.spec.uuid == uuid):
            self._remove(machine)

    def list_machines(self) -> Sequence[ObservedMachine]:
        now = self.loop.now
        return [
            ObservedMachine(name, machine.spec.uuid, ObservedState.RUNNING,
                            (now - machine.created) * machine.spec.processors)
            for name, machine in self.machines.items()
        ]

    def watch(self, wake: Callable[[str], None]) -> None:
        self._wake = wake

    def close(self) -> None:
        return None

    def _payload_ends(self, machine: _SimMachine, message: Optional[str]) -> None:
        if self.machines.get(machine.spec.name) is not machine or machine.stopping:
            return
        if message is not None:
            store_upload(machine.spec.machine_dir / "joboutputs", SHUTDOWN_MESSAGE_FILE, message.encode() + b"\n",
                         int(EPOCH + self.loop.now), JOBOUTPUTS_QUOTA_BYTES,
                         Sender(machine.spec.uuid, machine.spec.ip_address))
        self._power_off(machine)

    def _power_off(self, machine: _SimMachine) -> None:
        if self.machines.get(machine.spec.name) is not machine:
            return
        self._remove(machine)
        if self._wake is not None:
            self._wake(machine.spec.name)  # libvirt's lifecycle event
        self.on_event()

    def _remove(self, machine: _SimMachine) -> None:
        del self.machines[machine.spec.name]
        self.busy.add(machine.machinetype, -machine.spec.processors)


@dataclass(frozen=True)
class _CensusRequest:
    """What a factory's census hook asks of the event loop."""

    settings: Settings
    now: float


class _SiteClosed(BaseException):
    """The site stopped while this pass waited for its census."""


class _PassTurns:
    """Runs one factory's passes on a thread of its own, strictly in turn with the event loop.

    The loop thread calls `start` or `resume` and blocks until the pass thread either
    finishes the pass ("done", report) or waits for the loop ("census", request): only one
    of the two threads ever runs, so a run is exactly repeatable.
    """

    def __init__(self, name: str) -> None:
        self._to_pass: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._to_loop: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._main, name=f"sim-pass-{name}", daemon=True)
        self._thread.start()

    def start(self, run_pass: Callable[[], PassReport]) -> tuple[str, Any]:
        self._to_pass.put(("run", run_pass))
        return self._answer()

    def resume(self, value: object) -> tuple[str, Any]:
        self._to_pass.put(("resume", value))
        return self._answer()

    def wait_for_loop(self, request: _CensusRequest) -> Any:
        """On the pass thread: hand `request` to the loop; return what the loop resumes with."""
        self._to_loop.put(("census", request))
        kind, value = self._to_pass.get()
        if kind == "stop":
            raise _SiteClosed()  # not an Exception: no boundary of the factory catches it
        return value

    def stop(self) -> None:
        self._to_pass.put(("stop", None))
        self._thread.join(timeout=10)

    def _answer(self) -> tuple[str, Any]:
        kind, value = self._to_loop.get()
        if kind == "error":
            raise value
        return kind, value

    def _main(self) -> None:
        while True:
            kind, run_pass = self._to_pass.get()
            if kind == "stop":
                return
            try:
                self._to_loop.put(("done", run_pass()))
            except _SiteClosed:
                return
            except BaseException as error:  # re-raised on the loop thread
                self._to_loop.put(("error", error))


class SimFactory:
    """One factory of the site: the real Factory, its store and backend, and the daemon's loop."""

    def __init__(self, site: "Site", index: int, settings: Settings, root: Path) -> None:
        self.site = site
        self.index = index
        self.name = settings.factory_name
        self.settings = settings
        loop = site.loop
        paths = Paths(root)
        paths.ensure_state_dirs()
        self.backend = SimBackend(loop, site.payloads, random.Random(site.rng.getrandbits(64)), site.busy,
                                  acpi_seconds=site.scenario.acpi_seconds, on_event=self._after_event)
        self.executor = VirtualExecutor(loop, site.scenario.creation_seconds, after_each=self._after_event)
        hooks = GuestObservations().install(FactoryHooks(
            peer_reports=self._peer_reports,
            on_created=[self._count_creation],
            on_finished=[self._count_finish],
        ))
        config = Config(settings, site.machinetypes)
        self.factory = Factory(
            Store(paths),
            self.backend,
            _StaticConfig(config),
            self.executor,
            clock=site.clock,
            load_average=lambda: 0.0,
            host_cpu_count=settings.total_processors,
            vacd_start_time=int(site.clock()),
            hooks=hooks,
            tie_break=random.Random(site.rng.getrandbits(64)),
            initial_config=config,
        )
        if settings.wake_on_events:
            self.backend.watch(self.factory.wake)
        self.turns = _PassTurns(self.name)
        self.encoded: Optional[EncodedSnapshot] = None
        self.published: tuple[MachinetypeReport, ...] = ()
        self.backoff: frozenset[str] = frozenset()
        self.smoothed_rtt: Optional[float] = None
        self.in_pass = False
        self.next_pass_at = float("inf")
        self._pass_token = 0

    # The daemon's loop
    def schedule_pass(self, when: float) -> None:
        self._pass_token += 1
        self.next_pass_at = when
        self.site.loop.at(when, self._pass, self._pass_token)

    def _after_event(self) -> None:
        """A pool job ended or a machine powered off: the daemon's wait ends if the factory woke."""
        if self.settings.wake_on_events and not self.in_pass and self.factory.wake_event.is_set() \
                and self.next_pass_at > self.site.loop.now:
            self.schedule_pass(self.site.loop.now)

    def _pass(self, token: int) -> None:
        if token != self._pass_token:
            return
        self.in_pass = True
        self.factory.wake_event.clear()
        self._handle(self.turns.start(self.factory.run_pass))

    def _handle(self, answer: tuple[str, Any]) -> None:
        kind, value = answer
        if kind == "census":
            self.site.start_census(self, value)
            return
        self._end_pass(value)

    def census_done(self, reports: Sequence[MachinetypeReport]) -> None:
        self._handle(self.turns.resume(reports))

    def _end_pass(self, report: PassReport) -> None:
        now = self.site.loop.now
        self.in_pass = False
        self._publish(report)
        if report.decisions is not None:
            backoff = frozenset(report.decisions.outlook.backoff_until)
            self.site.tally.backoff_events += len(backoff - self.backoff)
            self.backoff = backoff
        for preempt in report.preemptions:
            self.site.tally.preemptions += 1
            self.site.tally.preempted_processors += preempt.processors
            self.site.tally.lost_processor_seconds += preempt.processors * (preempt.shutdown_time - preempt.started_time)
        settings = report.settings or self.settings
        wait = settings.cycle_seconds
        if settings.wake_on_events:
            if report.next_wake_seconds is not None:
                wait = min(wait, report.next_wake_seconds)
            if self.factory.wake_event.is_set():
                wait = 0.0
        self.schedule_pass(now + wait)

    def _publish(self, report: PassReport) -> None:
        """What the responder answers from until the next pass (Daemon._publish's snapshot)."""
        if report.settings is None:
            return
        now = int(self.site.clock())
        snapshot = build_snapshot(report, HOST_FACTS, {"factory": now, "responder": now})
        if not self.published:
            self.site.note_first_publication()
        self.published = tuple(
            MachinetypeReport(status.factory, status.machinetype, status.running_hs06, status.num_before_fizzle,
                              status.shutdown_message, status.shutdown_time, status.shutdown_machine)
            for status in snapshot.machinetypes
        )
        if not self.site.scenario.uses_census_model:
            self.encoded = encode_snapshot(snapshot)

    # The factory's hooks
    def _peer_reports(self, settings: Settings, machinetypes: Mapping[str, Machinetype],
                      now: int) -> Sequence[MachinetypeReport]:
        reports: Sequence[MachinetypeReport] = self.turns.wait_for_loop(_CensusRequest(settings, self.site.loop.now))
        return reports

    def _count_creation(self, record: object, seconds: float, ok: bool) -> None:
        if ok:
            self.site.tally.creations += 1

    def _count_finish(self, settings: Settings, machinetype: Optional[Machinetype], record: object,
                      finish: Any) -> None:
        if is_abort(finish.verdict):
            self.site.tally.aborts += 1


class _StaticConfig:
    def __init__(self, config: Config) -> None:
        self.config = config

    def current(self) -> Config:
        return self.config


class _CensusRun:
    __slots__ = ("factory", "census", "finished")

    def __init__(self, factory: SimFactory, census: Census) -> None:
        self.factory = factory
        self.census = census
        self.finished = False


class Site:
    """Runs one `Scenario` with the real factory; `run()` returns the samples and totals."""

    def __init__(self, scenario: Scenario, state_dir: Path) -> None:
        if scenario.policy != "vacd":
            raise ValueError("vacd.sim.site runs vacd's factory; Vac 03's loop is vacd.sim.vac03_site")
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.loop = EventLoop()
        self.clock = VirtualClock(self.loop)
        self.network = SimNetwork(self.loop, scenario.network, random.Random(scenario.seed + 1))
        self.model = CensusModel(scenario.network, "vacd", scenario.census_deadline_seconds)
        self.busy = BusyCount({profile.name: 0 for profile in scenario.machinetypes})
        self.tally = SampleTally()
        self.samples: list[Sample] = []
        self.censuses = 0
        self.everyone_published_at = float("inf")
        self._unpublished = scenario.factories
        images = state_dir / "images"
        images.mkdir(parents=True, exist_ok=True)
        self.payloads: dict[Path, MachinetypeScenario] = {}
        machinetypes: dict[str, Machinetype] = {}
        for profile in scenario.machinetypes:
            image = images / f"{profile.name}.img"
            image.write_bytes(b"simulated payload\n")
            self.payloads[image] = profile
            machinetypes[profile.name] = Machinetype(
                name=profile.name,
                machinegroup=profile.name,
                machinetype_path=state_dir / "machinetypes" / profile.name,
                target_share=profile.target_share,
                root_image=str(image),
                backoff_seconds=profile.backoff_seconds,
                fizzle_seconds=profile.fizzle_seconds,
                max_wallclock_seconds=profile.max_wallclock_seconds,
                min_wallclock_seconds=profile.machinetype().min_wallclock_seconds,
            )
        self.machinetypes = machinetypes
        names = [f"f{index:04d}.{SPACE}" for index in range(scenario.factories)]
        addresses = tuple(FactoryAddress(name) for name in names)
        self.trusted = frozenset(names)
        self.factories: list[SimFactory] = []
        self.by_name: dict[str, SimFactory] = {}
        for index, name in enumerate(names):
            settings = Settings(
                vac_space=SPACE,
                factory_name=name,
                total_processors=scenario.processors,
                host_processors=scenario.processors,
                gocdb_sitename="sim",
                factories=addresses,
                max_creations_per_cycle=scenario.max_creations_per_cycle,
                cycle_seconds=scenario.cycle_seconds,
                abort_rule=scenario.abort_rule,
                preemption_grace_seconds=scenario.preemption_grace_seconds,
                preemption_margin_percent=scenario.preemption_margin_percent,
                max_preemptions_per_cycle=scenario.max_preemptions_per_cycle,
                udp_timeout_seconds=5 * scenario.census_deadline_seconds,
            )
            factory = SimFactory(self, index, settings, state_dir / "factories" / name)
            self.factories.append(factory)
            self.by_name[name] = factory

    def start(self) -> None:
        """Schedule every factory's first pass (spread over a cycle) and the sampling."""
        # A factory publishes nothing before its first pass, as a starting vacd.
        for factory in self.factories:
            factory.schedule_pass(self.rng.random() * self.scenario.cycle_seconds)
        self.loop.at(0.0, self._sample)

    def close(self) -> None:
        """End the factories' pass threads (a pass waiting for its census is abandoned)."""
        for factory in self.factories:
            factory.turns.stop()

    def run(self) -> SiteRun:
        self.start()
        try:
            self.loop.run_until(self.scenario.duration_seconds)
        finally:
            self.close()
        proven = {
            profile.name: self.busy.first_working_creation[profile.name] + profile.fizzle_seconds
            for profile in self.scenario.machinetypes if profile.name in self.busy.first_working_creation
        }
        return SiteRun(self.scenario, tuple(self.samples), self.network.sent, self.loop.events_run, self.censuses,
                       work_proven_at=min(proven.values()) if proven else None)

    def note_first_publication(self) -> None:
        self._unpublished -= 1
        if self._unpublished == 0:
            self.everyone_published_at = self.loop.now

    # The census, for a factory's hook
    def start_census(self, factory: SimFactory, request: _CensusRequest) -> None:
        own = request.settings.factory_name.lower()
        peers = [peer.name for peer in request.settings.factories if peer.name.lower() != own]
        if self.scenario.uses_census_model:
            self._model_census(factory, peers, request.now)
            return
        census = Census(
            MessageType.MACHINETYPES_QUERY,
            request.settings.vac_space,
            peers,
            request.now,
            deadline_seconds=census_deadline_seconds(request.settings),
            salt=f"{self.rng.getrandbits(128):032x}",
            initial_rtt_seconds=factory.smoothed_rtt,
        )
        self._pump(_CensusRun(factory, census))

    def _pump(self, run: _CensusRun) -> None:
        if run.finished:
            return
        census = run.census
        for name, datagram in census.datagrams_to_send(self.loop.now):
            self.network.send(self._deliver_query, self.by_name[name], datagram, run)
        if census.done:
            self._census_done(run)
        else:
            self.loop.at(census.next_wakeup, self._pump, run)

    def _deliver_query(self, responder: SimFactory, datagram: bytes, run: _CensusRun) -> None:
        if responder.encoded is None:
            return
        for reply in respond(datagram, run.factory.name, responder.encoded, self.loop.now,
                             trusted_sources=self.trusted):
            self.network.send(self._deliver_reply, reply, responder.name, run)

    def _deliver_reply(self, reply: bytes, source: str, run: _CensusRun) -> None:
        if run.finished:
            return
        run.census.receive(reply, source, self.loop.now)
        if run.census.done:
            self._census_done(run)

    def _census_done(self, run: _CensusRun) -> None:
        run.finished = True
        result = run.census.result
        if result.smoothed_rtt_seconds is not None:
            run.factory.smoothed_rtt = result.smoothed_rtt_seconds
        self._count_census(result.completeness, result.started)
        run.factory.census_done(reports_from(result))

    def _model_census(self, factory: SimFactory, peers: Sequence[str], now: float) -> None:
        """What a census would hear, drawn from `CensusModel` (each status lost independently)."""
        statuses = [report for name in peers for report in self.by_name[name].published]
        lost = set(bernoulli_positions(len(statuses), self.model.miss_probability, self.rng))
        heard = [report for position, report in enumerate(statuses) if position not in lost]
        self._count_census(1.0 - len(lost) / len(statuses) if statuses else 1.0, now)
        duration = self.model.sample_duration(len(statuses), bool(lost), self.rng)
        self.loop.at(now + duration, factory.census_done, heard)

    def _count_census(self, completeness: float, started: float) -> None:
        self.censuses += 1
        if started < self.everyone_published_at:
            # A peer that has not run its first pass publishes nothing: that is the site
            # starting, not the census losing statuses, so completeness counts from then.
            return
        self.tally.censuses += 1
        self.tally.completeness_sum += completeness

    # Measuring
    def _sample(self) -> None:
        now = self.loop.now
        busy = {profile.name: self.busy.processors.get(profile.name, 0) for profile in self.scenario.machinetypes}
        self.samples.append(take_sample(self.scenario, now, busy, self.tally))
        self.tally = SampleTally()
        self.loop.at(now + self.scenario.sample_seconds, self._sample)


def run_scenario(scenario: Scenario) -> SiteRun:
    """Run `scenario`: vacd's policy on the real factory, Vac 03's on its modelled loop."""
    if scenario.policy == "vac03":
        from vacd.sim.vac03_site import run_vac03_scenario

        return run_vac03_scenario(scenario)
    if scenario.state_dir is not None:
        return Site(scenario, scenario.state_dir).run()
    tmpfs = Path("/dev/shm")
    state_dir = Path(tempfile.mkdtemp(prefix="vacd-sim-", dir=tmpfs if tmpfs.is_dir() else None))
    try:
        return Site(scenario, state_dir).run()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
