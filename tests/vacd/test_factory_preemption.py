"""Opt-in pre-emption carried out by the factory (vacd/preemption.py decides, vacd/factory.py acts).

The machine picked is told its new end through machinefeatures/shutdowntime and
jobfeatures/shutdowntime_job, is stopped by policing once that time has passed, and its
ending is the factory's: no abort, no backoff. With pre-emption off (the default, as
Vac 03) a full factory neither pre-empts nor asks its peers anything.
"""

from __future__ import annotations

from pathlib import Path

from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.config import Machinetype, Settings
from vacd.mjf import read_features, write_features
from vacd.observations import GuestObservations
from vacd.outcomes import PREEMPTED, is_abort
from vacd.scheduler import MachinetypeReport
from vacd.records import MachineRecord

PEER = "f2.example.com"


def two_type_factory(tmp_path: Path, **settings: object) -> Harness:
    """A 2-slot factory full of lhcb while atlas was backed off by a peer's abort."""
    types: list[Machinetype] = [
        make_machinetype(tmp_path, name, min_wallclock_seconds=600, max_wallclock_seconds=86400, fizzle_seconds=60,
                         backoff_seconds=300)
        for name in ("atlas", "lhcb")
    ]
    harness = Harness(tmp_path, make_settings(total_processors=2, host_processors=2, **settings), *types)
    hooks = GuestObservations().install(harness.factory.hooks)
    hooks.contextualise = lambda settings, machinetype, record, now: _write_mjf(harness, settings, record, now)
    harness.factory.hooks = hooks
    harness.peer_reports = [MachinetypeReport(PEER, "atlas", 0.0, 0, "300 Nothing to do", int(harness.clock()) - 5,
                                              "f2-00.example.com")]
    report = harness.run_pass()
    assert report.decisions is not None and [c.machinetype for c in report.decisions.creates] == ["lhcb", "lhcb"]
    harness.clock.advance(3600)
    # atlas's payloads work again at the peer: its latest outcome there is a success.
    harness.peer_reports = [MachinetypeReport(PEER, "atlas", 0.0, 0, "200 Success", int(harness.clock()) - 30,
                                              "f2-00.example.com")]
    return harness


def _write_mjf(harness: Harness, settings: Settings, record: MachineRecord, now: int) -> None:
    write_features(harness.store.machine_dir(record), settings, record, now)


def test_preempted_machine_is_told_through_mjf_and_stopped_at_the_new_time_without_an_abort(tmp_path: Path) -> None:
    harness = two_type_factory(tmp_path, preemption_grace_seconds=60)
    now = int(harness.clock())
    report = harness.run_pass()
    [preempt] = report.preemptions
    assert (preempt.machinetype, preempt.gaining, preempt.shutdown_time) == ("lhcb", "atlas", now + 60)
    stored = harness.store.slot_binding(preempt.name)
    assert stored is not None and stored.record.shutdown_time == now + 60
    assert read_features(stored.directory, "machinefeatures")["shutdowntime"] == str(now + 60)
    assert read_features(stored.directory, "jobfeatures")["shutdowntime_job"] == str(now + 60)
    assert harness.run_pass().preemptions == []  # one is enough for a 1-processor gap, also next pass

    harness.clock.advance(30)
    harness.run_pass()
    assert ("shutdown", preempt.name) not in harness.backend.actions  # the grace is the payload's
    harness.clock.advance(31)
    harness.run_pass()
    assert ("shutdown", preempt.name) in harness.backend.actions
    harness.backend.power_off(preempt.name)  # the guest obeys ACPI
    report = harness.run_pass()
    [(record, finish)] = report.finished
    assert record.name == preempt.name and finish.shutdown_message == PREEMPTED
    assert not is_abort(finish.verdict)
    assert report.decisions is not None and report.decisions.outlook.backoff_until == {}
    assert [create.machinetype for create in report.decisions.creates] == ["atlas"]  # the room goes to atlas
    others = [name for name in harness.backend.machines if name != preempt.name]
    assert len(others) == 1  # the other lhcb machine runs on


def test_a_guest_that_ends_itself_after_the_mjf_notice_keeps_its_own_verdict(tmp_path: Path) -> None:
    harness = two_type_factory(tmp_path, preemption_grace_seconds=60)
    [preempt] = harness.run_pass().preemptions
    stored = harness.store.slot_binding(preempt.name)
    assert stored is not None
    harness.clock.advance(20)
    harness.guest_says(stored, "200 Checkpointed")  # read shutdowntime, saved its work, left
    harness.backend.power_off(preempt.name)
    [(_, finish)] = harness.run_pass().finished
    assert finish.shutdown_message == "200 Checkpointed"


def test_with_preemption_off_a_full_factory_pre_empts_nothing_and_asks_no_peer(tmp_path: Path) -> None:
    harness = two_type_factory(tmp_path)
    asked: list[int] = []
    harness.factory.hooks.peer_reports = lambda settings, machinetypes, now: asked.append(now) or harness.peer_reports
    report = harness.run_pass()
    assert report.preemptions == [] and asked == []
    for name in harness.backend.machines:
        stored = harness.store.slot_binding(name)
        assert stored is not None
        assert int(read_features(stored.directory, "machinefeatures")["shutdowntime"]) > int(harness.clock()) + 3600


def test_a_full_factory_asks_its_peers_for_pre_emption_at_most_once_a_cycle(tmp_path: Path) -> None:
    harness = two_type_factory(tmp_path, preemption_grace_seconds=60)
    asked: list[int] = []
    harness.factory.hooks.peer_reports = lambda settings, machinetypes, now: asked.append(now) or []
    for _ in range(3):
        harness.run_pass()
        harness.clock.advance(5)
    assert len(asked) == 1
