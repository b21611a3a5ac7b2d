"""APEL across configuration changes and the switch from Vac 03 (issue 10 item 6).

A machine's HS06 is fixed when it is created; the site name is read when its record is
written; `vac apel-sync` counts what APEL received, Vac 03's earlier records included.
"""

from __future__ import annotations

import calendar
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tests.vacd.test_accounting import (
    STARTED,
    files_under,
    make_finish,
    make_machinetype,
    make_record,
    make_settings,
)
from tests.vacd.test_factory import Harness
from tests.vacd.test_factory import make_machinetype as make_factory_machinetype
from tests.vacd.test_factory import make_settings as make_factory_settings
from vacd.accounting import apel_sync, parse_message, record_file_name, write_apel_record
from vacd.config import Config, Machinetype, Settings
from vacd.paths import Paths
from vacd.records import FinishRecord, MachineRecord

SLOT = "f1-00.example.com"
NOVEMBER_2018_SYNC_TIME = calendar.timegm((2018, 12, 1, 12, 0, 0))
VAC03_SUBMIT_HOST = "vac01.example.com/vac-f1"  # Vac 03 named the node from os.uname()
VACD_SUBMIT_HOST = "vac01.example.com/vac-f1.example.com"


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    return paths


# ------------------------------------------------------------------ through the factory


def accounting_factory(tmp_path: Path, settings: Settings) -> tuple[Harness, Machinetype]:
    machinetype = make_factory_machinetype(tmp_path, "atlas")
    harness = Harness(tmp_path, settings, machinetype)

    def account(settings: Settings, machinetype: Any, record: MachineRecord, finish: FinishRecord) -> None:
        write_apel_record(harness.paths, settings, machinetype, record, finish)

    harness.factory.hooks.account = account
    return harness, machinetype


def site_settings(**options: object) -> Settings:
    return make_factory_settings(total_processors=2, host_processors=2, gocdb_sitename="UKI-EXAMPLE",
                                 gocdb_sitename_is_set=True, **options)


def run_one_machine(harness: Harness, machinetype: Machinetype, settings_at_finish: Settings) -> MachineRecord:
    """Create a machine, let it run past fizzle_seconds, change the config, and finalise it."""
    harness.run_pass()
    stored = harness.store.slot_binding(SLOT)
    assert stored is not None
    harness.clock.advance(120)
    harness.run_pass()  # a heartbeat: it ran longer than fizzle_seconds, a record is due
    harness.config.config = Config(settings_at_finish, {machinetype.name: machinetype})
    harness.backend.power_off(SLOT)
    harness.run_pass()
    finished = harness.store.load_machine(stored.directory)
    assert finished is not None and finished.has_finished
    return finished.record


def test_machine_created_before_hs06_was_set_is_archived_not_sent_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness, machinetype = accounting_factory(tmp_path, site_settings(hs06_per_processor=None))

    with caplog.at_level(logging.INFO, logger="vacd.accounting"):
        record = run_one_machine(harness, machinetype, site_settings(hs06_per_processor=10.0))

    assert record.hs06_known is False
    [archived] = files_under(harness.paths.apel_archive_dir)
    assert parse_message(archived.read_text())[0]["ServiceLevel"] == "1.0"
    assert files_under(harness.paths.apel_outgoing_dir) == []
    [held] = files_under(harness.paths.apel_held_dir)
    assert held.relative_to(harness.paths.apel_held_dir) == archived.relative_to(harness.paths.apel_archive_dir)
    assert "hs06_per_processor was not set when the machine was created" in held.read_text()
    [line] = [entry.getMessage() for entry in caplog.records if "not sent to APEL" in entry.getMessage()]
    assert f"name={SLOT}" in line and "hs06_per_processor was not set when the machine was created" in line
    assert all(entry.levelno == logging.INFO for entry in caplog.records if "not sent to APEL" in entry.getMessage())


def test_machine_created_with_hs06_is_sent_with_its_creation_figure(tmp_path: Path) -> None:
    harness, machinetype = accounting_factory(tmp_path, site_settings(hs06_per_processor=12.5))

    # The admin changes the figure while it runs; MJF told the guest 12.5 per processor, APEL is told the same.
    record = run_one_machine(harness, machinetype, site_settings(hs06_per_processor=15.0))

    assert record.hs06_known is True and record.hs06 == 12.5 * record.processors
    [archived] = files_under(harness.paths.apel_archive_dir)
    [outgoing] = files_under(harness.paths.apel_outgoing_dir)
    assert outgoing.read_text() == archived.read_text()
    assert parse_message(outgoing.read_text())[0]["ServiceLevel"] == "12.5"
    assert files_under(harness.paths.apel_held_dir) == []


