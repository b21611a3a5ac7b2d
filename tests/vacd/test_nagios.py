"""check-vacd: exit codes and messages for fresh, stale, missing and error states."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Optional

import pytest

from vacd.nagios import CRITICAL, OK, UNKNOWN, WARNING, Counts, FactoryFiles, judge
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
