"""Machines' disks as LVM logical volumes in the configured `volume_group`, as Vac 03 made them.

Kept from Vac 03 (behaviour reference §1.5, §1.7, §1.11):
- A machine's logical volume is named as the machine (`f1-03.example.com`) and its device is
  `/dev/<vg>/<name>`: a cernvm machine's root disk, a vm-raw machine's scratch disk.
- Before one is created, a volume of the same name is removed: a slot's volume is remade for
  each machine, never handed on with the last machine's data. A destroy, and finalising a
  machine that ended by itself, remove it too.
- Size: a per-processor size in GB (10^9) is the machinetype's `disk_gb_per_processor` when it
  is set and not above [settings]' (or [settings] has none), else [settings]'; a size of 0 or
  none means a share of the group: processors/total_processors of what the volumes not named
  as this factory's machines leave. Either way rounded down to whole extents.
- `lvcreate --yes --name <name> -L <bytes>B <vg>`; the volume must then be a block device.

Rules:
- The argv builders, the output parsers and the sizing are pure (tested with Hypothesis);
  `LogicalVolumes` is the thin runner over `vacd.commands.run_command`, given to it as an
  argument, so importing this module reaches no subprocess. Every command is an
  argv list, non-interactive (`--yes`, stdin closed), in the C locale, and reports in bytes
  as JSON (`--reportformat json --units b --nosuffix`), so no message or number is read in
  an admin's language or units.
- Names reach lvm2 only after matching LVM's own name rules (`is_volume_name`), and a name
  with a leading `-` could be read as an option, so none may start with one.
- A kernel without device-mapper (its /dev/mapper/control does not open) can hold a volume
  group but not activate a volume: `lvcreate` then fails, and the failure names the group
  and the cause.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from vacd.errors import CommandFailed, VacError

log = logging.getLogger(__name__)

# LVM's names (lvm(8), "VALID NAMES"): letters, digits and + _ . -, not starting with "-",
# at most 127 characters; "." and ".." and names starting "snapshot"/"pvmove" are reserved.
_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}")
_RESERVED_NAMES = frozenset({".", ".."})
# Messages and number formats of lvm2 in English and plain digits; no prompt waits for an
# answer that never comes (stdin is closed as well); no warnings about descriptors that
# the daemon's own process happened to inherit.
LVM_ENVIRONMENT: Mapping[str, str] = {"LC_ALL": "C", "LVM_SUPPRESS_FD_WARNINGS": "1"}
# vgs of one group answers in well under a second; lvcreate waits on udev at worst seconds.
LVM_TIMEOUT_SECONDS = 60.0
GB = 10**9
DEVICE_MAPPER_CONTROL = Path("/dev/mapper/control")
_VG_FIELDS = ("vg_name", "vg_size", "vg_free", "vg_extent_size")
_LV_FIELDS = ("lv_name", "lv_size")
_REPORT_OPTIONS = ("--reportformat", "json", "--units", "b", "--nosuffix")


class LvmError(VacError):
    """An LVM operation failed; the message names the volume group and, if one, the volume."""


class VolumeGroupMissing(LvmError):
    """The configured volume group does not exist on this host (vacd refuses to start)."""

    def __init__(self, volume_group: str, detail: str) -> None:
        self.volume_group = volume_group
        super().__init__(f"volume_group {volume_group}: no such LVM volume group on this host ({detail})")


class MalformedLvmReport(LvmError):
    """lvm2 answered with something that is not the JSON report asked for."""


@dataclass(frozen=True)
class VolumeGroup:
    """One volume group as `vgs` reports it, in bytes."""

    name: str
    size_bytes: int
    free_bytes: int
    extent_bytes: int

    def __post_init__(self) -> None:
        if self.extent_bytes <= 0 or self.size_bytes < 0 or not 0 <= self.free_bytes <= self.size_bytes:
            raise ValueError(f"volume group {self.name}: impossible sizes size={self.size_bytes} "
                             f"free={self.free_bytes} extent={self.extent_bytes}")


@dataclass(frozen=True)
class LogicalVolume:
    """One logical volume as `lvs` reports it."""

    name: str
    size_bytes: int


@dataclass(frozen=True)
class VolumeRequest:
    """What a machine's logical volume must be: built by vacd.machinespec from the config."""

    volume_group: str
    name: str  # the machine's name (Vac 03: "Logical volume name = LM name", §1.5)
    processors: int
    total_processors: int
    gb_per_processor: Optional[int]  # None or 0: a share of the group (§1.11)
    factory_name: str  # says which volumes are this factory's machines' (left out of the share)

    def __post_init__(self) -> None:
        for name in (self.volume_group, self.name):
            if not is_volume_name(name):
                raise ValueError(f"{name!r} is not a valid LVM name")
        if not 1 <= self.processors <= self.total_processors:
            raise ValueError(f"logical volume {self.name}: processors {self.processors} outside "
                             f"1..total_processors {self.total_processors}")

    @property
    def device(self) -> Path:
        return volume_device(self.volume_group, self.name)


