"""What the store knows of a machine, as values: its record, its markers, its slot's binding.

Rules (design.md rule 4; style.md "Types"):
- Values only: frozen dataclasses and Enums, no I/O, so the core (the scheduler's inputs,
  the guest API's document builders, accounting) can hold them without reaching the disk.
  vacd.store reads and writes them; vacd.recordformats gives each file's text.
- `MachineRecord` is machine.json: what the factory decided about one machine when it
  created it, written once before the machine is created. Its `directory_name`
  (`<created>_<machinetype>_<name>`) is Vac 03's machine directory (§1.4).
- `FinishRecord.verdict` is what the space's abort rule reads: the shutdown message only
  when it is shown to be this machine's guest's, said in its life (issue 11 item 4).
- A `SlotLookup` cannot be inconsistent: a machine exactly when BOUND, a problem exactly
  when CORRUPT (checked at construction).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Optional

from vacd.outcomes import ShutdownMessage, shutdown_code


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
    # Whether `hs06` is a figure the site configured (`hs06_per_processor` was set when the
    # machine was created) rather than vacd's stand-in of 1.0 per processor. Only such a
    # machine is sent to APEL (vacd.accounting): its ServiceLevel is the site's real HS06.
    # For a Vac 03 machine it is whether Vac wrote its `machinefeatures/hs06` file, which
    # Vac did exactly when `hs06_per_processor` was set. The default is the conservative
    # "not known": a record that does not say is archived, never sent with ServiceLevel 1.0.
    hs06_known: bool = False

    @property
    def directory_name(self) -> str:
        return f"{self.created_time}_{self.machinetype}_{self.name}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, raw_text: str) -> "MachineRecord":
        """Parse machine.json; any malformed content raises ValueError."""
        try:
            fields = json.loads(raw_text)
            if not isinstance(fields, dict):
                raise ValueError("not a JSON object")
            return cls._from_fields(fields)
        except (KeyError, TypeError, OverflowError, RecursionError) as error:
            raise ValueError(f"{type(error).__name__}: {error}") from error

    @classmethod
    def _from_fields(cls, fields: Mapping[str, Any]) -> "MachineRecord":
        if not math.isfinite(float(fields["hs06"])):
            raise ValueError("hs06 is not a finite number")
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
            hs06_known=_hs06_known(fields),
        )


def _hs06_known(fields: Mapping[str, Any]) -> bool:
    """`hs06_known` of a machine.json, inferred for records written before the field existed.

    Earlier vacd wrote `hs06` as `hs06_per_processor x processors`, with 1.0 per processor
    when it was not set. So a figure other than `processors` was configured; exactly
    `processors` was most likely the stand-in, and is taken as "not known" (only a site
    that configured hs06_per_processor = 1.0 loses anything: its record is archived, not sent).
    """
    if "hs06_known" in fields:
        value = fields["hs06_known"]
        if not isinstance(value, bool):
            raise ValueError("hs06_known is not true or false")
        return value
    return float(fields["hs06"]) != 1.0 * int(fields["processors"])


@dataclass(frozen=True)
class FinishRecord:
    """How a machine ended, fixed when the factory finalised it."""

    finished_time: int
    shutdown_message: Optional[str]
    shutdown_message_time: Optional[int]
    started_time: Optional[int]
    last_heartbeat_time: Optional[int]
    cpu_seconds: float

    # Set when `shutdown_message` is kept for the admin, APEL and status but the abort rule
    # must not read it (issue 11 item 4): why it is not shown to be this machine's guest's.
    distrust_reason: Optional[str] = None
    # What the abort rule reads then: the outcome as if the guest had said nothing (the
    # factory's own reason, a fizzle, or None).
    verdict_instead: Optional[str] = None

    @property
    def verdict(self) -> Optional[str]:
        """The outcome the space's abort rule reads (local backoff, peers' reports)."""
        return self.shutdown_message if self.distrust_reason is None else self.verdict_instead

    @property
    def outcome_code(self) -> Optional[int]:
        """The 3-digit code of the shutdown message, or None (§4.4)."""
        return shutdown_code(self.shutdown_message)


@dataclass(frozen=True)
class ShutdownReceipt:
    """The guest API received a shutdown_message from a machine's own slot address."""

    uuid: str
    source_address: str
    received_time: int
    # The parsed message the upload held (parse_shutdown_message), None if it held none.
    message: Optional[str]


@dataclass(frozen=True)
class JudgedShutdownMessage:
    """The message in joboutputs/shutdown_message, and whether the abort rule may read it."""

    message: ShutdownMessage
    # None when it is this machine's guest's, said in its life (module docstring).
    distrust_reason: Optional[str]


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


class SlotCondition(Enum):
    """What a slot's binding turned out to be when it was looked up."""

    FREE = "free"  # no binding, or it names a directory without a machine record
    BOUND = "bound"  # bound to a readable machine (finished or not)
    CORRUPT = "corrupt"  # the binding or the machine record was unreadable, and is quarantined now


@dataclass(frozen=True)
class SlotLookup:
    """A slot's binding: free, a machine, or corrupt (quarantined by this lookup)."""

    machine_name: str
    condition: SlotCondition
    machine: Optional[StoredMachine] = None
    problem: Optional[str] = None  # for CORRUPT: which file and why

    def __post_init__(self) -> None:
        if (self.machine is not None) != (self.condition is SlotCondition.BOUND):
            raise ValueError("a machine is given exactly when the slot is bound")
        if (self.problem is not None) != (self.condition is SlotCondition.CORRUPT):
            raise ValueError("a problem is given exactly when the slot is corrupt")


def lowered(record: MachineRecord, shutdown_time: int) -> MachineRecord:
    return replace(record, shutdown_time=min(record.shutdown_time, shutdown_time))
