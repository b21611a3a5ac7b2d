"""Per-machine records on disk, in Vac 03's layout, every write atomic.

Rules (design.md rule 4):
- `slots/<name>` (`<created> <machinetype> <machine_model>`) binds a slot to its current
  machine directory `machines/<created>_<machinetype>_<name>/` (MD), as in Vac (§1.4, §1.5).
- The MD holds `machine.json`, our typed record, written once before the machine is
  created (so a crash between the two leaves a record to reconcile, never a stray domain),
  and Vac's marker files: `started`, `heartbeat`, `finished`, and the MJF/joboutputs trees.
- Vac's marker files keep exactly the format Vac 03 wrote, and what they cannot hold goes
  in a JSON file beside each marker (issue 10 item 5): the formats are
  vacd.recordformats', the values they hold vacd.records'.
- The JSON file is written first, then the marker. Either file present means the same
  thing, so a kill -9 between the two writes never finalises or accounts a machine twice:
  * `finished.json` or `finished` present: the machine is finished. `finished.json` is
    the record when it is readable; `finished` alone is read as earlier vacd versions
    wrote it (the JSON record inside) or as Vac 03 did (empty, finished at its mtime).
    A `finished.json` found without its marker gets the empty `finished` at the next read.
  * `heartbeat.json` is the heartbeat when it is readable; `heartbeat` alone is read as
    earlier vacd versions wrote it (`<cpu> <cpu %> <unix time>`) or as Vac 03 did (two
    fields, or one, at the file's mtime). A three-field `heartbeat` newer than
    `heartbeat.json` (an earlier vacd ran on the directory since) wins.
- Every write is temp + fsync + rename, so a kill -9 at any instant leaves each file old
  or new, and the next start reconciles from what is there. A running machine's
  heartbeats between its once-a-minute heartbeat.json and `heartbeat` go to one file for
  the node, `heartbeats.json` in the state directory, replaced once a pass (issue 15 item
  4; see vacd.heartbeatfiles).
- Records are read through a cache keyed on each file's (inode, mtime, size, ctime), and
  every write is atomic (vacd.recordfiles, issue 15 item 2).
- What a machine directory's records parse to is kept too, keyed on the keys of all its
  record files (absent ones included), and used only while one lstat of each file shows
  every key unchanged and the store read each file under that key (none was racy): a
  pass over an unchanged machine lstat-s its seven files and parses nothing (issue 15
  item 2). Each file is still looked at every pass, so a record changed, replaced,
  removed or added by anyone (an admin, a restore, a corrupting disk) is seen by the next
  pass as before.
- A machine directory is never reused (issue 8 item 10): `begin_creation` creates it
  exclusively and refuses one that exists, and the factory then tries the next second.
- Guest-written files (everything in `joboutputs/`) are bytes until validated, never
  reached through a link, and a shutdown message counts for the abort rule only if it is
  this machine's guest's, said in its life (vacd.guestoutputs; issue 8 item 2, issue 11
  items 3 and 4).
- A record that cannot be read is quarantined, never fatal (issue 8 item 3): it is renamed
  to `<file>.corrupt-<unix time>` beside where it was (kept for the admin until the
  directory expires), logged at WARNING with its path and counted (`quarantined_total`).
  What the slot then means:
  * `machine.json` (or `slots/<name>` itself): the slot is CORRUPT for this lookup and
    unbound on disk. Whatever runs under its name is not ours to adopt: the factory
    destroys it (any UUID) and creates nothing into the slot until that destroy is done.
    Later lookups see the slot free (level-triggered: a free slot with a domain under its
    name is a zombie). The machine's accounting is lost, as its record is.
  * any other record: the machine keeps what it said (vacd.markerfiles).
  A record is corrupt if it is not a regular file, is over MAX_RECORD_BYTES, is not UTF-8,
  does not parse, or (machine.json) does not name the directory it is in.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

from vacd.atomicfile import write_atomic
from vacd.cappedread import UnreadableFile, read_capped
from vacd.errors import StoreError
from vacd.guestoutputs import judge_shutdown_message, read_shutdown_file, write_joboutputs_file
from vacd.outcomes import ShutdownMessage
from vacd.heartbeatfiles import HeartbeatFiles, newest_heartbeat
from vacd.markerfiles import read_destroy_request, read_finish, read_heartbeat_parts, read_started
from vacd.paths import Paths
from vacd.recordfiles import CORRUPT_MARK, MAX_CACHED_RECORDS, MAX_RECORD_BYTES, FileKey, RecordFiles, file_key
from vacd.recordformats import (
    DESTROY_REQUESTED_FILE,
    FINISHED_FILE,
    FINISHED_RECORD_FILE,
    HEARTBEAT_FILE,
    HEARTBEAT_RECORD_FILE,
    INITIAL_HEARTBEAT_LINE,
    JOBOUTPUTS_DIR,
    NODE_HEARTBEATS_FILE,
    RECORD_FILE,
    SHUTDOWN_MESSAGE_FILE,
    SHUTDOWN_RECEIPT_FILE,
    STARTED_FILE,
    CorruptRecord,
    created_time_of_finishes_line,
    destroy_request_json,
    finish_json,
    parse_shutdown_receipt,
    vac_heartbeat_line,
)
from vacd.records import (
    FinishRecord,
    Heartbeat,
    JudgedShutdownMessage,
    MachineRecord,
    ShutdownReceipt,
    SlotCondition,
    SlotLookup,
    StoredMachine,
)

log = logging.getLogger(__name__)

# Vac 03's layout puts the creation time first in a directory name; never look more than
# this many seconds ahead for a free one (each slot creates at most once a pass).
MAX_DIRECTORY_NAME_TRIES = 10
# A bound on the parsed machines (one per machine directory), as on the record cache.
MAX_CACHED_MACHINES = MAX_CACHED_RECORDS // 8

# The record files of a machine directory that `Store._load` reads, in that order: the keys
# of all of them validate a parsed machine (_ParsedMachine).
_MACHINE_FILES = (
    RECORD_FILE,
    STARTED_FILE,
    HEARTBEAT_RECORD_FILE,
    HEARTBEAT_FILE,
    FINISHED_RECORD_FILE,
    FINISHED_FILE,
    DESTROY_REQUESTED_FILE,
)


class MachineDirectoryExists(StoreError):
    """The directory a new machine would use already exists: it is never reused (issue 8 item 10)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        super().__init__(f"{directory}: machine directory exists; a machine directory is never reused")


