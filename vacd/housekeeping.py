"""Which old machine directories to delete (behaviour reference §1.8, acceptance 42).

Kept from Vac 03: a machine directory `<created>_<machinetype>_<name>` is deleted once its
last heartbeat is older than the machinetype's `machines_dir_days` (3 days if the
machinetype is no longer configured); 0 or less keeps it for ever. Added safety: a
directory that still holds an unfinished machine is never deleted, whatever its heartbeat
says, and neither is the directory a slot is bound to.

Changed (issue 8 item 10): Vac 03 never deleted a directory with no heartbeat, so every
machine that never started kept its user_data (mode 0600, it may hold tokens) for ever.
Such a directory (no heartbeat, or no readable record), if no slot is bound to it, is
deleted once its creation time (the first part of its name) is older than
`machines_dir_days`.

Pure: the caller lists the directories and reads their heartbeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from vacd.config import Machinetype

# Vac's retention for machinetypes that are no longer configured (§1.8).
DEFAULT_MACHINES_DIR_DAYS = 3.0
SECONDS_PER_DAY = 86400


@dataclass(frozen=True)
class MachineDirectory:
    name: str
    last_heartbeat_time: Optional[int]  # None: the machine never started (or has no readable record)
    has_finished: bool
    is_bound: bool = False  # a slot's binding names this directory: its current machine


def machinetype_of(directory_name: str) -> Optional[str]:
    """`1700000000_atlas_f1-03.example.com` -> `atlas`; None if the name is not of that shape."""
    parts = directory_name.split("_", 2)
    if len(parts) != 3 or not (parts[0].isascii() and parts[0].isdigit()):
        return None
    return parts[1]


def created_time_of(directory_name: str) -> Optional[int]:
    """`1700000000_atlas_f1-03.example.com` -> 1700000000; None if the name is not of that shape."""
    if machinetype_of(directory_name) is None:
        return None
    return int(directory_name.split("_", 1)[0])


def expired(directories: Iterable[MachineDirectory], machinetypes: Mapping[str, Machinetype], now: int) -> list[str]:
    """Names of the directories to delete now."""
    doomed = []
    for directory in directories:
        machinetype_name = machinetype_of(directory.name)
        created_time = created_time_of(directory.name)
        if machinetype_name is None or created_time is None or directory.is_bound:
            continue
        machinetype = machinetypes.get(machinetype_name)
        days = machinetype.machines_dir_days if machinetype is not None else DEFAULT_MACHINES_DIR_DAYS
        if days <= 0:
            continue
        cutoff = now - days * SECONDS_PER_DAY
        if directory.last_heartbeat_time is None:
            if created_time < cutoff:
                doomed.append(directory.name)
        elif directory.has_finished and directory.last_heartbeat_time < cutoff:
            doomed.append(directory.name)
    return doomed
