"""Peers see the truth, on time (issue 9 item 4): what a pass publishes, and how often it creates."""

from __future__ import annotations

from pathlib import Path

from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from tests.vacd.test_snapshot import HOST
from vacd.snapshot import build_snapshot


def test_report_of_a_pass_includes_the_creations_it_made(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(hs06_per_processor=10.0), make_machinetype(tmp_path, "atlas"))
    report = harness.run_pass()
    assert [slot.state for slot in report.slots] == ["Starting"] * 4
    [atlas] = report.local_reports
    # Before, peers heard of these machines (and of a probe) only at the next pass.
    assert atlas.running_hs06 == 40.0 and atlas.num_before_fizzle == 4
    # The scheduler's own report counts them as peers' statuses do: none has outlived fizzle.
    assert atlas.running_machines == 4 and not atlas.runs_past_fizzle
    [status] = build_snapshot(report, HOST, {"factory": report.now}).machinetypes
    assert status.running_machines == 4 and status.num_before_fizzle == 4


def test_failed_listing_publishes_the_last_good_report_not_an_empty_one(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(hs06_per_processor=10.0), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    good = harness.run_pass()
    harness.backend.fail_listing = True
    harness.clock.advance(60)
    failed = harness.run_pass()
    assert failed.observe_error is not None
    assert failed.local_reports == good.local_reports
    # Its age shows in the factory heartbeat, which only a completed pass moves (vacd.status).
    snapshot = build_snapshot(failed, HOST, {"factory": good.now})
    [status] = snapshot.machinetypes
    assert status.running_hs06 == 40.0
    assert snapshot.factory.factory_heartbeat_time == good.now < failed.now


def test_event_woken_passes_create_no_more_than_max_creations_per_cycle_seconds(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(max_creations_per_cycle=1, cycle_seconds=30.0),
                      make_machinetype(tmp_path, "atlas"))
    created_at = []
    for _ in range(60):  # a pass every second, as events would wake it
        before = len(harness.backend.created_names())
        harness.run_pass()
        if len(harness.backend.created_names()) > before:
            created_at.append(int(harness.clock()))
        harness.clock.advance(1)
    start = created_at[0]
    assert created_at == [start, start + 30]  # with 1, four machines were created within a second before
