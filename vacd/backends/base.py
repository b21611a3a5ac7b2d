"""The narrow interface between the reconcile loop and whatever runs logical machines.

Rules (design.md rule 5): a backend creates a machine from a `MachineSpec`, shuts it down
gracefully or destroys it hard, lists what it observes, and reports lifecycle events only
as wake-ups. It returns these dataclasses, never library objects. Every operation is
idempotent by machine name: destroying a machine that is already gone succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

from vacd.lvm import VolumeRequest


class ObservedState(str, Enum):
    """What the backend sees of a machine, reduced to what the factory acts on."""

    RUNNING = "running"  # libvirt RUNNING or BLOCKED (§1.5 step 4)
    PAUSED = "paused"  # any other live state: paused, suspended, crashed-but-present
    SHUTTING_DOWN = "shutting_down"


@dataclass(frozen=True)
class MachineSpec:
    """Everything a backend needs to create one machine; built by the factory."""

    name: str
    uuid: str
    ordinal: int
    mac_address: str
    ip_address: str
    vnc_port: int
    processors: int
    memory_mib: int
    machine_dir: Path  # MD: console.log and per-machine disks live here
    machine_model: str = "vm-raw"
    root_image: Optional[Path] = None  # disk image (qcow2 overlay made on it) or CD-ROM ISO
    root_kernel: Optional[Path] = None  # direct kernel boot instead of a disk image
    root_initrd: Optional[Path] = None
    kernel_command_line: str = ""
    root_device: str = "vda"
    scratch_device: str = "vdb"
    disk_bytes: Optional[int] = None  # size of a sparse root disk (cernvm3)
    # With volume_group set: the machine's logical volume, a cernvm root disk or a vm-raw
    # scratch disk in place of the sparse file (§1.11).
    logical_volume: Optional[VolumeRequest] = None
    # Container models (docker, singularity; issue 13): what runs, and what is bound in.
    container_image: Optional[str] = None  # docker://IMAGE as vac.conf wrote it, or an apptainer image
    container_command: str = "/user_data"  # one argv element, never a shell string
    cvmfs_repositories: tuple[str, ...] = ()  # /cvmfs is bound read-only when set and present
    tmp_binds: tuple[str, ...] = ()  # docker: a fresh MD/mnt directory bound at each path


@dataclass(frozen=True)
class ObservedMachine:
    """One machine as the backend sees it now."""

    name: str
    uuid: str
    state: ObservedState
    cpu_seconds: float


class Backend(Protocol):
    """What the factory needs from a way of running machines."""

    def create(self, spec: MachineSpec) -> None:
        """Start the machine; raise BackendError if it could not be started."""

    def shutdown(self, name: str) -> None:
        """Ask the machine to stop (ACPI power button); return at once, succeed if it is gone."""

    def destroy(self, name: str, uuid: Optional[str] = None) -> None:
        """Stop the machine hard; if `uuid` is given, only a machine with that UUID; gone is success."""

    def list_machines(self) -> Sequence[ObservedMachine]:
        """Every machine that currently exists; raise BackendError if the list cannot be had."""

    def watch(self, wake: Callable[[str], None]) -> None:
        """Call `wake(name)` from any thread whenever a machine changes state."""

    def close(self) -> None:
        """Release connections and threads."""
