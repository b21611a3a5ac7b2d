"""Decide which running machines to end early so a starved machinetype gets its share back.

Pure (design.md rule 1): the time, the configuration, this factory's running machines, the
space's machinetype reports and the backoffs go in; `Preempt` decisions come out. No I/O, no
clock. The factory carries them out (vacd/preemptor.py): it lowers the machine's shutdown time
and its Machine/Job Features `shutdowntime` and `shutdowntime_job` to now + grace, so the
payload can finish or checkpoint as the MJF specification intends, and policing stops the
machine at that time with `PREEMPTED`, a factory ending that is never an abort.

Why: a machinetype that had no work and gets some can only take back its share as other
types' machines end, and they run for hours (issue 9: 93 cycles to come back within 5 %).
Vac 03 never pre-empted, so this is opt-in (`preemption_grace_seconds`, 0 = off).

The rule, each bound there so that a site cannot thrash:
- Space-wide view: every type's running HS06 summed over all reports (this factory's and
  its peers'). A type is proven to have work when it is not backed off and the space
  shows work now: the latest outcome any factory reports for it is no abort, this factory
  runs a machine of it older than fizzle_seconds, or a peer runs more machines of it than
  it has before fizzle_seconds (`MachinetypeReport.runs_past_fizzle`: a machine that
  outlived fizzle found work; a peer that does not send running_machines shows it only
  with none young). Once shown, the proof is remembered (`proven_since`, kept
  by the factory) until the type is backed off or in its probe time after an abort again
  (`vacd.scheduler.Outlook.probing_until`), so the young machines then created for it do
  not hide it. A type whose payloads find no work never shows it, even when its last
  abort is old because full factories made no probe, so nothing is pre-empted for it.
  The target
  of a proven type is its target_share over the shares of the proven types, times the
  HS06 running in the space. Only proven types gain or give.
- A gaining type is below its target by more than `margin` (a fraction of the space's
  running HS06); nothing is pre-empted while this factory has free processors it could
  create the gaining type in (the scheduler fills them instead).
- How much: the gaining types' deficits together, taken from the over-share types, the
  most over first, never more than a type's excess (no type is pushed below its target).
  Each type's part is shared out among the factories in proportion to the HS06 of it they
  run, in whole HS06 by largest remainder with a hash of (factory, machinetype) breaking
  ties, so every factory that heard the same census computes the same split and the parts
  add up to no more than the gap. A machine whose pre-emption is pending still runs and
  is still reported; it counts against its factory's part, so the censuses of the grace
  time, which see the same gap, take nothing twice.
- Victims: within its part, a factory ends its youngest machines of the type first (the
  least work is lost; a young payload has the least to checkpoint). Never a machine
  younger than max(fizzle_seconds, min_wallclock_seconds) of its type: before fizzle its
  outcome is still being judged, and min_wallclock_seconds is what the admin said a
  machine of the type needs (it defaults to max_wallclock_seconds, so a type is
  pre-emptable only if its admin set a shorter min_wallclock_seconds). At most
  `max_preemptions` machines (max_preemptions_per_cycle, per cycle_seconds).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Collection, Mapping, Sequence

from vacd.config import Machinetype
from vacd.outcomes import is_abort
from vacd.scheduler import MachinetypeReport


@dataclass(frozen=True)
class RunningMachineView:
    """One of this factory's running machines, as pre-emption needs it."""

    name: str
    machinetype: str
    processors: int
    hs06: float
    started_time: int
    # Its shutdown time was already lowered by pre-emption and it has not ended yet.
    preempted: bool = False


@dataclass(frozen=True)
class Preempt:
    """End machine `name` (of `machinetype`) at `shutdown_time`, to give `gaining` room."""

    name: str
    machinetype: str
    processors: int
    hs06: float
    started_time: int
    shutdown_time: int
    gaining: str


@dataclass(frozen=True)
class PreemptionInput:
    now: int
    factory_name: str
    grace_seconds: int
    margin: float
    max_preemptions: int
    machinetypes: Mapping[str, Machinetype]
    machines: Sequence[RunningMachineView]
    # This factory's reports and its peers' (one census), as the scheduler was given them.
    reports: Sequence[MachinetypeReport]
    backoff_until: Mapping[str, int]
    probing_until: Mapping[str, int]
    free_processors: int
    # Machinetypes shown to have work by an earlier pass, since when (see proven_types).
    proven_since: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ShareGaps:
    """The space-wide picture in HS06: running per type, target per proven type, and the total."""

    running: Mapping[str, float]
    target: Mapping[str, float]
    total: float

    def deficit(self, machinetype: str) -> float:
        return self.target[machinetype] - self.running.get(machinetype, 0.0)


def proven_types(
    machinetypes: Mapping[str, Machinetype],
    reports: Sequence[MachinetypeReport],
    backed_off: Collection[str],
    proven_before: Collection[str] = (),
    probing: Collection[str] = (),
) -> set[str]:
    """The machinetypes the space shows to have work now, or showed since their last abort."""
    latest: dict[str, MachinetypeReport] = {}
    running_past_fizzle: set[str] = set()
    for report in reports:
        if report.shutdown_time is not None:
            known = latest.get(report.machinetype)
            if known is None or known.shutdown_time is None or report.shutdown_time > known.shutdown_time:
                latest[report.machinetype] = report
        if report.runs_past_fizzle:
            running_past_fizzle.add(report.machinetype)
    proven = set()
    for name, machinetype in machinetypes.items():
        if machinetype.target_share <= 0 or name in backed_off:
            continue
        last = latest.get(name)
        if name in running_past_fizzle or (last is not None and not is_abort(last.shutdown_message)):
            proven.add(name)
        elif name in proven_before and name not in probing:
            proven.add(name)
    return proven


