"""When a running machine is stopped, and with which message (§4.6, acceptance 23, 24, 25)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from vacd.config import Machinetype
from vacd.outcomes import EXCEEDED_WALLCLOCK, HEARTBEAT_NOT_CREATED, HEARTBEAT_NOT_UPDATED, PASSED_SHUTDOWN_TIME
from vacd.policing import RunningMachine, effective_shutdown_time, stop_reason

START = 1_000_000


def machinetype(**options: object) -> Machinetype:
    fields = dict(name="lhcb", machinegroup="lhcb", machinetype_path=Path("/x"), heartbeat_file="hb", fizzle_seconds=600)
    fields.update(options)
    return Machinetype(**fields)  # type: ignore[arg-type]


def running(now: int, *, heartbeat: Optional[float] = None, vacd_start: int = 0, shutdown: int = START + 86400,
            site_shutdown: Optional[int] = None) -> RunningMachine:
    return RunningMachine(now, START, shutdown, site_shutdown, vacd_start, heartbeat)


def test_heartbeat_missing_after_fizzle_seconds_is_700_not_created() -> None:
    assert stop_reason(running(START + 601), machinetype()) == HEARTBEAT_NOT_CREATED


def test_heartbeat_missing_within_fizzle_seconds_is_tolerated() -> None:
    assert stop_reason(running(START + 600), machinetype()) is None


def test_no_heartbeat_kill_within_fizzle_seconds_of_a_vacd_restart() -> None:
    assert stop_reason(running(START + 5000, vacd_start=START + 4500), machinetype()) is None


def test_stale_heartbeat_is_700_not_updated() -> None:
    mt = machinetype(heartbeat_seconds=300)
    assert stop_reason(running(START + 1000, heartbeat=START + 699), mt) == HEARTBEAT_NOT_UPDATED
    assert stop_reason(running(START + 1000, heartbeat=START + 700), mt) is None


def test_heartbeat_age_ignored_when_heartbeat_seconds_is_zero() -> None:
    assert stop_reason(running(START + 80000, heartbeat=START + 1), machinetype()) is None


def test_past_own_shutdown_time_is_exceeded_wallclock() -> None:
    assert stop_reason(running(START + 86401, heartbeat=START + 86400), machinetype()) == EXCEEDED_WALLCLOCK


def test_past_site_shutdown_time_is_passed_shutdowntime() -> None:
    reason = stop_reason(running(START + 101, shutdown=START + 100, site_shutdown=START + 100, heartbeat=START), None)
    assert reason == PASSED_SHUTDOWN_TIME


def test_machinetype_without_heartbeat_file_is_never_heartbeat_killed() -> None:
    assert stop_reason(running(START + 80000), machinetype(heartbeat_file=None)) is None


def test_shutdown_time_only_falls() -> None:
    assert effective_shutdown_time(500, 400) == 400
    assert effective_shutdown_time(500, 600) == 500
    assert effective_shutdown_time(500, None) == 500
