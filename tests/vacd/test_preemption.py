"""The pre-emption rule (vacd/preemption.py): room for a starved machinetype, bounded.

Pure tests: reports, machines and backoffs in, `Preempt` decisions out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from hypothesis import given, settings as hypothesis_settings, strategies as st

from vacd.config import Machinetype
from vacd.preemption import (
    PreemptionInput,
    RunningMachineView,
    decide_preemptions,
    factory_parts,
    proven_now,
    proven_types,
    remembered_proofs,
    share_gaps,
)
from vacd.scheduler import MachinetypeReport

NOW = 1_700_100_000
ME = "f1.example.com"


def machinetype(name: str, share: float, fizzle: int = 600, min_wallclock: int = 600) -> Machinetype:
    return Machinetype(name=name, machinegroup=name, machinetype_path=Path("/var/lib/vac/machinetypes") / name,
                       target_share=share, fizzle_seconds=fizzle, max_wallclock_seconds=86400,
                       min_wallclock_seconds=min_wallclock)


TYPES = {"atlas": machinetype("atlas", 1.0), "lhcb": machinetype("lhcb", 1.0)}


def report(factory: str, name: str, running: float, before_fizzle: int = 0,
           message: Optional[str] = None, at: Optional[int] = None) -> MachinetypeReport:
    return MachinetypeReport(factory, name, running, before_fizzle, message, at, None)


def machines(name: str, count: int, *, age: int = 7200, prefix: str = "m") -> list[RunningMachineView]:
    # Started one second apart: the highest index is the youngest.
    return [RunningMachineView(f"{prefix}{index:02d}", name, 1, 1.0, NOW - age + index) for index in range(count)]


def state(reports: Sequence[MachinetypeReport], local: Sequence[RunningMachineView], **changes: object) -> PreemptionInput:
    fields: dict[str, object] = dict(
        now=NOW, factory_name=ME, grace_seconds=60, margin=0.02, max_preemptions=100, machinetypes=TYPES,
        machines=local, reports=reports, backoff_until={}, probing_until={}, free_processors=0,
    )
    fields.update(changes)
    return PreemptionInput(**fields)  # type: ignore[arg-type]


def atlas_just_proven(local_lhcb: int = 10) -> list[MachinetypeReport]:
    """A one-factory space of 10 processors: lhcb holds them all; atlas's last payload worked."""
    return [report(ME, "lhcb", float(local_lhcb)), report(ME, "atlas", 0.0, message="200 Success", at=NOW - 30)]


def test_a_starved_type_with_work_gets_its_gap_from_the_youngest_over_share_machines() -> None:
    picks = decide_preemptions(state(atlas_just_proven(), machines("lhcb", 10)))
    assert [pick.name for pick in picks] == ["m09", "m08", "m07", "m06", "m05"]  # half of 10, youngest first
    assert {pick.gaining for pick in picks} == {"atlas"}
    assert {pick.shutdown_time for pick in picks} == {NOW + 60}


def test_pre_emption_is_off_with_no_grace() -> None:
    assert decide_preemptions(state(atlas_just_proven(), machines("lhcb", 10), grace_seconds=0)) == ()


def test_a_type_whose_last_outcome_was_an_abort_and_runs_nothing_past_fizzle_gets_nothing() -> None:
    # A type with no work whose last abort is old (full factories made no probe) is not
    # shown to have work: pre-empting for it would end work for a probe that finds none.
    reports = [report(ME, "lhcb", 10.0), report(ME, "atlas", 0.0, message="300 No more work", at=NOW - 3600)]
    assert decide_preemptions(state(reports, machines("lhcb", 10))) == ()


def test_a_type_running_a_machine_past_fizzle_is_proven_although_its_last_outcome_was_an_abort() -> None:
    reports = [report(ME, "lhcb", 9.0), report("f2.example.com", "atlas", 1.0, before_fizzle=0,
                                               message="300 No more work", at=NOW - 3600)]
    assert proven_types(TYPES, reports, ()) == {"atlas", "lhcb"}
    assert decide_preemptions(state(reports, machines("lhcb", 9)))


