"""Write the state a Vac 03.01 factory leaves on a node, file by file, as the behaviour reference describes it.

Used by the take-over tests (issue 10): the unit tests, `vacd --check-host`'s tests and the
real-QEMU test that boots a guest named and addressed as Vac 03 names it. Every file and
format below is from /work/shared/reference/vac-03-behaviour.md: §1.4 (the state tree and the
machine directory), §1.5 (slot naming and `slots/<name>`), §1.6 (creation order: `started`
and `heartbeat` last), §6.2 (MJF files: no trailing newline except `allocated_cpu`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Vac03Machine:
    """One machine Vac 03 created: what it wrote, and where."""

    name: str
    ordinal: int
    uuid: str
    machinetype: str
    created_time: int
    directory: Path


def vac03_machine_name(factory_name: str, ordinal: int) -> str:
    short, _, domain = factory_name.partition(".")
    return f"{short}-{ordinal:02d}.{domain}"


def write_vac03_machine(
    state_dir: Path,
    *,
    factory_name: str,
    ordinal: int,
    uuid: str,
    machinetype: str,
    created_time: int,
    shutdown_time: int,
    started: bool = True,
    processors: int = 1,
    hs06_per_processor: Optional[float] = None,
    mb_per_processor: int = 2048,
    machine_model: str = "vm-raw",
    cpu_seconds: float = 0.0,
    finished: bool = False,
    shutdown_message: Optional[str] = None,
) -> Vac03Machine:
    """Write the slot binding and machine directory Vac 03 writes when it creates a machine."""
    name = vac03_machine_name(factory_name, ordinal)
    directory = state_dir / "machines" / f"{created_time}_{machinetype}_{name}"
    for part in ("machinefeatures", "jobfeatures", "joboutputs"):
        (directory / part).mkdir(parents=True, exist_ok=True)
    (state_dir / "slots").mkdir(parents=True, exist_ok=True)
    (state_dir / "slots" / name).write_text(f"{created_time} {machinetype} {machine_model}")
    wall_limit = max(0, shutdown_time - created_time)
    machinefeatures = {
        "total_cpu": str(processors),
        "phys_cores": str(processors),
        "log_cores": str(processors),
        "jobslots": "1",
        "shutdowntime": str(shutdown_time),
    }
    jobfeatures = {
        "shutdowntime_job": str(shutdown_time),
        "wall_limit_secs": str(wall_limit),
        "wall_limit_secs_lrms": str(wall_limit),
        "cpu_limit_secs": str(wall_limit * processors),
        "cpu_limit_secs_lrms": str(wall_limit * processors),
        "cpufactor_lrms": "1.0",
        "jobstart_secs": str(created_time),
        "max_rss_bytes": str(mb_per_processor * processors * 1048576),
        "mem_limit_MB": str(mb_per_processor * processors * 1048576 // 1000000),
        "allocated_cpu": f"{processors}\n",
        "allocated_CPU": f"{processors}\n",
        "job_id": uuid,
    }
    if hs06_per_processor is not None:
        machinefeatures["hs06"] = f"{hs06_per_processor * processors}"
        jobfeatures["hs06_job"] = f"{hs06_per_processor * processors}"
    for key, value in machinefeatures.items():
        (directory / "machinefeatures" / key).write_text(value)
    for key, value in jobfeatures.items():
        (directory / "jobfeatures" / key).write_text(value)
    (directory / "ip").write_text(f"169.254.169.{ordinal}")
    (directory / "user_data").write_text("#!/bin/sh\necho written by Vac 03\n")
    if started:
        (directory / "started").write_text(f"{created_time}\n")
        (directory / "heartbeat").write_text(f"{cpu_seconds:.1f} 0.0")
        os.utime(directory / "started", (created_time, created_time))
    if shutdown_message is not None:
        (directory / "joboutputs" / "shutdown_message").write_text(shutdown_message + "\n")
    if finished:
        (directory / "finished").write_text("")
    return Vac03Machine(name, ordinal, uuid, machinetype, created_time, directory)


def write_vac03_daemon_files(state_dir: Path, *, pid: int) -> None:
    """The pid and heartbeat files of Vac 03's four daemons (§1.2), naming `pid` as each one's process."""
    state_dir.mkdir(parents=True, exist_ok=True)
    for part in ("factory", "responder", "mjf", "metadata"):
        (state_dir / f"{part}.pid").write_text(f"{pid}\n")
        (state_dir / f"{part}-heartbeat").write_text("1700000000\n")
    (state_dir / "VERSION").write_text("VERSION=03.01.03\n")