def is_volume_name(name: str) -> bool:
    """Whether lvm2 accepts `name` for a volume group or volume, and nothing can read it as an option."""
    return (_NAME.fullmatch(name) is not None and name not in _RESERVED_NAMES
            and not name.startswith(("snapshot", "pvmove")))


def volume_device(volume_group: str, name: str) -> Path:
    """The block device of a volume: /dev/<vg>/<name> (§1.11, acceptance 7)."""
    return Path("/dev") / volume_group / name


def volume_gb_per_processor(machinetype_gb: Optional[int], settings_gb: Optional[int]) -> Optional[int]:
    """Vac 03's per-processor size (§1.11): the machinetype's if set and not above [settings]', else [settings]'.

    None (or 0, which Vac 03 treated alike, [DOC≠CODE] §1.11) means a share of the group.
    """
    if machinetype_gb and (not settings_gb or machinetype_gb <= settings_gb):
        return machinetype_gb
    return settings_gb or None


def machine_volume_pattern(factory_name: str) -> re.Pattern[str]:
    """Names of this factory's machines, so of its volumes: `short-NN.domain` (vacd.slots).

    Vac 03 matched two digits only; vacd's slots from 100 up have three, and are as much its own.
    """
    short, dot, domain = factory_name.partition(".")
    return re.compile(re.escape(short) + r"-[0-9]{2,}" + re.escape(dot + domain))


def volume_bytes(request: VolumeRequest, volume_group: VolumeGroup, volumes: Sequence[LogicalVolume]) -> int:
    """The size of `request`'s volume in bytes, as Vac 03 computed it (§1.11), whole extents.

    With a per-processor size: GB x processors, rounded down to extents. Without: this
    machine's processors' share of the group less the volumes that are not this factory's
    machines' (another use of the group keeps its room).
    """
    extent = volume_group.extent_bytes
    if request.gb_per_processor:
        wanted = request.gb_per_processor * request.processors * GB
    else:
        ours = machine_volume_pattern(request.factory_name)
        others = sum(volume.size_bytes for volume in volumes if not ours.fullmatch(volume.name))
        wanted = request.processors * max(0, volume_group.size_bytes - others) // request.total_processors
    return wanted // extent * extent


def leftover_volume_names(volumes: Sequence[LogicalVolume], factory_name: str,
                          live_machine_names: frozenset[str]) -> tuple[str, ...]:
    """Volumes named as this factory's machines that no live machine has (Appendix A's zombie volumes)."""
    ours = machine_volume_pattern(factory_name)
    return tuple(volume.name for volume in volumes
                 if ours.fullmatch(volume.name) and volume.name not in live_machine_names)


# argv builders ------------------------------------------------------------------------


def vgs_argv(volume_group: str) -> list[str]:
    return ["vgs", *_REPORT_OPTIONS, "--options", ",".join(_VG_FIELDS), "--", volume_group]


def lvs_argv(volume_group: str) -> list[str]:
    return ["lvs", *_REPORT_OPTIONS, "--options", ",".join(_LV_FIELDS), "--", volume_group]


def lvcreate_argv(volume_group: str, name: str, size_bytes: int) -> list[str]:
    # Vac 03's command (§1.11); --yes answers "wipe the signature found?" without a prompt,
    # so a volume made over an old one's filesystem starts blank.
    return ["lvcreate", "--yes", "--name", name, "-L", f"{size_bytes}B", "--", volume_group]


def lvremove_argv(volume_group: str, name: str) -> list[str]:
    # Vac 03 ran `lvremove -f` (§1.7); an open volume (a machine still running on it) is refused
    # by lvm2 whatever the flags, so nothing in use is pulled from under a guest.
    return ["lvremove", "--force", "--yes", "--", f"{volume_group}/{name}"]


# Output parsers -----------------------------------------------------------------------


