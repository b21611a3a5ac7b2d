"""What a simulated site is made of and what a run measured: scenarios, samples, summaries.

Rules: values only (frozen dataclasses); the run itself is in site.py (the real factory) or
vac03_site.py (Vac 03's loop, the baseline). Shares are judged on machinetypes that have
work at that instant: their target fraction of capacity is their share over the sum of the
working shares (a demand step changes which types have work). "Fill" is busy processors / capacity, whatever runs
on them; "useful fill" counts only machinetypes that have work.
"""

from __future__ import annotations

from dataclasses import dataclass
import random
from pathlib import Path
from typing import Optional

from vacd.config import Machinetype
from vacd.outcomes import is_abort
from vacd.sim.events import NetworkConditions

SPACE = "site.sim"
POLICIES = ("vacd", "vac03")
CENSUS_MODES = ("auto", "real", "model")
# Above this many factories "auto" uses the census model (see model.py for why).
AUTO_MODEL_FACTORIES = 300


@dataclass(frozen=True)
class Outcome:
    """One way a payload can end: with this probability, after [min, max] seconds, with this message."""

    probability: float
    shutdown_message: Optional[str]
    min_seconds: float
    max_seconds: float


@dataclass(frozen=True)
class MachinetypeScenario:
    name: str
    target_share: float
    outcomes: tuple[Outcome, ...]
    backoff_seconds: int = 10
    fizzle_seconds: int = 600
    max_wallclock_seconds: int = 86400
    # None: max_wallclock_seconds, as vac.conf's default (such a type is never pre-empted).
    min_wallclock_seconds: Optional[int] = None
    # A step change in demand: from `step_seconds` of site time on, payloads draw these outcomes.
    step_seconds: Optional[float] = None
    outcomes_after_step: tuple[Outcome, ...] = ()

    def __post_init__(self) -> None:
        for outcomes in (self.outcomes, self.outcomes_after_step):
            if outcomes and abs(sum(outcome.probability for outcome in outcomes) - 1.0) > 1e-9:
                raise ValueError(f"outcome probabilities of {self.name} must sum to 1")
        if (self.step_seconds is None) != (not self.outcomes_after_step):
            raise ValueError(f"{self.name}: a demand step needs both step_seconds and outcomes_after_step")

    def outcomes_at(self, time: float) -> tuple[Outcome, ...]:
        """The payload outcomes of a machine created at `time` of site time."""
        if self.step_seconds is not None and time >= self.step_seconds:
            return self.outcomes_after_step
        return self.outcomes

    def draw(self, time: float, rng: random.Random) -> tuple[Optional[str], float]:
        """One payload created at `time`: its shutdown message and how long it runs."""
        outcomes = self.outcomes_at(time)
        draw, chosen = rng.random(), outcomes[-1]
        for outcome in outcomes:
            if draw < outcome.probability:
                chosen = outcome
                break
            draw -= outcome.probability
        return chosen.shutdown_message, chosen.min_seconds + (chosen.max_seconds - chosen.min_seconds) * rng.random()

    def has_work_at(self, time: float) -> bool:
        return any(not is_abort(outcome.shutdown_message) for outcome in self.outcomes_at(time))

    @property
    def has_work(self) -> bool:
        return self.has_work_at(0.0)

    def machinetype(self) -> Machinetype:
        return Machinetype(
            name=self.name,
            machinegroup=self.name,
            machinetype_path=Path("/var/lib/vac/machinetypes") / self.name,
            target_share=self.target_share,
            backoff_seconds=self.backoff_seconds,
            fizzle_seconds=self.fizzle_seconds,
            max_wallclock_seconds=self.max_wallclock_seconds,
            min_wallclock_seconds=(
                self.max_wallclock_seconds if self.min_wallclock_seconds is None else self.min_wallclock_seconds
            ),
        )


@dataclass(frozen=True)
class Scenario:
    machinetypes: tuple[MachinetypeScenario, ...]
    factories: int = 10
    processors: int = 32
    duration_seconds: float = 3600.0
    policy: str = "vacd"
    network: NetworkConditions = NetworkConditions()
    census: str = "auto"
    census_deadline_seconds: float = 2.0
    cycle_seconds: float = 30.0
    creation_seconds: float = 5.0
    max_creations_per_cycle: int = 4
    # [settings] abort_rule of every simulated factory (vacd.scheduler.last_abort_times).
    abort_rule: str = "failure_rate"
    # [settings] pre-emption of every simulated factory (vacd/preemption.py); 0 grace is off.
    preemption_grace_seconds: int = 0
    preemption_margin_percent: float = 2.0
    max_preemptions_per_cycle: int = 4
    probe_spread_seconds: int = 60
    sample_seconds: float = 10.0
    seed: int = 1
    # A guest told to stop (ACPI) powers off this long after (vacd policy; Vac 03's loop is modelled).
    acpi_seconds: float = 5.0
    # Where the factories' real stores go; None: a fresh directory on a tmpfs (/dev/shm), removed after.
    state_dir: Optional[Path] = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}")
        if self.census not in CENSUS_MODES:
            raise ValueError(f"census must be one of {CENSUS_MODES}")

    @property
    def uses_census_model(self) -> bool:
        return self.census == "model" or (self.census == "auto" and self.factories > AUTO_MODEL_FACTORIES)


