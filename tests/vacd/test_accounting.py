"""APEL records: fields, eligibility, the ssmsend layout, exactly-once across crashes, apel-sync."""

from __future__ import annotations

import calendar
import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vacd.accounting import (
    ApelError,
    JobRecord,
    apel_sync,
    job_record,
    parse_message,
    record_file_name,
    write_apel_record,
)
from vacd.config import Machinetype, Settings
from vacd.paths import Paths
from vacd.records import FinishRecord, MachineRecord

STARTED = calendar.timegm((2018, 11, 20, 10, 0, 0))
UUID = "0f1e2d3c-4b5a-4697-8877-665544332211"


def make_settings(**changes: Any) -> Settings:
    settings = Settings(
        vac_space="vac01.example.com",
        factory_name="f1.example.com",
        total_processors=8,
        host_processors=8,
        gocdb_sitename="UKI-EXAMPLE",
        gocdb_sitename_is_set=True,
        hs06_per_processor=10.0,
    )
    return dataclasses.replace(settings, **changes)


def make_machinetype(**changes: Any) -> Machinetype:
    machinetype = Machinetype(name="lhcb", machinegroup="lhcb", machinetype_path=Path("/var/lib/vac/machinetypes/lhcb"))
    return dataclasses.replace(machinetype, **changes)


def make_record(uuid: str = UUID, **changes: Any) -> MachineRecord:
    record = MachineRecord(
        name="f1-03.example.com",
        ordinal=3,
        uuid=uuid,
        machinetype="lhcb",
        machine_model="cernvm3",
        processors=2,
        created_time=STARTED - 30,
        shutdown_time=STARTED + 86400,
        ip_address="169.254.169.3",
        hs06=20.0,
        mb=4096,
        hs06_known=True,
    )
    return dataclasses.replace(record, **changes)


def make_finish(ran_seconds: int = 7200, cpu_seconds: float = 13000.4, **changes: Any) -> FinishRecord:
    finish = FinishRecord(
        finished_time=STARTED + ran_seconds + 40,
        shutdown_message="300 Nothing to do",
        shutdown_message_time=STARTED + ran_seconds + 40,
        started_time=STARTED,
        last_heartbeat_time=STARTED + ran_seconds,
        cpu_seconds=cpu_seconds,
    )
    return dataclasses.replace(finish, **changes)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    return paths


def files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def test_record_has_every_vac_field_with_real_cpu_time(paths: Paths) -> None:
    machinetype = make_machinetype(accounting_fqan="/lhcb/Role=NULL/Capability=NULL")
    written = write_apel_record(paths, make_settings(), machinetype, make_record(), make_finish())

    assert written is not None
    raw_text = written.read_text()
    assert raw_text.splitlines()[0] == "APEL-individual-job-message: v0.3"
    assert raw_text.endswith("%%\n")
    [fields] = parse_message(raw_text)
    assert fields == {
        "Site": "UKI-EXAMPLE",
        "SubmitHost": "vac01.example.com/vac-f1.example.com",
        "LocalJobId": UUID,
        "LocalUserId": "f1.example.com",
        "Queue": "lhcb",
        "GlobalUserName": "/DC=com/DC=example/DC=vac01",
        "FQAN": "/lhcb/Role=NULL/Capability=NULL",
        "WallDuration": "7200",
        "CpuDuration": "13000",
        "Processors": "2",
        "NodeCount": "1",
        "InfrastructureDescription": "APEL-VAC",
        "InfrastructureType": "grid",
        "StartTime": str(STARTED),
        "EndTime": str(STARTED + 7200),
        "MemoryReal": str(4096 * 1024),
        "MemoryVirtual": str(4096 * 1024),
        "ServiceLevelType": "HEPSPEC",
        "ServiceLevel": "10.0",
    }


