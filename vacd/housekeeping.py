"""Which old machine directories to delete (behaviour reference §1.8, acceptance 42).

Kept from Vac 03: a machine directory `<created>_<machinetype>_<name>` is deleted once its
last heartbeat is older than the machinetype's `machines_dir_days` (3 days if the
machinetype is no longer configured); 0 or less keeps it for ever; a directory with no
heartbeat at all is never deleted. Added safety: a directory that still holds an
unfinished machine is never deleted, whatever its heartbeat says.

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
    last_heartbeat_time: Optional[int]
    has_finished: bool


def machinetype_of(directory_name: str) -> Optional[str]:
    """`1700000000_atlas_f1-03.example.com` -> `atlas`; None if the name is not of that shape."""
    parts = directory_name.split("_", 2)
    if len(parts) != 3 or not (parts[0].isascii() and parts[0].isdigit()):
        return None
    return parts[1]


def expired(directories: Iterable[MachineDirectory], machinetypes: Mapping[str, Machinetype], now: int) -> list[str]:
    """Names of the directories to delete now."""
    doomed = []
    for directory in directories:
        machinetype_name = machinetype_of(directory.name)
        if machinetype_name is None or directory.last_heartbeat_time is None or not directory.has_finished:
            continue
        machinetype = machinetypes.get(machinetype_name)
        days = machinetype.machines_dir_days if machinetype is not None else DEFAULT_MACHINES_DIR_DAYS
        if days <= 0:
            continue
        if directory.last_heartbeat_time < now - days * SECONDS_PER_DAY:
            doomed.append(directory.name)
    return doomed