def standard_machinetypes(
    workless: str = "vo-a",
    failure_rate: float = 0.0,
    *,
    max_wallclock_seconds: int = 86400,
    step_seconds: Optional[float] = None,
    min_wallclock_seconds: Optional[int] = None,
) -> tuple[MachinetypeScenario, ...]:
    """Shares 4:3:2:1; `workless` finds no work (300 after 1-3 min), the others work 1-3 h
    and end with 200, or with `700` after 10-60 min at `failure_rate`.

    A payload still working at `max_wallclock_seconds` is stopped by the factory (a
    wallclock scenario when that is under 3 h). With `step_seconds`, `workless` gets work
    from then on (a step change in demand). `min_wallclock_seconds` under max_wallclock_seconds
    makes running machines pre-emptable once that old (when the factories pre-empt).
    """
    work: tuple[Outcome, ...] = (Outcome(1.0, "200 Success", 3600, 10800),)
    if failure_rate > 0:
        work = (Outcome(1.0 - failure_rate, "200 Success", 3600, 10800),
                Outcome(failure_rate, "700 Payload failed", 600, 3600))
    no_work = (Outcome(1.0, "300 No more work", 60, 180),)
    shares = (("vo-a", 4.0), ("vo-b", 3.0), ("vo-c", 2.0), ("vo-d", 1.0))
    return tuple(
        MachinetypeScenario(name, share, no_work, max_wallclock_seconds=max_wallclock_seconds,
                            min_wallclock_seconds=min_wallclock_seconds, step_seconds=step_seconds,
                            outcomes_after_step=work if step_seconds is not None else ())
        if name == workless
        else MachinetypeScenario(name, share, work, max_wallclock_seconds=max_wallclock_seconds,
                                 min_wallclock_seconds=min_wallclock_seconds)
        for name, share in shares
    )


@dataclass(frozen=True)
class SiteMeasure:
    fill: float
    useful_fill: float
    share_error: float
    workless_fraction: float


@dataclass
class SampleTally:
    """What a site counted since its last sample (both policies' sites keep one)."""

    censuses: int = 0
    completeness_sum: float = 0.0
    creations: int = 0
    aborts: int = 0
    backoff_events: int = 0
    # Machines ended early by pre-emption, their processors, and the processor-seconds they
    # had run when stopped (the work lost if their payloads could not checkpoint).
    preemptions: int = 0
    preempted_processors: int = 0
    lost_processor_seconds: float = 0.0


def take_sample(scenario: Scenario, time: float, busy: dict[str, int], tally: SampleTally) -> Sample:
    """One sample of the site: its measure at `time` and what `tally` counted since the last."""
    measured = measure_site(scenario, time, busy)
    return Sample(
        time=time,
        busy_processors=busy,
        fill=measured.fill,
        useful_fill=measured.useful_fill,
        share_error=measured.share_error,
        workless_fraction=measured.workless_fraction,
        census_completeness=tally.completeness_sum / tally.censuses if tally.censuses else None,
        censuses=tally.censuses,
        creations=tally.creations,
        aborts=tally.aborts,
        backoff_events=tally.backoff_events,
        preemptions=tally.preemptions,
        preempted_processors=tally.preempted_processors,
        lost_processor_seconds=tally.lost_processor_seconds,
    )


def measure_site(scenario: Scenario, time: float, busy: dict[str, int]) -> SiteMeasure:
    """Fill and share error of `busy` processors per machinetype at `time` (module rules)."""
    capacity = scenario.factories * scenario.processors
    working = [profile for profile in scenario.machinetypes if profile.has_work_at(time) and profile.target_share > 0]
    total_share = sum(profile.target_share for profile in working)
    share_error = max(
        (abs(busy.get(profile.name, 0) / capacity - profile.target_share / total_share) for profile in working),
        default=0.0,
    )
    workless = sum(busy.get(profile.name, 0) for profile in scenario.machinetypes if not profile.has_work_at(time))
    return SiteMeasure(
        fill=sum(busy.values()) / capacity,
        useful_fill=sum(busy.get(profile.name, 0) for profile in working) / capacity,
        share_error=share_error,
        workless_fraction=workless / capacity,
    )


@dataclass(frozen=True)
class Sample:
    """The site at one instant, and what happened since the previous sample."""

    time: float
    busy_processors: dict[str, int]
    fill: float  # busy processors / capacity, whatever runs on them
    useful_fill: float  # processors busy with machinetypes that have work / capacity
    share_error: float  # max over working machinetypes of |fraction of capacity - target|
    workless_fraction: float
    census_completeness: Optional[float]
    censuses: int
    creations: int
    aborts: int
    backoff_events: int
    preemptions: int = 0
    preempted_processors: int = 0
    lost_processor_seconds: float = 0.0


