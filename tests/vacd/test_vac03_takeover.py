"""A vacd started on a node Vac 03 ran takes over Vac 03's machines instead of destroying them (issue 10 item 1)."""

from __future__ import annotations

import json
import logging
import uuid as uuid_module
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from tests.vac03tree import write_vac03_machine
from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.accounting import parse_message, write_apel_record
from vacd.backends.base import ObservedMachine, ObservedState
from vacd.config import Machinetype, Settings
from vacd.outcomes import EXCEEDED_WALLCLOCK
from vacd.paths import Paths
from vacd.records import FinishRecord, MachineRecord
from vacd.vac03state import TakeOver, plan_take_over, plan_vac03_slot

SLOT0 = "f1-00.example.com"


def harness_with_apel(tmp_path: Path, **settings_options: object) -> Harness:
    options: dict[str, object] = dict(total_processors=2, host_processors=2, hs06_per_processor=10.0,
                                      gocdb_sitename_is_set=True)
    options.update(settings_options)
    harness = Harness(tmp_path, make_settings(**options), make_machinetype(tmp_path, "atlas", max_wallclock_seconds=86400))

    def account(settings: Settings, machinetype: Optional[Machinetype], record: MachineRecord, finish: FinishRecord) -> None:
        write_apel_record(harness.paths, settings, machinetype, record, finish)

    harness.factory.hooks.account = account
    return harness


def vac03_machine(harness: Harness, ordinal: int = 0, **options: object):  # type: ignore[no-untyped-def]
    now = int(harness.clock())
    fields: dict[str, object] = dict(
        factory_name="f1.example.com",
        ordinal=ordinal,
        uuid=str(uuid_module.uuid4()),
        machinetype="atlas",
        created_time=now - 7200,
        shutdown_time=now - 7200 + 86400,
        hs06_per_processor=10.0,
    )
    fields.update(options)
    return write_vac03_machine(harness.paths.state_dir, **fields)  # type: ignore[arg-type]


def apel_records(paths: Paths) -> list[dict[str, str]]:
    return [
        record
        for path in sorted(paths.apel_archive_dir.rglob("*"))
        if path.is_file()
        for record in parse_message(path.read_text())
    ]


def test_running_vac03_machine_is_adopted_not_destroyed(tmp_path: Path) -> None:
    harness = harness_with_apel(tmp_path, total_processors=1, host_processors=1)
    machine = vac03_machine(harness)
    harness.backend.add_foreign(machine.name, machine.uuid)
    report = harness.run_pass()
    assert ("destroy", machine.name) not in harness.backend.actions
    assert ("shutdown", machine.name) not in harness.backend.actions
    [slot] = report.slots
    assert slot.state == "Running"
    record = json.loads((machine.directory / "machine.json").read_text())
    assert record["uuid"] == machine.uuid
    assert record["created_time"] == machine.created_time
    assert record["shutdown_time"] == machine.created_time + 86400
    assert record["hs06"] == 10.0 and record["processors"] == 1 and record["mb"] == 2048
    assert record["hs06_known"] is True
    assert harness.backend.created_names() == []  # its slot was not free


def test_adopted_machine_keeps_its_original_times_and_is_stopped_at_its_shutdown_time(tmp_path: Path) -> None:
    harness = harness_with_apel(tmp_path, total_processors=1, host_processors=1)
    now = int(harness.clock())
    machine = vac03_machine(harness, created_time=now - 3000, shutdown_time=now + 600)
    harness.backend.add_foreign(machine.name, machine.uuid)
    harness.run_pass()
    stored = harness.store.slot_binding(machine.name)
    assert stored is not None and stored.started_time == now - 3000
    harness.clock.advance(601)
    harness.run_pass()
    assert ("shutdown", machine.name) in harness.backend.actions
    assert (machine.directory / "joboutputs" / "shutdown_message").read_text().strip() == EXCEEDED_WALLCLOCK