def test_a_peers_machine_past_fizzle_proves_work_although_a_young_one_runs_beside_it() -> None:
    # The peer's count of running machines says one of its two atlas machines is old: the
    # proof reaches every factory in the census that first hears it (issue 9 item 3).
    old_and_young = MachinetypeReport("f2.example.com", "atlas", 2.0, 1, "300 No more work", NOW - 3600, None,
                                      running_machines=2)
    reports = [report(ME, "lhcb", 8.0), old_and_young]
    assert proven_types(TYPES, reports, (), probing={"atlas"}) == {"atlas", "lhcb"}
    assert decide_preemptions(state(reports, machines("lhcb", 8), probing_until={"atlas": NOW + 600}))
    # Without the count (a Vac 03 peer sends it, an older report may not) the young one hides it.
    hidden = [report(ME, "lhcb", 8.0), report("f2.example.com", "atlas", 2.0, before_fizzle=1,
                                              message="300 No more work", at=NOW - 3600)]
    assert proven_types(TYPES, hidden, (), probing={"atlas"}) == {"lhcb"}


def test_nothing_is_pre_empted_for_a_backed_off_type() -> None:
    assert decide_preemptions(state(atlas_just_proven(), machines("lhcb", 10), backoff_until={"atlas": NOW + 5})) == ()


def test_a_probing_type_gains_only_on_work_shown_now_not_on_a_remembered_proof() -> None:
    probing = {"atlas": NOW + 5}
    assert decide_preemptions(state(atlas_just_proven(), machines("lhcb", 10), probing_until=probing))
    no_evidence = [report(ME, "lhcb", 10.0), report(ME, "atlas", 0.0, message="300 No more work", at=NOW - 30)]
    assert decide_preemptions(state(no_evidence, machines("lhcb", 10), probing_until=probing,
                                    proven_since={"atlas": NOW - 600})) == ()
    assert decide_preemptions(state(no_evidence, machines("lhcb", 10), proven_since={"atlas": NOW - 600}))


def test_nothing_is_pre_empted_while_the_factory_has_room_to_create_the_starved_type() -> None:
    assert decide_preemptions(state(atlas_just_proven(), machines("lhcb", 10), free_processors=1)) == ()


def test_machines_younger_than_fizzle_or_min_wallclock_are_never_pre_empted() -> None:
    young = machines("lhcb", 10, age=599)
    assert decide_preemptions(state(atlas_just_proven(), young)) == ()
    full_time = {**TYPES, "lhcb": machinetype("lhcb", 1.0, min_wallclock=86400)}  # vac.conf's default: min = max
    assert decide_preemptions(state(atlas_just_proven(), machines("lhcb", 10), machinetypes=full_time)) == ()


def test_a_gap_within_the_margin_is_left_alone() -> None:
    reports = [report(ME, "lhcb", 51.0), report(ME, "atlas", 49.0, message="200 Success", at=NOW - 30)]
    local = machines("lhcb", 51) + machines("atlas", 49, prefix="a")
    assert decide_preemptions(state(reports, local)) == ()  # 1 % under target, margin 2 %


def test_at_most_max_preemptions_a_cycle() -> None:
    assert len(decide_preemptions(state(atlas_just_proven(), machines("lhcb", 10), max_preemptions=2))) == 2


def test_pending_pre_emptions_count_as_room_already_given() -> None:
    local = machines("lhcb", 10)
    pending = [RunningMachineView(m.name, m.machinetype, m.processors, m.hs06, m.started_time, preempted=True)
               for m in local[5:]]
    # The next census still sees all 10 running (they have not ended yet): nothing more goes.
    assert decide_preemptions(state(atlas_just_proven(), local[:5] + pending)) == ()
    assert len(decide_preemptions(state(atlas_just_proven(), local[:7] + pending[2:]))) == 2


def test_every_factory_takes_its_own_part_and_the_parts_add_up_to_the_gap() -> None:
    factories = [f"f{index}.example.com" for index in range(7)]
    reports = [report(name, "lhcb", 3.0) for name in factories] + [
        report(factories[0], "atlas", 0.0, message="200 Success", at=NOW - 30)]
    total = 0
    for name in factories:
        picks = decide_preemptions(state(reports, machines("lhcb", 3, prefix=name), factory_name=name))
        total += len(picks)
    assert total == 10  # atlas's target is 21 / 2 = 10.5; whole machines only, never more than the gap


def test_factory_parts_never_exceed_the_take_nor_a_holding() -> None:
    parts = factory_parts(4.0, {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 1.0}, "lhcb")
    assert sum(parts.values()) == 4 and max(parts.values()) == 1


