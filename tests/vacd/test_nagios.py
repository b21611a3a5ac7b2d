"""check-vacd: exit codes and messages for fresh, stale, missing and error states, and status.json faults."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Optional

import pytest

from vacd.nagios import CRITICAL, OK, UNKNOWN, WARNING, Counts, FactoryFiles, StatusFaults, judge, main, utc_time
from vacd.paths import Paths

REPOSITORY = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000.0


def files(
    factory: Optional[float] = NOW - 10,
    responder: Optional[float] = NOW - 10,
    metadata: Optional[float] = NOW - 10,
    mjf: Optional[float] = NOW - 10,
    factory_error: Optional[str] = None,
    counts: Optional[Counts] = Counts(3, 8, 5, 8, 50.0),
) -> FactoryFiles:
    return FactoryFiles(
        heartbeats={"factory": factory, "responder": responder, "metadata": metadata, "mjf": mjf},
        factory_error=factory_error,
        counts=counts,
        state_dir_exists=True,
    )


def test_fresh_heartbeats_are_ok_with_vac_message_and_performance_data() -> None:
    result = judge(files(), NOW, 300, 600)
    assert result.status == OK
    assert result.text == (
        "Factory + responder ok (3/8 5/8) | running=3;;;0;8 processors=5;;;0;8 hs06=50.00 "
        "factory_age=10s;300;600;0 responder_age=10s;300;600;0 metadata_age=10s;300;600;0 mjf_age=10s;300;600;0"
    )


def test_heartbeat_older_than_warning_age_warns() -> None:
    result = judge(files(mjf=NOW - 400), NOW, 300, 600)
    assert result.status == WARNING
    assert result.text.startswith("MJF heartbeat 400 seconds old (3/8 5/8) |")


def test_heartbeat_older_than_critical_age_is_critical_in_hours() -> None:
    result = judge(files(responder=NOW - 5400, metadata=NOW - 400), NOW, 300, 600)
    assert result.status == CRITICAL
    assert result.text.startswith("Responder heartbeat 1.50 hours old; also Metadata heartbeat 400 seconds old (3/8 5/8)")


def test_missing_factory_heartbeat_is_critical_but_missing_mjf_only_warns() -> None:
    assert judge(files(factory=None), NOW, 300, 600).status == CRITICAL
    assert judge(files(mjf=None), NOW, 300, 600).status == WARNING


def test_factory_error_is_critical_and_shows_its_first_line() -> None:
    result = judge(files(factory_error="image download failed: 404\ntraceback...\n"), NOW, 300, 600)
    assert result.status == CRITICAL
    assert result.text.startswith("factory-error: image download failed: 404 (3/8 5/8) |")


def test_nothing_readable_is_unknown() -> None:
    empty = files(None, None, None, None, counts=None)
    assert judge(empty, NOW, 300, 600).status == UNKNOWN


def test_counts_suffix_is_left_out_when_counts_is_unreadable() -> None:
    assert Counts.parse("garbage") is None
    assert judge(files(counts=None), NOW, 300, 600).text.startswith("Factory + responder ok |")


def test_counts_file_parses_vac_format() -> None:
    assert Counts.parse("3 8 5 8 50.00\n") == Counts(3, 8, 5, 8, 50.0)


# ---------------------------------------------------------------- the command itself


def write_state(paths: Paths, ages: Mapping[str, float], factory_error: Optional[str] = None) -> None:
    paths.ensure_state_dirs()
    now = time.time()
    for part, age in ages.items():
        paths.heartbeat_file(part).write_text(f"{int(now - age)}\n")
    paths.counts_file.write_text("2 4 2 4 20.00\n")
    if factory_error is not None:
        paths.factory_error_file.write_text(factory_error)


def check_vacd(*arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    environment.pop("VAC_PREFIX", None)
    return subprocess.run(
        [sys.executable, "-m", "vacd.nagios", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


FRESH = {"factory": 5, "responder": 5, "metadata": 5, "mjf": 5}


@pytest.mark.allow_commands(sys.executable)
def test_command_exits_0_for_a_fresh_factory(tmp_path: Path) -> None:
    write_state(Paths(tmp_path), FRESH)
    result = check_vacd("--prefix", str(tmp_path), "600")
    assert (result.returncode, result.stdout.split(" | ")[0]) == (OK, "Factory + responder ok (2/4 2/4)")


@pytest.mark.allow_commands(sys.executable)
def test_command_exits_2_for_a_stale_factory_heartbeat(tmp_path: Path) -> None:
    write_state(Paths(tmp_path), {**FRESH, "factory": 3600})
    result = check_vacd("--prefix", str(tmp_path), "600")
    assert result.returncode == CRITICAL
    assert result.stdout.startswith("Factory heartbeat 1.00 hours old")


@pytest.mark.allow_commands(sys.executable)
def test_command_exits_1_between_warning_and_critical(tmp_path: Path) -> None:
    write_state(Paths(tmp_path), {**FRESH, "responder": 200})
    assert check_vacd("--prefix", str(tmp_path), "-w", "100", "-c", "600").returncode == WARNING


@pytest.mark.allow_commands(sys.executable)
def test_command_exits_2_when_factory_error_exists(tmp_path: Path) -> None:
    write_state(Paths(tmp_path), FRESH, factory_error="cannot create f1-00: no space left\n")
    result = check_vacd("--prefix", str(tmp_path))
    assert result.returncode == CRITICAL
    assert "factory-error: cannot create f1-00: no space left" in result.stdout


@pytest.mark.allow_commands(sys.executable)
def test_command_exits_3_without_state_or_with_bad_arguments(tmp_path: Path) -> None:
    assert check_vacd("--prefix", str(tmp_path / "nowhere")).returncode == UNKNOWN
    assert check_vacd("--prefix", str(tmp_path), "-w", "900", "-c", "600").returncode == UNKNOWN
    assert check_vacd("--prefix", str(tmp_path), "soon").returncode == UNKNOWN


# ---------------------------------------------------------------- faults in status.json (issue 8 item 8)

SINCE = NOW - 1200  # 2023-11-14 21:53:20Z
CONFIG_ERROR = "/etc/vac.conf:12: [settings] cycle_seconds: not a number: 'soon'\n/etc/vac.conf:14: [settings] x: unknown"


def status_json(**document: object) -> StatusFaults:
    faults = StatusFaults.parse(json.dumps(document))
    assert faults is not None
    return faults


def with_status(status: StatusFaults, **changes: object) -> FactoryFiles:
    return dataclasses.replace(files(), status=status, **changes)


def test_config_fault_is_critical_at_once_naming_the_first_problem_and_since_when() -> None:
    status = status_json(config_error=CONFIG_ERROR, faults=[{"kind": "config", "message": CONFIG_ERROR, "since": SINCE}])
    result = judge(with_status(status), NOW, 300, 600)
    assert result.status == CRITICAL
    assert result.text.startswith(
        "configuration error since 2023-11-14 21:53:20Z: /etc/vac.conf:12: [settings] cycle_seconds: "
        "not a number: 'soon' (and 1 more) (3/8 5/8) | running=3;;;0;8"
    )


def test_config_error_without_a_fault_entry_is_still_critical() -> None:
    result = judge(with_status(status_json(config_error=CONFIG_ERROR)), NOW, 300, 600)
    assert result.status == CRITICAL
    assert result.text.startswith("configuration error: /etc/vac.conf:12:")


def test_slot_errors_warn_with_slot_step_count_and_retry_time() -> None:
    status = status_json(slot_errors=[
        {"ordinal": 3, "name": "f1-03.example.com", "step": "police", "error": "KeyError: 'uuid'\nTraceback",
         "since": SINCE, "count": 3, "retry_at": NOW + 60},
        {"ordinal": 5, "name": "f1-05.example.com", "step": "account", "error": "OSError", "since": SINCE,
         "count": 1, "retry_at": NOW + 30},
    ])
    result = judge(with_status(status), NOW, 300, 600)
    assert result.status == WARNING
    assert result.text.startswith(
        "slot error: f1-03.example.com police failed 3 times since 2023-11-14 21:53:20Z, "
        "retry at 2023-11-14 22:14:20Z: KeyError: 'uuid' (and 1 more slot) (3/8 5/8) |"
    )


def test_disk_fault_warns_and_a_listing_fault_turns_critical_once_older_than_the_critical_age() -> None:
    disk = status_json(faults=[{"kind": "disk", "message": "disk: /var/lib/vac has 312 MiB free, needs 1024 MiB",
                                "since": NOW - 7200}])
    assert judge(with_status(disk), NOW, 300, 600).text.startswith(
        "disk fault since 2023-11-14 20:13:20Z: disk: /var/lib/vac has 312 MiB free, needs 1024 MiB")
    assert judge(with_status(disk), NOW, 300, 600).status == WARNING

    young = status_json(faults=[{"kind": "listing", "message": "list machines: libvirtd gone", "since": NOW - 100}])
    old = status_json(faults=[{"kind": "listing", "message": "list machines: libvirtd gone", "since": NOW - 601}])
    assert judge(with_status(young), NOW, 300, 600).status == WARNING
    assert judge(with_status(old), NOW, 300, 600).status == CRITICAL
    assert judge(with_status(old), NOW, 300, 600).text.startswith("cannot list machines since 2023-11-14 22:03:19Z")


def test_status_json_without_faults_keeps_the_factory_ok() -> None:
    result = judge(with_status(status_json(faults=[], slot_errors=[], config_error=None)), NOW, 300, 600)
    assert result.status == OK and result.text.startswith("Factory + responder ok (3/8 5/8) |")


def test_unreadable_status_json_warns() -> None:
    status = StatusFaults.parse("{truncated")
    assert status is not None
    result = judge(with_status(status), NOW, 300, 600)
    assert result.status == WARNING and result.text.startswith("status.json unreadable: not JSON")


def test_stale_factory_heartbeat_beside_a_live_loop_says_the_passes_do_not_complete() -> None:
    result = judge(dataclasses.replace(files(factory=NOW - 3600), loop_heartbeat=NOW - 5), NOW, 300, 600)
    assert result.status == CRITICAL
    assert result.text.startswith("Factory heartbeat 1.00 hours old (the loop runs, but no pass completes)")


def test_main_reads_the_config_fault_from_status_json_under_the_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = Paths(tmp_path)
    write_state(paths, FRESH)
    since = int(time.time()) - 60
    paths.status_file.write_text(json.dumps({
        "config_error": CONFIG_ERROR, "faults": [{"kind": "config", "message": CONFIG_ERROR, "since": since}],
        "slot_errors": [], "last_pass_completed": since - 30,
    }))
    assert main(["--prefix", str(tmp_path)]) == CRITICAL
    out = capsys.readouterr().out
    assert out.startswith(f"configuration error since {utc_time(since)}: /etc/vac.conf:12: [settings] cycle_seconds")
