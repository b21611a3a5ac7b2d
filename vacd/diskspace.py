"""Disk full is a gate, not a crash (issue 8 item 4): is there room to create machines?

A creation writes a machine directory, user_data and, for a root image, a qcow2 overlay or
a sparse disk that the guest then fills; a full state directory would then fail every write
of every slot. So below a threshold creations stop, with a gate reason such as
`disk: /var/lib/vac has 312 MiB free, needs 1024 MiB`, while policing, destroys,
finalising and accounting (which need only a few small writes) go on.

Rules:
- The core, `disk_problem`, is pure: it is given each directory's free and total bytes.
  `check_disk` is the thin edge that asks the file system (through a `statvfs`-like
  callable, so tests pass numbers) and is what the daemon gives the factory.
- A directory passes only if it has at least the larger of `min_free_disk_mb` MiB and
  `min_free_disk_percent` % of its file system; 0 turns either rule off.
- Free means what `df` calls available (`f_bavail`): the blocks kept for root are not
  ours to fill, even though vacd runs as root.
- The directories checked are the state directory, its tmp/ (disk overlays) and its
  imagecache/ (downloads): normally one file system, but a site may mount either apart.
  The first one short of space is the reason.
- A sparse disk file takes nothing when made and can grow to its full size as the guest
  writes (issue 13 item 2): so its creation checks first, with `room_problem`, that the
  full size would still leave the kept minimum free. Disks already handed to running
  machines are not counted (their files are unlinked once QEMU holds them, §1.10): the check
  stops the one creation that could not fit even alone, not an over-commitment of many.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

from vacd.config import Settings
from vacd.paths import Paths

log = logging.getLogger(__name__)

MIB = 1024 * 1024


class StatvfsResult(Protocol):
    """The fields of `os.statvfs_result` this module reads."""

    @property
    def f_frsize(self) -> int: ...

    @property
    def f_blocks(self) -> int: ...

    @property
    def f_bavail(self) -> int: ...


Statvfs = Callable[[str], StatvfsResult]


@dataclass(frozen=True)
class DiskUsage:
    """One directory's file system: bytes available to vacd, and its size."""

    directory: Path
    free_bytes: int
    total_bytes: int


def required_free_bytes(settings: Settings, total_bytes: int) -> int:
    """The free space a file system of `total_bytes` must keep: the larger of the two rules."""
    by_size = settings.min_free_disk_mb * MIB
    by_share = int(total_bytes * settings.min_free_disk_percent / 100)
    return max(by_size, by_share)


def disk_problem(usages: Sequence[DiskUsage], settings: Settings) -> Optional[str]:
    """The gate reason for the first directory short of space, or None if all have room."""
    for usage in usages:
        needed = required_free_bytes(settings, usage.total_bytes)
        if usage.free_bytes < needed:
            return (f"disk: {usage.directory} has {usage.free_bytes // MIB} MiB free, "
                    f"needs {_rounded_up_mib(needed)} MiB")
    return None


def room_problem(usage: DiskUsage, size_bytes: int, settings: Settings, what: str = "a sparse disk") -> Optional[str]:
    """Why a file that may grow to `size_bytes` must not be made in `usage.directory`, or None.

    It must fit in the free space and still leave what `required_free_bytes` keeps free.
    """
    kept = required_free_bytes(settings, usage.total_bytes)
    if usage.free_bytes - size_bytes >= kept:
        return None
    return (f"disk: {usage.directory} has {usage.free_bytes // MIB} MiB free; {what} that may grow to "
            f"{_rounded_up_mib(size_bytes)} MiB would leave less than the {_rounded_up_mib(kept)} MiB kept free "
            "(min_free_disk_mb, min_free_disk_percent): lower disk_gb_per_processor or set volume_group")


def check_room(directory: Path, size_bytes: int, settings: Settings, statvfs: Statvfs = os.statvfs) -> Optional[str]:
    """`room_problem` for `directory` as its file system is now; one that cannot be examined is a problem."""
    try:
        usage = read_disk_usage(directory, statvfs)
    except OSError as error:
        return f"disk: cannot examine {directory}: {error.strerror or error}"
    return room_problem(usage, size_bytes, settings)


def _rounded_up_mib(size_bytes: int) -> int:
    # "needs 52 MiB" must not read as met by 52.4 MiB free: round the requirement up.
    return -(-size_bytes // MIB)


def read_disk_usage(directory: Path, statvfs: Statvfs = os.statvfs) -> DiskUsage:
    """The free and total bytes of `directory`'s file system; raises OSError."""
    result = statvfs(str(directory))
    return DiskUsage(directory, result.f_bavail * result.f_frsize, result.f_blocks * result.f_frsize)


def checked_directories(paths: Paths) -> tuple[Path, ...]:
    return (paths.state_dir, paths.tmp_dir, paths.imagecache_dir)


def check_disk(paths: Paths, settings: Settings, statvfs: Statvfs = os.statvfs) -> Optional[str]:
    """The disk gate reason for this factory now, or None: the edge the factory calls each pass.

    A directory that cannot be examined (gone, an I/O error) blocks creation too: a
    creation would have to write there.
    """
    usages = []
    for directory in checked_directories(paths):
        try:
            usages.append(read_disk_usage(directory, statvfs))
        except OSError as error:
            return f"disk: cannot examine {directory}: {error.strerror or error}"
    return disk_problem(usages, settings)


__all__ = ["DiskUsage", "MIB", "check_disk", "check_room", "checked_directories", "disk_problem", "read_disk_usage",
           "required_free_bytes", "room_problem"]