def _report_rows(raw_output: str, kind: str) -> list[Mapping[str, Any]]:
    """The rows of the `kind` ("vg", "lv") table of an lvm2 JSON report."""
    try:
        document = json.loads(raw_output)
    except ValueError as error:
        raise MalformedLvmReport(f"lvm2 report is not JSON: {error}") from error
    reports = document.get("report") if isinstance(document, dict) else None
    if not isinstance(reports, list):
        raise MalformedLvmReport("lvm2 report has no \"report\" list")
    rows: list[Mapping[str, Any]] = []
    for report in reports:
        table = report.get(kind, []) if isinstance(report, dict) else None
        if not isinstance(table, list) or not all(isinstance(row, dict) for row in table):
            raise MalformedLvmReport(f"lvm2 report's {kind!r} table is not a list of rows")
        rows.extend(table)
    return rows


def _bytes_field(row: Mapping[str, Any], field: str) -> int:
    value = row.get(field)
    # --units b --nosuffix: a plain count of bytes, as a JSON string.
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise MalformedLvmReport(f"lvm2 report field {field} is {value!r}, not a count of bytes")
    return int(value)


def _name_field(row: Mapping[str, Any], field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value:
        raise MalformedLvmReport(f"lvm2 report field {field} is {value!r}, not a name")
    return value


def parse_volume_groups(raw_output: str) -> tuple[VolumeGroup, ...]:
    """The volume groups in the JSON output of `vgs_argv`; raises MalformedLvmReport."""
    groups = []
    for row in _report_rows(raw_output, "vg"):
        try:
            groups.append(VolumeGroup(_name_field(row, "vg_name"), _bytes_field(row, "vg_size"),
                                      _bytes_field(row, "vg_free"), _bytes_field(row, "vg_extent_size")))
        except ValueError as error:
            if isinstance(error, MalformedLvmReport):
                raise
            raise MalformedLvmReport(str(error)) from error
    return tuple(groups)


def parse_logical_volumes(raw_output: str) -> tuple[LogicalVolume, ...]:
    """The logical volumes in the JSON output of `lvs_argv`; raises MalformedLvmReport."""
    return tuple(LogicalVolume(_name_field(row, "lv_name"), _bytes_field(row, "lv_size"))
                 for row in _report_rows(raw_output, "lv"))


def is_missing_volume_group(stderr_tail: str) -> bool:
    """Whether a failed vgs/lvs said the group is not there (C locale: `Volume group "x" not found`)."""
    return "not found" in stderr_tail


def has_device_mapper(control: Path = DEVICE_MAPPER_CONTROL) -> bool:
    """Whether this kernel can activate logical volumes: device-mapper's control node opens.

    Its existence is not enough: lvcreate makes the node itself when it is missing, and on a
    kernel without the driver opening it then fails with ENODEV. Opening it also loads a
    modular driver. Without root to open it, /proc/misc says whether the driver is there.
    """
    try:
        handle = os.open(control, os.O_RDWR)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM):
            return _proc_misc_lists_device_mapper()
        return False
    os.close(handle)
    return True


def _proc_misc_lists_device_mapper(proc_misc: Path = Path("/proc/misc")) -> bool:
    try:
        return any(line.split()[1:] == ["device-mapper"] for line in proc_misc.read_text().splitlines())
    except OSError:
        return False


# The runner ----------------------------------------------------------------------------

LvmCommandRunner = Callable[[Sequence[str]], str]


def run_lvm_command(argv: Sequence[str]) -> str:
    """vacd.commands.run_command with LVM's environment and timeout."""
    # Imported here: vacd.backends.domainxml (pure core) uses this module's names and sizes,
    # and must not import subprocess by way of it (tests/test_layering.py).
    from vacd.commands import run_command

    return run_command(argv, LVM_TIMEOUT_SECONDS, LVM_ENVIRONMENT)