def test_adopted_machine_that_ends_is_finalised_with_its_message_and_accounted_once(tmp_path: Path) -> None:
    harness = harness_with_apel(tmp_path, total_processors=1, host_processors=1)
    machine = vac03_machine(harness)
    harness.backend.add_foreign(machine.name, machine.uuid)
    harness.run_pass()
    (machine.directory / "joboutputs" / "shutdown_message").write_text("200 Success\n")
    harness.clock.advance(60)
    harness.backend.power_off(machine.name)
    report = harness.run_pass()
    [(record, finish)] = report.finished
    assert record.uuid == machine.uuid and finish.shutdown_message == "200 Success"
    harness.clock.advance(60)
    harness.run_pass()
    harness.run_pass()
    [apel] = [r for r in apel_records(harness.paths) if r.get("LocalJobId") == machine.uuid]
    assert apel["StartTime"] == str(machine.created_time)
    assert float(apel["ServiceLevel"]) == 10.0
    assert apel["Queue"] == "atlas"
    # Vac 03 wrote machinefeatures/hs06, so the site's figure is known: the record is sent.
    sent = [path for path in harness.paths.apel_outgoing_dir.rglob("*") if path.is_file()]
    assert [parse_message(path.read_text())[0]["LocalJobId"] for path in sent] == [machine.uuid]


def test_adopted_vac03_machine_created_without_hs06_is_archived_not_sent(tmp_path: Path) -> None:
    harness = harness_with_apel(tmp_path, total_processors=1, host_processors=1)
    machine = vac03_machine(harness, hs06_per_processor=None, shutdown_message="200 Success")
    harness.run_pass()
    assert [r["LocalJobId"] for r in apel_records(harness.paths)] == [machine.uuid]
    assert [path for path in harness.paths.apel_outgoing_dir.rglob("*") if path.is_file()] == []


def test_vac03_machine_that_ended_while_no_factory_watched_is_finalised_and_accounted(tmp_path: Path) -> None:
    harness = harness_with_apel(tmp_path, total_processors=1, host_processors=1)
    machine = vac03_machine(harness, shutdown_message="300 Nothing to do")
    report = harness.run_pass()
    [(record, finish)] = report.finished
    assert record.uuid == machine.uuid and finish.shutdown_message == "300 Nothing to do"
    assert [r["LocalJobId"] for r in apel_records(harness.paths)] == [machine.uuid]


def test_domain_with_another_uuid_is_held_running_and_its_slot_not_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = harness_with_apel(tmp_path, total_processors=1, host_processors=1)
    machine = vac03_machine(harness)
    other = str(uuid_module.uuid4())
    harness.backend.add_foreign(machine.name, other)
    with caplog.at_level(logging.WARNING, logger="vacd.factory"):
        for _ in range(3):
            report = harness.run_pass()
            harness.clock.advance(60)
    assert [a for a in harness.backend.actions if a[1] == machine.name] == []
    [slot] = report.slots
    assert slot.state == "Held" and slot.note is not None and other in slot.note
    told = [r.getMessage() for r in caplog.records if machine.name in r.getMessage()]
    assert len(told) == 1 and "leave running" in told[0]  # once, not every pass
    assert not (machine.directory / "machine.json").exists()


def test_held_machine_once_gone_is_finalised(tmp_path: Path) -> None:
    harness = harness_with_apel(tmp_path, total_processors=1, host_processors=1)
    machine = vac03_machine(harness)
    harness.backend.add_foreign(machine.name, str(uuid_module.uuid4()))
    harness.run_pass()
    harness.backend.power_off(machine.name)
    report = harness.run_pass()
    assert [record.uuid for record, _ in report.finished] == [machine.uuid]


def test_vac03_container_machine_is_held_whatever_libvirt_says(tmp_path: Path) -> None:
    harness = harness_with_apel(tmp_path, total_processors=1, host_processors=1)
    machine = vac03_machine(harness, machine_model="docker")
    report = harness.run_pass()
    [slot] = report.slots
    assert slot.state == "Held" and "docker" in (slot.note or "")
    assert harness.backend.created_names() == []


