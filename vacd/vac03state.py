"""Take over the machines a Vac 03 factory left running, when vacd replaces it on a node (issue 10 item 1).

Vac 03 keeps the same layout vacd does (behaviour reference §1.4, §1.5, §6.2): `slots/<name>`
binds a slot to `machines/<created>_<machinetype>_<name>/`, whose `jobfeatures/` and
`machinefeatures/` say what the machine was created with. What Vac 03 never wrote is vacd's
`machine.json`, so without this module each of its slots reads as free and each of its live
domains as a zombie, destroyed at vacd's first pass with no APEL record.

A Vac 03 slot is one whose binding names a directory that holds no `machine.json`, no
`finished`, and Vac 03's `jobfeatures/job_id`. For each, `plan_vac03_slot` decides:

- ADOPT: the files say what the machine is, and either a domain of that name and UUID is
  running, or none runs under the name (it ended while no factory was watching). vacd writes
  the `machine.json` the files imply (`adopt`); from then on it is a vacd machine like any
  other: policed with its original start and shutdown times, finalised with the guest's
  `shutdown_message`, accounted exactly once (Vac 03 had not finished it, so had not
  accounted it: it writes `finished` right after the APEL record, §1.5).
- HOLD: a domain runs under the name but is not the machine the files describe (another
  UUID), or the files cannot be read, or the machine is a Vac 03 container (docker,
  singularity: vacd runs docker machinetypes under podman, but never takes over one
  Vac 03 started under Docker), or the name is not one of this factory's slots. The machine is left running
  and reported by name; its slot is neither used nor freed while the domain runs.
- IGNORE: nothing runs under the name and the files cannot describe a machine: the slot is
  free, nothing is accounted, and the admin is told once.

The factory asks `Vac03TakeOver.take_over` about each slot without a vacd record, every
pass. An adoption is logged when it is made; a held or ignored slot is logged once per change
of what is said of it, not every pass (a held machine may run for days).

Nothing here destroys anything or writes outside the machine directory. The decision is
level-triggered (taken again every pass from what is on disk and in libvirt), so a crash
during a take-over costs nothing: `machine.json` is written atomically, and a directory
that has one is vacd's.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from vacd.atomicfile import write_atomic
from vacd.backends.base import ObservedMachine
from vacd.cappedread import UnreadableFile, read_capped
from vacd.config import VM_MACHINE_MODELS, Settings
from vacd.paths import Paths
from vacd.slots import SlotIdentity, ip_address_for, ordinal_of_machine_name
from vacd.recordformats import FINISHED_FILE, RECORD_FILE
from vacd.records import MachineRecord
from vacd.store import Store

log = logging.getLogger(__name__)

# Vac 03's per-machine files are a line each; anything bigger is not one of them.
MAX_VAC03_FILE_BYTES = 4096


class TakeOver(enum.Enum):
    ADOPT = "adopt"
    HOLD = "hold"
    IGNORE = "ignore"


@dataclass(frozen=True)
class Vac03Plan:
    """What vacd does with one slot that Vac 03 left."""

    machine_name: str
    directory: Path
    action: TakeOver
    reason: str  # for the admin: why this action
    record: Optional[MachineRecord] = None  # for ADOPT: the record vacd writes
    running: bool = False  # a domain runs under the name now
    processors: int = 1  # what the slot holds, for a HOLD (the files' word, else 1)

    def describe(self) -> str:
        """One line for the log and for `vacd --check-host`."""
        if self.action is TakeOver.ADOPT and self.running:
            assert self.record is not None
            return (f"{self.machine_name}: adopt the running Vac 03 machine uuid={self.record.uuid} "
                    f"machinetype={self.record.machinetype} processors={self.record.processors} ({self.reason})")
        if self.action is TakeOver.ADOPT:
            return f"{self.machine_name}: finalise and account the Vac 03 machine that ended ({self.reason})"
        if self.action is TakeOver.HOLD:
            return f"{self.machine_name}: leave running, not adopted: {self.reason}"
        return f"{self.machine_name}: slot reused, nothing to account: {self.reason}"


def is_vac03_directory(directory: Path) -> bool:
    """True if a slot bound to `directory` is Vac 03's and not finished: no machine.json, no finished."""
    return (
        directory.is_dir()
        and not (directory / RECORD_FILE).exists()
        and not (directory / FINISHED_FILE).exists()
        and (directory / "jobfeatures" / "job_id").exists()
    )


def vac03_slots(paths: Paths) -> dict[str, Path]:
    """Every slot whose binding names an unfinished Vac 03 machine directory: name -> directory."""
    # The store's reading of slots/ (Vac 03 wrote the same binding); it only reads here.
    store = Store(paths)
    found: dict[str, Path] = {}
    for name in store.bound_machine_names():
        if ".corrupt-" in name:
            continue
        directory = store.bound_directory(name)
        if directory is not None and is_vac03_directory(directory):
            found[name] = directory
    return found