@dataclass(frozen=True)
class SiteRun:
    scenario: Scenario
    samples: tuple[Sample, ...]
    datagrams_sent: int
    events_run: int
    censuses: int
    # After a demand step: when the first machine of the stepped type that found work passed
    # fizzle_seconds, the earliest the factories can tell the type has work (vacd policy).
    work_proven_at: Optional[float] = None

    @property
    def capacity(self) -> int:
        return self.scenario.factories * self.scenario.processors

    def time_to_fill(self, threshold: float = 0.98) -> Optional[float]:
        """When busy processors first reached `threshold` of capacity (any machinetype)."""
        return next((sample.time for sample in self.samples if sample.fill >= threshold), None)

    def time_to_useful_fill(self, threshold: float = 0.98) -> Optional[float]:
        """When processors busy with machinetypes that have work first reached `threshold`."""
        return next((sample.time for sample in self.samples if sample.useful_fill >= threshold), None)

    def _after_useful_fill(self) -> list[Sample]:
        filled = self.time_to_useful_fill()
        return [] if filled is None else [sample for sample in self.samples if sample.time >= filled]

    def mean_share_error_after_fill(self) -> Optional[float]:
        after = self._after_useful_fill()
        return sum(sample.share_error for sample in after) / len(after) if after else None

    def max_share_error_after_fill(self) -> Optional[float]:
        after = self._after_useful_fill()
        return max(sample.share_error for sample in after) if after else None

    def mean_workless_fraction_after_fill(self) -> Optional[float]:
        after = self._after_useful_fill()
        return sum(sample.workless_fraction for sample in after) / len(after) if after else None

    def mean_workless_fraction(self) -> float:
        return sum(sample.workless_fraction for sample in self.samples) / max(1, len(self.samples))

    def mean_census_completeness(self) -> Optional[float]:
        weighted = [(s.census_completeness, s.censuses) for s in self.samples if s.census_completeness is not None]
        total = sum(count for _, count in weighted)
        return sum(value * count for value, count in weighted) / total if total else None

    @property
    def step_seconds(self) -> Optional[float]:
        steps = [profile.step_seconds for profile in self.scenario.machinetypes if profile.step_seconds is not None]
        return min(steps) if steps else None

    def step_recovery_seconds(self, within: float = 0.05) -> Optional[float]:
        """After the demand step, how long until the share error is within `within` for good."""
        step = self.step_seconds
        if step is None:
            return None
        after = [sample for sample in self.samples if sample.time >= step]
        settled: Optional[float] = None
        for sample in after:
            if sample.share_error > within:
                settled = None
            elif settled is None:
                settled = sample.time
        return None if settled is None else settled - step

    def step_recovery_after_proof_seconds(self, within: float = 0.05) -> Optional[float]:
        """Like step_recovery_seconds, counted from `work_proven_at` instead of the step."""
        recovery, step = self.step_recovery_seconds(within), self.step_seconds
        if recovery is None or step is None or self.work_proven_at is None:
            return None
        return max(0.0, step + recovery - self.work_proven_at)

    def max_share_error_after_step(self) -> Optional[float]:
        step = self.step_seconds
        after = [sample.share_error for sample in self.samples if step is not None and sample.time >= step]
        return max(after) if after else None

    def summary(self) -> dict[str, object]:
        recovery = self.step_recovery_seconds()
        after_proof = self.step_recovery_after_proof_seconds()
        step = {} if self.step_seconds is None else {
            "step_seconds": self.step_seconds,
            "max_share_error_after_step": self.max_share_error_after_step(),
            "step_recovery_seconds": recovery,
            "step_recovery_cycles": None if recovery is None else recovery / self.scenario.cycle_seconds,
            "work_proven_after_step_seconds": (
                None if self.work_proven_at is None or self.step_seconds is None
                else self.work_proven_at - self.step_seconds
            ),
            "step_recovery_after_proof_cycles": (
                None if after_proof is None else after_proof / self.scenario.cycle_seconds
            ),
        }
        return {
            "policy": self.scenario.policy,
            "factories": self.scenario.factories,
            "processors": self.scenario.processors,
            "loss": self.scenario.network.loss,
            "census": "model" if self.scenario.uses_census_model else "real",
            "time_to_fill_seconds": self.time_to_fill(),
            "time_to_useful_fill_seconds": self.time_to_useful_fill(),
            "mean_share_error_after_fill": self.mean_share_error_after_fill(),
            "max_share_error_after_fill": self.max_share_error_after_fill(),
            "mean_workless_fraction": self.mean_workless_fraction(),
            "mean_workless_fraction_after_fill": self.mean_workless_fraction_after_fill(),
            "mean_census_completeness": self.mean_census_completeness(),
            "censuses": self.censuses,
            "creations": sum(sample.creations for sample in self.samples),
            "aborts": sum(sample.aborts for sample in self.samples),
            "backoff_events": sum(sample.backoff_events for sample in self.samples),
            "preemptions": sum(sample.preemptions for sample in self.samples),
            "preempted_processors": sum(sample.preempted_processors for sample in self.samples),
            "lost_processor_hours": sum(sample.lost_processor_seconds for sample in self.samples) / 3600,
            "datagrams_sent": self.datagrams_sent,
            "events_run": self.events_run,
            **step,
        }
