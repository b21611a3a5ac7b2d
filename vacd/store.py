"""Per-machine records on disk, in Vac 03's layout, every write atomic.

Rules (design.md rule 4):
- `slots/<name>` (`<created> <machinetype> <machine_model>`) binds a slot to its current
  machine directory `machines/<created>_<machinetype>_<name>/` (MD), as in Vac (§1.4, §1.5).
- The MD holds `machine.json`, our typed record, written once before the machine is
  created (so a crash between the two leaves a record to reconcile, never a stray domain),
  and Vac's marker files: `started`, `heartbeat`, `finished`, and the MJF/joboutputs trees.
- Times live inside files, never in ctimes (Vac's anti-pattern 3): `finished` holds a JSON
  record with the finish time and the outcome; `destroy_requested` records why and when
  the factory decided to stop a machine.
- Every write is temp + fsync + rename, so a kill -9 at any instant leaves each file old
  or new, and the next start reconciles from what is there.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from vacd.atomicfile import read_text_or_none, write_atomic
from vacd.errors import StoreError
from vacd.outcomes import shutdown_code
from vacd.paths import Paths

log = logging.getLogger(__name__)

RECORD_FILE = "machine.json"
FINISHED_FILE = "finished"
STARTED_FILE = "started"
HEARTBEAT_FILE = "heartbeat"
DESTROY_REQUESTED_FILE = "destroy_requested"
SHUTDOWN_MESSAGE_FILE = "shutdown_message"


@dataclass(frozen=True)
class MachineRecord:
    """What the factory decided about one machine when it created it."""

    name: str
    ordinal: int
    uuid: str
    machinetype: str
    machine_model: str
    processors: int
    created_time: int
    shutdown_time: int
    ip_address: str
    hs06: float
    mb: int

    @property
    def directory_name(self) -> str:
        return f"{self.created_time}_{self.machinetype}_{self.name}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, raw_text: str) -> "MachineRecord":
        fields: dict[str, Any] = json.loads(raw_text)
        return cls(
            name=str(fields["name"]),
            ordinal=int(fields["ordinal"]),
            uuid=str(fields["uuid"]),
            machinetype=str(fields["machinetype"]),
            machine_model=str(fields["machine_model"]),
            processors=int(fields["processors"]),
            created_time=int(fields["created_time"]),
            shutdown_time=int(fields["shutdown_time"]),
            ip_address=str(fields["ip_address"]),
            hs06=float(fields["hs06"]),
            mb=int(fields["mb"]),
        )


@dataclass(frozen=True)
class FinishRecord:
    """How a machine ended, fixed when the factory finalised it."""

    finished_time: int
    shutdown_message: Optional[str]
    shutdown_message_time: Optional[int]
    started_time: Optional[int]
    last_heartbeat_time: Optional[int]
    cpu_seconds: float

    @property
    def outcome_code(self) -> Optional[int]:
        """The 3-digit code of the shutdown message, or None (§4.4)."""
        return shutdown_code(self.shutdown_message)


@dataclass(frozen=True)
class DestroyRequest:
    """The factory decided to stop this machine: when, and what it will be told."""

    requested_time: int
    shutdown_message: Optional[str]


@dataclass(frozen=True)
class Heartbeat:
    time: int
    cpu_seconds: float
    cpu_percentage: Optional[float]


@dataclass(frozen=True)
class StoredMachine:
    """Everything on disk about one machine: the record and its markers."""

    record: MachineRecord
    directory: Path
    started_time: Optional[int]
    heartbeat: Optional[Heartbeat]
    finish: Optional[FinishRecord]
    destroy_request: Optional[DestroyRequest]

    @property
    def has_started(self) -> bool:
        return self.started_time is not None

    @property
    def has_finished(self) -> bool:
        return self.finish is not None


class Store:
    """Reads and writes machine records under a state directory."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    # Paths
    def machine_dir(self, record: MachineRecord) -> Path:
        return self.paths.machines_dir / record.directory_name

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
        """
        directory = self.machine_dir(record)
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        for subdirectory in ("machinefeatures", "jobfeatures", "joboutputs"):
            (directory / subdirectory).mkdir(mode=0o755, exist_ok=True)
        self.paths.slots_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self.paths.slots_dir / record.name,
            f"{record.created_time} {record.machinetype} {record.machine_model}\n",
        )
        write_atomic(directory / RECORD_FILE, record.to_json())
        return directory

    def mark_started(self, record: MachineRecord, now: int) -> None:
        directory = self.machine_dir(record)
        write_atomic(directory / HEARTBEAT_FILE, f"0.0 0.0 {now}\n")
        write_atomic(directory / STARTED_FILE, f"{now}\n")

    def write_heartbeat(self, record: MachineRecord, heartbeat: Heartbeat) -> None:
        percentage = "" if heartbeat.cpu_percentage is None else f" {heartbeat.cpu_percentage:.1f}"
        # Vac's format is "<cpu seconds> <cpu %>"; the time is appended so no ctime is needed.
        write_atomic(
            self.machine_dir(record) / HEARTBEAT_FILE,
            f"{heartbeat.cpu_seconds:.1f}{percentage or ' 0.0'} {heartbeat.time}\n",
        )

    def update_record(self, record: MachineRecord) -> None:
        """Rewrite machine.json (the shutdown time only ever falls, §4.6 step 2)."""
        write_atomic(self.machine_dir(record) / RECORD_FILE, record.to_json())

    def request_destroy(self, record: MachineRecord, now: int, shutdown_message: Optional[str]) -> None:
        """Record that the factory stops this machine, and why.

        The message goes to joboutputs/shutdown_message only if the guest has not written one:
        a guest's own outcome is never overwritten (§1.7, acceptance 23).
        """
        directory = self.machine_dir(record)
        if read_text_or_none(directory / DESTROY_REQUESTED_FILE) is None:
            write_atomic(
                directory / DESTROY_REQUESTED_FILE,
                json.dumps({"requested_time": now, "shutdown_message": shutdown_message}) + "\n",
            )
        if shutdown_message and self.read_shutdown_message(record) is None:
            (directory / "joboutputs").mkdir(exist_ok=True)
            write_atomic(directory / "joboutputs" / SHUTDOWN_MESSAGE_FILE, shutdown_message + "\n")

    def finish(self, record: MachineRecord, finish: FinishRecord) -> None:
        """Mark the machine finalised and point finishes/<machinetype> at it if it is the newest."""
        directory = self.machine_dir(record)
        write_atomic(directory / FINISHED_FILE, json.dumps(asdict(finish), sort_keys=True) + "\n")
        self.paths.finishes_dir.mkdir(parents=True, exist_ok=True)
        finishes_file = self.paths.finishes_dir / record.machinetype
        current = read_text_or_none(finishes_file)
        current_created = _created_time_of_finishes_line(current)
        if current_created is None or record.created_time >= current_created:
            write_atomic(finishes_file, f"{record.created_time} {record.machinetype} {record.name}\n")

    def free_slot(self, record: MachineRecord) -> None:
        """Unbind the slot if it still points at this machine (the MD stays for machines_dir_days)."""
        slot_file = self.paths.slots_dir / record.name
        binding = read_text_or_none(slot_file)
        if binding is not None and binding.split()[:1] == [str(record.created_time)]:
            slot_file.unlink()

    # Reading
    def read_shutdown_message(self, record: MachineRecord) -> Optional[str]:
        raw_text = read_text_or_none(self.joboutputs_dir(record) / SHUTDOWN_MESSAGE_FILE)
        if raw_text is None:
            return None
        first_line = raw_text.strip().splitlines()[:1]
        return first_line[0].strip()[:200] if first_line else None

    def slot_binding(self, machine_name: str) -> Optional[StoredMachine]:
        """The machine a slot is bound to, or None if the slot is free or its binding is broken."""
        raw_text = read_text_or_none(self.paths.slots_dir / machine_name)
        if raw_text is None:
            return None
        parts = raw_text.split()
        if len(parts) < 2 or not (parts[0].isascii() and parts[0].isdigit()):
            log.warning("unreadable slot binding name=%s content=%r", machine_name, raw_text[:80])
            return None
        directory = self.paths.machines_dir / f"{parts[0]}_{parts[1]}_{machine_name}"
        return self.load_machine(directory)

    def load_machine(self, directory: Path) -> Optional[StoredMachine]:
        raw_record = read_text_or_none(directory / RECORD_FILE)
        if raw_record is None:
            return None
        try:
            record = MachineRecord.from_json(raw_record)
        except (ValueError, KeyError, TypeError) as error:
            raise StoreError(f"{directory / RECORD_FILE}: unreadable machine record: {error}") from error
        return StoredMachine(
            record=record,
            directory=directory,
            started_time=_read_int(directory / STARTED_FILE),
            heartbeat=_read_heartbeat(directory / HEARTBEAT_FILE),
            finish=_read_finish(directory / FINISHED_FILE),
            destroy_request=_read_destroy_request(directory / DESTROY_REQUESTED_FILE),
        )

    def last_finished(self, machinetype: str) -> Optional[StoredMachine]:
        """The most recently created finished machine of a machinetype (finishes/<mt>, §1.4)."""
        raw_text = read_text_or_none(self.paths.finishes_dir / machinetype)
        if raw_text is None:
            return None
        parts = raw_text.split()
        if len(parts) != 3:
            return None
        return self.load_machine(self.paths.machines_dir / f"{parts[0]}_{parts[1]}_{parts[2]}")

    def all_machine_dirs(self) -> Iterator[Path]:
        if not self.paths.machines_dir.is_dir():
            return iter(())
        return (entry for entry in sorted(self.paths.machines_dir.iterdir()) if entry.is_dir())

    def remove_machine_dir(self, directory: Path) -> None:
        if directory.parent != self.paths.machines_dir:
            raise StoreError(f"refusing to remove {directory}: not a machine directory")
        shutil.rmtree(directory, ignore_errors=True)


def lowered(record: MachineRecord, shutdown_time: int) -> MachineRecord:
    return replace(record, shutdown_time=min(record.shutdown_time, shutdown_time))


def _created_time_of_finishes_line(raw_text: Optional[str]) -> Optional[int]:
    if raw_text is None:
        return None
    first = raw_text.split()[:1]
    return int(first[0]) if first and (first[0].isascii() and first[0].isdigit()) else None


def _read_int(path: Path) -> Optional[int]:
    raw_text = read_text_or_none(path)
    if raw_text is None:
        return None
    try:
        return int(float(raw_text.split()[0]))
    except (ValueError, IndexError):
        return None


def _read_heartbeat(path: Path) -> Optional[Heartbeat]:
    raw_text = read_text_or_none(path)
    if raw_text is None:
        return None
    parts = raw_text.split()
    try:
        cpu_seconds = float(parts[0])
        cpu_percentage = float(parts[1]) if len(parts) > 1 else None
        heartbeat_time = int(parts[2]) if len(parts) > 2 else int(path.stat().st_mtime)
    except (ValueError, IndexError, OSError):
        return None
    return Heartbeat(heartbeat_time, cpu_seconds, cpu_percentage)


def _read_json(path: Path) -> Optional[Mapping[str, Any]]:
    raw_text = read_text_or_none(path)
    if raw_text is None:
        return None
    try:
        value = json.loads(raw_text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _read_finish(path: Path) -> Optional[FinishRecord]:
    fields = _read_json(path)
    if fields is None:
        return None
    # A `finished` file Vac 03 wrote is empty: it still means finished.
    def optional_int(key: str) -> Optional[int]:
        value = fields.get(key) if fields else None
        return int(value) if isinstance(value, (int, float)) else None

    message = fields.get("shutdown_message") if fields else None
    cpu = fields.get("cpu_seconds", 0.0) if fields else 0.0
    return FinishRecord(
        finished_time=optional_int("finished_time") or int(path.stat().st_mtime),
        shutdown_message=message if isinstance(message, str) else None,
        shutdown_message_time=optional_int("shutdown_message_time"),
        started_time=optional_int("started_time"),
        last_heartbeat_time=optional_int("last_heartbeat_time"),
        cpu_seconds=float(cpu) if isinstance(cpu, (int, float)) else 0.0,
    )


def _read_destroy_request(path: Path) -> Optional[DestroyRequest]:
    fields = _read_json(path)
    if fields is None:
        return None
    requested = fields.get("requested_time")
    message = fields.get("shutdown_message")
    return DestroyRequest(
        requested_time=int(requested) if isinstance(requested, (int, float)) else 0,
        shutdown_message=message if isinstance(message, str) else None,
    )