def share_gaps(
    machinetypes: Mapping[str, Machinetype],
    reports: Sequence[MachinetypeReport],
    proven_names: Collection[str],
) -> ShareGaps:
    """Each proven type's target and every type's running HS06, space-wide (module rules)."""
    proven = {name: mt for name, mt in machinetypes.items() if name in proven_names}
    terms: dict[str, list[float]] = {}
    for report in reports:
        if report.machinetype in machinetypes:
            terms.setdefault(report.machinetype, []).append(report.running_hs06)
    running = {name: math.fsum(values) for name, values in terms.items()}
    total = math.fsum(running.values())
    shares = math.fsum(mt.target_share for mt in proven.values())
    target = {name: total * mt.target_share / shares for name, mt in proven.items()} if shares > 0 else {}
    return ShareGaps(running, target, total)


def protected_until(machine: RunningMachineView, machinetype: Machinetype) -> int:
    """The time before which the machine is never pre-empted."""
    return machine.started_time + max(machinetype.fizzle_seconds, machinetype.min_wallclock_seconds)


def space_wide_takes(gaps: ShareGaps, gaining: Sequence[str]) -> dict[str, float]:
    """HS06 to take from each over-share type: the gaining deficits, most over-share type first."""
    wanted = math.fsum(gaps.deficit(name) for name in gaining)
    takes: dict[str, float] = {}
    over_share = [name for name in gaps.target if gaps.deficit(name) < 0]
    for name in sorted(over_share, key=lambda name: (gaps.deficit(name), name)):  # the most over first
        if wanted <= 0:
            break
        take = min(-gaps.deficit(name), wanted)
        takes[name] = take
        wanted -= take
    return takes


def factory_parts(take: float, holdings: Mapping[str, float], machinetype: str) -> dict[str, int]:
    """`take` HS06 shared among factories by their `holdings`, in whole HS06 (largest remainder).

    Every factory computes the same split from the same holdings; the parts add up to
    floor(take) at most, and no factory's part exceeds its holding.
    """
    held = math.fsum(holdings.values())
    units = int(math.floor(take + 1e-9))
    if held <= 0 or units <= 0:
        return {}
    exact = {factory: take * amount / held for factory, amount in holdings.items()}
    parts = {factory: int(math.floor(value + 1e-9)) for factory, value in exact.items()}
    left = units - sum(parts.values())
    order = sorted(exact, key=lambda factory: (-(exact[factory] - parts[factory]), _tie(factory, machinetype)))
    for factory in order[:max(0, left)]:
        if parts[factory] + 1 <= holdings[factory] + 1e-9:
            parts[factory] += 1
    return parts


def _tie(factory: str, machinetype: str) -> bytes:
    return hashlib.sha256(f"{factory.lower()}\0{machinetype}".encode()).digest()


def proven_now(state: PreemptionInput) -> set[str]:
    proven = proven_types(state.machinetypes, state.reports, state.backoff_until, state.proven_since, state.probing_until)
    for machine in state.machines:
        machinetype = state.machinetypes.get(machine.machinetype)
        if (machinetype is not None and machinetype.target_share > 0 and machine.machinetype not in state.backoff_until
                and not machine.preempted and state.now >= machine.started_time + machinetype.fizzle_seconds):
            proven.add(machine.machinetype)
    return proven


def remembered_proofs(state: PreemptionInput) -> dict[str, int]:
    """`proven_since` for the next pass: kept, gained from this pass's reports, or dropped."""
    return {name: state.proven_since.get(name, state.now) for name in sorted(proven_now(state))}


def decide_preemptions(state: PreemptionInput) -> tuple[Preempt, ...]:
    """The machines to end at now + grace, in order; empty when nothing needs to go."""
    if state.grace_seconds <= 0 or state.max_preemptions <= 0:
        return ()
    proven = proven_now(state)
    gaps = share_gaps(state.machinetypes, state.reports, proven)
    if gaps.total <= 0:
        return ()
    margin_hs06 = state.margin * gaps.total
    gaining = sorted(
        (name for name in gaps.target if gaps.deficit(name) > margin_hs06),
        key=lambda name: (-gaps.deficit(name), name),
    )
    # A type this factory could create now is the scheduler's to place, not pre-emption's.
    gaining = [name for name in gaining if state.machinetypes[name].min_processors > state.free_processors]
    if not gaining:
        return ()
    me = state.factory_name.lower()
    preempts: list[Preempt] = []
    for victim, take in space_wide_takes(gaps, gaining).items():
        holdings: dict[str, float] = {}
        for report in state.reports:
            if report.machinetype == victim and report.running_hs06 > 0:
                holdings[report.factory.lower()] = holdings.get(report.factory.lower(), 0.0) + report.running_hs06
        pending = math.fsum(machine.hs06 for machine in state.machines
                            if machine.preempted and machine.machinetype == victim)
        part = factory_parts(take, holdings, victim).get(me, 0) - pending
        machinetype = state.machinetypes[victim]
        candidates = sorted(
            (machine for machine in state.machines
             if machine.machinetype == victim and not machine.preempted
             and state.now >= protected_until(machine, machinetype)),
            key=lambda machine: (-machine.started_time, machine.name),  # youngest first
        )
        for machine in candidates:
            if len(preempts) >= state.max_preemptions:
                return tuple(preempts)
            if machine.hs06 > part + 1e-9:
                continue
            preempts.append(Preempt(machine.name, victim, machine.processors, machine.hs06,
                                    machine.started_time, state.now + state.grace_seconds, gaining[0]))
            part -= machine.hs06
    return tuple(preempts)
