"""What `vacd --check-config` checks beyond the configuration's text: what start-up needs.

vacd.service runs `vacd --check-config` as `ExecStartPre=`, so a factory that cannot start
fails its start with a message naming the file or the port, instead of a daemon that dies
at start-up and is restarted every 10 seconds (issue 12 item 2). Checked:

* every `vacquery_key_file` can be read and holds a usable key (what the responder loads);
* every port vacd listens on is free now (vacd.hostports.busy_ports: VacQuery, the guest
  API's metadata and MJF ports, `metrics_address`), each taken one named with its holder;
* the log file can be written, when vacd logs to it;
* the `volume_group` of [settings] exists (vacd.lvm, `vgs`): Vac 03 refused a missing one
  (§2.1), and so does vacd's start, naming it (issue 13);
* without `volume_group`, Vac 03's default group `vac_volume_group` is on this host: Vac 03
  put every machine's disk in it without being told to, vacd only when told (a warning:
  vacd runs, with file-backed disks under the state directory).

A vacd already running on this state directory holds its ports: they are not probed then
(`--check-config` before a reload must not fail because vacd is up). Run as another user
than root, a refusal for want of privilege (a port below 1024 nobody holds, root's key
file) is not an error: vacd runs as root, and the admin may only be checking the syntax.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from vacd.config import Settings
from vacd.lvm import LogicalVolumes, LvmError, VolumeGroupMissing
from vacd.paths import Paths

# Errors that say "not as this user", not "not on this host".
_PRIVILEGE_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


@dataclass
class StartupFindings:
    """Problems that stop vacd from starting, and things worth knowing that do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, message: str, error: OSError) -> None:
        """An error, unless a non-root user was refused what root would be allowed."""
        if os.geteuid() != 0 and error.errno in _PRIVILEGE_ERRNOS:
            self.warnings.append(f"{message} (not checked as uid {os.geteuid()}: vacd runs as root)")
        else:
            self.errors.append(message)


def running_vacd_pid(pid_file: Path) -> Optional[str]:
    """The pid in `pid_file` if a running vacd holds its lock, else None (nothing is taken)."""
    try:
        handle = open(pid_file)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "unknown"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def check_key_files(settings: Settings, findings: StartupFindings) -> None:
    from vacquery.auth import load_site_key
    from vacquery.errors import KeyFileError

    for key_file in settings.vacquery_key_file:
        path = Path(key_file)
        try:
            # The responder's own reading: a missing, unreadable or too-short key fails here.
            load_site_key(path)
        except KeyFileError as error:
            cause = error.__cause__
            message = f"vacquery_key_file: {error}"
            if isinstance(cause, OSError):
                findings.add(message, cause)
            else:
                findings.errors.append(message)


def check_log_file(paths: Paths, settings: Settings, logs_to_stderr: bool, findings: StartupFindings) -> None:
    if logs_to_stderr or settings.log_destination != "file":
        return
    log_file = paths.log_file
    # vacd creates missing directories at start; the nearest existing one must be writable.
    target = log_file if log_file.exists() else next(parent for parent in log_file.parents if parent.exists())
    if not os.access(target, os.W_OK):
        error = PermissionError(errno.EACCES, "permission denied")
        findings.add(f"cannot write the log {log_file}: {target} is not writable "
                     f"(log_destination in [settings], or run vacd with --stderr)", error)


# Vac 03 used this volume group whenever it existed, volume_group set or not (§1.11).
VAC03_DEFAULT_VOLUME_GROUP = "vac_volume_group"


def check_vac03_volume_group(paths: Paths, findings: StartupFindings) -> None:
    # /dev/<vg> exists while the group has an active volume, which a Vac 03 node with
    # machines running has; `vgs` would need LVM's tools and root.
    device_dir = paths.under_prefix(f"/dev/{VAC03_DEFAULT_VOLUME_GROUP}")
    if device_dir.is_dir():
        findings.warnings.append(
            f"{device_dir} exists, and Vac 03 made every machine's disk a logical volume in "
            f"{VAC03_DEFAULT_VOLUME_GROUP} without being told to; vacd does so only with "
            f"volume_group = {VAC03_DEFAULT_VOLUME_GROUP} in [settings], and makes file-backed disks under "
            f"{paths.state_dir} until then: check it has the room")


def volume_group_problem(settings: Settings, logical_volumes: LogicalVolumes) -> Optional[str]:
    """Why the configured volume_group cannot be used, naming it, or None (also None when unset)."""
    if settings.volume_group is None:
        return None
    try:
        group = logical_volumes.volume_group(settings.volume_group)
    except VolumeGroupMissing as error:
        return f"{error}: create it, or remove volume_group from [settings] for file-backed disks"
    except LvmError as error:
        return str(error)
    if group.size_bytes == 0:
        return f"volume_group {group.name}: it has no room ({group.size_bytes} bytes)"
    return None


def check_volume_group(settings: Settings, logical_volumes: LogicalVolumes, paths: Paths,
                       findings: StartupFindings) -> None:
    if settings.volume_group is None:
        check_vac03_volume_group(paths, findings)
        return
    if os.geteuid() != 0:
        # lvm2 reads the disks' labels, which only root may.
        findings.warnings.append(f"volume_group {settings.volume_group}: not checked as uid {os.geteuid()} "
                                 "(vacd runs as root)")
        return
    problem = volume_group_problem(settings, logical_volumes)
    if problem is not None:
        findings.errors.append(problem)


def startup_findings(paths: Paths, settings: Settings, *, logs_to_stderr: bool,
                     logical_volumes: Optional[LogicalVolumes] = None) -> StartupFindings:
    """Everything vacd's start-up needs that a configuration file cannot show."""
    findings = StartupFindings()
    check_key_files(settings, findings)
    holder = running_vacd_pid(paths.pid_file)
    if holder is not None:
        findings.warnings.append(f"ports not probed: vacd (pid {holder}) is running and holds them")
    else:
        from vacd.hostports import busy_ports

        # The same probe vacd's start makes before it changes the host (vacd/hostports.py).
        findings.errors.extend(busy_ports(settings))
    check_log_file(paths, settings, logs_to_stderr, findings)
    check_volume_group(settings, logical_volumes if logical_volumes is not None else LogicalVolumes(), paths,
                       findings)
    return findings
