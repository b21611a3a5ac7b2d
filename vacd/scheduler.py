"""Decide which machines to create: the pure core of the factory and of the site simulator.

Rules (design.md rule 1): `decide()` takes the time, the configuration, this factory's
slots, the peers' machinetype reports and the load, and returns `Create` decisions. It does
no I/O and reads no clock; its only randomness is the tie-break source it is given.

Behaviour kept from Vac 03 (behaviour reference §4, §5):
- the gates of §4.1 (overload, shutdown_time passed, draining, capacity), in that order,
  after vacd's disk gate (the reason the factory's disk check gives, issue 8 item 4);
- scores by machinegroup, then machinetype, of `running_hs06 / target_share` summed over
  every factory's report (§4.2), lowest first, random tie-break (§4.5);
- eligibility with abort backoff and fizzle (§4.3): a code >= 300 anywhere in the space
  stops the machinetype for backoff_seconds, plus fizzle_seconds while a probe is young;
- superslot packing (§5): complete the earliest-ending incomplete superslot first, with the
  processors reserved for it unavailable to new superslots; else open a new one.

Changes from Vac 03, each a fix or a documented improvement:
- several creations per pass (`max_creations_per_cycle`), with the scores, the free
  processors and the before-fizzle counts updated after each choice, so a second choice sees
  the first (Vac created one machine per 60 s cycle, §11);
- the probe rule: when a backoff ends, each factory waits a further stagger derived from a
  hash of (factory, machinetype, abort time), spread over `probe_spread_seconds`, before it
  may probe. Every factory computes the same order, so one factory probes first and the
  others then see its machine before fizzle in their next census and wait the fizzle time.
  Vac admitted that all factories could probe at the same instant (§4.3, §11). At most one
  probe per machinetype is made per pass by one factory, and none while a machine of the
  type is before fizzle anywhere in the space: the probe gets its whole fizzle_seconds to
  find work or abort, as §4.3 intends. Vac's code let the wait end at t + backoff + fizzle
  although a probe made after the backoff was still young, and then every factory with a
  free slot probed (up to a quarter of a site of 4-processor factories held by a type with
  no work, issue 9); the replay of Vac 03's loop keeps Vac's timing;
- a creation stays a probe, after that time too, for as long as nothing in the space shows
  the machinetype to have work since its abort (a machine of it past fizzle_seconds, from
  the reports' running_machines and num_before_fizzle, or a later outcome that is no
  abort). Vac's ineligibility (§4.3, acceptance 20: none before t + backoff + fizzle while
  a probe is young) is kept; what changes is how many are made: when the backoff lapsed
  while every factory was full, the type with no work was the most starved when slots
  freed, and took up to max_creations_per_cycle on every factory at once (issue 9: 528 of 3,200 processors, a 9.6 % share error, when a
  whole site reached max_wallclock_seconds together);
- machinetypes whose creation failed locally are skipped until their failure backoff ends
  (Vac retried a broken machinetype every cycle, §11).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Protocol, Sequence

from vacd.config import Machinetype, Settings
from vacd.outcomes import is_abort, shutdown_code

# Fraction of the machine's processors that may run before the load gate applies (§4.1).
OVERLOAD_MIN_RUNNING_PROCESSORS = 4
# How long after a backoff ends the last factory in the probe order may wait, at most.
DEFAULT_PROBE_SPREAD_SECONDS = 60


class RandomSource(Protocol):
    def random(self) -> float: ...


@dataclass(frozen=True)
class SlotView:
    """One slot of this factory as the scheduler needs it: free, or holding a live machine."""

    ordinal: int
    machinetype: Optional[str] = None
    processors: int = 0
    shutdown_time: Optional[int] = None
    hs06: float = 0.0

    @property
    def is_free(self) -> bool:
        return self.machinetype is None


@dataclass(frozen=True)
class MachinetypeReport:
    """One factory's `machinetype_status` for one machinetype (§3.5), as the scheduler uses it."""

    factory: str
    machinetype: str
    running_hs06: float
    num_before_fizzle: int
    shutdown_message: Optional[str] = None
    shutdown_time: Optional[int] = None
    shutdown_machine: Optional[str] = None
    # Live machines of the type on that factory, starting ones included (§3.5's
    # running_machines); None when the peer did not say. More than num_before_fizzle means a
    # machine of the type has outlived fizzle_seconds there: it found work.
    running_machines: Optional[int] = None

    @property
    def runs_past_fizzle(self) -> bool:
        """A machine of the type has outlived fizzle_seconds on this factory (it found work)."""
        if self.running_machines is not None:
            return self.running_machines > self.num_before_fizzle
        # A peer that does not say how many run: only when none of them is young.
        return self.running_hs06 > 0 and self.num_before_fizzle == 0