@dataclass(frozen=True)
class _ParsedMachine:
    """A machine as `Store._load` parsed it, and the keys of the files it came from.

    The heartbeat is kept in its parts, because the node file's entry (which moves every
    pass and is no file of the directory) is laid over them at each lookup.
    """

    keys: tuple[Optional[FileKey], ...]  # per _MACHINE_FILES; None: absent
    stored: StoredMachine
    recorded_heartbeat: Optional[Heartbeat]  # heartbeat.json
    line_heartbeat: Optional[Heartbeat]  # Vac's `heartbeat`
    line_has_time: bool


class Store:
    """Reads and writes machine records under a state directory."""

    def __init__(self, paths: Paths, clock: Optional[Callable[[], float]] = None) -> None:
        self.paths = paths
        # Only for the `.corrupt-<unix time>` names of quarantined records.
        self.clock = clock or _wall_clock
        self._files = RecordFiles(self.clock)
        # The guest API reads through this store from its own thread.
        self._cache_lock = threading.Lock()
        # Machine directory -> what its records parsed to (module docstring).
        self._machine_cache: dict[str, _ParsedMachine] = {}
        # Machine name -> (the text of slots/<name>, the directory it names).
        self._binding_cache: dict[str, tuple[str, Path]] = {}
        # The layout's directories, built once: a pass looks up every slot under them.
        self._state_dir = paths.state_dir
        self._slots_dir = paths.slots_dir
        self._machines_dir = paths.machines_dir
        self._heartbeats = HeartbeatFiles(self._files, self._state_dir / NODE_HEARTBEATS_FILE)

    @property
    def quarantined_total(self) -> int:
        """How many corrupt records this store has renamed aside since it was made."""
        return self._files.quarantined_total

    @property
    def record_file_reads(self) -> int:
        """Record files opened and read (tests, the bench)."""
        return self._files.record_file_reads

    @property
    def record_cache_hits(self) -> int:
        """Record lookups the cache answered (tests, the bench)."""
        return self._files.record_cache_hits

    # Paths
    def machine_dir(self, record: MachineRecord) -> Path:
        return self._machines_dir / record.directory_name

    def joboutputs_dir(self, record: MachineRecord) -> Path:
        return self.machine_dir(record) / "joboutputs"

    # Writing
    def begin_creation(self, record: MachineRecord) -> Path:
        """Create MD and bind the slot to it; called before any backend action.

        The slot is bound before machine.json is written: a kill between the two then leaves
        a binding to a directory without a record, which reads as a free slot. The other
        order left a record that no slot pointed at, so no pass ever finalised it and
        housekeeping (which keeps unfinished machines) never removed it (found by
        tests/vacd/test_crash_restart.py, issue 8).

        Raises:
            MachineDirectoryExists: MD exists already (a machine of this slot was created in
                the same second); nothing was written. Try again with a later created_time.
            OSError: MD or a record could not be written.
        """
        directory = self.machine_dir(record)
        self.paths.machines_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            directory.mkdir(mode=0o755)
        except FileExistsError as error:
            raise MachineDirectoryExists(directory) from error
        for subdirectory in ("machinefeatures", "jobfeatures", "joboutputs"):
            (directory / subdirectory).mkdir(mode=0o755, exist_ok=True)
        self.paths.slots_dir.mkdir(parents=True, exist_ok=True)
        self._files.write(
            self.paths.slots_dir / record.name,
            f"{record.created_time} {record.machinetype} {record.machine_model}\n",
        )
        self._files.write(directory / RECORD_FILE, record.to_json())
        return directory

    def mark_started(self, record: MachineRecord, now: int) -> None:
        """Write the first heartbeat and then `started`, in Vac's formats (§1.6 step 7)."""
        directory = self.machine_dir(record)
        self._heartbeats.write(directory, Heartbeat(now, 0.0, 0.0), INITIAL_HEARTBEAT_LINE)
        self._files.write(directory / STARTED_FILE, f"{now}\n")

    def write_heartbeat(self, record: MachineRecord, heartbeat: Heartbeat) -> None:
        """`heartbeat.json`, then Vac's `heartbeat` line (module docstring)."""
        self._heartbeats.write(self.machine_dir(record), heartbeat, vac_heartbeat_line(heartbeat))

    def flush_heartbeats(self) -> None:
        """Replace NODE_HEARTBEATS_FILE with this pass's heartbeats (the factory, once a pass; HeartbeatFiles.flush)."""
        self._heartbeats.flush()

    def update_record(self, record: MachineRecord) -> None:
        """Rewrite machine.json (the shutdown time only ever falls, §4.6 step 2)."""
        self._files.write(self.machine_dir(record) / RECORD_FILE, record.to_json())

    def request_destroy(self, record: MachineRecord, now: int, shutdown_message: Optional[str]) -> None:
        """Record that the factory stops this machine, and why.

        The message goes to joboutputs/shutdown_message only if the guest has not written one:
        a guest's own outcome is never overwritten (§1.7, acceptance 23). Whatever the guest
        put there (a directory, say) never makes this fail: the message is in
        `destroy_requested` anyway.
        """
        directory = self.machine_dir(record)
        if not os.path.lexists(directory / DESTROY_REQUESTED_FILE):
            self._files.write(directory / DESTROY_REQUESTED_FILE, destroy_request_json(now, shutdown_message))
        if shutdown_message and self.read_shutdown_message(record) is None:
            target = directory / JOBOUTPUTS_DIR / SHUTDOWN_MESSAGE_FILE
            try:
                write_joboutputs_file(directory, SHUTDOWN_MESSAGE_FILE, (shutdown_message + "\n").encode())
            except (OSError, UnreadableFile) as error:
                log.warning("cannot write the factory's shutdown message path=%s error=%s", target, error)

    def finish(self, record: MachineRecord, finish: FinishRecord) -> None:
        """Mark the machine finalised and point finishes/<machinetype> at it if it is the newest.

        `finished.json` first, then Vac's empty `finished`: either one present means
        finished (module docstring), so a kill between the two cannot finalise it twice.
        """
        directory = self.machine_dir(record)
        self._files.write(directory / FINISHED_RECORD_FILE, finish_json(finish))
        self._files.write(directory / FINISHED_FILE, "")
        self._heartbeats.forget(directory)
        self.paths.finishes_dir.mkdir(parents=True, exist_ok=True)
        finishes_file = self.paths.finishes_dir / record.machinetype
        current_created = created_time_of_finishes_line(_read_line(finishes_file))
        if current_created is None or record.created_time >= current_created:
            write_atomic(finishes_file, f"{record.created_time} {record.machinetype} {record.name}\n")

    def free_slot(self, record: MachineRecord) -> None:
        """Unbind the slot if it still points at this machine (the MD stays for machines_dir_days)."""
        self._unbind_if_bound_to(record.name, self.machine_dir(record))

    # Reading
    def shutdown_message(self, record: MachineRecord) -> Optional[ShutdownMessage]:
        """The guest's (or the factory's) message in joboutputs/shutdown_message, parsed; None if none.

        The file is the guest's: anything there that is not a regular file is no message.
        """
        found = read_shutdown_file(record, self.machine_dir(record))
        return found[0] if found is not None else None

    def judged_shutdown_message(
        self, record: MachineRecord, started_time: Optional[int], now: int, factory_message: Optional[str] = None
    ) -> Optional[JudgedShutdownMessage]:
        """The message in joboutputs/shutdown_message and whether the abort rule may read it.

        What counts is guestoutputs.judge_shutdown_message's (module docstring, issue 11 item 4).
        """
        found = read_shutdown_file(record, self.machine_dir(record))
        if found is None:
            return None
        return judge_shutdown_message(record, found, lambda: self.shutdown_receipt(record), started_time, now,
                                      factory_message)

    def shutdown_receipt(self, record: MachineRecord) -> Optional[ShutdownReceipt]:
        """The guest API's receipt of this machine's shutdown_message, or None (unreadable: None, logged)."""
        path = self.machine_dir(record) / SHUTDOWN_RECEIPT_FILE
        try:
            raw_text = self._files.read_text(path)
            if raw_text is None:
                return None
            return parse_shutdown_receipt(raw_text, path)
        except CorruptRecord as error:
            log.warning("unreadable shutdown message receipt path=%s reason=%s", path, error)
            return None

    def read_shutdown_message(self, record: MachineRecord) -> Optional[str]:
        """The text of `shutdown_message(record)`, code included, or None."""
        message = self.shutdown_message(record)
        return message.text if message is not None else None

    def bound_directory(self, machine_name: str) -> Optional[Path]:
        """The MD that slots/<name> names, or None if the slot is unbound or the binding unreadable.

        Reads only; quarantining a bad binding is `lookup_slot`'s job.
        """
        try:
            return self._bound_directory(machine_name)
        except CorruptRecord:
            return None

    def lookup_slot(self, machine_name: str) -> SlotLookup:
        """What the slot is bound to; a corrupt binding or record is quarantined and reported once."""
        try:
            directory = self._bound_directory(machine_name)
        except CorruptRecord as error:
            self._files.quarantine(self._slots_dir / machine_name, str(error))
            return SlotLookup(machine_name, SlotCondition.CORRUPT, problem=str(error))
        if directory is None:
            return SlotLookup(machine_name, SlotCondition.FREE)
        try:
            stored = self._load(directory)
        except CorruptRecord as error:
            return SlotLookup(machine_name, SlotCondition.CORRUPT, problem=str(error))
        if stored is None:
            return SlotLookup(machine_name, SlotCondition.FREE)
        return SlotLookup(machine_name, SlotCondition.BOUND, machine=stored)

    def slot_binding(self, machine_name: str) -> Optional[StoredMachine]:
        """The machine a slot is bound to, or None if the slot is free or was corrupt (see lookup_slot)."""
        return self.lookup_slot(machine_name).machine

    def load_machine(self, directory: Path) -> Optional[StoredMachine]:
        """Everything about the machine in `directory`, or None if it holds no (readable) record.

        Never raises for what is in the files: corrupt records are quarantined (module docstring).
        """
        try:
            return self._load(directory)
        except CorruptRecord:
            return None

    def last_finished(self, machinetype: str) -> Optional[StoredMachine]:
        """The most recently created finished machine of a machinetype (finishes/<mt>, §1.4)."""
        parts = (_read_line(self.paths.finishes_dir / machinetype) or "").split()
        if len(parts) != 3 or not _is_directory_part(parts[0], parts[1], parts[2]):
            return None
        return self.load_machine(self.paths.machines_dir / f"{parts[0]}_{parts[1]}_{parts[2]}")

    def bound_machine_names(self) -> list[str]:
        """The machine names that slots/ binds, in any range (sorted; dot files are temp files).

        The directory's entry types say which are files (scandir), so no entry is stat-ed
        but a symlink (followed, as Path.is_file does).
        """
        try:
            with os.scandir(self._slots_dir) as entries:
                return sorted(entry.name for entry in entries if not entry.name.startswith(".") and entry.is_file())
        except FileNotFoundError:
            return []

    def all_machine_dirs(self) -> Iterator[Path]:
        if not self.paths.machines_dir.is_dir():
            return iter(())
        return (
            entry
            for entry in sorted(self.paths.machines_dir.iterdir())
            if entry.is_dir() and not entry.is_symlink()
        )

    def bound_directories(self) -> set[Path]:
        """Every MD a slot binding names, for slots in or beyond the configured range."""
        bound: set[Path] = set()
        try:
            names = os.listdir(self.paths.slots_dir)
        except OSError:
            return bound
        for name in names:
            if name.startswith(".") or CORRUPT_MARK in name:
                continue
            directory = self.bound_directory(name)
            if directory is not None:
                bound.add(directory)
        return bound

    def remove_machine_dir(self, directory: Path) -> None:
        if directory.parent != self.paths.machines_dir:
            raise StoreError(f"refusing to remove {directory}: not a machine directory")
        shutil.rmtree(directory, ignore_errors=True)
        self._forget_directory(directory)

    # Reading records, quarantining the unreadable
    def _bound_directory(self, machine_name: str) -> Optional[Path]:
        slot_file = os.path.join(self._slots_dir, machine_name)
        raw_text = self._files.read_text(slot_file)
        if raw_text is None:
            return None
        remembered = self._binding_cache.get(machine_name)
        if remembered is not None and remembered[0] == raw_text:
            return remembered[1]
        parts = raw_text.split()
        if len(parts) < 2 or not _is_directory_part(parts[0], parts[1], machine_name):
            raise CorruptRecord(f"{slot_file}: unreadable slot binding {raw_text[:80]!r}")
        directory = self._machines_dir / f"{parts[0]}_{parts[1]}_{machine_name}"
        with self._cache_lock:
            if len(self._binding_cache) >= MAX_CACHED_MACHINES:
                self._binding_cache.clear()
            self._binding_cache[machine_name] = (raw_text, directory)
        return directory

    def _load(self, directory: Path) -> Optional[StoredMachine]:
        """The machine in `directory`; raises CorruptRecord (after quarantining) if machine.json is bad.

        Answered from the parsed machine while every record file's key is the one it was
        parsed under (module docstring); read from the files otherwise.
        """
        key_path = os.fspath(directory)
        keys = _machine_file_keys(key_path)
        parsed = self._machine_cache.get(key_path) if keys is not None else None
        if parsed is not None and parsed.keys == keys:
            self._files.count_cache_hits(sum(1 for key in keys if key is not None))
            heartbeat = newest_heartbeat(parsed.recorded_heartbeat, self._heartbeats.node_heartbeat(directory.name),
                                          parsed.line_heartbeat, parsed.line_has_time)
            if heartbeat == parsed.stored.heartbeat:
                return parsed.stored
            return replace(parsed.stored, heartbeat=heartbeat)
        loaded = self._load_from_files(directory)
        if loaded is None:
            return None
        stored, heartbeat_parts = loaded
        # Kept only if no file changed while it was read and each was read under its key
        # (a racy file is not in the record cache: it is read again next time).
        if (keys is not None and _machine_file_keys(key_path) == keys
                and self._files.all_cached(key_path, _MACHINE_FILES, keys)):
            with self._cache_lock:
                if len(self._machine_cache) >= MAX_CACHED_MACHINES:
                    self._machine_cache.clear()
                self._machine_cache[key_path] = _ParsedMachine(keys, stored, *heartbeat_parts)
        return stored

    def _load_from_files(
        self, directory: Path
    ) -> Optional[tuple[StoredMachine, tuple[Optional[Heartbeat], Optional[Heartbeat], bool]]]:
        """The machine in `directory` read from its files, with its heartbeat's parts (_ParsedMachine)."""
        record_path = directory / RECORD_FILE
        try:
            raw_record = self._files.read_text(record_path)
            if raw_record is None:
                return None
            try:
                record = MachineRecord.from_json(raw_record)
            except ValueError as error:
                raise CorruptRecord(f"{record_path}: unreadable machine record: {error}") from error
            if record.directory_name != directory.name:
                raise CorruptRecord(f"{record_path}: record of {record.directory_name} found in {directory.name}")
        except CorruptRecord as error:
            self._files.quarantine(record_path, str(error))
            # The slot must not stay bound to a machine nobody can read: it is free once
            # whatever runs under its name is destroyed (module docstring).
            self._unbind_if_bound_to(_machine_name_of(directory.name), directory)
            raise
        started_time = read_started(self._files, directory / STARTED_FILE)
        recorded, line, line_has_time = read_heartbeat_parts(self._files, directory)
        stored = StoredMachine(
            record=record,
            directory=directory,
            started_time=started_time,
            heartbeat=newest_heartbeat(recorded, self._heartbeats.node_heartbeat(directory.name), line, line_has_time),
            finish=read_finish(self._files, directory),
            destroy_request=read_destroy_request(self._files, directory / DESTROY_REQUESTED_FILE),
        )
        return stored, (recorded, line, line_has_time)

    def _forget_directory(self, directory: Path) -> None:
        self._files.forget_directory(directory)
        with self._cache_lock:
            self._machine_cache.pop(os.fspath(directory), None)
        self._heartbeats.forget(directory)

    def _unbind_if_bound_to(self, machine_name: str, directory: Path) -> None:
        if machine_name and self.bound_directory(machine_name) == directory:
            try:
                (self.paths.slots_dir / machine_name).unlink()
            except FileNotFoundError:
                pass


