"""The factory pass against guest-written data, corrupt records, failed accounting and fast re-creation (issue 8 items 2, 3, 10)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.accounting import write_apel_record
from vacd.config import Machinetype, Settings
from vacd.errors import AccountingDeferred
from vacd.factory import SLOT_ERROR_FIRST_BACKOFF_SECONDS, PassReport
from vacd.outcomes import EXCEEDED_WALLCLOCK
from vacd.records import FinishRecord, MachineRecord
from vacd.recordfiles import CORRUPT_MARK

SLOT = "f1-00.example.com"


def one_slot_harness(tmp_path: Path, **machinetype_options: object) -> Harness:
    return Harness(
        tmp_path,
        make_settings(total_processors=1, host_processors=1),
        make_machinetype(tmp_path, "atlas", **machinetype_options),
    )


def files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def test_binary_shutdown_message_is_finalised_with_replacement(tmp_path: Path) -> None:
    harness = one_slot_harness(tmp_path)
    harness.run_pass()
    stored = harness.store.slot_binding(SLOT)
    assert stored is not None
    (stored.directory / "joboutputs" / "shutdown_message").write_bytes(b"\xff\xfe300 bad\n")
    harness.clock.advance(120)
    harness.backend.power_off(SLOT)
    report = harness.run_pass()  # Vac 03's reader and ours before issue 8 raised UnicodeDecodeError here
    [(record, finish)] = report.finished
    assert record.name == SLOT
    assert finish.shutdown_message == "\ufffd\ufffd300 bad"
    assert finish.outcome_code is None


def test_guest_directory_where_the_message_goes_leaves_the_factory_reason(tmp_path: Path) -> None:
    harness = one_slot_harness(tmp_path)
    harness.run_pass()
    stored = harness.store.slot_binding(SLOT)
    assert stored is not None
    (stored.directory / "joboutputs" / "shutdown_message").mkdir()
    harness.clock.advance(3601)
    harness.run_pass()  # past max_wallclock_seconds: ACPI, and the reason recorded
    harness.clock.advance(31)
    harness.run_pass()  # grace over: hard destroy
    report = harness.run_pass()
    [(_, finish)] = report.finished
    assert finish.shutdown_message == EXCEEDED_WALLCLOCK


def test_corrupt_machine_record_during_a_pass_is_quarantined_and_its_domain_not_adopted(tmp_path: Path) -> None:
    harness = one_slot_harness(tmp_path)
    harness.run_pass()
    first = harness.store.slot_binding(SLOT)
    assert first is not None
    (first.directory / "machine.json").write_bytes(os.urandom(64) + b"\xff")
    harness.clock.advance(10)

    harness.run_pass()  # raised StoreError out of the pass before issue 8

    assert ("destroy", SLOT) in harness.backend.actions  # not adopted blindly
    assert len(list(first.directory.glob("machine.json" + CORRUPT_MARK + "*"))) == 1
    assert harness.store.quarantined_total == 1
    report = harness.run_pass()  # the slot waits in error: shown, and nothing created over it
    assert [(error.machine_name, error.step) for error in report.slot_errors] == [(SLOT, "observe")]
    assert harness.store.slot_binding(SLOT) is None
    harness.clock.advance(SLOT_ERROR_FIRST_BACKOFF_SECONDS)
    harness.run_pass()
    current = harness.store.slot_binding(SLOT)
    assert current is not None and current.directory != first.directory
    assert current.record.uuid != first.record.uuid
    assert harness.backend.machines[SLOT].uuid == current.record.uuid


def accounting_harness(tmp_path: Path) -> tuple[Harness, list[str]]:
    """A harness whose factory writes real APEL records, and a list of what monitoring heard."""
    harness = one_slot_harness(tmp_path)
    monitored: list[str] = []

    def account(settings: Settings, machinetype: Optional[Machinetype], record: MachineRecord, finish: FinishRecord) -> None:
        write_apel_record(harness.paths, settings, machinetype, record, finish)

    def monitor(settings: Settings, machinetype: Optional[Machinetype], record: MachineRecord, finish: FinishRecord) -> None:
        monitored.append(record.uuid)

    harness.factory.hooks.account = account
    harness.factory.hooks.on_finished.append(monitor)
    return harness, monitored


def run_pass_leaving_deferral_to_the_boundary(harness: Harness) -> Optional[PassReport]:
    """A pass; an AccountingDeferred that escapes it is for the pass's per-slot boundary (item 1) to contain."""
    try:
        return harness.run_pass()
    except AccountingDeferred:
        return None