def test_unreadable_vac03_files_with_a_domain_hold_it_and_without_one_free_the_slot(tmp_path: Path) -> None:
    harness = harness_with_apel(tmp_path)
    held = vac03_machine(harness, ordinal=0)
    freed = vac03_machine(harness, ordinal=1)
    for machine in (held, freed):
        (machine.directory / "jobfeatures" / "allocated_cpu").write_text("many\n")
    harness.backend.add_foreign(held.name, held.uuid)
    report = harness.run_pass()
    states = {slot.identity.machine_name: slot.state for slot in report.slots}
    assert states[held.name] == "Held"
    assert harness.backend.created_names() == [freed.name]  # nothing ran there: reused
    assert ("destroy", held.name) not in harness.backend.actions


def test_finished_vac03_machine_leaves_its_slot_free(tmp_path: Path) -> None:
    harness = harness_with_apel(tmp_path, total_processors=1, host_processors=1)
    machine = vac03_machine(harness, finished=True, shutdown_message="200 Success")
    harness.run_pass()
    assert harness.backend.created_names() == [machine.name]
    assert apel_records(harness.paths) == [] or all(
        r["LocalJobId"] != machine.uuid for r in apel_records(harness.paths)
    )


def test_vac03_machine_beyond_the_slot_range_is_adopted_and_policed(tmp_path: Path) -> None:
    harness = harness_with_apel(tmp_path, total_processors=1, host_processors=1)
    machine = vac03_machine(harness, ordinal=7)  # Vac 03 counted /proc/cpuinfo's processors
    harness.backend.add_foreign(machine.name, machine.uuid)
    report = harness.run_pass()
    beyond = [slot for slot in report.slots if slot.identity.machine_name == machine.name]
    assert [slot.state for slot in beyond] == ["Running"] and beyond[0].beyond_range
    assert ("destroy", machine.name) not in harness.backend.actions
    harness.backend.power_off(machine.name)
    report = harness.run_pass()
    assert [record.uuid for record, _ in report.finished] == [machine.uuid]


def test_vac03_machine_of_another_factory_name_is_reported_not_touched(tmp_path: Path) -> None:
    harness = harness_with_apel(tmp_path, total_processors=1, host_processors=1)
    machine = vac03_machine(harness, factory_name="node7.example.com")
    harness.backend.add_foreign(machine.name, machine.uuid)
    harness.run_pass()
    assert [a for a in harness.backend.actions if a[1] == machine.name] == []
    [plan] = plan_take_over(harness.paths, make_settings(), {machine.name: ObservedMachine(machine.name, machine.uuid, ObservedState.RUNNING, 0.0)})
    assert plan.action is TakeOver.HOLD and "factory_name f1.example.com" in plan.reason


VAC03_FILES = ("jobfeatures/job_id", "jobfeatures/allocated_cpu", "jobfeatures/shutdowntime_job",
               "jobfeatures/max_rss_bytes", "machinefeatures/hs06", "machinefeatures/shutdowntime", "ip", "started")


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    damaged=st.sampled_from(VAC03_FILES),
    content=st.binary(max_size=80),
    domain_uuid=st.sampled_from(["same", "other", "none"]),
)
def test_any_vac03_file_content_gives_a_plan_and_adopts_only_what_matches(
    tmp_path_factory: pytest.TempPathFactory, damaged: str, content: bytes, domain_uuid: str
) -> None:
    state_dir = tmp_path_factory.mktemp("state")
    uuid = str(uuid_module.uuid4())
    machine = write_vac03_machine(state_dir, factory_name="f1.example.com", ordinal=3, uuid=uuid,
                                  machinetype="atlas", created_time=1_700_000_000, shutdown_time=1_700_086_400)
    (machine.directory / damaged).write_bytes(content)
    domain = None
    if domain_uuid != "none":
        domain = ObservedMachine(machine.name, uuid if domain_uuid == "same" else str(uuid_module.uuid4()),
                                 ObservedState.RUNNING, 0.0)
    plan = plan_vac03_slot(make_settings(), machine.name, machine.directory, domain)
    if domain_uuid == "other":
        assert plan.action is TakeOver.HOLD
    if plan.action is TakeOver.ADOPT:
        assert plan.record is not None
        assert plan.record.directory_name == machine.directory.name
        assert domain is None or plan.record.uuid == domain.uuid
        assert plan.record.processors >= 1 and plan.record.ip_address == "169.254.169.3"
    if plan.action is TakeOver.IGNORE:
        assert domain is None
    assert machine.name in plan.describe()