def test_record_goes_to_archive_and_outgoing_in_dirq_layout(paths: Paths) -> None:
    written = write_apel_record(paths, make_settings(), make_machinetype(), make_record(), make_finish())

    assert written == paths.apel_archive_dir / "20181120" / "0f1e2d3c4b5a46"
    [outgoing] = files_under(paths.apel_outgoing_dir)
    assert outgoing.relative_to(paths.apel_outgoing_dir).as_posix() == "20181120/0f1e2d3c4b5a46"
    assert outgoing.read_text() == written.read_text()
    assert re.fullmatch(r"[0-9]{8}", outgoing.parent.name) and re.fullmatch(r"[0-9a-f]{14}", outgoing.name)
    assert list(paths.tmp_dir.iterdir()) == []


def test_without_hs06_record_is_archived_only_with_service_level_one(paths: Paths) -> None:
    settings = make_settings(hs06_per_processor=None)
    record = make_record(hs06=2.0, hs06_known=False)
    written = write_apel_record(paths, settings, make_machinetype(), record, make_finish())

    assert written is not None
    assert parse_message(written.read_text())[0]["ServiceLevel"] == "1.0"
    assert files_under(paths.apel_outgoing_dir) == []


@pytest.mark.parametrize("default_site", ["", "example.com"])
def test_without_gocdb_sitename_site_falls_back_to_space_domain_and_no_outgoing(paths: Paths, default_site: str) -> None:
    settings = make_settings(gocdb_sitename=default_site, gocdb_sitename_is_set=False)
    written = write_apel_record(paths, settings, make_machinetype(), make_record(), make_finish())

    assert written is not None
    assert parse_message(written.read_text())[0]["Site"] == "example.com"
    assert files_under(paths.apel_outgoing_dir) == []


def test_machine_shorter_than_fizzle_seconds_gets_no_record(paths: Paths) -> None:
    machinetype = make_machinetype(fizzle_seconds=600)
    assert write_apel_record(paths, make_settings(), machinetype, make_record(), make_finish(ran_seconds=599)) is None
    assert files_under(paths.apel_archive_dir) == []
    assert write_apel_record(paths, make_settings(), machinetype, make_record(), make_finish(ran_seconds=600)) is not None


def test_machine_that_never_started_gets_no_record(paths: Paths) -> None:
    finish = make_finish(started_time=None, last_heartbeat_time=None)
    assert write_apel_record(paths, make_settings(), make_machinetype(), make_record(), finish) is None


def test_machine_of_unconfigured_machinetype_gets_no_record(paths: Paths) -> None:
    assert write_apel_record(paths, make_settings(), None, make_record(), make_finish()) is None


def test_second_call_for_the_same_machine_writes_nothing_new(paths: Paths) -> None:
    first = write_apel_record(paths, make_settings(), make_machinetype(), make_record(), make_finish())
    # ssmsend has sent and removed the outgoing copy meanwhile.
    for sent in files_under(paths.apel_outgoing_dir):
        sent.unlink()
    later_finish = make_finish(finished_time=STARTED + 3 * 86400, last_heartbeat_time=STARTED + 2 * 86400)
    second = write_apel_record(paths, make_settings(), make_machinetype(), make_record(), later_finish)

    assert second == first
    assert len(files_under(paths.apel_archive_dir)) == 1
    assert files_under(paths.apel_outgoing_dir) == []


class Crash(BaseException):
    """Stands for kill -9: nothing after the failing step runs."""