def test_failed_apel_write_leaves_the_machine_unfinished_and_is_retried_exactly_once(tmp_path: Path) -> None:
    harness, monitored = accounting_harness(tmp_path)
    harness.run_pass()
    stored = harness.store.slot_binding(SLOT)
    assert stored is not None
    harness.clock.advance(120)
    harness.run_pass()  # a heartbeat: the machine ran longer than fizzle_seconds, so a record is due
    archive = harness.paths.apel_archive_dir
    archive.rmdir()
    archive.write_text("a file where apel-archive should be\n")  # every write below it fails
    harness.backend.power_off(SLOT)

    report = run_pass_leaving_deferral_to_the_boundary(harness)

    unfinished = harness.store.load_machine(stored.directory)
    assert unfinished is not None and not unfinished.has_finished
    assert report is None or report.finished == []
    assert monitored == []
    harness.clock.advance(30)
    run_pass_leaving_deferral_to_the_boundary(harness)  # still failing: still owed
    archive.unlink()
    archive.mkdir()
    harness.clock.advance(30)

    harness.run_pass()
    harness.run_pass()

    finished = harness.store.load_machine(stored.directory)
    assert finished is not None and finished.has_finished
    [written] = files_under(archive)
    assert f"LocalJobId: {stored.record.uuid}" in written.read_text()
    assert monitored == [stored.record.uuid]


def test_slot_recreated_within_the_same_second_gets_a_new_directory(tmp_path: Path) -> None:
    harness = one_slot_harness(tmp_path)
    harness.run_pass()
    first = harness.store.slot_binding(SLOT)
    assert first is not None
    harness.guest_says(first, "200 Success")
    harness.backend.power_off(SLOT)

    harness.run_pass()  # same second: finalised, and the slot created into again

    second = harness.store.slot_binding(SLOT)
    assert second is not None and second.record.uuid != first.record.uuid
    assert second.directory != first.directory
    assert second.record.created_time == first.record.created_time + 1
    assert second.directory.name == f"{second.record.created_time}_atlas_{SLOT}"  # Vac's layout (§1.4)
    harness.run_pass()
    assert ("destroy", SLOT) not in harness.backend.actions  # not mistaken for a zombie
    current = harness.store.slot_binding(SLOT)
    assert current is not None and not current.has_finished and current.record.uuid == second.record.uuid


def test_housekeeping_removes_old_never_started_directories_but_not_the_bound_one(tmp_path: Path) -> None:
    harness = Harness(
        tmp_path,
        make_settings(total_processors=1, host_processors=1),
        make_machinetype(tmp_path, "atlas", machines_dir_days=1.0),
    )
    harness.backend.fail_creates_of.add("vmlinuz")  # every creation fails: nothing ever starts
    harness.run_pass()
    first = harness.store.slot_binding(SLOT)
    assert first is not None and not first.has_started
    harness.run_pass()  # finalised as a failed start; the machinetype backs off
    harness.clock.advance(31)
    harness.run_pass()  # tried again, in a new directory the slot is now bound to
    bound = harness.store.slot_binding(SLOT)
    assert bound is not None and bound.directory != first.directory and not bound.has_started

    harness.clock.advance(2 * 86400)
    harness.factory._next_housekeeping = 0
    harness.run_pass()

    assert not first.directory.exists()  # kept for ever, with its user_data, before issue 8
    assert bound.directory.exists()