def plan_vac03_slot(
    settings: Settings, machine_name: str, directory: Path, domain: Optional[ObservedMachine]
) -> Vac03Plan:
    """Decide what to do with one Vac 03 slot, from its files and the domain under its name."""
    running = domain is not None
    try:
        facts = _read_facts(machine_name, directory)
    except _Unusable as problem:
        if running:
            return Vac03Plan(machine_name, directory, TakeOver.HOLD, f"its files cannot describe it: {problem}",
                             running=True)
        return Vac03Plan(machine_name, directory, TakeOver.IGNORE, f"its files cannot describe it: {problem}")
    processors = facts.processors
    ordinal = ordinal_of_machine_name(settings.factory_name, machine_name)
    if ordinal is None:
        reason = f"the name is not a slot of factory_name {settings.factory_name}"
        action = TakeOver.HOLD if running else TakeOver.IGNORE
        return Vac03Plan(machine_name, directory, action, reason, running=running, processors=processors)
    if facts.machine_model not in VM_MACHINE_MODELS:
        # Vac 03's containers are not libvirt domains, and its docker containers ran under
        # Docker with Docker's network and no cgroup parent of vacd's (§1.11): vacd's podman
        # backend neither sees them nor could police or account them, so they are held.
        return Vac03Plan(machine_name, directory, TakeOver.HOLD,
                         f"machine_model {facts.machine_model}: a Vac 03 container is not taken over by this vacd; "
                         "stop it with Vac 03's tools (docker rm), then remove its slots/ file",
                         running=running, processors=processors)
    if domain is not None and domain.uuid.lower() != facts.uuid.lower():
        return Vac03Plan(machine_name, directory, TakeOver.HOLD,
                         f"the running domain has uuid {domain.uuid}, the slot's job_id is {facts.uuid}",
                         running=True, processors=processors)
    ip_address = ip_address_for(ordinal)
    if facts.ip_address is not None and facts.ip_address != ip_address:
        action = TakeOver.HOLD if running else TakeOver.IGNORE
        return Vac03Plan(machine_name, directory, action,
                         f"its address {facts.ip_address} is not slot {ordinal}'s {ip_address}",
                         running=running, processors=processors)
    record = MachineRecord(
        name=machine_name,
        ordinal=ordinal,
        uuid=facts.uuid.lower(),
        machinetype=facts.machinetype,
        machine_model=facts.machine_model,
        processors=processors,
        created_time=facts.created_time,
        shutdown_time=facts.shutdown_time,
        ip_address=ip_address,
        # Vac 03 counted a machine without hs06 as 1.0 per processor (§1.3 step 11), as vacd does.
        hs06=facts.hs06 if facts.hs06 is not None else float(processors),
        # Vac 03 wrote machinefeatures/hs06 exactly when hs06_per_processor was set (§6.2);
        # without it the record is archived, never sent to APEL with ServiceLevel 1.0 (item 6).
        hs06_known=facts.hs06 is not None,
        # Vac 03 wrote max_rss_bytes at creation from mb_per_processor x processors (§6.2).
        mb=facts.mb if facts.mb is not None else settings.mb_per_processor * processors,
    )
    reason = "domain and job_id agree" if running else "no domain runs under its name"
    return Vac03Plan(machine_name, directory, TakeOver.ADOPT, reason, record=record, running=running,
                     processors=processors)


def plan_take_over(
    paths: Paths, settings: Settings, observed: Mapping[str, ObservedMachine]
) -> list[Vac03Plan]:
    """The plan for every unfinished Vac 03 slot on this host (what `vacd --check-host` prints)."""
    return [
        plan_vac03_slot(settings, name, directory, observed.get(name))
        for name, directory in vac03_slots(paths).items()
    ]


def adopt(plan: Vac03Plan) -> None:
    """Write the machine.json that makes a Vac 03 machine vacd's (atomic: a crash leaves it Vac 03's)."""
    if plan.action is not TakeOver.ADOPT or plan.record is None:
        raise ValueError(f"{plan.machine_name}: not a plan to adopt")
    if plan.record.directory_name != plan.directory.name:
        raise ValueError(f"{plan.directory}: the record names {plan.record.directory_name}")
    write_atomic(plan.directory / RECORD_FILE, plan.record.to_json())