@pytest.mark.parametrize("crash_at_rename", [1, 2, 3])
@pytest.mark.parametrize("crash_after_rename", [False, True])
@pytest.mark.parametrize("ssmsend_runs_between", [False, True])
def test_exactly_one_record_is_queued_across_a_crash_and_rerun(
    paths: Paths,
    monkeypatch: pytest.MonkeyPatch,
    crash_at_rename: int,
    crash_after_rename: bool,
    ssmsend_runs_between: bool,
) -> None:
    # Every durable step is a rename (staging file, archive copy, into apel-outgoing), so
    # the crash is injected just before or just after the n-th os.replace: patching the
    # OS call is the only way to stop a real run part-way.
    real_replace = os.replace
    renames = {"count": 0}

    def crashing_replace(source: Any, target: Any) -> None:
        renames["count"] += 1
        if renames["count"] == crash_at_rename and not crash_after_rename:
            raise Crash()
        real_replace(source, target)
        if renames["count"] == crash_at_rename:
            raise Crash()

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(Crash):
        write_apel_record(paths, make_settings(), make_machinetype(), make_record(), make_finish())
    monkeypatch.setattr(os, "replace", real_replace)

    sent: list[str] = []
    if ssmsend_runs_between:
        for path in files_under(paths.apel_outgoing_dir):
            if not path.name.startswith("."):
                sent.append(path.read_text())
                path.unlink()
    # The factory reruns finalisation after the restart; and once more for good measure.
    write_apel_record(paths, make_settings(), make_machinetype(), make_record(), make_finish())
    write_apel_record(paths, make_settings(), make_machinetype(), make_record(), make_finish())
    sent += [path.read_text() for path in files_under(paths.apel_outgoing_dir) if not path.name.startswith(".")]

    archived = [path for path in files_under(paths.apel_archive_dir) if not path.name.startswith(".")]
    assert len(archived) == 1
    assert sent == [archived[0].read_text()]
    assert [path for path in paths.tmp_dir.iterdir() if not path.name.startswith(".")] == []


def test_record_file_name_is_fourteen_hex_digits_for_any_uuid() -> None:
    assert record_file_name(UUID) == "0f1e2d3c4b5a46"
    assert re.fullmatch(r"[0-9a-f]{14}", record_file_name("not-a-uuid"))


def archive_records(
    paths: Paths, day: str, count: int, site: str = "UKI-EXAMPLE", first: int = 0, hour: int = 12
) -> None:
    settings = make_settings(gocdb_sitename=site)
    end_of_day = calendar.timegm((int(day[:4]), int(day[4:6]), int(day[6:]), hour, 0, 0))
    for index in range(first, first + count):
        uuid = f"{index:08x}-0000-4000-8000-000000000000"
        finish = make_finish(started_time=end_of_day - 3600, last_heartbeat_time=end_of_day)
        write_apel_record(paths, settings, make_machinetype(), make_record(uuid=uuid), finish)


def test_apel_sync_counts_the_months_archive(paths: Paths) -> None:
    archive_records(paths, "20181103", 2)
    archive_records(paths, "20181130", 3, first=10)
    archive_records(paths, "20181201", 4, first=20)
    now = calendar.timegm((2018, 12, 5, 9, 30, 15)) + 0.25

    written = apel_sync(paths, ["201811"], now)

    assert written.parent == paths.apel_outgoing_dir / "20181205"
    assert written.name == "09301525000000"
    assert written.read_text() == (
        "APEL-sync-message: v0.1\n"
        "Site: UKI-EXAMPLE\n"
        "SubmitHost: vac01.example.com/vac-f1.example.com\n"
        "NumberOfJobs: 5\n"
        "Month: 11\n"
        "Year: 2018\n"
        "%%\n"
    )


def test_apel_sync_defaults_to_the_month_of_yesterday_and_skips_other_sites(paths: Paths) -> None:
    archive_records(paths, "20181130", 2, site="OLD-SITE")
    archive_records(paths, "20181130", 3, first=10, hour=13)
    now = calendar.timegm((2018, 12, 1, 6, 0, 0))

    [fields] = parse_message(apel_sync(paths, [], now).read_text())

    assert (fields["Month"], fields["Year"], fields["NumberOfJobs"]) == ("11", "2018", "3")


def test_apel_sync_of_an_empty_month_counts_zero_for_the_configured_site(paths: Paths) -> None:
    now = calendar.timegm((2018, 12, 1, 6, 0, 0))
    with pytest.raises(ApelError):
        apel_sync(paths, ["201811"], now)

    [fields] = parse_message(apel_sync(paths, ["201811"], now, settings=make_settings()).read_text())
    assert fields["NumberOfJobs"] == "0" and fields["Site"] == "UKI-EXAMPLE"