def test_machine_created_before_gocdb_sitename_was_set_is_sent_under_the_registered_site(tmp_path: Path) -> None:
    unset_site = make_factory_settings(total_processors=2, host_processors=2, hs06_per_processor=10.0)
    harness, machinetype = accounting_factory(tmp_path, unset_site)

    run_one_machine(harness, machinetype, site_settings(hs06_per_processor=10.0))

    [outgoing] = files_under(harness.paths.apel_outgoing_dir)
    fields = parse_message(outgoing.read_text())[0]
    assert (fields["Site"], fields["ServiceLevel"]) == ("UKI-EXAMPLE", "10.0")


def test_machine_finished_after_gocdb_sitename_was_removed_is_held_back(paths: Paths) -> None:
    settings = make_settings(gocdb_sitename="example.com", gocdb_sitename_is_set=False)

    written = write_apel_record(paths, settings, make_machinetype(), make_record(), make_finish())

    assert written is not None and files_under(paths.apel_outgoing_dir) == []
    [held] = files_under(paths.apel_held_dir)
    assert held.read_text().startswith("gocdb_sitename is not set")


# ------------------------------------------------------------------ machine.json of earlier vacd


def machine_json_of_earlier_vacd(hs06: float, processors: int) -> str:
    """machine.json as vacd wrote it before `hs06_known` existed (hs06 = (hs06_per_processor or 1.0) x processors)."""
    return json.dumps({
        "created_time": STARTED - 30, "hs06": hs06, "ip_address": "169.254.169.3", "machine_model": "cernvm3",
        "machinetype": "lhcb", "mb": 4096, "name": "f1-03.example.com", "ordinal": 3, "processors": processors,
        "shutdown_time": STARTED + 86400, "uuid": "0f1e2d3c-4b5a-4697-8877-665544332211",
    })


def test_machine_json_without_hs06_known_loads_and_a_stand_in_figure_is_not_known() -> None:
    stand_in = MachineRecord.from_json(machine_json_of_earlier_vacd(hs06=4.0, processors=4))
    configured = MachineRecord.from_json(machine_json_of_earlier_vacd(hs06=40.0, processors=4))

    assert (stand_in.hs06, stand_in.hs06_known) == (4.0, False)
    assert (configured.hs06, configured.hs06_known) == (40.0, True)


def test_hs06_known_round_trips_and_must_be_a_boolean() -> None:
    for known in (True, False):
        record = make_record(hs06_known=known)
        assert MachineRecord.from_json(record.to_json()) == record
    fields = json.loads(make_record().to_json())
    fields["hs06_known"] = "yes"
    with pytest.raises(ValueError, match="hs06_known"):
        MachineRecord.from_json(json.dumps(fields))


# ------------------------------------------------------------------ the month's sync record


def write_vac03_record(paths: Paths, day: str, file_name: str, end_time: int, site: str = "UKI-EXAMPLE") -> None:
    """A record as Vac 03 archived it: time-of-writing file name, Vac 03's own SubmitHost."""
    directory = paths.apel_archive_dir / day
    directory.mkdir(parents=True, exist_ok=True)
    (directory / file_name).write_text(
        "APEL-individual-job-message: v0.3\n"
        f"Site: {site}\nSubmitHost: {VAC03_SUBMIT_HOST}\nLocalJobId: {file_name}-uuid\nLocalUserId: f1\n"
        "Queue: lhcb\nGlobalUserName: /DC=com/DC=example/DC=vac01\nWallDuration: 3600\nCpuDuration: 3500\n"
        "Processors: 1\nNodeCount: 1\nInfrastructureDescription: APEL-VAC\nInfrastructureType: grid\n"
        f"StartTime: {end_time - 3600}\nEndTime: {end_time}\nMemoryReal: 2097152\nMemoryVirtual: 2097152\n"
        "ServiceLevelType: HEPSPEC\nServiceLevel: 10.0\n%%\n"
    )