@dataclass(frozen=True)
class Create:
    """Create a machine of `machinetype` with `processors` in slot `ordinal`, ending at `shutdown_time`."""

    ordinal: int
    machinetype: str
    processors: int
    shutdown_time: int
    is_probe: bool = False


@dataclass(frozen=True)
class Outlook:
    """Why nothing more was created this pass, and each machinetype's score and backoff."""

    gate: Optional[str]
    scores: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    backoff_until: Mapping[str, int] = field(default_factory=dict)
    # Machinetypes whose creations are still probes after an abort (see probe_end), until when:
    # the space has not yet seen them find work, so pre-emption makes no room for them.
    probing_until: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Decisions:
    creates: tuple[Create, ...]
    outlook: Outlook


@dataclass(frozen=True)
class SchedulerInput:
    """Everything `decide` looks at, in one value so tests and the simulator build it alike."""

    now: int
    settings: Settings
    machinetypes: Mapping[str, Machinetype]
    slots: Sequence[SlotView]
    reports: Sequence[MachinetypeReport]
    load_average: float = 0.0
    host_cpu_count: int = 1
    draining: bool = False
    creation_failure_until: Mapping[str, int] = field(default_factory=dict)
    probe_spread_seconds: int = DEFAULT_PROBE_SPREAD_SECONDS
    # vacd's probe limit: no probe while one of the type is young anywhere. Only the replay of
    # Vac 03's loop (vacd/sim/vac03_site.py) turns it off: Vac made one creation a cycle.
    one_probe_at_a_time: bool = True
    # A factory-wide fault that stops creation (a bad reload, a full disk), as the gate reason.
    blocked_by: Optional[str] = None
    # Why the disk cannot take a new machine (vacd.diskspace), or None (issue 8 item 4).
    disk_problem: Optional[str] = None


# A payload's verdict of 700 or more says it failed, not that there is no work: Vcycle counts
# only 300-699 as "no work". Alone such failures back off no one; once they are at least half
# of a machinetype's recent outcomes across the space, it has no usable work and backs off
# (issue 9 item 3; 5 % of payloads failing skewed shares by 7.7 % under Vac 03's rule).
# Each factory has one vote per machinetype: its latest outcome in the window or, if it has
# none there, a machine of the type running past fizzle_seconds (it found work). Without
# that second kind of vote, a type's only outcomes in its first hour were its early
# failures (working payloads run for hours), and 5 % failing backed it off site-wide.
FIRST_FAILURE_CODE = 700
FAILURE_RATE_WINDOW_SECONDS = 3600
FAILURE_RATE_THRESHOLD = 0.5


