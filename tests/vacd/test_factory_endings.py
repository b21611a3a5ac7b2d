"""Only the payload's verdict is an abort (issue 9 item 2; bug 2 of the issue 8 crash campaign).

Endings the factory itself causes (the wallclock limit, the site's shutdown_time, a creation
that failed or that vacd's own death cut short) keep their text in the records and for the
admin, never start a space-wide backoff, and reach peers as Vac 03 sent them: no message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from tests.vacd.test_snapshot import HOST
from vacd.outcomes import (
    EXCEEDED_WALLCLOCK,
    FAILED_TO_START,
    HEARTBEAT_NOT_UPDATED,
    PASSED_SHUTDOWN_TIME,
    PREEMPTED,
    is_abort,
    is_factory_ending,
)
from vacd.scheduler import MachinetypeReport
from vacd.snapshot import build_snapshot


@pytest.mark.parametrize("message", [EXCEEDED_WALLCLOCK, PASSED_SHUTDOWN_TIME, FAILED_TO_START, PREEMPTED])
def test_factory_endings_are_not_aborts(message: str) -> None:
    assert is_factory_ending(message) and not is_abort(message)


@pytest.mark.parametrize("message", ["300 Nothing to do", "500 Broken", HEARTBEAT_NOT_UPDATED,
                                     "300 Vac detects fizzle after 12 seconds", "700 Something else"])
def test_payload_verdicts_of_300_and_more_are_aborts(message: str) -> None:
    assert is_abort(message) and not is_factory_ending(message)


def test_machine_at_its_wallclock_limit_backs_nothing_off_and_peers_see_no_message(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    harness.clock.advance(3601)
    harness.run_pass()  # ACPI
    harness.clock.advance(31)
    harness.run_pass()  # hard destroy
    report = harness.run_pass()
    [(record, finish)] = report.finished
    assert finish.shutdown_message == EXCEEDED_WALLCLOCK  # the admin still reads why
    assert report.decisions is not None and report.decisions.outlook.backoff_until == {}
    assert [create.machinetype for create in report.decisions.creates] == ["atlas"]  # refilled at once
    [status] = build_snapshot(report, HOST, {"factory": report.now}).machinetypes
    assert status.shutdown_machine == record.name and status.shutdown_message is None


def test_creation_failure_backs_off_locally_but_not_the_space(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.backend.fail_creates_of.add("vmlinuz")
    harness.run_pass()
    report = harness.run_pass()
    assert report.finished[0][1].shutdown_message == FAILED_TO_START
    assert report.decisions is not None and report.decisions.creates == ()  # the local backoff
    # ... and none for the space: what peers are told is no abort.
    [status] = build_snapshot(report, HOST, {"factory": report.now}).machinetypes
    assert status.shutdown_message is None and not is_abort(status.shutdown_message)


def test_a_peer_that_still_publishes_a_factory_ending_starts_no_backoff(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.peer_reports = [MachinetypeReport("f2.example.com", "atlas", 0.0, 0, EXCEEDED_WALLCLOCK,
                                              int(harness.clock()) - 10, "f2-00.example.com")]
    report = harness.run_pass()
    assert report.decisions is not None and [create.machinetype for create in report.decisions.creates] == ["atlas"]


def test_a_payload_abort_still_backs_the_space_off(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.peer_reports = [MachinetypeReport("f2.example.com", "atlas", 0.0, 0, "300 Nothing to do",
                                              int(harness.clock()) - 10, "f2-00.example.com")]
    report = harness.run_pass()
    assert report.decisions is not None and report.decisions.creates == ()
    assert "atlas" in report.decisions.outlook.backoff_until
