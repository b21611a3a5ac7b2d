"""Machine/Job Features files written at creation and lowered later (§6.2, acceptance 10, 11, 25)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vacd.config import Settings
from vacd.mjf import (
    FeatureKeyError,
    format_number,
    lower_shutdown_time,
    read_features,
    write_features,
)
from vacd.records import MachineRecord

CREATED = 1_700_000_000
SHUTDOWN = CREATED + 86_400


@pytest.fixture
def settings() -> Settings:
    return Settings(
        vac_space="vac01.example.com",
        factory_name="f1.example.com",
        total_processors=8,
        host_processors=8,
        gocdb_sitename="UKI-TEST",
        hs06_per_processor=10.0,
        mb_per_processor=2048,
    )


@pytest.fixture
def record() -> MachineRecord:
    return MachineRecord(
        name="f1-03.example.com",
        ordinal=3,
        uuid="1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        machinetype="example",
        machine_model="vm-raw",
        processors=2,
        created_time=CREATED,
        shutdown_time=SHUTDOWN,
        ip_address="169.254.169.3",
        hs06=20.0,
        mb=4096,
    )


def test_acceptance_10_values(tmp_path: Path, settings: Settings, record: MachineRecord) -> None:
    write_features(tmp_path, settings, record, now=CREATED)
    machine = read_features(tmp_path, "machinefeatures")
    job = read_features(tmp_path, "jobfeatures")
    assert machine == {
        "hs06": "20",
        "total_cpu": "2",
        "phys_cores": "2",
        "log_cores": "2",
        "jobslots": "1",
        "shutdowntime": str(SHUTDOWN),
        "grace_secs": "30",
    }
    assert job == {
        "shutdowntime_job": str(SHUTDOWN),
        "wall_limit_secs": "86400",
        "wall_limit_secs_lrms": "86400",
        "cpu_limit_secs": "172800",
        "cpu_limit_secs_lrms": "172800",
        "cpufactor_lrms": "1.0",
        "jobstart_secs": str(CREATED),
        "hs06_job": "20",
        "max_rss_bytes": "4294967296",
        "mem_limit_MB": "4294",
        "allocated_cpu": "2\n",
        "allocated_CPU": "2\n",
        "job_id": record.uuid,
        "grace_secs_job": "30",
    }


def test_acceptance_11_no_hs06_without_hs06_per_processor(tmp_path: Path, settings: Settings, record: MachineRecord) -> None:
    write_features(tmp_path, replace(settings, hs06_per_processor=None), record, now=CREATED)
    assert "hs06" not in read_features(tmp_path, "machinefeatures")
    assert "hs06_job" not in read_features(tmp_path, "jobfeatures")


def test_limits_count_from_now_and_never_go_negative(tmp_path: Path, settings: Settings, record: MachineRecord) -> None:
    write_features(tmp_path, settings, replace(record, shutdown_time=CREATED - 5), now=CREATED)
    job = read_features(tmp_path, "jobfeatures")
    assert (job["wall_limit_secs"], job["cpu_limit_secs"]) == ("0", "0")


def test_machinefeatures_options_become_keys(tmp_path: Path, settings: Settings, record: MachineRecord) -> None:
    write_features(tmp_path, replace(settings, machinefeatures_options={"db12": "17.5"}), record, now=CREATED)
    assert read_features(tmp_path, "machinefeatures")["db12"] == "17.5"


@pytest.mark.parametrize("key", ["../escape", "a/b", ".hidden", ""])
def test_unsafe_machinefeatures_option_names_are_refused(
    tmp_path: Path, settings: Settings, record: MachineRecord, key: str
) -> None:
    with pytest.raises(FeatureKeyError):
        write_features(tmp_path, replace(settings, machinefeatures_options={key: "x"}), record, now=CREATED)
    assert not (tmp_path.parent / "escape").exists()


def test_lowering_rewrites_shutdown_times_and_limits(tmp_path: Path, settings: Settings, record: MachineRecord) -> None:
    write_features(tmp_path, settings, record, now=CREATED)
    assert lower_shutdown_time(tmp_path, CREATED + 3600, now=CREATED + 600)
    machine = read_features(tmp_path, "machinefeatures")
    job = read_features(tmp_path, "jobfeatures")
    assert machine["shutdowntime"] == str(CREATED + 3600)
    assert job["shutdowntime_job"] == str(CREATED + 3600)
    # Limits count from the job's start, as when they were first written.
    assert (job["wall_limit_secs"], job["wall_limit_secs_lrms"]) == ("3600", "3600")
    assert (job["cpu_limit_secs"], job["cpu_limit_secs_lrms"]) == ("7200", "7200")


def test_a_later_or_equal_time_changes_nothing(tmp_path: Path, settings: Settings, record: MachineRecord) -> None:
    write_features(tmp_path, settings, record, now=CREATED)
    before = read_features(tmp_path, "jobfeatures")
    assert not lower_shutdown_time(tmp_path, SHUTDOWN, now=CREATED)
    assert not lower_shutdown_time(tmp_path, SHUTDOWN + 10, now=CREATED)
    assert read_features(tmp_path, "jobfeatures") == before


def test_lowering_twice_only_ever_falls(tmp_path: Path, settings: Settings, record: MachineRecord) -> None:
    write_features(tmp_path, settings, record, now=CREATED)
    assert lower_shutdown_time(tmp_path, CREATED + 3600, now=CREATED)
    assert not lower_shutdown_time(tmp_path, CREATED + 7200, now=CREATED)
    assert read_features(tmp_path, "machinefeatures")["shutdowntime"] == str(CREATED + 3600)


def test_lowering_a_directory_without_features_changes_nothing(tmp_path: Path) -> None:
    assert not lower_shutdown_time(tmp_path, CREATED, now=CREATED)
    assert not (tmp_path / "machinefeatures").exists()


def test_lowering_without_jobstart_counts_from_now(tmp_path: Path, settings: Settings, record: MachineRecord) -> None:
    write_features(tmp_path, settings, record, now=CREATED)
    (tmp_path / "jobfeatures" / "jobstart_secs").unlink()
    lower_shutdown_time(tmp_path, CREATED + 1000, now=CREATED + 400)
    assert read_features(tmp_path, "jobfeatures")["wall_limit_secs"] == "600"


@pytest.mark.parametrize("value, text", [(20.0, "20"), (21.5, "21.5"), (10.0 * 3, "30"), (1 / 3, "0.333333333333")])
def test_numbers_are_formatted_without_needless_decimals(value: float, text: str) -> None:
    assert format_number(value) == text
