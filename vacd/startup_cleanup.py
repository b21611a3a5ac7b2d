"""Remove what a `kill -9` left behind, once, before the first pass (issue 8 item 4).

A vacd killed at any instant leaves every record old or new (design.md rule 4), but it can
leave litter that nothing else ever removes and that fills the disk over months:

- the temp files of `vacd.atomicfile.atomic_replace` (`.<target>.<random>.tmp`), beside
  their targets in the state directory tree, including partial image downloads in
  imagecache/ (the image cache downloads through `atomic_replace`);
- the disk files the libvirt backend makes in tmp/ (`<uuid>.<device>.qcow2` overlays and
  `<uuid>.<device>.raw` sparse disks, `vacd.backends.domainxml.machine_disks`). The backend
  unlinks them right after the domain starts, as Vac 03 did (§1.10), so one found at start,
  when no creation is in flight, is either an orphan (vacd died before the domain was
  created) or the disk of a running domain whose unlink was lost; QEMU holds that one
  open, so unlinking it is what the backend would have done, and it stops the space from
  staying used once the machine ends.

Rules: only names vacd itself gives, in directories vacd owns, are removed, each logged with
its path. A guest's `joboutputs/` and the admin's `machinetypes/` are never looked into (a
guest may name a file anything; a killed upload's temp file goes with its machine directory
after machines_dir_days). The accounting staging files in tmp/ are APEL's exactly-once
state and are never touched. Run it before the factory starts, and only then: during a
pass a temp file or a disk file may belong to work in flight.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from vacd.atomicfile import is_temp_file_name
from vacd.errors import VacError
from vacd.paths import Paths
from vacd.store import Store

log = logging.getLogger(__name__)

# machine_disks' names: the canonical UUID, the target device, the format.
DISK_FILE_NAME = re.compile(
    r"(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.[a-z0-9]+\.(?:qcow2|raw)"
)
# Subdirectories of a machine directory that only vacd writes (mjf.py, contextualise.py).
VACD_MACHINE_SUBDIRECTORIES = ("machinefeatures", "jobfeatures")


@dataclass
class CleanupReport:
    """What start-up cleanup removed (and could not), for the log and for tests."""

    temp_files: list[Path] = field(default_factory=list)
    disk_files: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)


def vacd_directories(paths: Paths) -> Iterator[Path]:
    """Every directory vacd writes its own files into with `atomic_replace`."""
    yield paths.state_dir
    for directory in (paths.slots_dir, paths.finishes_dir, paths.pipescache_dir, paths.imagecache_dir,
                      paths.tmp_dir, paths.space_census_dir):
        yield directory
    for tree in (paths.apel_outgoing_dir, paths.apel_archive_dir):
        yield tree
        yield from _subdirectories(tree)  # one directory per day
    for machine_dir in _subdirectories(paths.machines_dir):
        yield machine_dir
        for name in VACD_MACHINE_SUBDIRECTORIES:
            yield machine_dir / name


def _subdirectories(directory: Path) -> list[Path]:
    try:
        return sorted(entry for entry in directory.iterdir() if entry.is_dir() and not entry.is_symlink())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _files(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted((entry for entry in entries if entry.is_file(follow_symlinks=False)),
                          key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def live_machine_uuids(store: Store) -> frozenset[str]:
    """UUIDs of the machines whose records are not finished (unreadable records are skipped)."""
    uuids = set()
    for directory in store.all_machine_dirs():
        try:
            stored = store.load_machine(directory)
        except (VacError, OSError, UnicodeDecodeError):
            continue
        if stored is not None and not stored.has_finished:
            uuids.add(stored.record.uuid)
    return frozenset(uuids)


def live_machine_names(store: Store) -> frozenset[str]:
    """Names of the machines whose records are not finished, or could not be read for an I/O error.

    A corrupt record is quarantined by the store and its machine is a zombie (vacd.store), so
    it is not live; one that could not be read at all is kept live, to be safe.
    """
    names = set()
    for directory in store.all_machine_dirs():
        try:
            stored = store.load_machine(directory)
        except (VacError, OSError, UnicodeDecodeError):
            # Its name is in the directory's (`<created>_<machinetype>_<name>`): not judged dead.
            names.add(directory.name.split("_", 2)[-1])
            continue
        if stored is not None and not stored.has_finished:
            names.add(stored.record.name)
    return frozenset(names)


def remove_leftovers(paths: Paths, live_uuids: Iterable[str] = ()) -> CleanupReport:
    """Remove temp files and tmp/ disk files a killed vacd left; never raises OSError.

    `live_uuids` (the machines with an unfinished record) only changes what the log says
    about a disk file: an orphan, or the disk of a running machine.
    """
    live = frozenset(live_uuids)
    report = CleanupReport()
    for directory in vacd_directories(paths):
        for entry in _files(directory):
            if is_temp_file_name(entry.name):
                if _remove(Path(entry.path), report):
                    report.temp_files.append(Path(entry.path))
                    log.info("removed temp file left by a stopped vacd path=%s", entry.path)
    for entry in _files(paths.tmp_dir):
        match = DISK_FILE_NAME.fullmatch(entry.name)
        if match is None:
            continue
        if _remove(Path(entry.path), report):
            report.disk_files.append(Path(entry.path))
            if match.group("uuid") in live:
                log.info("unlinked disk file of a running machine (QEMU holds it open) path=%s", entry.path)
            else:
                log.info("removed orphan disk file path=%s", entry.path)
    return report


def _remove(path: Path, report: CleanupReport) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as error:  # boundary: litter that stays must not stop the factory starting
        log.warning("cannot remove leftover file path=%s error=%s", path, error)
        report.failures.append((path, str(error)))
        return False
    return True


__all__ = ["CleanupReport", "DISK_FILE_NAME", "live_machine_uuids", "remove_leftovers", "vacd_directories"]
