"""Vac 03's loop replayed on a simulated site: the baseline `python -m vacd.sim --policy vac03` runs.

This is NOT our factory: vacd's own runs drive the real `vacd.factory.Factory` (site.py).
Vac 03 is not in this tree, so its loop is modelled here, small and on purpose (issue 9
item 1 allows it): each factory runs a pass (free the slots of machines that have ended,
remember each machinetype's most recently created finished machine, as Vac's
`finishes/`), skips the rest if no slot is free, otherwise runs Vac 03's census
(`vac03.VacCensus`, real datagrams over `events.SimNetwork` to the real
`vacquery.responder.respond`, or `model.CensusModel` for big sites), decides with
`vacd.scheduler.decide` (Vac 03's target-share rule as vacd implements it), makes at most
one creation, synchronously (`creation_seconds` inside the pass), and sleeps 60 s (§1.3).
A payload still running at its wallclock limit is killed with no message, as Vac 03 did
(§4.4). No probe stagger (§4.3).

Simulated snapshots carry no machine_status (only machinetypes are asked), and the
simulated responders trust every factory (no amplification cap).
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Union

from vacd.config import Settings
from vacd.outcomes import is_abort
from vacd.scheduler import MachinetypeReport, SchedulerInput, SlotView, decide
from vacd.sim.events import EventLoop, SimNetwork
from vacd.sim.model import EXACT_LOSSES_LIMIT, CensusModel, bernoulli_positions, binomial_count
from vacd.sim.scenario import SPACE, Sample, SampleTally, Scenario, SiteRun, take_sample
from vacd.sim.vac03 import VAC_CREATIONS_PER_CYCLE, VAC_SLEEP_SECONDS, VacCensus
from vacquery.client import Census
from vacquery.codec import EncodedSnapshot, encode_snapshot
from vacquery.messages import FactoryStatus, MachinetypeStatus, MessageType, Snapshot
from vacquery.responder import respond



class _Machine:
    __slots__ = ("factory", "ordinal", "machinetype", "processors", "created", "end_time", "shutdown_message",
                 "shutdown_time")

    def __init__(self, factory: "_Factory", ordinal: int, machinetype: str, processors: int, created: float,
                 end_time: float, shutdown_message: Optional[str], shutdown_time: int) -> None:
        self.factory = factory
        self.ordinal = ordinal
        self.machinetype = machinetype
        self.processors = processors
        self.created = created
        self.end_time = end_time
        self.shutdown_message = shutdown_message
        self.shutdown_time = shutdown_time


class _Factory:
    """One simulated factory's state (mutable; private to the simulator)."""

    def __init__(self, index: int, settings: Settings, processors: int) -> None:
        self.index = index
        self.name = settings.factory_name
        self.settings = settings
        self.slots: list[Optional[_Machine]] = [None] * processors
        self.last_finished: dict[str, _Machine] = {}
        self.encoded: Optional[EncodedSnapshot] = None
        self.published: dict[str, MachinetypeReport] = {}
        self.backoff: frozenset[str] = frozenset()
        self.census_generation = 0
        self.pass_token = 0
        self.next_pass_at = 0.0


@dataclass
class _CensusRun:
    __slots__ = ("factory", "census", "started", "generation")

    def __init__(self, factory: _Factory, census: Union[Census, VacCensus], started: float, generation: int) -> None:
        self.factory = factory
        self.census = census
        self.started = started
        self.generation = generation