class Vac03TakeOver:
    """The factory's take-over of Vac 03's slots, pass after pass, telling the admin once per change."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._told: dict[str, str] = {}  # machine name -> what the admin was last told of it

    def take_over(
        self, settings: Settings, identity: SlotIdentity, domain: Optional[ObservedMachine]
    ) -> Optional[Vac03Plan]:
        """The plan for a slot Vac 03 left (adopted here when it can be), or None if it is not one."""
        name = identity.machine_name
        directory = self.store.bound_directory(name)
        if directory is None or not is_vac03_directory(directory):
            return None
        plan = plan_vac03_slot(settings, name, directory, domain)
        if plan.action is TakeOver.ADOPT:
            adopt(plan)
            log.info("took over Vac 03 machine: %s", plan.describe())
            self._told.pop(name, None)
        elif self._told.get(name) != plan.describe():
            # Said once per change, not every pass: a held machine may run for days.
            self._told[name] = plan.describe()
            log.warning("Vac 03 machine %s", plan.describe())
        return plan


# ---------------------------------------------------------------------------------- reading


class _Unusable(Exception):
    """A Vac 03 file that is missing or does not say what Vac 03 writes there."""


@dataclass(frozen=True)
class _Vac03Facts:
    created_time: int
    machinetype: str
    machine_model: str
    uuid: str
    processors: int
    shutdown_time: int
    ip_address: Optional[str]
    hs06: Optional[float]
    mb: Optional[int]


def _read_facts(machine_name: str, directory: Path) -> _Vac03Facts:
    created_text, _, rest = directory.name.partition("_")
    machinetype, _, name = rest.partition("_")
    if not (created_text.isascii() and created_text.isdigit()) or name != machine_name or not machinetype:
        raise _Unusable(f"{directory.name} is not <created>_<machinetype>_{machine_name}")
    binding = _read_text(directory.parent.parent / "slots" / machine_name, required=True)
    binding_parts = (binding or "").split()
    if len(binding_parts) < 3:
        raise _Unusable(f"slots/{machine_name} names no machine_model: {binding!r}")
    uuid = _read_text(directory / "jobfeatures" / "job_id", required=True) or ""
    if not _looks_like_uuid(uuid):
        raise _Unusable(f"jobfeatures/job_id {uuid[:60]!r} is not a libvirt UUID")
    processors = _read_int(directory / "jobfeatures" / "allocated_cpu", required=True)
    assert processors is not None
    if processors < 1:
        raise _Unusable(f"jobfeatures/allocated_cpu {processors} is not a processor count")
    # Vac 03 lowered both copies when the site's shutdown_time fell (§4.6); the lower one holds.
    shutdown_times = [
        value
        for value in (
            _read_int(directory / "jobfeatures" / "shutdowntime_job", required=False),
            _read_int(directory / "machinefeatures" / "shutdowntime", required=False),
        )
        if value is not None
    ]
    if not shutdown_times:
        raise _Unusable("neither jobfeatures/shutdowntime_job nor machinefeatures/shutdowntime is readable")
    max_rss_bytes = _read_int(directory / "jobfeatures" / "max_rss_bytes", required=False)
    return _Vac03Facts(
        created_time=int(created_text),
        machinetype=machinetype,
        machine_model=binding_parts[2],
        uuid=uuid,
        processors=processors,
        shutdown_time=min(shutdown_times),
        ip_address=_read_text(directory / "ip", required=False),
        hs06=_read_float(directory / "machinefeatures" / "hs06"),
        mb=max_rss_bytes // 1048576 if max_rss_bytes is not None and max_rss_bytes > 0 else None,
    )


def _read_text(path: Path, *, required: bool) -> Optional[str]:
    try:
        raw = read_capped(path, MAX_VAC03_FILE_BYTES)
    except UnreadableFile as error:
        raise _Unusable(f"{path.name}: {error.reason}") from error
    if raw is None:
        if required:
            raise _Unusable(f"{path.relative_to(path.parent.parent)} is missing")
        return None
    if len(raw) >= MAX_VAC03_FILE_BYTES:
        raise _Unusable(f"{path.name} is {MAX_VAC03_FILE_BYTES} bytes or more")
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError as error:
        raise _Unusable(f"{path.name} is not ASCII") from error


def _read_int(path: Path, *, required: bool) -> Optional[int]:
    text = _read_text(path, required=required)
    if text is None:
        return None
    try:
        return int(float(text.split()[0]))
    except (ValueError, IndexError, OverflowError) as error:
        raise _Unusable(f"{path.name} {text[:40]!r} is not a number") from error


def _read_float(path: Path) -> Optional[float]:
    try:
        text = _read_text(path, required=False)
        value = float(text) if text else None
    except (_Unusable, ValueError):
        return None  # hs06 is optional in Vac 03 (§6.2): unreadable is as absent
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _looks_like_uuid(text: str) -> bool:
    parts = text.split("-")
    return [len(part) for part in parts] == [8, 4, 4, 4, 12] and all(
        part.isascii() and all(character in "0123456789abcdefABCDEF" for character in part) for part in parts
    )
