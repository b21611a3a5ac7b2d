"""Old machine directories are deleted after machines_dir_days (§1.8, acceptance 42)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vacd.config import Machinetype
from vacd.housekeeping import MachineDirectory, expired, machinetype_of

NOW = 10_000_000
DAY = 86400


def machinetypes(**days: float) -> dict[str, Machinetype]:
    return {name: Machinetype(name=name, machinegroup=name, machinetype_path=Path("/x"), machines_dir_days=value)
            for name, value in days.items()}


def directory(machinetype: str, heartbeat_age_days: "float | None", finished: bool = True) -> MachineDirectory:
    heartbeat = None if heartbeat_age_days is None else int(NOW - heartbeat_age_days * DAY)
    return MachineDirectory(f"1700000000_{machinetype}_f1-03.example.com", heartbeat, finished)


def never_started(machinetype: str, created_age_days: float, finished: bool = False, bound: bool = False) -> MachineDirectory:
    created = int(NOW - created_age_days * DAY)
    return MachineDirectory(f"{created}_{machinetype}_f1-03.example.com", None, finished, is_bound=bound)


def test_directory_older_than_machines_dir_days_is_deleted() -> None:
    assert expired([directory("atlas", 2.1)], machinetypes(atlas=2), NOW) == ["1700000000_atlas_f1-03.example.com"]
    assert expired([directory("atlas", 1.9)], machinetypes(atlas=2), NOW) == []


def test_zero_days_keeps_directories_for_ever() -> None:
    assert expired([directory("atlas", 1000)], machinetypes(atlas=0), NOW) == []


def test_unconfigured_machinetype_keeps_three_days() -> None:
    assert expired([directory("gone", 2.9)], {}, NOW) == []
    assert expired([directory("gone", 3.1)], {}, NOW) == ["1700000000_gone_f1-03.example.com"]


def test_never_started_directory_is_deleted_once_created_longer_ago_than_machines_dir_days() -> None:
    # Vac 03 kept these for ever, with their 0600 user_data (issue 8 item 10).
    old, young = never_started("atlas", 1.1), never_started("atlas", 0.9, finished=True)
    assert expired([old, young], machinetypes(atlas=1), NOW) == [old.name]


def test_never_started_directory_is_kept_for_ever_with_zero_days() -> None:
    assert expired([never_started("atlas", 1000)], machinetypes(atlas=0), NOW) == []


def test_the_directory_a_slot_is_bound_to_is_never_deleted() -> None:
    bound_old = dataclasses.replace(directory("atlas", 30), is_bound=True)
    assert expired([never_started("atlas", 30, bound=True), bound_old], machinetypes(atlas=1), NOW) == []


def test_unfinished_machine_is_never_deleted() -> None:
    assert expired([directory("atlas", 30, finished=False)], machinetypes(atlas=1), NOW) == []


def test_machinetype_is_read_from_vacs_directory_name() -> None:
    assert machinetype_of("1700000000_lhcb-prod_f1-03.example.com") == "lhcb-prod"
    assert machinetype_of("not-a-machine-dir") is None