class Vac03Site:
    """Runs one `Scenario` under Vac 03's loop; `run()` returns the samples and totals."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.loop = EventLoop()
        self.network = SimNetwork(self.loop, scenario.network, random.Random(scenario.seed + 1))
        self.machinetypes = {mt.name: mt.machinetype() for mt in scenario.machinetypes}
        self.profiles = {mt.name: mt for mt in scenario.machinetypes}
        self.fizzle_seconds = {mt.name: mt.fizzle_seconds for mt in scenario.machinetypes}
        self.names = [f"f{index:04d}.{SPACE}" for index in range(scenario.factories)]
        self.by_name: dict[str, _Factory] = {}
        self.factories: list[_Factory] = []
        for index, name in enumerate(self.names):
            settings = Settings(
                vac_space=SPACE,
                factory_name=name,
                total_processors=scenario.processors,
                host_processors=scenario.processors,
                gocdb_sitename="sim",
                max_creations_per_cycle=VAC_CREATIONS_PER_CYCLE,
                cycle_seconds=VAC_SLEEP_SECONDS,
                # Vac 03's rule: every code of 300 or more backs off (§4.4), not vacd's default.
                abort_rule="vac03",
            )
            factory = _Factory(index, settings, scenario.processors)
            self.factories.append(factory)
            self.by_name[name] = factory
        self.trusted = frozenset(self.names)
        self.busy: Counter[str] = Counter()
        self.tally = SampleTally()
        self.samples: list[Sample] = []
        self.censuses = 0
        self.model = CensusModel(scenario.network, "vac03", scenario.census_deadline_seconds)
        # Census model state: the sum of published reports per machinetype, and the
        # published abort times per machinetype in order, (shutdown_time, factory index).
        self.total_hs06: dict[str, float] = {name: 0.0 for name in self.machinetypes}
        self.total_before_fizzle: dict[str, int] = {name: 0 for name in self.machinetypes}
        self.total_hs06_sq: dict[str, float] = {name: 0.0 for name in self.machinetypes}
        self.total_before_fizzle_sq: dict[str, int] = {name: 0 for name in self.machinetypes}
        self.aborts_by_time: dict[str, list[tuple[int, int]]] = {name: [] for name in self.machinetypes}
        self.probe_spread = 0  # Vac 03 had no probe stagger (§4.3)

    # Running

    def run(self) -> SiteRun:
        first_pass_spread = VAC_SLEEP_SECONDS
        for factory in self.factories:
            self._publish(factory, 0.0)
            self._schedule_pass(factory, self.rng.random() * first_pass_spread)
        self.loop.at(0.0, self._sample)
        self.loop.run_until(self.scenario.duration_seconds)
        return SiteRun(self.scenario, tuple(self.samples), self.network.sent, self.loop.events_run, self.censuses)

    def _schedule_pass(self, factory: _Factory, when: float) -> None:
        factory.pass_token += 1
        factory.next_pass_at = when
        self.loop.at(when, self._pass, factory, factory.pass_token)

    def _pass(self, factory: _Factory, token: int) -> None:
        if token != factory.pass_token:
            return
        now = self.loop.now
        self._observe(factory, now)
        running = sum(machine.processors for machine in factory.slots if machine is not None)
        if running >= factory.settings.total_processors or all(factory.slots):
            # A gate of §4.1 blocks creation: no census is sent (acceptance 28).
            self._publish(factory, now)
            self._end_pass(factory, created=False)
            return
        if self.scenario.uses_census_model:
            self._model_census(factory, now)
        else:
            self._start_census(factory, now)

    def _end_pass(self, factory: _Factory, created: bool) -> None:
        now = self.loop.now
        # Vac created synchronously inside the cycle, then slept 60 s, deaf to events (§1.3).
        busy = self.scenario.creation_seconds if created else 0.0
        self._schedule_pass(factory, now + busy + VAC_SLEEP_SECONDS)

    def _observe(self, factory: _Factory, now: float) -> None:
        for ordinal, machine in enumerate(factory.slots):
            if machine is not None and machine.end_time <= now:
                factory.slots[ordinal] = None
                previous = factory.last_finished.get(machine.machinetype)
                if previous is None or machine.created >= previous.created:
                    factory.last_finished[machine.machinetype] = machine

    def _local_reports(self, factory: _Factory, now: float) -> dict[str, MachinetypeReport]:
        hs06 = dict.fromkeys(self.machinetypes, 0)
        before_fizzle = dict.fromkeys(self.machinetypes, 0)
        fizzle_seconds = self.fizzle_seconds
        for machine in factory.slots:
            if machine is not None:
                hs06[machine.machinetype] += machine.processors
                if now < machine.created + fizzle_seconds[machine.machinetype]:
                    before_fizzle[machine.machinetype] += 1
        reports = {}
        for name in self.machinetypes:
            last = factory.last_finished.get(name)
            reports[name] = MachinetypeReport(
                factory.name,
                name,
                float(hs06[name]),
                before_fizzle[name],
                None if last is None else last.shutdown_message,
                None if last is None else last.shutdown_time,
            )
        return reports

    # Census, real

    def _start_census(self, factory: _Factory, now: float) -> None:
        peers = [name for name in self.names if name != factory.name]
        salt = f"{self.rng.getrandbits(128):032x}"
        census: Union[Census, VacCensus]
        census = VacCensus(MessageType.MACHINETYPES_QUERY, SPACE, peers, now, salt=salt)
        factory.census_generation += 1
        run = _CensusRun(factory, census, now, factory.census_generation)
        self._pump(run)

    def _pump(self, run: _CensusRun) -> None:
        if run.generation != run.factory.census_generation:
            return
        census = run.census
        for name, datagram in census.datagrams_to_send(self.loop.now):
            self.network.send(self._deliver_query, self.by_name[name], datagram, run)
        if census.done:
            self._census_done(run)
        else:
            self.loop.at(census.next_wakeup, self._pump, run)

    def _deliver_query(self, responder: _Factory, datagram: bytes, run: _CensusRun) -> None:
        if responder.encoded is None:
            return
        for reply in respond(datagram, run.factory.name, responder.encoded, self.loop.now, trusted_sources=self.trusted):
            self.network.send(self._deliver_reply, reply, responder.name, run)

    def _deliver_reply(self, reply: bytes, source: str, run: _CensusRun) -> None:
        if run.generation != run.factory.census_generation or run.census.done:
            return
        run.census.receive(reply, source, self.loop.now)
        if run.census.done:
            self._census_done(run)

    def _census_done(self, run: _CensusRun) -> None:
        factory = run.factory
        factory.census_generation += 1  # later wake-ups and replies of this census are void
        result = run.census.result
        self._count_census(result.completeness)
        reports = [
            MachinetypeReport(status.factory, status.machinetype, status.running_hs06, status.num_before_fizzle,
                              status.shutdown_message, status.shutdown_time)
            for name in result.replies
            for status in result.statuses(name)
            if isinstance(status, MachinetypeStatus)
        ]
        self._decide_and_create(factory, run.started, reports)

    def _count_census(self, completeness: float) -> None:
        self.censuses += 1
        self.tally.censuses += 1
        self.tally.completeness_sum += completeness

    # Census, modelled

    def _model_census(self, factory: _Factory, now: float) -> None:
        peers = len(self.factories) - 1
        miss = self.model.miss_probability
        names_exactly = peers * miss <= EXACT_LOSSES_LIMIT
        reports = []
        lost_total = 0
        for name in self.machinetypes:
            own = factory.published[name]
            hs06 = self.total_hs06[name] - own.running_hs06
            before_fizzle = float(self.total_before_fizzle[name] - own.num_before_fizzle)
            lost_peers: set[int] = set()
            if names_exactly:
                for position in bernoulli_positions(peers, miss, self.rng):
                    index = position if position < factory.index else position + 1
                    lost_peers.add(index)
                    report = self.factories[index].published[name]
                    hs06 -= report.running_hs06
                    before_fizzle -= report.num_before_fizzle
                lost = len(lost_peers)
            else:
                # Too many lost to name them (Vac 03 misses ~18 % at 50 % loss): draw how
                # many, and the sum of what they held as a sample without replacement.
                lost = binomial_count(peers, miss, self.rng)
                hs06 -= self._lost_sum(lost, peers, hs06, self.total_hs06_sq[name] - own.running_hs06 ** 2)
                before_fizzle -= self._lost_sum(lost, peers, before_fizzle,
                                                self.total_before_fizzle_sq[name] - own.num_before_fizzle ** 2)
            message, abort_time = None, None
            for shutdown_time, index in reversed(self.aborts_by_time[name]):
                if index == factory.index or index in lost_peers:
                    continue
                if not names_exactly and self.rng.random() < miss:
                    continue
                message = self.factories[index].published[name].shutdown_message
                abort_time = shutdown_time
                break
            lost_total += lost
            reports.append(MachinetypeReport("census", name, max(0.0, hs06), max(0, round(before_fizzle)),
                                             message, abort_time))
        statuses = peers * len(self.machinetypes)
        self._count_census(1.0 if statuses == 0 else 1.0 - lost_total / statuses)
        duration = self.model.sample_duration(statuses, lost_total > 0, self.rng)
        self.loop.at(now + duration, self._decide_and_create, factory, now, reports)

    def _lost_sum(self, lost: int, population: int, total: float, sum_of_squares: float) -> float:
        """The sum of `lost` values drawn without replacement from `population` values."""
        if lost <= 0 or population <= 0:
            return 0.0
        if lost >= population:
            return total
        mean = total / population
        variance = max(0.0, sum_of_squares / population - mean * mean)
        spread = math.sqrt(lost * variance * (population - lost) / max(1, population - 1))
        return min(total, max(0.0, self.rng.gauss(lost * mean, spread)))

    # Deciding and creating

    def _decide_and_create(self, factory: _Factory, started: float, peer_reports: list[MachinetypeReport]) -> None:
        now = self.loop.now
        local = self._local_reports(factory, now)
        slots = [
            SlotView(ordinal) if machine is None
            else SlotView(ordinal, machine.machinetype, machine.processors, machine.shutdown_time, float(machine.processors))
            for ordinal, machine in enumerate(factory.slots)
        ]
        state = SchedulerInput(
            now=int(now),
            settings=factory.settings,
            machinetypes=self.machinetypes,
            slots=slots,
            reports=[*local.values(), *peer_reports],
            host_cpu_count=self.scenario.processors,
            probe_spread_seconds=self.probe_spread,
            one_probe_at_a_time=False,  # Vac 03 created one machine a cycle, its own probes young or not
        )
        decisions = decide(state, self.rng)
        backoff = frozenset(decisions.outlook.backoff_until)
        self.tally.backoff_events += len(backoff - factory.backoff)
        factory.backoff = backoff
        for create in decisions.creates:
            self._create(factory, create.ordinal, create.machinetype, create.processors, create.shutdown_time, now)
        self._publish(factory, now)
        self._end_pass(factory, bool(decisions.creates))

    def _create(self, factory: _Factory, ordinal: int, machinetype: str, processors: int, shutdown_time: int,
                now: float) -> None:
        message, seconds = self.profiles[machinetype].draw(now, self.rng)
        end_time = now + seconds
        if end_time > shutdown_time:
            end_time, message = float(shutdown_time), None  # killed at its wallclock limit, no message (§4.4)
        machine = _Machine(factory, ordinal, machinetype, processors, now, end_time, message, int(end_time))
        factory.slots[ordinal] = machine
        self.busy[machinetype] += processors
        self.tally.creations += 1
        self.loop.at(end_time, self._machine_ended, machine)

    def _machine_ended(self, machine: _Machine) -> None:
        self.busy[machine.machinetype] -= machine.processors
        if is_abort(machine.shutdown_message):
            self.tally.aborts += 1

    def _publish(self, factory: _Factory, now: float) -> None:
        """What the factory's responder answers from until its next pass."""
        local = self._local_reports(factory, now)
        if self.scenario.uses_census_model:
            for name, report in local.items():
                old = factory.published.get(name)
                if old is not None:
                    self.total_hs06[name] -= old.running_hs06
                    self.total_before_fizzle[name] -= old.num_before_fizzle
                    self.total_hs06_sq[name] -= old.running_hs06 ** 2
                    self.total_before_fizzle_sq[name] -= old.num_before_fizzle ** 2
                    if old.shutdown_time is not None and is_abort(old.shutdown_message):
                        self.aborts_by_time[name].remove((old.shutdown_time, factory.index))
                self.total_hs06[name] += report.running_hs06
                self.total_before_fizzle[name] += report.num_before_fizzle
                self.total_hs06_sq[name] += report.running_hs06 ** 2
                self.total_before_fizzle_sq[name] += report.num_before_fizzle ** 2
                if report.shutdown_time is not None and is_abort(report.shutdown_message):
                    bisect.insort(self.aborts_by_time[name], (report.shutdown_time, factory.index))
            factory.published = local
            return
        factory.published = local
        statuses = tuple(
            MachinetypeStatus(
                space=SPACE,
                factory=factory.name,
                num_machinetypes=len(local),
                machinetype=name,
                running_hs06=report.running_hs06,
                num_before_fizzle=report.num_before_fizzle,
                shutdown_message=report.shutdown_message,
                shutdown_time=report.shutdown_time,
                shutdown_machine=None,
                running_processors=report.running_hs06,
            )
            for name, report in local.items()
        )
        factory.encoded = encode_snapshot(Snapshot((), statuses, FactoryStatus(space=SPACE, factory=factory.name)))

    # Measuring

    def _sample(self) -> None:
        now = self.loop.now
        busy = {name: self.busy[name] for name in self.machinetypes}
        self.samples.append(take_sample(self.scenario, now, busy, self.tally))
        self.tally = SampleTally()
        self.loop.at(now + self.scenario.sample_seconds, self._sample)


def run_vac03_scenario(scenario: Scenario) -> SiteRun:
    """Run `scenario` under Vac 03's loop (its policy must be "vac03")."""
    if scenario.policy != "vac03":
        raise ValueError("vac03_site replays Vac 03 only; vacd's runs are vacd.sim.site.run_scenario")
    return Vac03Site(scenario).run()