def test_apel_sync_rejects_a_malformed_month(paths: Paths) -> None:
    with pytest.raises(ApelError, match="YYYYMM"):
        apel_sync(paths, ["2018-11"], 0)


@given(st.text())
def test_parse_message_accepts_any_text(raw_text: str) -> None:
    for fields in parse_message(raw_text):
        assert all(isinstance(key, str) and isinstance(value, str) for key, value in fields.items())


safe_text = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126).filter(lambda c: c not in "%:"), min_size=1)


@given(
    st.builds(
        JobRecord,
        site=safe_text,
        submit_host=safe_text,
        local_job_id=safe_text,
        local_user_id=safe_text,
        queue=safe_text,
        global_user_name=safe_text,
        fqan=st.one_of(st.none(), safe_text),
        wall_duration=st.integers(0, 10**9),
        cpu_duration=st.integers(0, 10**9),
        processors=st.integers(1, 512),
        start_time=st.integers(0, 2**31),
        end_time=st.integers(0, 2**31),
        memory_kb=st.integers(0, 2**40),
        service_level=st.floats(0, 1000, allow_nan=False),
    )
)
def test_job_record_message_parses_back_to_its_fields(job: JobRecord) -> None:
    [fields] = parse_message(job.to_message())
    assert list(fields.items()) == job.fields()


def test_job_record_uses_finish_time_when_no_heartbeat_was_seen() -> None:
    finish = make_finish(last_heartbeat_time=None)
    job: Optional[JobRecord] = job_record(make_settings(), make_machinetype(), make_record(), finish)
    assert job is not None and job.end_time == finish.finished_time


def test_state_tree_has_no_files_outside_the_apel_dirs(paths: Paths) -> None:
    write_apel_record(paths, make_settings(), make_machinetype(), make_record(), make_finish())
    assert {path.relative_to(paths.state_dir).parts[0] for path in files_under(paths.state_dir)} == {
        "apel-archive",
        "apel-outgoing",
    }
    assert os.listdir(paths.tmp_dir) == []


# ---------------------------------------------------------------- a failed write is retried, never lost (issue 8 item 10)


def block_directory(directory: Path) -> None:
    """A regular file where the directory should be: every write below it fails with an OSError."""
    for entry in directory.iterdir():
        raise AssertionError(f"{directory} is not empty: {entry}")
    directory.rmdir()
    directory.write_text("in the way\n")


def unblock_directory(directory: Path) -> None:
    directory.unlink()
    directory.mkdir()


@pytest.mark.parametrize("blocked", ["archive", "outgoing"])
def test_failed_write_raises_and_the_retry_writes_exactly_one_record(paths: Paths, blocked: str) -> None:
    directory = paths.apel_archive_dir if blocked == "archive" else paths.apel_outgoing_dir
    block_directory(directory)
    with pytest.raises(OSError):
        write_apel_record(paths, make_settings(), make_machinetype(), make_record(), make_finish())
    unblock_directory(directory)

    first = write_apel_record(paths, make_settings(), make_machinetype(), make_record(), make_finish())
    again = write_apel_record(paths, make_settings(), make_machinetype(), make_record(), make_finish())

    assert first is not None and again == first
    assert len(files_under(paths.apel_archive_dir)) == 1
    [outgoing] = files_under(paths.apel_outgoing_dir)
    assert outgoing.read_text() == first.read_text()
    assert list(paths.tmp_dir.iterdir()) == []


def test_damaged_staging_file_is_rebuilt_into_one_record(paths: Paths) -> None:
    staging = paths.tmp_dir / f"apel-{record_file_name(UUID)}"
    staging.write_bytes(b"\xff\xfe not a record")
    written = write_apel_record(paths, make_settings(), make_machinetype(), make_record(), make_finish())
    assert written is not None
    [fields] = parse_message(written.read_text())
    assert fields["LocalJobId"] == UUID
    assert len(files_under(paths.apel_outgoing_dir)) == 1
    assert not staging.exists()