class LogicalVolumes:
    """Finds volume groups and makes and removes machines' volumes, through lvm2's commands."""

    def __init__(self, run: LvmCommandRunner = run_lvm_command,
                 is_block_device: Callable[[Path], bool] = lambda path: _is_block_device(path)) -> None:
        self._run = run
        self._is_block_device = is_block_device

    def volume_group(self, name: str) -> VolumeGroup:
        """The group `name`; raises VolumeGroupMissing if it is not there, LvmError if vgs failed."""
        if not is_volume_name(name):
            raise VolumeGroupMissing(name, "not a valid LVM name")
        try:
            groups = parse_volume_groups(self._run(vgs_argv(name)))
        except CommandFailed as error:
            if error.returncode > 0 and is_missing_volume_group(error.stderr_tail):
                # lvm2's first line says it (`Volume group "x" not found`); the rest repeats it.
                raise VolumeGroupMissing(name, error.stderr_tail.strip().splitlines()[0].strip()) from error
            raise LvmError(f"volume_group {name}: cannot read it: {error}") from error
        for group in groups:
            if group.name == name:
                return group
        raise VolumeGroupMissing(name, "vgs did not list it")

    def volumes(self, volume_group: str) -> tuple[LogicalVolume, ...]:
        """Every volume in `volume_group`; raises LvmError."""
        try:
            return parse_logical_volumes(self._run(lvs_argv(volume_group)))
        except CommandFailed as error:
            raise LvmError(f"volume_group {volume_group}: cannot list its volumes: {error}") from error

    def remove(self, volume_group: str, name: str) -> bool:
        """Remove the volume if it is there; return whether one was removed. Raises LvmError."""
        if not any(volume.name == name for volume in self.volumes(volume_group)):
            return False
        try:
            self._run(lvremove_argv(volume_group, name))
        except CommandFailed as error:
            raise LvmError(f"cannot remove logical volume {volume_group}/{name}: {error}") from error
        log.info("removed logical volume vg=%s name=%s", volume_group, name)
        return True

    def remove_leftovers(self, volume_group: str, factory_name: str,
                         live_machine_names: frozenset[str]) -> tuple[str, ...]:
        """Remove this factory's machines' volumes that no live machine has; return those removed.

        One that cannot be removed (open: a machine vacd does not know of still runs on it)
        is logged and left. Raises LvmError only if the group cannot be listed.
        """
        removed = []
        for name in leftover_volume_names(self.volumes(volume_group), factory_name, live_machine_names):
            try:
                self.remove(volume_group, name)
            except LvmError as error:
                log.warning("left-over logical volume kept vg=%s name=%s error=%s", volume_group, name, error)
                continue
            removed.append(name)
        return tuple(removed)

    def create(self, request: VolumeRequest) -> Path:
        """Make `request`'s volume afresh (any of that name removed first, §1.11) and return its device.

        Raises LvmError naming the group and volume: the group is gone or too small, lvcreate
        failed (on a kernel without device-mapper it always does), or no block device appeared.
        """
        group = self.volume_group(request.volume_group)
        self.remove(request.volume_group, request.name)
        size_bytes = volume_bytes(request, group, self.volumes(request.volume_group))
        where = f"logical volume {request.volume_group}/{request.name}"
        if size_bytes <= 0:
            raise LvmError(f"{where}: the size works out at 0 bytes (volume group {group.size_bytes} bytes, "
                           f"extent {group.extent_bytes}): set disk_gb_per_processor")
        if size_bytes > group.free_bytes:
            raise LvmError(f"{where}: needs {size_bytes} bytes, volume group has {group.free_bytes} free")
        try:
            self._run(lvcreate_argv(request.volume_group, request.name, size_bytes))
        except CommandFailed as error:
            hint = "" if has_device_mapper() else (f" (this kernel has no device-mapper: {DEVICE_MAPPER_CONTROL} "
                                                   "does not open)")
            raise LvmError(f"{where}: lvcreate failed{hint}: {error}") from error
        if not self._is_block_device(request.device):
            raise LvmError(f"{where}: created, but {request.device} is not a block device")
        log.info("created logical volume vg=%s name=%s bytes=%d", request.volume_group, request.name, size_bytes)
        return request.device


def _is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


__all__ = [
    "DEVICE_MAPPER_CONTROL",
    "LVM_ENVIRONMENT",
    "LogicalVolume",
    "LogicalVolumes",
    "LvmError",
    "MalformedLvmReport",
    "VolumeGroup",
    "VolumeGroupMissing",
    "VolumeRequest",
    "has_device_mapper",
    "is_missing_volume_group",
    "is_volume_name",
    "leftover_volume_names",
    "lvcreate_argv",
    "lvremove_argv",
    "lvs_argv",
    "machine_volume_pattern",
    "parse_logical_volumes",
    "parse_volume_groups",
    "run_lvm_command",
    "volume_bytes",
    "volume_device",
    "volume_gb_per_processor",
    "vgs_argv",
]
