"""Machine/Job Features (HSF-TN-2016-02) of one machine: the key files in its directory.

Rules (behaviour reference §6.2, acceptance 10, 11, 25):
- Every key Vac 03 wrote is written before the machine starts, current and deprecated names
  alike (`jobslots`, `phys_cores`, `log_cores`, `allocated_CPU`, `*_lrms`, `mem_limit_MB`),
  because pilots in the field read either. Values have no trailing newline except
  `allocated_cpu` and `allocated_CPU`, which Vac wrote with one.
- `hs06` and `hs06_job` exist only when `hs06_per_processor` is configured (acceptance 11).
- `grace_secs` / `grace_secs_job` are added (Vac had none): the factory's ACPI grace before
  a hard power-off, so a payload knows how long it has after the shutdown signal.
- The shutdown time only ever falls (§4.6 step 2). Lowering it rewrites `shutdowntime`,
  `shutdowntime_job` and the wall and CPU limits, which count from `jobstart_secs`.
- Every file is written atomically; a key name is one safe path component, so a
  `machinefeatures_option_*` name can never write outside the directory.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping, Optional

from vacd.atomicfile import read_text_or_none, write_atomic
from vacd.config import Settings
from vacd.errors import VacError
from vacd.records import MachineRecord

log = logging.getLogger(__name__)

MACHINEFEATURES = "machinefeatures"
JOBFEATURES = "jobfeatures"
# Key names: one path component, no leading dot (temp files of atomic writes start with one).
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
BYTES_PER_MIB = 1048576
# mem_limit_MB is max_rss_bytes in decimal megabytes, as Vac computed it (§6.2).
BYTES_PER_DECIMAL_MB = 1000000


class FeatureKeyError(VacError):
    """A configured machinefeatures key is not a safe file name."""


def is_valid_key(key: str) -> bool:
    return bool(KEY_PATTERN.match(key))


def format_number(value: float) -> str:
    """20.0 -> `20`, 21.5 -> `21.5`: MJF consumers parse either, acceptance 10 expects `20`."""
    return f"{value:.12g}"


def machine_features(settings: Settings, record: MachineRecord) -> dict[str, str]:
    """The machinefeatures/ keys of a new machine (§6.2)."""
    processors = str(record.processors)
    features = {
        "total_cpu": processors,
        "phys_cores": processors,
        "log_cores": processors,
        "jobslots": "1",
        "shutdowntime": str(record.shutdown_time),
        "grace_secs": str(settings.shutdown_grace_seconds),
    }
    if settings.hs06_per_processor is not None:
        features["hs06"] = format_number(settings.hs06_per_processor * record.processors)
    for key, value in settings.machinefeatures_options.items():
        if not is_valid_key(key):
            raise FeatureKeyError(f"machinefeatures_option_{key}: not a valid key name")
        features[key] = value
    return features


def job_features(settings: Settings, record: MachineRecord, now: int) -> dict[str, str]:
    """The jobfeatures/ keys of a new machine created at `now` (§6.2)."""
    wall_limit_seconds = max(0, record.shutdown_time - now)
    cpu_limit_seconds = wall_limit_seconds * record.processors
    max_rss_bytes = record.mb * BYTES_PER_MIB
    features = {
        "shutdowntime_job": str(record.shutdown_time),
        "wall_limit_secs": str(wall_limit_seconds),
        "wall_limit_secs_lrms": str(wall_limit_seconds),
        "cpu_limit_secs": str(cpu_limit_seconds),
        "cpu_limit_secs_lrms": str(cpu_limit_seconds),
        "cpufactor_lrms": "1.0",
        "jobstart_secs": str(record.created_time),
        "max_rss_bytes": str(max_rss_bytes),
        "mem_limit_MB": str(max_rss_bytes // BYTES_PER_DECIMAL_MB),
        "allocated_cpu": f"{record.processors}\n",
        "allocated_CPU": f"{record.processors}\n",
        "job_id": record.uuid,
        "grace_secs_job": str(settings.shutdown_grace_seconds),
    }
    if settings.hs06_per_processor is not None:
        features["hs06_job"] = format_number(settings.hs06_per_processor * record.processors)
    return features


def write_features(directory: Path, settings: Settings, record: MachineRecord, now: int) -> None:
    """Write machinefeatures/ and jobfeatures/ under the machine directory `directory`."""
    for subdirectory, features in (
        (MACHINEFEATURES, machine_features(settings, record)),
        (JOBFEATURES, job_features(settings, record, now)),
    ):
        target = directory / subdirectory
        target.mkdir(mode=0o755, exist_ok=True)
        _write_keys(target, features)


def lower_shutdown_time(directory: Path, shutdown_time: int, now: int) -> bool:
    """Lower the machine's advertised shutdown time to `shutdown_time` if it is earlier.

    Rewrites machinefeatures/shutdowntime, jobfeatures/shutdowntime_job and the wall and
    CPU limits (counted from jobstart_secs, or from `now` if that key is unreadable).
    Returns True if any file changed; a later or equal time changes nothing (acceptance 25).
    """
    machine_dir = directory / MACHINEFEATURES
    job_dir = directory / JOBFEATURES
    changed = False
    current_machine = _read_int(machine_dir / "shutdowntime")
    if current_machine is not None and shutdown_time < current_machine:
        write_atomic(machine_dir / "shutdowntime", str(shutdown_time))
        changed = True
    current_job = _read_int(job_dir / "shutdowntime_job")
    if current_job is not None and shutdown_time < current_job:
        job_start = _read_int(job_dir / "jobstart_secs")
        processors = _read_int(job_dir / "allocated_cpu") or 1
        wall_limit_seconds = max(0, shutdown_time - (job_start if job_start is not None else now))
        cpu_limit_seconds = wall_limit_seconds * processors
        _write_keys(
            job_dir,
            {
                "wall_limit_secs": str(wall_limit_seconds),
                "wall_limit_secs_lrms": str(wall_limit_seconds),
                "cpu_limit_secs": str(cpu_limit_seconds),
                "cpu_limit_secs_lrms": str(cpu_limit_seconds),
            },
        )
        # The shutdown time itself last: a reader that sees the new time sees the new limits.
        write_atomic(job_dir / "shutdowntime_job", str(shutdown_time))
        changed = True
    if changed:
        log.info("lowered machine/job features shutdown time directory=%s shutdown_time=%s", directory, shutdown_time)
    return changed


def read_features(directory: Path, subdirectory: str) -> Mapping[str, str]:
    """Every key of machinefeatures/ or jobfeatures/ with its raw value (for tests and `vac`)."""
    target = directory / subdirectory
    if not target.is_dir():
        return {}
    features = {}
    for entry in sorted(target.iterdir()):
        if is_valid_key(entry.name) and entry.is_file():
            features[entry.name] = entry.read_text()
    return features


def _write_keys(target: Path, features: Mapping[str, str]) -> None:
    for key, value in features.items():
        if not is_valid_key(key):
            raise FeatureKeyError(f"{target.name}/{key}: not a valid key name")
        write_atomic(target / key, value)


def _read_int(path: Path) -> Optional[int]:
    raw_text = read_text_or_none(path)
    if raw_text is None:
        return None
    try:
        return int(float(raw_text.strip()))
    except ValueError:
        return None