def last_abort_times(
    reports: Sequence[MachinetypeReport], now: Optional[int] = None, rule: str = "vac03"
) -> dict[str, int]:
    """The latest abort time per machinetype anywhere in the space (§4.2), under `rule`.

    "vac03": every payload verdict of 300 or more is an abort at once (§4.4). "failure_rate":
    300-699 are aborts at once; 700 and more count only while they are at least
    FAILURE_RATE_THRESHOLD of the machinetype's votes of the last FAILURE_RATE_WINDOW_SECONDS
    (each factory's latest outcome, or a machine past fizzle where it has no outcome in the
    window), and then from the latest of them.
    """
    last_abort: dict[str, int] = {}
    votes: dict[str, int] = {}
    failures: dict[str, list[int]] = {}
    for report in reports:
        in_window = (
            now is not None and report.shutdown_time is not None
            and report.shutdown_time >= now - FAILURE_RATE_WINDOW_SECONDS
        )
        if rule == "failure_rate" and now is not None and (in_window or report.runs_past_fizzle):
            votes[report.machinetype] = votes.get(report.machinetype, 0) + 1
        if report.shutdown_time is None:
            continue
        if not is_abort(report.shutdown_message):
            continue
        code = shutdown_code(report.shutdown_message)
        if rule == "failure_rate" and code is not None and code >= FIRST_FAILURE_CODE:
            if now is None or report.shutdown_time >= now - FAILURE_RATE_WINDOW_SECONDS:
                failures.setdefault(report.machinetype, []).append(report.shutdown_time)
            continue
        previous = last_abort.get(report.machinetype, report.shutdown_time)
        last_abort[report.machinetype] = max(previous, report.shutdown_time)
    for machinetype, times in failures.items():
        if len(times) >= FAILURE_RATE_THRESHOLD * max(1, votes.get(machinetype, 0)):
            last_abort[machinetype] = max(last_abort.get(machinetype, max(times)), max(times))
    return last_abort