def finalise(paths: Paths, index: int, end_time: int, settings: Settings, **record_changes: Any) -> None:
    record = make_record(uuid=f"{index:08x}-0000-4000-8000-000000000000", **record_changes)
    finish = make_finish(started_time=end_time - 3600, last_heartbeat_time=end_time, finished_time=end_time + 30)
    write_apel_record(paths, settings, make_machinetype(), record, finish)


def sync_records(paths: Paths) -> list[dict[str, str]]:
    return parse_message(apel_sync(paths, ["201811"], NOVEMBER_2018_SYNC_TIME).read_text())


def test_sync_of_the_switch_month_counts_vac03_adopted_and_vacd_records_but_not_held_ones(paths: Paths) -> None:
    # Before the switch: three machines accounted by Vac 03 itself.
    for hour in (1, 2, 3):
        write_vac03_record(paths, "20181105", f"0{hour}0000{hour:08d}", calendar.timegm((2018, 11, 5, hour, 0, 0)))
    settings = make_settings(hs06_per_processor=10.0)
    switch = calendar.timegm((2018, 11, 10, 0, 0, 0))
    # Adopted from Vac 03 and finalised by vacd: one whose machinefeatures/hs06 existed, one without.
    finalise(paths, 1, switch + 3600, settings, hs06=20.0, hs06_known=True)
    finalise(paths, 2, switch + 7200, settings, hs06=2.0, hs06_known=False)
    # Created by vacd.
    finalise(paths, 3, switch + 86400, settings, hs06=20.0, hs06_known=True)

    records = sync_records(paths)

    assert [(fields["SubmitHost"], fields["NumberOfJobs"]) for fields in records] == [
        (VACD_SUBMIT_HOST, "2"),  # the newest record's SubmitHost first
        (VAC03_SUBMIT_HOST, "3"),
    ]
    assert {(fields["Site"], fields["Month"], fields["Year"]) for fields in records} == {("UKI-EXAMPLE", "11", "2018")}
    assert len(files_under(paths.apel_archive_dir)) == 6  # every record is archived, the held one too


def test_sync_takes_the_site_from_the_newest_record_sent_not_a_newer_held_one(paths: Paths) -> None:
    sent = make_settings(hs06_per_processor=10.0)
    unregistered = make_settings(gocdb_sitename="example.com", gocdb_sitename_is_set=False)
    finalise(paths, 1, calendar.timegm((2018, 11, 5, 12, 0, 0)), sent)
    finalise(paths, 2, calendar.timegm((2018, 11, 6, 12, 0, 0)), sent)
    finalise(paths, 3, calendar.timegm((2018, 11, 28, 12, 0, 0)), unregistered)  # Site: example.com, held

    [fields] = sync_records(paths)

    assert (fields["Site"], fields["NumberOfJobs"]) == ("UKI-EXAMPLE", "2")


def test_sync_of_a_month_where_nothing_was_sent_counts_zero_for_the_configured_site(paths: Paths) -> None:
    finalise(paths, 1, calendar.timegm((2018, 11, 5, 12, 0, 0)), make_settings(), hs06_known=False)

    [fields] = parse_message(apel_sync(paths, ["201811"], NOVEMBER_2018_SYNC_TIME, make_settings()).read_text())

    assert (fields["Site"], fields["NumberOfJobs"]) == ("UKI-EXAMPLE", "0")


class Crash(BaseException):
    """Stands for kill -9: nothing after the failing step runs."""


def test_held_twin_of_a_crashed_run_is_dropped_when_the_rerun_sends_the_record(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    end_time = calendar.timegm((2018, 11, 5, 12, 0, 0))
    real_replace = os.replace
    renames = {"count": 0}

    def crash_before_the_archive_copy(source: Any, target: Any) -> None:
        renames["count"] += 1
        if renames["count"] == 2:  # the first rename put the held twin in place
            raise Crash()
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_before_the_archive_copy)
    with pytest.raises(Crash):
        finalise(paths, 1, end_time, make_settings(gocdb_sitename="example.com", gocdb_sitename_is_set=False))
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(files_under(paths.apel_held_dir)) == 1
    assert [path for path in files_under(paths.apel_archive_dir) if not path.name.startswith(".")] == []

    finalise(paths, 1, end_time, make_settings())  # after the restart the site name is set

    name = record_file_name("00000001-0000-4000-8000-000000000000")
    assert [path.name for path in files_under(paths.apel_outgoing_dir)] == [name]
    assert files_under(paths.apel_held_dir) == []
    [fields] = sync_records(paths)
    assert fields["NumberOfJobs"] == "1"

