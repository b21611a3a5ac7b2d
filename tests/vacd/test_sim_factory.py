"""The site simulator runs the real vacd.factory.Factory: change a factory rule and the site follows (issue 9 item 1)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import pytest

import vacd.factory
from vacd.outcomes import EXCEEDED_WALLCLOCK
from vacd.scheduler import Decisions
from vacd.sim.events import NetworkConditions
from vacd.sim.scenario import MachinetypeScenario, Outcome, Scenario, SiteRun, standard_machinetypes
from vacd.sim.site import EPOCH, Site, run_scenario

SMALL = Scenario(standard_machinetypes(), factories=3, processors=6, duration_seconds=1200.0)


def run_site(scenario: Scenario, state_dir: Path) -> tuple[Site, SiteRun]:
    site = Site(scenario, state_dir)
    return site, site.run()


def test_a_patched_policing_rule_changes_what_the_site_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = run_site(SMALL, tmp_path / "before")[1].summary()
    original = vacd.factory.stop_reason

    def stop_after_five_minutes(machine: Any, machinetype: Any) -> Optional[str]:
        if machine.now - machine.started_time >= 300:
            return EXCEEDED_WALLCLOCK  # a factory ending: no backoff, so the slot is refilled at once
        return original(machine, machinetype)

    monkeypatch.setattr(vacd.factory, "stop_reason", stop_after_five_minutes)
    site, run = run_site(SMALL, tmp_path / "after")
    after = run.summary()
    assert isinstance(before["creations"], int) and isinstance(after["creations"], int)
    assert after["creations"] > 2 * before["creations"]  # every machine now lives about 5 minutes
    last = site.factories[0].factory.store.last_finished("vo-b")
    assert last is not None and last.finish is not None
    assert last.finish.shutdown_message == EXCEEDED_WALLCLOCK


def test_a_patched_scheduler_rule_changes_what_the_site_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = vacd.factory.decide

    def never_vo_b(state: Any, rng: Any) -> Decisions:
        decisions = original(state, rng)
        return dataclasses.replace(decisions, creates=tuple(c for c in decisions.creates if c.machinetype != "vo-b"))

    monkeypatch.setattr(vacd.factory, "decide", never_vo_b)
    run = run_site(SMALL, tmp_path)[1]
    assert all(sample.busy_processors["vo-b"] == 0 for sample in run.samples)
    assert run.samples[-1].busy_processors["vo-c"] > 0


def test_machines_at_max_wallclock_are_stopped_by_the_factory_and_back_nothing_off(tmp_path: Path) -> None:
    scenario = replace(SMALL, machinetypes=standard_machinetypes(max_wallclock_seconds=600), duration_seconds=1500.0)
    site, run = run_site(scenario, tmp_path)
    last = site.factories[0].factory.store.last_finished("vo-c")
    assert last is not None and last.finish is not None
    assert last.finish.shutdown_message == EXCEEDED_WALLCLOCK
    # Only the workless type's 300s are aborts: a factory ending backs nothing off (issue 9 item 2).
    assert run.samples[-1].useful_fill > 0.9 and run.samples[-1].busy_processors["vo-a"] == 0


def test_a_payloads_message_reaches_the_factory_with_the_time_it_was_sent(tmp_path: Path) -> None:
    short = (MachinetypeScenario("short", 1.0, (Outcome(1.0, "200 Success", 600, 600),)),)
    site, _ = run_site(Scenario(short, factories=1, processors=1, duration_seconds=700.0), tmp_path)
    last = site.factories[0].factory.store.last_finished("short")
    assert last is not None and last.finish is not None and last.finish.started_time is not None
    assert last.finish.shutdown_message == "200 Success"
    assert abs(last.finish.shutdown_message_time - (last.finish.started_time + 600)) <= 1  # type: ignore[operator]


def test_the_virtual_pool_completes_creations_later_and_the_factory_can_wait_for_them(tmp_path: Path) -> None:
    site = Site(replace(SMALL, factories=1, processors=4, creation_seconds=5.0), tmp_path)
    factory = site.factories[0]
    site.start()
    try:
        site.loop.run_until(factory.next_pass_at)
        assert set(factory.factory.in_flight().values()) == {"create"}
        assert not factory.factory.wait_for_background_work(timeout_seconds=0) and not factory.backend.machines
        site.loop.run_until(site.loop.now + 5.0)
        assert factory.factory.wait_for_background_work(timeout_seconds=0)
        assert len(factory.backend.machines) == 4  # max_creations_per_cycle
        started = [site.factories[0].factory.store.slot_binding(name) for name in factory.backend.machines]
        assert all(stored is not None and stored.started_time is not None
                   and stored.started_time >= stored.record.created_time + 5 - 1 for stored in started)
    finally:
        site.close()


def test_a_type_that_gets_work_is_probed_then_takes_its_share_after_the_step(tmp_path: Path) -> None:
    work = (Outcome(1.0, "200 Success", 300, 600),)
    types = (
        MachinetypeScenario("late", 1.0, (Outcome(1.0, "300 No more work", 60, 60),), step_seconds=600.0,
                            outcomes_after_step=work, fizzle_seconds=300),
        MachinetypeScenario("steady", 1.0, work),
    )
    run = run_site(Scenario(types, factories=2, processors=6, duration_seconds=1800.0), tmp_path)[1]
    before = [sample.busy_processors["late"] for sample in run.samples if 300 <= sample.time < 600]
    # The scheduler's probe rule: after an abort, one machine per factory until it outlives fizzle_seconds.
    probing = [sample.busy_processors["late"] for sample in run.samples if 600 <= sample.time < 900]
    assert before and max(before) <= 1 and probing and max(probing) <= 2
    assert run.samples[-1].busy_processors["late"] >= 5
    assert run.step_recovery_seconds(within=0.1) is not None


def test_census_model_and_real_census_give_the_same_site_at_half_loss() -> None:
    real = run_scenario(Scenario(standard_machinetypes(), factories=50, processors=2, duration_seconds=600.0,
                                 network=NetworkConditions(loss=0.5), census="real"))
    modelled = run_scenario(replace(real.scenario, census="model"))
    assert real.mean_census_completeness() == pytest.approx(modelled.mean_census_completeness(), abs=0.01)
    assert real.samples[-1].useful_fill == modelled.samples[-1].useful_fill == 1.0
    real_error, model_error = real.mean_share_error_after_fill(), modelled.mean_share_error_after_fill()
    assert real_error is not None and model_error is not None and abs(real_error - model_error) < 0.03


def test_factory_clock_is_unix_time_on_the_sites_virtual_time(tmp_path: Path) -> None:
    site = Site(replace(SMALL, factories=1), tmp_path)
    site.loop.run_until(123.0)
    assert site.clock() == EPOCH + 123.0
    site.close()


@pytest.mark.parametrize("rule", ["failure_rate", "vac03"])
def test_every_simulated_factory_runs_the_scenarios_abort_rule(tmp_path: Path, rule: str) -> None:
    site = Site(replace(SMALL, abort_rule=rule), tmp_path)
    try:
        assert {factory.settings.abort_rule for factory in site.factories} == {rule}
    finally:
        site.close()


def test_pre_emption_makes_room_for_a_type_once_it_is_proven_and_not_before(tmp_path: Path) -> None:
    # "steady" payloads mostly run for hours; a few end early and free the slot a probe needs.
    steady = (Outcome(0.15, "200 Success", 700, 1200), Outcome(0.85, "200 Success", 20000, 30000))
    work = (Outcome(1.0, "200 Success", 20000, 30000),)
    types = (
        MachinetypeScenario("late", 1.0, (Outcome(1.0, "300 No more work", 60, 60),), step_seconds=600.0,
                            outcomes_after_step=work, fizzle_seconds=120, min_wallclock_seconds=120),
        MachinetypeScenario("steady", 1.0, steady, fizzle_seconds=120, min_wallclock_seconds=120),
    )
    scenario = Scenario(types, factories=3, processors=6, duration_seconds=1500.0)
    off = run_site(scenario, tmp_path / "off")[1]
    on = run_site(replace(scenario, preemption_grace_seconds=30), tmp_path / "on")[1]
    assert off.summary()["preemptions"] == 0
    assert isinstance(on.summary()["preemptions"], int) and on.summary()["preemptions"] > 0
    assert on.work_proven_at is not None
    # Nothing is pre-empted for "late" while its payloads find no work.
    assert all(sample.preemptions == 0 for sample in on.samples if sample.time < 600)
    assert on.samples[-1].busy_processors["late"] >= 8 > off.samples[-1].busy_processors["late"]