def probe_stagger_seconds(factory_name: str, machinetype: str, abort_time: int, spread_seconds: int) -> int:
    """This factory's place in the probe order after an abort, as seconds of extra wait."""
    if spread_seconds <= 0:
        return 0
    digest = hashlib.sha256(f"{factory_name}\0{machinetype}\0{abort_time}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % spread_seconds


def backoff_end(
    machinetype: Machinetype,
    last_abort: Optional[int],
    num_before_fizzle: int,
    factory_name: str,
    spread_seconds: int,
) -> Optional[int]:
    """When this factory may next create the machinetype after an abort, or None if no abort."""
    if last_abort is None:
        return None
    end = last_abort + machinetype.backoff_seconds
    if num_before_fizzle > 0:
        # Someone is probing: give the probe fizzle_seconds to find work or abort (§4.3).
        return end + machinetype.fizzle_seconds
    return end + probe_stagger_seconds(factory_name, machinetype.name, last_abort, spread_seconds)


def types_showing_work(reports: Sequence[MachinetypeReport], last_abort: Mapping[str, int]) -> set[str]:
    """The machinetypes the space shows to have work since their last abort, or never aborted.

    Shown: a machine of the type has outlived fizzle_seconds on some factory (a payload with
    no work ends before it, §4.3), or some factory's latest outcome of it is later than the
    abort and is no abort.
    """
    shown = set()
    for report in reports:
        abort = last_abort.get(report.machinetype)
        if abort is None or report.runs_past_fizzle:
            shown.add(report.machinetype)
        elif (report.shutdown_time is not None and report.shutdown_time > abort
              and not is_abort(report.shutdown_message)):
            shown.add(report.machinetype)
    return shown


def _settle_time(machinetype: Machinetype, last_abort: int, state: SchedulerInput) -> int:
    return last_abort + machinetype.backoff_seconds + machinetype.fizzle_seconds + state.probe_spread_seconds


def probe_end(machinetype: Machinetype, last_abort: Optional[int], shows_work: bool, state: SchedulerInput) -> Optional[int]:
    """Until when a creation of the machinetype is a probe (one a pass, others wait for it), or None.

    A probe while the space has not seen the type flow since its abort: for backoff,
    fizzle and the probe spread after the abort (the time a probe takes to show work),
    and beyond that for as long as nothing shows the type to have work. The second part
    matters when no probe could be made in that time (every factory was full): without
    it, the first slots to free after the backoff lapsed went to the type with no work,
    the most starved type, up to max_creations_per_cycle on every factory at once (issue
    9: 528 of 3,200 processors when a whole site's machines reached
    max_wallclock_seconds together). Then the end is now + fizzle_seconds, the earliest a
    probe made now could show work.
    """
    if last_abort is None:
        return None
    settle = _settle_time(machinetype, last_abort, state)
    if state.now < settle:
        return settle
    if shows_work:
        return None
    return state.now + machinetype.fizzle_seconds


def gate(state: SchedulerInput, running_processors: int, count_capacity: bool = True) -> Optional[str]:
    """The first of the gates that blocks creation, as a reason, or None.

    A full disk comes first (a vacd addition, issue 8 item 4): it is a fault the admin
    must see even on a loaded or busy factory. Then Vac's gates (§4.1) in their order.
    With `count_capacity` False the last gate, all processors in use, is left out: what
    pre-emption asks (a full factory may make room; a draining or overloaded one may not).
    """
    if state.disk_problem is not None:
        return state.disk_problem
    if state.blocked_by is not None:
        return state.blocked_by
    settings = state.settings
    load = state.load_average
    overload = settings.overload_per_processor
    if running_processors > OVERLOAD_MIN_RUNNING_PROCESSORS and load > overload * running_processors:
        return f"load {load:.2f} > {overload} x {running_processors} running processors"
    if load > overload * state.host_cpu_count:
        return f"load {load:.2f} > {overload} x {state.host_cpu_count} host processors"
    if settings.shutdown_time is not None and state.now >= settings.shutdown_time:
        return f"shutdown_time {settings.shutdown_time} has passed"
    if settings.draining or state.draining:
        return "draining"
    if count_capacity and running_processors >= settings.total_processors:
        return f"all {settings.total_processors} processors in use"
    return None


def decide(state: SchedulerInput, tie_break: RandomSource) -> Decisions:
    """Return the machines to create now, in order, each in its own free slot."""
    settings = state.settings
    machinetypes = {name: mt for name, mt in state.machinetypes.items() if mt.target_share > 0}
    running_processors = sum(slot.processors for slot in state.slots if not slot.is_free)
    free_ordinals = sorted(slot.ordinal for slot in state.slots if slot.is_free)

    # Scores are summed with math.fsum so that the order of the peers' reports cannot change a
    # tie by float rounding (the same reports must give the same decision in any order).
    score_terms: dict[str, list[float]] = {name: [] for name in machinetypes}
    before_fizzle: dict[str, int] = {name: 0 for name in machinetypes}
    for report in state.reports:
        if report.machinetype in machinetypes:
            share = machinetypes[report.machinetype].target_share
            score_terms[report.machinetype].append(report.running_hs06 / share)
            before_fizzle[report.machinetype] += report.num_before_fizzle
    type_score = {name: math.fsum(terms) for name, terms in score_terms.items()}
    last_abort = last_abort_times(state.reports, state.now, settings.abort_rule)
    shown = types_showing_work(state.reports, last_abort)

    backoff_until: dict[str, int] = {}
    for name, machinetype in machinetypes.items():
        end = backoff_end(
            machinetype, last_abort.get(name), before_fizzle[name], settings.factory_name, state.probe_spread_seconds
        )
        if end is not None and end >= state.now:
            backoff_until[name] = end
        failure_end = state.creation_failure_until.get(name)
        if failure_end is not None and failure_end > state.now:
            backoff_until[name] = max(backoff_until.get(name, 0), failure_end)

    probing_until: dict[str, int] = {}
    for name, machinetype in machinetypes.items():
        end = probe_end(machinetype, last_abort.get(name), name in shown, state)
        if end is not None:
            probing_until[name] = end

    blocked_by = gate(state, running_processors)
    if blocked_by is not None or not free_ordinals:
        return Decisions((), Outlook(
            blocked_by or "no free slot", _scores(machinetypes, type_score), backoff_until, probing_until
        ))

    superslots: dict[int, int] = {}
    for slot in state.slots:
        if not slot.is_free and slot.shutdown_time is not None:
            superslots[slot.shutdown_time] = superslots.get(slot.shutdown_time, 0) + slot.processors

    tie = {name: tie_break.random() for name in sorted(machinetypes)}
    creates: list[Create] = []
    # One probe of a type at a time in the space: while a machine of a type not yet shown to
    # have work is before fizzle anywhere, it is the probe, and no factory makes another
    # until it has found work or aborted.
    probed: set[str] = (
        {name for name in probing_until if before_fizzle[name] > 0} if state.one_probe_at_a_time else set()
    )
    hs06_per_processor = settings.hs06_per_processor or 1.0
    while len(creates) < settings.max_creations_per_cycle and free_ordinals:
        eligible = _eligible_in_order(
            state, machinetypes, type_score, before_fizzle, backoff_until, probed, tie
        )
        if not eligible:
            break
        free_processors = settings.total_processors - running_processors
        choice = _choose_with_superslots(state, eligible, superslots, free_processors)
        if choice is None:
            break
        name, processors, shutdown_time = choice
        is_probe = name in probing_until
        creates.append(Create(free_ordinals.pop(0), name, processors, shutdown_time, is_probe))
        running_processors += processors
        superslots[shutdown_time] = superslots.get(shutdown_time, 0) + processors
        score_terms[name].append(processors * hs06_per_processor / machinetypes[name].target_share)
        type_score[name] = math.fsum(score_terms[name])
        before_fizzle[name] += 1
        if is_probe:
            probed.add(name)
        if gate(state, running_processors) is not None:
            break
    gate_after = gate(state, running_processors)
    return Decisions(tuple(creates), Outlook(
        gate_after, _scores(machinetypes, type_score), backoff_until, probing_until
    ))


def _scores(machinetypes: Mapping[str, Machinetype], type_score: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    group_terms: dict[str, list[float]] = {}
    for name, machinetype in machinetypes.items():
        group_terms.setdefault(machinetype.machinegroup, []).append(type_score[name])
    group_score = {group: math.fsum(terms) for group, terms in group_terms.items()}
    return {name: (group_score[mt.machinegroup], type_score[name]) for name, mt in machinetypes.items()}


def _eligible_in_order(
    state: SchedulerInput,
    machinetypes: Mapping[str, Machinetype],
    type_score: Mapping[str, float],
    before_fizzle: Mapping[str, int],
    backoff_until: Mapping[str, int],
    probed: set[str],
    tie: Mapping[str, float],
) -> list[Machinetype]:
    """Eligible machinetypes (§4.3), most starved first by (group score, type score, tie) (§4.5)."""
    scores = _scores(machinetypes, type_score)
    eligible = []
    for name, machinetype in machinetypes.items():
        if name in backoff_until or name in probed:
            continue
        shutdown_time = state.settings.shutdown_time
        if shutdown_time is not None and not state.now + machinetype.min_wallclock_seconds < shutdown_time:
            continue
        eligible.append(machinetype)
    eligible.sort(key=lambda machinetype: (*scores[machinetype.name], tie[machinetype.name], machinetype.name))
    return eligible


def _choose_with_superslots(
    state: SchedulerInput,
    eligible: Sequence[Machinetype],
    superslots: Mapping[int, int],
    free_processors: int,
) -> Optional[tuple[str, int, int]]:
    """Vac's superslot procedure (§5): (machinetype, processors, shutdown_time) or None."""
    per_superslot = state.settings.processors_per_superslot
    free = free_processors
    for end_time in sorted(superslots):
        used = superslots[end_time] % per_superslot
        if used == 0:
            continue
        need = min(free, per_superslot - used)
        free -= need
        remaining = end_time - state.now
        for machinetype in eligible:
            if (
                need >= machinetype.min_processors
                and machinetype.min_wallclock_seconds <= remaining <= machinetype.max_wallclock_seconds
            ):
                return machinetype.name, min(need, machinetype.max_processors, per_superslot), end_time
    if free <= 0:
        return None
    for machinetype in eligible:
        if min(free, per_superslot) >= machinetype.min_processors:
            processors = min(free, machinetype.max_processors, per_superslot)
            return machinetype.name, processors, state.now + machinetype.max_wallclock_seconds
    return None