def _machine_file_keys(directory: str) -> Optional[tuple[Optional[FileKey], ...]]:
    """One lstat of each of a machine directory's record files: its key, or None if absent.

    None for the whole if any is there but not a regular file: that machine is read from
    its files every time (they say what is wrong with it).
    """
    keys: list[Optional[FileKey]] = []
    for name in _MACHINE_FILES:
        try:
            status = os.lstat(os.path.join(directory, name))
        except FileNotFoundError:
            keys.append(None)
            continue
        except OSError:
            return None
        if not stat.S_ISREG(status.st_mode):
            return None
        keys.append(file_key(status))
    return tuple(keys)


def _wall_clock() -> float:
    # Imported here: core modules import this module's record types, and must not reach `time`.
    import time

    return time.time()


def _is_directory_part(created: str, machinetype: str, machine_name: str) -> bool:
    """True if `<created>_<machinetype>_<name>` is one safe directory name of Vac's shape (§1.4)."""
    return (
        created.isascii()
        and created.isdigit()
        and all(part and "/" not in part and "\0" not in part and part not in (".", "..")
                for part in (machinetype, machine_name))
    )


def _machine_name_of(directory_name: str) -> str:
    parts = directory_name.split("_", 2)
    return parts[2] if len(parts) == 3 else ""


def _read_line(path: Path) -> Optional[str]:
    """A small file of ours that is rewritten whole (finishes/<mt>): its text, or None if unusable."""
    try:
        raw = read_capped(path, MAX_RECORD_BYTES)
    except UnreadableFile:
        return None
    return raw.decode("utf-8", errors="replace") if raw is not None else None