factory_names = st.sampled_from([f"f{index}.example.com" for index in range(5)])
type_names = st.sampled_from(["atlas", "lhcb", "cms"])


@st.composite
def spaces(draw: st.DrawFn) -> tuple[PreemptionInput, dict[str, Machinetype]]:
    types = {name: machinetype(name, draw(st.sampled_from([0.0, 1.0, 2.0, 3.0]))) for name in ("atlas", "lhcb", "cms")}
    holdings = draw(st.dictionaries(st.tuples(factory_names, type_names), st.integers(0, 12), max_size=15))
    reports: list[MachinetypeReport] = []
    local: list[RunningMachineView] = []
    for (factory, name), count in sorted(holdings.items()):
        message = draw(st.sampled_from([None, "200 Success", "300 No more work"]))
        reports.append(report(factory, name, float(count), draw(st.integers(0, 1)), message,
                              None if message is None else NOW - 100))
        if factory == "f0.example.com":
            local.extend(RunningMachineView(f"{name}{index}", name, 1, 1.0, NOW - draw(st.integers(0, 20000)))
                         for index in range(count))
    picked = state(reports, local, factory_name="f0.example.com", machinetypes=types,
                   margin=draw(st.sampled_from([0.0, 0.02, 0.1])), max_preemptions=draw(st.integers(1, 50)),
                   backoff_until={name: NOW + 10 for name in draw(st.sets(type_names, max_size=1))})
    return picked, types


@hypothesis_settings(max_examples=300, deadline=None)
@given(spaces())
def test_never_pre_empts_a_type_below_its_target_nor_more_than_the_gap(space: tuple[PreemptionInput, dict[str, Machinetype]]) -> None:
    picked, types = space
    picks = decide_preemptions(picked)
    gaps = share_gaps(types, picked.reports, proven_now(picked))
    gap = sum(gaps.deficit(name) for name in gaps.target if gaps.deficit(name) > picked.margin * gaps.total)
    assert sum(pick.hs06 for pick in picks) <= gap + 1e-9
    assert len(picks) <= picked.max_preemptions
    assert len({pick.name for pick in picks}) == len(picks)
    for name in {pick.machinetype for pick in picks}:
        taken = sum(pick.hs06 for pick in picks if pick.machinetype == name)
        assert name in gaps.target and gaps.running.get(name, 0.0) - taken >= gaps.target[name] - 1e-9
    for pick in picks:
        assert pick.gaining in gaps.target and pick.gaining not in picked.backoff_until
        started = next(m.started_time for m in picked.machines if m.name == pick.name)
        assert picked.now - started >= max(types[pick.machinetype].fizzle_seconds,
                                           types[pick.machinetype].min_wallclock_seconds)


def test_a_proof_of_work_is_remembered_until_the_type_backs_off_again() -> None:
    # The peer's first atlas machine outlived fizzle, then a second, young one hides it.
    shown = [report(ME, "lhcb", 9.0), report("f2.example.com", "atlas", 1.0, before_fizzle=0,
                                             message="300 No more work", at=NOW - 3600)]
    hidden = [report(ME, "lhcb", 8.0), report("f2.example.com", "atlas", 2.0, before_fizzle=1,
                                              message="300 No more work", at=NOW - 3600)]
    remembered = remembered_proofs(state(shown, machines("lhcb", 9)))
    assert "atlas" in remembered
    assert decide_preemptions(state(hidden, machines("lhcb", 8), proven_since=remembered))
    assert decide_preemptions(state(hidden, machines("lhcb", 8))) == ()
    assert "atlas" not in remembered_proofs(state(hidden, machines("lhcb", 8), proven_since=remembered,
                                                  backoff_until={"atlas": NOW + 10}))


def test_a_local_machine_past_fizzle_proves_work_although_the_reports_cannot_show_it() -> None:
    # Our atlas machine outlived fizzle; a younger one makes our report say "1 before fizzle".
    local = machines("lhcb", 8) + [RunningMachineView("a0", "atlas", 1, 1.0, NOW - 700),
                                   RunningMachineView("a1", "atlas", 1, 1.0, NOW - 10)]
    reports = [report(ME, "lhcb", 8.0), report(ME, "atlas", 2.0, before_fizzle=1, message="300 No more work",
                                               at=NOW - 3600)]
    assert [pick.machinetype for pick in decide_preemptions(state(reports, local))] == ["lhcb", "lhcb", "lhcb"]
